//! Unit tests of the endpoint decision (one table row per EndpointSlice rule).

use super::*;
use crate::crd::ServiceRegistrationSpec;
use k8s_openapi::api::core::v1::{ContainerPort, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

const PREFIX: &str = "registrar";

fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn grpc_port(name: &str, number: i32, protocol: Option<&str>) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: protocol.map(Into::into),
        ..ContainerPort::default()
    }
}

/// A Running, Ready pod `name` in `shop` with label app=greeter, IP `ip`, on node n1, with a
/// container port "grpc" = 50051/TCP.
fn pod(name: &str, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": "shop", "labels": { "app": "greeter", "tier": "gold" } },
        "spec": {
            "nodeName": "n1",
            "containers": [{ "name": "app", "ports": [{ "name": "grpc", "containerPort": 50051, "protocol": "TCP" }] }]
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "conditions": [
                { "type": "ContainersReady", "status": "True" },
                { "type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z" }
            ]
        }
    }))
    .unwrap()
}

fn set_condition(pod: &mut Pod, type_: &str, status: &str) {
    let conditions = pod.status.as_mut().unwrap().conditions.as_mut().unwrap();
    for c in conditions.iter_mut().filter(|c| c.type_ == type_) {
        c.status = status.into();
    }
}

fn registration(name: &str, port: IntOrString) -> ServiceRegistration {
    let mut reg = ServiceRegistration::new(
        name,
        ServiceRegistrationSpec {
            service: None,
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", "greeter")])),
                match_expressions: None,
            },
            port,
            metadata: None,
            publish_not_ready: false,
        },
    );
    reg.metadata.namespace = Some("shop".into());
    reg.metadata.creation_timestamp = Some(time(1_000));
    reg
}

fn grpc_registration() -> ServiceRegistration {
    registration("greeter", IntOrString::String("grpc".into()))
}

fn addrs(outcome: &RegistrationOutcome) -> Vec<&str> {
    outcome.endpoints.keys().map(String::as_str).collect()
}

#[test]
fn pod_rules_table() {
    type Mutate = fn(&mut Pod);
    // (case, change to a Ready pod, publishNotReady, published?)
    let cases: &[(&str, Mutate, bool, bool)] = &[
        ("ready pod", |_| {}, false, true),
        (
            "no IP yet",
            |p| {
                let s = p.status.as_mut().unwrap();
                s.pod_ip = None;
                s.pod_ips = None;
            },
            false,
            false,
        ),
        (
            "no IP yet, publishNotReady",
            |p| {
                let s = p.status.as_mut().unwrap();
                s.pod_ip = Some(String::new());
                s.pod_ips = Some(vec![]);
            },
            true,
            false,
        ),
        (
            "only podIPs set",
            |p| p.status.as_mut().unwrap().pod_ip = None,
            false,
            true,
        ),
        (
            "Ready but terminating",
            |p| p.metadata.deletion_timestamp = Some(time(5)),
            false,
            false,
        ),
        (
            "terminating, publishNotReady (like publishNotReadyAddresses)",
            |p| p.metadata.deletion_timestamp = Some(time(5)),
            true,
            true,
        ),
        (
            "readiness gate False: Ready=False",
            |p| set_condition(p, "Ready", "False"),
            false,
            false,
        ),
        (
            "ContainersReady=True but Ready=False",
            |p| {
                set_condition(p, "ContainersReady", "True");
                set_condition(p, "Ready", "False");
            },
            false,
            false,
        ),
        (
            "Ready=True but ContainersReady=False",
            |p| set_condition(p, "ContainersReady", "False"),
            false,
            true,
        ),
        (
            "no conditions at all",
            |p| p.status.as_mut().unwrap().conditions = None,
            false,
            false,
        ),
        (
            "not ready, publishNotReady",
            |p| set_condition(p, "Ready", "False"),
            true,
            true,
        ),
        (
            "Succeeded",
            |p| p.status.as_mut().unwrap().phase = Some("Succeeded".into()),
            false,
            false,
        ),
        (
            "Failed, publishNotReady",
            |p| p.status.as_mut().unwrap().phase = Some("Failed".into()),
            true,
            false,
        ),
        (
            "Pending with IP and Ready (phase is not checked otherwise)",
            |p| p.status.as_mut().unwrap().phase = Some("Pending".into()),
            false,
            true,
        ),
        (
            "other namespace",
            |p| p.metadata.namespace = Some("other".into()),
            false,
            false,
        ),
        (
            "label value differs",
            |p| p.metadata.labels = Some(labels(&[("app", "other")])),
            false,
            false,
        ),
        ("no labels", |p| p.metadata.labels = None, true, false),
        ("no status at all", |p| p.status = None, true, false),
    ];
    for (case, mutate, publish_not_ready, published) in cases {
        let mut reg = grpc_registration();
        reg.spec.publish_not_ready = *publish_not_ready;
        let mut p = pod("greeter-0", "192.0.2.25");
        mutate(&mut p);
        let outcome = registration_outcome(PREFIX, &reg, [&p]);
        let expected: &[&str] = if *published {
            &["192.0.2.25:50051"]
        } else {
            &[]
        };
        assert_eq!(addrs(&outcome), expected, "case: {case}");
        assert!(
            outcome.problems.is_empty(),
            "case: {case}: {:?}",
            outcome.problems
        );
    }
}

