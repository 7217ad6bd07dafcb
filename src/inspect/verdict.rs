//! The pure decision of `registrar inspect`: given a registration, the pods of its namespace,
//! what etcd holds under its target and who claims the prefix, one [`Row`] per selected pod
//! (and per etcd key no pod accounts for) with a [`Verdict`].
//!
//! Which pods should be in etcd, and with which key and value, is not decided here: it comes
//! from the operator's own decision ([`desired::pod_decision`], [`desired::registration_outcome`]
//! and [`desired::desired_keys`]), so the diagnosis can never disagree with the operator.
//! Nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

use crate::crd::ServiceRegistration;
use crate::desired::{self, PodDecision, Problem};
use crate::etcd::value;
use crate::pod::CompactPod;
use crate::topology::NodeTopology;

/// What etcd holds at one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdEntry {
    /// The value (UTF-8, lossy).
    pub value: String,
    /// The lease id the key hangs on (0: none).
    pub lease: i64,
    /// The lease's remaining TTL in seconds (`-1`: etcd says the lease is gone; `None`: no
    /// lease or not asked).
    pub ttl: Option<i64>,
    /// The key's mod revision.
    pub mod_revision: i64,
}

/// The verdict of one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// etcd holds exactly the value the operator wants.
    Published,
    /// The pod is selected but is not an endpoint (not Ready, terminating, terminated, no IP,
    /// or the registration is being deleted).
    NotReady,
    /// The pod lacks the registration's named port (or the port is invalid).
    PortMissing,
    /// The operator wants the key; etcd does not hold it.
    MissingInEtcd,
    /// etcd holds a key no pod should have, or a value other than the one wanted.
    StaleInEtcd,
    /// `<prefix>/.owner` names another cluster: this cluster's operator writes nothing there.
    OwnedElsewhere,
}

impl Verdict {
    /// The verdict as printed (`published`, `not-ready`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Published => "published",
            Verdict::NotReady => "not-ready",
            Verdict::PortMissing => "port-missing",
            Verdict::MissingInEtcd => "missing-in-etcd",
            Verdict::StaleInEtcd => "stale-in-etcd",
            Verdict::OwnedElsewhere => "owned-elsewhere",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who holds the prefix claim (`<prefix>/.owner`), as seen from this cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Nobody: the operator will claim it.
    Free,
    /// This cluster.
    Ours,
    /// Another cluster (its id).
    Elsewhere(String),
    /// Someone (its id), but this cluster's id is not known.
    Unknown(String),
}

/// The claim from the owner key's value and this cluster's id (when known).
pub fn claim(owner: Option<&str>, cluster_id: Option<&str>) -> Claim {
    match (owner, cluster_id) {
        (None, _) => Claim::Free,
        (Some(o), Some(us)) if o == us => Claim::Ours,
        (Some(o), Some(_)) => Claim::Elsewhere(o.to_string()),
        (Some(o), None) => Claim::Unknown(o.to_string()),
    }
}

/// What a row shows of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodFacts {
    /// Pod name.
    pub name: String,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// The node's zone (label `topology.kubernetes.io/zone`), when known.
    pub zone: Option<String>,
    /// The pod's primary IP.
    pub ip: Option<String>,
    /// `status.phase`.
    pub phase: Option<String>,
    /// The `Ready` condition is True.
    pub ready: bool,
    /// `deletionTimestamp` is set.
    pub terminating: bool,
    /// The registration's port resolved on this pod.
    pub port: Option<u16>,
    /// Why the port does not resolve.
    pub port_error: Option<String>,
}

/// The facts of `pod` as `reg` sees it (the port resolved with the operator's rule); `nodes`
/// maps node names to their topology.
pub fn pod_facts(
    reg: &ServiceRegistration,
    pod: &Pod,
    nodes: &BTreeMap<String, NodeTopology>,
) -> PodFacts {
    let pod = CompactPod::from(pod);
    let name = pod.name.to_string();
    let port = desired::resolve_port(&pod, &reg.spec.port);
    let port_error = port.is_none().then(|| {
        Problem::PortNotFound {
            pod: name.clone(),
            port: desired::port_label(&reg.spec.port),
        }
        .to_string()
    });
    PodFacts {
        node: pod.node.as_deref().map(str::to_string),
        zone: pod
            .node
            .as_deref()
            .and_then(|n| nodes.get(n))
            .and_then(|t| t.zone.clone()),
        ip: pod.ip.as_deref().map(str::to_string),
        phase: pod.phase.as_deref().map(str::to_string),
        ready: pod.ready,
        terminating: pod.terminating,
        port,
        port_error,
        name,
    }
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// The pod (`None` for an etcd key no selected pod accounts for).
    pub pod: Option<PodFacts>,
    /// The etcd key of the row: the one the operator should publish for the pod, or the key
    /// etcd holds.
    pub key: Option<String>,
    /// The value the operator wants at `key` (`None`: it wants no key there).
    pub want: Option<String>,
    /// What etcd holds at `key`.
    pub etcd: Option<EtcdEntry>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in words.
    pub detail: String,
}

