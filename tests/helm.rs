//! The Helm chart with the pinned helm: `helm template` renders for default and non-default
//! values into valid Kubernetes objects, `hack/chart-check.sh` (lint, rendering assertions,
//! bad values refused by `values.schema.json` and the chart's checks, `helm package`) passes,
//! and `helm install` into the test kube-apiserver creates every object while `helm uninstall`
//! removes them again, keeping the CRD as Helm does.
//!
//! The `helm test` hook is rendered and its exact command run against a real operator (the
//! test ground has no kubelet to run the pod itself). `helm upgrade` from the previous chart
//! version (a packaged fixture of it) keeps the CRD and the registrations, and the keys in
//! etcd stay untouched while the operator runs as the release's ServiceAccount throughout.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams};
use registrar::crd::ServiceRegistration;
use registrar_testenv::{ControlPlane, poll, tool, watch_deletes, workspace_root};
use serde_json::{Value, json};
use support::*;

const CRD: &str = "serviceregistrations.registrar.dev";

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    k.sort();
    k
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn env_of(deployment: &Deployment) -> Vec<(String, Option<String>)> {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect()
}

fn env_value(deployment: &Deployment, name: &str) -> Option<String> {
    env_of(deployment)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v)
}

#[test]
fn template_renders_for_default_and_non_default_values() {
    // Defaults: every object, each a valid object of its type.
    let docs = helm_template("registrar", "registrar-system", &[]).unwrap();
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let deployment: Deployment = serde_json::from_value(find(&docs, "Deployment").clone()).unwrap();
    let _: ClusterRole = serde_json::from_value(find(&docs, "ClusterRole").clone()).unwrap();
    let _: PodDisruptionBudget =
        serde_json::from_value(find(&docs, "PodDisruptionBudget").clone()).unwrap();
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(
        env_value(&deployment, "REGISTRAR_LEADER_ELECT").as_deref(),
        Some("true")
    );
    assert_eq!(
        env_value(&deployment, "REGISTRAR_LEASE_TTL").as_deref(),
        Some("30")
    );
    assert!(docs.iter().all(
        |d| d["kind"].as_str().is_some_and(|k| k.starts_with("Cluster"))
            || d["metadata"]["namespace"] == "registrar-system"
    ));

    // Everything optional on.
    let full = workspace_root().join("charts/registrar/ci/full-values.yaml");
    let docs = helm_template("edge", "registrar-system", &["-f", full.to_str().unwrap()]).unwrap();
    assert!(kinds(&docs).contains(&"ServiceMonitor".to_string()));
    let deployment: Deployment = serde_json::from_value(find(&docs, "Deployment").clone()).unwrap();
    assert_eq!(deployment.metadata.name.as_deref(), Some("edge-registrar"));
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(
        env_value(&deployment, "REGISTRAR_PREFIX").as_deref(),
        Some("services/registrar")
    );
    assert_eq!(
        env_value(&deployment, "REGISTRAR_ETCD_CA_FILE").as_deref(),
        Some("/etc/registrar/etcd-tls/ca.crt")
    );
    let volumes: Vec<String> = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(volumes, ["etcd-tls", "etcd-auth"]);
    // An explicit cluster id: no access to namespaces at all.
    let role = find(&docs, "ClusterRole").to_string();
    assert!(!role.contains("namespaces"), "{role}");

    // One replica, no election, an existing ServiceAccount, --set on top.
    let single = workspace_root().join("charts/registrar/ci/single-replica-values.yaml");
    let docs = helm_template(
        "registrar",
        "ops",
        &[
            "-f",
            single.to_str().unwrap(),
            "--set",
            "leaseTTL=45",
            "--set",
            "logFormat=text",
        ],
    )
    .unwrap();
    assert_eq!(
        kinds(&docs),
        ["ClusterRole", "ClusterRoleBinding", "Deployment"]
    );
    let deployment: Deployment = serde_json::from_value(find(&docs, "Deployment").clone()).unwrap();
    assert_eq!(
        env_value(&deployment, "REGISTRAR_LEADER_ELECT").as_deref(),
        Some("false")
    );
    assert_eq!(
        env_value(&deployment, "REGISTRAR_LEASE_TTL").as_deref(),
        Some("45")
    );
    assert_eq!(
        env_value(&deployment, "REGISTRAR_LOG_FORMAT").as_deref(),
        Some("text")
    );
    let binding: ClusterRoleBinding =
        serde_json::from_value(find(&docs, "ClusterRoleBinding").clone()).unwrap();
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        ("registrar-existing", Some("ops"))
    );
}

