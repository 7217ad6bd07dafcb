//! Soak benchmark (issue 14 §4): the operator (release binary, default lease TTL) on a kwok
//! cluster for `REGISTRAR_SOAK_SECS` (default 1800) under continuous churn at a bounded rate
//! (at most one action a second: readiness flips, scales within 3–10 replicas, a rolling
//! restart at most every 45 s) with etcd restarted every few minutes (SIGTERM, kill -9, and
//! kill -9 with etcd down for longer than the lease TTL, data kept: none of them loses the
//! lease) and the lease revoked once behind the operator's back (the one real loss).
//!
//! Every 10 s it samples the operator's RSS, open fds, CPU time, `registrar_tasks`, lease
//! grants and txns, and etcd's revision. It reports the least-squares slopes (per hour, after a
//! warm-up), each lease re-grant and the real loss it followed, and the write accounting: an
//! etcd watch counts the key events (puts, deletes, puts of an unchanged value) and revisions,
//! an independent pod watch counts the key changes the operator's own desired-state function
//! expects; their ratio is the write amplification. At the end etcd must hold exactly the
//! desired keys on one lease; the run fails when it does not, when a re-grant followed no real
//! loss, or when a put rewrote an unchanged value.
//!
//! Run with `cargo bench --bench soak` (not in CI). The report is printed and written to
//! `<target>/bench/soak.md` (or `$REGISTRAR_BENCH_OUT`), the samples to `soak-samples.csv` and
//! the operator's log to `soak-operator.log` next to it. Everything runs on loopback. Under `cargo test --benches` it does nothing.

#[path = "common/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "common/objects.rs"]
#[allow(dead_code)]
mod objects;
#[path = "common/operator.rs"]
#[allow(dead_code)]
mod operator;
#[path = "common/report.rs"]
#[allow(dead_code)]
mod report;
mod soak {
    pub mod churn;
    pub mod config;
    pub mod faults;
    pub mod model;
    pub mod render;
    pub mod sample;
    pub mod stats;
    pub mod world;
}

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::GetOptions;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use registrar::crd::ServiceRegistration;
use registrar::desired;
use registrar_testenv::{RecordOptions, Recorder, poll};
use soak::config::{Config, NAMESPACE, PREFIX};
use soak::render::Outcome;
use soak::{churn, faults, model, render, sample, world::World};
use tokio::time::Instant;

fn main() -> std::process::ExitCode {
    harness::main("soak", run)
}

