//! The soak's world: a kwok cluster (2 fake Nodes, controllers, scheduler) with one
//! Deployment and one ServiceRegistration per service, a separate etcd for Registrar's keys
//! (so that restarting it never touches the API server's), and the `registrar` release binary
//! with its default lease TTL.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use registrar::crd::ServiceRegistration;
use registrar_testenv::{Cluster, Etcd, poll};
use serde_json::json;

use super::config::{NAMESPACE, PREFIX, REPLICAS, SERVICES};
use crate::operator::Operator;

/// The running world.
pub struct World {
    pub cluster: Cluster,
    pub etcd: Etcd,
    pub client: kube::Client,
    pub operator: Operator,
    /// The registrations as created (static for the whole soak).
    pub regs: Vec<ServiceRegistration>,
}

fn deployment(name: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "app", "image": "example.invalid/app",
                                    "ports": [{"name": "grpc", "containerPort": 50051}]}]
                }
            }
        }
    }))?)
}

fn registration(name: &str) -> Result<ServiceRegistration> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "registrar.dev/v1alpha1", "kind": "ServiceRegistration",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"selector": {"matchLabels": {"app": name}}, "port": 50051},
    }))?)
}

/// Ready pods in the namespace.
pub async fn ready_pods(client: &kube::Client) -> Result<usize> {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count())
}

impl World {
    /// Starts everything and waits until every pod is Ready and the operator is ready.
    pub async fn start(log: &Path) -> Result<World> {
        let (cluster, etcd) = tokio::try_join!(Cluster::start(2), Etcd::start())?;
        let client = cluster.client().await?;
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let mut regs = Vec::new();
        for s in SERVICES {
            Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
                .create(&PostParams::default(), &deployment(s)?)
                .await
                .with_context(|| format!("creating the Deployment {s}"))?;
            regs.push(
                Api::<ServiceRegistration>::namespaced(client.clone(), NAMESPACE)
                    .create(&PostParams::default(), &registration(s)?)
                    .await
                    .with_context(|| format!("creating the ServiceRegistration {s}"))?,
            );
        }
        let want = REPLICAS as usize * SERVICES.len();
        poll("every pod Ready", Duration::from_secs(120), || async {
            (ready_pods(&client).await.ok()? == want).then_some(())
        })
        .await?;
        let kubeconfig = cluster.kubeconfig().to_path_buf();
        let mut operator = Operator::spawn(&kubeconfig, &etcd, PREFIX, log)?;
        operator.wait_ready(Duration::from_secs(60)).await?;
        Ok(World {
            cluster,
            etcd,
            client,
            operator,
            regs,
        })
    }
}
