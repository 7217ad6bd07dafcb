//! The grpc-go round_robin client: the Go module in `tests/interop`, built with the machine's
//! Go (`GOTOOLCHAIN=local`, `$GO` or `go` on `PATH`) into the same cached place as the interop
//! tests' build (keyed by a hash of its sources), and run in its `bench` mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::load::{Limits, Measured};

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// FNV-1a over the module's sources (the same key as `tests/go_interop.rs` uses).
fn source_hash(dir: &Path) -> Result<u64> {
    let mut hash = 0xcbf29ce484222325u64;
    for name in ["go.mod", "go.sum", "main.go"] {
        let bytes = std::fs::read(dir.join(name)).with_context(|| format!("reading {name}"))?;
        for b in name.bytes().chain(bytes) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    Ok(hash)
}

/// The built interop binary, building it if its sources changed.
pub fn binary() -> Result<PathBuf> {
    let src = source_dir();
    let hash = source_hash(&src)?;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("go-interop-{hash:016x}"));
    let bin = dir.join("interop");
    if bin.is_file() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!("interop.{}", std::process::id()));
    let go = std::env::var("GO").unwrap_or_else(|_| "go".into());
    let out = Command::new(&go)
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(".")
        .current_dir(&src)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly")
        .output()
        .with_context(|| format!("running {go} (set $GO to the Go binary)"))?;
    if !out.status.success() {
        bail!("go build failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::rename(&tmp, &bin).with_context(|| format!("installing {}", bin.display()))?;
    Ok(bin)
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