/// The etcd keys under the prefix (no `.owner`) with values, the distinct leases and the
/// revision.
async fn etcd_state(endpoint: &str) -> Result<(BTreeMap<String, String>, Vec<i64>, i64)> {
    let mut c = etcd_client::Client::connect([endpoint], None).await?;
    let resp = c
        .get(format!("{PREFIX}/"), Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut keys = BTreeMap::new();
    let mut leases = Vec::new();
    for kv in resp.kvs() {
        let key = kv.key_str()?.to_string();
        if key.ends_with("/.owner") {
            continue;
        }
        keys.insert(key, kv.value_str()?.to_string());
        leases.push(kv.lease());
    }
    leases.sort_unstable();
    leases.dedup();
    Ok((keys, leases, revision))
}

/// What the operator's pure function wants from the API server's objects now.
async fn desired_now(client: &kube::Client) -> Result<BTreeMap<String, String>> {
    let regs = Api::<ServiceRegistration>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await?
        .items;
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await?
        .items;
    let outcomes: Vec<_> = regs
        .iter()
        .map(|r| desired::registration_outcome(PREFIX, r, &pods))
        .collect();
    Ok(desired::desired_keys(PREFIX, &outcomes))
}

/// Waits until etcd holds exactly the desired keys on one lease; returns them.
async fn converged(
    client: &kube::Client,
    endpoint: &str,
    deadline: Duration,
) -> Result<BTreeMap<String, String>> {
    let res = poll("etcd equal to the desired keys", deadline, || async {
        let want = desired_now(client).await.ok()?;
        let (have, leases, _) = etcd_state(endpoint).await.ok()?;
        (have == want && !want.is_empty() && leases.len() == 1 && leases[0] != 0).then_some(have)
    })
    .await;
    match res {
        Ok(keys) => Ok(keys),
        Err(e) => {
            let want = desired_now(client).await?;
            let (have, leases, _) = etcd_state(endpoint).await?;
            let missing: Vec<_> = want.keys().filter(|k| !have.contains_key(*k)).collect();
            let extra: Vec<_> = have.keys().filter(|k| !want.contains_key(*k)).collect();
            anyhow::bail!("{e}: missing {missing:?}, extra {extra:?}, leases {leases:?}")
        }
    }
}

async fn run() -> Result<()> {
    let cfg = Config::from_env();
    println!(
        "soak: {} s of churn (seed {}), warm-up {} s, a sample every {} s, etcd restarted every {} s, lease revoked at {} s; load {}",
        cfg.duration.as_secs(),
        cfg.seed,
        cfg.warm_up.as_secs(),
        cfg.sample_every.as_secs(),
        cfg.restart_every.as_secs(),
        cfg.revoke_at.as_secs(),
        report::load()
    );
    // The samples and the operator's log go next to the report.
    let report_path = report::out_path("soak.md");
    let log = report_path.with_file_name("soak-operator.log");
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&log);
    let setup = Instant::now();
    let w = World::start(&log).await.context("setting up")?;
    let World {
        cluster,
        etcd,
        client,
        mut operator,
        regs,
    } = w;
    let endpoint = etcd.endpoint();
    let model = model::start(client.clone(), regs);
    // The initial state: etcd equal to what the model (and the API server) want.
    converged(&client, &endpoint, Duration::from_secs(60)).await?;
    poll(
        "the model on etcd's keys",
        Duration::from_secs(30),
        || async {
            let (have, _, _) = etcd_state(&endpoint).await.ok()?;
            let m = model.lock().ok()?.desired.clone();
            (m == have).then_some(())
        },
    )
    .await?;
    let (known, _, r0) = etcd_state(&endpoint).await?;
    if let Ok(mut m) = model.lock() {
        m.counting = true;
    }
    println!(
        "soak: setup took {:.1} s; {} keys at revision {r0}",
        setup.elapsed().as_secs_f64(),
        known.len()
    );
    let known = known
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    // Every key event after r0 (etcd keeps its data through the restarts: none is lost), and
    // whether a put rewrote the value its key had.
    let rec = Recorder::start(
        endpoint.clone(),
        PREFIX.to_string(),
        RecordOptions {
            after: r0,
            noop_puts: Some(known),
        },
    );

    let start = Instant::now();
    let load_start = report::load();
    let mut samples = vec![sample::take(&operator, &endpoint, 0.0).await];
    let stop = Arc::new(AtomicBool::new(false));
    let churn = tokio::spawn(churn::run(client.clone(), cfg.seed, stop.clone()));
    let mut faulting = tokio::spawn(faults::run(etcd, cfg, start, stop.clone()));
    // The fault task's result once it has ended (after its last fault, or on an error).
    let mut faulted = None;
    let mut tick = tokio::time::interval_at(start + cfg.sample_every, cfg.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failure = None;
    while start.elapsed() < cfg.duration {
        tick.tick().await;
        if let Err(e) = operator.check_alive() {
            failure = Some(e);
            break;
        }
        let s = sample::take(&operator, &endpoint, start.elapsed().as_secs_f64()).await;
        println!("soak: {}", render::sample_line(&s));
        samples.push(s);
        if faulted.is_none() && faulting.is_finished() {
            let ended = (&mut faulting).await?;
            // A fault that failed (etcd did not come back) ends the soak.
            let failed = ended.2.is_some();
            faulted = Some(ended);
            if failed {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let churn_s = start.elapsed().as_secs_f64();
    let counts = churn.await?;
    let (etcd, faults, fault_error) = match faulted {
        Some(ended) => ended,
        None => faulting.await?,
    };
    if let Some(e) = failure.or(fault_error) {
        return Err(e.context(format!(
            "soak stopped at {:.0} s; operator log tail:\n{}",
            start.elapsed().as_secs_f64(),
            operator.log_tail(30)
        )));
    }
    let load_end = report::load();

    // Quiet: etcd must end up equal to the desired keys, on one lease.
    let quiet = Instant::now();
    let final_keys = converged(&client, &endpoint, Duration::from_secs(60)).await;
    let settle_s = quiet.elapsed().as_secs_f64();
    // Let the watches deliver the last events before reading them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = sample::take(&operator, &endpoint, start.elapsed().as_secs_f64()).await;
    samples.push(last);
    let model_now = model.lock().map(|m| m.clone()).unwrap_or_default();
    let recording = rec.recording();
    let (_, _, r_end) = etcd_state(&endpoint).await?;
    let outcome = Outcome {
        cfg,
        churn_s,
        settle_s,
        load_start,
        load_end,
        counts,
        faults,
        samples,
        model: model_now,
        recording,
        r0,
        r_end,
        final_keys: final_keys
            .as_ref()
            .map(|k| k.len())
            .map_err(|e| format!("{e:#}")),
    };
    let markdown = render::markdown(&outcome);
    println!("\n{markdown}");
    let path = report::write("soak.md", &markdown)?;
    let csv = report_path.with_file_name("soak-samples.csv");
    std::fs::write(&csv, render::csv(&outcome.samples))
        .with_context(|| format!("writing {}", csv.display()))?;
    println!("written to {} and {}", path.display(), csv.display());
    operator.terminate(Duration::from_secs(10)).await?;
    drop(etcd);
    drop(cluster);
    let problems = render::problems(&outcome);
    anyhow::ensure!(problems.is_empty(), "soak failed: {}", problems.join("; "));
    Ok(())
}