#[test]
fn endpoint_value_carries_metadata_pod_and_node() {
    let mut reg = grpc_registration();
    reg.spec.metadata = Some(labels(&[("tier", "gold"), ("zone", "a")]));
    let p = pod("greeter-0", "192.0.2.25");
    let outcome = registration_outcome(PREFIX, &reg, [&p]);
    assert_eq!(outcome.target, "registrar/shop/greeter");
    let ep = &outcome.endpoints["192.0.2.25:50051"];
    assert_eq!(ep.pod, "greeter-0");
    assert_eq!(
        ep.value,
        r#"{"Op":0,"Addr":"192.0.2.25:50051","Metadata":{"node":"n1","pod":"greeter-0","tier":"gold","zone":"a"}}"#
    );
    assert_eq!(
        ep.ready_since,
        Some(Time("2025-01-01T00:00:00Z".parse().unwrap()))
    );
}

#[test]
fn unscheduled_pod_has_no_node_key_and_not_ready_has_no_ready_since() {
    let mut reg = grpc_registration();
    reg.spec.publish_not_ready = true;
    let mut p = pod("greeter-0", "192.0.2.25");
    p.spec.as_mut().unwrap().node_name = None;
    set_condition(&mut p, "Ready", "False");
    let outcome = registration_outcome(PREFIX, &reg, [&p]);
    let ep = &outcome.endpoints["192.0.2.25:50051"];
    assert_eq!(
        ep.value,
        r#"{"Op":0,"Addr":"192.0.2.25:50051","Metadata":{"pod":"greeter-0"}}"#
    );
    assert_eq!(ep.ready_since, None);
}

#[test]
fn service_and_prefix_make_the_target() {
    let mut reg = grpc_registration();
    reg.spec.service = Some("hello".into());
    let outcome = registration_outcome("env/prod", &reg, std::iter::empty::<&Pod>());
    assert_eq!(outcome.target, "env/prod/shop/hello");
    assert_eq!(target("env/prod", "shop", "hello"), "env/prod/shop/hello");
}

#[test]
fn numeric_port_is_used_as_is() {
    let reg = registration("greeter", IntOrString::Int(8080));
    let mut p = pod("greeter-0", "192.0.2.25");
    p.spec.as_mut().unwrap().containers[0].ports = None;
    let outcome = registration_outcome(PREFIX, &reg, [&p]);
    assert_eq!(addrs(&outcome), ["192.0.2.25:8080"]);
}

#[test]
fn invalid_numeric_port_is_a_problem() {
    for port in [0, -1, 65536] {
        let reg = registration("greeter", IntOrString::Int(port));
        let p = pod("greeter-0", "192.0.2.25");
        let outcome = registration_outcome(PREFIX, &reg, [&p]);
        assert!(outcome.endpoints.is_empty());
        assert_eq!(
            outcome.problems,
            [Problem::InvalidPort {
                port: port.to_string()
            }]
        );
    }
}

