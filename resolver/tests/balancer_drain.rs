//! Backends leaving under load: several keys deleted from etcd in one revision while the same
//! backends' servers drain (GOAWAY) at that instant, with calls in flight on them and new calls
//! arriving about every millisecond. The contract (docs/architecture.md): a removed or draining
//! backend finishes its in-flight calls and new calls go elsewhere, so no call may fail.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::*;
use etcd_client::{Txn, TxnOp};
use registrar_resolver::{Backoff, Balancer, Endpoint, Metadata};
use registrar_testenv::greeter::{self, GreeterClient, HelloRequest, TestServer};
use registrar_testenv::{Etcd, poll};
use tokio::task::JoinSet;

/// Rounds of "six backends join, four of them leave at once".
const ROUNDS: usize = 8;
/// How long the server holds each call, so that calls are in flight when a backend drains.
const HOLD_MS: u64 = 10;
/// Calls every backend must have answered before the next step of a round.
const WARM_CALLS: u64 = 30;

/// One call of the load.
struct Call {
    sent: Instant,
    result: Result<String, tonic::Status>,
}

/// A removal: when the balancer was seen without these backends, and their names.
struct Removal {
    seen_at: Instant,
    names: Vec<String>,
}

/// Sends one call per millisecond (open loop) until `stop`; every call's outcome.
async fn load(balancer: Balancer, stop: Arc<AtomicBool>) -> Result<Vec<Call>> {
    let mut running = JoinSet::new();
    let mut calls = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let mut client = GreeterClient::new(balancer.clone());
        running.spawn(async move {
            let sent = Instant::now();
            let mut request = tonic::Request::new(HelloRequest {
                name: format!("sleep:{HOLD_MS}"),
            });
            request.set_timeout(Duration::from_secs(10));
            // The reply must echo the request: a call sent again carries its body intact.
            let result = client.say_hello(request).await.and_then(|r| {
                let reply = r.into_inner();
                if reply.message == format!("Hello sleep:{HOLD_MS}") {
                    Ok(reply.backend)
                } else {
                    Err(tonic::Status::data_loss(format!("wrong reply {reply:?}")))
                }
            });
            Call { sent, result }
        });
        while let Some(done) = running.try_join_next() {
            calls.push(done?);
        }
    }
    while let Some(done) = running.join_next().await {
        calls.push(done?);
    }
    Ok(calls)
}

fn key(target: &str, server: &TestServer) -> String {
    format!("{target}/{}", server.addr())
}

/// Waits until every server in `servers` has answered `more` calls beyond `from`.
async fn wait_served(servers: &[TestServer], from: &[u64], more: u64) -> Result<()> {
    poll(
        "the load to reach every backend",
        Duration::from_secs(20),
        || async {
            servers
                .iter()
                .zip(from)
                .all(|(s, &n)| s.served() >= n + more)
                .then_some(())
        },
    )
    .await
}

