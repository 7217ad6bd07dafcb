//! The operator (a real `registrar` process given every member's endpoint) and the resolver
//! against a real 3-member etcd under faults. Each test records the prefix with an etcd watch on
//! a member that stays up and asserts that no key of a Ready pod is deleted and that etcd ends
//! up holding exactly the Ready pods' keys; each prints what it saw (RPCs sent and failed, keys
//! deleted, convergence time, whether the writer's lease was kept or granted again).
//!
//! 1. kill -9 the etcd leader while a Deployment rolls (kwok cluster, a stand-in kubelet serving
//!    Greeter on the pods' 127.x IPs, a [`Balancer`] client sending RPCs at a bounded rate).
//! 2. kill -9 the member that serves the operator's lease keepalive stream, then the one that
//!    serves its watch (found from the members' own gRPC metrics): both streams move on, drift
//!    is still repaired, the lease is kept.
//! 3. quorum lost (2 of 3 members killed) for longer than the lease TTL, then back: the
//!    registration shows `EtcdUnavailable` (one Event), nothing is deleted meanwhile, everything
//!    is on one live lease afterwards; the resolver serves its last endpoints all along and picks
//!    up what changed meanwhile.
//! 4. a member whose client traffic stalls while its process stays alive in raft (a frozen
//!    client proxy): the operator's requests and streams move to the healthy members within a
//!    measured time; a second test shows what etcd-client 0.21 does there on its own.
//!
//! Out of scope: a member restarted with a wiped data dir. It would come back with a new member
//! id that the cluster does not know (etcd refuses it until it is removed and re-added with
//! `etcdctl member remove/add`, an operator's job for the etcd cluster, not for Registrar).

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use registrar_resolver::{Balancer, ConnectivityState, EtcdConnect};
use registrar_testenv::greeter::{self, TestServer};
use registrar_testenv::pod_servers::{PodServers, Termination};
use registrar_testenv::{Cluster, ControlPlane, EtcdCluster, poll, unique_name};
use serde_json::json;
use support::faults::*;
use support::*;
use tokio::time::Instant;

/// The tests of this file measure time and each runs a whole etcd cluster: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PREFIX: &str = "registrar";
/// RPCs per second of the client.
const RATE: u32 = 100;

fn options(ttl: u64) -> OperatorOptions {
    let mut o = OperatorOptions::new(PREFIX);
    o.lease_ttl = ttl;
    o
}

fn target(ns: &str) -> String {
    format!("{PREFIX}/{ns}/greeter")
}

fn key(ns: &str, addr: &str) -> String {
    format!("{}/{addr}", target(ns))
}

/// A Balancer over the registration, its etcd client given every member (default member guard).
async fn balancer(etcd: &EtcdCluster, ns: &str) -> Result<Balancer> {
    let client = EtcdConnect::new(etcd.endpoints()).connect().await?;
    Ok(Balancer::builder(client, target(ns)).build().await?)
}

/// Waits until the balancer's backends are exactly `want`, all READY; returns how long it took.
async fn balancer_on(balancer: &Balancer, want: &BTreeSet<String>) -> Result<Duration> {
    let started = Instant::now();
    poll(&format!("the balancer on {want:?}"), DEADLINE, || async {
        let b = balancer.backends();
        let ready = b.iter().all(|b| b.state == ConnectivityState::Ready);
        let addrs: BTreeSet<String> = b.into_iter().map(|b| b.addr).collect();
        (ready && addrs == *want).then_some(())
    })
    .await
    .with_context(|| format!("backends: {:?}", balancer.backends()))?;
    Ok(started.elapsed())
}

/// The addresses of keys.
fn addrs(keys: &BTreeSet<String>) -> BTreeSet<String> {
    keys.iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .collect()
}

/// The one lease every key is on (fails unless there is exactly one, and it is live).
async fn the_lease(kv: &etcd_client::Client) -> Result<(i64, i64)> {
    let leases = leases_under(kv, PREFIX).await?;
    anyhow::ensure!(
        leases.len() == 1 && leases[0] != 0,
        "keys on leases {leases:?}"
    );
    let mut c = kv.clone();
    let ttl = c.lease_time_to_live(leases[0], None).await?.ttl();
    Ok((leases[0], ttl))
}

