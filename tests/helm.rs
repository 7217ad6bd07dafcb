//! The Helm chart with the pinned helm: `helm template` renders for default and non-default
//! values into valid Kubernetes objects, `hack/chart-check.sh` (lint, rendering assertions,
//! bad values refused by `values.schema.json` and the chart's checks) passes, and
//! `helm install` into the test kube-apiserver creates every object while `helm uninstall`
//! removes them again, keeping the CRD as Helm does.

mod support;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams};
use registrar_testenv::{ControlPlane, poll, tool, workspace_root};
use serde_json::Value;
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
