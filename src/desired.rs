//! The pure decision: which endpoints a registration publishes, and the union of all of them as
//! the etcd keys the operator wants under its prefix.
//!
//! Which pods are endpoints follows the EndpointSlice controller (`k8s.io/endpointslice`):
//! a pod counts when it is in the registration's namespace, matches the selector, has an IP and
//! is not terminal (Succeeded/Failed). It is published when it is Ready (the pod's `Ready`
//! condition, which includes readiness gates; never `ContainersReady`) and not terminating
//! (`deletionTimestamp` unset) — or, with `publishNotReady`, regardless of both, exactly like
//! `ready = publishNotReadyAddresses || (serving && !terminating)` for a Service.
//!
//! A named port is resolved per pod like a Service's `targetPort` (`FindPort`): the first TCP
//! port with that name among the containers, then among sidecar (restartable init) containers.
//! A pod without it is skipped and reported as a [`Problem`].
//!
//! Nothing here does I/O; the controller feeds it the cached objects. Pods are read in their
//! compact form ([`CompactPod`]); a whole `Pod` is accepted too (converted on the fly).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value};

use crate::crd::ServiceRegistration;
use crate::etcd::value;
use crate::pod::{AsCompactPod, CompactPod};
use crate::topology::NodeTopology;

/// One endpoint a registration wants published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `ip:port`, IPv6 in brackets (`[fd00::5]:50051`).
    pub addr: String,
    /// The exact etcd value (Go's `internal.Update` JSON).
    pub value: String,
    /// Name of the pod behind the address.
    pub pod: String,
    /// When the pod last became Ready (`None` when it is not Ready, with `publishNotReady`).
    pub ready_since: Option<Time>,
}

/// The etcd target of `service` in `namespace` under `prefix`: `<prefix>/<namespace>/<service>`,
/// what a gRPC client dials (`etcd:///<target>`) and the parent of the endpoint keys.
pub fn target(prefix: &str, namespace: &str, service: &str) -> String {
    format!("{prefix}/{namespace}/{service}")
}

/// Something only the operator can detect, reported in the registration's status.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Problem {
    /// The pod has no TCP container port named `port`; it is skipped.
    PortNotFound { pod: String, port: String },
    /// The numeric `spec.port` is outside 1..=65535 (the API server normally refuses this).
    InvalidPort { port: String },
    /// The pod's IP cannot be parsed; it is skipped.
    InvalidPodIp { pod: String, ip: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::PortNotFound { pod, port } => {
                write!(f, "pod {pod} has no TCP container port named {port:?}")
            }
            Problem::InvalidPort { port } => write!(f, "port {port} is not in 1..65535"),
            Problem::InvalidPodIp { pod, ip } => write!(f, "pod {pod} has an invalid IP {ip:?}"),
        }
    }
}

/// What one registration wants published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrationOutcome {
    /// `<prefix>/<namespace>/<service>`.
    pub target: String,
    /// Endpoints by address (sorted, so every output derived from it is deterministic).
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Problems found, sorted and deduplicated.
    pub problems: Vec<Problem>,
    /// Name of the registration (ties in [`desired_keys`] are broken by it).
    pub registration: String,
    /// Creation time of the registration: on an address wanted by several registrations of
    /// one target, the oldest registration's value wins (see [`desired_keys`]).
    pub created: Option<Time>,
}

/// What the rules decide for one pod of a registration: published (with the endpoint), or why
/// not. [`registration_outcome`] is built from it, so a diagnosis (`registrar inspect`) and the
/// operator can never disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodDecision {
    /// The registration is being deleted: it wants nothing.
    RegistrationDeleting,
    /// The registration's numeric port is unusable (the API server normally refuses it).
    InvalidPort(Problem),
    /// Another namespace, or the selector does not match.
    NotSelected,
    /// The pod has no IP yet.
    NoIp,
    /// The pod is Succeeded or Failed.
    Terminal,
    /// The pod's `Ready` condition is not True.
    NotReady,
    /// The pod is being deleted (`deletionTimestamp` set).
    Terminating,
    /// The pod has no TCP container port with the registration's port name.
    PortNotFound(Problem),
    /// The pod's IP cannot be parsed.
    InvalidIp(Problem),
    /// The pod is an endpoint.
    Endpoint(Endpoint),
}