/// Everything [`rows`] decides from.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The operator's prefix.
    pub prefix: &'a str,
    /// The registration inspected.
    pub registration: &'a ServiceRegistration,
    /// The registrations of its namespace (it may be among them): those naming the same
    /// service publish into the same target.
    pub registrations: &'a [ServiceRegistration],
    /// The pods of its namespace.
    pub pods: &'a [Pod],
    /// What etcd holds under the target (`<target>/` keys; others are ignored).
    pub etcd: &'a BTreeMap<String, EtcdEntry>,
    /// Who holds the prefix claim.
    pub claim: &'a Claim,
    /// Node name -> its zone and region: shown, and part of the values the operator publishes.
    pub nodes: &'a BTreeMap<String, NodeTopology>,
    /// The operator's `--publish-cluster-id`: part of the values it publishes, when set.
    pub cluster: Option<&'a str>,
}

/// The target `<prefix>/<namespace>/<service>` of `reg`.
pub fn target_of(prefix: &str, reg: &ServiceRegistration) -> String {
    desired::target(
        prefix,
        reg.metadata.namespace.as_deref().unwrap_or_default(),
        reg.service_name(),
    )
}

/// One row per pod the registration selects (sorted by name), then one per etcd key under the
/// target that no pod row accounts for (sorted by key).
pub fn rows(input: &Input<'_>) -> Vec<Row> {
    let reg = input.registration;
    let namespace = reg.metadata.namespace.as_deref().unwrap_or_default();
    let target = target_of(input.prefix, reg);
    let under = format!("{target}/");
    // The nodes' zone and region join the endpoints' values, as the operator publishes them.
    let topology = |node: &str| input.nodes.get(node);
    let same_target = |r: &&ServiceRegistration| {
        r.metadata.name != reg.metadata.name
            && r.metadata.namespace.as_deref() == Some(namespace)
            && r.service_name() == reg.service_name()
    };
    let outcomes: Vec<_> = std::iter::once(reg)
        .chain(input.registrations.iter().filter(same_target))
        .map(|r| {
            desired::registration_outcome_on(input.prefix, r, input.pods, topology, input.cluster)
        })
        .collect();
    let wanted: BTreeMap<String, String> = desired::desired_keys(input.prefix, &outcomes)
        .into_iter()
        .filter(|(k, _)| k.starts_with(&under))
        .collect();
    let elsewhere = match input.claim {
        Claim::Elsewhere(owner) => Some(owner.as_str()),
        _ => None,
    };
    let etcd = |key: &str| input.etcd.get(key).cloned();

    let mut selected: Vec<&Pod> = input
        .pods
        .iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && desired::selector_matches(&reg.spec.selector, p.metadata.labels.as_ref())
        })
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let mut accounted: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for pod in selected {
        let facts = pod_facts(reg, pod, input.nodes);
        let decision = desired::pod_decision_on(reg, pod, &topology, input.cluster);
        let row = match decision {
            PodDecision::Endpoint(endpoint) => {
                let key = value::key(&target, &endpoint.addr);
                let want = wanted.get(&key).cloned();
                let held = etcd(&key);
                accounted.insert(key.clone());
                let (verdict, detail) = match (elsewhere, &held) {
                    (Some(owner), _) => owned_elsewhere(owner),
                    (None, None) => (
                        Verdict::MissingInEtcd,
                        "the operator wants this key; etcd does not hold it".to_string(),
                    ),
                    (None, Some(h)) if Some(&h.value) == want.as_ref() => {
                        (Verdict::Published, String::new())
                    }
                    (None, Some(_)) => (
                        Verdict::StaleInEtcd,
                        "etcd holds another value than the operator wants".to_string(),
                    ),
                };
                Row {
                    pod: Some(facts),
                    key: Some(key),
                    want,
                    etcd: held,
                    verdict,
                    detail,
                }
            }
            other => {
                let verdict = match other {
                    PodDecision::PortNotFound(_) | PodDecision::InvalidPort(_) => {
                        Verdict::PortMissing
                    }
                    _ => Verdict::NotReady,
                };
                let mut row = Row {
                    pod: Some(facts.clone()),
                    key: None,
                    want: None,
                    etcd: None,
                    verdict,
                    detail: other.to_string(),
                };
                // A key for the pod's address that nobody wants: still published, stale.
                if elsewhere.is_none()
                    && let Some(key) = address_key(&target, &facts)
                    && !wanted.contains_key(&key)
                    && let Some(held) = etcd(&key)
                {
                    accounted.insert(key.clone());
                    row.key = Some(key);
                    row.etcd = Some(held);
                    row.verdict = Verdict::StaleInEtcd;
                    row.detail = format!("etcd still holds its key, but {other}");
                }
                row
            }
        };
        out.push(row);
    }

    for (key, held) in input.etcd.range(under.clone()..) {
        if !key.starts_with(&under) {
            break;
        }
        if accounted.contains(key) {
            continue;
        }
        let want = wanted.get(key).cloned();
        let (verdict, detail) = match (elsewhere, &want) {
            (Some(owner), _) => owned_elsewhere(owner),
            (None, Some(w)) if *w == held.value => (
                Verdict::Published,
                "wanted by another registration or pod of this service".to_string(),
            ),
            (None, Some(_)) => (
                Verdict::StaleInEtcd,
                "etcd holds another value than the operator wants".to_string(),
            ),
            (None, None) => (
                Verdict::StaleInEtcd,
                match value_pod(&held.value) {
                    Some(pod) => {
                        format!("no selected pod should have this key (value names pod {pod})")
                    }
                    None => "no selected pod should have this key".to_string(),
                },
            ),
        };
        out.push(Row {
            pod: None,
            key: Some(key.clone()),
            want,
            etcd: Some(held.clone()),
            verdict,
            detail,
        });
    }
    out
}