#[test]
fn named_port_resolved_per_pod() {
    let reg = grpc_registration();
    let a = pod("a", "192.0.2.21");
    let mut b = pod("b", "192.0.2.22");
    // b exposes "grpc" on another number, in its second container
    let spec = b.spec.as_mut().unwrap();
    spec.containers[0].ports = Some(vec![grpc_port("http", 8080, Some("TCP"))]);
    let mut second = spec.containers[0].clone();
    second.name = "second".into();
    second.ports = Some(vec![grpc_port("grpc", 9000, None)]);
    spec.containers.push(second);
    let outcome = registration_outcome(PREFIX, &reg, [&a, &b]);
    assert_eq!(addrs(&outcome), ["192.0.2.21:50051", "192.0.2.22:9000"]);
}

#[test]
fn named_port_missing_on_one_pod_skips_it_and_reports_it() {
    let reg = grpc_registration();
    let a = pod("a", "192.0.2.21");
    let mut b = pod("b", "192.0.2.22");
    b.spec.as_mut().unwrap().containers[0].ports =
        Some(vec![grpc_port("grpc", 50051, Some("UDP"))]);
    let mut c = pod("c", "192.0.2.23");
    c.spec.as_mut().unwrap().containers[0].ports = None;
    let outcome = registration_outcome(PREFIX, &reg, [&c, &a, &b]);
    assert_eq!(addrs(&outcome), ["192.0.2.21:50051"]);
    assert_eq!(
        outcome.problems,
        [
            Problem::PortNotFound {
                pod: "b".into(),
                port: "grpc".into()
            },
            Problem::PortNotFound {
                pod: "c".into(),
                port: "grpc".into()
            },
        ]
    );
    assert_eq!(
        outcome.problems[0].to_string(),
        "pod b has no TCP container port named \"grpc\""
    );
}

#[test]
fn named_port_on_sidecar_but_not_plain_init_container() {
    let reg = grpc_registration();
    let mut sidecar = pod("sidecar", "192.0.2.21");
    let mut init = pod("init", "192.0.2.22");
    for (p, policy) in [(&mut sidecar, Some("Always")), (&mut init, None)] {
        let spec = p.spec.as_mut().unwrap();
        let mut c = spec.containers[0].clone();
        c.restart_policy = policy.map(Into::into);
        spec.containers[0].ports = None;
        spec.init_containers = Some(vec![c]);
    }
    let outcome = registration_outcome(PREFIX, &reg, [&sidecar, &init]);
    assert_eq!(addrs(&outcome), ["192.0.2.21:50051"]);
    assert_eq!(
        outcome.problems,
        [Problem::PortNotFound {
            pod: "init".into(),
            port: "grpc".into()
        }]
    );
}

