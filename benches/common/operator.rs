//! The `registrar` binary under benchmark: started with a kubeconfig, an etcd endpoint and a
//! prefix on a free loopback admin port, polled for `/readyz`, read for `/metrics` and for its
//! memory in `/proc`, stopped with SIGTERM.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
// The test ground's helpers, for the benchmarks that read the admin endpoints themselves.
use registrar_testenv::{Etcd, OperatorProcess};
#[allow(unused_imports)]
pub use registrar_testenv::{http_get, prometheus::sample};

/// The cluster id every benchmark passes (`--cluster-id`), so nothing reads kube-system.
pub const CLUSTER_ID: &str = "bench";

/// A running `registrar run` (the test ground's [`OperatorProcess`]). Dropping it kills the
/// process.
pub struct Operator {
    op: OperatorProcess,
    /// The admin address (`/readyz`, `/metrics`).
    pub admin: String,
}

/// Memory of a process, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// Peak resident set size (`VmHWM`), KiB.
    pub peak_kib: u64,
    /// Current resident set size (`VmRSS`), KiB.
    pub rss_kib: u64,
}

impl Operator {
    /// Starts the release binary (or the one `REGISTRAR_BENCH_OPERATOR` names: e.g. a build
    /// of another commit, for a before/after in one session) with `RUST_LOG=info`, logging to
    /// `log` (appended).
    pub fn spawn(kubeconfig: &Path, etcd: &Etcd, prefix: &str, log: &Path) -> Result<Operator> {
        let endpoint = etcd.endpoint();
        let args: [&OsStr; 8] = [
            "--kubeconfig".as_ref(),
            kubeconfig.as_os_str(),
            "--etcd-endpoints".as_ref(),
            endpoint.as_ref(),
            "--prefix".as_ref(),
            prefix.as_ref(),
            "--cluster-id".as_ref(),
            CLUSTER_ID.as_ref(),
        ];
        let bin = std::env::var_os("REGISTRAR_BENCH_OPERATOR").map_or_else(
            || env!("CARGO_BIN_EXE_registrar").into(),
            std::path::PathBuf::from,
        );
        let op = OperatorProcess::spawn(&bin, args, &[], "info", log)?;
        let admin = op.admin.clone();
        Ok(Operator { op, admin })
    }

    /// Whether `/readyz` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        self.op.is_ready().await
    }

    /// Waits until `/readyz` answers 200; fails with the log tail after `deadline` or when the
    /// process exits.
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<()> {
        self.op.wait_ready(deadline).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        self.op.metrics().await
    }

    /// Fails (with the log tail) when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.op.process.check_alive()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        self.op.process.log_tail(n)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.op.process.pid()
    }

    /// Peak and current resident set size.
    pub fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Memory {
            peak_kib: field("VmHWM:")?,
            rss_kib: field("VmRSS:")?,
        })
    }

    /// Sends SIGTERM and waits up to `grace` for a clean exit (then kills it); returns how long
    /// the shutdown took.
    pub async fn terminate(self, grace: Duration) -> Result<Duration> {
        let mut process = self.op.process;
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || process.terminate(grace)).await?;
        Ok(started.elapsed())
    }
}

/// "kube-apiserver vX, etcd Y" (the versions under benchmark, for report headers).
pub async fn versions(client: &kube::Client, etcd: &Etcd) -> Result<(String, String)> {
    let kube = client.apiserver_version().await?.git_version;
    let mut etcd = etcd.client().await?;
    let status = etcd.status().await?;
    Ok((kube, status.version().to_string()))
}
