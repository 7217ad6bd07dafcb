//! The update path without etcd, for `benches/updates.rs`: one watch response applied to a
//! resolver's endpoint set and published (discovery), then the balancer's pool brought to the
//! published snapshot and its picker rebuilt (balancer). The backends are made READY on one
//! lazily connected channel that is never used, so nothing is dialed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use registrar_etcd::KvEvent;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::balancer::manager::{EndpointFactory, Manager};
use crate::balancer::pool::Pool;
use crate::balancer::subchannel::ConnectPolicy;
use crate::discovery::{self, Endpoints, Snapshot};
use crate::error::Error;
use crate::value::{Endpoint, Metadata};

/// A resolver's endpoint set and a balancer's pool holding `n` READY backends, one per key.
pub struct UpdateBench {
    endpoints: Endpoints,
    tx: watch::Sender<Arc<Snapshot>>,
    pool: Arc<Pool>,
    manager: Manager,
    channel: Channel,
    n: usize,
    /// The first key the next removal takes.
    next: usize,
    /// The keys the last step removed, put back by the next one.
    removed: Vec<usize>,
    revision: i64,
}

/// What one step cost.
#[derive(Clone, Copy, Debug)]
pub struct StepCost {
    /// Whether the step put keys (else it deleted them).
    pub added: bool,
    /// Applying the events to the endpoint set and publishing the snapshot.
    pub discovery: Duration,
    /// Bringing the pool to the snapshot, picker rebuilds included.
    pub balancer: Duration,
}

/// The address of backend `i` (distinct loopback addresses; never dialed).
pub(super) fn addr(i: usize) -> String {
    format!(
        "127.{}.{}.{}:50051",
        100 + i / 65_536,
        (i / 256) % 256,
        i % 256
    )
}

fn key(i: usize) -> String {
    format!("bench/{}", addr(i))
}

fn put(i: usize, revision: i64) -> Result<KvEvent, Error> {
    put_at(i, &addr(i), revision)
}

/// A put of key `i` naming `addr`.
pub(super) fn put_at(i: usize, addr: &str, revision: i64) -> Result<KvEvent, Error> {
    let value = Endpoint::new(addr.to_owned(), Metadata::null())?.encode();
    Ok(KvEvent {
        key: key(i),
        value: Some(value.into_bytes()),
        lease: 0,
        revision,
    })
}

impl UpdateBench {
    /// `n` endpoints, resolved, in the pool and READY. Must be called within a Tokio runtime.
    pub fn new(n: usize) -> Result<Self, Error> {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        // Every backend's endpoint fails to configure: no subchannel task starts (the bench
        // makes them READY itself).
        let factory: Arc<EndpointFactory> = Arc::new(|a: &str| {
            tonic::transport::Endpoint::from_shared(format!("http://{a}/\u{0}"))
        });
        let policy = ConnectPolicy {
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(1)),
            min_connect_timeout: Duration::from_secs(1),
            health: None,
        };
        let pool = Arc::new(Pool::new());
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        let mut bench = UpdateBench {
            endpoints: Endpoints::new(),
            tx,
            manager: Manager::new(pool.clone(), factory, policy),
            pool,
            channel,
            n,
            next: 0,
            removed: Vec::new(),
            revision: 1,
        };
        let events = (0..n).map(|i| put(i, 1)).collect::<Result<Vec<_>, _>>()?;
        bench.apply(&events);
        let all: Vec<Arc<str>> = (0..n).map(|i| Arc::from(addr(i))).collect();
        bench.pool.make_ready(&all, &bench.channel);
        Ok(bench)
    }

    /// Endpoints resolved now.
    pub fn len(&self) -> usize {
        self.tx.borrow().len()
    }

    /// Whether no endpoint is resolved.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Backends in the current picker.
    pub fn pickable(&self) -> usize {
        self.pool.picker().len()
    }

    fn apply(&mut self, events: &[KvEvent]) -> (Duration, Duration) {
        let start = Instant::now();
        if discovery::apply(events, &mut self.endpoints).changed() {
            discovery::publish(&self.tx, self.revision, &self.endpoints);
        }
        let published = Instant::now();
        let snapshot = self.tx.borrow().clone();
        self.manager.reconcile(&snapshot);
        (published - start, published.elapsed())
    }

    /// One watch response: deletes `changes` keys (READY backends) or, every other step, puts
    /// back those the last step deleted (then makes them READY, untimed).
    pub fn step(&mut self, changes: usize) -> Result<StepCost, Error> {
        self.revision += 1;
        let adding = !self.removed.is_empty();
        let events = if adding {
            self.removed
                .iter()
                .map(|&i| put(i, self.revision))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            let start = self.next;
            self.next = (self.next + changes) % self.n.max(1);
            self.removed = (start..start + changes.min(self.n))
                .map(|i| i % self.n)
                .collect();
            self.removed
                .iter()
                .map(|&i| KvEvent {
                    key: key(i),
                    value: None,
                    lease: 0,
                    revision: self.revision,
                })
                .collect()
        };
        let (discovery, balancer) = self.apply(&events);
        if adding {
            let back: Vec<Arc<str>> = self.removed.drain(..).map(|i| Arc::from(addr(i))).collect();
            self.pool.make_ready(&back, &self.channel);
        }
        Ok(StepCost {
            added: adding,
            discovery,
            balancer,
        })
    }

    /// One picker rebuild over the current backends.
    pub fn rebuild(&self) -> Duration {
        let start = Instant::now();
        self.pool.force_rebuild();
        start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_remove_and_put_back_ready_backends() {
        let mut bench = UpdateBench::new(50).unwrap();
        assert_eq!((bench.len(), bench.pickable()), (50, 50));
        let cost = bench.step(10).unwrap();
        assert!(!cost.added);
        assert_eq!((bench.len(), bench.pickable()), (40, 40));
        let cost = bench.step(10).unwrap();
        assert!(cost.added);
        assert_eq!((bench.len(), bench.pickable()), (50, 50));
    }
}
