//! Zero-error rolling updates end to end (issue 12 §4): a kwok cluster with the operator
//! running against one etcd, a Deployment of 4 replicas (maxSurge 1, maxUnavailable 0) whose
//! pods' 127.x IPs are served by the stand-in kubelet ([`PodServers`]) in its realistic mode
//! (on pod deletion: the `preStop` time, then the SIGTERM equivalent, the resolver's [`Drain`]
//! helper's trigger: NOT_SERVING on `grpc.health.v1`, serving on for the drain delay, then a
//! graceful shutdown; killed after the grace period; it never looks at etcd), and a
//! [`Balancer`] client with health checking on sending ~1,000 RPCs per second (one at a time,
//! bounded). Three consecutive rolling updates cost 0 failed RPCs; the test prints what it
//! sent, what failed and how long after the drain trigger each terminating server answered its
//! last call.
//!
//! The baseline (health checking off, no drain delay: the server shuts down gracefully at
//! once, clients drop it only when etcd tells them) is an opt-in `#[ignore]` test that prints
//! the same figures: `cargo test --test rollouts -- --ignored`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use registrar_resolver::{Balancer, Drain, EtcdConnect};
use registrar_testenv::greeter::{BoxUnit, Drainer};
use registrar_testenv::pod_servers::{PodServers, Termination};
use registrar_testenv::{Cluster, Etcd, poll, unique_name};
use serde_json::json;
use support::faults::*;
use support::*;
use tokio::time::Instant;

/// The tests of this file measure RPC failures under load: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PREFIX: &str = "registrar";
/// RPCs per second of the client (upper bound: one call at a time).
const RATE: u32 = 1000;
const REPLICAS: i32 = 4;
const ROLLOUTS: usize = 3;
/// The pods' `terminationGracePeriodSeconds`.
const GRACE_S: u64 = 5;
/// How long a rollout may take.
const ROLL_DEADLINE: Duration = Duration::from_secs(120);

/// One configuration of the client and the servers.
#[derive(Clone, Copy, Debug)]
struct Setup {
    /// The client's health checking (`Watch` of the whole server).
    health_check: bool,
    /// The servers' drain delay (`None`: no drain helper, graceful shutdown at once).
    drain: Option<Duration>,
    /// The pods' `preStop` time.
    pre_stop: Duration,
}

/// What one run saw.
struct Outcome {
    stats: TrafficStats,
    /// Per drained server: when it answered its last call, in ms after the drain trigger.
    drains: Vec<(String, Option<f64>)>,
    took: Duration,
}

async fn rollouts(setup: Setup) -> Result<Outcome> {
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
    let kubelet = match setup.drain {
        Some(delay) => {
            let drainer: Drainer = Arc::new(move |reporter, trigger: BoxUnit| -> BoxUnit {
                Box::pin(Drain::new(reporter).delay(delay).trigger(trigger).wait())
            });
            PodServers::start_draining(client.clone(), &ns, "app=g", 50051, termination, drainer)
        }
        None => PodServers::start(client.clone(), &ns, "app=g", 50051, termination),
    };
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment(REPLICAS, GRACE_S)?)
        .await?;
    poll("the Deployment rolled out", ROLL_DEADLINE, || {
        rolled_out(&client, &ns, REPLICAS)
    })
    .await?;
    let kv = etcd.client().await?;
    let (before, _) = wait_converged(&kv, &client, &ns, PREFIX).await?;
    assert_eq!(before.len(), REPLICAS as usize);

    let etcd_client = EtcdConnect::new(vec![etcd.endpoint()]).connect().await?;
    let mut builder = Balancer::builder(etcd_client, format!("{PREFIX}/{ns}/greeter"));
    if setup.health_check {
        builder = builder.health_check("");
    }
    let balancer = builder.build().await?;
    let traffic = Traffic::start(balancer.clone(), RATE);
    traffic.wait_calls(200).await?;

    let started = Instant::now();
    let mut keys = before;
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
        assert!(
            after.is_disjoint(&keys),
            "round {round}: every pod was replaced: {keys:?} -> {after:?}"
        );
        println!(
            "rollout {round}: done {:.2?} after the patch, etcd equal to the Ready pods \
             {converged:.2?} later; {}",
            rolled.elapsed(),
            traffic.stats()
        );
        keys = after;
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

fn print(label: &str, setup: Setup, o: &Outcome) {
    let lasts: Vec<String> = o
        .drains
        .iter()
        .map(|(name, d)| match d {
            Some(ms) => format!("{name}: {ms:+.1} ms"),
            None => format!("{name}: never served"),
        })
        .collect();
    let latest = o
        .drains
        .iter()
        .filter_map(|(_, d)| *d)
        .fold(f64::NEG_INFINITY, f64::max);
    println!(
        "{label} ({setup:?}): {ROLLOUTS} rollouts of {REPLICAS} replicas in {:.1?}: {} RPCs \
         sent, {} failed ({}); drain trigger -> last RPC each terminating server received \
         (negative: before the trigger): latest {latest:+.1} ms [{}]",
        o.took,
        o.stats.sent,
        o.stats.failed,
        o.stats,
        lasts.join(", ")
    );
}

#[tokio::test]
async fn rolling_updates_with_health_checking_and_drain_fail_no_rpc() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let setup = Setup {
        health_check: true,
        drain: Some(Duration::from_secs(2)),
        pre_stop: Duration::ZERO,
    };
    let o = rollouts(setup).await?;
    print("health checking + drain", setup, &o);
    assert_eq!(o.stats.failed, 0, "RPCs failed: {}", o.stats);
    assert!(
        o.stats.sent > 1000,
        "traffic flowed through the rollouts: {}",
        o.stats
    );
    Ok(())
}

#[tokio::test]
#[ignore = "baseline for BENCHMARKS.md: RPCs fail by design"]
async fn rolling_updates_without_health_checking_or_drain_delay() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let setup = Setup {
        health_check: false,
        drain: None,
        pre_stop: Duration::ZERO,
    };
    let o = rollouts(setup).await?;
    print("baseline: no health checking, no drain delay", setup, &o);
    Ok(())
}