impl fmt::Display for PodDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodDecision::RegistrationDeleting => f.write_str("the registration is being deleted"),
            PodDecision::InvalidPort(p)
            | PodDecision::PortNotFound(p)
            | PodDecision::InvalidIp(p) => p.fmt(f),
            PodDecision::NotSelected => f.write_str("not selected by the registration"),
            PodDecision::NoIp => f.write_str("the pod has no IP yet"),
            PodDecision::Terminal => f.write_str("the pod has terminated (Succeeded/Failed)"),
            PodDecision::NotReady => f.write_str("the pod's Ready condition is not True"),
            PodDecision::Terminating => f.write_str("the pod is terminating"),
            PodDecision::Endpoint(e) => write!(f, "endpoint {}", e.addr),
        }
    }
}

/// The registration-level part of the rules: `Some` when no pod of `reg` can be an endpoint.
fn registration_gate(reg: &ServiceRegistration) -> Option<PodDecision> {
    let namespace = reg.metadata.namespace.as_deref().unwrap_or_default();
    if reg.metadata.deletion_timestamp.is_some() || namespace.is_empty() {
        return Some(PodDecision::RegistrationDeleting);
    }
    if let IntOrString::Int(port) = reg.spec.port
        && u16::try_from(port).map_or(true, |p| p == 0)
    {
        return Some(PodDecision::InvalidPort(Problem::InvalidPort {
            port: port.to_string(),
        }));
    }
    None
}

/// The decision for one `pod` of `reg` (any pod: namespace, selector, phase, IP, readiness and
/// port are checked here), without node topology in the endpoint's metadata.
pub fn pod_decision(reg: &ServiceRegistration, pod: &(impl AsCompactPod + ?Sized)) -> PodDecision {
    pod_decision_on(reg, pod, &|_| None, None)
}

/// [`pod_decision`] with the pod's node topology from `node` (by node name): its `zone` and
/// `region`, when the node has them, join the endpoint's metadata, as the operator publishes it;
/// so does `cluster` (`--publish-cluster-id`), when set.
pub fn pod_decision_on<'n>(
    reg: &ServiceRegistration,
    pod: &(impl AsCompactPod + ?Sized),
    node: &impl Fn(&str) -> Option<&'n NodeTopology>,
    cluster: Option<&str>,
) -> PodDecision {
    registration_gate(reg).unwrap_or_else(|| pod_rules(reg, &pod.compact(), node, cluster))
}

/// The per-pod rules, once [`registration_gate`] let the registration through.
fn pod_rules<'n>(
    reg: &ServiceRegistration,
    pod: &CompactPod,
    node: &impl Fn(&str) -> Option<&'n NodeTopology>,
    cluster: Option<&str>,
) -> PodDecision {
    let namespace = reg.metadata.namespace.as_deref().unwrap_or_default();
    if *pod.namespace != *namespace
        || !selector_matches_by(&reg.spec.selector, |k| pod.labels.get(k))
    {
        return PodDecision::NotSelected;
    }
    let Some(ip) = pod.ip.as_deref() else {
        return PodDecision::NoIp;
    };
    if is_terminal(pod) {
        return PodDecision::Terminal;
    }
    if !reg.spec.publish_not_ready {
        if !pod.ready {
            return PodDecision::NotReady;
        }
        if pod.terminating {
            return PodDecision::Terminating;
        }
    }
    let pod_name = pod.name.to_string();
    let Some(port) = resolve_port(pod, &reg.spec.port) else {
        return PodDecision::PortNotFound(Problem::PortNotFound {
            pod: pod_name,
            port: port_label(&reg.spec.port),
        });
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return PodDecision::InvalidIp(Problem::InvalidPodIp {
            pod: pod_name,
            ip: ip.to_string(),
        });
    };
    let addr = SocketAddr::new(ip, port).to_string();
    let metadata = endpoint_metadata(reg, pod, node, cluster);
    PodDecision::Endpoint(Endpoint {
        value: value::encode(&addr, Some(&metadata)),
        addr,
        pod: pod_name,
        ready_since: pod.ready_since.clone(),
    })
}

