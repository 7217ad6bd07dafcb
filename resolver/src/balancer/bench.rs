//! Internals for the crate's own benchmarks (`benches/picker.rs`), exported as
//! `registrar_resolver::bench_internals` only with the `bench-internals` feature (which the
//! crate's dev-dependency on itself turns on for its benches). Not part of the public API: it
//! may change at any time.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

pub mod storm;
mod updates;
pub use storm::StormCost;
pub use updates::{StepCost, UpdateBench};

use tonic::transport::Endpoint;

use super::connector::Liveness;
use super::groups::{Choice, ChoiceCell};
use super::picker::{PickEntry, Picker};
use super::pool::{Picked, Pool};
use super::stride;
use crate::error::Error;

/// The bare round-robin `Picker` over `n` live entries, each holding its index.
#[derive(Debug)]
pub struct IndexPicker(Picker<usize>);

impl IndexPicker {
    /// A picker over `n` live entries, starting at a random one.
    pub fn new(n: usize) -> Self {
        IndexPicker(Picker::new((0..n).map(live).collect()))
    }

    /// The next entry's index, as [`Picker::pick`] finds it.
    pub fn pick(&self) -> Option<usize> {
        self.0.pick().copied()
    }
}

/// A weighted `Picker` over `n` live entries weighing 1 to 10 (entry `i` weighs `i % 10 + 1`),
/// picking through the static-stride scheduler (a single entry needs no scheduler).
#[derive(Debug)]
pub struct WeightedIndexPicker(Picker<usize>);

impl WeightedIndexPicker {
    /// A weighted picker over `n` live entries.
    pub fn new(n: usize) -> Self {
        let weights: Vec<Option<u32>> = (0..n).map(|i| Some((i % 10) as u32 + 1)).collect();
        WeightedIndexPicker(Picker::continuing(
            (0..n).map(live).collect(),
            stride::scale(&weights),
            Arc::new(AtomicUsize::new(0)),
        ))
    }

    /// The next entry's index, as [`Picker::pick`] finds it.
    pub fn pick(&self) -> Option<usize> {
        self.0.pick().copied()
    }
}

/// A balancer pool whose picker holds `n` READY backends with lazily connected channels to
/// distinct `127.0.0.1` ports. The channels are never used, so nothing is ever dialed.
pub struct ReadyPool(Pool);

/// The backend a call holds from its pick on: one reference to the backend's connection.
#[derive(Debug)]
pub struct PickedBackend(Arc<Picked>);

impl PickedBackend {
    /// What sending the call does around handing the request over: takes a spare handle of
    /// the backend's channel and gives it back.
    pub fn cycle_channel(&self) {
        let channel = self.0.take_channel();
        self.0.put_channel(channel);
    }
}

impl ReadyPool {
    /// `n` READY backends. Must be called within a Tokio runtime (each lazy channel spawns its
    /// idle worker task there).
    pub fn new(n: usize) -> Result<Self, Error> {
        let entries = (0..n)
            .map(|i| {
                let port = 1 + i % usize::from(u16::MAX);
                let channel =
                    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?.connect_lazy();
                let alive = Arc::new(Liveness::new());
                let picked = Picked::new(
                    Arc::from(format!("127.0.0.1:{port}")),
                    channel,
                    alive.clone(),
                    None,
                );
                Ok(PickEntry {
                    value: Arc::new(picked),
                    alive,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(ReadyPool(Pool::with_ready(entries)))
    }

    /// What [`Balancer`](crate::Balancer)'s `call` does before sending: load the current
    /// picker, take the next live backend, count the pick and take a reference to it.
    pub fn pick(&self) -> Option<PickedBackend> {
        self.0.pick().map(PickedBackend)
    }
}

/// A failover layer's pick path over two groups of `n` READY backends each (lazily connected
/// channels, never used), both fresh: every call goes to the first group.
pub struct ReadyFailover {
    choice: ChoiceCell,
    /// The groups' pools (they own the backends the choice points to).
    _groups: Vec<Pool>,
}

impl ReadyFailover {
    /// Two groups of `n` READY backends. Must be called within a Tokio runtime (as
    /// [`ReadyPool::new`]).
    pub fn new(n: usize) -> Result<Self, Error> {
        let groups = vec![ReadyPool::new(n)?.0, ReadyPool::new(n)?.0];
        let choice = Choice::new(groups.iter().map(|g| (true, g.picker())).collect());
        Ok(ReadyFailover {
            choice: ChoiceCell::new(choice),
            _groups: groups,
        })
    }

    /// What [`FailoverBalancer`](crate::FailoverBalancer)'s `call` does before sending: load the
    /// current group choice, take the next live backend of the first group that has one, count
    /// the pick and take a reference to it.
    pub fn pick(&self) -> Option<PickedBackend> {
        self.choice.pick().map(PickedBackend)
    }
}

fn live<T>(value: T) -> PickEntry<T> {
    PickEntry {
        value,
        alive: Arc::new(Liveness::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_picker_cycles_through_every_entry() {
        let p = IndexPicker::new(100);
        let mut seen: Vec<usize> = (0..100).map(|_| p.pick().unwrap()).collect();
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(IndexPicker::new(0).pick(), None);
    }

    #[test]
    fn weighted_index_picker_follows_the_weights() {
        let p = WeightedIndexPicker::new(10);
        let mut counts = [0usize; 10];
        for _ in 0..55_000 {
            counts[p.pick().unwrap()] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            assert!(c.abs_diff(1000 * (i + 1)) <= 100, "{counts:?}");
        }
    }

    #[tokio::test]
    async fn ready_pool_picks_while_it_has_backends() {
        let pool = ReadyPool::new(3).unwrap();
        assert!((0..6).all(|_| pool.pick().is_some()));
        assert!(ReadyPool::new(0).unwrap().pick().is_none());
    }

    #[tokio::test]
    async fn ready_failover_picks_from_the_first_group() {
        let layer = ReadyFailover::new(3).unwrap();
        let first: std::collections::BTreeSet<_> = layer._groups[0]
            .picker()
            .values()
            .map(|p| p.addr.clone())
            .collect();
        for _ in 0..6 {
            let picked = layer.pick().unwrap();
            assert!(first.contains(&picked.0.addr));
        }
        assert!(ReadyFailover::new(0).unwrap().pick().is_none());
    }
}