/// The rows of `--target`: what etcd holds under `target`, without Kubernetes. A key is
/// `published` when its value is an endpoint for the key's address (what a client uses), else
/// `stale-in-etcd`; everything is `owned-elsewhere` when another cluster claims the prefix.
pub fn etcd_rows(target: &str, etcd: &BTreeMap<String, EtcdEntry>, claim: &Claim) -> Vec<Row> {
    let under = format!("{target}/");
    etcd.iter()
        .filter(|(k, _)| k.starts_with(&under))
        .map(|(key, held)| {
            let addr = &key[under.len()..];
            let (verdict, detail) = match claim {
                Claim::Elsewhere(owner) => owned_elsewhere(owner),
                _ if value_addr(&held.value).as_deref() == Some(addr) => {
                    (Verdict::Published, String::new())
                }
                _ => (
                    Verdict::StaleInEtcd,
                    "the value is not an endpoint with this key's address".to_string(),
                ),
            };
            Row {
                pod: None,
                key: Some(key.clone()),
                want: None,
                etcd: Some(held.clone()),
                verdict,
                detail,
            }
        })
        .collect()
}

fn owned_elsewhere(owner: &str) -> (Verdict, String) {
    (
        Verdict::OwnedElsewhere,
        format!("the prefix is claimed by cluster {owner:?}; this cluster writes nothing there"),
    )
}

/// The key the pod's address would have (IP and resolved port), whatever its readiness.
fn address_key(target: &str, facts: &PodFacts) -> Option<String> {
    let ip: IpAddr = facts.ip.as_deref()?.parse().ok()?;
    Some(value::key(
        target,
        &SocketAddr::new(ip, facts.port?).to_string(),
    ))
}

fn value_json(value: &str) -> Option<serde_json::Value> {
    serde_json::from_str(value).ok()
}

fn value_addr(value: &str) -> Option<String> {
    Some(value_json(value)?.get("Addr")?.as_str()?.to_string())
}

fn value_pod(value: &str) -> Option<String> {
    Some(
        value_json(value)?
            .get("Metadata")?
            .get("pod")?
            .as_str()?
            .to_string(),
    )
}

#[cfg(test)]
mod tests;