/// Every deleted key must be one of `allowed` (pods that stopped being Ready); prints them.
fn check_deletes(record: &mut Record, allowed: &BTreeSet<String>) -> Vec<String> {
    let deleted = record.deleted();
    let bad: Vec<&String> = deleted.iter().filter(|k| !allowed.contains(*k)).collect();
    assert!(
        bad.is_empty(),
        "keys of Ready pods deleted: {bad:?} (all deletes: {deleted:?})"
    );
    deleted
}

/// Sum of the counts of the Events with `reason` about the registration `name`.
async fn event_count(client: &kube::Client, ns: &str, reason: &str, name: &str) -> Result<i32> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    Ok(events
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason) && e.involved_object.name.as_deref() == Some(name)
        })
        .map(|e| {
            let series = e.series.as_ref().and_then(|s| s.count).unwrap_or(0);
            e.count.unwrap_or(1).max(series).max(1)
        })
        .sum())
}

async fn register_greeter(client: &kube::Client, ns: &str) -> Result<()> {
    create_reg(
        client,
        ns,
        "greeter",
        json!({"selector": {"matchLabels": {"app": "g"}}, "port": 50051}),
    )
    .await?;
    Ok(())
}

/// A Ready pod `name` at `ip` with a Greeter server on `ip:50051`.
async fn serving_pod(client: &kube::Client, ns: &str, name: &str, ip: &str) -> Result<TestServer> {
    let addr: SocketAddr = format!("{ip}:50051").parse()?;
    let server = greeter::try_serve(addr, name.to_string()).await?;
    ready_pod(client, ns, name, json!({"app": "g"}), ip).await?;
    Ok(server)
}

// ---- 1. the leader dies during a rollout ---------------------------------------------------

#[tokio::test]
async fn killing_the_etcd_leader_during_a_rollout_costs_no_rpc() -> Result<()> {
    let _serial = SERIAL.lock().await;
    const TTL: u64 = 10;
    let (cluster, mut etcd) = tokio::try_join!(Cluster::start(1), EtcdCluster::start())?;
    let client = cluster.client().await?;
    let ns = unique_name("roll");
    namespace(&client, &ns).await?;
    let op = Operator::start_with_endpoints(&cluster, &etcd.endpoints(), &options(TTL)).await?;
    register_greeter(&client, &ns).await?;
    let kubelet = PodServers::start(
        client.clone(),
        &ns,
        "app=g",
        50051,
        Termination {
            pre_stop: Duration::from_secs(1),
            grace: Duration::from_secs(3),
        },
    );
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment(3, 5)?)
        .await?;
    let leader = etcd.wait_leader().await?;
    let observer = (leader + 1) % etcd.len();
    let kv = etcd.member_client(observer).await?;
    poll("the Deployment's 3 pods Ready", DEADLINE, || async {
        let keys = ready_pod_keys(&client, &ns, PREFIX, "greeter", 50051)
            .await
            .ok()?;
        (keys.len() == 3).then_some(())
    })
    .await?;
    let (before, _) = wait_converged(&kv, &client, &ns, PREFIX).await?;
    let (lease_before, _) = the_lease(&kv).await?;
    let grants_before = op
        .metric("registrar_etcd_lease_grants_total")
        .await
        .unwrap_or(0.0);

    let balancer = balancer(&etcd, &ns).await?;
    balancer_on(&balancer, &addrs(&before)).await?;
    let mut record = Record::start(&etcd, observer, PREFIX).await?;
    let traffic = Traffic::start(balancer.clone(), RATE);
    traffic.wait_calls(20).await?;

    // Roll every pod; kill the leader once the first new pod is published.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch(
            "greeter",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": now}}}}})),
        )
        .await?;
    let rolled = Instant::now();
    poll("the first new pod published", DEADLINE, || {
        let new = record
            .events()
            .iter()
            .any(|e| !e.delete && e.key.ends_with(":50051") && !before.contains(&e.key));
        async move { new.then_some(()) }
    })
    .await?;
    etcd.kill(leader).await?;
    let killed = Instant::now();
    let new_leader = etcd.wait_leader().await?;
    let election = killed.elapsed();

    poll("the rollout to finish", DEADLINE, || {
        rolled_out(&client, &ns, 3)
    })
    .await?;
    let done = killed.elapsed();
    let (after, converged) = wait_converged(&kv, &client, &ns, PREFIX).await?;
    assert!(
        after.is_disjoint(&before),
        "every pod was replaced: {before:?} -> {after:?}"
    );
    let switched = balancer_on(&balancer, &addrs(&after)).await?;
    traffic.wait_calls(50).await?;
    let stats = traffic.stats();
    drop(traffic);

    let (lease_after, ttl_left) = the_lease(&kv).await?;
    let grants = op
        .metric("registrar_etcd_lease_grants_total")
        .await
        .unwrap_or(0.0)
        - grants_before;
    let deleted = check_deletes(&mut record, &before);
    println!(
        "leader kill during a rollout: member {leader} killed {:.2?} after the roll began, \
         member {new_leader} leads after {election:.2?}; rollout done {done:.2?} after the kill, \
         etcd equal to the Ready pods {converged:.2?} later, the balancer on the new pods \
         {switched:.2?} after that; {stats}; {} keys put, {} deleted \
         ({deleted:?}); lease {} (before {lease_before:x}, after {lease_after:x}, {ttl_left} s \
         left of {TTL} s; {grants} new grants); kubelet started {} servers, served {}",
        killed - rolled,
        record.puts(),
        deleted.len(),
        if lease_after == lease_before {
            "kept"
        } else {
            "granted again"
        },
        kubelet.started(),
        kubelet.served(),
    );
    assert_eq!(stats.failed, 0, "RPCs failed: {stats}");
    assert!(ttl_left > 0);
    assert_eq!(
        deleted.len(),
        before.len(),
        "each old pod's key deleted once"
    );
    Ok(())
}

