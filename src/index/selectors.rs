//! The registrations of every namespace by one `matchLabels` pair of their selector, so that a
//! pod event checks only the selectors that can match the pod (those indexed under one of the
//! pod's own label pairs, and those without `matchLabels`, which any pod may match) instead of
//! every selector of its namespace. A candidate is still checked in full by the caller: the
//! index only narrows, it never decides.
//!
//! A selector needs every one of its `matchLabels` pairs on the pod, so indexing it under any
//! one of them (the first, in key order) loses nothing.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::RegKey;

/// Label key -> value -> registrations.
type Pairs = HashMap<String, HashMap<String, BTreeSet<RegKey>>>;

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct SelectorIndex {
    /// By namespace: registrations under the first `matchLabels` pair of their selector.
    pairs: HashMap<String, Pairs>,
    /// By namespace: registrations whose selector has no `matchLabels`.
    unindexed: HashMap<String, BTreeSet<RegKey>>,
    /// Where each registration is indexed (`None`: in `unindexed`), to remove it without its
    /// old selector.
    placed: HashMap<RegKey, Option<(String, String)>>,
}

impl SelectorIndex {
    /// Indexes `key` under `selector`, replacing where it was indexed before.
    pub(super) fn insert(&mut self, key: &RegKey, selector: &LabelSelector) {
        let pair = selector
            .match_labels
            .as_ref()
            .and_then(|m| m.iter().next())
            .map(|(k, v)| (k.clone(), v.clone()));
        if self.placed.get(key) == Some(&pair) {
            return;
        }
        self.remove(key);
        let ns = key.namespace.clone();
        match &pair {
            Some((k, v)) => {
                self.pairs
                    .entry(ns)
                    .or_default()
                    .entry(k.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default()
                    .insert(key.clone());
            }
            None => {
                self.unindexed.entry(ns).or_default().insert(key.clone());
            }
        }
        self.placed.insert(key.clone(), pair);
    }

    /// Forgets `key`.
    pub(super) fn remove(&mut self, key: &RegKey) {
        let Some(pair) = self.placed.remove(key) else {
            return;
        };
        let ns = key.namespace.as_str();
        match pair {
            Some((k, v)) => {
                let Some(pairs) = self.pairs.get_mut(ns) else {
                    return;
                };
                if let Some(values) = pairs.get_mut(&k) {
                    if let Some(keys) = values.get_mut(&v) {
                        keys.remove(key);
                        if keys.is_empty() {
                            values.remove(&v);
                        }
                    }
                    if values.is_empty() {
                        pairs.remove(&k);
                    }
                }
                if pairs.is_empty() {
                    self.pairs.remove(ns);
                }
            }
            None => {
                if let Some(keys) = self.unindexed.get_mut(ns) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.unindexed.remove(ns);
                    }
                }
            }
        }
    }

    /// The registrations of `namespace` whose selector can match a pod with `labels`: a
    /// superset of those that do (each at most once).
    pub(super) fn candidates<'a>(
        &'a self,
        namespace: &str,
        labels: impl Iterator<Item = (&'a str, &'a str)> + 'a,
    ) -> impl Iterator<Item = &'a RegKey> + 'a {
        let pairs = self.pairs.get(namespace);
        let indexed = labels
            .filter_map(move |(k, v)| pairs?.get(k)?.get(v))
            .flatten();
        self.unindexed
            .get(namespace)
            .into_iter()
            .flatten()
            .chain(indexed)
    }

    /// How many registrations are indexed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.placed.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use proptest::prelude::*;

    use super::*;
    use crate::desired::selector_matches_by;

    fn selector(labels: &[(&str, &str)], exists: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            match_expressions: (!exists.is_empty()).then(|| {
                exists
                    .iter()
                    .map(|k| LabelSelectorRequirement {
                        key: k.to_string(),
                        operator: "Exists".into(),
                        values: None,
                    })
                    .collect()
            }),
        }
    }

    fn names<'a>(keys: impl Iterator<Item = &'a RegKey>) -> Vec<String> {
        let mut names: Vec<String> = keys.map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn candidates_are_the_selectors_under_a_pod_pair_and_those_without_match_labels() {
        let mut index = SelectorIndex::default();
        let k = |ns: &str, name: &str| RegKey::new(ns, name);
        index.insert(&k("a", "web"), &selector(&[("app", "web")], &[]));
        index.insert(
            &k("a", "web-canary"),
            &selector(&[("app", "web"), ("track", "canary")], &[]),
        );
        index.insert(&k("a", "api"), &selector(&[("app", "api")], &[]));
        index.insert(&k("a", "anything-zoned"), &selector(&[], &["zone"]));
        index.insert(&k("b", "web"), &selector(&[("app", "web")], &[]));
        let pod = [("app", "web"), ("track", "stable")];
        // (case, the pod's labels, the candidates)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Vec<&'a str>);
        let cases: Vec<Case> = vec![
            (
                "a web pod: both web selectors (the canary one is checked in full later) and the unindexed one",
                &pod,
                vec!["a/anything-zoned", "a/web", "a/web-canary"],
            ),
            (
                "no labels: only the unindexed one",
                &[],
                vec!["a/anything-zoned"],
            ),
            (
                "an unknown value",
                &[("app", "db")],
                vec!["a/anything-zoned"],
            ),
        ];
        for (case, labels, want) in cases {
            assert_eq!(
                names(index.candidates("a", labels.iter().copied())),
                want,
                "{case}"
            );
        }
        assert_eq!(names(index.candidates("b", pod.iter().copied())), ["b/web"]);
        assert!(names(index.candidates("c", pod.iter().copied())).is_empty());

        // Re-indexed under a new selector: no longer a candidate for web pods.
        index.insert(&k("a", "web"), &selector(&[("app", "api")], &[]));
        assert_eq!(
            names(index.candidates("a", pod.iter().copied())),
            ["a/anything-zoned", "a/web-canary"]
        );
        for key in [
            k("a", "web"),
            k("a", "web-canary"),
            k("a", "api"),
            k("a", "anything-zoned"),
            k("b", "web"),
        ] {
            index.remove(&key);
        }
        index.remove(&k("a", "never-indexed"));
        assert_eq!(index.len(), 0);
        assert!(index.pairs.is_empty() && index.unindexed.is_empty());
    }

    fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(
            prop::sample::select(vec!["app", "tier", "zone"]).prop_map(String::from),
            prop::sample::select(vec!["a", "b"]).prop_map(String::from),
            0..3,
        )
    }

    fn any_selector() -> impl Strategy<Value = LabelSelector> {
        (
            labels(),
            prop::collection::vec(prop::sample::select(vec!["app", "tier", "zone"]), 0..2),
        )
            .prop_map(|(labels, exists)| {
                let labels: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                selector(&labels, &exists)
            })
    }

    proptest! {
        /// After any sequence of inserts (re-indexing) and removals, every registration whose
        /// selector matches a pod is among the pod's candidates, once; and removing every
        /// registration leaves nothing behind.
        #[test]
        fn every_matching_selector_is_a_candidate_once(
            ops in prop::collection::vec((0usize..6, prop::option::of(any_selector())), 0..40),
            pods in prop::collection::vec(labels(), 1..6),
        ) {
            let mut index = SelectorIndex::default();
            let mut current: BTreeMap<RegKey, LabelSelector> = BTreeMap::new();
            for (i, op) in ops {
                let key = RegKey::new(if i % 2 == 0 { "a" } else { "b" }, format!("r{i}"));
                match op {
                    Some(sel) => {
                        index.insert(&key, &sel);
                        current.insert(key, sel);
                    }
                    None => {
                        index.remove(&key);
                        current.remove(&key);
                    }
                }
            }
            prop_assert_eq!(index.len(), current.len());
            for pod in &pods {
                for ns in ["a", "b"] {
                    let candidates: Vec<&RegKey> = index
                        .candidates(ns, pod.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .collect();
                    let unique: BTreeSet<&RegKey> = candidates.iter().copied().collect();
                    prop_assert_eq!(unique.len(), candidates.len(), "a candidate twice");
                    for (key, sel) in current.iter().filter(|(k, _)| k.namespace == ns) {
                        if selector_matches_by(sel, |k| pod.get(k).map(String::as_str)) {
                            prop_assert!(unique.contains(key), "{} matches but is no candidate", key);
                        }
                    }
                }
            }
            for key in current.keys() {
                index.remove(key);
            }
            prop_assert!(index.pairs.is_empty() && index.unindexed.is_empty());
        }
    }
}
