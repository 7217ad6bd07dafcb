//! The `registrar` operator binary as a real process under test: `registrar run` with an admin
//! server on a free loopback port, waited for through `/readyz` and read through `/metrics`.
//! The binary's path comes from the caller (`env!("CARGO_BIN_EXE_registrar")` in the root
//! crate's tests and benchmarks).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::{Process, free_port};
use crate::{http_get, poll, prometheus};

/// A running `registrar run`; killed when dropped.
pub struct OperatorProcess {
    /// The process.
    pub process: Process,
    /// The admin address (`127.0.0.1:<port>`: `/healthz`, `/readyz`, `/metrics`).
    pub admin: String,
}

impl OperatorProcess {
    /// Starts `bin run <args> --admin-addr <free loopback port>` with `RUST_LOG=rust_log` and
    /// without `KUBECONFIG`, then the variables `env`; its output goes to `log`.
    pub fn spawn<A: AsRef<OsStr>>(
        bin: &Path,
        args: impl IntoIterator<Item = A>,
        env: &[(String, String)],
        rust_log: &str,
        log: &Path,
    ) -> Result<OperatorProcess> {
        let admin = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .args(args)
            .arg("--admin-addr")
            .arg(&admin)
            .env("RUST_LOG", rust_log)
            .env_remove("KUBECONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = Process::spawn("registrar", cmd, log)?;
        Ok(OperatorProcess { process, admin })
    }

    /// Whether `/readyz` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        matches!(http_get(&self.admin, "/readyz").await, Ok((200, _)))
    }

    /// Waits until `/readyz` answers 200; fails with the log tail after `deadline` or when the
    /// process has exited.
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<()> {
        let ready = poll("registrar /readyz", deadline, || async {
            self.is_ready().await.then_some(())
        })
        .await;
        if let Err(e) = ready {
            self.process.check_alive()?;
            anyhow::bail!("{e}; registrar log tail:\n{}", self.process.log_tail(40));
        }
        Ok(())
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let (code, body) = http_get(&self.admin, "/metrics").await?;
        anyhow::ensure!(code == 200, "/metrics answered {code}");
        Ok(body)
    }

    /// The current value of one metric sample (see [`prometheus::sample`]).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        prometheus::sample(&self.metrics().await.ok()?, series)
    }

    /// Waits until the metric sample satisfies `ok`; returns its value. Fails after `deadline`
    /// with the value seen last.
    pub async fn wait_metric(
        &self,
        series: &str,
        deadline: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        let res = poll(&format!("metric {series}"), deadline, || async {
            self.metric(series).await.filter(|v| ok(*v))
        })
        .await;
        match res {
            Ok(v) => Ok(v),
            Err(e) => anyhow::bail!("{e}; now: {:?}", self.metric(series).await),
        }
    }
}
