//! Steady churn benchmark: N pods in R ServiceRegistrations (default 100,000 in 10,000), all
//! in the API server before the `registrar` binary starts cold. First the cold start is timed
//! (the scale bench's, `scale/cold.rs`: → /readyz, → all keys, → all Published) with the API
//! server's count of the operator's status patches (how many, how fast, how many 429s): the
//! status writes at scale. Then pods flip readiness at a steady rate (half out, half
//! back in) for a fixed time, and the bench reports propagation (pod status patch sent → key
//! put or deleted, seen by an etcd watch) p50/p99, etcd txns per second (revision delta over
//! time: only the operator writes to its etcd), the operator's CPU seconds per 1,000 changes
//! (`/proc/<pid>/stat`) and its RSS at the start and end of the churn, with the slope.
//!
//! Run with `cargo bench --bench churn`. Everything runs on loopback (pod addresses in
//! 127.0.0.0/8, never dialed); the bench stops by itself.
//!
//! Environment:
//! - `REGISTRAR_BENCH_CHURN`: `PODSxREGISTRATIONS` (default `100000x10000`).
//! - `REGISTRAR_BENCH_CHURN_RATE`: readiness changes per second (default 200).
//! - `REGISTRAR_BENCH_CHURN_SECS`: seconds of churn (default 300; 0 measures the cold start only).
//! - `REGISTRAR_BENCH_OUT`: where the Markdown goes (default `<target>/bench/churn.md`).
//! - `REGISTRAR_BENCH_OPERATOR`: the operator binary to start instead of this build's (e.g. a
//!   build of an older commit, for a before/after in one session).
//! - `REGISTRAR_KUBE_API_QPS`, `REGISTRAR_KUBE_API_BURST`, `REGISTRAR_KUBE_API_MAX_IN_FLIGHT`,
//!   `REGISTRAR_COALESCE_MS`: passed on to the operator (its own flags).
//!
//! Under `cargo test --benches` (no `--bench` argument) it does nothing.

#[path = "churn/apiserver.rs"]
mod apiserver;
// Shared with the other size bench (scale / churn); each reads a part of its figures.
#[allow(dead_code)]
#[path = "scale/cold.rs"]
mod cold;
#[path = "common/mod.rs"]
mod common;
#[path = "churn/flip.rs"]
mod flip;
// The scale bench's layout also parses its list of sizes, which this bench does not take.
#[allow(dead_code)]
#[path = "scale/layout.rs"]
mod layout;
#[path = "scale/observe.rs"]
mod observe;
#[path = "churn/process.rs"]
mod process;
#[path = "churn/propagation.rs"]
mod propagation;
#[path = "churn/report.rs"]
mod report;
#[path = "scale/setup.rs"]
mod setup;
// The scale bench's world serves more than this bench needs (leases).
#[allow(dead_code)]
#[path = "scale/world.rs"]
mod world;

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::common::harness::env_number;
use crate::common::operator::sample;
use crate::layout::Size;
use crate::propagation::{Ledger, Watch};
use crate::world::{PREFIX, World};

const DEFAULT_SIZE: &str = "100000x10000";
const DEFAULT_RATE: u32 = 200;
const DEFAULT_SECS: u64 = 300;
/// How long flips may take to land after the churn stops.
const DRAIN: Duration = Duration::from_secs(60);
/// RSS is sampled this often during the churn.
const RSS_EVERY: Duration = Duration::from_secs(10);

fn main() -> std::process::ExitCode {
    common::harness::main("churn", run)
}

fn say(what: &str) {
    println!("[churn] {what}");
}

/// The operator's write settings, as the environment passes them on.
fn write_settings() -> String {
    let get = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.into());
    format!(
        "QPS {}, burst {}, {} in flight",
        get("REGISTRAR_KUBE_API_QPS", "default"),
        get("REGISTRAR_KUBE_API_BURST", "default"),
        get("REGISTRAR_KUBE_API_MAX_IN_FLIGHT", "default"),
    )
}

async fn run() -> Result<()> {
    let text = std::env::var("REGISTRAR_BENCH_CHURN").unwrap_or_else(|_| DEFAULT_SIZE.into());
    let size = Size::parse(&text)?;
    let rate: u32 = env_number("REGISTRAR_BENCH_CHURN_RATE", DEFAULT_RATE)?;
    anyhow::ensure!(rate >= 1, "REGISTRAR_BENCH_CHURN_RATE must be at least 1");
    let secs: u64 = env_number("REGISTRAR_BENCH_CHURN_SECS", DEFAULT_SECS)?;
    let started = Instant::now();
    say(&format!(
        "{} pods in {} registrations; {rate} changes/s for {secs} s; starting kube-apiserver and etcd",
        size.pods, size.registrations
    ));
    let (world, setup) = cold::populated(size, setup::IN_FLIGHT).await?;
    let (mut operator, cold) = cold_start(&world, size).await?;
    let churn = if secs > 0 {
        Some(churn(&world, &mut operator, size, rate, Duration::from_secs(secs)).await?)
    } else {
        None
    };
    drop(operator);

    let report = report::Report {
        size,
        when: common::report::when_and_where(),
        load: common::report::load(),
        versions: world.versions.clone(),
        settings: write_settings(),
        setup,
        cold,
        churn,
        total: started.elapsed(),
    };
    let md = report::markdown(&report);
    println!("\n{md}");
    let path = common::report::write("churn.md", &md)?;
    say(&format!(
        "wrote {} ({:.0} s in all); cleaning up",
        path.display(),
        started.elapsed().as_secs_f64()
    ));
    drop(world);
    Ok(())
}

