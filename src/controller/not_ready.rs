//! The number of registrations whose Ready condition is not True (`registrar_registrations_not_ready`),
//! kept per registration: a flush re-checks only the registrations whose object or status
//! changed, instead of every registration of the cluster.

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::{READY_CONDITION, ServiceRegistrationStatus};
use crate::index::{Index, RegKey};

/// See the module docs.
#[derive(Debug)]
pub(super) struct NotReady {
    /// The registrations counted (not being deleted, Ready not True).
    not_ready: BTreeSet<RegKey>,
    /// Registrations to re-check before counting.
    stale: BTreeSet<RegKey>,
    /// Every registration is to be re-checked.
    all_stale: bool,
}

impl Default for NotReady {
    fn default() -> Self {
        NotReady {
            not_ready: BTreeSet::new(),
            stale: BTreeSet::new(),
            all_stale: true,
        }
    }
}

/// Whether `key` counts: known, not being deleted, and its status (`statuses`, else what the
/// watch shows) has no Ready condition at True.
fn counts(
    index: &Index,
    statuses: &BTreeMap<RegKey, ServiceRegistrationStatus>,
    key: &RegKey,
) -> bool {
    let Some(reg) = index.registration(key) else {
        return false;
    };
    if reg.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let status = statuses.get(key).or(reg.status.as_ref());
    !status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == READY_CONDITION && c.status == "True")
    })
}

impl NotReady {
    /// The registration `key` or its status changed.
    pub(super) fn mark(&mut self, key: RegKey) {
        if !self.all_stale {
            self.stale.insert(key);
        }
    }

    /// Every registration or status may have changed.
    pub(super) fn mark_all(&mut self) {
        self.all_stale = true;
        self.stale.clear();
    }

    /// The count now.
    pub(super) fn count(
        &mut self,
        index: &Index,
        statuses: &BTreeMap<RegKey, ServiceRegistrationStatus>,
    ) -> usize {
        if self.all_stale {
            self.all_stale = false;
            self.not_ready = index
                .registrations()
                .map(|(k, _)| k)
                .filter(|k| counts(index, statuses, k))
                .cloned()
                .collect();
        } else {
            for key in std::mem::take(&mut self.stale) {
                if counts(index, statuses, &key) {
                    self.not_ready.insert(key);
                } else {
                    self.not_ready.remove(&key);
                }
            }
        }
        self.not_ready.len()
    }
}
