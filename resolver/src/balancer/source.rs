//! Where a call finds its backend while it waits: a current pick set, replaced whenever what can
//! be picked changes. The single-target pool's picker and the failover layer's group choice
//! ([`super::groups`]) are both such sources, so one call path ([`super::send`]) serves both.

use std::sync::Arc;

use tokio::sync::watch;

use super::picker::Picker;
use super::pool::{Picked, Pool};

/// A set of backends to pick from.
pub(crate) trait PickSet: Send + Sync + 'static {
    /// The next live backend, if any (not counted).
    fn pick_next(&self) -> Option<&Arc<Picked>>;
}

/// Something whose pick set is published through a watch channel.
pub(crate) trait Source: Send + Sync + 'static {
    /// Its pick sets.
    type Set: PickSet;

    /// A receiver woken whenever the pick set is replaced.
    fn pick_sets(&self) -> watch::Receiver<Arc<Self::Set>>;
}

impl PickSet for Picker<Arc<Picked>> {
    fn pick_next(&self) -> Option<&Arc<Picked>> {
        self.pick()
    }
}

impl Source for Pool {
    type Set = Picker<Arc<Picked>>;

    fn pick_sets(&self) -> watch::Receiver<Arc<Picker<Arc<Picked>>>> {
        self.subscribe()
    }
}
