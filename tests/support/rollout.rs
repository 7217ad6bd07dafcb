//! The rolling-update scenario of issue 12 §4, shared by `tests/rollouts.rs` (the zero-failure
//! check) and `benches/rollouts.rs` (the side-by-side comparison with a baseline): a kwok
//! cluster with the operator running against one etcd, a Deployment of 4 replicas (maxSurge 1,
//! maxUnavailable 0) whose pods' 127.x IPs are served by the stand-in kubelet ([`PodServers`]:
//! pod watch, `preStop`, SIGTERM, grace period, kill; never looking at etcd), a [`Balancer`]
//! client with [`CALLERS`] concurrent callers at [`RATE`] RPCs per second in all, and three
//! consecutive rolling updates.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use registrar_resolver::{Balancer, Drain, EtcdConnect};
use registrar_testenv::greeter::{BoxUnit, Drainer};
use registrar_testenv::pod_servers::{OnSigterm, PodServers, Termination};
use registrar_testenv::{Cluster, Etcd, poll, unique_name};
use serde_json::json;
use tokio::time::Instant;

use super::faults::*;
use super::*;

const PREFIX: &str = "registrar";
/// RPCs per second of the client, all callers together (an upper bound).
pub const RATE: u32 = 1000;
/// Concurrent callers of the client (each one call at a time).
pub const CALLERS: u32 = 8;
pub const REPLICAS: i32 = 4;
pub const ROLLOUTS: usize = 3;
/// The pods' `terminationGracePeriodSeconds`.
pub const GRACE_S: u64 = 5;
/// How long a rollout may take.
const ROLL_DEADLINE: Duration = Duration::from_secs(120);

/// What the servers do on SIGTERM.
#[derive(Clone, Copy, Debug)]
pub enum Sigterm {
    /// The resolver's drain helper with this delay, then tonic's graceful shutdown.
    Drain(Duration),
    /// tonic's graceful shutdown at once (GOAWAY, in-flight calls finish): no drain delay.
    Graceful,
    /// Exit at once (no SIGTERM handler): connections and in-flight calls lost.
    Exit,
}

/// One configuration of the client and the servers.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// The client's health checking (`Watch` of the whole server).
    pub health_check: bool,
    /// What the servers do on SIGTERM.
    pub sigterm: Sigterm,
    /// The pods' `preStop` time.
    pub pre_stop: Duration,
}

impl Setup {
    /// Health checking on, the drain helper with a 2 s delay, no `preStop`.
    pub const PROTECTED: Setup = Setup {
        health_check: true,
        sigterm: Sigterm::Drain(Duration::from_secs(2)),
        pre_stop: Duration::ZERO,
    };
    /// The baseline: health checking off, no drain delay (graceful shutdown on SIGTERM), no
    /// `preStop`.
    pub const BASELINE: Setup = Setup {
        health_check: false,
        sigterm: Sigterm::Graceful,
        pre_stop: Duration::ZERO,
    };
    /// No health checking, and servers that die on SIGTERM (no handler), no `preStop`.
    pub const UNHANDLED: Setup = Setup {
        health_check: false,
        sigterm: Sigterm::Exit,
        pre_stop: Duration::ZERO,
    };
}

/// What one run saw.
pub struct Outcome {
    pub stats: TrafficStats,
    /// Per drained server: when it answered its last call, in ms after its SIGTERM.
    pub drains: Vec<(String, Option<f64>)>,
    pub took: Duration,
}

impl Outcome {
    /// The latest of the terminating servers' last calls, in ms after their SIGTERM.
    pub fn latest_last_call_ms(&self) -> Option<f64> {
        self.drains.iter().filter_map(|(_, d)| *d).reduce(f64::max)
    }

    /// The median of the terminating servers' last calls, in ms after their SIGTERM.
    pub fn median_last_call_ms(&self) -> Option<f64> {
        let mut v: Vec<f64> = self.drains.iter().filter_map(|(_, d)| *d).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }
}

