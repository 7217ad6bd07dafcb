//! Shared fixtures of the operator's integration tests: a control plane, a separate etcd for
//! Registrar's keys, the `registrar` binary as a real process, and helpers to make pods Ready
//! and to read etcd.
#![allow(dead_code)]

pub mod proxy;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use registrar::crd::ServiceRegistration;
use registrar_testenv::{ControlPlane, Etcd, Process, free_port, poll};
use serde_json::{Value, json};

/// Default deadline for conditions in these tests.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running `registrar run` process.
pub struct Operator {
    pub process: Process,
    pub admin: String,
    pub log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Options for [`Operator::start`].
#[derive(Clone)]
pub struct OperatorOptions {
    pub prefix: String,
    pub cluster_id: String,
    pub lease_ttl: u64,
    pub extra: Vec<String>,
    pub kubeconfig: Option<std::path::PathBuf>,
    pub env: Vec<(String, String)>,
}

impl OperatorOptions {
    pub fn new(prefix: &str) -> Self {
        OperatorOptions {
            prefix: prefix.to_string(),
            cluster_id: "cluster-a".into(),
            lease_ttl: 3,
            extra: Vec::new(),
            kubeconfig: None,
            env: Vec::new(),
        }
    }
}

impl Operator {
    /// Starts the operator binary against `cp` and `etcd`.
    pub async fn start(cp: &ControlPlane, etcd: &Etcd, opts: &OperatorOptions) -> Result<Operator> {
        let kubeconfig = opts.kubeconfig.as_deref().unwrap_or(cp.kubeconfig());
        let mut args: Vec<String> = vec![
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--etcd-endpoints".into(),
            etcd.endpoint(),
            "--prefix".into(),
            opts.prefix.clone(),
            "--cluster-id".into(),
            opts.cluster_id.clone(),
            "--lease-ttl".into(),
            opts.lease_ttl.to_string(),
        ];
        args.extend(opts.extra.iter().cloned());
        start_operator_with(&args, &opts.env).await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let admin = self.admin.clone();
        let res = poll("operator /readyz", DEADLINE, || {
            let admin = admin.clone();
            async move { (http_get(&admin, "/readyz").await.ok()?.0 == 200).then_some(()) }
        })
        .await;
        if res.is_err() {
            self.process.check_alive()?;
            anyhow::bail!(
                "operator not ready; log tail:\n{}",
                self.process.log_tail(40)
            );
        }
        Ok(())
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        Ok(http_get(&self.admin, "/metrics").await?.1)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- registrar log tail ({}) ---\n{}",
                self.admin,
                self.process.log_tail(60)
            );
        }
    }
}

/// A minimal HTTP/1.0 GET on loopback: (status, body).
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
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

/// Creates namespace `name`.
pub async fn namespace(client: &kube::Client, name: &str) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// Creates a ServiceRegistration from a spec.
pub async fn create_reg(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> Result<ServiceRegistration> {
    let reg: ServiceRegistration = serde_json::from_value(json!({
        "apiVersion": "registrar.dev/v1alpha1", "kind": "ServiceRegistration",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))?;
    Ok(Api::<ServiceRegistration>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &reg)
        .await?)
}

/// Merge-patches a registration's spec.
pub async fn patch_reg(client: &kube::Client, ns: &str, name: &str, spec: Value) -> Result<()> {
    Api::<ServiceRegistration>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await?;
    Ok(())
}

/// Creates a pod with `labels` and a container port `grpc`=`port`, on node `node-1`.
pub async fn create_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    labels: Value,
    port: i32,
) -> Result<()> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "example.invalid/app",
                 "ports": [{"name": "grpc", "containerPort": port}]}]}
    }))?;
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await?;
    Ok(())
}

/// Sets a pod's IP and Ready condition (as a kubelet would).
pub async fn set_ready(
    client: &kube::Client,
    ns: &str,
    name: &str,
    ip: &str,
    ready: bool,
) -> Result<()> {
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}]}});
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Creates a pod and makes it Ready with `ip`.
pub async fn ready_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    labels: Value,
    ip: &str,
) -> Result<()> {
    create_pod(client, ns, name, labels, 50051).await?;
    set_ready(client, ns, name, ip, true).await
}

/// Every key under `prefix/` (excluding the owner claim) with its value.
pub async fn etcd_keys(
    etcd: &mut etcd_client::Client,
    prefix: &str,
) -> Result<BTreeMap<String, String>> {
    let resp = etcd
        .get(
            format!("{prefix}/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key_str().ok()?.to_string(),
                kv.value_str().ok()?.to_string(),
            ))
        })
        .filter(|(k, _)| !k.ends_with("/.owner"))
        .collect())
}

