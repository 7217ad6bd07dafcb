//! Propagation benchmark: pod Ready → endpoint visible, Registrar against the EndpointSlice
//! controller as the peer, same pods, same run.
//!
//! Run with `cargo bench --bench propagation`. It starts a kube-apiserver, kube-controller-manager
//! (EndpointSlice controller only), Registrar's etcd and the `registrar` binary on loopback,
//! then for each round size creates that many pods selected by both a Service and a
//! ServiceRegistration, gives them IPs (not Ready), and flips them all Ready at once. Per pod it
//! measures from the instant its Ready patch was sent to the instant its backend is in the pick
//! set of a `registrar-resolver` `Balancer` on the target, to the instant its key is seen by an
//! etcd watch, and to the instant it is a ready endpoint in an EndpointSlice watch; then it
//! deletes them in the same waves (each turns terminating) and measures the delete request →
//! out of the pick set, → key deleted and → endpoint no longer ready, and it scrapes the
//! operator's own latency and stage histograms. Pod IPs come from 192.0.2.0/24 (the
//! EndpointSlice controller refuses loopback), made distinct per pod by a named container port,
//! and nothing ever connects to them: the balancer dials every backend on a loopback server
//! instead.
//!
//! Environment:
//! - `REGISTRAR_BENCH_PODS`: rounds, comma separated: `N` flips N pods at once, `NxW` does that
//!   W times in a row, each wave after the previous one is fully visible (default
//!   `1x50,100x5,500x3,1000x3`; one distinct `192.0.2.x:port` address per pod).
//! - `REGISTRAR_BENCH_RUNS`: how many times to run all rounds (default 1); with more, the report
//!   ends with the spread (min–max) of each size's p50, p99 and ratios over the runs.
//! - `REGISTRAR_BENCH_OUT`: where the Markdown goes (default `<target>/bench/propagation.md`).
//!
//! Under `cargo test --benches` (no `--bench` argument) it does nothing.

#[path = "propagation/client.rs"]
mod client;
#[path = "common/mod.rs"]
mod common;
#[path = "propagation/observe.rs"]
mod observe;
#[path = "propagation/report.rs"]
mod report;
#[path = "propagation/round.rs"]
mod round;
#[path = "propagation/world.rs"]
mod world;

use std::time::Instant;

use anyhow::{Context, Result};

const DEFAULT_PODS: &str = "1x50,100x5,500x3,1000x3";

fn main() -> std::process::ExitCode {
    common::harness::main("propagation", run)
}

/// Round plans from `REGISTRAR_BENCH_PODS`: `N` (N pods at once) or `NxW` (W waves of N).
fn plans() -> Result<Vec<round::Plan>> {
    let text = std::env::var("REGISTRAR_BENCH_PODS").unwrap_or_else(|_| DEFAULT_PODS.into());
    let parse = |s: &str| -> Option<round::Plan> {
        let (pods, waves) = s.trim().split_once('x').unwrap_or((s.trim(), "1"));
        Some(round::Plan {
            pods: pods.parse().ok()?,
            waves: waves.parse().ok()?,
        })
    };
    let plans = text
        .split(',')
        .map(parse)
        .collect::<Option<Vec<_>>>()
        .with_context(|| {
            format!("REGISTRAR_BENCH_PODS={text:?}: expected N or NxW, comma separated")
        })?;
    anyhow::ensure!(
        plans
            .iter()
            .all(|p| p.pods >= 1 && (1..=round::MAX_PODS).contains(&p.total())),
        "REGISTRAR_BENCH_PODS: every round needs 1..={} pods in all",
        round::MAX_PODS
    );
    Ok(plans)
}

async fn run() -> Result<()> {
    let plans = plans()?;
    let started = Instant::now();
    println!("[bench] starting kube-apiserver, kube-controller-manager, etcd and registrar");
    let mut world = world::World::start().await?;
    println!(
        "[bench] ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let repeat: usize = match std::env::var("REGISTRAR_BENCH_RUNS") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .with_context(|| format!("REGISTRAR_BENCH_RUNS={v:?}: expected a count ≥ 1"))?,
        Err(_) => 1,
    };
    let mut runs = Vec::new();
    let mut index = 0;
    for run in 0..repeat {
        if repeat > 1 {
            println!("[bench] run {} of {repeat}", run + 1);
        }
        let mut rounds = Vec::new();
        for plan in &plans {
            rounds.push(round::run(&mut world, index, *plan).await?);
            index += 1;
            world.check_alive()?;
        }
        runs.push(rounds);
    }
    let date = common::report::when_and_where();
    let coalesce = std::env::var("REGISTRAR_COALESCE_MS").unwrap_or_else(|_| "50".into());
    let header = format!(
        "## Propagation: pod Ready → endpoint visible\n\n\
         `cargo bench --bench propagation` — {date}, {versions}. registrar with \
         {coalesce} ms coalescing (`REGISTRAR_COALESCE_MS`, default 50), kube-controller-manager at its defaults \
         (EndpointSlice controller only, client QPS 20). Everything (API server, both etcds, \
         controller, operator, bench) shares the machine.\n\n\
         Per pod, latency runs from the instant the bench sent the pod's Ready status patch to \
         the instant a client saw the endpoint: for Registrar, a `registrar-resolver` `Balancer` \
         on the target having the backend in its pick set (connected: every backend connection \
         goes to a loopback server), and an etcd watch on `<target>/`; an EndpointSlice watch \
         for the peer. The \"from LTT\" columns measure from the Ready \
         condition's stored `lastTransitionTime` instead (one-second resolution, so up to 1 s \
         longer), as the operator's own metric does. The pods of a wave flip Ready at once (64 \
         patches in flight); \"N (×W waves)\" flips N pods W times in a row, each wave once the \
         previous one is visible to both systems and 250 ms of quiet have passed (so a wave is \
         a lone change, not part of the previous burst). \"converged after\" runs from a wave's first \
         patch to its last endpoint seen (slowest wave). Registrar's writes are etcd txns (one \
         txn = one revision); the peer's are EndpointSlice writes. Then the same pods are deleted \
         in the same waves (they turn terminating: no kubelet confirms the deletion): removal \
         runs from the delete request to the backend out of the pick set, to the key's deletion \
         seen by the etcd watch, and to the endpoint no longer ready in the EndpointSlice watch. The operator's own latency is its \
         `registrar_operator_latency_seconds` histogram (pod watch event received → etcd txn \
         committed) scraped around the Ready waves and around the removal waves (p50/p99/all: \
         the bucket bounds they fall under). \"Where the time goes\" splits the round with the \
         largest waves: per pod from the bench's own sightings (a pod watch, the etcd watch, the \
         balancer's resolver and pick set), then the operator's `registrar_stage_seconds`.",
        versions = world.versions
    );
    let md = report::markdown(&header, &runs);
    println!("\n{md}");
    let path = common::report::write("propagation.md", &md)?;
    println!(
        "[bench] wrote {} ({:.0} s in all); cleaning up",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    drop(world);
    Ok(())
}
