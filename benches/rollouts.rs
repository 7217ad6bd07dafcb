//! Rollout benchmark (issue 12 §4): the rolling-update scenario of the `rollouts` test (a kwok
//! cluster, the operator, a Deployment of 4 replicas with maxSurge 1 and maxUnavailable 0
//! served by the watch-driven stand-in kubelet, a client with 8 concurrent callers at ~1,000
//! RPCs per second, three consecutive rolling updates), run three times: with client-side health
//! checking and the resolver's drain helper (2 s drain delay); without either (no health
//! checking, the server shuts down gracefully on SIGTERM, clients drop it when etcd or its
//! GOAWAY tells them); and with servers that have no SIGTERM handler (they die at once). Prints
//! failed RPCs side by side and, per run, how long after SIGTERM the terminating servers
//! answered their last call.
//!
//! Run with `cargo bench --bench rollouts`. The table is printed and written to
//! `<target>/bench/rollouts.md` (or `$REGISTRAR_BENCH_OUT`). Everything runs on loopback. Under
//! `cargo test --benches` (no `--bench` argument) it does nothing.

#[path = "common/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "common/report.rs"]
#[allow(dead_code)]
mod report;
#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::Result;
use support::rollout::{self, CALLERS, GRACE_S, RATE, REPLICAS, ROLLOUTS, Setup};

fn main() -> std::process::ExitCode {
    harness::main("rollouts", run)
}

async fn run() -> Result<()> {
    let runs = [
        ("health checking + drain (2 s)", Setup::PROTECTED),
        (
            "no health checking, no drain delay (graceful shutdown on SIGTERM)",
            Setup::BASELINE,
        ),
        (
            "no health checking, no SIGTERM handler (exits at once)",
            Setup::UNHANDLED,
        ),
    ];
    let mut rows = Vec::new();
    for (label, setup) in runs {
        let o = rollout::run(setup).await?;
        rollout::print(label, setup, &o);
        rows.push((label, o));
    }
    let mut table = Vec::new();
    for (label, o) in &rows {
        let first = o.stats.errors.first().map_or("-", |e| {
            // "at 1.2s: <status>, source: ..." -> the status alone.
            let e = e.split_once(": ").map_or(e.as_str(), |(_, rest)| rest);
            e.split(", source:").next().unwrap_or(e)
        });
        table.push(vec![
            label.to_string(),
            o.stats.sent.to_string(),
            o.stats.failed.to_string(),
            format!("{:.1} s", o.took.as_secs_f64()),
            format!(
                "{} / {}",
                rollout::ms(o.median_last_call_ms()),
                rollout::ms(o.latest_last_call_ms())
            ),
            first.replace('|', "/"),
        ]);
    }
    let markdown = format!(
        "`cargo bench --bench rollouts` — {}: {ROLLOUTS} rolling updates of {REPLICAS} replicas \
         (maxSurge 1, maxUnavailable 0, terminationGracePeriodSeconds {GRACE_S}), {CALLERS} \
         callers at <= {RATE} RPC/s in all.\n\n{}",
        report::when_and_where(),
        report::table(
            &[
                "setup",
                "RPCs sent",
                "failed",
                "rollouts took",
                "SIGTERM → last RPC received (median / latest)",
                "first error",
            ],
            &table
        )
    );
    println!("\n{markdown}");
    let path = report::write("rollouts.md", &markdown)?;
    println!("written to {}", path.display());
    Ok(())
}