// ---- 2. the member serving the operator's streams dies -----------------------------------

/// A stream of the operator's.
#[derive(Clone, Copy, Debug)]
enum Stream {
    Keepalive,
    Watch,
}

async fn streams(etcd: &EtcdCluster, kind: Stream) -> Vec<Option<i64>> {
    match kind {
        Stream::Keepalive => keepalive_streams(etcd).await,
        Stream::Watch => watch_streams(etcd).await,
    }
}

/// The one member that has one open stream of `kind`, while every other member has none.
async fn stream_holder(etcd: &EtcdCluster, kind: Stream) -> Result<usize> {
    poll(
        &format!("one member serving the {kind:?} stream"),
        DEADLINE,
        || async {
            let by = streams(etcd, kind).await;
            let holders: Vec<usize> = (0..by.len()).filter(|i| by[*i].unwrap_or(0) > 0).collect();
            (holders.len() == 1 && by[holders[0]] == Some(1)).then(|| holders[0])
        },
    )
    .await
}

/// The lease's remaining TTL as etcd reports it grows between two looks: a keepalive got
/// through.
async fn wait_renewed(kv: &etcd_client::Client, lease: i64) -> Result<Duration> {
    let started = Instant::now();
    let mut c = kv.clone();
    let mut last = c.lease_time_to_live(lease, None).await?.ttl();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ttl = c.lease_time_to_live(lease, None).await?.ttl();
        anyhow::ensure!(ttl > 0, "lease {lease:x} expired");
        if ttl > last {
            return Ok(started.elapsed());
        }
        last = ttl;
        anyhow::ensure!(
            started.elapsed() < DEADLINE,
            "no keepalive of lease {lease:x} within {DEADLINE:?}"
        );
    }
}

