//! [`PickSetWatch`]: a way to follow a balancer's pick set as it changes (from
//! [`Balancer::watch_pick_set`](super::Balancer::watch_pick_set)), e.g. to time how long a new
//! endpoint takes to become pickable, or to wait for one, without polling a snapshot.

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

use super::picker::Picker;
use super::pool::Picked;

/// Follows the pick set of a [`Balancer`](super::Balancer): the backends calls can go to now
/// (READY and, with the policies that are on, healthy, not ejected, admitted by the zone
/// preference). Every rebuild of the picker is a change; changes that happen while nobody
/// looks are merged (only the latest set is kept).
pub struct PickSetWatch {
    sets: watch::Receiver<Arc<Picker<Arc<Picked>>>>,
}

impl fmt::Debug for PickSetWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickSetWatch")
            .field("backends", &self.sets.borrow().len())
            .finish()
    }
}

impl PickSetWatch {
    pub(crate) fn new(sets: watch::Receiver<Arc<Picker<Arc<Picked>>>>) -> Self {
        PickSetWatch { sets }
    }

    /// Waits until the pick set changed since it was last read with
    /// [`addrs`](Self::addrs) (at once if it has). `false` once the balancer is gone.
    pub async fn changed(&mut self) -> bool {
        self.sets.changed().await.is_ok()
    }

    /// The addresses (`host:port`) in the current pick set, in picking order; marks it read.
    pub fn addrs(&mut self) -> Vec<Arc<str>> {
        self.sets
            .borrow_and_update()
            .values()
            .map(|p| Arc::clone(&p.addr))
            .collect()
    }
}
