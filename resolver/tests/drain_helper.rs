//! The server-side drain helper ([`Drain`]) with real etcd, real tonic servers on 127.0.0.x and a
//! health-checking balancer under load: on its trigger the server turns NOT_SERVING and
//! deregisters, keeps serving for the drain delay, then shuts down gracefully; calls in flight
//! finish and no call fails.

mod backend;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use backend::{Backend, HealthMode};
use common::*;
use registrar_resolver::{Balancer, Drain, HealthState, Registration};
use registrar_testenv::greeter::{GreeterClient, HelloRequest};
use registrar_testenv::{Etcd, poll};
use tokio::time::Instant;
use tonic_health::ServingStatus;

const SERVICE: &str = "greeter.v1.Greeter";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_server_gets_no_new_calls_finishes_its_calls_and_stops() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("drain-helper");
    let steady = Backend::start(loopback(61), "steady", HealthMode::Standard).await?;
    steady.set(SERVICE, ServingStatus::Serving).await;
    put_endpoint(&mut kv, &target, steady.addr).await?;

    // The leaving server registers itself and drains on a trigger (the SIGTERM stand-in).
    let delay = Duration::from_secs(1);
    let (sigterm, on_sigterm) = tokio::sync::oneshot::channel::<()>();
    let listener_addr = std::net::TcpListener::bind(loopback(62))?.local_addr()?;
    let registration =
        Registration::register(etcd.client().await?, &target, listener_addr.to_string()).await?;
    let key = registration.key().to_owned();
    let leaving = Backend::start_with(listener_addr, "leaving", HealthMode::Standard, |reporter| {
        Drain::new(reporter)
            .service(SERVICE)
            .registration(registration)
            .delay(delay)
            .trigger(async move {
                let _ = on_sigterm.await;
            })
            .wait()
    })
    .await?;
    leaving.set(SERVICE, ServingStatus::Serving).await;

    let balancer = Balancer::builder(etcd.client().await?, &target)
        .health_check(SERVICE)
        .build()
        .await?;
    wait_ready(&balancer, 2).await?;

    // Long calls in flight on both servers, longer than the drain delay.
    let long: Vec<_> = (0..4)
        .map(|_| {
            let mut client = GreeterClient::new(balancer.clone());
            tokio::spawn(async move {
                client
                    .say_hello(HelloRequest {
                        name: "sleep:1500".into(),
                    })
                    .await
                    .map(|r| r.into_inner().backend)
            })
        })
        .collect();
    poll(
        "long calls on both servers",
        Duration::from_secs(10),
        || async { (leaving.hellos() >= 2 && steady.hellos() >= 2).then_some(()) },
    )
    .await?;

    // Load, then the trigger.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = GreeterClient::new(balancer.clone());
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match hello(&mut client).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    poll(
        "load on the leaving server",
        Duration::from_secs(10),
        || async { (leaving.hellos() > 100).then_some(()) },
    )
    .await?;
    let sigterm_at = Instant::now();
    let _ = sigterm.send(());

    // Out of the pick set: NOT_SERVING, or already gone with its key.
    let out_at = poll(
        "the server out of the pick set",
        Duration::from_secs(10),
        || async {
            let health = balancer.health();
            let this = health.iter().find(|b| b.addr == listener_addr.to_string());
            this.is_none_or(|b| !b.pickable && b.health == HealthState::NotServing)
                .then(|| sigterm_at.elapsed())
        },
    )
    .await?;
    let watcher = etcd.client().await?;
    let key_gone = poll("the key deleted", Duration::from_secs(10), || {
        let mut kv = watcher.clone();
        let key = key.clone();
        async move {
            let count = kv.get(key, None).await.ok()?.count();
            (count == 0).then(|| sigterm_at.elapsed())
        }
    })
    .await?;
    poll("the server to stop", Duration::from_secs(20), || async {
        leaving.seen.stopped.get().copied()
    })
    .await?;
    let stopped = *leaving.seen.stopped.get().context("not stopped")? - sigterm_at;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await?;
    }
    let mut long_backends = Vec::new();
    for call in long {
        long_backends.push(call.await??);
    }
    let last = leaving
        .last_hello()
        .context("no call on the leaving server")?;
    let last_after = last.saturating_duration_since(sigterm_at);
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "drain (delay {delay:?}): out of the pick set {out_at:?} after the trigger, key deleted \
         after {key_gone:?}, last RPC reached the server {last_after:?} after it, server stopped \
         after {stopped:?}; long calls answered by {long_backends:?}; load {ok} ok, {failed} \
         failed"
    );
    assert_eq!(failed, 0, "calls failed during the drain");
    assert!(ok > 0);
    assert_eq!(
        long_backends.iter().filter(|b| *b == "leaving").count(),
        2,
        "the calls in flight on the draining server finished there"
    );
    assert!(
        last_after < delay,
        "a call reached the server late in its drain: {last_after:?}"
    );
    assert!(
        stopped >= delay,
        "stopped before the drain delay: {stopped:?}"
    );
    assert!(
        stopped < delay + Duration::from_secs(5),
        "graceful stop took {stopped:?}"
    );
    Ok(())
}
