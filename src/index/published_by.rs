//! Which registrations' current outcomes publish each pod, and which report problems: a pod
//! event marks (and checks for a removal) only those, plus the registrations whose selector
//! matches the pod, instead of scanning every published endpoint of its namespace.

use std::collections::{BTreeSet, HashMap};

use crate::desired::RegistrationOutcome;

use super::RegKey;

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct PublishedBy {
    /// Namespace -> pod name -> the registrations whose outcome has an endpoint of the pod.
    pods: HashMap<String, HashMap<String, BTreeSet<RegKey>>>,
    /// Namespace -> the registrations whose outcome reports problems.
    problems: HashMap<String, BTreeSet<RegKey>>,
}

impl PublishedBy {
    /// Registration `key`'s outcome went from `old` to `new` (`None`: none).
    pub(super) fn changed(
        &mut self,
        key: &RegKey,
        old: Option<&RegistrationOutcome>,
        new: Option<&RegistrationOutcome>,
    ) {
        let ns = key.namespace.as_str();
        if let Some(old) = old {
            if let Some(pods) = self.pods.get_mut(ns) {
                for endpoint in old.endpoints.values() {
                    if let Some(regs) = pods.get_mut(&endpoint.pod) {
                        regs.remove(key);
                        if regs.is_empty() {
                            pods.remove(&endpoint.pod);
                        }
                    }
                }
                if pods.is_empty() {
                    self.pods.remove(ns);
                }
            }
            if let Some(regs) = self.problems.get_mut(ns) {
                regs.remove(key);
                if regs.is_empty() {
                    self.problems.remove(ns);
                }
            }
        }
        if let Some(new) = new {
            if !new.endpoints.is_empty() {
                let pods = self.pods.entry(ns.to_owned()).or_default();
                for endpoint in new.endpoints.values() {
                    pods.entry(endpoint.pod.clone())
                        .or_default()
                        .insert(key.clone());
                }
            }
            if !new.problems.is_empty() {
                self.problems
                    .entry(ns.to_owned())
                    .or_default()
                    .insert(key.clone());
            }
        }
    }

    /// The registrations whose outcome publishes pod `name` of `namespace`.
    pub(super) fn publishing<'a>(
        &'a self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a RegKey> + use<'a> {
        self.pods
            .get(namespace)
            .and_then(|pods| pods.get(name))
            .into_iter()
            .flatten()
    }

    /// The registrations of `namespace` whose outcome reports problems.
    pub(super) fn with_problems<'a>(
        &'a self,
        namespace: &str,
    ) -> impl Iterator<Item = &'a RegKey> + use<'a> {
        self.problems.get(namespace).into_iter().flatten()
    }
}
