//! Property tests of the endpoint decision: random registrations and pods (labels, selectors
//! with every operator, named and numbered ports, IPv4/IPv6/invalid IPs, phases, conditions,
//! deletion timestamps, sidecars) checked against an independent statement of the rules
//! (DESIGN §3 and the module docs), for determinism, namespace isolation, union semantics and
//! metadata precedence.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::crd::ServiceRegistrationSpec;

const PREFIX: &str = "registrar";
const NAMESPACES: [&str; 2] = ["shop", "other"];
const LABEL_KEYS: [&str; 3] = ["app", "tier", "env"];
const LABEL_VALUES: [&str; 3] = ["a", "b", "c"];
const PORT_NAMES: [&str; 2] = ["grpc", "http"];

fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn label_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        proptest::sample::select(&LABEL_KEYS[..]).prop_map(str::to_owned),
        proptest::sample::select(&LABEL_VALUES[..]).prop_map(str::to_owned),
        0..3,
    )
}

fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
    (
        proptest::sample::select(&LABEL_KEYS[..]),
        proptest::sample::select(&["In", "NotIn", "Exists", "DoesNotExist", "Bogus"][..]),
        proptest::collection::vec(proptest::sample::select(&LABEL_VALUES[..]), 0..3),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        })
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    (
        proptest::option::of(label_map()),
        proptest::option::of(proptest::collection::vec(requirement(), 0..3)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

fn port_spec() -> impl Strategy<Value = IntOrString> {
    prop_oneof![
        proptest::sample::select(&PORT_NAMES[..]).prop_map(|n| IntOrString::String(n.into())),
        proptest::sample::select(&[50051, 80, 0, -1, 70000][..]).prop_map(IntOrString::Int),
    ]
}

fn container_ports() -> impl Strategy<Value = Vec<ContainerPort>> {
    proptest::collection::vec(
        (
            proptest::option::of(proptest::sample::select(&PORT_NAMES[..])),
            proptest::sample::select(&[50051, 8080, 0][..]),
            proptest::sample::select(&[None, Some("TCP"), Some("UDP")][..]),
        )
            .prop_map(|(name, number, protocol)| ContainerPort {
                name: name.map(Into::into),
                container_port: number,
                protocol: protocol.map(Into::into),
                ..ContainerPort::default()
            }),
        0..3,
    )
}

fn container(name: &str, ports: Vec<ContainerPort>, restart: Option<&str>) -> Container {
    Container {
        name: name.into(),
        ports: (!ports.is_empty()).then_some(ports),
        restart_policy: restart.map(Into::into),
        ..Container::default()
    }
}

/// A pod of a generated cluster; the name is given by its position (`p<i>`).
pub(crate) fn pod(index: usize) -> impl Strategy<Value = Pod> {
    let ip = prop_oneof![
        Just(None),
        Just(Some(String::new())),
        (1u8..5).prop_map(|n| Some(format!("192.0.2.{n}"))),
        (1u8..5).prop_map(|n| Some(format!("2001:db8::{n}"))),
        Just(Some("not-an-ip".to_owned())),
    ];
    let condition = proptest::option::of(proptest::sample::select(&["True", "False"][..]));
    (
        proptest::sample::select(&NAMESPACES[..]),
        label_map(),
        ip,
        proptest::option::of(proptest::sample::select(
            &["Running", "Pending", "Succeeded", "Failed"][..],
        )),
        (condition.clone(), condition),
        any::<bool>(),
        (container_ports(), container_ports(), any::<bool>()),
        proptest::option::of(proptest::sample::select(&["n1", "n2", ""][..])),
    )
        .prop_map(
            move |(ns, labels, ip, phase, (ready, containers_ready), deleting, ports, node)| {
                let (main_ports, init_ports, sidecar) = ports;
                let mut conditions = Vec::new();
                if let Some(s) = containers_ready {
                    conditions.push(PodCondition {
                        type_: "ContainersReady".into(),
                        status: s.into(),
                        ..PodCondition::default()
                    });
                }
                if let Some(s) = ready {
                    conditions.push(PodCondition {
                        type_: "Ready".into(),
                        status: s.into(),
                        last_transition_time: Some(time(100 + index as i64)),
                        ..PodCondition::default()
                    });
                }
                let mut pod = Pod::default();
                pod.metadata.name = Some(format!("p{index}"));
                pod.metadata.namespace = Some(ns.into());
                pod.metadata.labels = (!labels.is_empty()).then_some(labels);
                pod.metadata.deletion_timestamp = deleting.then(|| time(5));
                pod.spec = Some(PodSpec {
                    node_name: node.map(Into::into),
                    containers: vec![container("app", main_ports, None)],
                    init_containers: Some(vec![container(
                        "init",
                        init_ports,
                        sidecar.then_some("Always"),
                    )]),
                    ..PodSpec::default()
                });
                pod.status = Some(PodStatus {
                    phase: phase.map(Into::into),
                    pod_ip: ip,
                    conditions: Some(conditions),
                    ..PodStatus::default()
                });
                pod
            },
        )
}

/// A registration of a generated cluster; the name is given by its position (`r<i>`).
pub(crate) fn registration(index: usize) -> impl Strategy<Value = ServiceRegistration> {
    (
        proptest::sample::select(&NAMESPACES[..]),
        proptest::option::of(proptest::sample::select(&["svc-a", "svc-b"][..])),
        selector(),
        port_spec(),
        proptest::option::of(proptest::collection::btree_map(
            proptest::sample::select(&["tier", "team"][..]).prop_map(str::to_owned),
            proptest::sample::select(&["gold", "silver"][..]).prop_map(str::to_owned),
            0..2,
        )),
        any::<bool>(),
        proptest::option::of(0i64..3),
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            move |(ns, service, selector, port, metadata, publish_not_ready, created, deleting)| {
                let mut reg = ServiceRegistration::new(
                    &format!("r{index}"),
                    ServiceRegistrationSpec {
                        service: service.map(Into::into),
                        selector,
                        port,
                        metadata,
                        publish_not_ready,
                    },
                );
                reg.metadata.namespace = Some(ns.into());
                reg.metadata.creation_timestamp = created.map(|s| time(1_000 + s));
                reg.metadata.deletion_timestamp = deleting.then(|| time(2_000));
                reg
            },
        )
}

fn cluster() -> impl Strategy<Value = (Vec<ServiceRegistration>, Vec<Pod>)> {
    (1usize..5, 0usize..8).prop_flat_map(|(regs, pods)| {
        (
            (0..regs).map(registration).collect::<Vec<_>>(),
            (0..pods).map(pod).collect::<Vec<_>>(),
        )
    })
}

/// The selector rules, stated independently: an empty selector selects nothing.
fn oracle_selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let ml = selector.match_labels.clone().unwrap_or_default();
    let me = selector.match_expressions.clone().unwrap_or_default();
    if ml.is_empty() && me.is_empty() {
        return false;
    }
    ml.iter().all(|(k, v)| labels.get(k) == Some(v))
        && me.iter().all(|r| {
            let values: BTreeSet<&str> = r.values.iter().flatten().map(String::as_str).collect();
            let got = labels.get(&r.key).map(String::as_str);
            match r.operator.as_str() {
                "In" => got.is_some_and(|v| values.contains(v)),
                "NotIn" => got.is_none_or(|v| !values.contains(v)),
                "Exists" => got.is_some(),
                "DoesNotExist" => got.is_none(),
                _ => false,
            }
        })
}

/// The port `reg` gets on `pod`, stated independently: a number is used as is; a name is the
/// first valid TCP port of that name in the containers, then in the sidecars.
fn oracle_port(reg: &ServiceRegistration, pod: &Pod) -> Option<u16> {
    let spec = pod.spec.as_ref()?;
    match &reg.spec.port {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p > 0),
        IntOrString::String(name) => {
            let mut candidates: Vec<&Container> = spec.containers.iter().collect();
            for init in spec.init_containers.iter().flatten() {
                if init.restart_policy.as_deref() == Some("Always") {
                    candidates.push(init);
                }
            }
            for c in candidates {
                for p in c.ports.iter().flatten() {
                    // A number the API server would refuse (0) does not count: the search
                    // goes on (the API server also keeps port names unique within a pod).
                    if p.name.as_deref() == Some(name.as_str())
                        && matches!(p.protocol.as_deref(), None | Some("TCP"))
                        && let Some(n) = u16::try_from(p.container_port).ok().filter(|n| *n > 0)
                    {
                        return Some(n);
                    }
                }
            }
            None
        }
    }
}

