//! Cluster mode: a [`ControlPlane`] plus kube-controller-manager, kube-scheduler and kwok with
//! fake Nodes, so Deployments get Running, Ready pods. Every Node has a `spec.podCIDR` in
//! 127.0.0.0/8, so pod IPs are loopback addresses that tests and the demo may dial.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::control_plane::ControlPlane;
use crate::process::Process;
use crate::tools::{tool, workspace_root};

/// A whole simulated cluster (see the module docs).
pub struct Cluster {
    // Controllers are dropped (killed) before the control plane they talk to.
    components: Vec<Process>,
    control_plane: ControlPlane,
}

/// The pod CIDR of fake node `i`: `127.1.<i>.0/24` (loopback).
pub fn node_pod_cidr(i: usize) -> String {
    format!("127.1.{i}.0/24")
}

impl Cluster {
    /// Starts a control plane, the controllers, kwok and `nodes` fake Nodes (`kwok-node-0`, ...).
    pub async fn start(nodes: usize) -> Result<Cluster> {
        let control_plane = ControlPlane::start().await?;
        let mut cluster = Cluster {
            components: Vec::new(),
            control_plane,
        };
        cluster.launch(nodes).await?;
        Ok(cluster)
    }

    async fn launch(&mut self, nodes: usize) -> Result<()> {
        let cp = &self.control_plane;
        let kubeconfig = cp.kubeconfig().display().to_string();
        let dir = cp.dir().to_path_buf();

        let mut kcm = Command::new(tool("kube-controller-manager")?);
        kcm.arg(format!("--kubeconfig={kubeconfig}"))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg(format!("--root-ca-file={}", cp.pki().ca.display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                cp.service_account_key().0.display()
            ))
            .arg("--use-service-account-credentials=false")
            .arg("--concurrent-deployment-syncs=5")
            .arg("--concurrent-replicaset-syncs=5")
            .arg("--v=1");
        let kcm = Process::spawn(
            "kube-controller-manager",
            kcm,
            &dir.join("kube-controller-manager.log"),
        )?;

        let mut sched = Command::new(tool("kube-scheduler")?);
        sched
            .arg(format!("--kubeconfig={kubeconfig}"))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg("--v=1");
        let sched = Process::spawn("kube-scheduler", sched, &dir.join("kube-scheduler.log"))?;

        let mut kwok = Command::new(tool("kwok")?);
        kwok.arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!(
                "--config={}",
                workspace_root().join("testenv/kwok-stages.yaml").display()
            ))
            .arg("--manage-all-nodes=true")
            .arg("--node-ip=127.0.0.1")
            .arg("--cidr=127.2.0.1/16")
            .arg("--node-lease-duration-seconds=0");
        let kwok = Process::spawn("kwok", kwok, &dir.join("kwok.log"))?;
        self.components = vec![kcm, sched, kwok];

        let client = cp.client().await?;
        let api: Api<Node> = Api::all(client);
        for i in 0..nodes {
            api.create(&PostParams::default(), &fake_node(i)).await?;
        }
        for i in 0..nodes {
            let api = api.clone();
            crate::poll(
                &format!("kwok-node-{i} Ready"),
                Duration::from_secs(60),
                || {
                    let api = api.clone();
                    async move {
                        let node = api.get(&format!("kwok-node-{i}")).await.ok()?;
                        let ready = node
                            .status?
                            .conditions?
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True");
                        ready.then_some(())
                    }
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", self.components_log_tail()))?;
        }
        self.check_alive()
    }

    /// Fails (with log tails) when a controller has died.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.components {
            p.check_alive()?;
        }
        Ok(())
    }

    fn components_log_tail(&self) -> String {
        self.components
            .iter()
            .map(|p| p.log_tail(15))
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// The control plane.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// Process ids of every component.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.components.iter().map(Process::pid).collect();
        pids.extend(self.control_plane.pids());
        pids
    }
}

impl Deref for Cluster {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        &self.control_plane
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut ControlPlane {
        &mut self.control_plane
    }
}

fn fake_node(i: usize) -> Node {
    let resources: BTreeMap<String, Quantity> =
        [("cpu", "64"), ("memory", "256Gi"), ("pods", "250")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(format!("kwok-node-{i}")),
            labels: Some(
                [
                    ("type".to_string(), "kwok".to_string()),
                    (
                        "kubernetes.io/hostname".to_string(),
                        format!("kwok-node-{i}"),
                    ),
                ]
                .into(),
            ),
            annotations: Some([("kwok.x-k8s.io/node".to_string(), "fake".to_string())].into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(node_pod_cidr(i)),
            pod_cidrs: Some(vec![node_pod_cidr(i)]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            allocatable: Some(resources.clone()),
            capacity: Some(resources),
            ..Default::default()
        }),
    }
}
