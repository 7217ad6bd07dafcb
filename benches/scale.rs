//! Scale benchmark: N pods in R ServiceRegistrations (default 10,000 in 1,000; several sizes
//! in one run, each on a fresh world), everything already in the API server; the `registrar`
//! binary starts cold (empty etcd) and the bench measures the time until every key is in etcd
//! and every registration reports Ready, the operator's RSS, the etcd txns it took and the
//! leases it holds; then a warm restart (SIGTERM, start again): time until it is ready and has
//! re-attached every key, and whether any key was deleted meanwhile. First, the operator's RSS
//! on an empty cluster: the baseline that the per-pod RSS is measured above.
//!
//! Run with `cargo bench --bench scale`. Everything runs on loopback: a kube-apiserver with
//! its etcd, Registrar's own etcd and the operator; pod addresses are in 127.0.0.0/8 and never
//! dialed.
//!
//! Environment:
//! - `REGISTRAR_BENCH_SCALE`: `PODSxREGISTRATIONS`, or several comma-separated (default
//!   `10000x1000`; e.g. `1000x100` for a quick check,
//!   `10000x1000,50000x5000,100000x10000` for the cost curve). Registrations must divide pods.
//! - `REGISTRAR_BENCH_IN_FLIGHT`: API requests in flight during the setup (default 64).
//! - `REGISTRAR_BENCH_WARM_RESTART`: `0` skips the warm restart (default: measured).
//! - `REGISTRAR_BENCH_OUT`: where the Markdown goes (default `<target>/bench/scale.md`).
//! - `REGISTRAR_COALESCE_MS`, `REGISTRAR_LEASE_TTL`: passed on to the operator (its own flags).
//!
//! Under `cargo test --benches` (no `--bench` argument) it does nothing.

// Shared with the other size bench (scale / churn); each reads a part of its figures.
#[allow(dead_code)]
#[path = "scale/cold.rs"]
mod cold;
#[path = "common/mod.rs"]
mod common;
#[path = "scale/layout.rs"]
mod layout;
#[path = "scale/measure.rs"]
mod measure;
#[path = "scale/observe.rs"]
mod observe;
#[path = "scale/report.rs"]
mod report;
#[path = "scale/setup.rs"]
mod setup;
#[path = "scale/world.rs"]
mod world;

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::common::harness::env_number;
use crate::layout::Size;
use crate::setup::say;
use crate::world::World;

const DEFAULT_SCALE: &str = "10000x1000";

fn main() -> std::process::ExitCode {
    common::harness::main("scale", run)
}

async fn run() -> Result<()> {
    let text = std::env::var("REGISTRAR_BENCH_SCALE").unwrap_or_else(|_| DEFAULT_SCALE.into());
    let sizes = Size::parse_list(&text)?;
    let warm = std::env::var("REGISTRAR_BENCH_WARM_RESTART").map_or(true, |v| v.trim() != "0");
    let lease_ttl: u64 = env_number("REGISTRAR_LEASE_TTL", 30)?;
    let coalesce: u64 = env_number("REGISTRAR_COALESCE_MS", 50)?;
    let in_flight = env_number("REGISTRAR_BENCH_IN_FLIGHT", setup::IN_FLIGHT)?.max(1);
    let started = Instant::now();
    say("empty cluster: starting kube-apiserver and etcd, then registrar with nothing to do");
    let (baseline, versions) = {
        let world = World::start().await?;
        (
            measure::empty_cluster(&world).await?,
            world.versions.clone(),
        )
    };
    say(&format!("empty-cluster baseline: {baseline:?}"));
    let mut runs = Vec::new();
    for size in sizes {
        let run_started = Instant::now();
        let (cold, warm, setup) = run_size(size, warm, lease_ttl, in_flight).await?;
        runs.push(report::Run {
            size,
            setup,
            cold,
            warm,
            total: run_started.elapsed(),
        });
    }

    let report = report::Report {
        when: common::report::when_and_where(),
        versions,
        settings: format!("{coalesce} ms coalescing, {lease_ttl} s lease TTL"),
        in_flight,
        baseline,
        runs,
        total: started.elapsed(),
    };
    let md = report::markdown(&report);
    println!("\n{md}");
    let path = common::report::write("scale.md", &md)?;
    say(&format!(
        "wrote {} ({:.0} s in all)",
        path.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// One size on a fresh world: setup, cold start, warm restart (when `warm`).
async fn run_size(
    size: Size,
    warm: bool,
    lease_ttl: u64,
    in_flight: usize,
) -> Result<(measure::Cold, Option<measure::Warm>, setup::SetupTimes)> {
    say(&format!(
        "{} pods in {} registrations; starting kube-apiserver and etcd",
        size.pods, size.registrations
    ));
    let (world, setup) = cold::populated(size, in_flight).await?;
    let mut observer = cold::observer(&world, size).await?;
    let (operator, cold) = measure::cold_start(&world, &mut observer, size).await?;
    let (operator, warm) = if warm {
        let ttl = Duration::from_secs(lease_ttl);
        let (op, w) = measure::warm_restart(&world, &mut observer, size, operator, ttl).await?;
        (op, Some(w))
    } else {
        (operator, None)
    };
    drop(observer);
    drop(operator);
    say(&format!(
        "{} pods in {} registrations done; cleaning up",
        size.pods, size.registrations
    ));
    drop(world);
    Ok((cold, warm, setup))
}
