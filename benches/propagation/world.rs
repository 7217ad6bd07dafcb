//! The benchmark's world: a control plane, kube-controller-manager running only the
//! EndpointSlice controller (the peer), Registrar's own etcd and the `registrar` binary, plus a
//! Node that no kubelet simulator manages, so pod statuses change only when the bench patches
//! them, and a loopback gRPC server for the bench's client balancer to connect to.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use registrar_testenv::{ControlPlane, Etcd, Process, tool};

use crate::client::LoopbackServer;
use crate::common::objects;
use crate::common::operator::{self, Operator};

/// The Node every benchmark pod is bound to (no kwok: nothing else writes pod status).
pub const NODE: &str = "bench-node";

/// Registrar's etcd prefix in the benchmark.
pub const PREFIX: &str = "registrar";

/// Everything one benchmark run talks to. Dropping it kills every process (operator and
/// controller first, then the API server and the etcds) and removes the temp dirs.
pub struct World {
    operator: Operator,
    kcm: Process,
    /// The Kubernetes control plane.
    pub cp: ControlPlane,
    /// Registrar's etcd (not the API server's).
    pub etcd: Etcd,
    /// An admin client.
    pub client: kube::Client,
    /// Versions of the components, for the report.
    pub versions: String,
    /// The loopback server every client connection goes to.
    pub backends: LoopbackServer,
    _dir: tempfile::TempDir,
}

impl World {
    /// Starts everything and waits until the operator is ready.
    pub async fn start() -> Result<World> {
        let (cp, etcd) = tokio::try_join!(ControlPlane::start(), Etcd::start())?;
        let client = cp.client().await?;
        objects::create_node(&client, NODE).await?;
        let kcm = spawn_endpointslice_controller(&cp)?;
        let dir = tempfile::Builder::new()
            .prefix("registrar-bench-")
            .tempdir()?;
        let operator = Operator::spawn(
            cp.kubeconfig(),
            &etcd,
            PREFIX,
            &dir.path().join("registrar.log"),
        )?;
        let (kube, etcd_version) = operator::versions(&client, &etcd).await?;
        let versions =
            format!("kube-apiserver/kube-controller-manager {kube}, etcd {etcd_version}");
        let mut world = World {
            operator,
            kcm,
            cp,
            etcd,
            client,
            versions,
            backends: LoopbackServer::start()?,
            _dir: dir,
        };
        world.operator.wait_ready(Duration::from_secs(60)).await?;
        Ok(world)
    }

    /// Fails (with log tails) when the operator or the controller manager has died.
    pub fn check_alive(&mut self) -> Result<()> {
        self.operator.check_alive()?;
        self.kcm.check_alive()
    }

    /// The operator's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        self.operator.metrics().await
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
