//! The compact pod: the few facts of a Pod that the decision ([`crate::desired`]), the index,
//! node topology and `registrar inspect` read, and nothing else. The operator caches these
//! instead of (trimmed) `Pod` objects: at 100,000 pods the difference is hundreds of MiB.
//!
//! A Pod becomes a [`CompactPod`] once, when it enters the cache. Facts that follow a rule of
//! their own are extracted here exactly as the rule reads them: the primary IP
//! ([`crate::desired::pod_ip`]), the `Ready` condition ([`crate::desired::ready_condition`]) and
//! the named TCP container ports in `FindPort` order (containers, then sidecar containers), so
//! the rules themselves ([`crate::desired`]) read only the compact form.
//!
//! Strings shared by many pods (namespace, label keys and values, node name, phase, port
//! names) go through an [`Interner`] in the index, so each distinct one is stored once.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::desired;

/// A pod's labels, sorted by key (as the API server's map is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Arc<str>, Arc<str>)]>);

impl Labels {
    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// Every (key, value), sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Every (key, value) as the shared strings, sorted by key.
    pub fn shared(&self) -> &[(Arc<str>, Arc<str>)] {
        &self.0
    }
}

/// A named TCP container port with a usable number (1..=65535).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    /// The port's name.
    pub name: Arc<str>,
    /// Its number.
    pub port: u16,
}

/// See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactPod {
    /// `metadata.namespace` (empty when unset).
    pub namespace: Arc<str>,
    /// `metadata.name` (empty when unset).
    pub name: Arc<str>,
    /// `metadata.labels`.
    pub labels: Labels,
    /// The primary IP ([`desired::pod_ip`]).
    pub ip: Option<Box<str>>,
    /// `spec.nodeName`.
    pub node: Option<Arc<str>>,
    /// `status.phase`.
    pub phase: Option<Arc<str>>,
    /// The `Ready` condition is True ([`desired::ready_condition`]).
    pub ready: bool,
    /// That condition's `lastTransitionTime`, when it is True.
    pub ready_since: Option<Time>,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// Named TCP ports with a usable number, containers first, then sidecar (restartable init)
    /// containers, each in its declared order: the first of a name is what `FindPort` picks.
    pub ports: Box<[NamedPort]>,
}

impl CompactPod {
    /// The compact form of `pod`, each shared string made by `intern`.
    pub fn new(pod: &Pod, mut intern: impl FnMut(&str) -> Arc<str>) -> Self {
        let meta = &pod.metadata;
        let labels: Vec<(Arc<str>, Arc<str>)> = meta
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (intern(k), intern(v)))
            .collect();
        let spec = pod.spec.as_ref();
        let sidecars = spec
            .into_iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let ports: Vec<NamedPort> = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .chain(sidecars)
            .flat_map(named_tcp_ports)
            .map(|(name, port)| NamedPort {
                name: intern(name),
                port,
            })
            .collect();
        let ready = desired::ready_condition(pod);
        CompactPod {
            namespace: intern(meta.namespace.as_deref().unwrap_or_default()),
            name: Arc::from(meta.name.as_deref().unwrap_or_default()),
            labels: Labels(labels.into_boxed_slice()),
            ip: desired::pod_ip(pod).map(Box::from),
            node: spec.and_then(|s| s.node_name.as_deref()).map(&mut intern),
            phase: pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .map(&mut intern),
            ready: ready.is_some(),
            ready_since: ready.and_then(|c| c.last_transition_time.clone()),
            terminating: meta.deletion_timestamp.is_some(),
            ports: ports.into_boxed_slice(),
        }
    }

    /// The number of the first port named `name` (see [`CompactPod::ports`]).
    pub fn named_port(&self, name: &str) -> Option<u16> {
        self.ports.iter().find(|p| &*p.name == name).map(|p| p.port)
    }
}

/// The TCP (or unspecified protocol) ports of `container` that have a name and a usable number.
fn named_tcp_ports(container: &Container) -> impl Iterator<Item = (&str, u16)> {
    container.ports.iter().flatten().filter_map(|p| {
        let tcp = p.protocol.as_deref().is_none_or(|proto| proto == "TCP");
        let number = u16::try_from(p.container_port).ok().filter(|n| *n != 0)?;
        Some((p.name.as_deref().filter(|_| tcp)?, number))
    })
}

impl From<&Pod> for CompactPod {
    fn from(pod: &Pod) -> Self {
        CompactPod::new(pod, |s| Arc::from(s))
    }
}

