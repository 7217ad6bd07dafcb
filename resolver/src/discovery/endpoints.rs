//! [`Endpoints`]: a target's valid endpoints by key, as a persistent ordered map. A new set
//! shares everything but what changed with the one it was made from, so cloning it into a
//! snapshot costs nothing and [`Endpoints::changes`] between two related sets costs in
//! proportion to what changed (shared subtrees are skipped), not to the size of the set.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::ops::Index;

use imbl::OrdMap;
use imbl::ordmap::DiffItem;

use crate::value::Endpoint;

/// Valid endpoints by their full etcd key, in key order (a persistent map: cloning is O(1)).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Endpoints(OrdMap<String, Endpoint>);

/// One key whose endpoint differs between two [`Endpoints`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Change<'a> {
    pub(crate) key: &'a str,
    /// Its endpoint in the older set, if any.
    pub(crate) old: Option<&'a Endpoint>,
    /// Its endpoint in the newer set, if any.
    pub(crate) new: Option<&'a Endpoint>,
}

impl Endpoints {
    /// An empty set.
    pub fn new() -> Self {
        Endpoints::default()
    }

    /// The endpoint of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&Endpoint>
    where
        Q: Ord + ?Sized,
        String: Borrow<Q>,
    {
        self.0.get(key)
    }

    /// Whether `key` names a valid endpoint.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        Q: Ord + ?Sized,
        String: Borrow<Q>,
    {
        self.0.contains_key(key)
    }

    /// Number of endpoints (keys).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no endpoint.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keys and endpoints, in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&String, &Endpoint)> + '_ {
        self.0.iter()
    }

    /// Keys, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + '_ {
        self.0.keys()
    }

    /// Endpoints, in key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Endpoint> + '_ {
        self.0.values()
    }

    /// A copy as a standard map (O(n)).
    pub fn to_btree_map(&self) -> BTreeMap<String, Endpoint> {
        self.iter().map(|(k, e)| (k.clone(), e.clone())).collect()
    }

    /// Sets the endpoint of `key`; the one it replaces.
    pub(crate) fn insert(&mut self, key: String, endpoint: Endpoint) -> Option<Endpoint> {
        self.0.insert(key, endpoint)
    }

    /// Removes `key`; its endpoint.
    pub(crate) fn remove(&mut self, key: &str) -> Option<Endpoint> {
        self.0.remove(key)
    }

    /// The keys whose endpoint differs from `self` in `newer`, in key order. Costs in proportion
    /// to the changes when `newer` was derived from `self` (or the other way round).
    pub(crate) fn changes<'a>(&'a self, newer: &'a Endpoints) -> impl Iterator<Item = Change<'a>> {
        self.0.diff(&newer.0).map(|item| match item {
            DiffItem::Add(key, e) => Change {
                key,
                old: None,
                new: Some(e),
            },
            DiffItem::Update { old, new } => Change {
                key: new.0,
                old: Some(old.1),
                new: Some(new.1),
            },
            DiffItem::Remove(key, e) => Change {
                key,
                old: Some(e),
                new: None,
            },
        })
    }
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<Q> Index<&Q> for Endpoints
where
    Q: Ord + ?Sized,
    String: Borrow<Q>,
{
    type Output = Endpoint;

    /// The endpoint of `key`; panics if there is none (as [`BTreeMap`]'s index does).
    fn index(&self, key: &Q) -> &Endpoint {
        &self.0[key]
    }
}

impl<'a> IntoIterator for &'a Endpoints {
    type Item = (&'a String, &'a Endpoint);
    type IntoIter = imbl::ordmap::Iter<'a, String, Endpoint, imbl::shared_ptr::DefaultSharedPtr>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<(String, Endpoint)> for Endpoints {
    fn from_iter<I: IntoIterator<Item = (String, Endpoint)>>(iter: I) -> Self {
        Endpoints(iter.into_iter().collect())
    }
}

impl From<BTreeMap<String, Endpoint>> for Endpoints {
    fn from(map: BTreeMap<String, Endpoint>) -> Self {
        map.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Metadata;

    fn e(addr: &str) -> Endpoint {
        Endpoint::new(addr, Metadata::null()).unwrap()
    }

    #[test]
    fn changes_between_derived_sets_are_the_changed_keys() {
        let old: Endpoints = (0..10_000)
            .map(|i| (format!("t/{i:05}"), e(&format!("127.0.0.1:{}", i + 1))))
            .collect();
        let mut new = old.clone();
        new.remove("t/00007");
        new.insert("t/00008".into(), e("127.0.0.2:1"));
        new.insert("t/x".into(), e("127.0.0.3:1"));
        // Same value again: not a change.
        new.insert("t/00009".into(), e("127.0.0.1:10"));
        let changes: Vec<_> = old.changes(&new).collect();
        assert_eq!(
            changes,
            [
                Change {
                    key: "t/00007",
                    old: Some(&e("127.0.0.1:8")),
                    new: None
                },
                Change {
                    key: "t/00008",
                    old: Some(&e("127.0.0.1:9")),
                    new: Some(&e("127.0.0.2:1"))
                },
                Change {
                    key: "t/x",
                    old: None,
                    new: Some(&e("127.0.0.3:1"))
                },
            ]
        );
        assert_eq!(new.len(), 10_000);
        assert_eq!(new["t/x"].addr, "127.0.0.3:1");
        assert_eq!(new.to_btree_map().len(), 10_000);
        assert!(old.changes(&old.clone()).next().is_none());
    }
}
