//! The candidate pods of a registration during a flush. Recomputing every registration of a
//! namespace (the initial list, a relist) would otherwise check each of them against every pod
//! of the namespace: 10,000 registrations over 100,000 pods in 10 namespaces are 100 million
//! selector checks. A flush that recomputes many registrations of one namespace indexes that
//! namespace's pods by label pair once, and hands each registration only the pods carrying the
//! rarest of its `matchLabels` pairs: a superset of those its selector matches, so the outcome
//! is the same (the rules still check every candidate in full).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::pod::CompactPod;

/// From this many registrations of one namespace recomputed in one flush, the namespace's pods
/// are indexed by label.
pub(super) const INDEX_FROM: usize = 16;

/// A namespace's pods by label pair (each list in the namespace's name order).
pub(super) struct ByLabel<'a> {
    /// Label key -> value -> pods.
    pairs: HashMap<&'a str, HashMap<&'a str, Vec<&'a CompactPod>>>,
}

impl<'a> ByLabel<'a> {
    /// Indexes `pods`.
    pub(super) fn new(pods: &'a BTreeMap<Arc<str>, Arc<CompactPod>>) -> Self {
        let mut pairs: HashMap<&'a str, HashMap<&'a str, Vec<&'a CompactPod>>> = HashMap::new();
        for pod in pods.values() {
            for (key, value) in pod.labels.iter() {
                pairs
                    .entry(key)
                    .or_default()
                    .entry(value)
                    .or_default()
                    .push(pod);
            }
        }
        ByLabel { pairs }
    }

    /// The pods that can match `selector`: those with the rarest of its `matchLabels` pairs;
    /// `None` when it has no `matchLabels` (any pod may match).
    pub(super) fn candidates(&self, selector: &LabelSelector) -> Option<&[&'a CompactPod]> {
        selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| {
                self.pairs
                    .get(k.as_str())
                    .and_then(|values| values.get(v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|pods| pods.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn pod(name: &str, labels: serde_json::Value) -> (Arc<str>, Arc<CompactPod>) {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": labels}
        }))
        .unwrap();
        (Arc::from(name), Arc::new(CompactPod::from(&p)))
    }

    fn selector(labels: serde_json::Value) -> LabelSelector {
        serde_json::from_value(json!({ "matchLabels": labels })).unwrap()
    }

    fn names(pods: Option<&[&CompactPod]>) -> Option<Vec<String>> {
        pods.map(|ps| ps.iter().map(|p| p.name.to_string()).collect())
    }

    #[test]
    fn candidates_carry_the_rarest_pair_and_keep_name_order() {
        let pods = BTreeMap::from([
            pod("a", json!({"tier": "web", "app": "x"})),
            pod("b", json!({"tier": "web", "app": "y"})),
            pod("c", json!({"tier": "web", "app": "x"})),
        ]);
        let index = ByLabel::new(&pods);
        let got = names(index.candidates(&selector(json!({"tier": "web", "app": "x"}))));
        assert_eq!(got, Some(vec!["a".into(), "c".into()]));
        let got = names(index.candidates(&selector(json!({"tier": "web", "app": "z"}))));
        assert_eq!(got, Some(vec![]));
        let only_expressions: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "app", "operator": "Exists"}]
        }))
        .unwrap();
        assert_eq!(names(index.candidates(&only_expressions)), None);
    }
}
