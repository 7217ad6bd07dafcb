//! The chart's RBAC is enough and no more: only the RBAC objects rendered by `helm template`
//! are applied, and the operator runs as the chart's ServiceAccount (a client certificate with
//! the ServiceAccount's user name and groups, judged by RBAC like a token), configured by the
//! environment of the rendered Deployment. It must do its whole job — leader election, keys,
//! status, finalizer, Events, the default cluster id — and be refused anything else.

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use registrar::crd::ServiceRegistration;
use registrar_testenv::{client_from_kubeconfig, poll};
use serde_json::{Value, json};
use support::*;

const RELEASE: &str = "registrar";
const RELEASE_NS: &str = "registrar-system";

/// Creates every RBAC object (and the ServiceAccount) of `docs` as the admin; returns their kinds.
async fn apply_rbac(client: &kube::Client, docs: &[Value]) -> Vec<String> {
    let pp = PostParams::default();
    let mut kinds = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or(RELEASE_NS);
        let doc = doc.clone();
        match kind.as_str() {
            "ServiceAccount" => {
                Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
                    .create(&pp, &serde_json::from_value(doc).unwrap())
                    .await
                    .unwrap();
            }
            "ClusterRole" => {
                Api::<ClusterRole>::all(client.clone())
                    .create(&pp, &serde_json::from_value(doc).unwrap())
                    .await
                    .unwrap();
            }
            "ClusterRoleBinding" => {
                Api::<ClusterRoleBinding>::all(client.clone())
                    .create(&pp, &serde_json::from_value(doc).unwrap())
                    .await
                    .unwrap();
            }
            "Role" => {
                Api::<Role>::namespaced(client.clone(), ns)
                    .create(&pp, &serde_json::from_value(doc).unwrap())
                    .await
                    .unwrap();
            }
            "RoleBinding" => {
                Api::<RoleBinding>::namespaced(client.clone(), ns)
                    .create(&pp, &serde_json::from_value(doc).unwrap())
                    .await
                    .unwrap();
            }
            _ => continue,
        }
        kinds.push(kind);
    }
    kinds.sort();
    kinds
}

