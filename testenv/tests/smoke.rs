//! Smoke tests of the test ground itself: each component starts, does its job, and leaves no
//! process behind.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use registrar_testenv::{Cluster, ControlPlane, Etcd, poll, unique_name};
use serde_json::json;

/// Whether `pid` is a live (not zombie) process.
fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

async fn namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns).await.unwrap();
}

#[tokio::test]
async fn etcd_put_get_watch_round_trip_and_cleanup() {
    let etcd = Etcd::start().await.unwrap();
    let mut client = etcd.client().await.unwrap();
    let mut stream = client
        .watch(
            "smoke/",
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    client.put("smoke/a", "1", None).await.unwrap();
    let got = client.get("smoke/a", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"1");
    // The first response only confirms the watch's creation; wait for the one with the event.
    let resp = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let resp = stream.message().await.unwrap().unwrap();
            if !resp.events().is_empty() {
                return resp;
            }
        }
    })
    .await
    .unwrap();
    let ev = &resp.events()[0];
    assert_eq!(ev.kv().unwrap().key(), b"smoke/a");
    drop(stream);

    let pid = etcd.pid().unwrap();
    let dir = etcd.dir().to_path_buf();
    assert!(pid_alive(pid));
    drop(etcd);
    assert!(!pid_alive(pid), "etcd survived its drop");
    assert!(!dir.exists(), "temp dir left behind");
}

#[tokio::test]
async fn etcd_restart_keeps_data_and_wipe_drops_it() {
    let mut etcd = Etcd::start().await.unwrap();
    etcd.client()
        .await
        .unwrap()
        .put("k", "v", None)
        .await
        .unwrap();
    etcd.restart().await.unwrap();
    let mut c = etcd.client().await.unwrap();
    assert_eq!(c.get("k", None).await.unwrap().kvs().len(), 1);
    etcd.wipe().await.unwrap();
    let mut c = etcd.client().await.unwrap();
    assert_eq!(c.get("k", None).await.unwrap().kvs().len(), 0);
}

#[tokio::test]
async fn etcd_with_tls_requires_a_client_certificate() {
    let etcd = Etcd::start_with(registrar_testenv::EtcdOptions { tls: true })
        .await
        .unwrap();
    assert!(etcd.endpoint().starts_with("https://127.0.0.1:"));
    let mut c = etcd.client().await.unwrap();
    c.put("tls", "ok", None).await.unwrap();
    // Without a client certificate the handshake is refused.
    let ca = std::fs::read(&etcd.tls().unwrap().ca).unwrap();
    let opts = etcd_client::ConnectOptions::new().with_tls(
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(ca))
            .domain_name("localhost"),
    );
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = etcd_client::Client::connect([etcd.endpoint()], Some(opts)).await?;
        c.get("tls", None).await
    })
    .await
    .unwrap();
    assert!(res.is_err(), "etcd accepted a client without a certificate");
}

#[tokio::test]
async fn apiserver_serves_the_crd_and_pods() {
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, "v1.35.4", "version ldflags missing");
    let ns = unique_name("smoke");
    namespace(&client, &ns).await;

    // The project's CRD is installed: a valid ServiceRegistration is accepted...
    let gvk = GroupVersionKind::gvk("registrar.dev", "v1alpha1", "ServiceRegistration");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "serviceregistrations");
    let regs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let valid: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "registrar.dev/v1alpha1", "kind": "ServiceRegistration",
        "metadata": {"name": "greeter"},
        "spec": {"selector": {"matchLabels": {"app": "greeter"}}, "port": 50051}
    }))
    .unwrap();
    regs.create(&PostParams::default(), &valid).await.unwrap();
    // ...and an invalid one is refused with a message naming the field.
    let invalid: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "registrar.dev/v1alpha1", "kind": "ServiceRegistration",
        "metadata": {"name": "bad"},
        "spec": {"selector": {"matchLabels": {"app": "greeter"}}, "port": 70000}
    }))
    .unwrap();
    let err = regs
        .create(&PostParams::default(), &invalid)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("spec.port"),
        "unexpected error: {err}"
    );

    // A Pod is created and its status patched to Ready.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p1", "labels": {"app": "greeter"}},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/greeter"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({"status": {"phase": "Running", "podIP": "127.0.0.9",
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status("p1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let got = pods.get("p1").await.unwrap();
    let st = got.status.unwrap();
    assert_eq!(st.pod_ip.as_deref(), Some("127.0.0.9"));
    assert!(
        st.conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    let pids = cp.pids();
    assert_eq!(pids.len(), 2);
    drop(cp);
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} survived");
    }
}

#[tokio::test]
async fn cluster_runs_a_deployment_to_ready_pods_on_loopback_ips() {
    let cluster = Cluster::start(2).await.unwrap();
    let client = cluster.client().await.unwrap();
    let ns = unique_name("smoke");
    namespace(&client, &ns).await;
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web",
                    "ports": [{"name": "grpc", "containerPort": 50051}]}]}
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let ips = poll("3 Ready pods", Duration::from_secs(120), || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&Default::default()).await.ok()?;
            let ips: Vec<String> = list
                .items
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                .collect();
            (ips.len() == 3).then_some(ips)
        }
    })
    .await
    .unwrap();
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "pod IPs not distinct: {ips:?}");
    for ip in &ips {
        let addr: std::net::Ipv4Addr = ip.parse().unwrap();
        assert!(addr.is_loopback(), "pod IP {ip} is not loopback");
    }
    let pids = cluster.pids();
    drop(cluster);
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} survived");
    }
}