/// Starts the operator cold ([`cold::cold_start`]), counting the status patches the API server
/// answered meanwhile.
async fn cold_start(
    world: &World,
    size: Size,
) -> Result<(common::operator::Operator, report::Cold)> {
    let mut observer = cold::observer(world, size).await?;
    let sampler = apiserver::Sampler::start(world.client.clone()).await?;
    // Who spends the CPU of the cold start: the API server, its etcd, Registrar's etcd, the
    // operator.
    let watch = |operator: &common::operator::Operator| {
        let mut procs = Vec::new();
        for (i, pid) in world.cp.pids().into_iter().enumerate() {
            procs.push((
                ["kube-apiserver", "its etcd"]
                    .get(i)
                    .copied()
                    .unwrap_or("?"),
                pid,
            ));
        }
        procs.extend(world.etcd.pid().map(|p| ("Registrar's etcd", p)));
        procs.push(("registrar", operator.pid()));
        process::CpuTracker::start(procs)
    };
    let (c, cpu) =
        cold::cold_start_with(world, &mut observer, size, watch, process::CpuTracker::tick).await?;
    let cpu = cpu.finish();
    let patches = sampler.finish().await?;
    drop(observer);
    // The finalizers and Events that wait behind the statuses: when the last finalizer landed.
    let mut finalizers_at = None;
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        let (_, _, now) = apiserver::read(&world.client).await?;
        let added = now.finalizer_patches - patches.others_base.finalizer_patches;
        if added >= size.registrations as f64 {
            finalizers_at = Some(c.spawned.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, _, after) = apiserver::read(&world.client).await?;
    let metrics = c.operator.metrics().await?;
    let since = |at: Option<Instant>| at.map(|a| a.saturating_duration_since(c.spawned));
    let cold = report::Cold {
        readyz: c.readyz,
        all_keys: c.all_keys,
        all_published: c.all_published,
        first_patch: since(patches.first),
        last_patch: since(patches.last),
        patches,
        throttled_metric: sample(&metrics, "registrar_kube_throttled_total"),
        events_metric: [
            ("Normal", "sent"),
            ("Normal", "dropped"),
            ("Normal", "superseded"),
            ("Warning", "sent"),
            ("Warning", "dropped"),
            ("Warning", "superseded"),
        ]
        .map(|(t, o)| {
            sample(
                &metrics,
                &format!(r#"registrar_kube_events_total{{type="{t}",outcome="{o}"}}"#),
            )
        }),
        cpu,
        all_finalizers: finalizers_at,
        events_after: after.events - patches.others_base.events,
        memory: c.operator.memory()?,
    };
    say(&format!("cold start: {cold:?}"));
    Ok((c.operator, cold))
}

/// Flips readiness at `rate` for `duration` and measures.
async fn churn(
    world: &World,
    operator: &mut common::operator::Operator,
    size: Size,
    rate: u32,
    duration: Duration,
) -> Result<report::Churn> {
    let settle = Duration::from_secs(120);
    world
        .settled_revision(Duration::from_secs(2), settle)
        .await?;
    let ledger = Ledger::default();
    let watch = Watch::start(world.etcd.endpoint(), format!("{PREFIX}/"), ledger.clone())?;
    let ticks = process::clock_ticks();
    let pid = operator.pid();
    let (rev_start, _) = world.revision_and_count().await?;
    let cpu_start = process::cpu(pid, ticks)?;
    let rss_start = operator.memory()?.rss_kib;
    let started = Instant::now();
    let mut rss = vec![(0.0, rss_start)];
    let mut last_rss = started;
    say(&format!(
        "churn: {rate} changes/s for {} s (RSS {} MiB)",
        duration.as_secs(),
        rss_start / 1024
    ));
    let flipped = flip::run(
        &world.client,
        size,
        rate,
        duration,
        &ledger,
        |flips, elapsed| {
            operator.check_alive()?;
            if last_rss.elapsed() >= RSS_EVERY {
                last_rss = Instant::now();
                let kib = operator.memory()?.rss_kib;
                rss.push((elapsed.as_secs_f64(), kib));
                say(&format!(
                    "  {:.0} s: {flips} changes, {} not landed yet, RSS {} MiB",
                    elapsed.as_secs_f64(),
                    ledger.outstanding(),
                    kib / 1024
                ));
            }
            Ok(())
        },
    )
    .await?;
    let drain_end = Instant::now() + DRAIN;
    while ledger.outstanding() > 0 && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let window = started.elapsed();
    let (rev_end, _) = world.revision_and_count().await?;
    let cpu_end = process::cpu(pid, ticks)?;
    let rss_end = operator.memory()?.rss_kib;
    rss.push((window.as_secs_f64(), rss_end));
    watch.finish()?;
    let metrics = operator.metrics().await?;
    Ok(report::Churn {
        rate,
        flipped,
        window,
        seen: ledger.take(),
        txns: rev_end - rev_start,
        cpu: cpu_end.saturating_sub(cpu_start),
        rss_start,
        rss_end,
        rss_slope: process::slope_kib_per_min(&rss),
        throttled_metric: sample(&metrics, "registrar_kube_throttled_total"),
    })
}