#[test]
fn ipv6_in_brackets() {
    let reg = grpc_registration();
    let p = pod("greeter-0", "fd00::5");
    let outcome = registration_outcome(PREFIX, &reg, [&p]);
    assert_eq!(addrs(&outcome), ["[fd00::5]:50051"]);
    assert!(
        outcome.endpoints["[fd00::5]:50051"]
            .value
            .starts_with(r#"{"Op":0,"Addr":"[fd00::5]:50051","#)
    );
    let keys = desired_keys(PREFIX, [&outcome]);
    assert!(keys.contains_key("registrar/shop/greeter/[fd00::5]:50051"));
}

#[test]
fn invalid_pod_ip_is_a_problem() {
    let reg = grpc_registration();
    let p = pod("greeter-0", "not-an-ip");
    let outcome = registration_outcome(PREFIX, &reg, [&p]);
    assert!(outcome.endpoints.is_empty());
    assert_eq!(
        outcome.problems,
        [Problem::InvalidPodIp {
            pod: "greeter-0".into(),
            ip: "not-an-ip".into()
        }]
    );
}

#[test]
fn deleted_registration_wants_nothing() {
    let mut reg = grpc_registration();
    reg.metadata.deletion_timestamp = Some(time(9));
    let p = pod("greeter-0", "192.0.2.25");
    let outcome = registration_outcome(PREFIX, &reg, [&p]);
    assert!(outcome.endpoints.is_empty());
    assert_eq!(outcome.target, "registrar/shop/greeter");
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

#[test]
fn selector_table() {
    let pod_labels = labels(&[("app", "greeter"), ("track", "stable")]);
    let sel = |ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>| LabelSelector {
        match_labels: (!ml.is_empty()).then(|| labels(ml)),
        match_expressions: (!me.is_empty()).then_some(me),
    };
    let cases: Vec<(&str, LabelSelector, bool)> = vec![
        (
            "matchLabels equal",
            sel(&[("app", "greeter")], vec![]),
            true,
        ),
        ("matchLabels differ", sel(&[("app", "x")], vec![]), false),
        (
            "matchLabels missing key",
            sel(&[("zone", "a")], vec![]),
            false,
        ),
        (
            "matchLabels all must match",
            sel(&[("app", "greeter"), ("track", "canary")], vec![]),
            false,
        ),
        (
            "In",
            sel(&[], vec![requirement("track", "In", &["canary", "stable"])]),
            true,
        ),
        (
            "In, not in values",
            sel(&[], vec![requirement("track", "In", &["canary"])]),
            false,
        ),
        (
            "In, key absent",
            sel(&[], vec![requirement("zone", "In", &["a"])]),
            false,
        ),
        (
            "NotIn, in values",
            sel(&[], vec![requirement("track", "NotIn", &["stable"])]),
            false,
        ),
        (
            "NotIn, other value",
            sel(&[], vec![requirement("track", "NotIn", &["canary"])]),
            true,
        ),
        (
            "NotIn, key absent",
            sel(&[], vec![requirement("zone", "NotIn", &["a"])]),
            true,
        ),
        (
            "Exists",
            sel(&[], vec![requirement("track", "Exists", &[])]),
            true,
        ),
        (
            "Exists, absent",
            sel(&[], vec![requirement("zone", "Exists", &[])]),
            false,
        ),
        (
            "DoesNotExist",
            sel(&[], vec![requirement("zone", "DoesNotExist", &[])]),
            true,
        ),
        (
            "DoesNotExist, present",
            sel(&[], vec![requirement("app", "DoesNotExist", &[])]),
            false,
        ),
        (
            "matchLabels AND matchExpressions",
            sel(
                &[("app", "greeter")],
                vec![requirement("track", "NotIn", &["stable"])],
            ),
            false,
        ),
        (
            "unknown operator",
            sel(&[], vec![requirement("app", "Gt", &["1"])]),
            false,
        ),
        ("empty selector matches nothing", sel(&[], vec![]), false),
        (
            "empty maps count as empty",
            LabelSelector {
                match_labels: Some(BTreeMap::new()),
                match_expressions: Some(vec![]),
            },
            false,
        ),
    ];
    for (case, selector, expected) in cases {
        assert_eq!(
            selector_matches(&selector, Some(&pod_labels)),
            expected,
            "case: {case}"
        );
    }
    // a pod without labels
    assert!(selector_matches(
        &sel(&[], vec![requirement("app", "DoesNotExist", &[])]),
        None
    ));
    assert!(!selector_matches(&sel(&[("app", "greeter")], vec![]), None));
}

#[test]
fn match_expressions_select_pods() {
    let mut reg = grpc_registration();
    reg.spec.selector = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![requirement("tier", "In", &["gold", "silver"])]),
    };
    let a = pod("a", "192.0.2.21");
    let mut b = pod("b", "192.0.2.22");
    b.metadata.labels = Some(labels(&[("app", "greeter"), ("tier", "bronze")]));
    let outcome = registration_outcome(PREFIX, &reg, [&a, &b]);
    assert_eq!(addrs(&outcome), ["192.0.2.21:50051"]);
}

#[test]
fn two_pods_on_one_address_first_name_wins_in_any_order() {
    let reg = grpc_registration();
    let a = pod("a", "192.0.2.21");
    let b = pod("b", "192.0.2.21");
    for pods in [[&a, &b], [&b, &a]] {
        let outcome = registration_outcome(PREFIX, &reg, pods);
        assert_eq!(outcome.endpoints.len(), 1);
        assert_eq!(outcome.endpoints["192.0.2.21:50051"].pod, "a");
    }
}

