//! Priority failover over several targets ([`FailoverBalancer`]) against real etcds and real
//! tonic servers on 127.0.0.x: two "clusters", each with its own etcd and backends. All calls go
//! to the first while it has a pickable backend, move to the second when the first's backends
//! die and come back within 1 s when one returns; a cluster whose etcd is stopped keeps serving
//! from its last known endpoints (fail-static) until `stale_after`, then only when no fresh
//! cluster can. Two clusters sharing one etcd under two prefixes keep an address registered in
//! both as two backends and count it as a duplicate.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{init_tracing, loopback, put_endpoint, target};
use registrar_resolver::{Backoff, Balancer, BalancerBuilder, FailoverBalancer, FailoverSnapshot};
use registrar_testenv::greeter::{self, GreeterClient, HelloRequest, TestServer};
use registrar_testenv::{Etcd, poll};
use tokio::time::Instant;

fn fast() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_millis(200))
}

/// A group over `target` in `etcd`, reconnecting fast.
async fn group(etcd: &Etcd, target: &str) -> Result<BalancerBuilder> {
    Ok(Balancer::builder(etcd.client().await?, target)
        .connection_backoff(fast())
        .etcd_backoff(fast())
        .etcd_request_timeout(Duration::from_secs(2)))
}

/// Waits until the snapshot satisfies `ok`; the snapshot.
async fn wait_snapshot(
    balancer: &FailoverBalancer,
    what: &str,
    ok: impl Fn(&FailoverSnapshot) -> bool,
) -> Result<FailoverSnapshot> {
    poll(what, Duration::from_secs(20), || async {
        let s = balancer.snapshot();
        ok(&s).then_some(s)
    })
    .await
    .with_context(|| format!("snapshot: {:#?}", balancer.snapshot()))
}

/// Every backend of every group READY and in its group's pick set.
fn all_ready(s: &FailoverSnapshot, per_group: &[usize]) -> bool {
    s.groups.len() == per_group.len()
        && s.groups.iter().zip(per_group).all(|(g, n)| {
            g.routing.backends.len() == *n && g.routing.backends.iter().all(|b| b.in_pick_set)
        })
}

fn served(servers: &[TestServer]) -> Vec<u64> {
    servers.iter().map(TestServer::served).collect()
}

