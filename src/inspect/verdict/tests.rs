//! Table tests of the verdicts, and a property: the rows agree with the operator's own decision
//! and account for every key etcd holds, exactly once.

use super::*;
use proptest::prelude::*;
use serde_json::json;

const PREFIX: &str = "registrar";
const TARGET: &str = "registrar/shop/greeter";

fn reg(name: &str, port: serde_json::Value) -> ServiceRegistration {
    serde_json::from_value(json!({
        "apiVersion": "registrar.dev/v1alpha1", "kind": "ServiceRegistration",
        "metadata": {"name": name, "namespace": "shop", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"service": "greeter", "selector": {"matchLabels": {"app": "greeter"}}, "port": port}
    }))
    .unwrap()
}

/// A pod of `shop` labelled app=greeter with a port named `port_name` = 50051.
fn pod(name: &str, ip: Option<&str>, ready: bool, port_name: &str) -> Pod {
    let mut status = json!({"phase": "Running", "conditions": [
        {"type": "Ready", "status": if ready {"True"} else {"False"}}]});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "greeter"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "app",
            "ports": [{"name": port_name, "containerPort": 50051}]}]},
        "status": status,
    }))
    .unwrap()
}

fn entry(value: &str) -> EtcdEntry {
    EtcdEntry {
        value: value.to_string(),
        lease: 7,
        ttl: Some(20),
        mod_revision: 3,
    }
}

/// The value the operator writes for `pod` at `addr` (its own encoder and metadata).
fn wanted_value(r: &ServiceRegistration, p: &Pod) -> String {
    let nodes = nodes();
    match desired::pod_decision_on(r, p, &|n| nodes.get(n), None) {
        PodDecision::Endpoint(e) => e.value,
        other => panic!("not an endpoint: {other}"),
    }
}

fn run(
    r: &ServiceRegistration,
    others: &[ServiceRegistration],
    pods: &[Pod],
    etcd: &BTreeMap<String, EtcdEntry>,
    claim: &Claim,
) -> Vec<Row> {
    rows(&Input {
        prefix: PREFIX,
        registration: r,
        registrations: others,
        pods,
        etcd,
        claim,
        nodes: &nodes(),
        cluster: None,
    })
}

/// Node `n1` is in zone `zone-a` (no region).
fn nodes() -> BTreeMap<String, NodeTopology> {
    BTreeMap::from([(
        "n1".to_string(),
        NodeTopology {
            zone: Some("zone-a".to_string()),
            region: None,
        },
    )])
}

