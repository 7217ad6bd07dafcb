//! Two operator replicas with leader election against a real kube-apiserver and etcd: the
//! leader is killed (SIGKILL), stopped gracefully, or cut off from the API server, while a
//! client watches the prefix. No key of a Ready pod may be deleted at any moment, the standby
//! takes over (the time is measured and printed) and re-puts every key under its own etcd
//! lease before the old one can expire, and changes made after the takeover are published.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use registrar_testenv::{DelayProxy, Link, poll};
use serde_json::json;
use support::*;
use tokio::sync::mpsc::UnboundedReceiver;

/// Leader-election lease duration of these tests, seconds.
const LEASE_DURATION: u64 = 4;
/// etcd lease TTL: at least 1.5 x (lease duration + 2 s), see the chart's validation.
const ETCD_TTL: u64 = 10;

/// The tests of this file measure time: run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn replica(g: &Ground, identity: &str) -> OperatorOptions {
    let mut o = g.options();
    o.lease_ttl = ETCD_TTL;
    o.extra = vec![
        "--leader-elect=true".into(),
        format!("--leader-election-lease-duration={LEASE_DURATION}"),
        format!("--leader-election-namespace={}", g.ns),
        "--leader-election-lease-name=registrar".into(),
        format!("--identity={identity}"),
    ];
    o
}

async fn holder(client: &kube::Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get("registrar")
        .await
        .ok()?
        .spec?
        .holder_identity
}

async fn wait_holder(g: &Ground, who: &str, deadline: Duration) -> Duration {
    let start = Instant::now();
    poll(&format!("{who} holds the Lease"), deadline, || async {
        (holder(&g.client, &g.ns).await.as_deref() == Some(who)).then_some(())
    })
    .await
    .unwrap();
    start.elapsed()
}

/// The remaining TTL of an etcd lease in seconds (-1 once it expired).
async fn ttl(kv: &etcd_client::Client, lease: i64) -> i64 {
    let mut kv = kv.clone();
    kv.lease_time_to_live(lease, None)
        .await
        .map(|r| r.ttl())
        .unwrap_or(-1)
}

/// Starts replica `a`, waits until it leads, then starts replica `b` and publishes three pods.
async fn two_replicas(g: &Ground) -> (Operator, Operator, Vec<String>, i64) {
    let a = Operator::start(&g.cp, &g.etcd, &replica(g, "op-a"))
        .await
        .unwrap();
    wait_holder(g, "op-a", DEADLINE).await;
    a.wait_metric("registrar_leader", |v| v == 1.0)
        .await
        .unwrap();
    let b = Operator::start(&g.cp, &g.etcd, &replica(g, "op-b"))
        .await
        .unwrap();
    create_reg(
        &g.client,
        &g.ns,
        "greeter",
        json!({"selector": {"matchLabels": {"app": "g"}}, "port": 50051}),
    )
    .await
    .unwrap();
    let mut keys = Vec::new();
    for (name, ip) in [
        ("p1", "127.0.0.131"),
        ("p2", "127.0.0.132"),
        ("p3", "127.0.0.133"),
    ] {
        ready_pod(&g.client, &g.ns, name, json!({"app": "g"}), ip)
            .await
            .unwrap();
        keys.push(g.key("greeter", &format!("{ip}:50051")));
    }
    let want: Vec<&str> = keys.iter().map(String::as_str).collect();
    wait_keys(&g.kv, &g.prefix, &want).await.unwrap();
    let lease = poll("the keys on one lease", DEADLINE, || async {
        let l = leases_under(&g.kv, &g.prefix).await.ok()?;
        (l.len() == 1 && l[0] != 0).then(|| l[0])
    })
    .await
    .unwrap();
    assert_eq!(b.metric("registrar_leader").await, Some(0.0));
    assert_eq!(a.metric("registrar_leader").await, Some(1.0));
    (a, b, keys, lease)
}

/// Waits until every key is on one live etcd lease other than `old`; returns it.
async fn wait_new_lease(g: &Ground, old: i64) -> i64 {
    poll(
        "every key on the new leader's etcd lease",
        DEADLINE,
        || async {
            let l = leases_under(&g.kv, &g.prefix).await.ok()?;
            (l.len() == 1 && l[0] != 0 && l[0] != old).then(|| l[0])
        },
    )
    .await
    .unwrap()
}