#[test]
fn chart_check_passes_and_refuses_bad_values() {
    let out = Command::new("bash")
        .arg(workspace_root().join("hack/chart-check.sh"))
        .env("HELM", tool("helm").unwrap())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chart-check failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = text
        .lines()
        .filter(|l| l.starts_with("PASS  bad/") && l.contains(" refused"))
        .count();
    assert!(
        refused >= 5,
        "only {refused} bad value sets refused:\n{text}"
    );
    assert!(text.contains(" 0 failed"), "{text}");
}

/// Runs the pinned helm against the control plane, with its own config and cache dirs.
fn helm(cp: &ControlPlane, home: &Path, args: &[&str]) -> String {
    let out = Command::new(tool("helm").unwrap())
        .args(args)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Which of the chart's objects exist, by kind/name.
async fn present(client: &kube::Client, ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! check {
        ($api:expr, $kind:literal, $name:expr) => {
            if $api.get_opt($name).await.unwrap().is_some() {
                out.push(format!("{}/{}", $kind, $name));
            }
        };
    }
    check!(
        Api::<Deployment>::namespaced(client.clone(), ns),
        "Deployment",
        "registrar"
    );
    check!(
        Api::<ServiceAccount>::namespaced(client.clone(), ns),
        "ServiceAccount",
        "registrar"
    );
    check!(
        Api::<Service>::namespaced(client.clone(), ns),
        "Service",
        "registrar-metrics"
    );
    check!(
        Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
        "PodDisruptionBudget",
        "registrar"
    );
    check!(
        Api::<Role>::namespaced(client.clone(), ns),
        "Role",
        "registrar-leader-election"
    );
    check!(
        Api::<RoleBinding>::namespaced(client.clone(), ns),
        "RoleBinding",
        "registrar-leader-election"
    );
    check!(
        Api::<ClusterRole>::all(client.clone()),
        "ClusterRole",
        "registrar"
    );
    check!(
        Api::<ClusterRoleBinding>::all(client.clone()),
        "ClusterRoleBinding",
        "registrar"
    );
    out
}

async fn crd_established(crds: &Api<CustomResourceDefinition>) -> Option<()> {
    let crd = crds.get_opt(CRD).await.ok()??;
    crd.status?
        .conditions?
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True")
        .then_some(())
}

#[tokio::test]
async fn install_creates_every_object_and_uninstall_removes_them_but_the_crd() {
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client().await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let ns = "registrar-system";

    // The test ground installs the CRD itself: remove it, so the chart must bring it.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete(CRD, &DeleteParams::default()).await.unwrap();
    poll("the CRD deleted", DEADLINE, || async {
        crds.get_opt(CRD).await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();

    let chart = workspace_root().join("charts/registrar");
    // No --wait: nothing runs pods in this control plane (no kubelet); the objects are checked.
    helm(
        &cp,
        home.path(),
        &[
            "install",
            "registrar",
            chart.to_str().unwrap(),
            "--namespace",
            ns,
            "--create-namespace",
        ],
    );
    let all = [
        "Deployment/registrar",
        "ServiceAccount/registrar",
        "Service/registrar-metrics",
        "PodDisruptionBudget/registrar",
        "Role/registrar-leader-election",
        "RoleBinding/registrar-leader-election",
        "ClusterRole/registrar",
        "ClusterRoleBinding/registrar",
    ];
    assert_eq!(present(&client, ns).await, all);
    poll("the chart's CRD established", DEADLINE, || {
        crd_established(&crds)
    })
    .await
    .unwrap();
    let list = helm(&cp, home.path(), &["list", "--namespace", ns, "-o", "json"]);
    let releases: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(releases[0]["name"], "registrar");
    assert_eq!(releases[0]["status"], "deployed");

    helm(
        &cp,
        home.path(),
        &["uninstall", "registrar", "--namespace", ns, "--wait"],
    );
    poll("every object of the release gone", DEADLINE, || async {
        present(&client, ns).await.is_empty().then_some(())
    })
    .await
    .unwrap();
    // Helm keeps CRDs (and so every ServiceRegistration) on uninstall.
    assert!(crd_established(&crds).await.is_some());
    let list = helm(&cp, home.path(), &["list", "--namespace", ns, "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap(),
        Value::Array(vec![])
    );
}

/// The `helm test` pod of a default render.
fn test_hook(args: &[&str]) -> Option<Value> {
    helm_template_tests("registrar", "registrar-system", args)
        .unwrap()
        .into_iter()
        .find(|d| d["metadata"]["annotations"]["helm.sh/hook"] == "test")
}

/// Runs `registrar <args>`: (success, stdout + stderr).
fn run_registrar(args: &[String]) -> (bool, String) {
    let out = Command::new(operator_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

// Multi-threaded: the stand-in 503 server answers while `registrar probe` is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_hook_probes_readyz_through_the_service_with_the_operator_image() {
    let docs = helm_template("registrar", "registrar-system", &[]).unwrap();
    let hook = test_hook(&[]).expect("a helm test hook by default");
    let pod: Pod = serde_json::from_value(hook.clone()).unwrap();
    assert_eq!(hook["metadata"]["name"], "registrar-test-readyz");
    assert_eq!(
        hook["metadata"]["annotations"]["helm.sh/hook-delete-policy"],
        "before-hook-creation,hook-succeeded"
    );
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    let container = &spec.containers[0];
    // The operator's own image: nothing else needs pulling.
    let deployment = find(&docs, "Deployment");
    assert_eq!(
        container.image.as_deref(),
        deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str()
    );
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.run_as_non_root, Some(true));
    // The URL is the Service's name and port.
    let service = find(&docs, "Service");
    let args = container.args.clone().unwrap();
    let url = format!(
        "http://{}.registrar-system.svc:{}/readyz",
        service["metadata"]["name"].as_str().unwrap(),
        service["spec"]["ports"][0]["port"]
    );
    assert_eq!(args, ["probe", "--timeout", "10", url.as_str()]);
    // The Service (and the PodDisruptionBudget) must not select the test pod.
    let labels = hook["metadata"]["labels"].as_object().unwrap();
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_ne!(
            labels.get(k),
            Some(v),
            "the Service selects the test pod by {k}"
        );
    }
    // Off with the Service (nothing to probe) or when disabled.
    assert!(test_hook(&["--set", "service.enabled=false"]).is_none());
    assert!(test_hook(&["--set", "helmTest.enabled=false"]).is_none());
    let hook = test_hook(&[
        "--set",
        "helmTest.timeoutSeconds=3",
        "--set",
        "service.port=9100",
    ])
    .unwrap();
    let args: Vec<String> =
        serde_json::from_value(hook["spec"]["containers"][0]["args"].clone()).unwrap();
    assert_eq!(args[2], "3");
    assert!(args[3].ends_with(".svc:9100/readyz"), "{args:?}");

    // The pod's command, run here against a real operator: a kubelet would run exactly this
    // (with the Service's name resolved by the cluster DNS; here its address, as a name could
    // send a DNS query off the machine).
    let g = Ground::new().await.unwrap();
    let op = g.operator().await.unwrap();
    let port = op.admin.rsplit_once(':').unwrap().1.to_string();
    let local = |url: &str| -> Vec<String> {
        let mut a: Vec<String> = args.clone();
        a[3] = url.to_string();
        a
    };
    let ready_url = format!("http://127.0.0.1:{port}/readyz");
    let (ok, out) = run_registrar(&local(&ready_url));
    println!("probe of a ready operator: {out}");
    assert!(ok, "{out}");
    assert!(out.contains(" 200 "), "{out}");

    // A 503 from /readyz fails the test pod (a server answering like a replica not ready).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let not_ready = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready: etcd\n")
                .await;
        }
    });
    let (ok, out) = run_registrar(&local(&format!("http://{not_ready}/readyz")));
    println!("probe of a 503: {out}");
    assert!(!ok, "{out}");
    assert!(out.contains("503"), "{out}");

    // The operator gone: nothing listens behind the Service.
    drop(op);
    let (ok, out) = run_registrar(&local(&ready_url));
    println!("probe with the operator stopped: {out}");
    assert!(!ok && out.contains("connecting"), "{out}");
}