/// Waits until the keys under `prefix/` are exactly `want` (key names only).
pub async fn wait_keys(
    etcd: &etcd_client::Client,
    prefix: &str,
    want: &[&str],
) -> Result<BTreeMap<String, String>> {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let res = poll(&format!("etcd keys {want:?}"), DEADLINE, || {
        let mut etcd = etcd.clone();
        let want = want.clone();
        let prefix = prefix.to_string();
        async move {
            let keys = etcd_keys(&mut etcd, &prefix).await.ok()?;
            (keys.keys().cloned().collect::<Vec<_>>() == want).then_some(keys)
        }
    })
    .await;
    match res {
        Ok(keys) => Ok(keys),
        Err(e) => {
            let mut etcd = etcd.clone();
            let now = etcd_keys(&mut etcd, prefix).await.unwrap_or_default();
            anyhow::bail!("{e}; keys now: {:?}", now.keys().collect::<Vec<_>>())
        }
    }
}

/// Waits until the registration's Ready condition has `reason`; returns the registration.
pub async fn wait_reason(
    client: &kube::Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> Result<ServiceRegistration> {
    let api: Api<ServiceRegistration> = Api::namespaced(client.clone(), ns);
    let res = poll(
        &format!("{ns}/{name} Ready reason {reason}"),
        DEADLINE,
        || {
            let api = api.clone();
            async move {
                let reg = api.get(name).await.ok()?;
                let ok = reg
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == reason);
                ok.then_some(reg)
            }
        },
    )
    .await;
    match res {
        Ok(r) => Ok(r),
        Err(e) => {
            let now = api.get(name).await.ok().and_then(|r| r.status);
            anyhow::bail!("{e}; status now: {now:?}")
        }
    }
}

/// The lease id of a key.
pub async fn lease_of(etcd: &mut etcd_client::Client, key: &str) -> Result<i64> {
    let resp = etcd.get(key, None).await?;
    Ok(resp.kvs().first().map(|kv| kv.lease()).unwrap_or(0))
}

/// Path to the operator binary.
pub fn operator_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_registrar"))
}

/// One test's world: a control plane, Registrar's own etcd, a namespace and a prefix.
pub struct Ground {
    pub cp: ControlPlane,
    pub etcd: Etcd,
    pub client: kube::Client,
    pub kv: etcd_client::Client,
    pub ns: String,
    pub prefix: String,
}

impl Ground {
    pub async fn new() -> Result<Ground> {
        let (cp, etcd) = tokio::try_join!(ControlPlane::start(), Etcd::start())?;
        let client = cp.client().await?;
        let kv = etcd.client().await?;
        let ns = registrar_testenv::unique_name("ns");
        namespace(&client, &ns).await?;
        let prefix = "registrar".to_string();
        Ok(Ground {
            cp,
            etcd,
            client,
            kv,
            ns,
            prefix,
        })
    }

    pub fn options(&self) -> OperatorOptions {
        OperatorOptions::new(&self.prefix)
    }

    pub async fn operator(&self) -> Result<Operator> {
        Operator::start(&self.cp, &self.etcd, &self.options()).await
    }

    /// `<prefix>/<ns>/<service>/<addr>`.
    pub fn key(&self, service: &str, addr: &str) -> String {
        format!("{}/{}/{service}/{addr}", self.prefix, self.ns)
    }
}

impl Ground {
    /// Starts the operator, then [`Ground::publish_greeter`]. Returns the operator and the keys.
    pub async fn greeter_with(&self, pods: &[(&str, &str)]) -> Result<(Operator, Vec<String>)> {
        let op = self.operator().await?;
        let keys = self.publish_greeter(pods).await?;
        Ok((op, keys))
    }

    /// Registers `greeter` (pods labelled `app: g`, port 50051), makes `pods` (name, IP) Ready
    /// and waits until exactly their keys are in etcd (an operator must be running). Returns
    /// the keys, in the order of `pods`.
    pub async fn publish_greeter(&self, pods: &[(&str, &str)]) -> Result<Vec<String>> {
        create_reg(
            &self.client,
            &self.ns,
            "greeter",
            json!({"selector": {"matchLabels": {"app": "g"}}, "port": 50051}),
        )
        .await?;
        let mut keys = Vec::new();
        for (name, ip) in pods {
            ready_pod(&self.client, &self.ns, name, json!({"app": "g"}), ip).await?;
            keys.push(self.key("greeter", &format!("{ip}:50051")));
        }
        let want: Vec<&str> = keys.iter().map(String::as_str).collect();
        wait_keys(&self.kv, &self.prefix, &want).await?;
        Ok(keys)
    }
}

