//! Topology and two "clusters" end to end on a kwok cluster (issue 13 §1, §4): one kwok cluster
//! with Nodes in two zones stands for two clusters (reused, to keep CI time bounded: starting a
//! second kwok cluster costs as much again and proves nothing more), each with its own etcd, its
//! own operator (`--prefix east` / `west`, `--publish-cluster-id east` / `west`) and its own
//! namespace. The stand-in kubelet ([`PodServers`]) serves every pod's 127.1.x.y address.
//!
//! Checked: exact `zone` / `region` / `cluster` values in each etcd for pods on either zone's
//! Node; one [`FailoverBalancer`] client over both targets (zone preference `zone-a` inside the
//! first) sends everything to the east zone-a pod, to east's zone-b pod when that one is deleted,
//! to west when east has no pod left, and back to east when a pod returns. Prints the counts
//! and times.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use registrar_resolver::{BackendState, Backoff, Balancer, EtcdConnect, FailoverBalancer};
use registrar_testenv::greeter::{GreeterClient, HelloRequest};
use registrar_testenv::pod_servers::{PodServers, Termination};
use registrar_testenv::{Cluster, Etcd, poll, unique_name};
use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;

const ZONE: &str = "topology.kubernetes.io/zone";
const REGION: &str = "topology.kubernetes.io/region";

async fn pod_on(client: &kube::Client, ns: &str, name: &str, node: &str) -> Result<()> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "g"}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "greeter", "image": "registrar-demo:dev",
                                 "ports": [{"name": "grpc", "containerPort": 50051}]}]}
    }))?;
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await?;
    Ok(())
}

async fn delete_pod(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await?;
    Ok(())
}

/// The pods' IPs (once kwok gave them), by pod name.
async fn pod_ips(
    client: &kube::Client,
    ns: &str,
    names: &[&str],
) -> Result<BTreeMap<String, String>> {
    poll("pod IPs", DEADLINE, || async {
        let mut out = BTreeMap::new();
        for name in names {
            let pod = Api::<Pod>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .ok()?;
            out.insert(name.to_string(), pod.status?.pod_ip?);
        }
        Some(out)
    })
    .await
}

fn metadata(raw: &str) -> Value {
    serde_json::from_str::<Value>(raw).map_or(Value::Null, |v| v["Metadata"].clone())
}

