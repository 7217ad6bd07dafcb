//! The benchmark's world: a control plane, kube-controller-manager running only the
//! EndpointSlice controller (the peer), Registrar's own etcd and the `registrar` binary, plus a
//! Node that no kubelet simulator manages, so pod statuses change only when the bench patches
//! them.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use registrar_testenv::{ControlPlane, Etcd, Process, free_port, poll, tool};
use serde_json::json;

/// The Node every benchmark pod is bound to (no kwok: nothing else writes pod status).
pub const NODE: &str = "bench-node";

/// Registrar's etcd prefix in the benchmark.
pub const PREFIX: &str = "registrar";

/// Everything one benchmark run talks to. Dropping it kills every process (operator and
/// controller first, then the API server and the etcds) and removes the temp dirs.
pub struct World {
    operator: Process,
    kcm: Process,
    /// The operator's admin address (`/metrics`).
    pub admin: String,
    /// The Kubernetes control plane.
    pub cp: ControlPlane,
    /// Registrar's etcd (not the API server's).
    pub etcd: Etcd,
    /// An admin client.
    pub client: kube::Client,
    /// Versions of the components, for the report.
    pub versions: String,
    _dir: tempfile::TempDir,
}

impl World {
    /// Starts everything and waits until the operator is ready.
    pub async fn start() -> Result<World> {
        let (cp, etcd) = tokio::try_join!(ControlPlane::start(), Etcd::start())?;
        let client = cp.client().await?;
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &serde_json::from_value(node())?)
            .await
            .context("creating the bench Node")?;
        let kcm = spawn_endpointslice_controller(&cp)?;
        let dir = tempfile::Builder::new()
            .prefix("registrar-bench-")
            .tempdir()?;
        let admin = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_registrar"));
        cmd.arg("run")
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .arg("--etcd-endpoints")
            .arg(etcd.endpoint())
            .arg("--prefix")
            .arg(PREFIX)
            .arg("--cluster-id")
            .arg("bench")
            .arg("--admin-addr")
            .arg(&admin)
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG");
        let operator = Process::spawn("registrar", cmd, &dir.path().join("registrar.log"))?;
        let versions = versions(&client, &etcd).await?;
        let mut world = World {
            operator,
            kcm,
            admin,
            cp,
            etcd,
            client,
            versions,
            _dir: dir,
        };
        let admin = world.admin.clone();
        let ready = poll("registrar /readyz", Duration::from_secs(60), || {
            let admin = admin.clone();
            async move { (http_get(&admin, "/readyz").await.ok()?.0 == 200).then_some(()) }
        })
        .await;
        if let Err(e) = ready {
            world.check_alive()?;
            anyhow::bail!("{e}; registrar log:\n{}", world.operator.log_tail(30));
        }
        Ok(world)
    }

    /// Fails (with log tails) when the operator or the controller manager has died.
    pub fn check_alive(&mut self) -> Result<()> {
        self.operator.check_alive()?;
        self.kcm.check_alive()
    }

    /// The operator's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let (code, body) = http_get(&self.admin, "/metrics").await?;
        anyhow::ensure!(code == 200, "/metrics answered {code}");
        Ok(body)
    }
}

/// kube-controller-manager with only the EndpointSlice controller, at its default settings
/// (client QPS, sync concurrency, no update batching): the peer as clusters run it. Without the
/// node-lifecycle and pod-GC controllers nobody marks the bench's pods NotReady or deletes them.
fn spawn_endpointslice_controller(cp: &ControlPlane) -> Result<Process> {
    let mut kcm = Command::new(tool("kube-controller-manager")?);
    kcm.arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
        .arg("--leader-elect=false")
        .arg("--secure-port=0")
        .arg("--controllers=endpointslice")
        .arg("--use-service-account-credentials=false")
        .arg("--v=1");
    Process::spawn(
        "kube-controller-manager",
        kcm,
        &cp.dir().join("kube-controller-manager.log"),
    )
}

fn node() -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "spec": {},
    })
}

async fn versions(client: &kube::Client, etcd: &Etcd) -> Result<String> {
    let kube = client.apiserver_version().await?.git_version;
    let mut etcd = etcd.client().await?;
    let status = etcd.status().await?;
    Ok(format!(
        "kube-apiserver/kube-controller-manager {kube}, etcd {}",
        status.version()
    ))
}

/// A minimal HTTP/1.0 GET on loopback: (status, body).
async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
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