/// Runs the scenario once with `setup`.
pub async fn run(setup: Setup) -> Result<Outcome> {
    let (cluster, etcd) = tokio::try_join!(Cluster::start(1), Etcd::start())?;
    let client = cluster.client().await?;
    let ns = unique_name("roll");
    namespace(&client, &ns).await?;
    let _op = Operator::start(&cluster, &etcd, &OperatorOptions::new(PREFIX)).await?;
    create_reg(
        &client,
        &ns,
        "greeter",
        json!({"selector": {"matchLabels": {"app": "g"}}, "port": 50051}),
    )
    .await?;
    let termination = Termination {
        pre_stop: setup.pre_stop,
        grace: Duration::from_secs(GRACE_S),
    };
    let on_sigterm = match setup.sigterm {
        Sigterm::Drain(delay) => {
            let drainer: Drainer = Arc::new(move |reporter, trigger: BoxUnit| -> BoxUnit {
                Box::pin(Drain::new(reporter).delay(delay).trigger(trigger).wait())
            });
            OnSigterm::Drain(drainer)
        }
        Sigterm::Graceful => OnSigterm::GracefulShutdown,
        Sigterm::Exit => OnSigterm::Exit,
    };
    let kubelet =
        PodServers::start_on_sigterm(client.clone(), &ns, "app=g", 50051, termination, on_sigterm);
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment(REPLICAS, GRACE_S)?)
        .await?;
    poll("the Deployment rolled out", ROLL_DEADLINE, || {
        rolled_out(&client, &ns, REPLICAS)
    })
    .await?;
    let kv = etcd.client().await?;
    let (before, _) = wait_converged(&kv, &client, &ns, PREFIX).await?;
    anyhow::ensure!(
        before.len() == REPLICAS as usize,
        "{REPLICAS} keys: {before:?}"
    );

    let etcd_client = EtcdConnect::new(vec![etcd.endpoint()]).connect().await?;
    let mut builder = Balancer::builder(etcd_client, format!("{PREFIX}/{ns}/greeter"));
    if setup.health_check {
        builder = builder.health_check("");
    }
    let balancer = builder.build().await?;
    let traffic = Traffic::start_callers(balancer.clone(), RATE, CALLERS);
    traffic.wait_calls(200).await?;

    let started = Instant::now();
    let mut keys = before;
    let mut uids = pod_uids(&client, &ns).await?;
    for round in 0..ROLLOUTS {
        let stamp = format!("{}-{round}", k8s_openapi::jiff::Timestamp::now());
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .patch(
                "greeter",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                    "kubectl.kubernetes.io/restartedAt": stamp}}}}})),
            )
            .await?;
        let rolled = Instant::now();
        // The new generation shows up first, then the rollout completes.
        poll("the rollout to start", ROLL_DEADLINE, || async {
            let d = Api::<Deployment>::namespaced(client.clone(), &ns)
                .get("greeter")
                .await
                .ok()?;
            (d.status?.observed_generation? >= d.metadata.generation?).then_some(())
        })
        .await?;
        poll("the rollout to finish", ROLL_DEADLINE, || {
            rolled_out(&client, &ns, REPLICAS)
        })
        .await?;
        let (after, converged) = wait_converged(&kv, &client, &ns, PREFIX).await?;
        let uids_after = pod_uids(&client, &ns).await?;
        anyhow::ensure!(
            uids_after.is_disjoint(&uids),
            "round {round}: every pod was replaced: {uids:?} -> {uids_after:?}"
        );
        // With a drain delay every old pod still holds its IP (its finalizer) when the next new
        // pod gets one; without, an old server stops within milliseconds and kwok may hand its
        // IP to the next new pod, as a real cluster may.
        if matches!(setup.sigterm, Sigterm::Drain(_)) {
            anyhow::ensure!(
                after.is_disjoint(&keys),
                "round {round}: every pod was replaced: {keys:?} -> {after:?}"
            );
        }
        println!(
            "rollout {round}: done {:.2?} after the patch, etcd equal to the Ready pods \
             {converged:.2?} later; {}",
            rolled.elapsed(),
            traffic.stats()
        );
        keys = after;
        uids = uids_after;
    }
    // The last old servers finish their termination (drain delay, grace) before counting.
    poll(
        "every old server stopped",
        Duration::from_secs(GRACE_S) + DEADLINE,
        || async {
            let stopped = kubelet.drains().len();
            (stopped >= ROLLOUTS * REPLICAS as usize).then_some(())
        },
    )
    .await?;
    traffic.wait_calls(100).await?;
    let stats = traffic.stats();
    drop(traffic);
    Ok(Outcome {
        stats,
        drains: kubelet.drains(),
        took: started.elapsed(),
    })
}

/// The UIDs of the pods of `ns`.
async fn pod_uids(client: &kube::Client, ns: &str) -> Result<std::collections::BTreeSet<String>> {
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect())
}

/// Prints what a run saw.
pub fn print(label: &str, setup: Setup, o: &Outcome) {
    let lasts: Vec<String> = o
        .drains
        .iter()
        .map(|(name, d)| match d {
            Some(ms) => format!("{name}: {ms:+.1} ms"),
            None => format!("{name}: never served"),
        })
        .collect();
    println!(
        "{label} ({setup:?}): {ROLLOUTS} rollouts of {REPLICAS} replicas in {:.1?}, {CALLERS} \
         callers at <= {RATE} RPC/s: {} RPCs sent, {} failed ({}); SIGTERM -> last RPC each \
         terminating server received (negative: before SIGTERM): latest {}, median {} [{}]",
        o.took,
        o.stats.sent,
        o.stats.failed,
        o.stats,
        ms(o.latest_last_call_ms()),
        ms(o.median_last_call_ms()),
        lasts.join(", ")
    );
}

/// `+12.3 ms`, or `-` for none.
pub fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:+.1} ms"))
}