#[test]
fn each_verdict_from_its_situation() {
    let r = reg("greeter", json!("grpc"));
    let published = pod("a-published", Some("127.1.0.1"), true, "grpc");
    let not_ready = pod("b-not-ready", Some("127.1.0.2"), false, "grpc");
    let no_port = pod("c-no-port", Some("127.1.0.3"), true, "http");
    let missing = pod("d-missing", Some("127.1.0.4"), true, "grpc");
    let stale = pod("e-stale", Some("127.1.0.5"), true, "grpc");
    let no_ip = pod("f-no-ip", None, true, "grpc");
    let gone = pod("g-not-ready-but-held", Some("127.1.0.7"), false, "grpc");
    let pods = vec![
        published.clone(),
        not_ready,
        no_port,
        missing,
        stale,
        no_ip,
        gone,
    ];
    let mut etcd = BTreeMap::new();
    etcd.insert(
        format!("{TARGET}/127.1.0.1:50051"),
        entry(&wanted_value(&r, &published)),
    );
    etcd.insert(
        format!("{TARGET}/127.1.0.5:50051"),
        entry(r#"{"Op":0,"Addr":"127.1.0.5:50051","Metadata":null}"#),
    );
    etcd.insert(format!("{TARGET}/127.1.0.7:50051"), entry("{}"));
    etcd.insert(
        format!("{TARGET}/127.1.0.99:50051"),
        entry(r#"{"Op":0,"Addr":"127.1.0.99:50051","Metadata":{"pod":"old"}}"#),
    );
    // Another service's key is not this registration's business.
    etcd.insert("registrar/shop/greeter-2/127.1.0.8:1".into(), entry("{}"));

    let got = run(&r, &[], &pods, &etcd, &Claim::Ours);
    let table: Vec<(Option<&str>, Option<&str>, Verdict)> = got
        .iter()
        .map(|row| {
            (
                row.pod.as_ref().map(|p| p.name.as_str()),
                row.key.as_deref(),
                row.verdict,
            )
        })
        .collect();
    let k = |a: &str| format!("{TARGET}/{a}");
    assert_eq!(
        table,
        vec![
            (
                Some("a-published"),
                Some(k("127.1.0.1:50051").as_str()),
                Verdict::Published
            ),
            (Some("b-not-ready"), None, Verdict::NotReady),
            (Some("c-no-port"), None, Verdict::PortMissing),
            (
                Some("d-missing"),
                Some(k("127.1.0.4:50051").as_str()),
                Verdict::MissingInEtcd
            ),
            (
                Some("e-stale"),
                Some(k("127.1.0.5:50051").as_str()),
                Verdict::StaleInEtcd
            ),
            (Some("f-no-ip"), None, Verdict::NotReady),
            (
                Some("g-not-ready-but-held"),
                Some(k("127.1.0.7:50051").as_str()),
                Verdict::StaleInEtcd
            ),
            (
                None,
                Some(k("127.1.0.99:50051").as_str()),
                Verdict::StaleInEtcd
            ),
        ]
    );
    let port = got[2].pod.as_ref().unwrap();
    assert_eq!(port.port, None);
    assert!(port.port_error.as_deref().unwrap().contains("\"grpc\""));
    assert!(got[7].detail.contains("pod old"), "{}", got[7].detail);
    assert_eq!(got[0].pod.as_ref().unwrap().port, Some(50051));
    assert_eq!(got[0].pod.as_ref().unwrap().zone.as_deref(), Some("zone-a"));
    assert_eq!(got[0].etcd.as_ref().unwrap().lease, 7);
}

#[test]
fn a_prefix_owned_elsewhere_marks_every_key_but_not_the_pods_that_are_not_endpoints() {
    let r = reg("greeter", json!(50051));
    let pods = vec![
        pod("a", Some("127.1.0.1"), true, "grpc"),
        pod("b", Some("127.1.0.2"), false, "grpc"),
    ];
    let mut etcd = BTreeMap::new();
    etcd.insert(
        format!("{TARGET}/127.1.0.1:50051"),
        entry(&wanted_value(&r, &pods[0])),
    );
    etcd.insert(format!("{TARGET}/127.1.0.2:50051"), entry("{}"));
    let got = run(&r, &[], &pods, &etcd, &Claim::Elsewhere("cluster-b".into()));
    let verdicts: Vec<Verdict> = got.iter().map(|r| r.verdict).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::OwnedElsewhere,
            Verdict::NotReady,
            Verdict::OwnedElsewhere
        ]
    );
    assert!(got[0].detail.contains("cluster-b"));
}

#[test]
fn a_key_of_another_registration_of_the_same_service_is_published_not_stale() {
    let r = reg("greeter", json!("grpc"));
    let mut other = reg("greeter-canary", json!("grpc"));
    other.spec.selector =
        serde_json::from_value(json!({"matchLabels": {"app": "canary"}})).unwrap();
    let mut canary = pod("canary-0", Some("127.1.0.9"), true, "grpc");
    canary.metadata.labels = Some([("app".to_string(), "canary".to_string())].into());
    let pods = vec![canary.clone()];
    let mut etcd = BTreeMap::new();
    etcd.insert(
        format!("{TARGET}/127.1.0.9:50051"),
        entry(&wanted_value(&other, &canary)),
    );
    let got = run(&r, &[r.clone(), other.clone()], &pods, &etcd, &Claim::Free);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].verdict, Verdict::Published);
    assert!(got[0].pod.is_none());
    // Without the other registration, nobody wants it: stale.
    let got = run(&r, std::slice::from_ref(&r), &pods, &etcd, &Claim::Free);
    assert_eq!(got[0].verdict, Verdict::StaleInEtcd);
}

