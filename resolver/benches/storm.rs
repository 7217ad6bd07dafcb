//! A readiness storm (issue 14): N backends become known at once (one resolver update) and all
//! turn READY at about the same time, as at a client's cold start. Per N, the time from the
//! update to the first and to all N backends in the pick set, and how many pickers the balancer
//! built on the way (one per READY backend means O(N²) work).
//!
//! - `in-process`: each backend's subchannel is replaced by a task reporting READY on a lazily
//!   connected channel that is never used (the balancer's own cost alone).
//! - `loopback`: one tonic server listening on N ports of `127.0.0.1`, dialed by the
//!   balancer's real subchannels (three file descriptors per backend: sizes that do not fit
//!   the open-file limit are skipped).
//!
//! ```text
//! cargo bench -p registrar-resolver --bench storm
//! ```
//!
//! Environment: `REGISTRAR_STORM_BENCH_SIZES` (comma-separated N, default `1000,10000,100000`),
//! `REGISTRAR_STORM_BENCH_RUNS` (runs per case, default 3). Runs on a two-worker Tokio runtime.
//! Under `cargo test --benches` (no `--bench` argument) it does nothing.

mod common;

use std::time::Duration;

use anyhow::Result;
use registrar_resolver::bench_internals::{StormCost, storm};

/// How long one storm may take before the bench gives up.
const DEADLINE: Duration = Duration::from_secs(600);

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "storm: a benchmark; run it with `cargo bench -p registrar-resolver --bench storm`"
        );
        return Ok(());
    }
    let sizes = common::sizes("REGISTRAR_STORM_BENCH_SIZES", "1000,10000,100000");
    let runs: usize = common::number("REGISTRAR_STORM_BENCH_RUNS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let files = open_file_limit();
    println!("load: {}", common::load());
    println!("| N | way | run | first in pick set | all in pick set | pickers built |");
    println!("|---:|---|---:|---:|---:|---:|");
    for &n in &sizes {
        for run in 1..=runs {
            let cost = runtime.block_on(storm::in_process(n, DEADLINE))?;
            row(n, "in-process", run, &cost);
        }
        if 3 * n + 1000 > files {
            println!(
                "| {n} | loopback | - | skipped: needs {} open files, limit {files} | | |",
                3 * n
            );
            continue;
        }
        for run in 1..=runs {
            let cost = runtime.block_on(storm::loopback(n, DEADLINE))?;
            row(n, "loopback", run, &cost);
        }
    }
    println!("load: {}", common::load());
    Ok(())
}

fn row(n: usize, way: &str, run: usize, cost: &StormCost) {
    println!(
        "| {n} | {way} | {run} | {} | {} | {} |",
        show(cost.first),
        show(cost.all),
        cost.rebuilds
    );
}

/// The soft limit on open files.
fn open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    }
}

fn show(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}
