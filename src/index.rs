//! The operator's in-memory view of the cluster: ServiceRegistrations and Pods (in their
//! compact form, [`CompactPod`], with shared strings interned), fed by watcher events and kept
//! apart from the I/O that produces them, so it is tested without an API server.
//!
//! - Initial lists and relists are buffered until `InitDone` and then swapped in whole: a relist
//!   (e.g. after an API-server restart) never shows an empty cluster in between, so it can never
//!   make the operator delete keys.
//! - A pod event marks dirty only the registrations of its namespace whose selector matches the
//!   pod now (checked only for the selectors indexed under one of the pod's label pairs, see
//!   `selectors`), or that published it before; [`Index::flush`] recomputes just those outcomes.
//! - A pod event that takes a published endpoint away (the pod was deleted, turned terminating
//!   or not Ready, or moved) is a removal ([`Index::has_removal`]): the engine flushes it at
//!   once instead of holding it behind the coalescing window.
//! - [`Index::synced`] is true once both kinds finished their first list: only then may the
//!   etcd writer delete anything.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::Event;

use crate::crd::ServiceRegistration;
use crate::desired::{self, RegistrationOutcome, selector_matches_by};
use crate::etcd::DesiredKeys;
use crate::pod::{CompactPod, Interner};
use crate::topology::NodeTopology;
use desired_state::DesiredState;
pub use desired_state::TargetCount;
use labels::LabelIndex;
use published_by::PublishedBy;
use selectors::SelectorIndex;

/// A registration's identity. Ordered by namespace, then name (a namespace's registrations are
/// one range).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl RegKey {
    /// The key of `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        RegKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for RegKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What [`Index::flush`] recomputed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Every registration recomputed (its status may need writing even when its endpoints
    /// did not change, e.g. a new `observedGeneration`).
    pub touched: Vec<RegKey>,
    /// Those whose outcome changed or that disappeared: the desired etcd state changed.
    pub changed: Vec<RegKey>,
    /// The targets whose number of desired keys changed, appeared or went away.
    pub targets: Vec<TargetCount>,
}

struct Kind<K> {
    synced: bool,
    init: Option<Vec<K>>,
}

impl<K> Default for Kind<K> {
    fn default() -> Self {
        Kind {
            synced: false,
            init: None,
        }
    }
}

/// See the module docs.
pub struct Index {
    prefix: String,
    regs: BTreeMap<RegKey, Arc<ServiceRegistration>>,
    /// Pods by namespace, then name.
    pods: HashMap<Arc<str>, BTreeMap<Arc<str>, Arc<CompactPod>>>,
    /// The shared strings of the pods.
    strings: Interner,
    outcomes: BTreeMap<RegKey, RegistrationOutcome>,
    /// The desired keys of `outcomes`, kept up to date by [`Index::flush`].
    desired: DesiredState,
    dirty: BTreeSet<RegKey>,
    /// A pending change removes a published endpoint.
    removal: bool,
    reg_kind: Kind<ServiceRegistration>,
    pod_kind: Kind<CompactPod>,
    /// Node topology by node name (empty, and synced from the start, without topology).
    nodes: HashMap<String, NodeTopology>,
    node_kind: Kind<Node>,
    /// The `cluster` metadata of every endpoint (`--publish-cluster-id`), when set.
    cluster: Option<String>,
    /// The pods of every namespace by label pair.
    labels: LabelIndex,
    /// The registrations of every namespace by a `matchLabels` pair of their selector.
    selectors: SelectorIndex,
    /// Which registrations' outcomes publish each pod (or report problems).
    published: PublishedBy,
    /// From this many registrations of one namespace in a flush, their candidate pods come
    /// from `labels` (1: always; tests take the other path, every pod of the namespace, too).
    label_index_from: usize,
}

fn reg_key(reg: &ServiceRegistration) -> Option<RegKey> {
    Some(RegKey::new(
        reg.metadata.namespace.clone()?,
        reg.metadata.name.clone()?,
    ))
}

