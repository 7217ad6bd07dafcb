//! The incremental plan: per new desired state, the writer looks only at the keys that may
//! differ between what etcd holds (the known state) and what should be there, instead of
//! walking both whole maps.
//!
//! Rules:
//! - after a flush whose every operation committed, the known state agrees with that flush's
//!   desired state (its keys, `complete` and lease) on every key: that is the baseline;
//! - from the baseline, the only keys that may differ are those the desired state changed
//!   (the diff of the two persistent maps, which skips the subtrees they share) and those
//!   someone else changed in etcd since (watch events classified `Seen::Foreign`,
//!   reported through [`Planner::changed`]); the plan over those keys is [`plan_keys`], which
//!   gives exactly the operations, in the same order, of a full [`plan`];
//! - a full plan runs when there is no trusted baseline: the first plan, after
//!   [`Planner::reset`] (a new session, the known state listed again), after a flush that
//!   failed or was cut short (the baseline is taken by [`Planner::plan`] and given back only
//!   by [`Planner::committed`]: keys of uncommitted or uncertain writes are never trusted),
//!   and when the lease (every key must be put again under the new one) or `complete` (keys
//!   not desired become deletions) differ from the baseline's.

use std::collections::{BTreeMap, BTreeSet};

use imbl::ordmap::DiffItem;

use super::{KnownKv, Op, plan, plan_keys};
use crate::etcd::DesiredKeys;

/// What the known state was last brought fully in line with.
#[derive(Debug, Clone)]
struct Baseline {
    desired: DesiredKeys,
    complete: bool,
    lease: i64,
}

/// Remembers the last desired state written in full and the keys changed by someone else
/// since (see the module docs).
#[derive(Debug, Default)]
pub struct Planner {
    baseline: Option<Baseline>,
    /// Keys someone else changed since the last plan.
    changed: BTreeSet<String>,
}

/// The result of [`Planner::plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Exactly the operations of a full [`plan`], in its order.
    pub ops: Vec<Op>,
    /// `None` for a full plan, else how many keys were looked at.
    pub candidates: Option<usize>,
}

impl Planner {
    /// A planner without a baseline: its first plan is a full one.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the baseline: the next plan is a full one (a new session, the known state
    /// listed again).
    pub fn reset(&mut self) {
        self.baseline = None;
        self.changed.clear();
    }

    /// Someone else changed `key` in the known state (a watch event that is not the echo of a
    /// write of ours).
    pub fn changed(&mut self, key: String) {
        self.changed.insert(key);
    }

    /// The operations that turn `known` into `desired` under `lease`: exactly those of
    /// [`plan`]. Until [`committed`](Self::committed) is called, the baseline is gone and
    /// the next plan is a full one.
    pub fn plan(
        &mut self,
        prefix: &str,
        known: &BTreeMap<String, KnownKv>,
        desired: &DesiredKeys,
        complete: bool,
        lease: i64,
    ) -> Planned {
        let changed = std::mem::take(&mut self.changed);
        match self.baseline.take() {
            Some(base) if base.lease == lease && base.complete == complete => {
                let mut keys = changed;
                for item in base.desired.diff(desired) {
                    let key = match item {
                        DiffItem::Add(key, _) | DiffItem::Remove(key, _) => key,
                        DiffItem::Update { new: (key, _), .. } => key,
                    };
                    if !keys.contains(key) {
                        keys.insert(key.clone());
                    }
                }
                let ops = plan_keys(
                    prefix,
                    known,
                    desired,
                    complete,
                    lease,
                    keys.iter().map(String::as_str),
                );
                Planned {
                    ops,
                    candidates: Some(keys.len()),
                }
            }
            _ => Planned {
                ops: plan(prefix, known, desired, complete, lease),
                candidates: None,
            },
        }
    }

    /// Every operation of the last [`plan`](Self::plan) committed and is recorded in the known
    /// state: it agrees with `desired` now, which becomes the baseline.
    pub fn committed(&mut self, desired: &DesiredKeys, complete: bool, lease: i64) {
        self.baseline = Some(Baseline {
            desired: desired.clone(),
            complete,
            lease,
        });
    }
}

#[cfg(test)]
mod tests;
