//! Status writes against a real kube-apiserver and a real etcd: the status of a registration
//! ends up describing what etcd holds, however its writes race (a slow API server reached
//! through a delaying proxy), during an etcd outage, and after someone else rewrote it.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use registrar::crd::ServiceRegistration;
use registrar_testenv::DelayProxy;
use registrar_testenv::poll;
use serde_json::json;
use support::proxy::kubeconfig_via;
use support::*;

/// `(readyEndpoints, endpoints)` of the registration as the API server shows it.
async fn shown(api: &Api<ServiceRegistration>, name: &str) -> Option<(i64, BTreeSet<String>)> {
    let st = api.get(name).await.ok()?.status?;
    Some((st.ready_endpoints, st.endpoints.into_iter().collect()))
}

/// Waits until the status shows exactly `want` (addresses); the time it took.
async fn wait_status(
    api: &Api<ServiceRegistration>,
    name: &str,
    want: &BTreeSet<String>,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let n = want.len() as i64;
    let res = poll(
        &format!("status of {name} showing {want:?}"),
        deadline,
        || async {
            let (count, endpoints) = shown(api, name).await?;
            (count == n && &endpoints == want).then_some(())
        },
    )
    .await;
    match res {
        Ok(()) => Ok(started.elapsed()),
        Err(e) => anyhow::bail!("{e}; status now: {:?}", shown(api, name).await),
    }
}