/// The endpoints `reg` wants published, from the candidate `pods` (any pods: this function
/// checks namespace, selector, phase, IP and readiness itself, through [`pod_decision`]).
///
/// A registration being deleted (`deletionTimestamp` set) wants nothing, so that its keys are
/// removed before its finalizer is released.
pub fn registration_outcome<'a, P: AsCompactPod + ?Sized + 'a>(
    prefix: &str,
    reg: &ServiceRegistration,
    pods: impl IntoIterator<Item = &'a P>,
) -> RegistrationOutcome {
    registration_outcome_on(prefix, reg, pods, |_| None, None)
}

/// [`registration_outcome`] with each pod's node topology from `node` (by node name): its
/// `zone` and `region`, when the node has them, join the endpoint's metadata; so does
/// `cluster` (`--publish-cluster-id`), when set.
pub fn registration_outcome_on<'a, 'n, P: AsCompactPod + ?Sized + 'a>(
    prefix: &str,
    reg: &ServiceRegistration,
    pods: impl IntoIterator<Item = &'a P>,
    node: impl Fn(&str) -> Option<&'n NodeTopology>,
    cluster: Option<&str>,
) -> RegistrationOutcome {
    let namespace = reg.metadata.namespace.as_deref().unwrap_or_default();
    let mut outcome = RegistrationOutcome {
        target: target(prefix, namespace, reg.service_name()),
        registration: reg.metadata.name.clone().unwrap_or_default(),
        created: reg.metadata.creation_timestamp.clone(),
        ..RegistrationOutcome::default()
    };
    match registration_gate(reg) {
        Some(PodDecision::InvalidPort(problem)) => {
            outcome.problems.push(problem);
            return outcome;
        }
        Some(_) => return outcome,
        None => {}
    }
    for pod in pods {
        let endpoint = match pod_rules(reg, &pod.compact(), &node, cluster) {
            PodDecision::Endpoint(endpoint) => endpoint,
            PodDecision::PortNotFound(problem) | PodDecision::InvalidIp(problem) => {
                outcome.problems.push(problem);
                continue;
            }
            _ => continue,
        };
        match outcome.endpoints.entry(endpoint.addr.clone()) {
            Entry::Vacant(slot) => {
                slot.insert(endpoint);
            }
            // Two pods on one address (host network, or an IP reused while the old pod is
            // still listed): the lexicographically first pod name wins, whatever the order.
            Entry::Occupied(mut slot) => {
                if endpoint.pod < slot.get().pod {
                    slot.insert(endpoint);
                }
            }
        }
    }
    outcome.problems.sort();
    outcome.problems.dedup();
    outcome
}

/// The union of `outcomes` as full etcd key -> value, for every target under `prefix`.
///
/// Several registrations of one namespace may name the same service (one target): the target
/// gets the union of their endpoints. When two of them want the same address with different
/// values (different `spec.metadata`), the value of the oldest registration wins (earliest
/// `creationTimestamp`, then lexicographically first name), so that adding a registration never
/// rewrites endpoints that another one already publishes. The result does not depend on the
/// order of `outcomes`. Outcomes whose target is not under `prefix/` are ignored.
pub fn desired_keys<'a>(
    prefix: &str,
    outcomes: impl IntoIterator<Item = &'a RegistrationOutcome>,
) -> BTreeMap<String, String> {
    let under = format!("{prefix}/");
    let mut ordered: Vec<&RegistrationOutcome> = outcomes
        .into_iter()
        .filter(|o| o.target.starts_with(&under))
        .collect();
    ordered.sort_by(|a, b| precedence(a, b));
    let mut keys = BTreeMap::new();
    for outcome in ordered {
        for endpoint in outcome.endpoints.values() {
            keys.entry(value::key(&outcome.target, &endpoint.addr))
                .or_insert_with(|| endpoint.value.clone());
        }
    }
    keys
}

