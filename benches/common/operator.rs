//! The `registrar` binary under benchmark: started with a kubeconfig, an etcd endpoint and a
//! prefix on a free loopback admin port, polled for `/readyz`, read for `/metrics` and for its
//! memory in `/proc`, stopped with SIGTERM.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use registrar_testenv::{Etcd, Process, free_port, poll};

/// The cluster id every benchmark passes (`--cluster-id`), so nothing reads kube-system.
pub const CLUSTER_ID: &str = "bench";

/// A running `registrar run`. Dropping it kills the process.
pub struct Operator {
    process: Process,
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
    /// Starts the release binary with `RUST_LOG=info`, logging to `log` (appended).
    pub fn spawn(kubeconfig: &Path, etcd: &Etcd, prefix: &str, log: &Path) -> Result<Operator> {
        let admin = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_registrar"));
        cmd.arg("run")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--etcd-endpoints")
            .arg(etcd.endpoint())
            .arg("--prefix")
            .arg(prefix)
            .arg("--cluster-id")
            .arg(CLUSTER_ID)
            .arg("--admin-addr")
            .arg(&admin)
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG");
        let process = Process::spawn("registrar", cmd, log)?;
        Ok(Operator { process, admin })
    }

    /// Whether `/readyz` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        matches!(http_get(&self.admin, "/readyz").await, Ok((200, _)))
    }

    /// Waits until `/readyz` answers 200; fails with the log tail after `deadline` or when the
    /// process exits.
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<()> {
        let admin = self.admin.clone();
        let ready = poll("registrar /readyz", deadline, || {
            let admin = admin.clone();
            async move { matches!(http_get(&admin, "/readyz").await, Ok((200, _))).then_some(()) }
        })
        .await;
        if let Err(e) = ready {
            self.check_alive()?;
            anyhow::bail!("{e}; registrar log:\n{}", self.log_tail(30));
        }
        Ok(())
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let (code, body) = http_get(&self.admin, "/metrics").await?;
        anyhow::ensure!(code == 200, "/metrics answered {code}");
        Ok(body)
    }

    /// Fails (with the log tail) when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.process.check_alive()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        self.process.log_tail(n)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
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
        let mut process = self.process;
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

/// A minimal HTTP/1.0 GET on loopback: (status, body).
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The value of the sample `series` (e.g. `registrar_etcd_txns_total{result="ok"}`) in a
/// Prometheus text exposition, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .find_map(|rest| rest.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
