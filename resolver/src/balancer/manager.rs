//! The manager task: keeps the pool's backends equal to the distinct addresses of the
//! resolver's snapshots, starting a subchannel for each new address and removing the ones that
//! left, and giving each backend the zone and weight of its endpoint's metadata (the first key
//! naming the address wins).
//!
//! Each snapshot is compared with the last one the manager applied ([`Endpoints::changes`]
//! skips what the two share), so an update costs in proportion to the keys it changed, however
//! many backends the pool holds; the pool applies it under one lock with at most one picker
//! rebuild.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tonic::transport::Endpoint;

use super::ConnectivityState;
use super::meta::BackendMeta;
use super::pool::{AbortOnDrop, Pool};
use super::subchannel::{self, ConnectPolicy};
use crate::discovery::{Endpoints, Resolver, Snapshot};

/// Builds the tonic endpoint of an address (scheme, TLS and the user's settings).
pub(crate) type EndpointFactory =
    dyn Fn(&str) -> Result<Endpoint, tonic::transport::Error> + Send + Sync;

/// Addresses named in the one-line summary of an update.
const SAMPLE_ADDRS: usize = 3;

/// Keeps a pool equal to the snapshots it is given.
pub(crate) struct Manager {
    pool: Arc<Pool>,
    factory: Arc<EndpointFactory>,
    policy: ConnectPolicy,
    generation: u64,
    /// The endpoint set the pool reflects.
    applied: Endpoints,
    /// The keys naming each address in `applied`.
    keys: HashMap<Arc<str>, BTreeSet<String>>,
}

/// Follows the resolver until aborted (or the resolver is gone).
pub(crate) async fn manage(
    resolver: Resolver,
    pool: Arc<Pool>,
    factory: Arc<EndpointFactory>,
    policy: ConnectPolicy,
) {
    let mut snapshots = resolver.subscribe();
    let mut manager = Manager::new(pool, factory, policy);
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        manager.reconcile(&snapshot);
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

impl Manager {
    /// A manager of `pool` (empty), starting subchannels through `factory` with `policy`.
    pub(crate) fn new(
        pool: Arc<Pool>,
        factory: Arc<EndpointFactory>,
        policy: ConnectPolicy,
    ) -> Self {
        Manager {
            pool,
            factory,
            policy,
            generation: 0,
            applied: Endpoints::new(),
            keys: HashMap::new(),
        }
    }

    /// Makes the pool's backends those of `snapshot`, touching only the addresses whose keys
    /// changed since the last snapshot applied. Must run within a Tokio runtime (new backends'
    /// subchannel tasks are spawned there).
    pub(crate) fn reconcile(&mut self, snapshot: &Snapshot) {
        let next = snapshot.endpoints();
        let mut touched: BTreeSet<Arc<str>> = BTreeSet::new();
        for change in self.applied.changes(next) {
            if let Some(old) = change.old {
                let addr = self.addr(&old.addr);
                if let Some(keys) = self.keys.get_mut(&addr) {
                    keys.remove(change.key);
                }
                touched.insert(addr);
            }
            if let Some(new) = change.new {
                let addr = self.addr(&new.addr);
                self.keys
                    .entry(addr.clone())
                    .or_default()
                    .insert(change.key.to_owned());
                touched.insert(addr);
            }
        }
        if touched.is_empty() {
            self.applied = next.clone();
            return;
        }
        let mut removed = Vec::new();
        let mut wanted = Vec::new();
        for addr in touched {
            let first = self.keys.get(&addr).and_then(|keys| keys.first());
            match first.and_then(|key| next.get(key)) {
                Some(endpoint) => wanted.push((addr, BackendMeta::read(&endpoint.metadata))),
                None => {
                    self.keys.remove(&addr);
                    tracing::debug!(%addr, "backend removed");
                    removed.push(addr);
                }
            }
        }
        let sinks = self.pool.update(&removed, wanted, &mut self.generation);
        let added = sinks.len();
        let added_sample: Vec<Arc<str>> = sinks
            .iter()
            .take(SAMPLE_ADDRS)
            .map(|s| s.addr().clone())
            .collect();
        for sink in sinks {
            let addr = sink.addr().clone();
            tracing::debug!(%addr, "backend added");
            match (self.factory)(&addr) {
                Ok(endpoint) => {
                    let task =
                        tokio::spawn(subchannel::run(endpoint, self.policy.clone(), sink.clone()));
                    self.pool.attach(&sink, AbortOnDrop(task));
                }
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot configure backend endpoint");
                    sink.state(
                        ConnectivityState::TransientFailure,
                        Some(format!("endpoint configuration: {e}")),
                    );
                }
            }
        }
        if added + removed.len() > 0 {
            tracing::info!(
                added,
                removed = removed.len(),
                backends = self.keys.len(),
                added_sample = ?added_sample,
                removed_sample = ?removed.iter().take(SAMPLE_ADDRS).collect::<Vec<_>>(),
                "backends changed"
            );
        }
        self.applied = next.clone();
    }

    /// The pool's shared name of `addr` (a new one if no key names it yet).
    fn addr(&self, addr: &str) -> Arc<str> {
        self.keys
            .get_key_value(addr)
            .map_or_else(|| Arc::from(addr), |(a, _)| a.clone())
    }
}
#[cfg(test)]
mod tests;
