//! Zero-error rolling updates end to end (issue 12 §4): the scenario of
//! [`support::rollout`] — a kwok cluster, the operator, a Deployment of 4 replicas (maxSurge 1,
//! maxUnavailable 0) served by the watch-driven stand-in kubelet, whose SIGTERM triggers the
//! resolver's [`Drain`](registrar_resolver::Drain) helper (NOT_SERVING on `grpc.health.v1`,
//! serving on for the drain delay, then a graceful shutdown), and a client with health
//! checking on and 8 concurrent callers at ~1,000 RPCs per second (bounded). Three
//! consecutive rolling updates cost 0 failed RPCs; the test prints what it sent, what failed
//! and how long after SIGTERM each terminating server answered its last call.
//!
//! The baseline (health checking off, no drain delay) is measured side by side by
//! `cargo bench --bench rollouts`; an opt-in `#[ignore]` test here runs it alone:
//! `cargo test --test rollouts -- --ignored`.

mod support;

use anyhow::Result;
use support::rollout::{self, Setup};

/// The tests of this file measure RPC failures under load: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn rolling_updates_with_health_checking_and_drain_fail_no_rpc() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let setup = Setup::PROTECTED;
    let o = rollout::run(setup).await?;
    rollout::print("health checking + drain", setup, &o);
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
    let setup = Setup::BASELINE;
    let o = rollout::run(setup).await?;
    rollout::print("baseline: no health checking, no drain delay", setup, &o);
    Ok(())
}
