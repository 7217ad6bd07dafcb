//! The group choice of a [`FailoverBalancer`](super::FailoverBalancer): a layer over the pick
//! sets of several single-target balancers (the groups), each fed by its own etcd.
//!
//! The choice is the groups' current pickers in the order calls try them: the fresh groups by
//! priority, then the stale ones by priority. A call takes the first live backend along that
//! order, so all traffic goes to the first fresh group with a pickable backend, and a stale
//! group (its etcd unreachable for longer than `stale_after`; it keeps its last endpoints) only
//! serves when no fresh group can. The choice is rebuilt by one small task per group whenever
//! that group's picker is replaced or its freshness changes; the per-call path is the groups'
//! own lock-free pickers, through the current choice loaded lock-free ([`ChoiceCell`]). The same
//! tasks count addresses registered under more than one target (they are kept apart, one
//! backend per target, never merged), incrementally ([`super::duplicates`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::Balancer;
use super::duplicates::Duplicates;
use super::picker::Picker;
use super::pool::Picked;
use super::source::{PickSet, Source};

/// The groups' pick sets in the order calls try them.
#[derive(Debug)]
pub(crate) struct Choice<T> {
    /// (group index, its picker), fresh groups first, each part by priority.
    order: Vec<(usize, Arc<Picker<T>>)>,
}

impl<T> Choice<T> {
    /// The order for groups of `fresh`ness (by priority), with their pickers.
    pub(crate) fn new(groups: Vec<(bool, Arc<Picker<T>>)>) -> Self {
        let (mut order, stale): (Vec<_>, Vec<_>) = groups
            .into_iter()
            .enumerate()
            .map(|(i, (fresh, picker))| (fresh, (i, picker)))
            .partition(|(fresh, _)| *fresh);
        order.extend(stale);
        Choice {
            order: order.into_iter().map(|(_, g)| g).collect(),
        }
    }

    /// The next live backend of the first group that has one, with that group's index.
    pub(crate) fn pick(&self) -> Option<(usize, &T)> {
        self.order
            .iter()
            .find_map(|(i, picker)| picker.pick().map(|t| (*i, t)))
    }

    /// The group calls go to now: the first in order with a backend in its pick set.
    pub(crate) fn active(&self) -> Option<usize> {
        self.order
            .iter()
            .find(|(_, picker)| picker.len() > 0)
            .map(|(i, _)| *i)
    }
}

impl PickSet for Choice<Arc<Picked>> {
    fn pick_next(&self) -> Option<&Arc<Picked>> {
        self.pick().map(|(_, picked)| picked)
    }
}

/// The current choice: read on every call, replaced on every rebuild, watched by the calls
/// waiting for a backend. Calls load it from an [`ArcSwap`] (lock-free, no shared reference
/// count); the watch channel only wakes waiters, and is never read on the pick path.
pub(crate) struct ChoiceCell {
    current: ArcSwap<Choice<Arc<Picked>>>,
    choices: watch::Sender<Arc<Choice<Arc<Picked>>>>,
}

impl ChoiceCell {
    /// A cell holding `choice`.
    pub(crate) fn new(choice: Choice<Arc<Picked>>) -> Self {
        let choice = Arc::new(choice);
        ChoiceCell {
            current: ArcSwap::new(choice.clone()),
            choices: watch::Sender::new(choice),
        }
    }

    /// The current choice.
    pub(crate) fn load(&self) -> Arc<Choice<Arc<Picked>>> {
        self.current.load_full()
    }

    /// The backend for the next call (counted): the current choice's next live backend.
    /// Lock-free.
    pub(crate) fn pick(&self) -> Option<Arc<Picked>> {
        self.current
            .load()
            .pick()
            .map(|(_, picked)| Picked::count(picked))
    }

    /// Makes `choice` the current one and wakes whoever waits for a new one.
    fn publish(&self, choice: Choice<Arc<Picked>>) {
        let choice = Arc::new(choice);
        self.current.store(choice.clone());
        self.choices.send_replace(choice);
    }

    /// A receiver woken whenever the choice is replaced.
    fn subscribe(&self) -> watch::Receiver<Arc<Choice<Arc<Picked>>>> {
        self.choices.subscribe()
    }
}

