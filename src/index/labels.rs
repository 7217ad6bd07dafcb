//! The pods of every namespace by label pair, kept up to date with the pod cache, so that
//! recomputing a registration looks only at the pods carrying the rarest of its `matchLabels`
//! pairs (a superset of those its selector matches: the rules still check every candidate in
//! full, so the outcome is the same) instead of every pod of its namespace. A pod change then
//! costs in proportion to the registrations' own pods, not to the namespace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::pod::CompactPod;

/// Label key -> value -> pod names.
type Pairs = HashMap<Arc<str>, HashMap<Arc<str>, BTreeSet<Arc<str>>>>;

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct LabelIndex {
    /// By namespace.
    namespaces: HashMap<Arc<str>, Pairs>,
}

impl LabelIndex {
    /// Indexes every pod of `pods` (namespace -> name -> pod), replacing what was indexed.
    pub(super) fn rebuild(
        &mut self,
        pods: &HashMap<Arc<str>, BTreeMap<Arc<str>, Arc<CompactPod>>>,
    ) {
        self.namespaces.clear();
        for pod in pods.values().flat_map(BTreeMap::values) {
            self.insert(pod);
        }
    }

    /// Adds `pod` under its labels.
    pub(super) fn insert(&mut self, pod: &CompactPod) {
        let pairs = self.namespaces.entry(pod.namespace.clone()).or_default();
        for (key, value) in pod.labels.shared() {
            pairs
                .entry(key.clone())
                .or_default()
                .entry(value.clone())
                .or_default()
                .insert(pod.name.clone());
        }
    }

    /// Removes `pod` (as it was indexed) from under its labels.
    pub(super) fn remove(&mut self, pod: &CompactPod) {
        let Some(pairs) = self.namespaces.get_mut(&*pod.namespace) else {
            return;
        };
        for (key, value) in pod.labels.iter() {
            let Some(values) = pairs.get_mut(key) else {
                continue;
            };
            if let Some(names) = values.get_mut(value) {
                names.remove(&*pod.name);
                if names.is_empty() {
                    values.remove(value);
                }
            }
            if values.is_empty() {
                pairs.remove(key);
            }
        }
        if pairs.is_empty() {
            self.namespaces.remove(&*pod.namespace);
        }
    }

    /// The names of the pods of `namespace` that can match `selector`: those with the rarest of
    /// its `matchLabels` pairs; `None` when it has no `matchLabels` (any pod may match).
    pub(super) fn candidates(
        &self,
        namespace: &str,
        selector: &LabelSelector,
    ) -> Option<impl Iterator<Item = &Arc<str>>> {
        let pairs = self.namespaces.get(namespace);
        selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| {
                pairs
                    .and_then(|p| p.get(k.as_str()))
                    .and_then(|values| values.get(v.as_str()))
            })
            .min_by_key(|names| names.map_or(0, BTreeSet::len))
            .map(|names| names.into_iter().flatten())
    }
}
