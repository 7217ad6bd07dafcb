//! The addresses a [`FailoverBalancer`](super::FailoverBalancer) finds registered under more
//! than one of its targets (groups), kept up to date as each group's endpoint set changes, at a
//! cost in proportion to what changed: each group's last applied set is compared with its new
//! one ([`Endpoints::changes`] skips what the two share), and only the addresses whose keys
//! changed are looked at. (Such addresses stay separate backends, one per target; they are
//! only counted and reported.)

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::discovery::Endpoints;

/// Which groups hold each address, and how many addresses more than one group holds.
#[derive(Debug, Default)]
pub(crate) struct Duplicates {
    /// Per group: its endpoint set as last applied, and how many of its keys name each address.
    groups: Vec<Group>,
    /// The groups (in priority order) holding each address held by any.
    holders: HashMap<Arc<str>, Vec<usize>>,
    /// How many addresses more than one group holds now.
    now: usize,
    /// How many times an address came to be held by a second group (a counter).
    seen: u64,
}

#[derive(Debug, Default)]
struct Group {
    applied: Endpoints,
    keys: HashMap<Arc<str>, usize>,
}

impl Duplicates {
    /// No group holds anything yet.
    pub(crate) fn new(groups: usize) -> Self {
        Duplicates {
            groups: (0..groups).map(|_| Group::default()).collect(),
            ..Duplicates::default()
        }
    }

    /// How many addresses more than one group holds now.
    pub(crate) fn now(&self) -> usize {
        self.now
    }

    /// How many times an address came to be held by a second group.
    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }

    /// Makes `next` the endpoint set of `group` (ignored if there is no such group); the
    /// addresses that became duplicated by it, each with the groups holding it.
    pub(crate) fn apply(&mut self, group: usize, next: &Endpoints) -> Vec<(Arc<str>, Vec<usize>)> {
        let Some(state) = self.groups.get_mut(group) else {
            return Vec::new();
        };
        // The net change of each touched address's key count in this group, so that an address
        // whose key moved within the group is neither lost nor found by it.
        let mut delta: HashMap<Arc<str>, isize> = HashMap::new();
        for change in state.applied.changes(next) {
            if let Some(old) = change.old {
                *delta.entry(Arc::from(old.addr.as_str())).or_default() -= 1;
            }
            if let Some(new) = change.new {
                *delta.entry(Arc::from(new.addr.as_str())).or_default() += 1;
            }
        }
        state.applied = next.clone();
        let mut found = Vec::new();
        for (addr, d) in delta {
            if d == 0 {
                continue;
            }
            let (was, is) = match state.keys.entry(addr.clone()) {
                Entry::Occupied(mut keys) => {
                    let count = keys.get().saturating_add_signed(d);
                    if count == 0 {
                        keys.remove();
                    } else {
                        *keys.get_mut() = count;
                    }
                    (true, count > 0)
                }
                Entry::Vacant(slot) => {
                    let count = 0usize.saturating_add_signed(d);
                    if count > 0 {
                        slot.insert(count);
                    }
                    (false, count > 0)
                }
            };
            if was == is {
                continue;
            }
            let holders = self.holders.entry(addr.clone()).or_default();
            let before = holders.len();
            match holders.binary_search(&group) {
                Ok(i) if !is => {
                    holders.remove(i);
                }
                Err(i) if is => holders.insert(i, group),
                _ => {}
            }
            let after = holders.len();
            if before < 2 && after >= 2 {
                self.now += 1;
                self.seen += 1;
                found.push((addr.clone(), holders.clone()));
            } else if before >= 2 && after < 2 {
                self.now -= 1;
            }
            if after == 0 {
                self.holders.remove(&addr);
            }
        }
        found.sort();
        found
    }

    /// The addresses more than one group holds now (for tests).
    #[cfg(test)]
    fn duplicated(&self) -> std::collections::BTreeSet<Arc<str>> {
        self.holders
            .iter()
            .filter(|(_, groups)| groups.len() > 1)
            .map(|(addr, _)| addr.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::value::{Endpoint, Metadata};

    /// The addresses more than one of `sets` holds, recounted from scratch (what the failover
    /// layer did on every change before).
    fn recount(sets: &[Endpoints]) -> BTreeSet<Arc<str>> {
        let mut targets: BTreeMap<Arc<str>, BTreeSet<usize>> = BTreeMap::new();
        for (i, set) in sets.iter().enumerate() {
            for e in set.values() {
                targets
                    .entry(Arc::from(e.addr.as_str()))
                    .or_default()
                    .insert(i);
            }
        }
        targets
            .into_iter()
            .filter(|(_, groups)| groups.len() > 1)
            .map(|(addr, _)| addr)
            .collect()
    }

    fn endpoint(addr: u8) -> Endpoint {
        Endpoint::new(format!("127.0.0.{addr}:1"), Metadata::null()).unwrap()
    }

    /// One change of one group: keys (0..12) put with an address (1..8) or deleted.
    fn change() -> impl Strategy<Value = (usize, Vec<(u8, Option<u8>)>)> {
        (
            0..3usize,
            proptest::collection::vec((0..12u8, proptest::option::of(1..8u8)), 0..8),
        )
    }

    proptest! {
        #[test]
        fn the_incremental_count_equals_a_recount(
            changes in proptest::collection::vec(change(), 1..40),
        ) {
            let mut sets = vec![Endpoints::new(); 3];
            let mut dups = Duplicates::new(3);
            let mut before = BTreeSet::new();
            let mut seen = 0u64;
            for (group, puts) in changes {
                let mut next = sets[group].clone();
                for (key, addr) in puts {
                    let key = format!("t{group}/k{key}");
                    match addr {
                        Some(a) => { next.insert(key, endpoint(a)); }
                        None => { next.remove(&key); }
                    }
                }
                sets[group] = next;
                let found = dups.apply(group, &sets[group]);
                let now = recount(&sets);
                let new: BTreeSet<Arc<str>> = now.difference(&before).cloned().collect();
                seen += new.len() as u64;
                prop_assert_eq!(dups.now(), now.len());
                prop_assert_eq!(dups.duplicated(), now.clone());
                prop_assert_eq!(
                    found.iter().map(|(a, _)| a.clone()).collect::<BTreeSet<_>>(),
                    new
                );
                prop_assert_eq!(dups.seen(), seen);
                before = now;
            }
        }
    }

    #[test]
    fn a_key_moving_within_a_group_is_not_a_new_duplicate() {
        let mut dups = Duplicates::new(2);
        let mut a = Endpoints::new();
        a.insert("a/k1".into(), endpoint(1));
        let mut b = Endpoints::new();
        b.insert("b/k1".into(), endpoint(1));
        assert!(dups.apply(0, &a).is_empty());
        let found = dups.apply(1, &b);
        assert_eq!(found, [(Arc::from("127.0.0.1:1"), vec![0, 1])]);
        // Group 1's address moves from one key to another in one update.
        let mut b2 = Endpoints::new();
        b2.insert("b/k2".into(), endpoint(1));
        assert!(dups.apply(1, &b2).is_empty());
        assert_eq!((dups.now(), dups.seen()), (1, 1));
        assert!(dups.apply(0, &Endpoints::new()).is_empty());
        assert_eq!((dups.now(), dups.seen()), (0, 1));
        assert!(dups.apply(7, &a).is_empty(), "no such group");
    }
}