/// The previous chart version (0.1.0, before the `helm test` hook, the per-target metric and the
/// 0.2.0 bump), as `helm package` made it from commit 13cb0d7: a fixture rather than git
/// history, so that the test runs on a shallow clone too.
const PREVIOUS_CHART: &str = "tests/chart/registrar-0.1.0.tgz";

/// The packaged chart at `archive` (relative to the workspace), extracted into `dir`; the
/// chart's directory.
fn chart_at(archive: &str, dir: &Path) -> PathBuf {
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(workspace_root().join(archive))
        .arg("-C")
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "tar -xzf {archive}");
    dir.join("registrar")
}

fn chart_version(chart: &Path) -> String {
    let text = std::fs::read_to_string(chart.join("Chart.yaml")).unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    doc["version"].as_str().unwrap().to_string()
}

/// The plain (`value:`) environment of the installed Deployment's container.
fn deployment_env(deployment: &Deployment) -> Vec<(String, String)> {
    env_of(deployment)
        .into_iter()
        .filter_map(|(n, v)| Some((n, v?)))
        .collect()
}

#[tokio::test]
async fn upgrade_from_the_previous_chart_keeps_the_crd_and_the_published_keys() {
    let g = Ground::new().await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let old_dir = tempfile::tempdir().unwrap();
    let ns = "registrar-system";
    let old = chart_at(PREVIOUS_CHART, old_dir.path());
    let new = workspace_root().join("charts/registrar");
    let (old_version, new_version) = (chart_version(&old), chart_version(&new));
    assert_ne!(old_version, new_version, "bump the chart version");

    // The previous chart brings the CRD.
    let crds: Api<CustomResourceDefinition> = Api::all(g.client.clone());
    crds.delete(CRD, &DeleteParams::default()).await.unwrap();
    poll("the CRD deleted", DEADLINE, || async {
        crds.get_opt(CRD).await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
    helm(
        &g.cp,
        home.path(),
        &[
            "install",
            "registrar",
            old.to_str().unwrap(),
            "--namespace",
            ns,
            "--create-namespace",
        ],
    );
    poll("the chart's CRD established", DEADLINE, || {
        crd_established(&crds)
    })
    .await
    .unwrap();
    let crd_uid = crds.get(CRD).await.unwrap().metadata.uid;

    // The operator runs as the release's ServiceAccount, configured like its Deployment.
    let deployments: Api<Deployment> = Api::namespaced(g.client.clone(), ns);
    let deployment = deployments.get("registrar").await.unwrap();
    let sa = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .service_account_name
        .clone()
        .unwrap();
    let kubeconfig =
        g.cp.kubeconfig_for(
            &format!("system:serviceaccount:{ns}:{sa}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{ns}"),
                "system:authenticated",
            ],
        )
        .unwrap();
    let mut env: Vec<(String, String)> = deployment_env(&deployment)
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "REGISTRAR_ETCD_ENDPOINTS" | "RUST_LOG"))
        .collect();
    env.push(("POD_NAME".into(), "registrar-0".into()));
    env.push(("POD_NAMESPACE".into(), ns.into()));
    env.push(("REGISTRAR_ETCD_ENDPOINTS".into(), g.etcd.endpoint()));
    env.push(("RUST_LOG".into(), "info,registrar=debug".into()));
    let op = start_operator_with(
        &["--kubeconfig".into(), kubeconfig.display().to_string()],
        &env,
    )
    .await
    .unwrap();
    op.wait_metric("registrar_leader", |v| v == 1.0)
        .await
        .unwrap();
    let keys = g
        .publish_greeter(&[("p1", "127.0.0.171"), ("p2", "127.0.0.172")])
        .await
        .unwrap();
    let regs: Api<ServiceRegistration> = Api::namespaced(g.client.clone(), &g.ns);
    let reg_uid = regs.get("greeter").await.unwrap().metadata.uid;
    let mut kv = g.kv.clone();
    let revisions = |kv: &mut etcd_client::Client| {
        let mut kv = kv.clone();
        let prefix = g.prefix.clone();
        async move {
            let resp = kv
                .get(
                    format!("{prefix}/"),
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .unwrap();
            resp.kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.key_str().unwrap().to_string(),
                        (kv.mod_revision(), kv.lease()),
                    )
                })
                .collect::<std::collections::BTreeMap<_, _>>()
        }
    };
    let before = revisions(&mut kv).await;

    // The upgrade, with etcd watched for deletes throughout.
    let mut deletes = watch_deletes(&g.kv, &g.prefix).await.unwrap();
    let started = Instant::now();
    let out = helm(
        &g.cp,
        home.path(),
        &[
            "upgrade",
            "registrar",
            new.to_str().unwrap(),
            "--namespace",
            ns,
        ],
    );
    let took = started.elapsed();
    println!("helm upgrade {old_version} -> {new_version} in {took:?}: {out}");
    let list = helm(
        &g.cp,
        home.path(),
        &["list", "--namespace", ns, "-o", "json"],
    );
    let releases: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(releases[0]["revision"], "2");
    assert_eq!(releases[0]["status"], "deployed");
    assert_eq!(releases[0]["chart"], format!("registrar-{new_version}"));

    // The CRD is the same object (Helm never upgrades crds/), and so is the registration.
    assert_eq!(crds.get(CRD).await.unwrap().metadata.uid, crd_uid);
    assert!(crd_established(&crds).await.is_some());
    assert_eq!(regs.get("greeter").await.unwrap().metadata.uid, reg_uid);
    // The upgraded RBAC still lets the operator work: a new pod is published.
    ready_pod(&g.client, &g.ns, "p3", json!({"app": "g"}), "127.0.0.173")
        .await
        .unwrap();
    let mut want: Vec<String> = keys.clone();
    want.push(g.key("greeter", "127.0.0.173:50051"));
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    wait_keys(&g.kv, &g.prefix, &want).await.unwrap();
    // The test hook is not installed by an upgrade (only `helm test` creates it).
    let pods: Api<Pod> = Api::namespaced(g.client.clone(), ns);
    assert!(
        pods.get_opt("registrar-test-readyz")
            .await
            .unwrap()
            .is_none()
    );

    let after = revisions(&mut kv).await;
    let mut seen = Vec::new();
    while let Ok(key) = deletes.try_recv() {
        seen.push(key);
    }
    println!(
        "keys before the upgrade: {before:?}\nafter it (and p3): {after:?}\ndeletes seen: {seen:?}"
    );
    assert!(seen.is_empty(), "keys deleted during the upgrade: {seen:?}");
    // The keys published before were not rewritten: same revision, same lease.
    for (key, rev) in &before {
        assert_eq!(after.get(key), Some(rev), "{key} was rewritten");
    }
    assert!(op.is_ready().await, "{}", op.log_text());
}

