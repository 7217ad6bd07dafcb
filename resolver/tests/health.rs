//! Client-side health checking (gRFC A17) against real etcd and real tonic servers with the
//! tonic-health service on 127.0.0.x: NOT_SERVING takes a backend out of the pick set without
//! closing its connection and SERVING brings it back on that same connection; a backend is not
//! picked before its first answer; a server without the health service is used and asked once;
//! with health checking off no Watch is sent.

mod backend;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use backend::{Backend, HealthMode};
use common::*;
use registrar_resolver::{Backoff, Balancer, ConnectivityState, HealthState};
use registrar_testenv::greeter::GreeterClient;
use registrar_testenv::{Etcd, poll};
use tokio::time::Instant;
use tonic_health::ServingStatus;

const SERVICE: &str = "greeter.v1.Greeter";

/// Short health Watch backoff, so that a retry (if any) shows within a second.
fn fast_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_millis(50))
}

/// The health of `addr` as the balancer sees it.
fn health_of(balancer: &Balancer, addr: std::net::SocketAddr) -> Option<(HealthState, bool)> {
    balancer
        .health()
        .into_iter()
        .find(|b| b.addr == addr.to_string())
        .map(|b| (b.health, b.pickable))
}

/// Waits until the balancer reports `want` for `addr`; how long it took.
async fn wait_health(
    balancer: &Balancer,
    addr: std::net::SocketAddr,
    want: (HealthState, bool),
) -> Result<Duration> {
    let started = Instant::now();
    poll(
        &format!("{addr} to be {want:?}"),
        Duration::from_secs(10),
        || async { (health_of(balancer, addr) == Some(want)).then_some(()) },
    )
    .await
    .with_context(|| format!("health: {:?}", balancer.health()))?;
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_takes_a_backend_out_and_serving_brings_it_back_on_the_same_connection()
-> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("health-toggle");
    let mut backends = Vec::new();
    for (i, n) in [41u8, 42, 43].into_iter().enumerate() {
        let b = Backend::start(loopback(n), &format!("h{i}"), HealthMode::Standard).await?;
        b.set(SERVICE, ServingStatus::Serving).await;
        put_endpoint(&mut kv, &target, b.addr).await?;
        backends.push(b);
    }
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .health_check(SERVICE)
        .build()
        .await?;
    wait_ready(&balancer, 3).await?;
    let victim = &backends[1];

    victim.set(SERVICE, ServingStatus::NotServing).await;
    let seen_after = wait_health(&balancer, victim.addr, (HealthState::NotServing, false)).await?;
    let before: Vec<u64> = backends.iter().map(Backend::served).collect();
    let (ok, failed) = calls(&balancer, 10_000, 8).await?;
    let after: Vec<u64> = backends.iter().map(Backend::served).collect();
    let got: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    eprintln!(
        "NOT_SERVING seen by the balancer after {seen_after:?}; next 10,000 RPCs: {ok} ok, \
         {failed} failed; per backend {got:?} (h1 is NOT_SERVING)"
    );
    assert_eq!((ok, failed), (10_000, 0));
    assert_eq!(got[1], 0, "RPCs reached the NOT_SERVING backend: {got:?}");
    assert_eq!(got[0] + got[2], 10_000);
    // Out of the pick set, not disconnected.
    let state = balancer
        .backends()
        .into_iter()
        .find(|b| b.addr == victim.addr.to_string())
        .map(|b| b.state);
    assert_eq!(state, Some(ConnectivityState::Ready));
    assert_eq!(balancer.ready_count(), 2);

    victim.set(SERVICE, ServingStatus::Serving).await;
    let back_after = wait_health(&balancer, victim.addr, (HealthState::Serving, true)).await?;
    let before = victim.served();
    let mut client = GreeterClient::new(balancer.clone());
    let counts = spread(&mut client, 300).await?;
    let to_victim = victim.served() - before;
    eprintln!(
        "SERVING again seen after {back_after:?}; 300 sequential RPCs: {counts:?}; TCP \
         connections accepted by h1: {}, Watch calls on h1: {}",
        victim.accepted(),
        victim.watches()
    );
    assert_eq!(to_victim, 100, "{counts:?}");
    assert_eq!(
        victim.accepted(),
        1,
        "traffic came back on a new connection"
    );
    assert_eq!(
        victim.watches(),
        1,
        "one Watch stream for the whole connection"
    );
    for b in &backends {
        assert_eq!(
            b.accepted(),
            1,
            "{}: one connection for calls and Watch",
            b.name
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_is_not_picked_before_its_first_health_answer() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("health-first-answer");
    let quick = Backend::start(loopback(44), "quick", HealthMode::Standard).await?;
    let delay = Duration::from_millis(500);
    let slow = Backend::start(loopback(45), "slow", HealthMode::DelayFirstAnswer(delay)).await?;
    put_endpoint(&mut kv, &target, quick.addr).await?;
    put_endpoint(&mut kv, &target, slow.addr).await?;
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .health_check("")
        .build()
        .await?;

    // Calls flow from the start; they wait for the first pickable backend.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let mut client = GreeterClient::new(balancer.clone());
        let (stop, sent) = (stop.clone(), sent.clone());
        callers.push(tokio::spawn(async move {
            let mut failed = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if hello(&mut client).await.is_err() {
                    failed += 1;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failed
        }));
    }
    let waited = wait_health(&balancer, slow.addr, (HealthState::Serving, true)).await?;
    let sent_before = sent.load(Ordering::Relaxed);
    poll(
        "calls on the slow backend",
        Duration::from_secs(10),
        || async { (slow.served() > 0).then_some(()) },
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for c in callers {
        failed += c.await?;
    }
    let watch_at = *slow
        .seen
        .first_watch
        .get()
        .context("no Watch on the slow backend")?;
    let first_call_at = *slow
        .seen
        .first_hello
        .get()
        .context("no call on the slow backend")?;
    let gap = first_call_at - watch_at;
    eprintln!(
        "slow backend: first Watch answer held {delay:?}; seen pickable after {waited:?}; first \
         RPC {gap:?} after its Watch arrived; {sent_before} RPCs done by then; in all quick \
         served {}, slow {}, {failed} failed",
        quick.served(),
        slow.served()
    );
    assert!(
        gap >= delay,
        "an RPC reached the slow backend {gap:?} after its Watch"
    );
    assert!(sent_before > 0, "no traffic during the window");
    assert_eq!(failed, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_health_service_gets_calls_and_one_watch() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("health-unimplemented");
    let plain = Backend::start(loopback(46), "plain", HealthMode::Absent).await?;
    put_endpoint(&mut kv, &target, plain.addr).await?;
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .health_check("")
        .health_check_backoff(fast_backoff())
        .build()
        .await?;
    wait_health(&balancer, plain.addr, (HealthState::Unimplemented, true)).await?;
    let mut client = GreeterClient::new(balancer.clone());
    let counts = spread(&mut client, 200).await?;
    assert_eq!(counts.get("plain"), Some(&200), "{counts:?}");
    // An observation window: with a 10–50 ms retry backoff, any retry would show many times.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let watches = plain.watches();
    eprintln!(
        "server without health service: {counts:?}; Watch calls it saw: {watches} (retry \
         backoff 10–50 ms, observed 1 s after the first)"
    );
    assert_eq!(watches, 1);
    assert_eq!(plain.accepted(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checking_off_sends_no_watch() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("health-off");
    let b = Backend::start(loopback(47), "off", HealthMode::Standard).await?;
    b.set("", ServingStatus::NotServing).await;
    put_endpoint(&mut kv, &target, b.addr).await?;
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .build()
        .await?;
    wait_ready(&balancer, 1).await?;
    let mut client = GreeterClient::new(balancer.clone());
    let counts = spread(&mut client, 200).await?;
    eprintln!(
        "health checking off: {counts:?} to a NOT_SERVING server; Watch calls it saw: {}",
        b.watches()
    );
    assert_eq!(counts.get("off"), Some(&200));
    assert_eq!(b.watches(), 0);
    assert_eq!(health_of(&balancer, b.addr), Some((HealthState::Off, true)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_watch_takes_the_backend_out_until_a_retry_answers_serving() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("health-failed");
    let steady = Backend::start(loopback(48), "steady", HealthMode::Standard).await?;
    let mut flaky = Backend::start(loopback(49), "flaky", HealthMode::Standard).await?;
    for b in [&steady, &flaky] {
        b.set(SERVICE, ServingStatus::Serving).await;
        put_endpoint(&mut kv, &target, b.addr).await?;
    }
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .health_check(SERVICE)
        .health_check_backoff(fast_backoff())
        .build()
        .await?;
    wait_ready(&balancer, 2).await?;

    // The server forgets the service: its Watch stream ends and new ones fail with NOT_FOUND.
    flaky.reporter.clear_service_status(SERVICE).await;
    wait_health(&balancer, flaky.addr, (HealthState::Failed, false)).await?;
    let before = flaky.served();
    let (ok, failed) = calls(&balancer, 1_000, 4).await?;
    let retries = flaky.watches();
    eprintln!(
        "failed Watch: 1,000 RPCs ({ok} ok, {failed} failed), {} to the failed backend; Watch \
         calls so far: {retries}",
        flaky.served() - before
    );
    assert_eq!((ok, failed), (1_000, 0));
    assert_eq!(flaky.served(), before);
    assert!(retries >= 2, "the Watch was not retried ({retries})");

    flaky.set(SERVICE, ServingStatus::Serving).await;
    let back = wait_health(&balancer, flaky.addr, (HealthState::Serving, true)).await?;
    let mut client = GreeterClient::new(balancer.clone());
    let counts = spread(&mut client, 100).await?;
    eprintln!(
        "back after {back:?}: {counts:?}; connections accepted: {}",
        flaky.accepted()
    );
    assert_eq!(counts.get("flaky"), Some(&50), "{counts:?}");
    assert_eq!(flaky.accepted(), 1);
    Ok(())
}
