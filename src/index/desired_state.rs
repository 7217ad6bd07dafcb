//! The desired etcd keys kept up to date incrementally: a flush that changed the outcomes of a
//! few registrations recomputes only the targets those outcomes name (before and after), so a
//! pod change costs in proportion to its target, not to the cluster.
//!
//! The result is exactly [`desired::desired_keys`] over all current outcomes (the pure
//! reference, checked by a property test): keys of different targets never collide (an address
//! never contains `/`, so a key's target is everything before its last `/`), hence the desired
//! map is the disjoint union of each target's keys, and a target's keys depend only on the
//! outcomes naming it (union, the oldest registration's value winning on a shared address:
//! [`desired::precedence`]). Targets outside `<prefix>/` contribute nothing.
//!
//! The map is persistent ([`DesiredKeys`]): handing it to the etcd writer is an O(1) clone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use crate::desired::{self, RegistrationOutcome};
use crate::etcd::{DesiredKeys, value};

use super::RegKey;

/// A target whose endpoint count changed in a flush (or that appeared or went away).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetCount {
    /// `<prefix>/<namespace>/<service>`.
    pub target: String,
    /// Its keys in the desired state; `None` when no registration's outcome names it any more.
    pub endpoints: Option<usize>,
}

/// See the module docs.
#[derive(Debug)]
pub(super) struct DesiredState {
    /// `<prefix>/`.
    under: String,
    keys: DesiredKeys,
    /// The registrations whose current outcome names each target (never an empty set).
    by_target: HashMap<String, BTreeSet<RegKey>>,
    /// Targets to recompute at the next [`DesiredState::refresh`], with whether a registration
    /// named each before the changes.
    pending: BTreeMap<String, bool>,
}

impl DesiredState {
    /// Nothing desired, for keys under `prefix`.
    pub(super) fn new(prefix: &str) -> Self {
        DesiredState {
            under: format!("{prefix}/"),
            keys: DesiredKeys::default(),
            by_target: HashMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// The desired keys as of the last [`DesiredState::refresh`].
    pub(super) fn keys(&self) -> &DesiredKeys {
        &self.keys
    }

    fn mark(&mut self, target: &str) {
        if !self.pending.contains_key(target) {
            let named = self.by_target.contains_key(target);
            self.pending.insert(target.to_owned(), named);
        }
    }

    /// Registration `key`'s outcome changed: it named target `old` (`None`: it had no
    /// outcome) and names `new` now (`None`: it is gone).
    pub(super) fn changed(&mut self, key: &RegKey, old: Option<&str>, new: Option<&str>) {
        for target in old.into_iter().chain(new) {
            self.mark(target);
        }
        if old == new {
            return;
        }
        if let Some(old) = old
            && let Some(regs) = self.by_target.get_mut(old)
        {
            regs.remove(key);
            if regs.is_empty() {
                self.by_target.remove(old);
            }
        }
        if let Some(new) = new {
            self.by_target
                .entry(new.to_owned())
                .or_default()
                .insert(key.clone());
        }
    }

    /// Recomputes the keys of every target marked since the last call from `outcomes` (all
    /// current outcomes, by registration); returns the targets whose count changed, appeared
    /// or went away.
    pub(super) fn refresh(
        &mut self,
        outcomes: &BTreeMap<RegKey, RegistrationOutcome>,
    ) -> Vec<TargetCount> {
        let pending = std::mem::take(&mut self.pending);
        let mut counts = Vec::new();
        for (target, named_before) in pending {
            let (before, after) = self.refresh_target(&target, outcomes);
            let named = self.by_target.contains_key(&target);
            if named != named_before || (named && before != after) {
                counts.push(TargetCount {
                    target,
                    endpoints: named.then_some(after),
                });
            }
        }
        counts
    }

    /// Replaces the keys of `target` by those its outcomes want; returns how many it had and
    /// has.
    fn refresh_target(
        &mut self,
        target: &str,
        outcomes: &BTreeMap<RegKey, RegistrationOutcome>,
    ) -> (usize, usize) {
        let mut ordered: Vec<&RegistrationOutcome> = self
            .by_target
            .get(target)
            .into_iter()
            .flatten()
            .filter_map(|k| outcomes.get(k))
            .filter(|o| o.target.starts_with(&self.under))
            .collect();
        ordered.sort_by(|a, b| desired::precedence(a, b));
        // Address -> value; the first (oldest) registration wins.
        let mut want: BTreeMap<&str, &str> = BTreeMap::new();
        for outcome in ordered {
            for endpoint in outcome.endpoints.values() {
                want.entry(&endpoint.addr).or_insert(&endpoint.value);
            }
        }
        let after = want.len();
        let start = format!("{target}/");
        let mut before = 0;
        let mut remove = Vec::new();
        let mut set = Vec::new();
        let from = (Bound::Included(start.as_str()), Bound::Unbounded);
        for (key, value) in self.keys.range::<_, str>(from) {
            let Some(addr) = key.strip_prefix(&start) else {
                break;
            };
            // A key of a nested target (`<target>/<more>/<addr>`), not of this one.
            if addr.contains('/') {
                continue;
            }
            before += 1;
            match want.remove(addr) {
                None => remove.push(key.clone()),
                Some(wanted) if wanted != value => set.push((key.clone(), wanted.to_owned())),
                Some(_) => {}
            }
        }
        for key in remove {
            self.keys.remove(&key);
        }
        for (key, value) in set {
            self.keys.insert(key, value);
        }
        for (addr, value) in want {
            self.keys.insert(value::key(target, addr), value.to_owned());
        }
        (before, after)
    }
}
