//! Node topology in the endpoints' metadata, against a real kube-apiserver and a real etcd:
//! `zone` and `region` from the pod's Node labels (exact values in etcd), a relabelled node's
//! endpoints rewritten in one transaction, no keys for a node without the labels, and the
//! reserved keys refused in `spec.metadata`.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use registrar_testenv::poll;
use serde_json::{Value, json};
use support::*;

async fn create_node(client: &kube::Client, name: &str, labels: Value) -> anyhow::Result<()> {
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await?;
    Ok(())
}

async fn pod_on(g: &Ground, name: &str, node: &str, ip: &str) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "topo"}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "example.invalid/app",
                 "ports": [{"name": "grpc", "containerPort": 50051}]}]}
    }))?;
    Api::<Pod>::namespaced(g.client.clone(), &g.ns)
        .create(&PostParams::default(), &pod)
        .await?;
    set_ready(&g.client, &g.ns, name, ip, true).await
}

fn metadata(raw: &str) -> Value {
    serde_json::from_str::<Value>(raw).unwrap()["Metadata"].clone()
}

#[tokio::test]
async fn endpoints_carry_their_nodes_zone_and_region_and_follow_a_relabel() {
    let g = Ground::new().await.unwrap();
    let u = registrar_testenv::unique_name("n");
    let (na, nb, nbare) = (format!("{u}-a"), format!("{u}-b"), format!("{u}-bare"));
    let zone = "topology.kubernetes.io/zone";
    let region = "topology.kubernetes.io/region";
    create_node(
        &g.client,
        &na,
        json!({zone: "zone-a", region: "r1", "other": "x"}),
    )
    .await
    .unwrap();
    create_node(&g.client, &nb, json!({zone: "zone-b", region: "r1"}))
        .await
        .unwrap();
    create_node(&g.client, &nbare, json!({"other": "x"}))
        .await
        .unwrap();
    let _op = g.operator().await.unwrap();
    create_reg(
        &g.client,
        &g.ns,
        "topo",
        json!({"selector": {"matchLabels": {"app": "topo"}}, "port": 50051,
               "metadata": {"weight": "2"}}),
    )
    .await
    .unwrap();
    let pods = [
        ("p1", &na, "127.0.0.61"),
        ("p2", &na, "127.0.0.62"),
        ("p3", &nb, "127.0.0.63"),
        ("p4", &nbare, "127.0.0.64"),
    ];
    for (name, node, ip) in pods {
        pod_on(&g, name, node, ip).await.unwrap();
    }
    let keys: Vec<String> = pods
        .iter()
        .map(|(_, _, ip)| g.key("topo", &format!("{ip}:50051")))
        .collect();
    let want: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = wait_keys(&g.kv, &g.prefix, &want).await.unwrap();
    assert_eq!(
        metadata(&got[&keys[0]]),
        json!({"node": na, "pod": "p1", "region": "r1", "weight": "2", "zone": "zone-a"})
    );
    assert_eq!(
        metadata(&got[&keys[2]]),
        json!({"node": nb, "pod": "p3", "region": "r1", "weight": "2", "zone": "zone-b"})
    );
    assert_eq!(
        metadata(&got[&keys[3]]),
        json!({"node": nbare, "pod": "p4", "weight": "2"}),
        "a node without topology labels: no zone or region"
    );

    // Relabel node a: both of its endpoints are rewritten, in one transaction (one revision).
    Api::<Node>::all(g.client.clone())
        .patch(
            &na,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {zone: "zone-c"}}})),
        )
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let revisions: BTreeMap<String, i64> = poll(
        "node a's endpoints in zone-c",
        std::time::Duration::from_secs(20),
        || {
            let mut kv = g.kv.clone();
            let keys = keys.clone();
            async move {
                let mut out = BTreeMap::new();
                for key in &keys[..2] {
                    let resp = kv.get(key.as_str(), None).await.ok()?;
                    let kvp = resp.kvs().first()?;
                    let value = metadata(kvp.value_str().ok()?);
                    if value["zone"] != "zone-c" {
                        return None;
                    }
                    out.insert(key.clone(), kvp.mod_revision());
                }
                Some(out)
            }
        },
    )
    .await
    .unwrap();
    let revs: Vec<i64> = revisions.values().copied().collect();
    eprintln!(
        "relabel seen in etcd after {:?}; mod revisions of node a's two keys: {revs:?}",
        started.elapsed()
    );
    assert_eq!(revs[0], revs[1], "not one transaction: {revisions:?}");
    let now = etcd_keys(&mut g.kv.clone(), &g.prefix).await.unwrap();
    assert_eq!(
        metadata(&now[&keys[2]])["zone"],
        "zone-b",
        "node b untouched"
    );
}