fn drain(events: &mut UnboundedReceiver<PrefixEvent>) -> Vec<PrefixEvent> {
    let mut out = Vec::new();
    while let Ok(ev) = events.try_recv() {
        out.push(ev);
    }
    out
}

/// After a takeover: the pods' changes are published by the new leader; returns the key of the
/// pod that was made unready (the only key a client may see deleted).
async fn changes_after_takeover(g: &Ground, keys: &[String]) -> String {
    ready_pod(&g.client, &g.ns, "p4", json!({"app": "g"}), "127.0.0.134")
        .await
        .unwrap();
    let p4 = g.key("greeter", "127.0.0.134:50051");
    let mut want: Vec<&str> = keys.iter().map(String::as_str).collect();
    want.push(&p4);
    wait_keys(&g.kv, &g.prefix, &want).await.unwrap();
    set_ready(&g.client, &g.ns, "p1", "127.0.0.131", false)
        .await
        .unwrap();
    want.retain(|k| *k != keys[0]);
    wait_keys(&g.kv, &g.prefix, &want).await.unwrap();
    keys[0].clone()
}

#[tokio::test]
async fn killing_the_leader_hands_over_without_dropping_a_key() {
    let _serial = SERIAL.lock().await;
    let g = Ground::new().await.unwrap();
    let (mut a, b, keys, old) = two_replicas(&g).await;
    let mut events = watch_prefix(&g.kv, &g.prefix).await.unwrap();

    a.process.kill();
    let killed = Instant::now();
    let takeover = wait_holder(&g, "op-b", Duration::from_secs(20)).await;
    b.wait_metric("registrar_leader", |v| v == 1.0)
        .await
        .unwrap();
    let leading = killed.elapsed();
    let new = wait_new_lease(&g, old).await;
    let reput = killed.elapsed();
    let old_left = ttl(&g.kv, old).await;
    println!(
        "failover after SIGKILL: Lease taken over in {takeover:.2?}, op-b writing after \
         {leading:.2?}, every key re-put under its etcd lease after {reput:.2?} (the old etcd \
         lease still had {old_left} s of its {ETCD_TTL} s)"
    );
    assert!(
        old_left > 0,
        "the old etcd lease expired before the keys were re-put"
    );
    // The Lease expires LEASE_DURATION after its last renewal (at most that long before the
    // kill); the standby then waits up to 1 s (kube-lease-manager's jitter) and takes it.
    assert!(
        takeover < Duration::from_secs(LEASE_DURATION) + Duration::from_millis(1500),
        "takeover took {takeover:?}"
    );

    // The old etcd lease runs out: nothing disappears, it holds no key any more.
    poll(
        "the old etcd lease expired",
        Duration::from_secs(15),
        || async { (ttl(&g.kv, old).await < 0).then_some(()) },
    )
    .await
    .unwrap();
    let want: Vec<&str> = keys.iter().map(String::as_str).collect();
    wait_keys(&g.kv, &g.prefix, &want).await.unwrap();
    assert_eq!(leases_under(&g.kv, &g.prefix).await.unwrap(), vec![new]);

    let unready = changes_after_takeover(&g, &keys).await;
    let deleted: Vec<String> = drain(&mut events)
        .into_iter()
        .filter(|e| e.delete)
        .map(|e| e.key)
        .collect();
    assert_eq!(deleted, vec![unready], "only the unready pod's key may go");
}

