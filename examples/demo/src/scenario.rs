//! The demo's script: bring everything up, then deploy, scale to 5, roll, scale to 2 while the
//! client keeps calling, waiting after each change until the whole chain has settled (pods, etcd,
//! the operator's status, the client's connections) and then measuring a steady window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use registrar::crd::ServiceRegistration;
use registrar_resolver::{Backoff, Balancer, OutlierDetection};
use registrar_testenv::{Cluster, Etcd, node_pod_cidr};
use serde_json::json;

use crate::client::{Load, Tally};
use crate::console::{Console, Output};
use crate::dashboard::{Dashboard, Sources};
use crate::etcd_log::EtcdLog;
use crate::kubelet::{FINALIZER, Kubelet};
use crate::manifests;
use crate::narrate::show_summary;
use crate::operator::Operator;
use crate::report::{DemoReport, PhaseReport};
use crate::settle::World;

/// Registrar's key prefix in the demo.
pub const PREFIX: &str = "registrar";
/// The namespace the example manifests are applied to.
pub const NAMESPACE: &str = "demo";

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Fake nodes in the cluster (pods spread over `127.1.<node>.0/24`).
    pub nodes: usize,
    /// RPCs per second the client sends.
    pub rate: u32,
    /// How long each phase's steady window lasts.
    pub hold: Duration,
    /// How long a change may take to settle before the demo gives up.
    pub settle_timeout: Duration,
    /// How to print.
    pub output: Output,
}

impl DemoOptions {
    /// For people: 8-second phases, live table on a terminal.
    pub fn interactive() -> DemoOptions {
        DemoOptions {
            nodes: 2,
            rate: 200,
            hold: Duration::from_secs(8),
            settle_timeout: Duration::from_secs(120),
            output: Output::detect(),
        }
    }

    /// Short and non-interactive (tests, CI): 2-second phases, plain output.
    pub fn quick() -> DemoOptions {
        DemoOptions {
            hold: Duration::from_secs(2),
            output: Output::Plain,
            ..DemoOptions::interactive()
        }
    }
}

/// A change to the Deployment.
#[derive(Clone, Copy)]
enum Change {
    Create,
    Scale(i32),
    Restart,
}

struct Phase {
    name: &'static str,
    command: String,
    change: Change,
    replicas: usize,
}

fn phases(deployment: &str, initial: usize) -> Vec<Phase> {
    vec![
        Phase {
            name: "deploy",
            command: format!(
                "kubectl apply -n {NAMESPACE} -f {}   # {initial} replicas",
                manifests::DEPLOYMENT_PATH
            ),
            change: Change::Create,
            replicas: initial,
        },
        Phase {
            name: "scale to 5",
            command: format!("kubectl scale -n {NAMESPACE} deployment/{deployment} --replicas=5"),
            change: Change::Scale(5),
            replicas: 5,
        },
        Phase {
            name: "roll",
            command: format!(
                "kubectl rollout restart -n {NAMESPACE} deployment/{deployment}   # every pod replaced"
            ),
            change: Change::Restart,
            replicas: 5,
        },
        Phase {
            name: "scale to 2",
            command: format!("kubectl scale -n {NAMESPACE} deployment/{deployment} --replicas=2"),
            change: Change::Scale(2),
            replicas: 2,
        },
    ]
}