#[tokio::test]
async fn killing_the_member_that_serves_the_operators_streams_moves_them() -> Result<()> {
    let _serial = SERIAL.lock().await;
    const TTL: u64 = 6;
    let (cp, mut etcd) = tokio::try_join!(ControlPlane::start(), EtcdCluster::start())?;
    let client = cp.client().await?;
    let ns = unique_name("streams");
    namespace(&client, &ns).await?;
    let _op = Operator::start_with_endpoints(&cp, &etcd.endpoints(), &options(TTL)).await?;
    register_greeter(&client, &ns).await?;
    for (name, ip) in [
        ("p1", "127.0.2.1"),
        ("p2", "127.0.2.2"),
        ("p3", "127.0.2.3"),
    ] {
        ready_pod(&client, &ns, name, json!({"app": "g"}), ip).await?;
    }
    let kv0 = etcd.member_client(0).await?;
    let (keys, _) = wait_converged(&kv0, &client, &ns, PREFIX).await?;
    assert_eq!(keys.len(), 3);
    let (lease, _) = the_lease(&kv0).await?;
    drop(kv0);

    let mut hand_deleted = BTreeSet::new();
    for (next_pod, stream) in (4..).zip([Stream::Keepalive, Stream::Watch]) {
        // No watch of the test is open here: every watch stream is the operator's.
        let victim = stream_holder(&etcd, stream).await?;
        let observer = (victim + 1) % etcd.len();
        let kv = etcd.member_client(observer).await?;
        let mut record = Record::start(&etcd, observer, PREFIX).await?;
        let was_leader = etcd.wait_leader().await? == victim;

        etcd.kill(victim).await?;
        let killed = Instant::now();
        // The keepalive stream on a member still up (the victim's metrics are gone with it).
        let moved_keepalive = {
            stream_holder(&etcd, Stream::Keepalive).await?;
            killed.elapsed()
        };
        let renewed = wait_renewed(&kv, lease).await? + moved_keepalive;
        // Drift is repaired: the writer watches again, on a member that is up.
        let drift = key(&ns, "127.0.2.1:50051");
        let mut c = kv.clone();
        c.delete(drift.as_str(), None).await?;
        hand_deleted.insert(drift.clone());
        let removed = Instant::now();
        poll("the deleted key put back", DEADLINE, || {
            let mut c = kv.clone();
            let drift = drift.clone();
            async move { (lease_of(&mut c, &drift).await.ok()? == lease).then_some(()) }
        })
        .await?;
        let repaired = removed.elapsed();
        // A change is published.
        let (name, ip) = (format!("p{next_pod}"), format!("127.0.2.{next_pod}"));
        let changed = Instant::now();
        ready_pod(&client, &ns, &name, json!({"app": "g"}), &ip).await?;
        let (_, _) = wait_converged(&kv, &client, &ns, PREFIX).await?;
        let published = changed.elapsed();
        let (now_lease, ttl_left) = the_lease(&kv).await?;
        let deleted = record.deleted();
        let holder = keepalive_streams(&etcd).await;
        let watchers = watch_streams(&etcd).await;
        println!(
            "killed member {victim} (serving the operator's {stream:?} stream{}): keepalive \
             stream on another member after {moved_keepalive:.2?} (per member now \
             {holder:?}), lease renewed by {renewed:.2?}; hand-deleted key put back in \
             {repaired:.2?}; new pod published in {published:.2?}; lease {} ({ttl_left} s \
             left); keys deleted {deleted:?}; watch streams per member {watchers:?} (one is \
             the test's)",
            if was_leader { ", the leader" } else { "" },
            if now_lease == lease {
                "kept"
            } else {
                "granted again"
            },
        );
        assert_eq!(now_lease, lease, "the lease was lost");
        let bad: Vec<&String> = deleted
            .iter()
            .filter(|k| !hand_deleted.contains(*k))
            .collect();
        assert!(bad.is_empty(), "the operator deleted {bad:?}");
        drop(record);
        etcd.restart(victim).await?;
    }
    Ok(())
}

// ---- 3. quorum lost ---------------------------------------------------------------------