/// `n` sequential calls; answers per pod name.
async fn spread(balancer: &FailoverBalancer, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut client = GreeterClient::new(balancer.clone());
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let reply = client
            .say_hello(HelloRequest { name: "mc".into() })
            .await
            .with_context(|| format!("call {i} of {n}"))?;
        *counts.entry(reply.into_inner().backend).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Calls until one is answered by `pod` (at most 60 s); how long that took and how many calls
/// failed meanwhile.
async fn until_served_by(balancer: &FailoverBalancer, pod: &str) -> Result<(Duration, usize)> {
    let started = Instant::now();
    let mut client = GreeterClient::new(balancer.clone());
    let mut failed = 0;
    loop {
        match client.say_hello(HelloRequest { name: "mc".into() }).await {
            Ok(r) if r.get_ref().backend == pod => return Ok((started.elapsed(), failed)),
            Ok(_) => {}
            Err(_) => failed += 1,
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no call answered by {pod} within 60 s ({failed} failed): {:#?}",
            balancer.snapshot()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_with_zones_fail_over_end_to_end() -> Result<()> {
    let (cluster, etcd_east, etcd_west) =
        tokio::try_join!(Cluster::start(2), Etcd::start(), Etcd::start())?;
    let client = cluster.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    for (node, zone) in [("kwok-node-0", "zone-a"), ("kwok-node-1", "zone-b")] {
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {ZONE: zone, REGION: "r1"}}})),
            )
            .await?;
    }
    let (ns_east, ns_west) = (unique_name("east"), unique_name("west"));
    let mut operators = Vec::new();
    for (etcd, name, ns) in [
        (&etcd_east, "east", &ns_east),
        (&etcd_west, "west", &ns_west),
    ] {
        namespace(&client, ns).await?;
        let mut opts = OperatorOptions::new(name);
        opts.cluster_id = name.into();
        opts.extra = vec!["--publish-cluster-id".into(), name.into()];
        operators.push(Operator::start(&cluster, etcd, &opts).await?);
        create_reg(
            &client,
            ns,
            "greeter",
            json!({"selector": {"matchLabels": {"app": "g"}}, "port": 50051}),
        )
        .await?;
    }
    let termination = Termination {
        pre_stop: Duration::ZERO,
        grace: Duration::from_secs(1),
    };
    let _east_kubelet = PodServers::start(client.clone(), &ns_east, "app=g", 50051, termination);
    let _west_kubelet = PodServers::start(client.clone(), &ns_west, "app=g", 50051, termination);
    pod_on(&client, &ns_east, "east-a", "kwok-node-0").await?;
    pod_on(&client, &ns_east, "east-b", "kwok-node-1").await?;
    pod_on(&client, &ns_west, "west-b", "kwok-node-1").await?;

    // Exact values in each cluster's etcd.
    let east_ips = pod_ips(&client, &ns_east, &["east-a", "east-b"]).await?;
    let west_ips = pod_ips(&client, &ns_west, &["west-b"]).await?;
    let (east_target, west_target) = (
        format!("east/{ns_east}/greeter"),
        format!("west/{ns_west}/greeter"),
    );
    let east_keys: Vec<String> = east_ips
        .values()
        .map(|ip| format!("{east_target}/{ip}:50051"))
        .collect();
    let west_key = format!("{west_target}/{}:50051", west_ips["west-b"]);
    let east_kv = etcd_east.client().await?;
    let west_kv = etcd_west.client().await?;
    let in_east = wait_keys_under(&east_kv, &east_target, &east_keys).await?;
    let in_west = wait_keys_under(&west_kv, &west_target, std::slice::from_ref(&west_key)).await?;
    eprintln!("east etcd: {in_east:#?}\nwest etcd: {in_west:#?}");
    assert_eq!(
        metadata(&in_east[&east_keys[0]]),
        json!({"cluster": "east", "node": "kwok-node-0", "pod": "east-a", "region": "r1", "zone": "zone-a"})
    );
    assert_eq!(
        metadata(&in_east[&east_keys[1]]),
        json!({"cluster": "east", "node": "kwok-node-1", "pod": "east-b", "region": "r1", "zone": "zone-b"})
    );
    assert_eq!(
        metadata(&in_west[&west_key]),
        json!({"cluster": "west", "node": "kwok-node-1", "pod": "west-b", "region": "r1", "zone": "zone-b"})
    );

    // One client over both clusters, zone a preferred inside each.
    let fast = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
    let group = |etcd: &Etcd, target: &str| {
        let connect = EtcdConnect::new(vec![etcd.endpoint()]);
        let target = target.to_owned();
        async move {
            anyhow::Ok(
                Balancer::builder(connect.connect().await?, target)
                    .zone("zone-a")
                    .connection_backoff(fast),
            )
        }
    };
    let balancer = FailoverBalancer::builder()
        .target(group(&etcd_east, &east_target).await?)
        .target(group(&etcd_west, &west_target).await?)
        .build()
        .await?;
    poll("every backend READY", DEADLINE, || async {
        let s = balancer.snapshot();
        let ready: Vec<usize> = s
            .groups
            .iter()
            .map(|g| {
                let backends = &g.routing.backends;
                backends
                    .iter()
                    .filter(|b| b.state == BackendState::Ready)
                    .count()
            })
            .collect();
        (s.active == Some(0) && ready == [2, 1]).then_some(())
    })
    .await
    .with_context(|| format!("{:#?}", balancer.snapshot()))?;
    let counts = spread(&balancer, 1000).await?;
    eprintln!("both clusters up, client in zone-a, 1,000 calls: {counts:?}");
    assert_eq!(counts, BTreeMap::from([("east-a".to_string(), 1000)]));

    // East's zone-a pod goes: east's zone-b pod takes over (zone preference inside the group).
    delete_pod(&client, &ns_east, "east-a").await?;
    let (took, failed) = until_served_by(&balancer, "east-b").await?;
    let counts = spread(&balancer, 1000).await?;
    eprintln!(
        "east-a deleted: east-b serving after {took:?} ({failed} calls failed meanwhile); \
         1,000 calls: {counts:?}"
    );
    assert_eq!(counts, BTreeMap::from([("east-b".to_string(), 1000)]));

    // East has no pod left: west takes everything.
    delete_pod(&client, &ns_east, "east-b").await?;
    let (took, failed) = until_served_by(&balancer, "west-b").await?;
    let counts = spread(&balancer, 1000).await?;
    eprintln!(
        "east-b deleted: west serving after {took:?} ({failed} calls failed meanwhile); \
         1,000 calls: {counts:?}"
    );
    assert_eq!(counts, BTreeMap::from([("west-b".to_string(), 1000)]));
    assert_eq!(balancer.snapshot().active, Some(1));

    // A pod returns in east: calls come back to east.
    pod_on(&client, &ns_east, "east-a2", "kwok-node-0").await?;
    let (took, failed) = until_served_by(&balancer, "east-a2").await?;
    let counts = spread(&balancer, 1000).await?;
    eprintln!(
        "east-a2 created: east serving again after {took:?} (pod creation, kwok, operator, etcd, \
         connect; {failed} calls failed meanwhile); 1,000 calls: {counts:?}"
    );
    assert_eq!(counts, BTreeMap::from([("east-a2".to_string(), 1000)]));
    assert_eq!(balancer.snapshot().active, Some(0));
    for op in &mut operators {
        op.process.check_alive()?;
    }
    Ok(())
}

/// Waits until exactly `want` are the keys under `<target>/`; their values.
async fn wait_keys_under(
    kv: &etcd_client::Client,
    target: &str,
    want: &[String],
) -> Result<BTreeMap<String, String>> {
    let mut want = want.to_vec();
    want.sort();
    poll(&format!("keys {want:?}"), DEADLINE, || {
        let mut kv = kv.clone();
        let want = want.clone();
        async move {
            let got = etcd_keys(&mut kv, target).await.ok()?;
            (got.keys().cloned().collect::<Vec<_>>() == want).then_some(got)
        }
    })
    .await
}
