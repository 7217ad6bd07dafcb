//! The churn itself: readiness flips at a steady rate. A pod is taken out (patched NotReady),
//! stays out for a while, and is put back (patched Ready); once `down` pods are out, each tick
//! puts the longest-out one back, otherwise it takes the next one out, so after the first
//! seconds half the flips are removals and half are additions. Pods are visited in a fixed
//! stride order that spreads consecutive flips over the registrations.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::common::objects::pod_status;
use crate::layout::{self, PORT, Size};
use crate::propagation::Ledger;

/// Patches in flight at once.
const IN_FLIGHT: usize = 64;
/// Seconds a pod stays NotReady (at most a quarter of the pods are out at once).
const DOWN_SECONDS: usize = 5;

/// How the churn went.
#[derive(Debug)]
pub struct Flipped {
    pub flips: usize,
    pub took: Duration,
    /// Patches that failed (not counted in `flips`).
    pub failed: usize,
}

/// The stride: the smallest number >= pods / φ that is coprime with `pods`.
fn stride(pods: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let mut s = ((pods as f64 / 1.618).round() as usize).max(1);
    while gcd(s, pods) != 1 {
        s += 1;
    }
    s
}

/// Flips pods of `size` at `rate` per second for `duration`, noting each flip in `ledger`;
/// `tick` is called about once a second (progress, operator alive).
pub async fn run(
    client: &kube::Client,
    size: Size,
    rate: u32,
    duration: Duration,
    ledger: &Ledger,
    mut tick: impl FnMut(usize, Duration) -> Result<()>,
) -> Result<Flipped> {
    let pods: Vec<layout::Pod> = size.pods().collect();
    let n = pods.len();
    let step = stride(n);
    let down_max = (rate as usize * DOWN_SECONDS).min(n / 4).max(1);
    let mut down: VecDeque<usize> = VecDeque::new();
    let mut next = 0usize;
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    let mut failed = 0usize;
    let mut flips = 0usize;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut last_tick = started;
    while started.elapsed() < duration {
        interval.tick().await;
        while let Some(done) = tasks.try_join_next() {
            if done.context("a flip task panicked")?.is_err() {
                failed += 1;
            }
        }
        let (index, ready) = if down.len() >= down_max {
            (down.pop_front().context("down is not empty")?, true)
        } else {
            let i = (next * step) % n;
            next += 1;
            down.push_back(i);
            (i, false)
        };
        let pod = pods[index];
        let permit = permits.clone().acquire_owned().await?;
        let api: Api<Pod> =
            Api::namespaced(client.clone(), &layout::namespace(size, pod.registration));
        let ip = pod.ip();
        ledger.sent(format!("{ip}:{PORT}"), ready);
        tasks.spawn(async move {
            let _permit = permit;
            api.patch_status(
                &pod.name(),
                &PatchParams::default(),
                &Patch::Merge(pod_status(&ip, ready)),
            )
            .await
            .with_context(|| format!("patching pod {}", pod.name()))?;
            Ok(())
        });
        flips += 1;
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            tick(flips, started.elapsed())?;
        }
    }
    let took = started.elapsed();
    while let Some(done) = tasks.join_next().await {
        if done.context("a flip task panicked")?.is_err() {
            failed += 1;
        }
    }
    Ok(Flipped {
        flips: flips - failed,
        took,
        failed,
    })
}