/// `total` calls from 4 concurrent clients; (ok, failed, calls served per server).
async fn calls(
    balancer: &FailoverBalancer,
    servers: &[TestServer],
    total: usize,
) -> Result<(usize, usize, Vec<u64>)> {
    let before = served(servers);
    let mut tasks = Vec::new();
    for c in 0..4 {
        let mut client = GreeterClient::new(balancer.clone());
        let n = total / 4 + usize::from(c < total % 4);
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            for _ in 0..n {
                let call = client.say_hello(HelloRequest {
                    name: "failover".into(),
                });
                match call.await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await?;
        ok += o;
        failed += f;
    }
    let got = served(servers)
        .iter()
        .zip(before)
        .map(|(a, b)| a - b)
        .collect();
    Ok((ok, failed, got))
}

async fn serve_at(addr: SocketAddr, name: &str) -> TestServer {
    greeter::serve(addr, name.to_owned()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_calls_go_to_the_first_cluster_with_a_pickable_backend() -> Result<()> {
    init_tracing();
    let (etcd_a, etcd_b) = (Etcd::start().await?, Etcd::start().await?);
    let target = target("failover");
    let mut servers = Vec::new();
    for (n, name) in [(181u8, "a0"), (182, "a1"), (183, "b0"), (184, "b1")] {
        let s = serve_at(loopback(n), name).await;
        let etcd = if name.starts_with('a') {
            &etcd_a
        } else {
            &etcd_b
        };
        put_endpoint(&mut etcd.client().await?, &target, s.addr()).await?;
        servers.push(s);
    }
    let balancer = FailoverBalancer::builder()
        .target(group(&etcd_a, &target).await?)
        .target(group(&etcd_b, &target).await?)
        .build()
        .await?;
    let snap = wait_snapshot(&balancer, "both clusters READY", |s| all_ready(s, &[2, 2])).await?;
    assert_eq!(snap.active, Some(0));
    assert_eq!(snap.stale_after, Duration::from_secs(60), "the default");
    assert_eq!((snap.duplicates, snap.duplicates_seen), (0, 0));

    let (ok, failed, got) = calls(&balancer, &servers, 4000).await?;
    eprintln!("both clusters up, 4,000 RPCs: {ok} ok, {failed} failed; a0 a1 b0 b1: {got:?}");
    assert_eq!((ok, failed), (4000, 0));
    assert_eq!(got[2..], [0, 0], "calls left the first cluster: {got:?}");
    assert!(
        got[0] > 0 && got[1] > 0,
        "round-robin inside the group: {got:?}"
    );
    let picks: u64 = balancer.groups()[0]
        .snapshot()
        .backends
        .iter()
        .map(|b| b.picks)
        .sum();
    assert!(picks >= 4000, "picks counted in group 0: {picks}");

    // Every backend of the first cluster dies: the second takes everything.
    let addrs: Vec<SocketAddr> = servers.iter().map(TestServer::addr).collect();
    let killed = Instant::now();
    for s in &mut servers[..2] {
        s.stop();
    }
    wait_snapshot(&balancer, "the second cluster active", |s| {
        s.active == Some(1) && s.groups[1].active && !s.groups[0].active
    })
    .await?;
    let moved = killed.elapsed();
    let (ok, failed, got) = calls(&balancer, &servers, 4000).await?;
    eprintln!(
        "first cluster's backends stopped: second active after {moved:?}; 4,000 RPCs: {ok} ok, \
         {failed} failed; a0 a1 b0 b1: {got:?}"
    );
    assert_eq!((ok, failed), (4000, 0));
    assert_eq!(got[2] + got[3], 4000, "{got:?}");

    // One backend of the first cluster returns on its address: calls come back within 1 s.
    let returned = Instant::now();
    servers[0] = serve_at(addrs[0], "a0-again").await;
    let back = poll(
        "a call served by the returned backend",
        Duration::from_secs(10),
        || async {
            let (_, _, got) = calls(&balancer, &servers, 8).await.ok()?;
            (got[0] > 0).then(|| returned.elapsed())
        },
    )
    .await?;
    let (ok, failed, got) = calls(&balancer, &servers, 4000).await?;
    eprintln!(
        "a0 back: first call on it after {back:?}; 4,000 RPCs: {ok} ok, {failed} failed; \
         a0 a1 b0 b1: {got:?}"
    );
    assert!(back < Duration::from_secs(1), "back after {back:?}");
    assert_eq!((ok, failed), (4000, 0));
    assert_eq!(got, [4000, 0, 0, 0]);
    assert_eq!(balancer.snapshot().active, Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_etcd_is_gone_serves_fail_static_then_only_as_a_last_resort() -> Result<()>
{
    init_tracing();
    let (mut etcd_a, etcd_b) = (Etcd::start().await?, Etcd::start().await?);
    let target = target("stale");
    let a0 = serve_at(loopback(185), "a0").await;
    let b0 = serve_at(loopback(186), "b0").await;
    put_endpoint(&mut etcd_a.client().await?, &target, a0.addr()).await?;
    put_endpoint(&mut etcd_b.client().await?, &target, b0.addr()).await?;
    let mut servers = vec![a0, b0];
    let stale_after = Duration::from_secs(3);
    let balancer = FailoverBalancer::builder()
        .target(group(&etcd_a, &target).await?)
        .target(group(&etcd_b, &target).await?)
        .stale_after(stale_after)
        .build()
        .await?;
    wait_snapshot(&balancer, "both clusters READY", |s| all_ready(s, &[1, 1])).await?;

    // The first cluster's etcd stops: its endpoints keep serving (fail-static).
    let stopped = Instant::now();
    etcd_a.stop().await?;
    wait_snapshot(&balancer, "the first etcd seen unreachable", |s| {
        !s.groups[0].etcd_connected
    })
    .await?;
    let seen = stopped.elapsed();
    let (ok, failed, got) = calls(&balancer, &servers, 300).await?;
    let snap = balancer.snapshot();
    let at = stopped.elapsed();
    eprintln!(
        "first etcd stopped, seen after {seen:?}; 300 RPCs by {at:?}: {ok} ok, {failed} failed; \
         a0 b0: {got:?}"
    );
    assert!(at < stale_after, "too slow to check fail-static: {at:?}");
    assert!(!snap.groups[0].stale && snap.active == Some(0), "{snap:#?}");
    assert_eq!((ok, failed), (300, 0));
    assert_eq!(
        got,
        [300, 0],
        "fail-static: the first cluster keeps serving"
    );

    // After stale_after the first cluster is stale: the fresh second one takes the calls.
    // (The choice is rebuilt just after the group turns stale.)
    wait_snapshot(
        &balancer,
        "the first cluster stale, the second active",
        |s| s.groups[0].stale && s.active == Some(1),
    )
    .await?;
    let stale_at = stopped.elapsed();
    let (ok, failed, got) = calls(&balancer, &servers, 1000).await?;
    eprintln!(
        "first cluster stale after {stale_at:?} (stale_after {stale_after:?}); 1,000 RPCs: {ok} \
         ok, {failed} failed; a0 b0: {got:?}"
    );
    assert!(stale_at >= stale_after, "stale too early: {stale_at:?}");
    assert_eq!((ok, failed), (1000, 0));
    assert_eq!(got, [0, 1000]);

    // The second cluster's backend dies too: the stale first cluster is the last resort.
    servers[1].stop();
    wait_snapshot(&balancer, "the stale cluster active", |s| {
        s.active == Some(0)
    })
    .await?;
    let (ok, failed, got) = calls(&balancer, &servers, 1000).await?;
    eprintln!(
        "second cluster's backend stopped: 1,000 RPCs: {ok} ok, {failed} failed; a0 b0: {got:?}"
    );
    assert_eq!((ok, failed), (1000, 0));
    assert_eq!(got, [1000, 0]);

    // The first etcd returns: the cluster is fresh again.
    let restarted = Instant::now();
    etcd_a.restart().await?;
    let snap = wait_snapshot(&balancer, "the first cluster fresh again", |s| {
        !s.groups[0].stale && s.groups[0].etcd_connected
    })
    .await?;
    eprintln!(
        "first etcd restarted: fresh again after {:?}",
        restarted.elapsed()
    );
    assert_eq!(snap.active, Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prefixes_in_one_etcd_keep_a_shared_address_apart_and_count_it() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let (east, west) = (target("east"), target("west"));
    let shared = serve_at(loopback(187), "shared").await;
    let own = serve_at(loopback(188), "west-only").await;
    put_endpoint(&mut kv, &east, shared.addr()).await?;
    put_endpoint(&mut kv, &west, shared.addr()).await?;
    put_endpoint(&mut kv, &west, own.addr()).await?;
    let servers = vec![shared, own];
    let balancer = FailoverBalancer::builder()
        .target(group(&etcd, &east).await?)
        .target(group(&etcd, &west).await?)
        .build()
        .await?;
    let snap = wait_snapshot(&balancer, "both groups READY", |s| all_ready(s, &[1, 2])).await?;
    eprintln!(
        "shared address under two targets: duplicates {} (seen {}), backends per group {:?}",
        snap.duplicates,
        snap.duplicates_seen,
        snap.groups
            .iter()
            .map(|g| g.routing.backends.len())
            .collect::<Vec<_>>()
    );
    assert_eq!((snap.duplicates, snap.duplicates_seen), (1, 1));
    assert_eq!(snap.active, Some(0));
    let (ok, failed, got) = calls(&balancer, &servers, 1000).await?;
    assert_eq!((ok, failed, got), (1000, 0, vec![1000, 0]));
    let picks: Vec<u64> = balancer
        .snapshot()
        .groups
        .iter()
        .flat_map(|g| g.routing.backends.iter().map(|b| b.picks))
        .collect();
    eprintln!("picks per (group, backend): {picks:?}");
    assert!(picks[0] >= 1000 && picks[1..] == [0, 0], "{picks:?}");

    // The shared address leaves one target: no duplicate now, the counter stays.
    kv.delete(format!("{east}/{}", servers[0].addr()), None)
        .await?;
    // (The count follows the endpoint sets; the group choice follows the pick sets just after.)
    let snap = wait_snapshot(&balancer, "no duplicate, the second group active", |s| {
        s.duplicates == 0 && s.active == Some(1)
    })
    .await?;
    assert_eq!(snap.duplicates_seen, 1);
    let (ok, failed, got) = calls(&balancer, &servers, 1000).await?;
    assert_eq!((ok, failed), (1000, 0));
    assert_eq!(got.iter().sum::<u64>(), 1000);
    Ok(())
}

#[tokio::test]
async fn a_failover_balancer_needs_a_target() {
    let err = FailoverBalancer::builder().build().await.unwrap_err();
    assert!(err.to_string().contains("at least one target"), "{err}");
}
