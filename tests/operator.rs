//! The operator against a real kube-apiserver and a real etcd: each behaviour of the README contract (resource, endpoints, etcd layout, leases and writes),
//! asserted on the exact keys and values in etcd and on the registration's status.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use registrar::crd::ServiceRegistration;
use registrar_testenv::poll;
use serde_json::{Value, json};
use support::*;

fn spec(app: &str) -> Value {
    json!({"selector": {"matchLabels": {"app": app}}, "port": 50051})
}

#[tokio::test]
async fn pod_readiness_drives_the_key_with_the_exact_value() {
    let g = Ground::new().await.unwrap();
    let _op = g.operator().await.unwrap();
    let mut s = spec("greeter");
    s["metadata"] = json!({"tier": "gold"});
    create_reg(&g.client, &g.ns, "greeter", s).await.unwrap();
    ready_pod(
        &g.client,
        &g.ns,
        "p1",
        json!({"app": "greeter"}),
        "127.0.0.11",
    )
    .await
    .unwrap();

    let key = g.key("greeter", "127.0.0.11:50051");
    let keys = wait_keys(&g.kv, &g.prefix, &[&key]).await.unwrap();
    let raw = &keys[&key];
    assert!(
        raw.starts_with(r#"{"Op":0,"Addr":"127.0.0.11:50051","Metadata":{"#),
        "{raw}"
    );
    let value: Value = serde_json::from_str(raw).unwrap();
    assert_eq!(
        value,
        json!({"Op": 0, "Addr": "127.0.0.11:50051", "Metadata": {"tier": "gold", "pod": "p1", "node": "node-1"}})
    );
    let reg = wait_reason(&g.client, &g.ns, "greeter", "Published")
        .await
        .unwrap();
    let st = reg.status.unwrap();
    assert_eq!(st.ready_endpoints, 1);
    assert_eq!(st.target, Some(format!("registrar/{}/greeter", g.ns)));
    assert_eq!(st.endpoints, vec!["127.0.0.11:50051".to_string()]);
    // The finalizer is added by its own patch, which may land just after the status (a status
    // write moves the resourceVersion that patch is guarded by; the next event retries it).
    let regs: Api<ServiceRegistration> = Api::namespaced(g.client.clone(), &g.ns);
    poll("the cleanup finalizer", DEADLINE, || async {
        let reg = regs.get("greeter").await.ok()?;
        reg.metadata
            .finalizers?
            .contains(&"registrar.dev/cleanup".to_string())
            .then_some(())
    })
    .await
    .unwrap();

    // Not Ready: removed.
    set_ready(&g.client, &g.ns, "p1", "127.0.0.11", false)
        .await
        .unwrap();
    wait_keys(&g.kv, &g.prefix, &[]).await.unwrap();
    let reg = wait_reason(&g.client, &g.ns, "greeter", "NoReadyPods")
        .await
        .unwrap();
    let st = reg.status.unwrap();
    assert_eq!(st.ready_endpoints, 0);
    assert!(
        st.endpoints.is_empty(),
        "stale endpoints: {:?}",
        st.endpoints
    );

    // Ready again, then terminating (a pod bound to a node waits for its kubelet): removed.
    set_ready(&g.client, &g.ns, "p1", "127.0.0.11", true)
        .await
        .unwrap();
    wait_keys(&g.kv, &g.prefix, &[&key]).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(g.client.clone(), &g.ns);
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    let p = pods.get("p1").await.unwrap();
    assert!(
        p.metadata.deletion_timestamp.is_some(),
        "pod should be terminating"
    );
    wait_keys(&g.kv, &g.prefix, &[]).await.unwrap();

    // A second pod, then deleted outright: removed.
    ready_pod(
        &g.client,
        &g.ns,
        "p2",
        json!({"app": "greeter"}),
        "127.0.0.12",
    )
    .await
    .unwrap();
    wait_keys(&g.kv, &g.prefix, &[&g.key("greeter", "127.0.0.12:50051")])
        .await
        .unwrap();
    pods.delete("p2", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_keys(&g.kv, &g.prefix, &[]).await.unwrap();
}

#[tokio::test]
async fn spec_changes_replace_old_keys() {
    let g = Ground::new().await.unwrap();
    let _op = g.operator().await.unwrap();
    create_reg(
        &g.client,
        &g.ns,
        "svc",
        json!({"selector": {"matchLabels": {"app": "a"}}, "port": 8080}),
    )
    .await
    .unwrap();
    ready_pod(
        &g.client,
        &g.ns,
        "p1",
        json!({"app": "a", "tier": "x"}),
        "127.0.0.21",
    )
    .await
    .unwrap();
    ready_pod(
        &g.client,
        &g.ns,
        "p2",
        json!({"app": "b", "tier": "x"}),
        "127.0.0.22",
    )
    .await
    .unwrap();
    wait_keys(&g.kv, &g.prefix, &[&g.key("svc", "127.0.0.21:8080")])
        .await
        .unwrap();

    // Number -> named port (resolved per pod: grpc = 50051).
    patch_reg(&g.client, &g.ns, "svc", json!({"port": "grpc"}))
        .await
        .unwrap();
    wait_keys(&g.kv, &g.prefix, &[&g.key("svc", "127.0.0.21:50051")])
        .await
        .unwrap();

    // Metadata change rewrites the value ("zone" is reserved now: the operator sets it from
    // the node; "rack" is the user's own key).
    patch_reg(&g.client, &g.ns, "svc", json!({"metadata": {"rack": "z1"}}))
        .await
        .unwrap();
    let key = g.key("svc", "127.0.0.21:50051");
    let kv = g.kv.clone();
    poll("metadata in value", DEADLINE, || {
        let mut kv = kv.clone();
        let key = key.clone();
        let prefix = g.prefix.clone();
        async move {
            let keys = etcd_keys(&mut kv, &prefix).await.ok()?;
            keys.get(&key)?.contains(r#""rack":"z1""#).then_some(())
        }
    })
    .await
    .unwrap();

    // Selector change: matchExpressions select both pods.
    patch_reg(
        &g.client,
        &g.ns,
        "svc",
        json!({"selector": {"matchLabels": null, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}]}}),
    )
    .await
    .unwrap();
    wait_keys(
        &g.kv,
        &g.prefix,
        &[
            &g.key("svc", "127.0.0.21:50051"),
            &g.key("svc", "127.0.0.22:50051"),
        ],
    )
    .await
    .unwrap();

    // Service rename: the old target disappears, the new one appears.
    patch_reg(&g.client, &g.ns, "svc", json!({"service": "renamed"}))
        .await
        .unwrap();
    wait_keys(
        &g.kv,
        &g.prefix,
        &[
            &g.key("renamed", "127.0.0.21:50051"),
            &g.key("renamed", "127.0.0.22:50051"),
        ],
    )
    .await
    .unwrap();
    let reg = wait_reason(&g.client, &g.ns, "svc", "Published")
        .await
        .unwrap();
    assert_eq!(
        reg.status.unwrap().target,
        Some(format!("registrar/{}/renamed", g.ns))
    );
    // A spec change that publishes the same endpoints still moves observedGeneration.
    patch_reg(&g.client, &g.ns, "svc", json!({"publishNotReady": true}))
        .await
        .unwrap();
    let regs: Api<ServiceRegistration> = Api::namespaced(g.client.clone(), &g.ns);
    poll("observedGeneration caught up", DEADLINE, || {
        let regs = regs.clone();
        async move {
            let reg = regs.get("svc").await.ok()?;
            (reg.status?.observed_generation == reg.metadata.generation).then_some(())
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn registrations_sharing_a_target_are_unioned_and_deleted_separately() {
    let g = Ground::new().await.unwrap();
    let _op = g.operator().await.unwrap();
    for (name, app) in [("a", "a"), ("b", "b")] {
        let mut s = spec(app);
        s["service"] = json!("shared");
        create_reg(&g.client, &g.ns, name, s).await.unwrap();
    }
    ready_pod(&g.client, &g.ns, "pa", json!({"app": "a"}), "127.0.0.31")
        .await
        .unwrap();
    ready_pod(&g.client, &g.ns, "pb", json!({"app": "b"}), "127.0.0.32")
        .await
        .unwrap();
    let ka = g.key("shared", "127.0.0.31:50051");
    let kb = g.key("shared", "127.0.0.32:50051");
    wait_keys(&g.kv, &g.prefix, &[&ka, &kb]).await.unwrap();

    let regs: Api<ServiceRegistration> = Api::namespaced(g.client.clone(), &g.ns);
    regs.delete("a", &DeleteParams::default()).await.unwrap();
    wait_keys(&g.kv, &g.prefix, &[&kb]).await.unwrap();
    // The finalizer was released after the keys left etcd: the object is gone.
    poll("registration a gone", DEADLINE, || {
        let regs = regs.clone();
        async move { regs.get_opt("a").await.ok()?.is_none().then_some(()) }
    })
    .await
    .unwrap();
    assert!(regs.get_opt("b").await.unwrap().is_some());
}

#[tokio::test]
async fn same_service_in_two_namespaces_are_two_targets() {
    let g = Ground::new().await.unwrap();
    let _op = g.operator().await.unwrap();
    let other = registrar_testenv::unique_name("other");
    namespace(&g.client, &other).await.unwrap();
    create_reg(&g.client, &g.ns, "greeter", spec("g"))
        .await
        .unwrap();
    create_reg(&g.client, &other, "greeter", spec("g"))
        .await
        .unwrap();
    ready_pod(&g.client, &g.ns, "p1", json!({"app": "g"}), "127.0.0.41")
        .await
        .unwrap();
    ready_pod(&g.client, &other, "p1", json!({"app": "g"}), "127.0.0.42")
        .await
        .unwrap();
    let mine = g.key("greeter", "127.0.0.41:50051");
    let theirs = format!("registrar/{other}/greeter/127.0.0.42:50051");
    let mut want = [mine.as_str(), theirs.as_str()];
    want.sort();
    wait_keys(&g.kv, &g.prefix, &want).await.unwrap();
    Api::<ServiceRegistration>::namespaced(g.client.clone(), &other)
        .delete("greeter", &DeleteParams::default())
        .await
        .unwrap();
    wait_keys(&g.kv, &g.prefix, &[&mine]).await.unwrap();
}

#[tokio::test]
async fn keys_deleted_or_altered_by_hand_come_back() {
    let g = Ground::new().await.unwrap();
    let (_op, keys) = g.greeter_with(&[("p1", "127.0.0.51")]).await.unwrap();
    let key = keys[0].clone();
    let original = wait_keys(&g.kv, &g.prefix, &[&key]).await.unwrap()[&key].clone();

    let mut kv = g.kv.clone();
    kv.delete(key.as_str(), None).await.unwrap();
    wait_keys(&g.kv, &g.prefix, &[&key]).await.unwrap();

    kv.put(
        key.as_str(),
        r#"{"Op":0,"Addr":"127.0.0.99:1","Metadata":null}"#,
        None,
    )
    .await
    .unwrap();
    let restored = poll("value restored", DEADLINE, || {
        let mut kv = kv.clone();
        let key = key.clone();
        let original = original.clone();
        async move {
            let v = kv.get(key.as_str(), None).await.ok()?;
            let v = v.kvs().first()?.value_str().ok()?.to_string();
            (v == original).then_some(v)
        }
    })
    .await
    .unwrap();
    assert_eq!(restored, original);
    // A stray key under a target is removed too.
    let stray = g.key("greeter", "127.0.0.98:1");
    kv.put(
        stray.as_str(),
        r#"{"Op":0,"Addr":"127.0.0.98:1","Metadata":null}"#,
        None,
    )
    .await
    .unwrap();
    wait_keys(&g.kv, &g.prefix, &[&key]).await.unwrap();
}

/// Every key under `prefix/` is attached to a lease that etcd still has.
async fn all_on_a_live_lease(kv: &etcd_client::Client, prefix: &str) -> Option<i64> {
    let leases = leases_under(kv, prefix).await.ok()?;
    let [lease] = leases[..] else { return None };
    let ttl = kv.clone().lease_time_to_live(lease, None).await.ok()?;
    (lease != 0 && ttl.ttl() > 0).then_some(lease)
}

#[tokio::test]
async fn etcd_outage_longer_than_the_lease_ttl_then_changes_made_meanwhile_are_published() {
    let mut g = Ground::new().await.unwrap();
    let (_op, keys) = g.greeter_with(&[("p1", "127.0.0.61")]).await.unwrap();
    let k1 = keys[0].clone();

    g.etcd.stop().await.unwrap();
    wait_reason(&g.client, &g.ns, "greeter", "EtcdUnavailable")
        .await
        .unwrap();
    ready_pod(&g.client, &g.ns, "p2", json!({"app": "g"}), "127.0.0.62")
        .await
        .unwrap();
    // The outage itself lasts longer than the 3 s TTL (this sleep is the scenario, not a wait).
    tokio::time::sleep(Duration::from_secs(5)).await;
    g.etcd.restart().await.unwrap();
    let kv = g.etcd.client().await.unwrap();
    wait_keys(
        &kv,
        &g.prefix,
        &[&k1, &g.key("greeter", "127.0.0.62:50051")],
    )
    .await
    .unwrap();
    poll("every key on one live lease", DEADLINE, || {
        all_on_a_live_lease(&kv, &g.prefix)
    })
    .await
    .unwrap();
    wait_reason(&g.client, &g.ns, "greeter", "Published")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_lost_lease_is_replaced_and_every_key_put_again() {
    let g = Ground::new().await.unwrap();
    let (_op, keys) = g
        .greeter_with(&[("p1", "127.0.0.63"), ("p2", "127.0.0.64")])
        .await
        .unwrap();
    let want: Vec<&str> = keys.iter().map(String::as_str).collect();
    let old = poll("one live lease", DEADLINE, || {
        all_on_a_live_lease(&g.kv, &g.prefix)
    })
    .await
    .unwrap();

    // The lease expires (revoked here, as an expiry during a partition would): keys vanish.
    let mut kv = g.kv.clone();
    kv.lease_revoke(old).await.unwrap();
    wait_keys(&g.kv, &g.prefix, &want).await.unwrap();
    let new = poll("a new live lease", DEADLINE, || async {
        all_on_a_live_lease(&g.kv, &g.prefix)
            .await
            .filter(|l| *l != old)
    })
    .await
    .unwrap();
    assert_ne!(new, old);
}

#[tokio::test]
async fn etcd_wiped_gets_every_key_back() {
    let mut g = Ground::new().await.unwrap();
    let (_op, keys) = g
        .greeter_with(&[("p1", "127.0.0.71"), ("p2", "127.0.0.72")])
        .await
        .unwrap();
    let want: Vec<&str> = keys.iter().map(String::as_str).collect();
    g.etcd.wipe().await.unwrap();
    let kv = g.etcd.client().await.unwrap();
    wait_keys(&kv, &g.prefix, &want).await.unwrap();
    // The ownership claim is back too.
    let mut kv2 = kv.clone();
    let owner = kv2.get("registrar/.owner", None).await.unwrap();
    assert_eq!(owner.kvs()[0].value_str().unwrap(), "cluster-a");
}

#[tokio::test]
async fn operator_restart_never_drops_a_ready_key_and_reaps_vanished_pods() {
    let g = Ground::new().await.unwrap();
    let (mut op, keys) = g
        .greeter_with(&[("stays", "127.0.0.81"), ("goes", "127.0.0.82")])
        .await
        .unwrap();
    let (stays, goes) = (keys[0].clone(), keys[1].clone());
    let mut deletes = watch_deletes(&g.kv, &g.prefix).await.unwrap();

    // Graceful stop: the lease is not revoked, keys stay.
    op.process.terminate(Duration::from_secs(10));
    assert!(op.log_text().contains("shutting down"));
    Api::<Pod>::namespaced(g.client.clone(), &g.ns)
        .delete("goes", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let mut kv = g.kv.clone();
    assert_eq!(
        etcd_keys(&mut kv, &g.prefix).await.unwrap().len(),
        2,
        "keys must survive a graceful stop"
    );

    let _op2 = g.operator().await.unwrap();
    wait_keys(&g.kv, &g.prefix, &[&stays]).await.unwrap();
    let mut deleted = Vec::new();
    while let Ok(k) = deletes.try_recv() {
        deleted.push(k);
    }
    assert_eq!(
        deleted,
        vec![goes],
        "only the vanished pod's key may be deleted"
    );
}

#[tokio::test]
async fn apiserver_restart_causes_no_deletes() {
    let mut g = Ground::new().await.unwrap();
    let (_op, keys) = g.greeter_with(&[("p1", "127.0.0.91")]).await.unwrap();
    let k1 = keys[0].clone();
    let mut deletes = watch_deletes(&g.kv, &g.prefix).await.unwrap();

    g.cp.restart_apiserver().await.unwrap();
    let client = g.cp.client().await.unwrap();
    // A change made after the restart is published: the operator's watches are back.
    ready_pod(&client, &g.ns, "p2", json!({"app": "g"}), "127.0.0.92")
        .await
        .unwrap();
    wait_keys(
        &g.kv,
        &g.prefix,
        &[&k1, &g.key("greeter", "127.0.0.92:50051")],
    )
    .await
    .unwrap();
    assert!(deletes.try_recv().is_err(), "the relist deleted keys");
}

#[tokio::test]
async fn a_prefix_owned_by_another_cluster_is_left_alone() {
    let g = Ground::new().await.unwrap();
    let mut kv = g.kv.clone();
    kv.put("registrar/.owner", "cluster-b", None).await.unwrap();
    let _op = g.operator().await.unwrap();
    create_reg(&g.client, &g.ns, "greeter", spec("g"))
        .await
        .unwrap();
    ready_pod(&g.client, &g.ns, "p1", json!({"app": "g"}), "127.0.0.101")
        .await
        .unwrap();
    let reg = wait_reason(&g.client, &g.ns, "greeter", "PrefixOwnedElsewhere")
        .await
        .unwrap();
    let cond = ready_condition(&reg);
    assert!(cond.message.contains("cluster-b"), "{}", cond.message);
    assert!(etcd_keys(&mut kv, &g.prefix).await.unwrap().is_empty());
    let owner = kv.get("registrar/.owner", None).await.unwrap();
    assert_eq!(owner.kvs()[0].value_str().unwrap(), "cluster-b");
}

#[tokio::test]
async fn a_missing_named_port_is_a_condition_and_an_event() {
    let g = Ground::new().await.unwrap();
    let _op = g.operator().await.unwrap();
    create_reg(
        &g.client,
        &g.ns,
        "greeter",
        json!({"selector": {"matchLabels": {"app": "g"}}, "port": "http"}),
    )
    .await
    .unwrap();
    ready_pod(&g.client, &g.ns, "p1", json!({"app": "g"}), "127.0.0.111")
        .await
        .unwrap();
    let reg = wait_reason(&g.client, &g.ns, "greeter", "PortNotFound")
        .await
        .unwrap();
    let cond = ready_condition(&reg);
    assert!(cond.message.contains("p1"), "{}", cond.message);
    wait_event(&g.client, &g.ns, "PortNotFound", "greeter")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_registration_deleted_while_the_operator_is_down_is_released_after_restart() {
    let g = Ground::new().await.unwrap();
    let (mut op, _keys) = g.greeter_with(&[("p1", "127.0.0.121")]).await.unwrap();
    // A second registration that selects nothing, in the same namespace.
    create_reg(&g.client, &g.ns, "idle", spec("nobody"))
        .await
        .unwrap();
    let regs: Api<ServiceRegistration> = Api::namespaced(g.client.clone(), &g.ns);
    poll("finalizers added", DEADLINE, || {
        let regs = regs.clone();
        async move {
            let all = regs.list(&ListParams::default()).await.ok()?;
            all.items
                .iter()
                .all(|r| {
                    r.metadata
                        .finalizers
                        .as_ref()
                        .is_some_and(|f| !f.is_empty())
                })
                .then_some(())
        }
    })
    .await
    .unwrap();
    op.process.terminate(Duration::from_secs(10));
    regs.delete("greeter", &DeleteParams::default())
        .await
        .unwrap();
    regs.delete("idle", &DeleteParams::default()).await.unwrap();

    let _op2 = g.operator().await.unwrap();
    wait_keys(&g.kv, &g.prefix, &[]).await.unwrap();
    poll("both registrations gone", DEADLINE, || {
        let regs = regs.clone();
        async move {
            let all = regs.list(&ListParams::default()).await.ok()?;
            all.items.is_empty().then_some(())
        }
    })
    .await
    .unwrap();
}

/// A registration deleted while etcd is down waits (its keys cannot be removed) and says so: a
/// Terminating condition with the reason and the way out, and a DeletionBlocked Event; once
/// etcd is back its keys leave and the object is gone.
#[tokio::test]
async fn a_deletion_blocked_by_etcd_is_visible_and_completes_when_etcd_is_back() {
    let mut g = Ground::new().await.unwrap();
    let (_op, keys) = g.greeter_with(&[("p1", "127.0.0.65")]).await.unwrap();
    g.etcd.stop().await.unwrap();
    wait_reason(&g.client, &g.ns, "greeter", "EtcdUnavailable")
        .await
        .unwrap();
    let regs: Api<ServiceRegistration> = Api::namespaced(g.client.clone(), &g.ns);
    regs.delete("greeter", &DeleteParams::default())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let cond = poll("a Terminating condition", DEADLINE, || {
        let regs = regs.clone();
        async move {
            let reg = regs.get_opt("greeter").await.ok()??;
            reg.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Terminating")
        }
    })
    .await
    .unwrap();
    println!(
        "Terminating after {:?}: {} {}: {}",
        started.elapsed(),
        cond.status,
        cond.reason,
        cond.message
    );
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", "EtcdUnavailable")
    );
    let target = format!("{}/{}/greeter/", g.prefix, g.ns);
    assert!(
        cond.message
            .contains(&format!("etcdctl del --prefix {target}")),
        "{}",
        cond.message
    );
    assert!(
        cond.message.contains("/metadata/finalizers"),
        "{}",
        cond.message
    );
    wait_event(&g.client, &g.ns, "DeletionBlocked", "greeter")
        .await
        .unwrap();
    assert!(
        regs.get_opt("greeter").await.unwrap().is_some(),
        "deleted while its keys could not be removed"
    );

    g.etcd.restart().await.unwrap();
    let kv = g.etcd.client().await.unwrap();
    wait_keys(&kv, &g.prefix, &[]).await.unwrap();
    poll("the registration gone", DEADLINE, || {
        let regs = regs.clone();
        async move { regs.get_opt("greeter").await.ok()?.is_none().then_some(()) }
    })
    .await
    .unwrap();
    println!(
        "{} removed, then the registration, {:?} after the delete",
        keys[0],
        started.elapsed()
    );
}
