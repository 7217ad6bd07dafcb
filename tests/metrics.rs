//! `/metrics` after real scenarios: the published-endpoints gauge matches etcd, reconciles,
//! transactions, lease grants, keepalive failures and the leader gauge move as they should.

mod support;

use registrar_testenv::poll;
use support::*;

#[tokio::test]
async fn metrics_follow_a_scenario() {
    let mut g = Ground::new().await.unwrap();
    let (op, keys) = g
        .greeter_with(&[
            ("p1", "127.0.0.121"),
            ("p2", "127.0.0.122"),
            ("p3", "127.0.0.123"),
        ])
        .await
        .unwrap();
    wait_reason(&g.client, &g.ns, "greeter", "Published")
        .await
        .unwrap();

    // The gauge equals the number of keys actually in etcd.
    let mut kv = g.kv.clone();
    let in_etcd = etcd_keys(&mut kv, &g.prefix).await.unwrap().len();
    assert_eq!(in_etcd, keys.len());
    op.wait_metric("registrar_published_endpoints", |v| v == in_etcd as f64)
        .await
        .unwrap();
    op.wait_metric("registrar_registrations", |v| v == 1.0)
        .await
        .unwrap();
    op.wait_metric(r#"registrar_reconciles_total{result="ok"}"#, |v| v > 0.0)
        .await
        .unwrap();
    op.wait_metric("registrar_leader", |v| v == 1.0)
        .await
        .unwrap();
    // Fed by the etcd writer's counters.
    op.wait_metric("registrar_etcd_lease_grants_total", |v| v == 1.0)
        .await
        .unwrap();
    op.wait_metric(r#"registrar_etcd_txns_total{result="ok"}"#, |v| v >= 1.0)
        .await
        .unwrap();
    op.wait_metric("registrar_etcd_txn_ops_total", |v| v >= keys.len() as f64)
        .await
        .unwrap();
    op.wait_metric("registrar_etcd_txn_duration_seconds_count", |v| v >= 1.0)
        .await
        .unwrap();
    op.wait_metric("registrar_propagation_latency_seconds_count", |v| {
        v >= keys.len() as f64
    })
    .await
    .unwrap();
    let text = op.metrics().await.unwrap();
    let sum = metric(&text, "registrar_etcd_txn_duration_seconds_sum").unwrap();
    assert!(sum > 0.0 && sum < 10.0, "txn latency sum {sum}");
    assert_eq!(
        metric(&text, "registrar_etcd_keepalive_failures_total"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, r#"registrar_errors_total{kind="etcd"}"#),
        Some(0.0)
    );

    // The pods turned Ready after the initial sync: each change was timed from its watch
    // event to its txn's commit.
    op.wait_metric("registrar_operator_latency_seconds_count", |v| v >= 1.0)
        .await
        .unwrap();
    let text = op.metrics().await.unwrap();
    let before = metric(&text, "registrar_operator_latency_seconds_count").unwrap();

    // One pod leaves: the gauge follows etcd.
    set_ready(&g.client, &g.ns, "p3", "127.0.0.123", false)
        .await
        .unwrap();
    wait_keys(&g.kv, &g.prefix, &[&keys[0], &keys[1]])
        .await
        .unwrap();
    op.wait_metric("registrar_published_endpoints", |v| v == 2.0)
        .await
        .unwrap();
    // The removal was timed too, from its pod event to the delete's commit.
    op.wait_metric("registrar_operator_latency_seconds_count", |v| v > before)
        .await
        .unwrap();
    let text = op.metrics().await.unwrap();
    let count = metric(&text, "registrar_operator_latency_seconds_count").unwrap();
    let sum = metric(&text, "registrar_operator_latency_seconds_sum").unwrap();
    let sub_ms = metric(
        &text,
        r#"registrar_operator_latency_seconds_bucket{le="0.001"}"#,
    );
    eprintln!(
        "operator latency: {count} changes, mean {:.2} ms, {sub_ms:?} under 1 ms",
        sum / count * 1e3
    );
    assert!(
        sum > 0.0 && sum / count < 10.0,
        "operator latency sum {sum} over {count}"
    );

    // etcd goes away: keepalives fail and are counted; etcd comes back: the lease survived.
    g.etcd.stop().await.unwrap();
    op.wait_metric("registrar_etcd_keepalive_failures_total", |v| v >= 1.0)
        .await
        .unwrap();
    g.etcd.restart().await.unwrap();
    let kv = g.etcd.client().await.unwrap();
    wait_reason(&g.client, &g.ns, "greeter", "Published")
        .await
        .unwrap();

    // The lease is lost (revoked, as an expiry would): a second grant, every key put again.
    let leases = poll("one lease under the prefix", DEADLINE, || async {
        let l = leases_under(&kv, &g.prefix).await.ok()?;
        (l.len() == 1 && l[0] != 0).then_some(l)
    })
    .await
    .unwrap();
    let grants = op
        .metric("registrar_etcd_lease_grants_total")
        .await
        .unwrap();
    let mut kv2 = kv.clone();
    kv2.lease_revoke(leases[0]).await.unwrap();
    wait_keys(&kv, &g.prefix, &[&keys[0], &keys[1]])
        .await
        .unwrap();
    op.wait_metric("registrar_etcd_lease_grants_total", |v| v == grants + 1.0)
        .await
        .unwrap();
    op.wait_metric(r#"registrar_errors_total{kind="etcd_lease"}"#, |v| v >= 1.0)
        .await
        .unwrap();
    op.wait_metric("registrar_published_endpoints", |v| v == 2.0)
        .await
        .unwrap();
    assert!(op.log_text().contains("granted etcd lease"));
}
