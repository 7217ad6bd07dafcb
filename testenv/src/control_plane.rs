//! etcd + a real kube-apiserver (TLS, admin client certificate in `system:masters`, RBAC,
//! service-account keys) on random loopback ports, with the project's CRDs installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tempfile::TempDir;

use crate::etcd::Etcd;
use crate::pki::Pki;
use crate::process::{Process, free_port};
use crate::tools::{tool, workspace_root};

/// A kube-apiserver backed by its own etcd (see the module docs).
pub struct ControlPlane {
    apiserver: Option<Process>,
    etcd: Etcd,
    port: u16,
    pki: Pki,
    kubeconfig: PathBuf,
    sa_key: (PathBuf, PathBuf),
    dir: TempDir,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver, waits for `/readyz`, installs every CRD in `crds/`.
    pub async fn start() -> Result<ControlPlane> {
        let dir = tempfile::Builder::new()
            .prefix("registrar-kube-")
            .tempdir()?;
        let etcd = Etcd::start().await?;
        let pki = Pki::new(&dir.path().join("pki"))?;
        let sa_key = pki.service_account_key()?;
        let port = free_port()?;
        let admin = pki.client("admin", &["system:masters"])?;
        let kubeconfig = dir.path().join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, port, &pki.ca, &admin.cert, &admin.key, "admin")?;
        let mut cp = ControlPlane {
            apiserver: None,
            etcd,
            port,
            pki,
            kubeconfig,
            sa_key,
            dir,
        };
        cp.launch_apiserver().await?;
        cp.install_crds().await?;
        Ok(cp)
    }

    async fn launch_apiserver(&mut self) -> Result<()> {
        let serving = self.pki.serving("kube-apiserver")?;
        let mut cmd = Command::new(tool("kube-apiserver")?);
        cmd.arg(format!("--etcd-servers={}", self.etcd.endpoint()))
            .arg(format!(
                "--cert-dir={}",
                self.dir.path().join("cert").display()
            ))
            .arg(format!("--tls-cert-file={}", serving.cert.display()))
            .arg(format!("--tls-private-key-file={}", serving.key.display()))
            .arg(format!("--client-ca-file={}", self.pki.ca.display()))
            .arg(format!("--secure-port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            // Allocation only: nothing ever connects to a Service IP here (TEST-NET-2).
            .arg("--service-cluster-ip-range=198.51.100.0/24")
            .arg("--endpoint-reconciler-type=none")
            .arg("--authorization-mode=RBAC")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--allow-privileged=true")
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!(
                "--service-account-key-file={}",
                self.sa_key.1.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                self.sa_key.0.display()
            ))
            .arg("--v=1");
        let log = self.dir.path().join("kube-apiserver.log");
        let process = Process::spawn("kube-apiserver", cmd, &log)?;
        self.apiserver = Some(process);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(p) = self.apiserver.as_mut() {
                p.check_alive()?;
            }
            if let Ok(client) = self.client().await {
                let req = http::Request::get("/readyz").body(Vec::new())?;
                let ready =
                    tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await;
                if matches!(ready, Ok(Ok(ref body)) if body.trim() == "ok") {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                let tail = self
                    .apiserver
                    .as_ref()
                    .map(|p| p.log_tail(40))
                    .unwrap_or_default();
                anyhow::bail!("kube-apiserver not ready within 90 s; log tail:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn install_crds(&self) -> Result<()> {
        let client = self.client().await?;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        let dir = workspace_root().join("crds");
        let mut names = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        entries.sort();
        for path in entries {
            let text = std::fs::read_to_string(&path)?;
            let crd: CustomResourceDefinition = serde_yaml::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            api.create(&PostParams::default(), &crd)
                .await
                .with_context(|| format!("creating CRD from {}", path.display()))?;
            names.push(crd.metadata.name.unwrap_or_default());
        }
        for name in names {
            crate::poll(
                &format!("CRD {name} established"),
                Duration::from_secs(30),
                || {
                    let api = api.clone();
                    let name = name.clone();
                    async move {
                        let crd = api.get(&name).await.ok()?;
                        let established = crd
                            .status?
                            .conditions?
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True");
                        established.then_some(())
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    /// A new client for the admin user (cheap; make one per tokio runtime).
    pub async fn client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// The admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Writes a kubeconfig for `user` in `groups` (client certificate auth) and returns its path:
    /// an identity that RBAC judges like any other.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let certs = self.pki.client(user, groups)?;
        let file: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = self.dir.path().join(format!("{file}.kubeconfig"));
        write_kubeconfig(
            &path,
            self.port,
            &self.pki.ca,
            &certs.cert,
            &certs.key,
            user,
        )?;
        Ok(path)
    }

    /// The etcd that stores this API server's data (not for Registrar's own keys).
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The API server URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The test CA (for issuing more identities).
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The service-account signing key pair (private, public) — for kube-controller-manager.
    pub fn service_account_key(&self) -> &(PathBuf, PathBuf) {
        &self.sa_key
    }

    /// Temp dir of this control plane (logs, certificates, kubeconfigs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills kube-apiserver and starts it again on the same port (its etcd keeps running).
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        if let Some(mut p) = self.apiserver.take() {
            tokio::task::spawn_blocking(move || p.kill()).await?;
        }
        self.launch_apiserver().await
    }

    /// Process ids of every component (to check that none survives).
    pub fn pids(&self) -> Vec<u32> {
        self.apiserver
            .iter()
            .map(Process::pid)
            .chain(self.etcd.pid())
            .collect()
    }
}

/// Builds a client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn write_kubeconfig(
    path: &Path,
    port: u16,
    ca: &Path,
    cert: &Path,
    key: &Path,
    user: &str,
) -> Result<()> {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: test
  context:
    cluster: test
    user: {user}
    namespace: default
current-context: test
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