/// What the decision accepts as a pod: a [`CompactPod`], or a `Pod` (converted on the fly;
/// tests and `registrar inspect` hold whole pods).
pub trait AsCompactPod {
    /// The compact form.
    fn compact(&self) -> Cow<'_, CompactPod>;
}

impl AsCompactPod for CompactPod {
    fn compact(&self) -> Cow<'_, CompactPod> {
        Cow::Borrowed(self)
    }
}

impl AsCompactPod for Pod {
    fn compact(&self) -> Cow<'_, CompactPod> {
        Cow::Owned(CompactPod::from(self))
    }
}

impl<T: AsCompactPod + ?Sized> AsCompactPod for &T {
    fn compact(&self) -> Cow<'_, CompactPod> {
        (**self).compact()
    }
}

impl<T: AsCompactPod + ?Sized> AsCompactPod for Arc<T> {
    fn compact(&self) -> Cow<'_, CompactPod> {
        (**self).compact()
    }
}

/// Each distinct string once: [`Interner::intern`] hands out shared copies. Strings nobody else
/// holds any more are dropped by [`Interner::sweep`], which [`Interner::intern`] runs itself
/// whenever the set has doubled since the last sweep, so label churn cannot grow it forever.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
    /// Size of the set after the last sweep.
    swept: usize,
}

/// Below this many strings the interner never sweeps on its own.
const SWEEP_FLOOR: usize = 4096;

impl Interner {
    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        if self.strings.len() >= SWEEP_FLOOR.max(2 * self.swept) {
            self.sweep();
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(shared.clone());
        shared
    }

    /// Drops the strings only the interner holds.
    pub fn sweep(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.strings.shrink_to_fit();
        self.swept = self.strings.len();
    }

    /// Distinct strings held.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p1", "namespace": "shop", "labels": {"b": "2", "a": "1"},
                         "annotations": {"x": "y"}},
            "spec": {
                "nodeName": "n1",
                "containers": [
                    {"name": "c", "image": "i", "ports": [
                        {"containerPort": 53, "name": "dns", "protocol": "UDP"},
                        {"containerPort": 9000},
                        {"containerPort": 8080, "name": "http"}]},
                    {"name": "d", "image": "i", "ports": [{"containerPort": 8081, "name": "http"}]}],
                "initContainers": [
                    {"name": "once", "image": "i", "ports": [{"containerPort": 1, "name": "init"}]},
                    {"name": "side", "image": "i", "restartPolicy": "Always",
                     "ports": [{"containerPort": 7000, "name": "side"}]}]},
            "status": {"phase": "Running", "podIP": "192.0.2.7",
                       "conditions": [{"type": "ContainersReady", "status": "True"},
                                      {"type": "Ready", "status": "True",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    #[test]
    fn keeps_what_the_rules_read() {
        let c = CompactPod::from(&pod());
        assert_eq!((&*c.namespace, &*c.name), ("shop", "p1"));
        assert_eq!(
            c.labels.iter().collect::<Vec<_>>(),
            [("a", "1"), ("b", "2")]
        );
        assert_eq!((c.labels.get("b"), c.labels.get("c")), (Some("2"), None));
        assert_eq!(c.ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(c.node.as_deref(), Some("n1"));
        assert_eq!(c.phase.as_deref(), Some("Running"));
        assert!(c.ready && !c.terminating);
        assert!(c.ready_since.is_some());
        // UDP, unnamed and non-sidecar init container ports are not kept; the first "http" wins.
        let ports: Vec<(&str, u16)> = c.ports.iter().map(|p| (&*p.name, p.port)).collect();
        assert_eq!(ports, [("http", 8080), ("http", 8081), ("side", 7000)]);
        assert_eq!(c.named_port("http"), Some(8080));
        assert_eq!(c.named_port("dns"), None);
        assert_eq!(c.named_port("init"), None);
    }

    #[test]
    fn interning_shares_strings_and_a_sweep_drops_unused_ones() {
        let mut interner = Interner::default();
        let a = CompactPod::new(&pod(), |s| interner.intern(s));
        let b = CompactPod::new(&pod(), |s| interner.intern(s));
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
        assert!(Arc::ptr_eq(&a.labels.0[0].1, &b.labels.0[0].1));
        assert_eq!(a, b);
        let held = interner.len();
        drop((a, b));
        interner.sweep();
        assert!(interner.is_empty(), "{held} strings, none dropped");
    }
}
