//! In-process benchmark of one flush of the operator's index after a single pod change, at the
//! scale bench's layouts (default 10,000 pods in 1,000 registrations and 100,000 in 10,000; 10
//! namespaces): a pod flips readiness, the index recomputes the registrations it marked, and the
//! desired state the writer gets is derived. Two derivations are timed on the same index, flip
//! by flip, alternately:
//! - incremental (what the operator does): the index's persistent key map, updated per changed
//!   target, cloned in O(1), and the per-target count changes it reports;
//! - rebuild (the previous code, kept as the pure reference): `desired::desired_keys` over every
//!   outcome, collected into the persistent map, and `desired::endpoints_per_target` over every
//!   key and target.
//!
//! Run with `cargo bench --bench flush`; `REGISTRAR_BENCH_FLUSH` takes a comma-separated list
//! of `PODSxREGISTRATIONS`, `REGISTRAR_BENCH_FLUSH_FLIPS` the flips per size (default 400).
//! No network: everything is in memory. Under `cargo test --benches` it does nothing.

// The harness also parses numeric env knobs, which this bench does not take.
#[allow(dead_code)]
#[path = "common/harness.rs"]
mod harness;
// The scale bench's layout: names, namespaces and addresses.
#[allow(dead_code)]
#[path = "scale/layout.rs"]
mod layout;

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use registrar::crd::ServiceRegistration;
use registrar::desired;
use registrar::etcd::DesiredKeys;
use registrar::index::Index;
use serde_json::json;

use crate::layout::Size;

const PREFIX: &str = "registrar";

fn main() -> std::process::ExitCode {
    harness::main("flush", run)
}

fn registration(size: Size, r: usize) -> Result<ServiceRegistration> {
    let name = layout::registration(r);
    Ok(serde_json::from_value(json!({
        "apiVersion": "registrar.dev/v1alpha1", "kind": "ServiceRegistration",
        "metadata": {"name": name, "namespace": layout::namespace(size, r),
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"selector": {"matchLabels": {"app": name}}, "port": "grpc"},
    }))?)
}

fn pod(size: Size, p: layout::Pod, ready: bool) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": p.name(), "namespace": layout::namespace(size, p.registration),
                     "labels": {"app": layout::registration(p.registration)}},
        "spec": {"nodeName": "n1", "containers": [{"name": "app",
                 "ports": [{"name": "grpc", "containerPort": layout::PORT}]}]},
        "status": {"phase": "Running", "podIP": p.ip(),
                   "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }))?)
}

/// The previous flush's derivation of the desired state: everything rebuilt from all outcomes.
fn rebuild(index: &Index) -> (DesiredKeys, usize) {
    let keys = desired::desired_keys(PREFIX, index.outcomes());
    let counts = desired::endpoints_per_target(PREFIX, keys.keys(), index.targets());
    let registrations = index.registrations().count();
    (keys.into_iter().collect(), counts.len() + registrations)
}

/// The operator's derivation: the index's map (an O(1) clone) and the count changes.
fn incremental(index: &Index, targets: usize) -> (DesiredKeys, usize) {
    (index.keys().clone(), targets + index.registration_count())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn line(name: &str, mut times: Vec<Duration>) -> String {
    times.sort();
    let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap_or(1);
    format!(
        "{name}: mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs per flush ({} flips)",
        mean.as_secs_f64() * 1e6,
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
        times.len()
    )
}

async fn run() -> Result<()> {
    let sizes = Size::parse_list(
        &std::env::var("REGISTRAR_BENCH_FLUSH")
            .unwrap_or_else(|_| "10000x1000,100000x10000".into()),
    )?;
    let flips: usize = std::env::var("REGISTRAR_BENCH_FLUSH_FLIPS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(400);
    for size in sizes {
        let setup = Instant::now();
        let mut index = Index::new(PREFIX);
        index.apply_registration(Event::Init);
        for r in 0..size.registrations {
            index.apply_registration(Event::InitApply(registration(size, r)?));
        }
        index.apply_registration(Event::InitDone);
        index.apply_pod(Event::Init);
        for p in size.pods() {
            index.apply_pod(Event::InitApply(pod(size, p, true)?));
        }
        index.apply_pod(Event::InitDone);
        index.flush();
        anyhow::ensure!(
            index.keys().len() == size.pods,
            "not every pod is published"
        );
        println!(
            "[flush] {} pods in {} registrations: set up in {:.1} s",
            size.pods,
            size.registrations,
            setup.elapsed().as_secs_f64()
        );
        let all: Vec<layout::Pod> = size.pods().collect();
        let mut times = [Vec::new(), Vec::new()];
        let mut checksum = 0usize;
        for n in 0..flips {
            // A fixed stride over the pods; every other flip puts the pod back.
            let p = all[(n / 2 * 7919) % all.len()];
            let event = Event::Apply(pod(size, p, n % 2 == 1)?);
            let started = Instant::now();
            index.apply_pod(event);
            let flushed = index.flush();
            let (keys, extra) = if n % 4 < 2 {
                incremental(&index, flushed.targets.len())
            } else {
                rebuild(&index)
            };
            times[usize::from(n % 4 >= 2)].push(started.elapsed());
            checksum = checksum.wrapping_add(keys.len() + extra);
        }
        println!(
            "[flush]   {}",
            line("incremental", std::mem::take(&mut times[0]))
        );
        println!(
            "[flush]   {}",
            line("rebuild    ", std::mem::take(&mut times[1]))
        );
        println!("[flush]   (checksum {checksum})");
    }
    Ok(())
}