#[tokio::test]
async fn quorum_lost_longer_than_the_lease_ttl_deletes_nothing_and_recovers() -> Result<()> {
    let _serial = SERIAL.lock().await;
    const TTL: u64 = 4;
    let (cp, mut etcd) = tokio::try_join!(ControlPlane::start(), EtcdCluster::start())?;
    let client = cp.client().await?;
    let ns = unique_name("quorum");
    namespace(&client, &ns).await?;
    let op = Operator::start_with_endpoints(&cp, &etcd.endpoints(), &options(TTL)).await?;
    register_greeter(&client, &ns).await?;
    let mut servers = Vec::new();
    for (name, ip) in [
        ("p1", "127.0.3.1"),
        ("p2", "127.0.3.2"),
        ("p3", "127.0.3.3"),
    ] {
        servers.push(serving_pod(&client, &ns, name, ip).await?);
    }
    let leader = etcd.wait_leader().await?;
    let survivor = (leader + 1) % etcd.len();
    let victims: Vec<usize> = (0..etcd.len()).filter(|i| *i != survivor).collect();
    let kv = etcd.member_client(survivor).await?;
    let (before, _) = wait_converged(&kv, &client, &ns, PREFIX).await?;
    wait_reason(&client, &ns, "greeter", "Published").await?;
    let (lease_before, _) = the_lease(&kv).await?;
    let grants_before = op
        .metric("registrar_etcd_lease_grants_total")
        .await
        .unwrap_or(0.0);
    let balancer = balancer(&etcd, &ns).await?;
    balancer_on(&balancer, &addrs(&before)).await?;
    let mut record = Record::start(&etcd, survivor, PREFIX).await?;
    let traffic = Traffic::start(balancer.clone(), RATE);
    traffic.wait_calls(20).await?;

    for v in &victims {
        etcd.kill(*v).await?;
    }
    let lost = Instant::now();
    wait_reason(&client, &ns, "greeter", "EtcdUnavailable").await?;
    let reported = lost.elapsed();
    // Changes while etcd cannot be written: p1 goes, p4 comes.
    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete("p1", &DeleteParams::default())
        .await?;
    servers.push(serving_pod(&client, &ns, "p4", "127.0.3.4").await?);
    // The outage lasts longer than the lease TTL.
    tokio::time::sleep_until(lost + Duration::from_secs(TTL + 3)).await;
    traffic.wait_calls(20).await?;
    let during = traffic.stats();
    let deleted_during = record.deleted();
    let served_during = balancer_on(&balancer, &addrs(&before)).await;
    assert!(
        deleted_during.is_empty(),
        "deleted while quorum was lost: {deleted_during:?}"
    );
    assert!(
        served_during.is_ok(),
        "the balancer dropped its last endpoints: {:?}",
        balancer.backends()
    );

    for v in &victims {
        etcd.restart(*v).await?;
    }
    let back = Instant::now();
    let (after, converged) = wait_converged(&kv, &client, &ns, PREFIX).await?;
    let want: BTreeSet<String> = ["127.0.3.2", "127.0.3.3", "127.0.3.4"]
        .iter()
        .map(|ip| key(&ns, &format!("{ip}:50051")))
        .collect();
    assert_eq!(after, want);
    let switched = balancer_on(&balancer, &addrs(&after)).await?;
    wait_reason(&client, &ns, "greeter", "Published").await?;
    let published = back.elapsed();
    traffic.wait_calls(20).await?;
    let stats = traffic.stats();
    drop(traffic);
    let (lease_after, ttl_left) = the_lease(&kv).await?;
    let grants = op
        .metric("registrar_etcd_lease_grants_total")
        .await
        .unwrap_or(0.0)
        - grants_before;
    let events = event_count(&client, &ns, "EtcdUnavailable", "greeter").await?;
    let p1 = key(&ns, "127.0.3.1:50051");
    let deleted = check_deletes(&mut record, &BTreeSet::from([p1.clone()]));
    println!(
        "quorum lost for {:.2?} (lease TTL {TTL} s): EtcdUnavailable shown after {reported:.2?} \
         ({events} Event); during the outage {during}, nothing deleted; after quorum returned: \
         keys converged in {converged:.2?}, the balancer followed {switched:.2?} later, \
         Published after {published:.2?}; lease {} (before {lease_before:x}, after \
         {lease_after:x}, {ttl_left} s left, {grants} new grants); {} puts, deleted {deleted:?}; \
         overall {stats}",
        back - lost,
        if lease_after == lease_before {
            "kept (etcd renews leases when a leader is elected)"
        } else {
            "granted again"
        },
        record.puts(),
    );
    assert_eq!(events, 1, "EtcdUnavailable must be reported once");
    assert!(ttl_left > 0);
    assert_eq!(deleted, vec![p1]);
    assert_eq!(stats.failed, 0, "RPCs failed: {stats}");
    Ok(())
}

// ---- 4. a member whose client traffic stalls ----------------------------------------------