/// The address `reg` publishes `pod` at, or `None` (DESIGN §3; with `publishNotReady` neither
/// readiness nor termination is required, like `publishNotReadyAddresses`).
fn oracle(reg: &ServiceRegistration, pod: &Pod) -> Option<String> {
    if reg.metadata.deletion_timestamp.is_some() || pod.metadata.namespace != reg.metadata.namespace
    {
        return None;
    }
    if !oracle_selects(
        &reg.spec.selector,
        &pod.metadata.labels.clone().unwrap_or_default(),
    ) {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let terminating = pod.metadata.deletion_timestamp.is_some();
    if !reg.spec.publish_not_ready && (!ready || terminating) {
        return None;
    }
    let port = oracle_port(reg, pod)?;
    let ip: IpAddr = ip.parse().ok()?;
    Some(match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    })
}

fn outcomes(regs: &[ServiceRegistration], pods: &[Pod]) -> Vec<RegistrationOutcome> {
    regs.iter()
        .map(|r| registration_outcome(PREFIX, r, pods))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The same registrations and pods in any order give the same outcomes and keys.
    #[test]
    fn deterministic_in_any_order(
        (regs, pods) in cluster(),
        pod_seed in any::<u64>(),
        reg_seed in any::<u64>(),
    ) {
        let shuffled = |n: usize, seed: u64| {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|i| (*i as u64 + 1).wrapping_mul(seed | 1).rotate_left(17));
            order
        };
        let pods2: Vec<Pod> = shuffled(pods.len(), pod_seed).into_iter().map(|i| pods[i].clone()).collect();
        let regs2: Vec<ServiceRegistration> =
            shuffled(regs.len(), reg_seed).into_iter().map(|i| regs[i].clone()).collect();
        let a = outcomes(&regs, &pods);
        let b = outcomes(&regs2, &pods2);
        for reg in &regs {
            let name = reg.metadata.name.as_deref().unwrap();
            let x = a.iter().find(|o| o.registration == name).unwrap();
            let y = b.iter().find(|o| o.registration == name).unwrap();
            prop_assert_eq!(x, y);
        }
        prop_assert_eq!(desired_keys(PREFIX, &a), desired_keys(PREFIX, &b));
        let mut reversed = a.clone();
        reversed.reverse();
        prop_assert_eq!(desired_keys(PREFIX, &a), desired_keys(PREFIX, &reversed));
    }

    /// Every pod is published exactly when the rules say so, at the address they give, and
    /// never by a registration of another namespace; `pod_decision` agrees.
    #[test]
    fn published_exactly_by_the_rules((regs, pods) in cluster()) {
        for reg in &regs {
            let outcome = registration_outcome(PREFIX, reg, &pods);
            let ns = reg.metadata.namespace.as_deref().unwrap();
            prop_assert_eq!(&outcome.target, &target(PREFIX, ns, reg.service_name()));
            // Addresses the rules give, first pod name winning a shared address.
            let mut want: BTreeMap<String, String> = BTreeMap::new();
            for pod in &pods {
                let name = pod.metadata.name.clone().unwrap();
                let decision = pod_decision(reg, pod);
                match oracle(reg, pod) {
                    Some(addr) => {
                        prop_assert!(matches!(&decision, PodDecision::Endpoint(e) if e.addr == addr),
                            "{name}: oracle {addr}, decision {decision:?}");
                        let slot = want.entry(addr).or_insert_with(|| name.clone());
                        if name < *slot {
                            *slot = name;
                        }
                    }
                    None => prop_assert!(!matches!(decision, PodDecision::Endpoint(_)),
                        "{name}: not an endpoint by the rules, decision {decision:?}"),
                }
            }
            let got: BTreeMap<String, String> = outcome
                .endpoints
                .iter()
                .map(|(a, e)| (a.clone(), e.pod.clone()))
                .collect();
            prop_assert_eq!(&got, &want);
            for e in outcome.endpoints.values() {
                let pod = pods.iter().find(|p| p.metadata.name.as_deref() == Some(e.pod.as_str())).unwrap();
                prop_assert_eq!(pod.metadata.namespace.as_deref(), Some(ns));
                prop_assert_eq!(&e.value, &value::encode(&e.addr, Some(&endpoint_metadata(reg, &CompactPod::from(pod), &|_| None, None))));
            }
        }
    }

    /// A target's keys are the union of the endpoints of the registrations that name it; on a
    /// shared address the oldest registration (then first name) gives the value.
    #[test]
    fn union_and_stable_precedence((regs, pods) in cluster()) {
        let all = outcomes(&regs, &pods);
        let keys = desired_keys(PREFIX, &all);
        let mut want: BTreeMap<String, (Option<Time>, String, String)> = BTreeMap::new();
        for (reg, outcome) in regs.iter().zip(&all) {
            let rank = (
                reg.metadata.creation_timestamp.clone(),
                reg.metadata.name.clone().unwrap(),
            );
            for e in outcome.endpoints.values() {
                let key = value::key(&outcome.target, &e.addr);
                let better = |old: &(Option<Time>, String, String)| match (&rank.0, &old.0) {
                    (Some(a), Some(b)) => (a, &rank.1) < (b, &old.1),
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => rank.1 < old.1,
                };
                match want.get(&key) {
                    Some(old) if !better(old) => {}
                    _ => {
                        want.insert(key, (rank.0.clone(), rank.1.clone(), e.value.clone()));
                    }
                }
            }
        }
        let want: BTreeMap<String, String> = want.into_iter().map(|(k, v)| (k, v.2)).collect();
        prop_assert_eq!(&keys, &want);
        // Adding a registration never rewrites a key another one already publishes.
        for extra in 0..all.len() {
            let without: Vec<RegistrationOutcome> =
                all.iter().enumerate().filter(|(i, _)| *i != extra).map(|(_, o)| o.clone()).collect();
            let before = desired_keys(PREFIX, &without);
            let newest = regs.iter().enumerate().filter(|(i, _)| *i != extra).all(|(_, r)| {
                r.metadata.creation_timestamp.is_some()
                    && r.metadata.creation_timestamp < regs[extra].metadata.creation_timestamp
            });
            if newest {
                for (k, v) in &before {
                    prop_assert_eq!(keys.get(k), Some(v));
                }
            }
        }
    }
}
