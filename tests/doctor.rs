//! `registrar doctor` against a real API server and etcd: everything passes with good
//! settings, and each failure is one FAIL line with its fix and a non-zero exit — the etcd
//! lease TTL too short for leader election, the prefix owned by another cluster, an RBAC rule
//! missing one verb (the chart's rules, one verb removed, for a user of its own), the CRD
//! missing, a wrong etcd password and an etcd role without the prefix. The permission list
//! doctor checks is the chart's (rendered by `helm template`).

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use etcd_client::Permission as EtcdPermission;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use registrar::doctor::permissions::{Name, REQUIRED, Scope};
use registrar_testenv::{Etcd, poll};
use serde_json::{Value, json};
use support::*;

/// Runs `registrar doctor <args>`; returns (success, stdout). Prints the output.
fn doctor(args: &[String]) -> (bool, String) {
    let out = Command::new(operator_bin())
        .arg("doctor")
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("POD_NAMESPACE")
        .output()
        .expect("the registrar binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!(
        "--- registrar doctor {}\n{stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), stdout)
}

fn failures(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("FAIL")).collect()
}

fn args(kubeconfig: &Path, etcd: &str, ns: &str, extra: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = [
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--etcd-endpoints",
        etcd,
        "--cluster-id",
        "cluster-a",
        "--leader-elect",
        "true",
        "--leader-election-namespace",
        ns,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.extend(extra.iter().map(|s| s.to_string()));
    all
}

#[tokio::test]
async fn doctor_passes_then_names_each_failure_with_its_fix() {
    let g = Ground::new().await.unwrap();
    let admin = args(g.cp.kubeconfig(), &g.etcd.endpoint(), &g.ns, &[]);

    let (ok, out) = doctor(&admin);
    assert!(ok, "{out}");
    assert!(failures(&out).is_empty(), "{out}");
    for check in [
        "ok    API server reachable",
        "ok    CRD serviceregistrations.registrar.dev",
        "ok    RBAC patch registrar.dev/serviceregistrations/status",
        "ok    etcd reachable",
        "ok    etcd authentication",
        "ok    etcd permissions on registrar/",
        "ok    prefix claim registrar/.owner: free",
        "ok    lease TTL vs leader election",
    ] {
        assert!(out.contains(check), "no {check:?} in\n{out}");
    }
    let rbac_lines = out.lines().filter(|l| l.contains(" RBAC ")).count();
    assert_eq!(rbac_lines, REQUIRED.len() - 1, "{out}"); // --cluster-id: no kube-system get

    // The lease TTL too short for the leader-election lease.
    let mut short = admin.clone();
    short.extend(["--lease-ttl".into(), "10".into()]);
    let (ok, out) = doctor(&short);
    assert!(!ok);
    assert_eq!(failures(&out).len(), 1, "{out}");
    assert!(failures(&out)[0].contains("lease TTL vs leader election"));
    assert!(
        failures(&out)[0].contains("fix: use --lease-ttl >= 26"),
        "{out}"
    );

    // The prefix owned by another cluster.
    let mut kv = g.kv.clone();
    kv.put("registrar/.owner", "cluster-b", None).await.unwrap();
    let (ok, out) = doctor(&admin);
    assert!(!ok);
    assert_eq!(failures(&out).len(), 1, "{out}");
    assert!(
        failures(&out)[0]
            .starts_with("FAIL  prefix claim registrar/.owner: claimed by cluster \"cluster-b\"")
    );
    assert!(failures(&out)[0].contains("fix: give each cluster its own --prefix"));
    kv.put("registrar/.owner", "cluster-a", None).await.unwrap();
    let (ok, out) = doctor(&admin);
    assert!(
        ok && out.contains("ok    prefix claim registrar/.owner: ours"),
        "{out}"
    );

    // A user with the chart's rules but one verb missing (status patch).
    let docs = helm_template("registrar", &g.ns, &[]).unwrap();
    let user = "doctor-user";
    let pp = PostParams::default();
    for doc in &docs {
        let mut rules = doc["rules"].clone();
        match doc["kind"].as_str() {
            Some("ClusterRole") => {
                let rules_vec: Vec<Value> = rules
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["resources"] != json!(["serviceregistrations/status"]))
                    .cloned()
                    .collect();
                rules = Value::Array(rules_vec);
                let role: ClusterRole = serde_json::from_value(
                    json!({"metadata": {"name": "doctor-test"}, "rules": rules}),
                )
                .unwrap();
                Api::<ClusterRole>::all(g.client.clone())
                    .create(&pp, &role)
                    .await
                    .unwrap();
                let binding: ClusterRoleBinding = serde_json::from_value(json!({
                    "metadata": {"name": "doctor-test"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "doctor-test"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
                }))
                .unwrap();
                Api::<ClusterRoleBinding>::all(g.client.clone())
                    .create(&pp, &binding)
                    .await
                    .unwrap();
            }
            Some("Role") => {
                let role: Role = serde_json::from_value(
                    json!({"metadata": {"name": "doctor-test", "namespace": g.ns}, "rules": rules}),
                )
                .unwrap();
                Api::<Role>::namespaced(g.client.clone(), &g.ns)
                    .create(&pp, &role)
                    .await
                    .unwrap();
                let binding: RoleBinding = serde_json::from_value(json!({
                    "metadata": {"name": "doctor-test", "namespace": g.ns},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "doctor-test"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
                }))
                .unwrap();
                Api::<RoleBinding>::namespaced(g.client.clone(), &g.ns)
                    .create(&pp, &binding)
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    let kubeconfig =
        g.cp.kubeconfig_for(user, &["system:authenticated"])
            .unwrap();
    let as_user = args(&kubeconfig, &g.etcd.endpoint(), &g.ns, &[]);
    // RBAC changes reach the authorizer's cache quickly, but not synchronously.
    let out = poll("doctor sees the RBAC rules", DEADLINE, || {
        let as_user = as_user.clone();
        async move {
            let (_, out) = doctor(&as_user);
            (failures(&out).len() == 1).then_some(out)
        }
    })
    .await
    .unwrap();
    let fail = failures(&out)[0];
    assert!(
        fail.starts_with(
            "FAIL  RBAC patch registrar.dev/serviceregistrations/status (all namespaces): denied"
        ),
        "{out}"
    );
    assert!(fail.contains("fix: grant it to the operator's ServiceAccount in a ClusterRole"));
    // Not allowed to read CRDs: the CRD check falls back to "served".
    assert!(
        out.contains("ok    CRD serviceregistrations.registrar.dev: served"),
        "{out}"
    );

    // The CRD missing.
    let crds: Api<CustomResourceDefinition> = Api::all(g.client.clone());
    crds.delete(
        "serviceregistrations.registrar.dev",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    poll("the CRD gone", DEADLINE, || {
        let crds = crds.clone();
        async move {
            crds.get_opt("serviceregistrations.registrar.dev")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await
    .unwrap();
    let (ok, out) = doctor(&admin);
    assert!(!ok);
    assert_eq!(failures(&out).len(), 1, "{out}");
    assert!(
        failures(&out)[0].starts_with("FAIL  CRD serviceregistrations.registrar.dev: not installed -- fix: apply this binary's CRD"),
        "{out}"
    );
}

#[tokio::test]
async fn a_wrong_etcd_password_and_a_role_without_the_prefix() {
    let etcd = Etcd::start().await.unwrap();
    let mut root = etcd.client().await.unwrap();
    root.user_add("root", "root-Pa55-doctor", None)
        .await
        .unwrap();
    let _ = root.role_add("root").await;
    root.user_grant_role("root", "root").await.unwrap();
    root.role_add("rw").await.unwrap();
    root.role_grant_permission("rw", EtcdPermission::read_write("registrar/").with_prefix())
        .await
        .unwrap();
    root.user_add("registrar", "right-Pa55", None)
        .await
        .unwrap();
    root.user_grant_role("registrar", "rw").await.unwrap();
    root.auth_enable().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let no_kube = dir.path().join("no-kubeconfig");
    let run = |password: &str, prefix: &str| {
        let password_file = dir.path().join(format!("password-{password}"));
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        doctor(&[
            "--kubeconfig".into(),
            no_kube.display().to_string(),
            "--etcd-endpoints".into(),
            etcd.endpoint(),
            "--etcd-username".into(),
            "registrar".into(),
            "--etcd-password-file".into(),
            password_file.display().to_string(),
            "--prefix".into(),
            prefix.into(),
            "--cluster-id".into(),
            "cluster-a".into(),
        ])
    };
    let line = |out: &str, start: &str| {
        out.lines()
            .find(|l| l.contains(start))
            .unwrap_or_else(|| panic!("no {start:?} in\n{out}"))
            .to_string()
    };

    let (ok, out) = run("right-Pa55", "registrar");
    assert!(!ok, "no kubeconfig: the API server check fails");
    assert!(line(&out, "etcd reachable").starts_with("ok"), "{out}");
    assert!(line(&out, "etcd authentication").starts_with("ok"), "{out}");
    assert!(
        line(&out, "etcd permissions on registrar/").starts_with("ok"),
        "{out}"
    );
    assert!(line(&out, "prefix claim").starts_with("ok"), "{out}");
    assert!(
        !out.contains("right-Pa55"),
        "the password is printed:\n{out}"
    );

    let (ok, out) = run("wrong-Pa55", "registrar");
    assert!(!ok);
    assert!(line(&out, "etcd reachable").starts_with("ok"), "{out}");
    let auth = line(&out, "etcd authentication");
    assert!(
        auth.starts_with("FAIL") && auth.contains("fix: check --etcd-username and the password"),
        "{out}"
    );
    assert!(line(&out, "etcd permissions").starts_with("skip"), "{out}");
    assert!(
        !out.contains("wrong-Pa55"),
        "the password is printed:\n{out}"
    );

    let (ok, out) = run("right-Pa55", "elsewhere");
    assert!(!ok);
    let access = line(&out, "etcd permissions on elsewhere/");
    assert!(
        access.starts_with("FAIL") && access.contains("permission denied"),
        "{out}"
    );
    assert!(access.contains("readwrite elsewhere/ --prefix"), "{out}");
}

#[test]
fn the_permissions_doctor_checks_are_the_charts_rules() {
    let docs = helm_template("registrar", "registrar-system", &[]).unwrap();
    let lease_name = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .and_then(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()?
                .iter()
                .find(|e| e["name"] == "REGISTRAR_LEADER_ELECTION_LEASE_NAME")?["value"]
                .as_str()
                .map(str::to_string)
        })
        .expect("the chart names the leader-election Lease");
    let mut chart = BTreeSet::new();
    for doc in &docs {
        let kind = match doc["kind"].as_str() {
            Some(k @ ("ClusterRole" | "Role")) => k.to_string(),
            _ => continue,
        };
        for rule in doc["rules"].as_array().unwrap() {
            let list = |f: &str| -> Vec<String> {
                rule[f]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let names = match list("resourceNames") {
                n if n.is_empty() => vec!["*".to_string()],
                n => n,
            };
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        for name in &names {
                            chart.insert((
                                kind.clone(),
                                group.clone(),
                                resource.clone(),
                                verb.clone(),
                                name.clone(),
                            ));
                        }
                    }
                }
            }
        }
    }
    let doctor: BTreeSet<_> = REQUIRED
        .iter()
        .map(|p| {
            let kind = match p.scope {
                Scope::Cluster => "ClusterRole",
                Scope::LeaderElection => "Role",
            };
            let resource = if p.subresource.is_empty() {
                p.resource.to_string()
            } else {
                format!("{}/{}", p.resource, p.subresource)
            };
            let name = match p.name {
                Name::Any => "*".to_string(),
                Name::Fixed(n) => n.to_string(),
                Name::LeaderElectionLease => lease_name.clone(),
            };
            (
                kind.to_string(),
                p.group.to_string(),
                resource,
                p.verb.to_string(),
                name,
            )
        })
        .collect();
    assert_eq!(
        doctor, chart,
        "doctor's permission list and the chart's rules drifted apart"
    );
}
