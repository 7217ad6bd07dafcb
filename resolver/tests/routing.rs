//! Zone preference and weights against real etcd and real tonic servers on 127.0.0.x: a client
//! in zone a sends everything to zone a, moves to zone b when zone a's backends die and comes
//! back when they return; endpoints without a zone get an even spread; weights 1:2:4 give
//! shares 1:2:4. [`Balancer::snapshot`] is checked along the way.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use registrar_resolver::{
    BackendState, Backoff, Balancer, Endpoint, Metadata, RoutingSnapshot, ZoneFilter,
};
use registrar_testenv::greeter::{self, GreeterClient, TestServer};
use registrar_testenv::{Etcd, poll};
use serde_json::json;
use tokio::time::Instant;

fn test_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_millis(500))
}

/// Puts `<target>/<addr>` with `metadata`.
async fn put_with(
    kv: &mut etcd_client::Client,
    target: &str,
    addr: SocketAddr,
    metadata: serde_json::Value,
) -> Result<()> {
    let value = Endpoint::new(addr.to_string(), Metadata::from_value(&metadata))?.encode();
    kv.put(format!("{target}/{addr}"), value, None).await?;
    Ok(())
}

/// Waits until the snapshot satisfies `ok`; the snapshot.
async fn wait_snapshot(
    balancer: &Balancer,
    what: &str,
    ok: impl Fn(&RoutingSnapshot) -> bool,
) -> Result<RoutingSnapshot> {
    poll(what, Duration::from_secs(20), || async {
        let s = balancer.snapshot();
        ok(&s).then_some(s)
    })
    .await
    .with_context(|| format!("snapshot: {:#?}", balancer.snapshot()))
}

fn served(servers: &[TestServer]) -> Vec<u64> {
    servers.iter().map(TestServer::served).collect()
}

fn delta(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// Callers that keep calls in flight until stopped; (ok, failed, errors) of each.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(usize, usize, Vec<String>)>>,
}

