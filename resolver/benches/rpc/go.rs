//! The grpc-go round_robin client: the Go module in `tests/interop`, built with the machine's
//! Go (`GOTOOLCHAIN=local`, `$GO` or `go` on `PATH`) by the test ground's `go_build`, into the
//! same cached place as the interop tests' build, and run in its `bench` mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::load::{Limits, Measured};

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// The built interop binary (shared with the interop tests' build), building it if its
/// sources changed.
pub fn binary() -> Result<PathBuf> {
    registrar_testenv::go_build(
        &source_dir(),
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "interop",
    )
}

/// `interop bench` output.
#[derive(Deserialize)]
struct Output {
    requests: u64,
    errors: u64,
    elapsed_ns: u64,
    p50_ns: u64,
    p99_ns: u64,
    backends: BTreeMap<String, u64>,
}

/// Runs the grpc-go client (etcd resolver, round_robin) against `target` once all `expect`
/// backends answered, under the same limits as the Rust clients.
pub async fn measure(
    bin: &Path,
    etcd: &str,
    target: &str,
    expect: usize,
    limits: Limits,
) -> Result<Measured> {
    let args = [
        "bench".to_string(),
        format!("-etcd={etcd}"),
        format!("-target={target}"),
        // tonic servers reject grpc-go's default :authority (the target path).
        "-authority=greeter".into(),
        format!("-expect={expect}"),
        format!("-concurrency={}", limits.concurrency),
        format!("-warmup={}ms", limits.warmup.as_millis()),
        format!("-duration={}ms", limits.duration.as_millis()),
        format!("-max={}", limits.max_requests),
    ];
    let bound = limits.warmup + limits.duration + Duration::from_secs(60);
    let out = tokio::time::timeout(
        bound,
        tokio::process::Command::new(bin)
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("the grpc-go client did not finish within {bound:?}"))??;
    if !out.status.success() {
        bail!(
            "grpc-go client {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let o: Output = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "grpc-go client output: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok(Measured {
        requests: o.requests,
        errors: o.errors,
        elapsed: Duration::from_nanos(o.elapsed_ns),
        p50: Duration::from_nanos(o.p50_ns),
        p99: Duration::from_nanos(o.p99_ns),
        backends: o.backends,
    })
}