/// Runs the demo (see the module docs) and reports what the client saw.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoReport> {
    let console = Arc::new(Console::new(opts.output));
    let registration = manifests::registration()?;
    let mut deployment = manifests::deployment()?;
    let deployment_name = deployment
        .metadata
        .name
        .clone()
        .context("the example Deployment has no name")?;
    let registration_name = registration
        .metadata
        .name
        .clone()
        .context("the example ServiceRegistration has no name")?;
    let spec = deployment
        .spec
        .as_mut()
        .context("the example Deployment has no spec")?;
    let initial = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(1);
    let selector = label_selector(spec.selector.match_labels.as_ref())?;
    // See the kubelet module: pods stay Terminating until their server has drained.
    spec.template
        .metadata
        .get_or_insert_with(Default::default)
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(FINALIZER.to_string());
    let target = format!("{PREFIX}/{NAMESPACE}/{}", registration.service_name());

    // 1. The cluster.
    let cidrs: Vec<String> = (0..opts.nodes).map(node_pod_cidr).collect();
    console.step(format!(
        "Starting a local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok with {} fake nodes",
        opts.nodes
    ));
    let started = Instant::now();
    let cluster = Cluster::start(opts.nodes)
        .await
        .context("starting the local cluster (hack/tools.sh builds its binaries)")?;
    let kube = cluster.client().await?;
    label_zones(&kube, opts.nodes).await?;
    console.line(format!(
        "up in {:.1}s; kube-apiserver at {}; pod IPs from {} (loopback); node i in zone-<a, b, ...>",
        started.elapsed().as_secs_f64(),
        cluster.url(),
        cidrs.join(", ")
    ));

    // 2. Registrar: its own etcd, and the operator.
    console.step("Starting etcd for Registrar's keys, and the registrar operator (in-process)");
    let etcd = Etcd::start().await.context("starting etcd")?;
    let kv = etcd.client().await?;
    let operator = Operator::start(kube.clone(), kv.clone(), PREFIX, "demo-cluster").await?;
    console.line(format!(
        "etcd at {}; operator ready: leader, caches synced, publishing under {PREFIX}/",
        etcd.endpoint()
    ));
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    Api::<Namespace>::all(kube.clone())
        .create(&PostParams::default(), &ns)
        .await
        .context("creating the demo namespace")?;
    let etcd_log = EtcdLog::start(kv.clone(), &target, console.clone()).await?;

    // 3. The registration.
    console.step(format!(
        "kubectl apply -n {NAMESPACE} -f {}",
        manifests::REGISTRATION_PATH
    ));
    let regs: Api<ServiceRegistration> = Api::namespaced(kube.clone(), NAMESPACE);
    regs.create(&PostParams::default(), &registration)
        .await
        .context("applying the example ServiceRegistration")?;
    console.line(format!(
        "ServiceRegistration {registration_name}: pods matching {selector}, port {:?}, published under {target}/",
        port_text(&registration)
    ));

    let kubelet = Arc::new(Kubelet::start(
        kube.clone(),
        NAMESPACE,
        &selector,
        console.clone(),
    ));
    let world = World {
        console: console.clone(),
        deployments: Api::namespaced(kube.clone(), NAMESPACE),
        pods: Api::namespaced(kube.clone(), NAMESPACE),
        regs,
        kv: kv.clone(),
        kubelet: kubelet.clone(),
        deployment: deployment_name.clone(),
        registration: registration_name,
        selector,
        target: target.clone(),
    };

    let tally = Arc::new(Tally::default());
    let failures_before = Arc::new(AtomicU64::new(0));
    let mut report = DemoReport {
        target: target.clone(),
        phases: Vec::new(),
    };
    let plan = phases(&deployment_name, initial);
    let total = plan.len();
    let mut client: Option<(Balancer, Load, Dashboard)> = None;

    for (i, phase) in plan.into_iter().enumerate() {
        let heading = format!("phase {}/{total}: {}", i + 1, phase.name);
        console.step(format!("{heading} — {}", phase.command));
        let changed = Instant::now();
        match phase.change {
            Change::Create => {
                world
                    .deployments
                    .create(&PostParams::default(), &deployment)
                    .await
                    .context("applying the example Deployment")?;
            }
            Change::Scale(n) => {
                world
                    .deployments
                    .patch(
                        &world.deployment,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"replicas": n}})),
                    )
                    .await?;
            }
            Change::Restart => {
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let patch = json!({"spec": {"template": {"metadata": {"annotations": {
                    "kubectl.kubernetes.io/restartedAt": now}}}}});
                world
                    .deployments
                    .patch(
                        &world.deployment,
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
            }
        }
        if let Some((_, _, dash)) = &client {
            dash.set_heading(format!("{heading} · changing"));
        }
        let mut settled = world
            .settle(
                phase.replicas,
                client.as_ref().map(|c| &c.0),
                opts.settle_timeout,
            )
            .await?;
        if client.is_none() {
            // The client starts once the first pods serve, then the chain settles again with
            // its connections READY.
            console.step(format!(
                "Starting the client: GreeterClient over registrar_resolver::Balancer on {target}, {} RPC/s",
                opts.rate
            ));
            console.line(
                "health checking on (grpc.health.v1 Watch: a draining server leaves the pick \
                 set at once); outlier ejection on (gRFC A50 defaults)",
            );
            // New pods may be published a moment before their server listens: retry soon.
            let soon = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            let balancer = Balancer::builder(kv.clone(), target.as_str())
                .health_check("")
                .health_check_backoff(soon)
                .outlier_detection(OutlierDetection::default())
                .connection_backoff(soon)
                .wait_for_ready_timeout(Duration::from_secs(5))
                .build()
                .await
                .context("building the balancer")?;
            let load = Load::start(balancer.clone(), opts.rate, tally.clone());
            let dash = Dashboard::start(
                Sources {
                    console: console.clone(),
                    tally: tally.clone(),
                    kubelet: kubelet.clone(),
                    balancer: balancer.clone(),
                    failures_before: failures_before.clone(),
                },
                &format!("{heading} · changing"),
            );
            settled = world
                .settle(phase.replicas, Some(&balancer), opts.settle_timeout)
                .await?;
            client = Some((balancer, load, dash));
        }
        let settled_in = changed.elapsed();
        let during_change = tally.take();
        failures_before.fetch_add(during_change.failures, Ordering::Relaxed);
        world.show_settled(&settled, settled_in).await;

        if let Some((_, _, dash)) = &client {
            dash.set_heading(format!("{heading} · steady"));
        }
        console.line(format!(
            "measuring for {:.0}s: RPCs per backend below",
            opts.hold.as_secs_f64()
        ));
        tokio::time::sleep(opts.hold).await;
        let steady = tally.take();
        failures_before.fetch_add(steady.failures, Ordering::Relaxed);
        console.clear_status();
        let result = PhaseReport {
            name: phase.name.to_string(),
            replicas: phase.replicas,
            pods: settled.pods,
            etcd_keys: settled.keys.into_iter().map(|(k, _)| k).collect(),
            settled_in,
            during_change,
            steady,
        };
        world.show_phase(&heading, &result);
        report.phases.push(result);
    }

    // 4. Wrap up.
    if let Some((_, load, dash)) = client.take() {
        drop(dash);
        load.stop().await;
    }
    let leftover = tally.take();
    if let Some(last) = report.phases.last_mut() {
        // RPCs that were in flight when the last window closed.
        last.steady.failures += leftover.failures;
        last.steady.errors.extend(leftover.errors);
    }
    show_summary(&console, &report);
    console.step("Cleaning up: client, servers, operator, etcd and the cluster");
    drop(etcd_log);
    drop(world);
    drop(kubelet);
    operator.stop().await;
    drop(etcd);
    drop(cluster);
    console.line("done");
    Ok(report)
}

/// Puts fake node `i` in zone `zone-a`, `zone-b`, ... (`topology.kubernetes.io/zone`), which
/// the operator publishes in each endpoint's metadata and the client shows.
async fn label_zones(kube: &kube::Client, nodes: usize) -> anyhow::Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(kube.clone());
    for i in 0..nodes {
        let zone = format!("zone-{}", char::from(b'a' + (i % 26) as u8));
        api.patch(
            &format!("kwok-node-{i}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"topology.kubernetes.io/zone": zone}}})),
        )
        .await
        .with_context(|| format!("labelling node kwok-node-{i} with its zone"))?;
    }
    Ok(())
}

fn label_selector(labels: Option<&BTreeMap<String, String>>) -> anyhow::Result<String> {
    let labels = labels
        .filter(|l| !l.is_empty())
        .context("the example Deployment's selector has no matchLabels")?;
    Ok(labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(","))
}

fn port_text(reg: &ServiceRegistration) -> String {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &reg.spec.port {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}