/// Issue 9: many quick readiness changes of one registration's pods, with the operator's API
/// traffic delayed by a random 0–150 ms per chunk (so concurrent status patches may land out
/// of order). After each burst the status must settle on what etcd holds, well before any
/// periodic resync (60 s by default) could repair it.
#[tokio::test]
async fn status_follows_bursts_of_readiness_changes_through_a_slow_api_server() {
    let g = Ground::new().await.unwrap();
    let api_port: u16 = g.cp.url().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = DelayProxy::start(api_port, Duration::from_millis(150))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = g.options();
    opts.kubeconfig =
        Some(kubeconfig_via(g.cp.kubeconfig(), api_port, proxy.port, dir.path()).unwrap());
    let _op = Operator::start(&g.cp, &g.etcd, &opts).await.unwrap();

    let pods: Vec<(String, String)> = (0..6)
        .map(|i| (format!("p{i}"), format!("127.0.0.{}", 151 + i)))
        .collect();
    let named: Vec<(&str, &str)> = pods
        .iter()
        .map(|(n, ip)| (n.as_str(), ip.as_str()))
        .collect();
    g.publish_greeter(&named).await.unwrap();
    let api: Api<ServiceRegistration> = Api::namespaced(g.client.clone(), &g.ns);
    let mut ready = vec![true; pods.len()];
    let all: BTreeSet<String> = pods.iter().map(|(_, ip)| format!("{ip}:50051")).collect();
    wait_status(&api, "greeter", &all, DEADLINE).await.unwrap();

    let rounds = 8;
    let flips = 24;
    let mut settle = Vec::new();
    for round in 0..rounds {
        for _ in 0..flips {
            let i = rand::random_range(0..pods.len());
            ready[i] = !ready[i];
            set_ready(&g.client, &g.ns, &pods[i].0, &pods[i].1, ready[i])
                .await
                .unwrap();
            // The pace of the burst (the scenario, not a wait): changes land in different
            // coalescing windows (50 ms), so status patches overlap in the slow API.
            tokio::time::sleep(Duration::from_millis(rand::random_range(5..60))).await;
        }
        let want: BTreeSet<String> = pods
            .iter()
            .zip(&ready)
            .filter(|(_, r)| **r)
            .map(|((_, ip), _)| format!("{ip}:50051"))
            .collect();
        let keys: Vec<String> = want.iter().map(|a| g.key("greeter", a)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        wait_keys(&g.kv, &g.prefix, &keys).await.unwrap();
        let took = wait_status(&api, "greeter", &want, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("round {round}: etcd holds {want:?}, but: {e}"));
        settle.push(took);
    }
    println!(
        "{rounds} bursts of {flips} readiness flips via a 0-150 ms delaying proxy ({} API connections): \
         status matched etcd after {settle:.2?} (from the moment etcd matched)",
        proxy.accepted.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Issue 10 §3: during an etcd outage, a pod that turns Ready is not in etcd, so it is not
/// counted in `readyEndpoints` or listed in `endpoints` (the Ready condition says it waits);
/// once etcd is back and the key written, the status counts it.
#[tokio::test]
async fn status_counts_only_what_etcd_holds_during_an_outage() {
    let mut g = Ground::new().await.unwrap();
    let (_op, keys) = g.greeter_with(&[("p1", "127.0.0.161")]).await.unwrap();
    let api: Api<ServiceRegistration> = Api::namespaced(g.client.clone(), &g.ns);
    let one: BTreeSet<String> = ["127.0.0.161:50051".to_string()].into();
    wait_status(&api, "greeter", &one, DEADLINE).await.unwrap();

    g.etcd.stop().await.unwrap();
    wait_reason(&g.client, &g.ns, "greeter", "EtcdUnavailable")
        .await
        .unwrap();
    ready_pod(&g.client, &g.ns, "p2", json!({"app": "g"}), "127.0.0.162")
        .await
        .unwrap();
    // The operator saw the new pod once the condition counts it as waiting.
    let reg = poll("the new pod counted as waiting", DEADLINE, || async {
        let reg = api.get("greeter").await.ok()?;
        ready_condition(&reg)
            .message
            .contains("2 endpoints waiting")
            .then_some(reg)
    })
    .await
    .unwrap();
    let st = reg.status.unwrap();
    println!(
        "during the outage: readyEndpoints {}, endpoints {:?}, condition {:?}",
        st.ready_endpoints,
        st.endpoints,
        ready_condition(&api.get("greeter").await.unwrap()).message
    );
    assert_eq!(
        st.ready_endpoints, 1,
        "counts an endpoint etcd does not hold"
    );
    assert_eq!(st.endpoints, vec!["127.0.0.161:50051".to_string()]);

    g.etcd.restart().await.unwrap();
    let kv = g.etcd.client().await.unwrap();
    let k2 = g.key("greeter", "127.0.0.162:50051");
    wait_keys(&kv, &g.prefix, &[&keys[0], &k2]).await.unwrap();
    let two: BTreeSet<String> = ["127.0.0.161:50051".into(), "127.0.0.162:50051".into()].into();
    let took = wait_status(&api, "greeter", &two, DEADLINE).await.unwrap();
    println!("after etcd came back: status showed both endpoints {took:.2?} after etcd held them");
    wait_reason(&g.client, &g.ns, "greeter", "Published")
        .await
        .unwrap();
}

/// A status rewritten by someone else is put right by the periodic resync (2 s here), even
/// though nothing about the registration changed.
#[tokio::test]
async fn a_status_rewritten_by_someone_else_is_put_right_by_the_resync() {
    let g = Ground::new().await.unwrap();
    let mut opts = g.options();
    opts.env
        .push(("REGISTRAR_STATUS_RESYNC_SECONDS".into(), "2".into()));
    let op = Operator::start(&g.cp, &g.etcd, &opts).await.unwrap();
    g.publish_greeter(&[("p1", "127.0.0.171")]).await.unwrap();
    let api: Api<ServiceRegistration> = Api::namespaced(g.client.clone(), &g.ns);
    let one: BTreeSet<String> = ["127.0.0.171:50051".to_string()].into();
    wait_status(&api, "greeter", &one, DEADLINE).await.unwrap();

    api.patch_status(
        "greeter",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"readyEndpoints": 99, "endpoints": ["192.0.2.1:1"]}})),
    )
    .await
    .unwrap();
    assert_eq!(shown(&api, "greeter").await.unwrap().0, 99);
    let took = wait_status(&api, "greeter", &one, DEADLINE).await.unwrap();
    // Two more resync periods (the quiet period is the assertion): a status that matches is
    // not rewritten again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rewrites = op.log_text().matches("status resync: rewrote").count();
    println!(
        "a status rewritten by hand was put right after {took:.2?} (resync every 2 s); \
         resync rewrites in the log: {rewrites}"
    );
    assert_eq!(
        rewrites, 1,
        "the resync rewrites statuses that already match"
    );
}

