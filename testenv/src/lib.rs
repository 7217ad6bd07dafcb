//! Registrar's test ground: real etcd, a real kube-apiserver and, in cluster mode, a whole
//! simulated cluster (kube-controller-manager, kube-scheduler, kwok with fake Nodes), started
//! by the tests themselves on loopback, envtest-style.
//!
//! - [`Etcd`]: etcd on random free ports in a temp data dir; stop/restart/wipe for fault tests.
//! - [`EtcdCluster`]: a multi-member etcd (3 by default) whose members can be killed, stopped,
//!   frozen and restarted, optionally each behind a client proxy.
//! - [`ControlPlane`]: etcd + kube-apiserver with TLS, an admin client certificate, RBAC and
//!   service-account keys; the project's CRDs (`crds/`) installed and established.
//! - [`Cluster`]: a control plane plus controllers and kwok; pod IPs are in 127.0.0.0/8.
//!   [`pod_servers::PodServers`] runs a Greeter server on each such pod's IP (a stand-in kubelet).
//! - [`DelayProxy`]: the one TCP proxy of fault tests (delay, freeze, cut).
//! - Reading Registrar's keys: [`leases_under`] (the leases its keys hang on), [`watch_prefix`]
//!   (events from now on) and [`Recorder`] (every event of a run, through etcd restarts).
//! - [`seeded::SeededRng`]: the replayable choices of randomized drivers.
//!
//! Every process runs in its own process group, is killed when its owner is dropped (also when
//! a test panics) and dies with the test process (`PR_SET_PDEATHSIG`); temp dirs are removed.
//! The binaries come from `hack/tools.sh` (or `$REGISTRAR_TOOLS_BIN`).

mod cluster;
mod control_plane;
mod etcd;
mod etcd_cluster;
pub mod fuzz;
mod go;
pub mod greeter;
mod http_get;
mod leases;
mod operator;
mod pki;
pub mod pod_servers;
mod process;
pub mod prometheus;
mod proxy;
mod recorder;
pub mod seeded;
mod tools;
mod watch;

use std::future::Future;
use std::time::Duration;

pub use cluster::{Cluster, node_pod_cidr};
pub use control_plane::{ControlPlane, client_from_kubeconfig};
pub use etcd::{Etcd, EtcdOptions, EtcdTls};
pub use etcd_cluster::EtcdCluster;
pub use go::go_build;
pub use http_get::http_get;
pub use leases::leases_under;
pub use operator::OperatorProcess;
pub use pki::{CertFiles, Pki};
pub use process::{Process, free_port, log_tail};
pub use proxy::{DelayProxy, Link};
pub use recorder::{RecordOptions, Recorded, Recorder, Recording};
pub use tools::{run_tool, tool, workspace_root};
pub use watch::{PrefixEvent, watch_deletes, watch_prefix};

/// Polls `f` every 50 ms until it returns `Some`, failing after `deadline` with a message that
/// names `what`.
pub async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= end {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A unique, DNS-1123-safe name with `prefix` (for namespaces and etcd prefixes in tests).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}