/// The Ready condition of a registration's status (panics in tests when there is none).
pub fn ready_condition(reg: &ServiceRegistration) -> registrar::crd::Condition {
    reg.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .cloned()
        .expect("the registration has a Ready condition")
}

// ---- Helpers of the rbac, failover, etcd_auth, helm and metrics tests ----

/// Starts `registrar run` with `args` (plus `--admin-addr` and `RUST_LOG`), then `env` — for
/// tests that need flags [`Operator::start`] always sets (e.g. no `--cluster-id`). Waits for
/// `/readyz`.
pub async fn start_operator_with(args: &[String], env: &[(String, String)]) -> Result<Operator> {
    let dir = tempfile::Builder::new().prefix("registrar-op-").tempdir()?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(operator_bin());
    cmd.arg("run")
        .args(args)
        .arg("--admin-addr")
        .arg(&admin)
        .env("RUST_LOG", "info,registrar=debug")
        .env_remove("KUBECONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = dir.path().join("registrar.log");
    let process = Process::spawn("registrar", cmd, &log)?;
    let mut op = Operator {
        process,
        admin,
        log,
        _dir: dir,
    };
    op.wait_ready().await?;
    Ok(op)
}

/// The value of one sample of a Prometheus text exposition; `series` is the name with its
/// labels exactly as printed, e.g. `registrar_etcd_txns_total{result="ok"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

impl Operator {
    /// The current value of one metric sample.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric(&self.metrics().await.ok()?, series)
    }

    /// Waits until the metric sample satisfies `ok`; returns its value.
    pub async fn wait_metric(&self, series: &str, ok: impl Fn(f64) -> bool) -> Result<f64> {
        let res = poll(&format!("metric {series}"), DEADLINE, || async {
            self.metric(series).await.filter(|v| ok(*v))
        })
        .await;
        match res {
            Ok(v) => Ok(v),
            Err(e) => anyhow::bail!("{e}; now: {:?}", self.metric(series).await),
        }
    }
}

/// `helm template <release> charts/registrar --namespace <namespace> <args>`: the rendered
/// objects as JSON values, in order.
pub fn helm_template(release: &str, namespace: &str, args: &[&str]) -> Result<Vec<Value>> {
    let chart = registrar_testenv::workspace_root().join("charts/registrar");
    let chart = chart.to_string_lossy().into_owned();
    let mut all = vec![
        "template",
        release,
        chart.as_str(),
        "--namespace",
        namespace,
        "--kube-version",
        "1.35.0",
    ];
    all.extend_from_slice(args);
    let text = registrar_testenv::run_tool("helm", &all)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// One change under a watched prefix.
#[derive(Clone, Debug)]
pub struct PrefixEvent {
    pub delete: bool,
    pub key: String,
    pub lease: i64,
    pub at: std::time::Instant,
}

/// Records every PUT and DELETE under `prefix/` from now on.
pub async fn watch_prefix(
    etcd: &etcd_client::Client,
    prefix: &str,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<PrefixEvent>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut etcd = etcd.clone();
    let mut stream = etcd
        .watch(
            format!("{prefix}/"),
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await?;
    tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            for ev in resp.events() {
                if let Some(kv) = ev.kv() {
                    let _ = tx.send(PrefixEvent {
                        delete: ev.event_type() == etcd_client::EventType::Delete,
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        lease: kv.lease(),
                        at: std::time::Instant::now(),
                    });
                }
            }
        }
    });
    Ok(rx)
}

/// The leases of the keys under `prefix/` (the owner claim excluded), deduplicated.
pub async fn leases_under(etcd: &etcd_client::Client, prefix: &str) -> Result<Vec<i64>> {
    let mut etcd = etcd.clone();
    let resp = etcd
        .get(
            format!("{prefix}/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    let mut leases: Vec<i64> = resp
        .kvs()
        .iter()
        .filter(|kv| !kv.key().ends_with(b"/.owner"))
        .map(|kv| kv.lease())
        .collect();
    leases.sort_unstable();
    leases.dedup();
    Ok(leases)
}

/// Waits until the namespace has an Event with `reason` about the object named `name`.
pub async fn wait_event(client: &kube::Client, ns: &str, reason: &str, name: &str) -> Result<()> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    poll(&format!("a {reason} event about {name}"), DEADLINE, || {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.involved_object.name.as_deref() == Some(name)
                })
                .then_some(())
        }
    })
    .await
}