#[test]
fn the_claim_from_the_owner_key() {
    assert_eq!(claim(None, Some("a")), Claim::Free);
    assert_eq!(claim(None, None), Claim::Free);
    assert_eq!(claim(Some("a"), Some("a")), Claim::Ours);
    assert_eq!(claim(Some("b"), Some("a")), Claim::Elsewhere("b".into()));
    assert_eq!(claim(Some("b"), None), Claim::Unknown("b".into()));
}

#[test]
fn etcd_rows_judge_values_against_their_keys() {
    let mut etcd = BTreeMap::new();
    etcd.insert(
        format!("{TARGET}/127.1.0.1:50051"),
        entry(r#"{"Op":0,"Addr":"127.1.0.1:50051","Metadata":null}"#),
    );
    etcd.insert(
        format!("{TARGET}/127.1.0.2:50051"),
        entry(r#"{"Op":0,"Addr":"127.1.0.3:50051","Metadata":null}"#),
    );
    etcd.insert(format!("{TARGET}/127.1.0.4:50051"), entry("not json"));
    let verdicts: Vec<Verdict> = etcd_rows(TARGET, &etcd, &Claim::Free)
        .iter()
        .map(|r| r.verdict)
        .collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Published,
            Verdict::StaleInEtcd,
            Verdict::StaleInEtcd
        ]
    );
    assert!(
        etcd_rows(TARGET, &etcd, &Claim::Elsewhere("x".into()))
            .iter()
            .all(|r| r.verdict == Verdict::OwnedElsewhere)
    );
}

/// One generated pod: readiness, IP, port, what etcd holds for it.
#[derive(Clone, Debug)]
struct GenPod {
    ready: bool,
    has_ip: bool,
    has_port: bool,
    terminating: bool,
    /// 0: nothing in etcd; 1: the wanted value; 2: another value.
    held: u8,
}

fn gen_pod() -> impl Strategy<Value = GenPod> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(ready, has_ip, has_port, terminating, held)| GenPod {
            ready,
            has_ip,
            has_port,
            terminating,
            held,
        })
}