#[tokio::test]
async fn a_graceful_stop_hands_the_lease_over_at_once() {
    let _serial = SERIAL.lock().await;
    let g = Ground::new().await.unwrap();
    let (mut a, b, keys, old) = two_replicas(&g).await;
    let mut events = watch_prefix(&g.kv, &g.prefix).await.unwrap();

    let stopped = Instant::now();
    a.process.terminate(Duration::from_secs(15));
    let exited = stopped.elapsed();
    let log = a.log_text();
    assert!(log.contains("Lease released"), "{log}");
    wait_holder(&g, "op-b", Duration::from_secs(20)).await;
    let takeover = stopped.elapsed();
    wait_new_lease(&g, old).await;
    println!(
        "failover after SIGTERM: op-a exited in {exited:.2?}, Lease taken over in {takeover:.2?}"
    );
    // Released, not expired: well within the lease duration.
    assert!(
        takeover < Duration::from_secs(LEASE_DURATION),
        "takeover took {takeover:?}"
    );
    b.wait_metric("registrar_leader", |v| v == 1.0)
        .await
        .unwrap();
    // The old lease was not revoked on the way out (keys must not blink).
    assert!(ttl(&g.kv, old).await > 0);
    let unready = changes_after_takeover(&g, &keys).await;
    let deleted: Vec<String> = drain(&mut events)
        .into_iter()
        .filter(|e| e.delete)
        .map(|e| e.key)
        .collect();
    assert_eq!(deleted, vec![unready], "only the unready pod's key may go");
}

/// op-a reaches the API server through a proxy, op-b directly; the link of op-a is then
/// broken (`how`) while etcd stays reachable. op-a must stop writing before op-b may take over,
/// and then etcd must be quiet: two writers would re-put each other's keys forever.
async fn partition(how: Link) {
    let _serial = SERIAL.lock().await;
    let g = Ground::new().await.unwrap();
    let api_port: u16 = g.cp.url().rsplit(':').next().unwrap().parse().unwrap();
    let fwd = DelayProxy::start(api_port, Duration::ZERO).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig =
        proxy::kubeconfig_via(g.cp.kubeconfig(), api_port, fwd.port, dir.path()).unwrap();
    let mut a_opts = replica(&g, "op-a");
    a_opts.kubeconfig = Some(kubeconfig);
    let a = Operator::start(&g.cp, &g.etcd, &a_opts).await.unwrap();
    wait_holder(&g, "op-a", DEADLINE).await;
    a.wait_metric("registrar_leader", |v| v == 1.0)
        .await
        .unwrap();
    let b = Operator::start(&g.cp, &g.etcd, &replica(&g, "op-b"))
        .await
        .unwrap();
    let key = g.publish_greeter(&[("p1", "127.0.0.141")]).await.unwrap()[0].clone();
    let old = poll("the key on a lease", DEADLINE, || async {
        let l = leases_under(&g.kv, &g.prefix).await.ok()?;
        (l.len() == 1 && l[0] != 0).then(|| l[0])
    })
    .await
    .unwrap();
    let mut events = watch_prefix(&g.kv, &g.prefix).await.unwrap();

    fwd.set_link(how);
    let cut = Instant::now();
    let (mut a_down, mut b_up) = (None, None);
    while a_down.is_none() || b_up.is_none() {
        assert!(
            cut.elapsed() < Duration::from_secs(20),
            "no clean takeover: op-a stepped down after {a_down:?}, op-b leads after {b_up:?}"
        );
        if a_down.is_none() && a.metric("registrar_leader").await == Some(0.0) {
            a_down = Some(cut.elapsed());
        }
        if b_up.is_none() && b.metric("registrar_leader").await == Some(1.0) {
            b_up = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (a_down, b_up) = (a_down.unwrap(), b_up.unwrap());
    println!(
        "partition ({how:?}): op-a stepped down after {a_down:.2?}, op-b leads after {b_up:.2?}"
    );
    assert!(a_down < b_up, "two leaders at once");
    let new = wait_new_lease(&g, old).await;

    // The quiet period is the assertion.
    let settled = drain(&mut events);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = drain(&mut events);
    assert!(
        later.is_empty(),
        "etcd still churning after the takeover: {later:?}"
    );
    assert!(settled.iter().all(|e| !e.delete), "{settled:?}");
    assert_eq!(leases_under(&g.kv, &g.prefix).await.unwrap(), vec![new]);
    wait_keys(&g.kv, &g.prefix, &[&key]).await.unwrap();
    assert_eq!(a.metric("registrar_leader").await, Some(0.0));
}

#[tokio::test]
async fn a_leader_whose_api_connections_are_reset_steps_down_before_the_standby_takes_over() {
    partition(Link::Cut).await;
}

#[tokio::test]
async fn a_leader_whose_api_traffic_is_dropped_steps_down_before_the_standby_takes_over() {
    partition(Link::Frozen).await;
}
