//! `registrar inspect` against a real API server and etcd, with the operator running and then
//! stopped: every verdict from its real situation (published, not ready, port missing, missing
//! in etcd, stale in etcd — a wrong value and a key no pod wants —, owned by another cluster),
//! the etcd side alone (`--target`), and the binary invoked as the kubectl plugin
//! `kubectl-registrar`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::*;

/// Runs `<bin> inspect <args>` against the ground; returns (success, stdout, stderr).
fn inspect(bin: &Path, g: &Ground, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin)
        .arg("inspect")
        .args(args)
        .args([
            "--kubeconfig",
            &g.cp.kubeconfig().display().to_string(),
            "--etcd-endpoints",
            &g.etcd.endpoint(),
            "--prefix",
            &g.prefix,
            "--cluster-id",
            "cluster-a",
        ])
        .env_remove("KUBECONFIG")
        .output()
        .expect("the registrar binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The JSON report's rows as (pod name or key) -> row.
fn rows_of(report: &Value) -> BTreeMap<String, Value> {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            let id = row["pod"]["name"]
                .as_str()
                .or(row["key"].as_str())
                .unwrap_or_default()
                .to_string();
            (id, row.clone())
        })
        .collect()
}

fn verdicts(rows: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    rows.iter()
        .map(|(k, r)| {
            (
                k.clone(),
                r["verdict"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn json_report(g: &Ground, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (ok, stdout, stderr) = inspect(support::operator_bin(), g, &all);
    assert!(ok, "inspect failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test]
async fn every_verdict_from_a_real_cluster_and_etcd() {
    let g = Ground::new().await.unwrap();
    // The pods' node, with a zone (no kubelet: the Node object only).
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "node-1",
        "labels": {"topology.kubernetes.io/zone": "zone-a"}}}))
    .unwrap();
    Api::<Node>::all(g.client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    // A long lease: the keys must outlive the operator once it is stopped.
    let mut opts = g.options();
    opts.lease_ttl = 120;
    let op = Operator::start(&g.cp, &g.etcd, &opts).await.unwrap();
    create_reg(
        &g.client,
        &g.ns,
        "greeter",
        json!({"selector": {"matchLabels": {"app": "g"}}, "port": "grpc"}),
    )
    .await
    .unwrap();
    ready_pod(
        &g.client,
        &g.ns,
        "p-published",
        json!({"app": "g"}),
        "127.0.0.151",
    )
    .await
    .unwrap();
    ready_pod(
        &g.client,
        &g.ns,
        "p-stale",
        json!({"app": "g"}),
        "127.0.0.155",
    )
    .await
    .unwrap();
    create_pod(&g.client, &g.ns, "p-not-ready", json!({"app": "g"}), 50051)
        .await
        .unwrap();
    set_ready(&g.client, &g.ns, "p-not-ready", "127.0.0.152", false)
        .await
        .unwrap();
    // A pod whose only port is named "http": the registration's "grpc" does not resolve.
    let no_port: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p-no-port", "labels": {"app": "g"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "example.invalid/app",
                 "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(g.client.clone(), &g.ns)
        .create(&PostParams::default(), &no_port)
        .await
        .unwrap();
    set_ready(&g.client, &g.ns, "p-no-port", "127.0.0.153", true)
        .await
        .unwrap();
    let published = g.key("greeter", "127.0.0.151:50051");
    let stale = g.key("greeter", "127.0.0.155:50051");
    wait_keys(&g.kv, &g.prefix, &[&published, &stale])
        .await
        .unwrap();

    // While the operator runs, what it wrote is published.
    let report = json_report(&g, &[&format!("{}/greeter", g.ns)]);
    let rows = rows_of(&report);
    assert_eq!(rows["p-published"]["verdict"], "published", "{report:#}");
    let etcd = &rows["p-published"]["etcd"];
    assert!(etcd["lease"].as_i64().unwrap() != 0, "{etcd}");
    let ttl = etcd["ttl"].as_i64().unwrap();
    assert!(ttl > 0 && ttl <= 120, "remaining TTL {ttl}");
    assert!(etcd["modRevision"].as_i64().unwrap() > 0);
    assert_eq!(rows["p-published"]["want"], etcd["value"]);
    assert_eq!(rows["p-published"]["pod"]["node"], "node-1");
    assert_eq!(rows["p-published"]["pod"]["zone"], "zone-a");
    assert_eq!(rows["p-published"]["pod"]["ip"], "127.0.0.151");
    assert_eq!(rows["p-published"]["pod"]["port"], 50051);
    assert_eq!(report["owner"]["claim"], "ours");

    // Stop the operator; then a pod turns Ready (nobody publishes it), a value is changed by
    // hand and a key nobody wants is written.
    drop(op);
    ready_pod(
        &g.client,
        &g.ns,
        "p-missing",
        json!({"app": "g"}),
        "127.0.0.154",
    )
    .await
    .unwrap();
    let mut kv = g.kv.clone();
    kv.put(
        stale.as_str(),
        r#"{"Op":0,"Addr":"127.0.0.155:50051","Metadata":null}"#,
        None,
    )
    .await
    .unwrap();
    let orphan = g.key("greeter", "127.0.0.199:50051");
    kv.put(
        orphan.as_str(),
        r#"{"Op":0,"Addr":"127.0.0.199:50051","Metadata":{"pod":"gone-0"}}"#,
        None,
    )
    .await
    .unwrap();

    let report = json_report(&g, &[&format!("{}/greeter", g.ns)]);
    let rows = rows_of(&report);
    let got = verdicts(&rows);
    println!("verdicts: {got:?}");
    let want: BTreeMap<String, String> = [
        ("p-published", "published"),
        ("p-stale", "stale-in-etcd"),
        ("p-not-ready", "not-ready"),
        ("p-no-port", "port-missing"),
        ("p-missing", "missing-in-etcd"),
        (orphan.as_str(), "stale-in-etcd"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, want, "{report:#}");
    assert_eq!(rows["p-no-port"]["pod"]["port"], Value::Null);
    assert!(
        rows["p-no-port"]["pod"]["portError"]
            .as_str()
            .unwrap()
            .contains("grpc")
    );
    assert_eq!(rows["p-missing"]["etcd"], Value::Null);
    assert!(
        rows[orphan.as_str()]["detail"]
            .as_str()
            .unwrap()
            .contains("gone-0")
    );
    assert_eq!(report["target"], format!("{}/{}/greeter", g.prefix, g.ns));

    // The table shows the same.
    let (ok, table, stderr) = inspect(support::operator_bin(), &g, &[&format!("{}/greeter", g.ns)]);
    assert!(ok, "{stderr}");
    println!("{table}");
    for word in [
        "VERDICT",
        "published",
        "stale-in-etcd",
        "not-ready",
        "port-missing",
        "missing-in-etcd",
    ] {
        assert!(table.contains(word), "no {word} in\n{table}");
    }

    // Another cluster claims the prefix: every key is owned elsewhere; pods that are not
    // endpoints keep their own verdict.
    kv.put(format!("{}/.owner", g.prefix), "cluster-b", None)
        .await
        .unwrap();
    let report = json_report(&g, &[&format!("{}/greeter", g.ns)]);
    let got = verdicts(&rows_of(&report));
    println!("with the prefix owned by cluster-b: {got:?}");
    assert_eq!(got["p-published"], "owned-elsewhere");
    assert_eq!(got["p-missing"], "owned-elsewhere");
    assert_eq!(got[orphan.as_str()], "owned-elsewhere");
    assert_eq!(got["p-not-ready"], "not-ready");
    assert_eq!(report["owner"]["claim"], "elsewhere");
    assert_eq!(report["owner"]["cluster"], "cluster-b");

    // The etcd side alone, through the kubectl plugin name.
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-registrar");
    std::os::unix::fs::symlink(support::operator_bin(), &plugin).unwrap();
    let target = format!("{}/{}/greeter", g.prefix, g.ns);
    let (ok, stdout, stderr) = inspect(&plugin, &g, &["--target", &target, "-o", "json"]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let got = verdicts(&rows_of(&report));
    assert_eq!(got.len(), 3, "{report:#}");
    assert!(got.values().all(|v| v == "owned-elsewhere"), "{got:?}");
    kv.put(format!("{}/.owner", g.prefix), "cluster-a", None)
        .await
        .unwrap();
    let (ok, stdout, stderr) = inspect(&plugin, &g, &["--target", &target, "-o", "json"]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let got = verdicts(&rows_of(&report));
    println!("--target as kubectl-registrar: {got:?}");
    // Each value is an endpoint for its key's address: what clients use.
    assert!(got.values().all(|v| v == "published"), "{got:?}");
    assert_eq!(report["registration"], Value::Null);
}

#[test]
fn as_a_kubectl_plugin_help_says_kubectl_registrar() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-registrar");
    std::os::unix::fs::symlink(support::operator_bin(), &plugin).unwrap();
    let out = Command::new(&plugin)
        .args(["inspect", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("kubectl registrar inspect"), "{help}");
    assert!(
        help.contains("--etcd-endpoints") && help.contains("--kubeconfig"),
        "{help}"
    );
    // A bad reference fails naming what is expected.
    let out = Command::new(&plugin)
        .args(["inspect", "no-slash"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("<namespace>/<registration>"));
}