impl Index {
    /// An empty index for keys under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Index {
            desired: DesiredState::new(&prefix),
            prefix,
            regs: BTreeMap::new(),
            pods: HashMap::new(),
            strings: Interner::default(),
            outcomes: BTreeMap::new(),
            dirty: BTreeSet::new(),
            removal: false,
            reg_kind: Kind::default(),
            pod_kind: Kind::default(),
            nodes: HashMap::new(),
            node_kind: Kind {
                synced: true,
                init: None,
            },
            cluster: None,
            labels: LabelIndex::default(),
            selectors: SelectorIndex::default(),
            published: PublishedBy::default(),
            label_index_from: 1,
        }
    }

    /// The same index, taking a namespace's candidate pods from the label index from `n`
    /// registrations to recompute in a flush (the default is 1: always; `usize::MAX` checks
    /// every pod of the namespace instead).
    #[cfg(test)]
    fn with_label_index_from(mut self, n: usize) -> Self {
        self.label_index_from = n.max(1);
        self
    }

    /// The same index, adding `cluster` to every endpoint's metadata (when `Some`).
    pub fn publishing_cluster(mut self, cluster: Option<String>) -> Self {
        self.cluster = cluster;
        self
    }

    /// An empty index that also publishes node topology: not synced before Nodes are listed.
    pub fn with_topology(prefix: impl Into<String>) -> Self {
        let mut index = Index::new(prefix);
        index.node_kind.synced = false;
        index
    }

    /// Every kind has completed its first full list.
    pub fn synced(&self) -> bool {
        self.reg_kind.synced && self.pod_kind.synced && self.node_kind.synced
    }

    /// Applies one Node watcher event (nodes should already be trimmed); a node whose topology
    /// changed marks the registrations of the pods on it.
    pub fn apply_node(&mut self, event: Event<Node>) {
        match event {
            Event::Init => self.node_kind.init = Some(Vec::new()),
            Event::InitApply(node) => match self.node_kind.init.as_mut() {
                Some(buffer) => buffer.push(node),
                None => self.upsert_node(&node),
            },
            Event::InitDone => {
                let listed = self.node_kind.init.take().unwrap_or_default();
                let nodes: HashMap<String, NodeTopology> = listed
                    .iter()
                    .filter_map(|n| Some((n.metadata.name.clone()?, NodeTopology::of(n))))
                    .collect();
                let changed: BTreeSet<String> = nodes
                    .keys()
                    .chain(self.nodes.keys())
                    .filter(|n| nodes.get(*n) != self.nodes.get(*n))
                    .cloned()
                    .collect();
                self.nodes = nodes;
                self.mark_nodes(&changed);
                self.node_kind.synced = true;
            }
            Event::Apply(node) => self.upsert_node(&node),
            Event::Delete(node) => {
                if let Some(name) = node.metadata.name.as_deref()
                    && self.nodes.remove(name).is_some()
                {
                    self.mark_nodes(&BTreeSet::from([name.to_owned()]));
                }
            }
        }
    }

    fn upsert_node(&mut self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let topology = NodeTopology::of(node);
        if self.nodes.get(&name) != Some(&topology) {
            self.nodes.insert(name.clone(), topology);
            self.mark_nodes(&BTreeSet::from([name]));
        }
    }

    /// Marks the registrations of every pod on one of `nodes`.
    fn mark_nodes(&mut self, nodes: &BTreeSet<String>) {
        if nodes.is_empty() {
            return;
        }
        let on_them: Vec<Arc<CompactPod>> = self
            .pods
            .values()
            .flat_map(BTreeMap::values)
            .filter(|p| p.node.as_deref().is_some_and(|n| nodes.contains(n)))
            .cloned()
            .collect();
        for pod in on_them {
            self.mark_for_pod(&pod);
        }
    }

    /// Whether `key` changed since the last flush.
    pub fn is_dirty(&self, key: &RegKey) -> bool {
        self.dirty.contains(key)
    }

    /// Whether a flush has work to do.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Whether a pending pod change removes a published endpoint (see the module docs).
    pub fn has_removal(&self) -> bool {
        self.removal
    }

    /// Applies one ServiceRegistration watcher event. Registrations are cached without their
    /// `managedFields` (nothing reads them; the operator's own status writes add an entry each).
    pub fn apply_registration(&mut self, mut event: Event<ServiceRegistration>) {
        if let Event::InitApply(reg) | Event::Apply(reg) = &mut event {
            reg.metadata.managed_fields = None;
        }
        match event {
            Event::Init => self.reg_kind.init = Some(Vec::new()),
            Event::InitApply(reg) => match self.reg_kind.init.as_mut() {
                Some(buffer) => buffer.push(reg),
                None => self.upsert_registration(reg),
            },
            Event::InitDone => {
                let listed = self.reg_kind.init.take().unwrap_or_default();
                let listed: BTreeMap<RegKey, Arc<ServiceRegistration>> = listed
                    .into_iter()
                    .filter_map(|r| Some((reg_key(&r)?, Arc::new(r))))
                    .collect();
                for gone in self.regs.keys().filter(|k| !listed.contains_key(*k)) {
                    self.dirty.insert(gone.clone());
                }
                for (key, reg) in &listed {
                    if self.regs.get(key) != Some(reg) {
                        self.dirty.insert(key.clone());
                    }
                }
                self.regs = listed;
                self.selectors = SelectorIndex::default();
                for (key, reg) in &self.regs {
                    self.selectors.insert(key, &reg.spec.selector);
                }
                self.reg_kind.synced = true;
            }
            Event::Apply(reg) => self.upsert_registration(reg),
            Event::Delete(reg) => {
                if let Some(key) = reg_key(&reg) {
                    self.regs.remove(&key);
                    self.selectors.remove(&key);
                    self.dirty.insert(key);
                }
            }
        }
    }

    fn upsert_registration(&mut self, reg: ServiceRegistration) {
        if let Some(key) = reg_key(&reg) {
            let reg = Arc::new(reg);
            if self.regs.get(&key) != Some(&reg) {
                self.selectors.insert(&key, &reg.spec.selector);
                self.regs.insert(key.clone(), reg);
                self.dirty.insert(key);
            }
        }
    }

    /// The compact form of `pod` (shared strings interned); `None` without a namespace or name.
    fn compact(&mut self, pod: &Pod) -> Option<CompactPod> {
        pod.metadata.namespace.as_ref()?;
        pod.metadata.name.as_ref()?;
        let strings = &mut self.strings;
        Some(CompactPod::new(pod, |s| strings.intern(s)))
    }

    /// Applies one Pod watcher event: each pod is kept in its compact form only.
    pub fn apply_pod(&mut self, event: Event<Pod>) {
        match event {
            Event::Init => self.pod_kind.init = Some(Vec::new()),
            Event::InitApply(pod) => {
                let Some(pod) = self.compact(&pod) else {
                    return;
                };
                match self.pod_kind.init.as_mut() {
                    Some(buffer) => buffer.push(pod),
                    None => self.upsert_pod(pod),
                }
            }
            Event::InitDone => {
                let listed = self.pod_kind.init.take().unwrap_or_default();
                let mut pods: HashMap<Arc<str>, BTreeMap<Arc<str>, Arc<CompactPod>>> =
                    HashMap::new();
                for pod in listed {
                    pods.entry(pod.namespace.clone())
                        .or_default()
                        .insert(pod.name.clone(), Arc::new(pod));
                }
                // Which namespaces changed at all: only their registrations are recomputed.
                let namespaces: BTreeSet<Arc<str>> =
                    pods.keys().chain(self.pods.keys()).cloned().collect();
                for ns in namespaces {
                    if self.pods.get(&ns) != pods.get(&ns) {
                        self.mark_namespace(&ns);
                    }
                }
                self.pods = pods;
                self.labels.rebuild(&self.pods);
                // The previous generation's strings are free now.
                self.strings.sweep();
                self.pod_kind.synced = true;
            }
            Event::Apply(pod) => {
                if let Some(pod) = self.compact(&pod) {
                    self.upsert_pod(pod);
                }
            }
            Event::Delete(pod) => {
                let (Some(ns), Some(name)) = (
                    pod.metadata.namespace.as_deref(),
                    pod.metadata.name.as_deref(),
                ) else {
                    return;
                };
                let removed = self.pods.get_mut(ns).and_then(|m| m.remove(name));
                if let Some(old) = removed {
                    self.labels.remove(&old);
                    self.note_removal(&old, None);
                    self.mark_for_pod(&old);
                }
            }
        }
    }

    fn upsert_pod(&mut self, pod: CompactPod) {
        let (ns, name) = (pod.namespace.clone(), pod.name.clone());
        let pod = Arc::new(pod);
        let old = self.pods.entry(ns).or_default().insert(name, pod.clone());
        if old.as_ref() == Some(&pod) {
            return;
        }
        if let Some(old) = &old {
            self.labels.remove(old);
        }
        self.labels.insert(&pod);
        if let Some(old) = old {
            self.note_removal(&old, Some(&pod));
            self.mark_for_pod(&old);
        }
        self.mark_for_pod(&pod);
    }

    /// Notes a removal when `old` is published by some registration and `new` (`None`: the pod
    /// is gone) no longer gives that registration the same endpoint.
    fn note_removal(&mut self, old: &CompactPod, new: Option<&CompactPod>) {
        if self.removal {
            return;
        }
        let (ns, name) = (&*old.namespace, &*old.name);
        self.removal = self
            .published
            .publishing(ns, name)
            .filter_map(|key| Some((key, self.outcomes.get(key)?)))
            .any(|(key, outcome)| {
                outcome
                    .endpoints
                    .values()
                    .filter(|e| e.pod == name)
                    .any(|published| {
                        let kept = match (new, self.regs.get(key)) {
                            (Some(new), Some(reg)) => matches!(
                                desired::pod_decision(reg, new),
                                desired::PodDecision::Endpoint(e) if e.addr == published.addr
                            ),
                            _ => false,
                        };
                        !kept
                    })
            });
    }

    /// Marks the registrations that select `pod` or published it.
    fn mark_for_pod(&mut self, pod: &CompactPod) {
        let (ns, name) = (&*pod.namespace, &*pod.name);
        let published = self.published.publishing(ns, name);
        let problems = self.published.with_problems(ns);
        let mut marks: Vec<RegKey> = published.chain(problems).cloned().collect();
        for key in self.selectors.candidates(ns, pod.labels.iter()) {
            if let Some(reg) = self.regs.get(key)
                && selector_matches_by(&reg.spec.selector, |k| pod.labels.get(k))
            {
                marks.push(key.clone());
            }
        }
        self.dirty.extend(marks);
    }

    fn mark_namespace(&mut self, ns: &str) {
        let start = RegKey::new(ns, "");
        let keys: Vec<RegKey> = self
            .regs
            .range(start..)
            .take_while(|(k, _)| k.namespace == ns)
            .map(|(k, _)| k.clone())
            .collect();
        self.dirty.extend(keys);
    }

    /// Recomputes the outcomes of dirty registrations.
    pub fn flush(&mut self) -> Flushed {
        let mut flushed = Flushed::default();
        self.removal = false;
        let dirty = std::mem::take(&mut self.dirty);
        // The dirty keys come namespace by namespace: whether to use the label index is
        // decided once per namespace.
        let mut indexing: Option<(&str, bool)> = None;
        for key in &dirty {
            flushed.touched.push(key.clone());
            let Some(reg) = self.regs.get(key) else {
                if let Some(old) = self.outcomes.remove(key) {
                    self.desired.changed(key, Some(&old.target), None);
                    self.published.changed(key, Some(&old), None);
                    flushed.changed.push(key.clone());
                }
                continue;
            };
            let in_namespace = self.pods.get(key.namespace.as_str());
            let ns = key.namespace.as_str();
            if indexing.is_none_or(|(at, _)| at != ns) {
                let many = dirty
                    .range(RegKey::new(ns, "")..)
                    .take_while(|k| k.namespace == ns)
                    .nth(self.label_index_from - 1)
                    .is_some();
                indexing = Some((ns, many));
            }
            let indexed = indexing
                .filter(|(_, many)| *many)
                .and_then(|_| self.labels.candidates(ns, &reg.spec.selector));
            let nodes = &self.nodes;
            let cluster = self.cluster.as_deref();
            let node = |n: &str| nodes.get(n);
            let outcome = match indexed {
                Some(names) => desired::registration_outcome_on(
                    &self.prefix,
                    reg,
                    names.filter_map(|n| in_namespace.and_then(|m| m.get(n))),
                    node,
                    cluster,
                ),
                None => desired::registration_outcome_on(
                    &self.prefix,
                    reg,
                    in_namespace.into_iter().flat_map(|m| m.values()),
                    node,
                    cluster,
                ),
            };
            if self.outcomes.get(key) != Some(&outcome) {
                let target = outcome.target.clone();
                let old = self.outcomes.insert(key.clone(), outcome);
                self.published
                    .changed(key, old.as_ref(), self.outcomes.get(key));
                let old = old.as_ref().map(|o| o.target.as_str());
                self.desired.changed(key, old, Some(&target));
                flushed.changed.push(key.clone());
            }
        }
        flushed.targets = self.desired.refresh(&self.outcomes);
        flushed
    }

    /// Every key (and value) that should be under the prefix, from the current outcomes (as of
    /// the last flush): kept up to date per changed target, a clone is O(1).
    pub fn keys(&self) -> &DesiredKeys {
        self.desired.keys()
    }

    /// [`Index::keys`] as an ordinary map (a copy: for tests and diagnostics).
    pub fn desired_keys(&self) -> BTreeMap<String, String> {
        self.keys()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The target (`<prefix>/<namespace>/<service>`) of every registration's current outcome
    /// (a target named by several registrations comes once per registration).
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.outcomes.values().map(|o| o.target.as_str())
    }

    /// Every registration's current outcome.
    pub fn outcomes(&self) -> impl Iterator<Item = &RegistrationOutcome> {
        self.outcomes.values()
    }

    /// The current outcome of a registration.
    pub fn outcome(&self, key: &RegKey) -> Option<&RegistrationOutcome> {
        self.outcomes.get(key)
    }

    /// A registration by key.
    pub fn registration(&self, key: &RegKey) -> Option<&Arc<ServiceRegistration>> {
        self.regs.get(key)
    }

    /// All registrations.
    pub fn registrations(&self) -> impl Iterator<Item = (&RegKey, &Arc<ServiceRegistration>)> {
        self.regs.iter()
    }

    /// Number of registrations.
    pub fn registration_count(&self) -> usize {
        self.regs.len()
    }

    /// Number of pods cached.
    pub fn pod_count(&self) -> usize {
        self.pods.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reg(ns: &str, name: &str, app: &str) -> ServiceRegistration {
        serde_json::from_value(json!({
            "apiVersion": "registrar.dev/v1alpha1", "kind": "ServiceRegistration",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": app}}, "port": 50051}
        }))
        .unwrap()
    }

    fn pod(ns: &str, name: &str, app: &str, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app},
                         "managedFields": [{"manager": "x"}], "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 50051}]}],
                     "nodeName": "n1", "serviceAccountName": "sa"},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}},
                                      {"type": "ContainersReady", "status": "True"}]}
        }))
        .unwrap()
    }

    fn node(name: &str, zone: Option<&str>) -> Node {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
            "status": {"capacity": {"cpu": "1"}}
        }))
        .unwrap();
        if let (Some(z), Some(labels)) = (zone, n.metadata.labels.as_mut()) {
            labels.insert(crate::topology::ZONE_LABEL.into(), z.into());
        }
        crate::topology::trim_node(&mut n);
        n
    }

    #[test]
    fn with_topology_waits_for_nodes_and_a_relabel_rewrites_their_pods_endpoints() {
        let mut idx = Index::with_topology("registrar");
        idx.apply_registration(Event::Init);
        idx.apply_registration(Event::InitApply(reg("shop", "a", "g")));
        idx.apply_registration(Event::InitDone);
        idx.apply_pod(Event::Init);
        idx.apply_pod(Event::InitApply(pod("shop", "p1", "g", "192.0.2.1", true)));
        idx.apply_pod(Event::InitDone);
        assert!(!idx.synced(), "synced before the nodes are listed");
        idx.apply_node(Event::Init);
        idx.apply_node(Event::InitApply(node("n1", Some("z1"))));
        idx.apply_node(Event::InitApply(node("n2", Some("z2"))));
        idx.apply_node(Event::InitDone);
        assert!(idx.synced());
        idx.flush();
        let values: Vec<String> = idx.desired_keys().into_values().collect();
        assert_eq!(values.len(), 1);
        assert!(values[0].contains(r#""zone":"z1""#), "{values:?}");
        // A node with no pods changing, or a status-only update, marks nothing.
        idx.apply_node(Event::Apply(node("n2", Some("z9"))));
        idx.apply_node(Event::Apply(node("n1", Some("z1"))));
        assert!(!idx.has_dirty());
        // Relabelling the pod's node rewrites its endpoint.
        idx.apply_node(Event::Apply(node("n1", Some("z3"))));
        assert!(idx.is_dirty(&RegKey::new("shop", "a")));
        let flushed = idx.flush();
        assert_eq!(flushed.changed, [RegKey::new("shop", "a")]);
        let values: Vec<String> = idx.desired_keys().into_values().collect();
        assert!(
            values.iter().all(|v| v.contains(r#""zone":"z3""#)),
            "{values:?}"
        );
        // The label removed: no zone key.
        idx.apply_node(Event::Apply(node("n1", None)));
        idx.flush();
        let values: Vec<String> = idx.desired_keys().into_values().collect();
        assert!(values.iter().all(|v| !v.contains("zone")), "{values:?}");
    }

    fn synced_index(regs: Vec<ServiceRegistration>, pods: Vec<Pod>) -> Index {
        let mut idx = Index::new("registrar");
        idx.apply_registration(Event::Init);
        for r in regs {
            idx.apply_registration(Event::InitApply(r));
        }
        idx.apply_registration(Event::InitDone);
        idx.apply_pod(Event::Init);
        for p in pods {
            idx.apply_pod(Event::InitApply(p));
        }
        idx.apply_pod(Event::InitDone);
        idx.flush();
        idx
    }

    fn keys(idx: &Index) -> Vec<String> {
        idx.desired_keys().into_keys().collect()
    }

    #[test]
    fn not_synced_until_both_kinds_listed() {
        let mut idx = Index::new("registrar");
        assert!(!idx.synced());
        idx.apply_registration(Event::Init);
        idx.apply_registration(Event::InitDone);
        assert!(!idx.synced());
        idx.apply_pod(Event::Init);
        idx.apply_pod(Event::InitDone);
        assert!(idx.synced());
    }

    #[test]
    fn ready_pod_is_published_and_unready_removed() {
        let mut idx = synced_index(
            vec![reg("shop", "greeter", "g")],
            vec![pod("shop", "p1", "g", "127.0.0.5", true)],
        );
        assert_eq!(keys(&idx), vec!["registrar/shop/greeter/127.0.0.5:50051"]);
        idx.apply_pod(Event::Apply(pod("shop", "p1", "g", "127.0.0.5", false)));
        assert_eq!(idx.flush().changed, vec![RegKey::new("shop", "greeter")]);
        assert!(keys(&idx).is_empty());
    }

    #[test]
    fn relist_is_swapped_in_whole_and_unchanged_relist_changes_nothing() {
        let mut idx = synced_index(
            vec![reg("shop", "greeter", "g")],
            vec![pod("shop", "p1", "g", "127.0.0.5", true)],
        );
        // A relist starts: nothing disappears while it is buffered.
        idx.apply_pod(Event::Init);
        idx.apply_registration(Event::Init);
        assert!(idx.flush().changed.is_empty());
        assert_eq!(keys(&idx).len(), 1);
        idx.apply_pod(Event::InitApply(pod("shop", "p1", "g", "127.0.0.5", true)));
        idx.apply_registration(Event::InitApply(reg("shop", "greeter", "g")));
        idx.apply_registration(Event::InitDone);
        idx.apply_pod(Event::InitDone);
        assert!(
            idx.flush().changed.is_empty(),
            "an identical relist must change nothing"
        );
        assert_eq!(keys(&idx).len(), 1);
    }

    #[test]
    fn relist_drops_what_vanished_meanwhile() {
        let mut idx = synced_index(
            vec![reg("shop", "greeter", "g")],
            vec![
                pod("shop", "p1", "g", "127.0.0.5", true),
                pod("shop", "p2", "g", "127.0.0.6", true),
            ],
        );
        assert_eq!(keys(&idx).len(), 2);
        idx.apply_pod(Event::Init);
        idx.apply_pod(Event::InitApply(pod("shop", "p1", "g", "127.0.0.5", true)));
        idx.apply_pod(Event::InitDone);
        idx.flush();
        assert_eq!(keys(&idx), vec!["registrar/shop/greeter/127.0.0.5:50051"]);
    }

    #[test]
    fn pod_event_marks_only_matching_registrations() {
        let mut idx = synced_index(
            vec![
                reg("shop", "a", "a"),
                reg("shop", "b", "b"),
                reg("other", "a", "a"),
            ],
            vec![],
        );
        idx.apply_pod(Event::Apply(pod("shop", "p1", "a", "127.0.0.5", true)));
        assert_eq!(
            idx.dirty.iter().cloned().collect::<Vec<_>>(),
            vec![RegKey::new("shop", "a")]
        );
        idx.flush();
        // Relabelled away: the registration that published it is marked.
        idx.apply_pod(Event::Apply(pod("shop", "p1", "zzz", "127.0.0.5", true)));
        assert!(idx.dirty.contains(&RegKey::new("shop", "a")));
        idx.flush();
        assert!(keys(&idx).is_empty());
    }

    #[test]
    fn deleting_a_registration_removes_only_its_endpoints() {
        let mut idx = synced_index(
            vec![reg("shop", "a", "a"), reg("shop", "b", "b")],
            vec![
                pod("shop", "p1", "a", "127.0.0.5", true),
                pod("shop", "p2", "b", "127.0.0.6", true),
            ],
        );
        assert_eq!(keys(&idx).len(), 2);
        idx.apply_registration(Event::Delete(reg("shop", "a", "a")));
        assert_eq!(idx.flush().changed, vec![RegKey::new("shop", "a")]);
        assert_eq!(keys(&idx), vec!["registrar/shop/b/127.0.0.6:50051"]);
    }

    #[test]
    fn the_cache_keeps_what_the_decision_reads() {
        let mut idx = synced_index(vec![], vec![pod("shop", "p1", "g", "127.0.0.5", true)]);
        let p = idx.pods["shop"]["p1"].clone();
        assert_eq!(p.node.as_deref(), Some("n1"));
        assert_eq!(p.labels.get("app"), Some("g"));
        assert_eq!(p.ip.as_deref(), Some("127.0.0.5"));
        assert_eq!(p.phase.as_deref(), Some("Running"));
        assert!(p.ready && !p.terminating);
        // A second pod of the namespace shares its interned strings.
        idx.apply_pod(Event::Apply(pod("shop", "p2", "g", "127.0.0.6", true)));
        let q = idx.pods["shop"]["p2"].clone();
        assert!(Arc::ptr_eq(&p.namespace, &q.namespace));
        assert!(Arc::ptr_eq(
            p.node.as_ref().unwrap(),
            q.node.as_ref().unwrap()
        ));
    }
}

mod desired_state;
mod labels;
mod published_by;
mod selectors;

#[cfg(test)]
mod props;
