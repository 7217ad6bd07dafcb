//! The Go example module (`examples/go` at the repository root), built and run as a user would
//! run it, against real etcd:
//!
//! - its client (etcd's `naming/resolver`, `round_robin`, an explicit authority) balances over
//!   its own servers (registered with `endpoints.Manager`) and a Rust tonic server registered
//!   with [`Registration`] (which needs the authority setting);
//! - the trailing-slash trap its docs warn about: dialing `etcd:///<target>/` resolves nothing
//!   and every call waits until its deadline (`DeadlineExceeded`), while the same target without
//!   the slash works — so the advice in the README and the example stays true;
//! - its server drains on SIGTERM: deregistered from etcd, then stopped.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::*;
use registrar_resolver::Registration;
use registrar_testenv::{Etcd, Process, greeter};

fn example_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/go")
}

/// Builds (once per source version) and returns the Go example binary.
fn example_binary() -> Result<PathBuf> {
    registrar_testenv::go_build(
        &example_source(),
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "greeter-example",
    )
}

/// The example client's last line.
#[derive(Debug, serde::Deserialize)]
struct Summary {
    ok: u64,
    failed: u64,
    backends: BTreeMap<String, u64>,
    codes: BTreeMap<String, u64>,
}

/// What one run of the example client did.
struct ClientRun {
    summary: Summary,
    success: bool,
    stderr: String,
    elapsed: Duration,
}

/// Runs the example client to completion.
async fn run_client(etcd: &Etcd, target: &str, n: u32, timeout: &str) -> Result<ClientRun> {
    let bin = example_binary()?;
    let start = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(&bin)
            .args(["client", "-etcd", &etcd.endpoint(), "-target", target])
            .args(["-n", &n.to_string(), "-every", "20ms", "-timeout", timeout])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the example client timed out")??;
    let elapsed = start.elapsed();
    let stdout = String::from_utf8(out.stdout)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = stdout
        .lines()
        .last()
        .with_context(|| format!("no output; stderr: {stderr}"))?;
    let summary = serde_json::from_str(last)
        .with_context(|| format!("summary line {last:?}; stderr: {stderr}"))?;
    Ok(ClientRun {
        summary,
        success: out.status.success(),
        stderr,
        elapsed,
    })
}

/// An example server registered under `target`; killed on drop.
struct ExampleServer {
    process: Process,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

async fn example_server(etcd: &Etcd, target: &str, ip: u8, name: &str) -> Result<ExampleServer> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("server.log");
    let mut cmd = Command::new(example_binary()?);
    cmd.args(["server", "-etcd", &etcd.endpoint(), "-target", target])
        .args(["-addr", &format!("127.0.0.{ip}:0"), "-name", name])
        .args(["-drain", "300ms"]);
    let process = Process::spawn(&format!("go-example-{name}"), cmd, &log)?;
    let addr = go_ready_addr(&log, &format!("Go example server {name}")).await?;
    Ok(ExampleServer {
        process,
        addr,
        log,
        _dir: dir,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_example_client_and_server() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let t = target("go-example");
    let mut go = vec![
        example_server(&etcd, &t, 86, "go-a").await?,
        example_server(&etcd, &t, 87, "go-b").await?,
    ];
    // A tonic server too: the Go client reaches it only thanks to its authority setting.
    let rust = greeter::serve(loopback(88), "rust".into()).await;
    let registration = Registration::builder(etcd.client().await?, &t, rust.addr().to_string())
        .ttl(Duration::from_secs(10))
        .register()
        .await?;

    // The target as documented: every call answered, by every backend.
    let run = run_client(&etcd, &t, 30, "5s").await?;
    println!(
        "etcd:///{t}: {} ok, {} failed in {:?}, spread {:?}",
        run.summary.ok, run.summary.failed, run.elapsed, run.summary.backends
    );
    assert!(run.success, "{}", run.stderr);
    assert_eq!((run.summary.ok, run.summary.failed), (30, 0));
    assert_eq!(
        run.summary.backends.keys().collect::<Vec<_>>(),
        ["go-a", "go-b", "rust"],
        "{:?}",
        run.summary.backends
    );
    assert!(rust.served() > 0);

    // The trailing-slash trap: same etcd, same backends, nothing resolves; each call waits
    // for its whole deadline. The example warns on stderr; grpc-go itself says nothing.
    let slashed = format!("{t}/");
    let run = run_client(&etcd, &slashed, 3, "1s").await?;
    println!(
        "etcd:///{slashed}: {} ok, {} failed in {:?}, codes {:?}",
        run.summary.ok, run.summary.failed, run.elapsed, run.summary.codes
    );
    assert!(
        !run.success,
        "the client reported success with a trailing slash"
    );
    assert_eq!(run.summary.ok, 0, "{:?}", run.summary.backends);
    assert_eq!(
        run.summary.codes,
        BTreeMap::from([("DeadlineExceeded".to_string(), 3)]),
    );
    // Three calls, each waiting out its 1 s deadline (generous lower bound).
    assert!(
        run.elapsed >= Duration::from_millis(2900),
        "{:?}",
        run.elapsed
    );
    assert!(run.stderr.contains("drop the slash"), "{}", run.stderr);

    // The example server drains on SIGTERM: out of etcd, then stopped.
    let stopped = go.remove(1);
    let (addr, log) = (stopped.addr.clone(), stopped.log.clone());
    let mut process = stopped.process;
    let started = Instant::now();
    tokio::task::spawn_blocking(move || process.terminate(Duration::from_secs(10))).await?;
    let text = std::fs::read_to_string(&log)?;
    println!("SIGTERM to go-b: exited after {:?}", started.elapsed());
    let (Some(draining), Some(done)) = (
        text.find(&format!("DRAINING {addr}")),
        text.find(&format!("STOPPED {addr}")),
    ) else {
        bail!("go-b did not drain and stop:\n{text}");
    };
    assert!(draining < done, "{text}");
    let mut kv = etcd.client().await?;
    let left = kv.get(format!("{t}/{addr}"), None).await?;
    assert!(left.kvs().is_empty(), "go-b still registered");

    let run = run_client(&etcd, &t, 20, "5s").await?;
    println!(
        "after go-b drained: {} ok, {} failed, spread {:?}",
        run.summary.ok, run.summary.failed, run.summary.backends
    );
    assert!(run.success, "{}", run.stderr);
    assert_eq!(
        run.summary.backends.keys().collect::<Vec<_>>(),
        ["go-a", "rust"]
    );
    registration.deregister().await?;
    Ok(())
}
