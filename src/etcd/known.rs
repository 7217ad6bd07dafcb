//! The writer's picture of its prefix in etcd: every key under `<prefix>/` (except the claim)
//! with its value and lease, valid up to `revision`.
//!
//! It is filled by a ranged get, kept current by the prefix watch, and updated at once when a
//! write transaction of ours commits (so the next diff does not repeat it). Watch events can
//! arrive after our commit for an older revision of the same key; `pending` remembers the
//! revision of our last write per key so that such stale events are ignored, and the echo of
//! our own write is told apart from a change by someone else.

use std::collections::{BTreeMap, HashMap};

use registrar_etcd::KvEvent;

use super::plan::{KnownKv, Op};

/// How an event relates to our own writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The echo of a write of ours.
    Echo,
    /// Older than a write of ours to the same key: ignored.
    Stale,
    /// Someone else's change (or a lease expiry), now reflected in the state.
    Foreign,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Known {
    pub(crate) kvs: BTreeMap<String, KnownKv>,
    /// Every change up to this revision is reflected (from the listing and the watch).
    pub(crate) revision: i64,
    pending: HashMap<String, i64>,
}

impl Known {
    pub(crate) fn listed(kvs: BTreeMap<String, KnownKv>, revision: i64) -> Self {
        Known {
            kvs,
            revision,
            pending: HashMap::new(),
        }
    }

    /// Records a committed transaction of ours at `revision`.
    pub(crate) fn record_own(&mut self, ops: &[Op], lease: i64, revision: i64) {
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    self.kvs.insert(
                        key.clone(),
                        KnownKv {
                            value: value.clone(),
                            lease,
                        },
                    );
                }
                Op::Delete { key } => {
                    self.kvs.remove(key);
                }
            }
            self.pending.insert(op.key().to_owned(), revision);
        }
    }

    /// Applies one watch event.
    pub(crate) fn apply(&mut self, ev: KvEvent) -> Seen {
        let seen = match self.pending.get(&ev.key).copied() {
            Some(ours) if ev.revision < ours => return Seen::Stale,
            Some(ours) => {
                self.pending.remove(&ev.key);
                if ev.revision == ours {
                    Seen::Echo
                } else {
                    Seen::Foreign
                }
            }
            None => Seen::Foreign,
        };
        match ev.value {
            Some(value) => {
                // Our values are UTF-8; anything else differs from every value we write and is
                // repaired as drift.
                let value = String::from_utf8_lossy(&value).into_owned();
                self.kvs.insert(
                    ev.key,
                    KnownKv {
                        value,
                        lease: ev.lease,
                    },
                );
            }
            None => {
                self.kvs.remove(&ev.key);
            }
        }
        seen
    }

    /// Records that the watch has delivered every change up to `revision`.
    pub(crate) fn progress(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
        let upto = self.revision;
        self.pending.retain(|_, r| *r > upto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str, value: Option<&str>, lease: i64, revision: i64) -> KvEvent {
        KvEvent {
            key: key.into(),
            value: value.map(|v| v.as_bytes().to_vec()),
            lease,
            revision,
        }
    }

    fn kv(value: &str, lease: i64) -> KnownKv {
        KnownKv {
            value: value.into(),
            lease,
        }
    }

    #[test]
    fn own_write_then_echo_then_foreign_change() {
        let mut k = Known::listed(BTreeMap::new(), 10);
        k.record_own(
            &[Op::Put {
                key: "p/a".into(),
                value: "v".into(),
            }],
            5,
            12,
        );
        assert_eq!(k.kvs["p/a"], kv("v", 5));
        // a change by someone else at 11, delivered after our commit at 12: stale
        assert_eq!(k.apply(ev("p/a", Some("x"), 0, 11)), Seen::Stale);
        assert_eq!(k.kvs["p/a"], kv("v", 5));
        assert_eq!(k.apply(ev("p/a", Some("v"), 5, 12)), Seen::Echo);
        k.progress(12);
        assert_eq!(k.revision, 12);
        assert_eq!(k.apply(ev("p/a", None, 0, 13)), Seen::Foreign);
        assert!(!k.kvs.contains_key("p/a"));
    }

    #[test]
    fn own_delete_and_progress_prunes_pending() {
        let mut k = Known::listed([("p/a".to_string(), kv("v", 5))].into(), 10);
        k.record_own(&[Op::Delete { key: "p/a".into() }], 5, 20);
        assert!(k.kvs.is_empty());
        assert_eq!(k.apply(ev("p/a", Some("v"), 5, 15)), Seen::Stale);
        assert!(k.kvs.is_empty());
        // the echo never came (e.g. a put of ours at the same revision); progress past it
        k.progress(21);
        assert_eq!(k.apply(ev("p/a", Some("w"), 0, 22)), Seen::Foreign);
        assert_eq!(k.kvs["p/a"], kv("w", 0));
    }

    #[test]
    fn newer_foreign_change_wins_over_pending() {
        let mut k = Known::default();
        k.record_own(
            &[Op::Put {
                key: "p/a".into(),
                value: "v".into(),
            }],
            5,
            12,
        );
        assert_eq!(k.apply(ev("p/a", Some("x"), 0, 13)), Seen::Foreign);
        assert_eq!(k.kvs["p/a"], kv("x", 0));
        assert_eq!(
            k.apply(ev("p/a", Some("v"), 5, 12)),
            Seen::Foreign,
            "pending cleared"
        );
    }

    #[test]
    fn progress_never_goes_back() {
        let mut k = Known::listed(BTreeMap::new(), 50);
        k.progress(40);
        assert_eq!(k.revision, 50);
    }
}
