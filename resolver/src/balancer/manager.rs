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
use crate::discovery::Resolver;

/// Builds the tonic endpoint of an address (scheme, TLS and the user's settings).
pub(crate) type EndpointFactory =
    dyn Fn(&str) -> Result<Endpoint, tonic::transport::Error> + Send + Sync;

/// Follows the resolver until aborted (or the resolver is gone).
pub(crate) async fn manage(
    resolver: Resolver,
    pool: Arc<Pool>,
    factory: Arc<EndpointFactory>,
    policy: ConnectPolicy,
) {
    let mut snapshots = resolver.subscribe();
    let mut generation = 0u64;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
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
            generation += 1;
            let addr: Arc<str> = Arc::from(addr);
            tracing::info!(%addr, "backend added");
            let sink = pool.add_with(addr.clone(), generation, meta);
            match factory(&addr) {
                Ok(endpoint) => {
                    let task =
                        tokio::spawn(subchannel::run(endpoint, policy.clone(), sink.clone()));
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
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}