proptest! {
    #[test]
    fn rows_agree_with_the_operator_and_account_for_every_key(
        pods_gen in proptest::collection::vec(gen_pod(), 0..7),
        extra in proptest::collection::btree_set(100u8..110, 0..3),
        claim_kind in 0u8..3,
    ) {
        let r = reg("greeter", json!("grpc"));
        let mut pods = Vec::new();
        let mut etcd = BTreeMap::new();
        for (i, g) in pods_gen.iter().enumerate() {
            let ip = format!("127.1.0.{}", i + 1);
            let mut p = pod(&format!("p{i}"), g.has_ip.then_some(ip.as_str()), g.ready,
                            if g.has_port { "grpc" } else { "http" });
            if g.terminating {
                p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::from_second(1).unwrap()));
            }
            let key = format!("{TARGET}/{ip}:50051");
            let nodes = nodes();
            let value = match desired::pod_decision_on(&r, &p, &|n| nodes.get(n), None) {
                PodDecision::Endpoint(e) => e.value,
                _ => "{}".to_string(),
            };
            match g.held {
                1 => { etcd.insert(key, entry(&value)); }
                2 => { etcd.insert(key, entry("{\"Op\":0}")); }
                _ => {}
            }
            pods.push(p);
        }
        for x in &extra {
            etcd.insert(format!("{TARGET}/127.1.0.{x}:50051"), entry("{}"));
        }
        let claim = match claim_kind {
            0 => Claim::Free,
            1 => Claim::Ours,
            _ => Claim::Elsewhere("other".into()),
        };
        let got = run(&r, &[], &pods, &etcd, &claim);
        let outcome = desired::registration_outcome(PREFIX, &r, &pods);
        let want_keys: BTreeSet<String> =
            outcome.endpoints.keys().map(|a| value::key(TARGET, a)).collect();

        // One row per selected pod, in name order.
        let named: Vec<String> = got.iter().filter_map(|r| r.pod.as_ref().map(|p| p.name.clone())).collect();
        let mut expected: Vec<String> = (0..pods_gen.len()).map(|i| format!("p{i}")).collect();
        expected.sort();
        prop_assert_eq!(named, expected);
        // The pods with a wanted key are exactly the operator's endpoints.
        let row_keys: BTreeSet<String> = got.iter()
            .filter(|r| r.pod.is_some() && r.want.is_some())
            .filter_map(|r| r.key.clone())
            .collect();
        prop_assert_eq!(&row_keys, &want_keys);
        // Every key etcd holds is in exactly one row.
        for key in etcd.keys() {
            let n = got.iter().filter(|r| r.key.as_ref() == Some(key) && r.etcd.is_some()).count();
            prop_assert_eq!(n, 1, "key {}", key);
        }
        for row in &got {
            match row.verdict {
                Verdict::Published => {
                    prop_assert!(claim_kind != 2);
                    prop_assert_eq!(row.etcd.as_ref().map(|e| &e.value), row.want.as_ref());
                }
                Verdict::MissingInEtcd => {
                    prop_assert!(claim_kind != 2);
                    prop_assert!(row.etcd.is_none() && row.want.is_some());
                }
                Verdict::StaleInEtcd => {
                    prop_assert!(row.etcd.is_some());
                    prop_assert_ne!(row.etcd.as_ref().map(|e| &e.value), row.want.as_ref());
                }
                Verdict::OwnedElsewhere => prop_assert_eq!(claim_kind, 2),
                Verdict::NotReady | Verdict::PortMissing => {
                    prop_assert!(row.want.is_none());
                }
            }
        }
    }
}

#[test]
fn the_operators_cluster_id_is_part_of_the_value_compared() {
    let r = reg("greeter", json!("grpc"));
    let p = pod("a", Some("127.1.0.1"), true, "grpc");
    let key = format!("{TARGET}/127.1.0.1:50051");
    let nodes = nodes();
    let with_cluster = match desired::pod_decision_on(&r, &p, &|n| nodes.get(n), Some("east")) {
        PodDecision::Endpoint(e) => e.value,
        other => panic!("not an endpoint: {other}"),
    };
    assert!(
        with_cluster.contains(r#""cluster":"east""#),
        "{with_cluster}"
    );
    let verdict = |cluster: Option<&str>, held: &str| {
        let etcd = BTreeMap::from([(key.clone(), entry(held))]);
        let got = rows(&Input {
            prefix: PREFIX,
            registration: &r,
            registrations: &[],
            pods: std::slice::from_ref(&p),
            etcd: &etcd,
            claim: &Claim::Ours,
            nodes: &nodes,
            cluster,
        });
        assert_eq!(got.len(), 1, "{got:?}");
        (got[0].verdict, got[0].want.clone())
    };
    // (the operator's --publish-cluster-id as inspect is told, what etcd holds, the verdict)
    let cases = [
        (Some("east"), with_cluster.clone(), Verdict::Published),
        (None, wanted_value(&r, &p), Verdict::Published),
        (None, with_cluster.clone(), Verdict::StaleInEtcd),
        (Some("east"), wanted_value(&r, &p), Verdict::StaleInEtcd),
        (Some("west"), with_cluster.clone(), Verdict::StaleInEtcd),
    ];
    for (cluster, held, want) in cases {
        let (got, wanted) = verdict(cluster, &held);
        assert_eq!(got, want, "{cluster:?} holding {held}");
        if let Some(c) = cluster {
            assert!(wanted.is_some_and(|w| w.contains(&format!(r#""cluster":"{c}""#))));
        }
    }
}