/// Deletes the keys of `leaving` in one etcd transaction and drains their servers at the same
/// instant (drain first on even rounds, delete first on odd ones); returns when the balancer no
/// longer lists them.
async fn remove_and_drain(
    kv: &mut etcd_client::Client,
    balancer: &Balancer,
    target: &str,
    leaving: &mut [TestServer],
    round: usize,
) -> Result<Removal> {
    let deletes: Vec<TxnOp> = leaving
        .iter()
        .map(|s| TxnOp::delete(key(target, s), None))
        .collect();
    let txn = Txn::new().and_then(deletes);
    if round.is_multiple_of(2) {
        leaving.iter_mut().for_each(TestServer::drain);
        kv.txn(txn).await?;
    } else {
        let delete = kv.txn(txn);
        // The request is on its way once first polled; drain right behind it.
        tokio::pin!(delete);
        let early = futures::poll!(delete.as_mut());
        leaving.iter_mut().for_each(TestServer::drain);
        if early.is_pending() {
            delete.await?;
        }
    }
    let addrs: Vec<String> = leaving.iter().map(|s| s.addr().to_string()).collect();
    poll(
        "the removed backends to leave the balancer",
        Duration::from_secs(10),
        || async { (!balancer.backends().iter().any(|b| addrs.contains(&b.addr))).then_some(()) },
    )
    .await?;
    Ok(Removal {
        seen_at: Instant::now(),
        names: leaving.iter().map(|s| s.name().to_owned()).collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_of_six_backends_removed_and_drained_at_once_under_load_fail_no_call() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("drain-load");
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .connection_backoff(Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(500),
        ))
        .build()
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let generator = tokio::spawn(load(balancer.clone(), stop.clone()));

    let mut survivors: Vec<TestServer> = Vec::new();
    // Drained servers stay up (draining) until the end: stopping one would cut its calls.
    let mut retired: Vec<TestServer> = Vec::new();
    let mut removals = Vec::new();
    let mut finished_while_draining = Vec::new();
    for round in 0..ROUNDS {
        let mut fresh = Vec::new();
        for i in 0..6 {
            let n = u8::try_from(40 + round * 6 + i)?;
            fresh.push(greeter::serve(loopback(n), format!("r{round}b{i}")).await);
        }
        let mut puts = Vec::new();
        for s in &fresh {
            let value = Endpoint::new(s.addr().to_string(), Metadata::null())?.encode();
            puts.push(TxnOp::put(key(&target, s), value, None));
        }
        kv.txn(Txn::new().and_then(puts)).await?;
        wait_ready(&balancer, survivors.len() + 6).await?;
        // Last round's two survivors leave the same way.
        if !survivors.is_empty() {
            removals
                .push(remove_and_drain(&mut kv, &balancer, &target, &mut survivors, round).await?);
            retired.append(&mut survivors);
        }
        wait_served(&fresh, &[0; 6], WARM_CALLS)
            .await
            .with_context(|| format!("round {round}: {:?}", balancer.backends()))?;

        let mut stay = fresh.split_off(4);
        let mut leaving = fresh;
        let before: Vec<u64> = leaving.iter().map(TestServer::served).collect();
        let removal = remove_and_drain(&mut kv, &balancer, &target, &mut leaving, round).await?;
        removals.push(removal);
        let stay_before: Vec<u64> = stay.iter().map(TestServer::served).collect();
        wait_served(&stay, &stay_before, WARM_CALLS).await?;
        // What the draining servers answered after their drain began: calls in flight then.
        poll(
            "the draining backends to go quiet",
            Duration::from_secs(10),
            || async {
                let a: Vec<u64> = leaving.iter().map(TestServer::served).collect();
                tokio::time::sleep(Duration::from_millis(3 * HOLD_MS)).await;
                let b: Vec<u64> = leaving.iter().map(TestServer::served).collect();
                (a == b).then_some(a)
            },
        )
        .await
        .map(|after| {
            finished_while_draining.push(after.iter().zip(&before).map(|(a, b)| a - b).sum::<u64>())
        })?;
        retired.append(&mut leaving);
        survivors.append(&mut stay);
    }
    stop.store(true, Ordering::Relaxed);
    let calls = tokio::time::timeout(Duration::from_secs(30), generator)
        .await
        .context("the load did not finish")???;
    let elapsed = started.elapsed();

    let failed: Vec<&Call> = calls.iter().filter(|c| c.result.is_err()).collect();
    eprintln!(
        "{} rounds: RPCs sent {}, failed {}, in {:.1?} ({:.0} RPC/s); calls answered by \
         draining servers after their drain began, per round: {finished_while_draining:?}",
        ROUNDS,
        calls.len(),
        failed.len(),
        elapsed,
        calls.len() as f64 / elapsed.as_secs_f64(),
    );
    for c in failed.iter().take(20) {
        eprintln!(
            "  failed at +{:?}: {:?}",
            c.sent.duration_since(started),
            c.result.as_ref().err()
        );
    }
    for r in &removals {
        eprintln!(
            "  removal of {:?} seen at +{:?}",
            r.names,
            r.seen_at.duration_since(started)
        );
    }
    assert!(calls.len() > 1000, "too little load: {} calls", calls.len());
    assert!(
        failed.is_empty(),
        "{} of {} calls failed",
        failed.len(),
        calls.len()
    );
    // Calls sent after a removal was seen never reached the removed backends.
    for r in &removals {
        let strays = calls
            .iter()
            .filter(|c| c.sent > r.seen_at)
            .filter(|c| c.result.as_ref().is_ok_and(|b| r.names.contains(b)))
            .count();
        assert_eq!(strays, 0, "calls reached {:?} after removal", r.names);
    }
    // The draining servers did finish calls that were in flight when they began draining.
    assert!(
        finished_while_draining.iter().sum::<u64>() > 0,
        "{finished_while_draining:?}"
    );
    drop(retired);
    Ok(())
}