#[tokio::test]
async fn reserved_metadata_keys_are_refused_naming_the_key() {
    let g = Ground::new().await.unwrap();
    for key in ["zone", "region", "cluster", "node"] {
        let err = create_reg(
            &g.client,
            &g.ns,
            "r",
            json!({"selector": {"matchLabels": {"app": "x"}}, "port": 50051,
                   "metadata": {key: "mine", "tier": "gold"}}),
        )
        .await
        .expect_err("a reserved key was accepted");
        let text = format!("{err:#}");
        eprintln!("{key}: {text}");
        assert!(
            text.contains(&format!("must not set the reserved key '{key}':")),
            "{text}"
        );
    }
    // Together: the first one is named.
    let err = create_reg(
        &g.client,
        &g.ns,
        "r",
        json!({"selector": {"matchLabels": {"app": "x"}}, "port": 50051,
               "metadata": {"zone": "a", "region": "b"}}),
    )
    .await
    .expect_err("reserved keys were accepted");
    assert!(
        format!("{err:#}").contains("must not set the reserved key 'zone':"),
        "{err:#}"
    );
    // `weight` is not reserved.
    create_reg(
        &g.client,
        &g.ns,
        "w",
        json!({"selector": {"matchLabels": {"app": "x"}}, "port": 50051,
               "metadata": {"weight": "3"}}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn publish_cluster_id_adds_cluster_to_every_endpoint_in_etcd() {
    let g = Ground::new().await.unwrap();
    let u = registrar_testenv::unique_name("n");
    let (na, nbare) = (format!("{u}-a"), format!("{u}-bare"));
    create_node(
        &g.client,
        &na,
        json!({"topology.kubernetes.io/zone": "zone-a"}),
    )
    .await
    .unwrap();
    create_node(&g.client, &nbare, json!({})).await.unwrap();
    let mut opts = g.options();
    opts.extra = vec!["--publish-cluster-id".into(), "east-1".into()];
    let _op = Operator::start(&g.cp, &g.etcd, &opts).await.unwrap();
    create_reg(
        &g.client,
        &g.ns,
        "topo",
        json!({"selector": {"matchLabels": {"app": "topo"}}, "port": 50051}),
    )
    .await
    .unwrap();
    pod_on(&g, "p1", &na, "127.0.0.65").await.unwrap();
    pod_on(&g, "p2", &nbare, "127.0.0.66").await.unwrap();
    let keys = [
        g.key("topo", "127.0.0.65:50051"),
        g.key("topo", "127.0.0.66:50051"),
    ];
    let got = wait_keys(&g.kv, &g.prefix, &[keys[0].as_str(), keys[1].as_str()])
        .await
        .unwrap();
    eprintln!("with --publish-cluster-id east-1: {got:?}");
    assert_eq!(
        metadata(&got[&keys[0]]),
        json!({"cluster": "east-1", "node": na, "pod": "p1", "zone": "zone-a"})
    );
    assert_eq!(
        metadata(&got[&keys[1]]),
        json!({"cluster": "east-1", "node": nbare, "pod": "p2"})
    );
}