#[tokio::test]
async fn a_member_whose_client_traffic_stalls_is_left_within_a_bounded_time() -> Result<()> {
    let _serial = SERIAL.lock().await;
    const TTL: u64 = 9;
    let (cp, etcd) = tokio::try_join!(ControlPlane::start(), EtcdCluster::start_proxied(3))?;
    let client = cp.client().await?;
    let ns = unique_name("frozen");
    namespace(&client, &ns).await?;
    let op = Operator::start_with_endpoints(&cp, &etcd.endpoints(), &options(TTL)).await?;
    register_greeter(&client, &ns).await?;
    for (name, ip) in [
        ("p1", "127.0.4.1"),
        ("p2", "127.0.4.2"),
        ("p3", "127.0.4.3"),
    ] {
        ready_pod(&client, &ns, name, json!({"app": "g"}), ip).await?;
    }
    let victim = stream_holder(&etcd, Stream::Keepalive).await?;
    let observer = (victim + 1) % etcd.len();
    let kv = etcd.member_client(observer).await?;
    let (before, _) = wait_converged(&kv, &client, &ns, PREFIX).await?;
    let (lease, _) = the_lease(&kv).await?;
    let mut record = Record::start(&etcd, observer, PREFIX).await?;

    // The worst moment: right after a keepalive was answered, so that the stalled stream has
    // the longest wait before the lease would run out.
    wait_renewed(&kv, lease).await?;
    etcd.proxy(victim)?.freeze();
    let frozen = Instant::now();
    let margin = LeaseMargin::start(&kv, lease);
    ready_pod(&client, &ns, "p4", json!({"app": "g"}), "127.0.4.4").await?;
    let p4 = key(&ns, "127.0.4.4:50051");
    poll("p4 published", DEADLINE, || {
        let seen = record.events().iter().any(|e| !e.delete && e.key == p4);
        async move { seen.then_some(()) }
    })
    .await?;
    let published = frozen.elapsed();
    let moved = {
        poll(
            "a keepalive stream on a healthy member",
            DEADLINE,
            || async {
                let by = keepalive_streams(&etcd).await;
                (0..by.len())
                    .any(|i| i != victim && by[i].unwrap_or(0) > 0)
                    .then_some(())
            },
        )
        .await?;
        frozen.elapsed()
    };
    let renewed = wait_renewed(&kv, lease).await? + moved;
    let lowest = margin.lowest();
    // Drift is repaired (the writer watches through a healthy member).
    let drift = key(&ns, "127.0.4.2:50051");
    let mut c = kv.clone();
    c.delete(drift.as_str(), None).await?;
    let removed = Instant::now();
    poll("the deleted key put back", DEADLINE, || {
        let mut c = kv.clone();
        let drift = drift.clone();
        async move { (lease_of(&mut c, &drift).await.ok()? == lease).then_some(()) }
    })
    .await?;
    let repaired = removed.elapsed();
    let (after, _) = wait_converged(&kv, &client, &ns, PREFIX).await?;
    let (now_lease, ttl_left) = the_lease(&kv).await?;
    let deleted = record.deleted();
    let failures = op
        .metric("registrar_etcd_keepalive_failures_total")
        .await
        .unwrap_or(0.0);
    println!(
        "client traffic of member {victim} frozen (it served the operator's keepalive stream; \
         lease TTL {TTL} s): a new pod published after {published:.2?}; keepalive stream on a \
         healthy member after {moved:.2?}, a keepalive answered again by {renewed:.2?} (lowest remaining TTL \
         seen {lowest} s; {failures} keepalive failures); hand-deleted key put back in {repaired:.2?}; lease {} ({ttl_left} s left); \
         keys deleted {deleted:?} (the hand-deleted one only); {} keys before, {} after",
        if now_lease == lease {
            "kept"
        } else {
            "granted again"
        },
        before.len(),
        after.len(),
    );
    if std::env::var_os("SHOW_OPERATOR_LOG").is_some() {
        println!("{}", op.log_text());
    }
    assert!(
        lowest > 0,
        "the lease ran out ({lowest} s left at the lowest)"
    );
    assert_eq!(now_lease, lease, "the lease was lost");
    assert_eq!(deleted, vec![drift], "the operator deleted keys");
    // Generous: the operator probes members every 250 ms (500 ms deadline).
    assert!(published < Duration::from_secs(10), "{published:?}");
    etcd.proxy(victim)?.open();
    Ok(())
}

