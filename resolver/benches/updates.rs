//! Resolver updates at scale (issue 14): the cost of one etcd watch response that deletes, or
//! puts back, 1 or 100 keys, applied to a resolver and a balancer already holding N = 1,000 /
//! 10,000 / 100,000 READY backends. Split into discovery (decode the events, update the
//! endpoint set, publish the snapshot) and balancer (bring the pool to the snapshot, rebuild
//! the picker); plus one bare picker rebuild at that size. No etcd, no dialing: the backends
//! are READY on a lazily connected channel that is never used.
//!
//! ```text
//! cargo bench -p registrar-resolver --bench updates
//! ```
//!
//! Environment: `REGISTRAR_UPDATES_BENCH_SIZES` (comma-separated N, default
//! `1000,10000,100000`), `REGISTRAR_UPDATES_BENCH_SECONDS` (measuring time per case, default 2).
//! Under `cargo test --benches` (no `--bench` argument) it does nothing.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use registrar_resolver::bench_internals::{StepCost, UpdateBench};

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "updates: a benchmark; run it with `cargo bench -p registrar-resolver --bench updates`"
        );
        return Ok(());
    }
    let sizes = common::sizes("REGISTRAR_UPDATES_BENCH_SIZES", "1000,10000,100000");
    let budget = Duration::from_secs_f64(common::number("REGISTRAR_UPDATES_BENCH_SECONDS", 2.0));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = runtime.enter();
    println!("load: {}", common::load());
    println!(
        "| N | keys changed | op | steps | discovery p50 | balancer p50 | total p50 | total p90 | picker rebuild |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        for changes in [1usize, 100] {
            let setup = Instant::now();
            let mut bench = UpdateBench::new(n)?;
            let setup = setup.elapsed();
            eprintln!("N={n}: setup took {setup:?}");
            // Warm up: one removal and its put-back.
            bench.step(changes)?;
            bench.step(changes)?;
            let mut costs: Vec<StepCost> = Vec::new();
            let start = Instant::now();
            while (start.elapsed() < budget || costs.len() < 10) && costs.len() < 2000 {
                costs.push(bench.step(changes)?);
            }
            let mut rebuilds: Vec<Duration> = (0..5).map(|_| bench.rebuild()).collect();
            rebuilds.sort();
            for added in [false, true] {
                let of: Vec<&StepCost> = costs.iter().filter(|c| c.added == added).collect();
                let mut d: Vec<Duration> = of.iter().map(|c| c.discovery).collect();
                let mut b: Vec<Duration> = of.iter().map(|c| c.balancer).collect();
                let mut t: Vec<Duration> = of.iter().map(|c| c.discovery + c.balancer).collect();
                println!(
                    "| {n} | {changes} | {} | {} | {} | {} | {} | {} | {} |",
                    if added { "put back" } else { "delete" },
                    of.len(),
                    show(pct(&mut d, 50)),
                    show(pct(&mut b, 50)),
                    show(pct(&mut t, 50)),
                    show(pct(&mut t, 90)),
                    show(rebuilds[2]),
                );
            }
        }
    }
    Ok(())
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v.get((v.len().saturating_sub(1)) * p / 100)
        .copied()
        .unwrap_or_default()
}

fn show(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}
