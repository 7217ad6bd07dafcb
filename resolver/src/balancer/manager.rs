//! The manager task: keeps the pool's backends equal to the distinct addresses of the
//! resolver's snapshots, starting a subchannel for each new address and removing the ones that
//! left, and giving each backend the zone and weight of its endpoint's metadata (the first key
//! naming the address wins).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tonic::transport::Endpoint;

use super::ConnectivityState;
use super::meta::BackendMeta;
use super::pool::{AbortOnDrop, Pool};
use super::subchannel::{self, ConnectPolicy};
use crate::discovery::{Resolver, Snapshot};

/// Builds the tonic endpoint of an address (scheme, TLS and the user's settings).
pub(crate) type EndpointFactory =
    dyn Fn(&str) -> Result<Endpoint, tonic::transport::Error> + Send + Sync;

/// Keeps a pool equal to the snapshots it is given.
pub(crate) struct Manager {
    pool: Arc<Pool>,
    factory: Arc<EndpointFactory>,
    policy: ConnectPolicy,
    generation: u64,
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
    /// A manager of `pool`, starting subchannels through `factory` with `policy`.
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
        }
    }

    /// Makes the pool's backends those of `snapshot`. Must run within a Tokio runtime (new
    /// backends' subchannel tasks are spawned there).
    pub(crate) fn reconcile(&mut self, snapshot: &Snapshot) {
        let pool = &self.pool;
        let desired = snapshot.addrs();
        let mut metas: BTreeMap<&str, BackendMeta> = BTreeMap::new();
        for endpoint in snapshot.endpoints().values() {
            metas
                .entry(endpoint.addr.as_str())
                .or_insert_with(|| BackendMeta::read(&endpoint.metadata));
        }
        let current: BTreeSet<Arc<str>> = pool.addrs().into_iter().collect();
        for addr in current.iter().filter(|a| !desired.contains(&***a)) {
            tracing::info!(%addr, "backend removed");
            // Out of the picker first; in-flight calls keep their channel and finish.
            pool.remove(addr);
        }
        for addr in desired {
            let meta = metas.remove(addr).unwrap_or_default();
            if current.contains(addr) {
                pool.set_meta(addr, meta);
                continue;
            }
            self.generation += 1;
            let addr: Arc<str> = Arc::from(addr);
            tracing::info!(%addr, "backend added");
            let sink = pool.add_with(addr.clone(), self.generation, meta);
            match (self.factory)(&addr) {
                Ok(endpoint) => {
                    let task =
                        tokio::spawn(subchannel::run(endpoint, self.policy.clone(), sink.clone()));
                    pool.attach(&sink, AbortOnDrop(task));
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
    }
}