/// Every group, its freshness and the current choice.
pub(crate) struct Layer {
    pub(crate) balancers: Vec<Balancer>,
    /// Per group: `false` while its etcd has been unreachable for longer than `stale_after`.
    pub(crate) fresh: Vec<watch::Sender<bool>>,
    choice: ChoiceCell,
    /// The group calls went to at the last rebuild (to log changes); held while rebuilding so
    /// that rebuilds publish in the order they read.
    active: Mutex<Option<usize>>,
    /// Which groups hold each address, updated per group change.
    holders: Mutex<Duplicates>,
    /// Addresses registered under more than one target now.
    duplicates: AtomicUsize,
    /// How many times an address was found under a second target.
    duplicates_seen: AtomicU64,
}

impl Source for Layer {
    type Set = Choice<Arc<Picked>>;

    fn pick_sets(&self) -> watch::Receiver<Arc<Choice<Arc<Picked>>>> {
        self.choice.subscribe()
    }
}

impl Layer {
    /// The layer over `balancers` (by priority), all fresh.
    pub(crate) fn new(balancers: Vec<Balancer>) -> Self {
        let fresh = balancers.iter().map(|_| watch::Sender::new(true)).collect();
        let groups = balancers.len();
        let layer = Layer {
            balancers,
            fresh,
            choice: ChoiceCell::new(Choice { order: Vec::new() }),
            active: Mutex::new(None),
            holders: Mutex::new(Duplicates::new(groups)),
            duplicates: AtomicUsize::new(0),
            duplicates_seen: AtomicU64::new(0),
        };
        layer.rebuild();
        for i in 0..groups {
            layer.count_duplicates(i);
        }
        layer
    }

    /// The current choice.
    pub(crate) fn choice(&self) -> Arc<Choice<Arc<Picked>>> {
        self.choice.load()
    }

    /// The backend for the next call (counted): the current choice's next live backend.
    pub(crate) fn pick(&self) -> Option<Arc<Picked>> {
        self.choice.pick()
    }

    /// (now, ever seen) duplicated addresses.
    pub(crate) fn duplicates(&self) -> (usize, u64) {
        (
            self.duplicates.load(Ordering::Relaxed),
            self.duplicates_seen.load(Ordering::Relaxed),
        )
    }

    /// Publishes the choice from every group's current picker and freshness.
    fn rebuild(&self) {
        let mut last = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let choice = Choice::new(
            self.balancers
                .iter()
                .zip(&self.fresh)
                .map(|(b, fresh)| (*fresh.borrow(), b.inner.pool.picker()))
                .collect(),
        );
        let active = choice.active();
        if active != *last {
            let target = active.map(|i| self.balancers[i].resolver().target());
            let stale = active.is_some_and(|i| !*self.fresh[i].borrow());
            match active {
                Some(group) => {
                    tracing::info!(group, ?target, stale, "failover: calls go to this group")
                }
                None => tracing::warn!("failover: no group has a pickable backend"),
            }
            *last = active;
        }
        self.choice.publish(choice);
    }

    /// Brings the count of addresses registered under more than one target up to group `i`'s
    /// current endpoints (at a cost in proportion to what changed in them), warning once per
    /// newly duplicated address.
    fn count_duplicates(&self, i: usize) {
        let Some(balancer) = self.balancers.get(i) else {
            return;
        };
        let snapshot = balancer.resolver().snapshot();
        let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        for (addr, groups) in holders.apply(i, snapshot.endpoints()) {
            tracing::warn!(
                %addr,
                ?groups,
                "address registered under more than one target: kept as separate backends"
            );
        }
        self.duplicates.store(holders.now(), Ordering::Relaxed);
        self.duplicates_seen
            .store(holders.seen(), Ordering::Relaxed);
    }
}