/// The plain (`value:`) environment of the rendered Deployment's container.
fn chart_env(docs: &[Value]) -> (String, Vec<(String, String)>) {
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment is rendered");
    let pod = &deployment["spec"]["template"]["spec"];
    let sa = pod["serviceAccountName"].as_str().unwrap().to_string();
    let env = pod["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    (sa, env)
}

fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) {
    match r {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn the_charts_rbac_is_enough_and_no_more() {
    let g = Ground::new().await.unwrap();
    namespace(&g.client, RELEASE_NS).await.unwrap();
    // A short leader-election lease, so that renewals happen during the test.
    let docs = helm_template(
        RELEASE,
        RELEASE_NS,
        &[
            "--set",
            "leaderElection.leaseDuration=5",
            "--set",
            "leaseTTL=11",
        ],
    )
    .unwrap();
    let kinds = apply_rbac(&g.client, &docs).await;
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ServiceAccount"
        ]
    );

    // The ServiceAccount's identity, and the Deployment's configuration.
    let (sa, chart_env) = chart_env(&docs);
    let user = format!("system:serviceaccount:{RELEASE_NS}:{sa}");
    let sa_groups = format!("system:serviceaccounts:{RELEASE_NS}");
    let kubeconfig =
        g.cp.kubeconfig_for(
            &user,
            &["system:serviceaccounts", &sa_groups, "system:authenticated"],
        )
        .unwrap();
    let mut env: Vec<(String, String)> = chart_env
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "REGISTRAR_ETCD_ENDPOINTS" | "RUST_LOG"))
        .collect();
    let lease_name = env
        .iter()
        .find(|(k, _)| k == "REGISTRAR_LEADER_ELECTION_LEASE_NAME")
        .map(|(_, v)| v.clone())
        .expect("the chart enables leader election by default");
    assert!(env.contains(&("REGISTRAR_LEADER_ELECT".into(), "true".into())));
    env.push(("POD_NAME".into(), "registrar-0".into()));
    env.push(("POD_NAMESPACE".into(), RELEASE_NS.into()));
    env.push(("REGISTRAR_ETCD_ENDPOINTS".into(), g.etcd.endpoint()));
    env.push(("RUST_LOG".into(), "info,registrar=debug".into()));
    let op = start_operator_with(
        &["--kubeconfig".into(), kubeconfig.display().to_string()],
        &env,
    )
    .await
    .unwrap();

    // Leader election: the chart's Lease in the release namespace.
    let leases: Api<Lease> = Api::namespaced(g.client.clone(), RELEASE_NS);
    poll("the Lease held by registrar-0", DEADLINE, || {
        let leases = leases.clone();
        let lease_name = lease_name.clone();
        async move {
            let lease = leases.get(&lease_name).await.ok()?;
            (lease.spec?.holder_identity.as_deref() == Some("registrar-0")).then_some(())
        }
    })
    .await
    .unwrap();
    op.wait_metric("registrar_leader", |v| v == 1.0)
        .await
        .unwrap();

    // Keys, status, finalizer.
    g.publish_greeter(&[("p1", "127.0.0.151")]).await.unwrap();
    let reg = wait_reason(&g.client, &g.ns, "greeter", "Published")
        .await
        .unwrap();
    assert_eq!(reg.status.unwrap().ready_endpoints, 1);
    assert!(
        reg.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"registrar.dev/cleanup".to_string())
    );
    // The default cluster id is the kube-system namespace's UID (read with the chart's rule).
    let uid = Api::<Namespace>::all(g.client.clone())
        .get("kube-system")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let mut kv = g.kv.clone();
    let owner = kv.get(format!("{}/.owner", g.prefix), None).await.unwrap();
    assert_eq!(owner.kvs()[0].value_str().unwrap(), uid);

    // An Event about the registration.
    wait_event(&g.client, &g.ns, "Published", "greeter")
        .await
        .unwrap();

    // Delete: keys removed, finalizer released, object gone.
    let regs: Api<ServiceRegistration> = Api::namespaced(g.client.clone(), &g.ns);
    regs.delete("greeter", &DeleteParams::default())
        .await
        .unwrap();
    wait_keys(&g.kv, &g.prefix, &[]).await.unwrap();
    poll("the registration gone", DEADLINE, || {
        let regs = regs.clone();
        async move { regs.get_opt("greeter").await.ok()?.is_none().then_some(()) }
    })
    .await
    .unwrap();

    // The Lease was renewed (patched) at least once.
    poll("a renewal of the Lease", DEADLINE, || {
        let leases = leases.clone();
        let lease_name = lease_name.clone();
        async move {
            let spec = leases.get(&lease_name).await.ok()?.spec?;
            (spec.renew_time? != spec.acquire_time?).then_some(())
        }
    })
    .await
    .unwrap();

    // A graceful stop gives the Lease up.
    let mut op = op;
    op.process.terminate(std::time::Duration::from_secs(15));
    let lease = leases.get(&lease_name).await.unwrap();
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), None);

    // Nothing the operator tried was refused.
    let log = op.log_text();
    assert!(log.contains("Lease released"), "{log}");
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "the operator was refused something:\n{log}"
    );

    // And no more than that: the same identity is refused anything else.
    let sa_client = client_from_kubeconfig(&kubeconfig).await.unwrap();
    forbidden(
        "list secrets",
        Api::<Secret>::namespaced(sa_client.clone(), RELEASE_NS)
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "get a secret",
        Api::<Secret>::namespaced(sa_client.clone(), &g.ns)
            .get("anything")
            .await,
    );
    ready_pod(&g.client, &g.ns, "p2", json!({"app": "g"}), "127.0.0.152")
        .await
        .unwrap();
    let sa_pods: Api<Pod> = Api::namespaced(sa_client.clone(), &g.ns);
    forbidden(
        "delete a pod",
        sa_pods.delete("p2", &DeleteParams::default()).await,
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "intruder"},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/x"}]}
    }))
    .unwrap();
    forbidden(
        "create a pod",
        sa_pods.create(&PostParams::default(), &pod).await,
    );
    forbidden(
        "list namespaces",
        Api::<Namespace>::all(sa_client.clone())
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "get another namespace",
        Api::<Namespace>::all(sa_client.clone())
            .get("default")
            .await,
    );
    forbidden(
        "get another Lease",
        Api::<Lease>::namespaced(sa_client.clone(), "kube-system")
            .get("kube-scheduler")
            .await,
    );
    forbidden(
        "delete its own Lease",
        Api::<Lease>::namespaced(sa_client.clone(), RELEASE_NS)
            .delete(&lease_name, &DeleteParams::default())
            .await,
    );
    forbidden(
        "delete a registration",
        Api::<ServiceRegistration>::namespaced(sa_client.clone(), &g.ns)
            .delete("other", &DeleteParams::default())
            .await,
    );
    forbidden(
        "delete its ClusterRole",
        Api::<ClusterRole>::all(sa_client.clone())
            .delete(RELEASE, &DeleteParams::default())
            .await,
    );
    // Reads it needs work with the same identity (the refusals above are about the rules).
    assert!(sa_pods.list(&ListParams::default()).await.is_ok());
}