#[test]
fn two_registrations_same_pod_oldest_metadata_wins() {
    let mut old = grpc_registration();
    old.metadata.name = Some("z-old".into());
    old.spec.service = Some("greeter".into());
    old.spec.metadata = Some(labels(&[("from", "old")]));
    old.metadata.creation_timestamp = Some(time(100));
    let mut new = grpc_registration();
    new.metadata.name = Some("a-new".into());
    new.spec.service = Some("greeter".into());
    new.spec.metadata = Some(labels(&[("from", "new")]));
    new.metadata.creation_timestamp = Some(time(200));
    let shared = pod("shared", "192.0.2.21");
    let mut only_new = pod("only-new", "192.0.2.22");
    only_new.metadata.labels = Some(labels(&[("app", "greeter"), ("v", "2")]));
    new.spec.selector.match_labels = Some(labels(&[("app", "greeter")]));
    old.spec.selector.match_expressions = Some(vec![requirement("v", "DoesNotExist", &[])]);

    let pods = [&shared, &only_new];
    let o_old = registration_outcome(PREFIX, &old, pods);
    let o_new = registration_outcome(PREFIX, &new, pods);
    assert_eq!(addrs(&o_old), ["192.0.2.21:50051"]);
    assert_eq!(addrs(&o_new), ["192.0.2.21:50051", "192.0.2.22:50051"]);

    let forward = desired_keys(PREFIX, [&o_old, &o_new]);
    let backward = desired_keys(PREFIX, [&o_new, &o_old]);
    assert_eq!(forward, backward);
    assert_eq!(forward.len(), 2, "union of both registrations");
    assert!(forward["registrar/shop/greeter/192.0.2.21:50051"].contains(r#""from":"old""#));
    assert!(forward["registrar/shop/greeter/192.0.2.22:50051"].contains(r#""from":"new""#));

    // same creation time: the lexicographically first name wins
    let mut o_new_same_time = o_new.clone();
    o_new_same_time.created = o_old.created.clone();
    let keys = desired_keys(PREFIX, [&o_old, &o_new_same_time]);
    assert!(keys["registrar/shop/greeter/192.0.2.21:50051"].contains(r#""from":"new""#));
}

#[test]
fn desired_keys_spans_targets_and_ignores_foreign_prefixes() {
    let mut a = grpc_registration();
    a.spec.service = Some("a".into());
    let mut b = grpc_registration();
    b.spec.service = Some("b".into());
    let p = pod("p", "192.0.2.21");
    let oa = registration_outcome(PREFIX, &a, [&p]);
    let ob = registration_outcome(PREFIX, &b, [&p]);
    let foreign = registration_outcome("registrar-other", &b, [&p]);
    let keys = desired_keys(PREFIX, [&oa, &ob, &foreign]);
    assert_eq!(
        keys.keys().collect::<Vec<_>>(),
        [
            "registrar/shop/a/192.0.2.21:50051",
            "registrar/shop/b/192.0.2.21:50051"
        ]
    );
}

#[test]
fn output_is_deterministic() {
    let reg = grpc_registration();
    let pods: Vec<Pod> = (0..20)
        .map(|i| pod(&format!("p{i}"), &format!("192.0.2.{}", 20 - i)))
        .collect();
    let forward = registration_outcome(PREFIX, &reg, pods.iter());
    let backward = registration_outcome(PREFIX, &reg, pods.iter().rev());
    assert_eq!(forward, backward);
    let sorted: Vec<_> = {
        let mut v = addrs(&forward);
        v.sort();
        v
    };
    assert_eq!(addrs(&forward), sorted);
    assert_eq!(
        desired_keys(PREFIX, [&forward]),
        desired_keys(PREFIX, [&backward])
    );
}

#[test]
fn pod_ip_falls_back_to_pod_ips() {
    let mut p = pod("p", "192.0.2.21");
    p.status = Some(PodStatus {
        pod_ips: Some(vec![PodIP {
            ip: "192.0.2.29".into(),
        }]),
        ..PodStatus::default()
    });
    assert_eq!(pod_ip(&p), Some("192.0.2.29"));
}

#[test]
fn node_topology_adds_zone_and_region_over_the_spec() {
    let mut reg = grpc_registration();
    reg.spec.metadata = Some(labels(&[("tier", "gold")]));
    let p = pod("greeter-0", "192.0.2.25");
    let topo = crate::topology::NodeTopology {
        zone: Some("z1".into()),
        region: Some("r1".into()),
    };
    let outcome =
        registration_outcome_on(PREFIX, &reg, [&p], |n| (n == "n1").then_some(&topo), None);
    assert_eq!(
        outcome.endpoints["192.0.2.25:50051"].value,
        r#"{"Op":0,"Addr":"192.0.2.25:50051","Metadata":{"node":"n1","pod":"greeter-0","region":"r1","tier":"gold","zone":"z1"}}"#
    );
    // A node without the labels (or unknown): no zone or region key.
    let bare = crate::topology::NodeTopology::default();
    let outcome = registration_outcome_on(PREFIX, &reg, [&p], |_| Some(&bare), None);
    assert_eq!(
        outcome.endpoints["192.0.2.25:50051"].value,
        r#"{"Op":0,"Addr":"192.0.2.25:50051","Metadata":{"node":"n1","pod":"greeter-0","tier":"gold"}}"#
    );
}

#[test]
fn publish_cluster_id_adds_cluster_to_every_endpoint() {
    let mut reg = grpc_registration();
    reg.spec.metadata = Some(labels(&[("tier", "gold")]));
    let topo = crate::topology::NodeTopology {
        zone: Some("z1".into()),
        region: None,
    };
    let on_n1 = pod("greeter-0", "192.0.2.25");
    let mut unscheduled = pod("greeter-1", "192.0.2.26");
    if let Some(spec) = unscheduled.spec.as_mut() {
        spec.node_name = None;
    }
    // (cluster id, pod, node topology known, the value published)
    let cases: &[(Option<&str>, &Pod, bool, &str)] = &[
        (
            None,
            &on_n1,
            true,
            r#"{"Op":0,"Addr":"192.0.2.25:50051","Metadata":{"node":"n1","pod":"greeter-0","tier":"gold","zone":"z1"}}"#,
        ),
        (
            Some("east"),
            &on_n1,
            true,
            r#"{"Op":0,"Addr":"192.0.2.25:50051","Metadata":{"cluster":"east","node":"n1","pod":"greeter-0","tier":"gold","zone":"z1"}}"#,
        ),
        (
            Some("east"),
            &on_n1,
            false,
            r#"{"Op":0,"Addr":"192.0.2.25:50051","Metadata":{"cluster":"east","node":"n1","pod":"greeter-0","tier":"gold"}}"#,
        ),
        (
            Some("west/2"),
            &unscheduled,
            true,
            r#"{"Op":0,"Addr":"192.0.2.26:50051","Metadata":{"cluster":"west/2","pod":"greeter-1","tier":"gold"}}"#,
        ),
    ];
    for (cluster, p, known, want) in cases {
        let node = |n: &str| (*known && n == "n1").then_some(&topo);
        let outcome = registration_outcome_on(PREFIX, &reg, [*p], node, *cluster);
        let got: Vec<&str> = outcome
            .endpoints
            .values()
            .map(|e| e.value.as_str())
            .collect();
        assert_eq!(got, [*want], "{cluster:?} {known}");
        // The per-pod decision (what `inspect` compares with) publishes the same value.
        match pod_decision_on(&reg, p, &node, *cluster) {
            PodDecision::Endpoint(e) => assert_eq!(e.value, *want),
            other => panic!("{other:?}"),
        }
    }
    // The spec cannot override it (the API server refuses the key; the operator's value wins).
    reg.spec.metadata = Some(labels(&[("cluster", "spoofed")]));
    let outcome = registration_outcome_on(PREFIX, &reg, [&on_n1], |_| None, Some("east"));
    assert!(
        outcome.endpoints["192.0.2.25:50051"]
            .value
            .contains(r#""cluster":"east""#)
    );
}