/// Rebuilds the choice whenever group `i`'s picker or freshness changes, and brings the
/// duplicates up to its endpoints whenever they change; until aborted.
pub(crate) async fn follow(layer: Arc<Layer>, i: usize) {
    let Some(balancer) = layer.balancers.get(i) else {
        return;
    };
    let mut pickers = balancer.inner.pool.subscribe();
    let mut endpoints = balancer.resolver().subscribe();
    let Some(mut fresh) = layer.fresh.get(i).map(watch::Sender::subscribe) else {
        return;
    };
    loop {
        tokio::select! {
            r = pickers.changed() => {
                if r.is_err() { return; }
                layer.rebuild();
            }
            r = fresh.changed() => {
                if r.is_err() { return; }
                layer.rebuild();
            }
            r = endpoints.changed() => {
                if r.is_err() { return; }
                layer.count_duplicates(i);
            }
        }
    }
}

/// Marks group `target` stale once its etcd has been unreachable for `stale_after`, and fresh
/// again as soon as it is reachable; until aborted.
pub(crate) async fn staleness(
    mut connected: watch::Receiver<bool>,
    fresh: watch::Sender<bool>,
    stale_after: Duration,
    target: String,
) {
    loop {
        // Not holding the receiver's borrow across an await (it would block the sender).
        if connected.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let lost = tokio::time::Instant::now();
        let back = tokio::time::timeout(stale_after, connected.wait_for(|c| *c))
            .await
            .map(|r| r.is_ok());
        match back {
            Ok(true) => continue,
            Ok(false) => return,
            Err(_) => {}
        }
        tracing::warn!(
            %target,
            ?stale_after,
            "etcd unreachable for stale_after: group is stale (used only when no fresh group can serve)"
        );
        fresh.send_replace(false);
        if connected.wait_for(|c| *c).await.is_err() {
            return;
        }
        tracing::info!(%target, unreachable_for = ?lost.elapsed(), "etcd reachable again: group is fresh");
        fresh.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::connector::Liveness;
    use crate::balancer::picker::PickEntry;

    fn picker(names: &[&'static str]) -> (Arc<Picker<&'static str>>, Vec<Arc<Liveness>>) {
        let entries: Vec<_> = names
            .iter()
            .map(|n| PickEntry {
                value: *n,
                alive: Arc::new(Liveness::new()),
            })
            .collect();
        let alive = entries.iter().map(|e| e.alive.clone()).collect();
        (Arc::new(Picker::new(entries)), alive)
    }

    #[test]
    fn first_fresh_group_with_a_backend_takes_everything() {
        let (a, _) = picker(&["a1", "a2"]);
        let (b, _) = picker(&["b1"]);
        let choice = Choice::new(vec![(true, a), (true, b)]);
        assert_eq!(choice.active(), Some(0));
        for _ in 0..100 {
            assert_eq!(choice.pick().map(|(g, _)| g), Some(0));
        }
    }

    #[test]
    fn an_empty_or_dead_group_passes_to_the_next() {
        let (empty, _) = picker(&[]);
        let (b, _) = picker(&["b1"]);
        let choice = Choice::new(vec![(true, empty), (true, b.clone())]);
        assert_eq!(choice.active(), Some(1));
        assert_eq!(choice.pick(), Some((1, &"b1")));
        // Every connection of the first group just closed (its picker not rebuilt yet).
        let (a, alive) = picker(&["a1", "a2"]);
        let choice = Choice::new(vec![(true, a), (true, b)]);
        alive.iter().for_each(|a| a.kill("test"));
        assert_eq!(choice.pick(), Some((1, &"b1")));
    }

    #[test]
    fn stale_groups_come_after_every_fresh_group() {
        let (a, _) = picker(&["a1"]);
        let (b, _) = picker(&["b1"]);
        let (c, _) = picker(&["c1"]);
        let (empty, _) = picker(&[]);
        let choice = Choice::new(vec![(false, a.clone()), (true, b), (true, c.clone())]);
        assert_eq!(choice.active(), Some(1));
        assert_eq!(choice.pick(), Some((1, &"b1")));
        // No fresh group can serve: the stale one does.
        let choice = Choice::new(vec![(false, a.clone()), (true, empty.clone())]);
        assert_eq!(choice.pick(), Some((0, &"a1")));
        // Two stale groups keep their priority.
        let choice = Choice::new(vec![(true, empty.clone()), (false, c), (false, a)]);
        assert_eq!(choice.pick(), Some((1, &"c1")));
        let choice = Choice::new(vec![(false, empty)]);
        assert_eq!((choice.active(), choice.pick()), (None, None));
    }
}