/// Samples a lease's remaining TTL every 100 ms and keeps the lowest value seen (-1: expired).
struct LeaseMargin {
    lowest: std::sync::Arc<std::sync::atomic::AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseMargin {
    fn start(kv: &etcd_client::Client, lease: i64) -> LeaseMargin {
        let lowest = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
        let (mut c, low) = (kv.clone(), lowest.clone());
        let task = tokio::spawn(async move {
            loop {
                if let Ok(r) = c.lease_time_to_live(lease, None).await {
                    low.fetch_min(r.ttl(), std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        LeaseMargin { lowest, task }
    }

    fn lowest(&self) -> i64 {
        self.lowest.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for LeaseMargin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many of `n` concurrent gets through `client` got no answer within `deadline`, and how
/// many failed with an error.
async fn hung(client: &etcd_client::Client, n: usize, deadline: Duration) -> (usize, usize) {
    let calls = (0..n).map(|_| {
        let mut c = client.clone();
        async move { tokio::time::timeout(deadline, c.get("probe", None)).await }
    });
    let results = futures::future::join_all(calls).await;
    let hung = results.iter().filter(|r| r.is_err()).count();
    let failed = results.iter().filter(|r| matches!(r, Ok(Err(_)))).count();
    (hung, failed)
}

/// Sequential gets through `client` for `window`, each with `deadline`: the slowest answer and
/// how long after the start the last failure (or hang) ended.
async fn sequential(
    client: &etcd_client::Client,
    window: Duration,
    deadline: Duration,
) -> (Duration, Duration, usize, usize) {
    let started = Instant::now();
    let (mut slowest, mut last_bad, mut n, mut bad) = (Duration::ZERO, Duration::ZERO, 0, 0);
    let mut c = client.clone();
    while started.elapsed() < window {
        let at = Instant::now();
        let r = tokio::time::timeout(deadline, c.get("probe", None)).await;
        n += 1;
        slowest = slowest.max(at.elapsed());
        if !matches!(r, Ok(Ok(_))) {
            bad += 1;
            last_bad = started.elapsed();
        }
    }
    (slowest, last_bad, n, bad)
}

/// What etcd-client 0.21 does on its own when one member's client traffic stalls, next to the
/// member guard the operator and the resolver use.
#[tokio::test]
async fn etcd_client_alone_hangs_on_a_member_whose_traffic_stalls() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let etcd = EtcdCluster::start_proxied(3).await?;
    let endpoints = etcd.endpoints();
    let plain = etcd_client::Client::connect(&endpoints, None).await?;
    // The project's settings without the guard: HTTP/2 keepalive 10 s / 5 s, connect timeout 5 s.
    let unguarded = EtcdConnect::new(&endpoints)
        .member_probe(None)
        .connect()
        .await?;
    let guarded = EtcdConnect::new(&endpoints)
        .member_probe(Some(registrar_resolver::members::ProbeSettings::new(
            Duration::from_millis(250),
            Duration::from_millis(500),
        )))
        .connect()
        .await?;
    // Every connection up before the freeze.
    for c in [&plain, &unguarded, &guarded] {
        assert_eq!(hung(c, 30, Duration::from_secs(2)).await, (0, 0));
    }
    let victim = 0;
    etcd.proxy(victim)?.freeze();
    let frozen = Instant::now();
    let deadline = Duration::from_secs(2);
    let (g_slowest, g_last_bad, g_n, g_bad) =
        sequential(&guarded, Duration::from_secs(4), deadline).await;
    let (p_hung, p_failed) = hung(&plain, 30, deadline).await;
    let (u_hung, u_failed) = hung(&unguarded, 30, deadline).await;
    // Past the HTTP/2 keepalive (10 s + 5 s): does the unguarded client recover by itself?
    tokio::time::sleep_until(frozen + Duration::from_secs(17)).await;
    let (u_hung_later, u_failed_later) = hung(&unguarded, 30, deadline).await;
    let (p_hung_later, _) = hung(&plain, 30, deadline).await;
    let (g_hung_later, g_failed_later) = hung(&guarded, 30, deadline).await;
    println!(
        "member {victim}'s client traffic frozen: guarded client (probe 250 ms / 500 ms): {g_n} \
         sequential gets, {g_bad} failed or hung, slowest {g_slowest:.2?}, last failure ended \
         {g_last_bad:.2?} after the freeze; later {g_hung_later}/30 hung, {g_failed_later} \
         failed. Plain etcd_client::Client (defaults): {p_hung}/30 concurrent gets hung past \
         {deadline:?} ({p_failed} failed), 17 s later {p_hung_later}/30 hung. EtcdConnect without \
         the guard (HTTP/2 keepalive 10 s/5 s): {u_hung}/30 hung ({u_failed} failed), 17 s \
         later {u_hung_later}/30 hung ({u_failed_later} failed)"
    );
    assert!(
        p_hung > 0,
        "etcd-client no longer sends requests to a stalled member: the guard may be unneeded"
    );
    assert_eq!((g_hung_later, g_failed_later), (0, 0));
    assert!(g_slowest <= deadline);
    Ok(())
}