/// Issue 10 §3 (hysteresis): etcd reached through a proxy whose link flaps (1.5 s cut, 1.5 s
/// open) must not flip the status and raise an Event per flap; a lasting outage, and the
/// recovery after it, each make one status change and one Event.
#[tokio::test]
async fn a_flapping_etcd_makes_one_status_change_per_stable_change() {
    let g = Ground::new().await.unwrap();
    let etcd_port: u16 = g
        .etcd
        .endpoint()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let link = DelayProxy::start(etcd_port, Duration::ZERO).await.unwrap();
    let args: Vec<String> = vec![
        "--kubeconfig".into(),
        g.cp.kubeconfig().display().to_string(),
        "--etcd-endpoints".into(),
        format!("http://127.0.0.1:{}", link.port),
        "--prefix".into(),
        g.prefix.clone(),
        "--cluster-id".into(),
        "cluster-a".into(),
        "--lease-ttl".into(),
        "3".into(),
    ];
    let op = start_operator_with(&args, &[]).await.unwrap();
    g.publish_greeter(&[("p1", "127.0.0.181")]).await.unwrap();
    wait_reason(&g.client, &g.ns, "greeter", "Published")
        .await
        .unwrap();

    // Every Ready reason the registration shows from now on, in order.
    let reasons = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = reasons.clone();
    let api: Api<ServiceRegistration> = Api::namespaced(g.client.clone(), &g.ns);
    let watch = {
        use futures::StreamExt;
        let stream = kube::runtime::watcher(
            api.clone(),
            kube::runtime::watcher::Config::default().fields("metadata.name=greeter"),
        );
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(kube::runtime::WatchStreamExt::applied_objects(stream));
            while let Some(Ok(reg)) = stream.next().await {
                let reason = reg
                    .status
                    .iter()
                    .flat_map(|s| s.conditions.iter())
                    .find(|c| c.type_ == "Ready")
                    .map(|c| c.reason.clone())
                    .unwrap_or_default();
                let mut seen = seen.lock().unwrap();
                if seen.last() != Some(&reason) {
                    seen.push(reason);
                }
            }
        })
    };

    let flaps = 6;
    for _ in 0..flaps {
        // The flapping itself (the scenario, not a wait).
        link.set_open(false);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        link.set_open(true);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let writer_flaps = op.log_text().matches("etcd unavailable").count();
    // A lasting outage, then a lasting recovery.
    link.set_open(false);
    wait_reason(&g.client, &g.ns, "greeter", "EtcdUnavailable")
        .await
        .unwrap();
    link.set_open(true);
    wait_reason(&g.client, &g.ns, "greeter", "Published")
        .await
        .unwrap();
    // Let the watch catch up with the last write.
    poll("the watch saw the recovery", DEADLINE, || async {
        let seen = reasons.lock().unwrap();
        (seen.len() >= 3 && seen.last().map(String::as_str) == Some("Published")).then_some(())
    })
    .await
    .unwrap();
    watch.abort();

    // Events as published (events.k8s.io): a repeated Event is one object with a series count.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(g.client.clone(), &g.ns);
    let list = events.list(&Default::default()).await.unwrap();
    let count = |reason: &str| -> i32 {
        list.items
            .iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("greeter")
            })
            .map(|e| e.series.as_ref().map_or(1, |s| s.count.max(1)))
            .sum()
    };
    let reasons = reasons.lock().unwrap().clone();
    println!(
        "{flaps} link flaps: {writer_flaps} log lines of the operator say etcd unavailable; \
         Ready reasons shown: {reasons:?}; Events: {} EtcdUnavailable, {} Published",
        count("EtcdUnavailable"),
        count("Published")
    );
    assert!(
        writer_flaps >= 2,
        "the link flaps did not make the writer flap: the test shows nothing"
    );
    assert_eq!(reasons, ["Published", "EtcdUnavailable", "Published"]);
    assert_eq!(count("EtcdUnavailable"), 1);
    // The registration was created before its pod (NoReadyPods, then Published), and the
    // recovery from the outage.
    assert_eq!(count("Published"), 2);
}