/// Oldest first (a missing creation time counts as newest), then by name, then by target.
pub(crate) fn precedence(a: &RegistrationOutcome, b: &RegistrationOutcome) -> Ordering {
    let created = match (&a.created, &b.created) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    created
        .then_with(|| a.registration.cmp(&b.registration))
        .then_with(|| a.target.cmp(&b.target))
}

/// Whether `labels` satisfy `selector` (matchLabels AND matchExpressions).
///
/// An empty selector matches nothing here (the API server refuses it; selecting a whole
/// namespace by accident would be worse than selecting nothing). Unknown operators match nothing.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector_matches_by(selector, |key| {
        labels.and_then(|l| l.get(key)).map(String::as_str)
    })
}

/// [`selector_matches`] with the labels read through `get` (label key -> value).
pub fn selector_matches_by<'l>(
    selector: &LabelSelector,
    get: impl Fn(&str) -> Option<&'l str>,
) -> bool {
    let match_labels = selector.match_labels.as_ref().filter(|m| !m.is_empty());
    let expressions = selector.match_expressions.as_deref().unwrap_or_default();
    if match_labels.is_none() && expressions.is_empty() {
        return false;
    }
    let labels_ok = match_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| get(k) == Some(v.as_str()));
    labels_ok
        && expressions.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
                "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// The pod's primary IP (`status.podIP`, else the first of `status.podIPs`); read once, into
/// [`CompactPod::ip`].
pub fn pod_ip(pod: &Pod) -> Option<&str> {
    let status = pod.status.as_ref()?;
    status
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
        .or_else(|| {
            status
                .pod_ips
                .as_deref()?
                .first()
                .map(|p| p.ip.as_str())
                .filter(|ip| !ip.is_empty())
        })
}

fn is_terminal(pod: &CompactPod) -> bool {
    matches!(pod.phase.as_deref(), Some("Succeeded" | "Failed"))
}

/// The pod's `Ready` condition when it is True (readiness gates included; not ContainersReady);
/// read once, into [`CompactPod::ready`] and [`CompactPod::ready_since`].
pub fn ready_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
}

/// The port number `port` resolves to on `pod`, like `FindPort` for a Service's targetPort:
/// the first TCP container port with that name (and a usable number) among the containers,
/// then among sidecar (restartable init) containers ([`CompactPod::ports`] keeps them in that
/// order).
pub fn resolve_port(pod: &CompactPod, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|p| *p != 0),
        IntOrString::String(name) => pod.named_port(name),
    }
}

pub fn port_label(port: &IntOrString) -> String {
    match port {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// `spec.metadata` plus `pod` (the pod's name), `node` (its node, once scheduled), the
/// node's `zone` and `region` (when labelled) and `cluster` (when set); the operator's keys
/// override the spec's (which the API server already refuses).
fn endpoint_metadata<'n>(
    reg: &ServiceRegistration,
    pod: &CompactPod,
    topology: &impl Fn(&str) -> Option<&'n NodeTopology>,
    cluster: Option<&str>,
) -> Map<String, Value> {
    let mut metadata: Map<String, Value> = reg
        .spec
        .metadata
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    metadata.insert("pod".into(), Value::String(pod.name.to_string()));
    if let Some(node) = pod.node.as_deref().filter(|n| !n.is_empty()) {
        metadata.insert("node".into(), Value::String(node.to_string()));
        if let Some(t) = topology(node) {
            for (key, value) in [("zone", &t.zone), ("region", &t.region)] {
                if let Some(v) = value {
                    metadata.insert(key.into(), Value::String(v.clone()));
                }
            }
        }
    }
    if let Some(cluster) = cluster {
        metadata.insert("cluster".into(), Value::String(cluster.to_string()));
    }
    metadata
}

mod per_target;
pub use per_target::{TargetName, endpoints_per_target, target_name};

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod props;
