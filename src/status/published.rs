//! What etcd holds of each registration, for its status: the engine records the endpoints of
//! every registration whose outcome changed with the seq of the desired state that carries
//! them, and the writer's applied seq promotes them. The status then shows the endpoints of the
//! newest seq the writer applied, never ones still waiting (e.g. during an etcd outage).
//!
//! The writer may skip seqs (it always writes the newest desired state), so a registration
//! keeps every entry newer than the applied seq; entries beyond [`MAX_PENDING`] are dropped
//! from the middle (the newest is always kept: the writer ends on it).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::InEtcd;

/// Most entries waiting for the writer, per registration.
pub const MAX_PENDING: usize = 32;

struct History {
    /// What etcd holds (as of the applied seq); None until a seq carrying it is applied.
    applied: Option<InEtcd>,
    /// (seq, endpoints; None = the registration is gone), oldest first.
    pending: VecDeque<(u64, Option<InEtcd>)>,
}

/// See the module docs. `K` identifies a registration.
pub struct PublishedLog<K> {
    regs: BTreeMap<K, History>,
    /// Registrations with pending entries.
    waiting: BTreeSet<K>,
    applied: u64,
}

impl<K: Ord + Clone> Default for PublishedLog<K> {
    fn default() -> Self {
        PublishedLog {
            regs: BTreeMap::new(),
            waiting: BTreeSet::new(),
            applied: 0,
        }
    }
}

impl<K: Ord + Clone> PublishedLog<K> {
    /// The desired state `seq` carries `endpoints` for `key` (None: the registration is gone).
    pub fn record(&mut self, key: K, seq: u64, endpoints: Option<InEtcd>) {
        let h = self.regs.entry(key.clone()).or_insert(History {
            applied: None,
            pending: VecDeque::new(),
        });
        // The newest known state (None inside: gone; outer None: nothing known yet).
        let latest = match h.pending.back() {
            Some((_, e)) => Some(e.as_ref()),
            None => h.applied.as_ref().map(Some),
        };
        if latest == Some(endpoints.as_ref()) {
            return;
        }
        h.pending.push_back((seq, endpoints));
        if h.pending.len() > MAX_PENDING {
            // Keep the oldest (it may be applied next) and the newest.
            h.pending.remove(1);
        }
        self.waiting.insert(key.clone());
        if seq <= self.applied {
            self.promote(&key);
        }
    }

    /// The writer applied `seq` (and everything before it): etcd holds what it carries.
    /// Returns the registrations whose endpoints in etcd changed.
    pub fn applied(&mut self, seq: u64) -> Vec<K> {
        self.applied = self.applied.max(seq);
        let keys: Vec<K> = self.waiting.iter().cloned().collect();
        keys.into_iter().filter(|k| self.promote(k)).collect()
    }

    /// Moves the entries of `key` up to the applied seq into etcd's view; whether any moved.
    fn promote(&mut self, key: &K) -> bool {
        let Some(h) = self.regs.get_mut(key) else {
            self.waiting.remove(key);
            return false;
        };
        let mut moved = false;
        let mut gone = false;
        while let Some((seq, _)) = h.pending.front() {
            if *seq > self.applied {
                break;
            }
            if let Some((_, endpoints)) = h.pending.pop_front() {
                moved = true;
                gone = endpoints.is_none();
                h.applied = endpoints;
            }
        }
        if h.pending.is_empty() {
            self.waiting.remove(key);
            if gone {
                self.regs.remove(key);
            }
        }
        moved
    }

    /// What etcd holds of `key`, if a seq carrying it was applied.
    pub fn in_etcd(&self, key: &K) -> Option<&InEtcd> {
        self.regs.get(key)?.applied.as_ref()
    }

    /// Registrations tracked (for tests and bounds).
    pub fn len(&self) -> usize {
        self.regs.len()
    }

    /// Nothing tracked.
    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }
}