/// The leaves of `values` (values.yaml) as key path -> compact JSON: a map whose schema
/// declares `properties` is walked, anything else (scalars, lists, free-form maps) is one value.
fn value_leaves(
    values: &Value,
    schema: &Value,
    path: &str,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match values.as_object() {
        Some(map) if !map.is_empty() && schema["properties"].is_object() => {
            for (k, v) in map {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                value_leaves(v, &schema["properties"][k], &sub, out);
            }
        }
        _ => {
            out.insert(path.to_string(), values.to_string());
        }
    }
}

#[test]
fn the_chart_readme_documents_every_value_with_its_default() {
    let chart = workspace_root().join("charts/registrar");
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart.join("values.schema.json")).unwrap())
            .unwrap();
    let mut want = std::collections::BTreeMap::new();
    value_leaves(&values, &schema, "", &mut want);

    let readme = std::fs::read_to_string(chart.join("README.md")).unwrap();
    let table = readme
        .split_once("<!-- values:start -->")
        .and_then(|(_, rest)| rest.split_once("<!-- values:end -->"))
        .expect("the values table between its markers")
        .0;
    let mut rows = std::collections::BTreeMap::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 3, "{line}");
        let key = cells[0].trim_matches('`').to_string();
        assert!(cells[2].len() > 5, "{key}: no description");
        assert!(
            rows.insert(key.clone(), cells[1].trim_matches('`').to_string())
                .is_none(),
            "{key} listed twice"
        );
    }
    let missing: Vec<String> = want
        .iter()
        .filter(|(k, _)| !rows.contains_key(*k))
        .map(|(k, v)| format!("| `{k}` | `{v}` | ... |"))
        .collect();
    let stale: Vec<&String> = rows.keys().filter(|k| !want.contains_key(*k)).collect();
    let wrong: Vec<String> = want
        .iter()
        .filter_map(|(k, v)| {
            let row = rows.get(k)?;
            (row != v).then(|| format!("{k}: README {row}, values.yaml {v}"))
        })
        .collect();
    println!("{} values documented", rows.len());
    assert!(
        missing.is_empty(),
        "values missing from the README:\n{}",
        missing.join("\n")
    );
    assert!(stale.is_empty(), "README rows for no value: {stale:?}");
    assert!(wrong.is_empty(), "defaults differ: {wrong:#?}");
    assert!(want.len() >= 60, "{}", want.len());
}
