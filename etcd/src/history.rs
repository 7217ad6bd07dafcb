//! Whether etcd still has the history a reader has seen.
//!
//! etcd's revisions only grow, and so does the raft term within one cluster. A reader that
//! resumes a watch from the revision after the last one it saw assumes that etcd still holds
//! that history. After etcd's data is wiped or restored from an older snapshot, it does not: a
//! watch from a revision the new store has not reached waits silently (possibly forever), and
//! one from a revision it has reached delivers changes of a different history. [`History`]
//! remembers the newest response header seen and tells whether a new one contradicts it, so
//! that the reader lists again instead (see [`Reflector`](crate::Reflector)).

use etcd_client::ResponseHeader;

/// The newest etcd history seen by one reader: cluster id, raft term and revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    cluster_id: Option<u64>,
    raft_term: u64,
    revision: i64,
}

/// The verdict on a response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryCheck {
    /// Consistent with what was seen (and now remembered).
    Consistent,
    /// etcd no longer has the history that was seen: list again.
    WentBack {
        /// What contradicts the history, for the log.
        why: String,
    },
}

impl History {
    /// The newest revision seen (0 before anything).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Starts a new history from a fresh listing (after which nothing older matters).
    pub fn reset(&mut self, cluster_id: u64, raft_term: u64, revision: i64) {
        *self = History {
            cluster_id: (cluster_id != 0).then_some(cluster_id),
            raft_term,
            revision,
        };
    }

    /// Records that changes up to `revision` were delivered.
    pub fn saw_revision(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// Judges a header from etcd against the history (zero fields, which etcd leaves unset
    /// in some responses, are not evidence), and remembers it when it is consistent.
    pub fn check(&mut self, cluster_id: u64, raft_term: u64, revision: i64) -> HistoryCheck {
        if let Some(seen) = self.cluster_id
            && cluster_id != 0
            && cluster_id != seen
        {
            return HistoryCheck::WentBack {
                why: format!("cluster id changed from {seen:x} to {cluster_id:x}"),
            };
        }
        if revision != 0 && revision < self.revision {
            return HistoryCheck::WentBack {
                why: format!(
                    "etcd's revision {revision} is behind revision {} already seen",
                    self.revision
                ),
            };
        }
        if raft_term != 0 && raft_term < self.raft_term {
            return HistoryCheck::WentBack {
                why: format!(
                    "etcd's raft term {raft_term} is behind term {} already seen",
                    self.raft_term
                ),
            };
        }
        if cluster_id != 0 {
            self.cluster_id = Some(cluster_id);
        }
        self.raft_term = self.raft_term.max(raft_term);
        self.revision = self.revision.max(revision);
        HistoryCheck::Consistent
    }

    /// [`History::check`] of a response header (a missing header is no evidence).
    pub fn check_header(&mut self, header: Option<&ResponseHeader>) -> HistoryCheck {
        match header {
            Some(h) => self.check(h.cluster_id(), h.raft_term(), h.revision()),
            None => HistoryCheck::Consistent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn went_back(c: &HistoryCheck) -> bool {
        matches!(c, HistoryCheck::WentBack { .. })
    }

    /// (cluster id, raft term, revision).
    type Header = (u64, u64, i64);

    #[test]
    fn table() {
        // (cluster, term, revision) seen, then the header checked, then whether it went back.
        let cases: &[(Header, Header, bool)] = &[
            ((7, 2, 17), (7, 2, 17), false), // the same
            ((7, 2, 17), (7, 3, 40), false), // moved on
            ((7, 2, 17), (7, 2, 3), true),   // wiped: revision behind
            ((7, 5, 17), (7, 2, 30), true),  // restored and written since: term behind
            ((7, 2, 17), (9, 2, 30), true),  // another cluster
            ((7, 2, 17), (0, 0, 0), false),  // an empty header is no evidence
            ((0, 0, 0), (7, 2, 1), false),   // nothing seen yet
            ((7, 2, 17), (7, 2, 16), true),  // one behind is behind
        ];
        for &((c0, t0, r0), (c1, t1, r1), back) in cases {
            let mut h = History::default();
            h.reset(c0, t0, r0);
            let got = h.check(c1, t1, r1);
            assert_eq!(
                went_back(&got),
                back,
                "{:?} then {:?}: {got:?}",
                (c0, t0, r0),
                (c1, t1, r1)
            );
        }
    }

    #[test]
    fn a_verdict_of_went_back_leaves_the_history_unchanged() {
        let mut h = History::default();
        h.reset(7, 2, 17);
        let before = h;
        assert!(went_back(&h.check(7, 2, 3)));
        assert_eq!(h, before);
    }

    proptest! {
        /// Headers of one cluster whose term and revision never decrease are always consistent,
        /// and the remembered revision is the maximum.
        #[test]
        fn monotonic_headers_are_consistent(steps in proptest::collection::vec((0u64..3, 0i64..50), 1..40)) {
            let mut h = History::default();
            let (mut term, mut rev) = (1u64, 1i64);
            for (dt, dr) in steps {
                term += dt;
                rev += dr;
                prop_assert_eq!(h.check(42, term, rev), HistoryCheck::Consistent);
                prop_assert_eq!(h.revision(), rev);
            }
        }

        /// Any header whose revision is below the newest seen is reported, whatever came before.
        #[test]
        fn a_lower_revision_is_always_reported(revs in proptest::collection::vec(1i64..1000, 1..30), probe in 1i64..1000) {
            let mut h = History::default();
            for r in &revs {
                let _ = h.check(42, 2, *r);
            }
            let max = h.revision();
            let got = h.check(42, 2, probe);
            prop_assert_eq!(went_back(&got), probe < max);
        }
    }
}
