//! Shared fixtures of the operator's integration tests: a control plane, a separate etcd for
//! Registrar's keys, the `registrar` binary as a real process, and helpers to make pods Ready
//! and to read etcd.
#![allow(dead_code)]

pub mod faults;
pub mod proxy;
pub mod rollout;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use registrar::crd::ServiceRegistration;
use registrar_testenv::{ControlPlane, Etcd, OperatorProcess, poll};
// The test ground's helpers, under the names the tests use (not every test uses each).
#[allow(unused_imports)]
pub use registrar_testenv::{
    PrefixEvent, http_get, leases_under, prometheus::sample as metric, watch_deletes, watch_prefix,
};
use serde_json::{Value, json};

/// Default deadline for conditions in these tests.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running `registrar run` process (the test ground's [`OperatorProcess`], whose `process`,
/// `admin`, `metrics()` and `metric()` it derefs to) and its log file.
pub struct Operator {
    op: OperatorProcess,
    pub log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Operator {
    type Target = OperatorProcess;

    fn deref(&self) -> &OperatorProcess {
        &self.op
    }
}

impl std::ops::DerefMut for Operator {
    fn deref_mut(&mut self) -> &mut OperatorProcess {
        &mut self.op
    }
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
        Self::start_with_endpoints(cp, &[etcd.endpoint()], opts).await
    }

    /// Starts the operator binary against `cp` and the etcd members at `endpoints`.
    pub async fn start_with_endpoints(
        cp: &ControlPlane,
        endpoints: &[String],
        opts: &OperatorOptions,
    ) -> Result<Operator> {
        let kubeconfig = opts.kubeconfig.as_deref().unwrap_or(cp.kubeconfig());
        let mut args: Vec<String> = vec![
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--etcd-endpoints".into(),
            endpoints.join(","),
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
        self.op.wait_ready(DEADLINE).await
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
    let log = dir.path().join("registrar.log");
    let op = OperatorProcess::spawn(operator_bin(), args, env, "info,registrar=debug", &log)?;
    let mut op = Operator { op, log, _dir: dir };
    op.wait_ready().await?;
    Ok(op)
}

impl Operator {
    /// Waits until the metric sample satisfies `ok`; returns its value.
    pub async fn wait_metric(&self, series: &str, ok: impl Fn(f64) -> bool) -> Result<f64> {
        self.op.wait_metric(series, DEADLINE, ok).await
    }
}

/// `helm template <release> charts/registrar --namespace <namespace> <args>`: the objects
/// `helm install` creates, as JSON values, in order (the `helm test` hook pod is left out:
/// see [`helm_template_tests`]).
pub fn helm_template(release: &str, namespace: &str, args: &[&str]) -> Result<Vec<Value>> {
    let mut all = vec!["--skip-tests"];
    all.extend_from_slice(args);
    render_chart(release, namespace, &all)
}

/// The objects of `helm template` including the `helm test` hooks.
pub fn helm_template_tests(release: &str, namespace: &str, args: &[&str]) -> Result<Vec<Value>> {
    render_chart(release, namespace, args)
}

fn render_chart(release: &str, namespace: &str, args: &[&str]) -> Result<Vec<Value>> {
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
