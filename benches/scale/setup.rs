//! Untimed setup: the namespaces, the ServiceRegistrations and the pods of a [`Size`], every
//! pod bound to a Node nobody manages and patched Running + Ready with its own address, with a
//! bounded number of requests in flight and progress printed as it goes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use registrar::crd::ServiceRegistration;
use serde_json::json;

use crate::common::objects::pod_status;
use crate::layout::{self, PORT, Size};

/// The Node every pod is bound to.
pub const NODE: &str = "scale-node";
/// API requests in flight during setup, by default (`REGISTRAR_BENCH_IN_FLIGHT`).
pub const IN_FLIGHT: usize = 64;
/// Progress is printed at least every this many pods (and about 20 times in all).
const PROGRESS_EVERY: usize = 1000;

/// How long each setup phase took.
#[derive(Clone, Copy, Debug)]
pub struct SetupTimes {
    pub registrations: Duration,
    pub pods: Duration,
}

/// Creates everything for `size`.
pub async fn populate(client: &kube::Client, size: Size, in_flight: usize) -> Result<SetupTimes> {
    crate::common::objects::create_node(client, NODE).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in 0..size.namespaces() {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": format!("scale-{n}")}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }

    let started = Instant::now();
    futures::stream::iter(0..size.registrations)
        .map(|r| create_registration(client, size, r))
        .buffer_unordered(in_flight)
        .try_collect::<()>()
        .await?;
    let registrations = started.elapsed();
    say(&format!(
        "{} registrations in {} namespaces created in {:.1} s",
        size.registrations,
        size.namespaces(),
        registrations.as_secs_f64()
    ));

    let started = Instant::now();
    let mut done = 0usize;
    let every = PROGRESS_EVERY.max(size.pods / 20);
    let mut pods = futures::stream::iter(size.pods())
        .map(|pod| create_pod(client, size, pod))
        .buffer_unordered(in_flight);
    while let Some(res) = pods.next().await {
        res?;
        done += 1;
        if done.is_multiple_of(every) || done == size.pods {
            let secs = started.elapsed().as_secs_f64();
            say(&format!(
                "{done}/{} pods created and Ready ({secs:.1} s, {:.0} pods/s)",
                size.pods,
                done as f64 / secs.max(1e-3)
            ));
        }
    }
    Ok(SetupTimes {
        registrations,
        pods: started.elapsed(),
    })
}

async fn create_registration(client: &kube::Client, size: Size, r: usize) -> Result<()> {
    let name = layout::registration(r);
    let reg: ServiceRegistration = serde_json::from_value(json!({
        "apiVersion": "registrar.dev/v1alpha1", "kind": "ServiceRegistration",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, "port": PORT},
    }))?;
    Api::<ServiceRegistration>::namespaced(client.clone(), &layout::namespace(size, r))
        .create(&PostParams::default(), &reg)
        .await
        .with_context(|| format!("creating registration {name}"))?;
    Ok(())
}

/// Creates one pod and patches its status Running + Ready (a pod's status cannot be set at
/// creation).
async fn create_pod(client: &kube::Client, size: Size, pod: layout::Pod) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &layout::namespace(size, pod.registration));
    let name = pod.name();
    let object: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": layout::registration(pod.registration)}},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "example.invalid/app",
                 "ports": [{"name": "grpc", "containerPort": PORT}]}]},
    }))?;
    api.create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating pod {name}"))?;
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(pod_status(&pod.ip(), true)),
    )
    .await
    .with_context(|| format!("patching the status of pod {name}"))?;
    Ok(())
}

pub fn say(what: &str) {
    println!("[scale] {what}");
}
