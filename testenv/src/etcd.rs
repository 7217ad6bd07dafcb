//! A real etcd on random free loopback ports with a temporary data dir, optionally with
//! client-certificate TLS. Killed on drop; can be stopped (killed or terminated), restarted and
//! wiped by tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tempfile::TempDir;

use crate::pki::{CertFiles, Pki};
use crate::process::{Process, free_port};
use crate::tools::tool;

/// TLS material of an etcd started with [`EtcdOptions::tls`].
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A client certificate whose CN is `root`.
    pub root_client: CertFiles,
}

/// How to start etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Serve clients over TLS and require client certificates signed by the test CA.
    pub tls: bool,
}

/// A real etcd process (see the module docs).
pub struct Etcd {
    // Dropped first: the process dies before its data dir is removed.
    process: Option<Process>,
    port: u16,
    peer_port: u16,
    tls: Option<(Pki, EtcdTls, CertFiles)>,
    dir: TempDir,
}

impl Etcd {
    /// Starts a plain-text etcd.
    pub async fn start() -> Result<Etcd> {
        Self::start_with(EtcdOptions::default()).await
    }

    /// Starts etcd with `options`.
    pub async fn start_with(options: EtcdOptions) -> Result<Etcd> {
        let dir = tempfile::Builder::new()
            .prefix("registrar-etcd-")
            .tempdir()?;
        let tls = if options.tls {
            let pki = Pki::new(&dir.path().join("pki"))?;
            let server = pki.serving("etcd-server")?;
            let root_client = pki.client("root", &[])?;
            let tls = EtcdTls {
                ca: pki.ca.clone(),
                root_client,
            };
            Some((pki, tls, server))
        } else {
            None
        };
        let mut etcd = Etcd {
            process: None,
            port: free_port()?,
            peer_port: free_port()?,
            tls,
            dir,
        };
        // A free port is only free until someone else binds it: tests of other binaries pick
        // ports at the same time. On a clash, pick new ones (a few times) instead of failing.
        let mut attempts = 0;
        loop {
            match etcd.launch().await {
                Ok(()) => return Ok(etcd),
                Err(e) if attempts < 3 && format!("{e:#}").contains("address already in use") => {
                    attempts += 1;
                    etcd.process = None;
                    etcd.port = free_port()?;
                    etcd.peer_port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn launch(&mut self) -> Result<()> {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(tool("etcd")?);
        cmd.arg("--name=default")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        if let Some((pki, _, server)) = &self.tls {
            cmd.arg(format!("--cert-file={}", server.cert.display()))
                .arg(format!("--key-file={}", server.key.display()))
                .arg(format!("--trusted-ca-file={}", pki.ca.display()))
                .arg("--client-cert-auth=true");
        }
        let log = self.dir.path().join("etcd.log");
        self.process = Some(Process::spawn("etcd", cmd, &log)?);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(p) = self.process.as_mut() {
                p.check_alive()?;
            }
            let ready = async {
                let mut c = self.connect().await?;
                c.status().await.map_err(anyhow::Error::from)
            };
            match tokio::time::timeout(Duration::from_secs(2), ready).await {
                Ok(Ok(_)) => return Ok(()),
                _ if tokio::time::Instant::now() > deadline => {
                    let tail = self
                        .process
                        .as_ref()
                        .map(|p| p.log_tail(40))
                        .unwrap_or_default();
                    anyhow::bail!("etcd did not become ready within 30 s; log tail:\n{tail}");
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The client URL, `http://127.0.0.1:PORT` (or `https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// TLS material when started with TLS.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref().map(|(_, t, _)| t)
    }

    /// The test CA (TLS mode), to issue more client certificates.
    pub fn pki(&self) -> Option<&Pki> {
        self.tls.as_ref().map(|(p, _, _)| p)
    }

    /// Connect options for this etcd (TLS identity of `root` in TLS mode).
    pub fn connect_options(&self) -> Result<Option<ConnectOptions>> {
        let Some(tls) = self.tls() else {
            return Ok(None);
        };
        let ca = std::fs::read(&tls.ca)?;
        let cert = std::fs::read(&tls.root_client.cert)?;
        let key = std::fs::read(&tls.root_client.key)?;
        Ok(Some(
            ConnectOptions::new().with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .identity(Identity::from_pem(cert, key))
                    .domain_name("localhost"),
            ),
        ))
    }

    async fn connect(&self) -> Result<Client> {
        Client::connect([self.endpoint()], self.connect_options()?)
            .await
            .context("connecting to etcd")
    }

    /// A connected client.
    pub async fn client(&self) -> Result<Client> {
        self.connect().await
    }

    /// Kills etcd (SIGKILL), keeping its data dir and ports.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            tokio::task::spawn_blocking(move || p.kill()).await?;
        }
        Ok(())
    }

    /// Stops etcd cleanly (SIGTERM, killed after `grace`), keeping its data dir and ports.
    pub async fn terminate(&mut self, grace: Duration) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            tokio::task::spawn_blocking(move || p.terminate(grace)).await?;
        }
        Ok(())
    }

    /// Starts etcd again on the same ports and data dir.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }

    /// Stops etcd, deletes its data and starts a fresh, empty etcd on the same ports.
    pub async fn wipe(&mut self) -> Result<()> {
        self.stop().await?;
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        self.launch().await
    }

    /// Saves a snapshot of etcd's data to `path` (`etcdctl snapshot save`).
    pub async fn snapshot_save(&self, path: &Path) -> Result<()> {
        let mut cmd = tokio::process::Command::new(tool("etcdctl")?);
        cmd.arg(format!("--endpoints={}", self.endpoint()));
        if let Some((pki, _, server)) = &self.tls {
            cmd.arg(format!("--cacert={}", pki.ca.display()))
                .arg(format!("--cert={}", server.cert.display()))
                .arg(format!("--key={}", server.key.display()));
        }
        let out = cmd.arg("snapshot").arg("save").arg(path).output().await?;
        anyhow::ensure!(
            out.status.success(),
            "etcdctl snapshot save failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Stops etcd, replaces its data with the snapshot at `path` (`etcdutl snapshot restore`,
    /// keeping the snapshot's revision, as a disaster recovery from an older backup does) and
    /// starts it again.
    pub async fn restore_snapshot(&mut self, path: &Path) -> Result<()> {
        self.stop().await?;
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let out = tokio::process::Command::new(tool("etcdutl")?)
            .arg("snapshot")
            .arg("restore")
            .arg(path)
            .arg(format!("--data-dir={}", data.display()))
            .arg("--name=default")
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "etcdutl snapshot restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.launch().await
    }

    /// Whether the etcd process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// The temp dir holding data, logs and certificates.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