impl Load {
    fn start(balancer: &Balancer, callers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..callers)
            .map(|_| {
                let mut client = GreeterClient::new(balancer.clone());
                let stop = stop.clone();
                tokio::spawn(async move {
                    let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match hello(&mut client).await {
                            Ok(_) => ok += 1,
                            Err(e) => {
                                failed += 1;
                                errors.push(format!("{:?}: {}", e.code(), e.message()));
                            }
                        }
                    }
                    (ok, failed, errors)
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> Result<(usize, usize, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
        for t in self.tasks {
            let (o, f, e) = t.await?;
            ok += o;
            failed += f;
            errors.extend(e);
        }
        Ok((ok, failed, errors))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_a_client_stays_in_zone_a_moves_to_b_when_a_dies_and_comes_back() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("zones");
    let mut servers = Vec::new();
    for (i, n) in (161u8..=166).enumerate() {
        let zone = if i < 3 { "a" } else { "b" };
        let s = greeter::serve(loopback(n), format!("{zone}{i}")).await;
        put_with(
            &mut kv,
            &target,
            s.addr(),
            json!({"zone": zone, "pod": format!("p{i}")}),
        )
        .await?;
        servers.push(s);
    }
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .zone("a")
        .connection_backoff(test_backoff())
        .build()
        .await?;
    let snap = wait_snapshot(&balancer, "6 READY, zone a only", |s| {
        s.backends.len() == 6
            && s.backends.iter().all(|b| b.state == BackendState::Ready)
            && s.zone_filter == ZoneFilter::Local
    })
    .await?;
    let in_set: Vec<bool> = snap.backends.iter().map(|b| b.in_pick_set).collect();
    assert_eq!(in_set, [true, true, true, false, false, false]);
    assert_eq!(snap.zone.as_deref(), Some("a"));
    assert_eq!(snap.min_local, Some(1));

    let before = served(&servers);
    let (ok, failed) = calls(&balancer, 10_000, 8).await?;
    let got = delta(&served(&servers), &before);
    eprintln!(
        "zone a client, 10,000 RPCs (8 callers): {ok} ok, {failed} failed; per backend a0 a1 a2 b3 b4 b5: {got:?}"
    );
    assert_eq!((ok, failed), (10_000, 0));
    assert_eq!(got[3..], [0, 0, 0], "calls left zone a: {got:?}");
    assert_eq!(got[..3].iter().sum::<u64>(), 10_000);
    let picks: u64 = balancer.snapshot().backends.iter().map(|b| b.picks).sum();
    assert!(picks >= 10_000, "picks counted: {picks}");

    // Every zone-a backend dies under load: calls move to zone b.
    let addrs: Vec<SocketAddr> = servers.iter().map(TestServer::addr).collect();
    let load = Load::start(&balancer, 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = Instant::now();
    for s in &mut servers[..3] {
        s.stop();
    }
    wait_snapshot(&balancer, "fall back to every zone", |s| {
        s.zone_filter == ZoneFilter::FallBack
            && s.backends.iter().filter(|b| b.in_pick_set).count() == 3
    })
    .await?;
    let moved_after = killed.elapsed();
    let before = served(&servers);
    poll("calls on zone b", Duration::from_secs(10), || async {
        (delta(&served(&servers), &before)[3..].iter().sum::<u64>() >= 300).then_some(())
    })
    .await?;
    let (ok, failed, errors) = load.finish().await?;
    eprintln!(
        "zone a killed under 4 callers: fallback decided after {moved_after:?}; {ok} ok, \
         {failed} failed: {errors:?}"
    );
    // At most the calls in flight on the dying connections: one per caller and killed backend.
    assert!(
        failed <= 4 * 3,
        "more than the in-flight calls failed: {failed}"
    );
    let before = served(&servers);
    let (ok, failed) = calls(&balancer, 3000, 4).await?;
    let got = delta(&served(&servers), &before);
    eprintln!("zone a down, 3,000 RPCs: {ok} ok, {failed} failed; per backend {got:?}");
    assert_eq!((ok, failed), (3000, 0));
    assert_eq!(got[3..].iter().sum::<u64>(), 3000);

    // Zone a returns on the same addresses: calls come back to it.
    let returned = Instant::now();
    for (i, addr) in addrs[..3].iter().enumerate() {
        servers[i] = greeter::serve(*addr, format!("a{i}-again")).await;
    }
    wait_snapshot(&balancer, "zone a again", |s| {
        s.zone_filter == ZoneFilter::Local
            && s.backends.iter().filter(|b| b.in_pick_set).count() == 3
    })
    .await?;
    let back_after = returned.elapsed();
    let before = served(&servers);
    let (ok, failed) = calls(&balancer, 3000, 4).await?;
    let got = delta(&served(&servers), &before);
    eprintln!(
        "zone a back after {back_after:?}; 3,000 RPCs: {ok} ok, {failed} failed; per backend {got:?}"
    );
    assert_eq!((ok, failed), (3000, 0));
    assert_eq!(got[..3].iter().sum::<u64>(), 3000, "{got:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_without_zone_get_an_even_spread() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("nozone");
    let mut servers = Vec::new();
    for (i, n) in (167u8..=169).enumerate() {
        let s = greeter::serve(loopback(n), format!("n{i}")).await;
        // Two in zone a, one without a zone: no filtering at all.
        let meta = if i < 2 {
            json!({"zone": "a"})
        } else {
            json!({"pod": "p"})
        };
        put_with(&mut kv, &target, s.addr(), meta).await?;
        servers.push(s);
    }
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .zone("a")
        .build()
        .await?;
    wait_ready(&balancer, 3).await?;
    let snap = balancer.snapshot();
    assert_eq!(snap.zone_filter, ZoneFilter::MissingZone);
    assert!(snap.backends.iter().all(|b| b.in_pick_set));
    let mut client = GreeterClient::new(balancer.clone());
    let counts = spread(&mut client, 3000).await?;
    eprintln!("a zone-less endpoint among zone a ones, 3,000 sequential RPCs: {counts:?}");
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [1000; 3]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_one_two_four_give_shares_one_two_four() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("weights");
    let mut servers = Vec::new();
    for (i, (n, w)) in [(170u8, "1"), (171, "2"), (172, "4")]
        .into_iter()
        .enumerate()
    {
        let s = greeter::serve(loopback(n), format!("w{i}")).await;
        put_with(&mut kv, &target, s.addr(), json!({"weight": w})).await?;
        servers.push(s);
    }
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .weighted(true)
        .build()
        .await?;
    wait_ready(&balancer, 3).await?;
    let snap = balancer.snapshot();
    let weights: Vec<Option<u32>> = snap.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [Some(1), Some(2), Some(4)]);
    assert_eq!((snap.weights_defaulted, snap.weights_invalid), (0, 0));

    let total = 14_000usize;
    let before = served(&servers);
    let (ok, failed) = calls(&balancer, total, 8).await?;
    let got = delta(&served(&servers), &before);
    let shares: Vec<f64> = got.iter().map(|g| *g as f64 / total as f64).collect();
    eprintln!(
        "weights 1:2:4, {total} RPCs (8 callers): {ok} ok, {failed} failed; per backend {got:?}; shares {shares:.4?}"
    );
    assert_eq!((ok, failed), (total, 0));
    for (share, w) in shares.iter().zip([1.0, 2.0, 4.0]) {
        assert!((share - w / 7.0).abs() < 0.02, "shares {shares:?}");
    }

    // A fourth backend with a weight that is not a number weighs the mean (7/3) and is counted.
    let s = greeter::serve(loopback(173), "w3".into()).await;
    put_with(&mut kv, &target, s.addr(), json!({"weight": "heavy"})).await?;
    servers.push(s);
    let snap = wait_snapshot(&balancer, "4 in the pick set", |s| {
        s.backends.iter().filter(|b| b.in_pick_set).count() == 4
    })
    .await?;
    assert_eq!((snap.weights_defaulted, snap.weights_invalid), (1, 1));
    let before = served(&servers);
    let mut client = GreeterClient::new(balancer.clone());
    let counts: BTreeMap<String, usize> = spread(&mut client, 9_333).await?;
    let got = delta(&served(&servers), &before);
    eprintln!("weights 1:2:4:invalid(=mean 7/3), 9,333 sequential RPCs: {counts:?}");
    let want = [1.0, 2.0, 4.0, 7.0 / 3.0].map(|w| w / (7.0 + 7.0 / 3.0));
    for (g, w) in got.iter().zip(want) {
        assert!(
            (*g as f64 / 9_333.0 - w).abs() < 0.02,
            "{got:?} vs {want:?}"
        );
    }
    Ok(())
}
