//! Kubernetes objects the benchmarks create: a Node nobody manages (no kubelet, no node
//! lifecycle controller: pod statuses change only when a benchmark patches them) and the
//! kubelet-like pod status a benchmark patches in.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// Creates the Node `name` (no kubelet manages it).
pub async fn create_node(client: &kube::Client, name: &str) -> Result<()> {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
    }))?;
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("creating the Node {name}"))?;
    Ok(())
}

/// A kubelet-like status merge patch: Running with `ip`, Ready as given, transition time now.
pub fn pod_status(ip: &str, ready: bool) -> Value {
    json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}]}})
}
