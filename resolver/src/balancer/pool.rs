//! The set of backend connections: one subchannel per distinct address of the resolver's
//! snapshot, their connectivity states, and the picker rebuilt whenever the READY set changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use super::connector::Liveness;
use super::picker::{PickEntry, Picker};
use super::subchannel::{self, ConnectPolicy};
use super::{BackendStatus, ConnectivityState};
use crate::discovery::Resolver;

/// Builds the tonic endpoint of an address (scheme, TLS and the user's settings).
pub(crate) type EndpointFactory =
    dyn Fn(&str) -> Result<Endpoint, tonic::transport::Error> + Send + Sync;

/// A backend picked for one call.
#[derive(Clone, Debug)]
pub(crate) struct Picked {
    pub(crate) addr: Arc<str>,
    pub(crate) channel: Channel,
    /// The liveness of the channel's connection (cleared when it turns out unusable).
    pub(crate) alive: Arc<Liveness>,
}

struct Entry {
    generation: u64,
    state: ConnectivityState,
    last_error: Option<String>,
    ready: Option<PickEntry<Picked>>,
}

/// Connectivity of every backend and the current picker, shared by the subchannel tasks, the
/// manager task and the balancer handles.
pub(crate) struct Pool {
    table: Mutex<BTreeMap<Arc<str>, Entry>>,
    picker: watch::Sender<Arc<Picker<Picked>>>,
}

impl Pool {
    pub(crate) fn new() -> Self {
        Pool {
            table: Mutex::new(BTreeMap::new()),
            picker: watch::Sender::new(Arc::new(Picker::empty())),
        }
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<Arc<str>, Entry>> {
        // Nothing panics while holding the lock (plain map updates), so a poisoned lock still
        // holds a consistent table.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pool with no backends whose picker holds `ready` (for the pick-path benchmark).
    pub(crate) fn with_ready(ready: Vec<PickEntry<Picked>>) -> Self {
        let pool = Pool::new();
        pool.picker.send_replace(Arc::new(Picker::new(ready)));
        pool
    }

    /// The current picker.
    pub(crate) fn picker(&self) -> Arc<Picker<Picked>> {
        self.picker.borrow().clone()
    }

    /// The backend for the next call: the current picker's next live entry, if any.
    pub(crate) fn pick(&self) -> Option<Picked> {
        self.picker().pick().cloned()
    }

    /// A receiver woken whenever the picker is replaced.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Picker<Picked>>> {
        self.picker.subscribe()
    }

    pub(crate) fn statuses(&self) -> Vec<BackendStatus> {
        self.table()
            .iter()
            .map(|(addr, e)| BackendStatus {
                addr: addr.to_string(),
                state: e.state,
                last_error: e.last_error.clone(),
            })
            .collect()
    }

    pub(crate) fn set_state(
        &self,
        addr: &str,
        generation: u64,
        state: ConnectivityState,
        error: Option<String>,
    ) {
        let mut table = self.table();
        let Some(entry) = table.get_mut(addr).filter(|e| e.generation == generation) else {
            return;
        };
        if entry.state != state {
            tracing::debug!(%addr, from = ?entry.state, to = ?state, "backend state");
        }
        entry.state = state;
        if error.is_some() {
            entry.last_error = error;
        }
        if entry.ready.take().is_some() {
            self.rebuild(&table);
        }
    }

    pub(crate) fn set_ready(
        &self,
        addr: &str,
        generation: u64,
        channel: Channel,
        alive: Arc<Liveness>,
    ) {
        let mut table = self.table();
        let Some((addr, entry)) = table
            .get_key_value(addr)
            .filter(|(_, e)| e.generation == generation)
            .map(|(a, _)| a.clone())
            .and_then(|a| table.get_mut(&a).map(|e| (a, e)))
        else {
            return;
        };
        entry.state = ConnectivityState::Ready;
        entry.last_error = None;
        entry.ready = Some(PickEntry {
            value: Picked {
                addr,
                channel,
                alive: alive.clone(),
            },
            alive,
        });
        self.rebuild(&table);
    }

    fn insert(&self, addr: Arc<str>, generation: u64) {
        self.table().insert(
            addr,
            Entry {
                generation,
                state: ConnectivityState::Idle,
                last_error: None,
                ready: None,
            },
        );
    }

    fn set_failed(&self, addr: &str, error: String) {
        if let Some(entry) = self.table().get_mut(addr) {
            entry.state = ConnectivityState::TransientFailure;
            entry.last_error = Some(error);
        }
    }

    fn remove(&self, addr: &str) {
        let mut table = self.table();
        if let Some(entry) = table.remove(addr)
            && entry.ready.is_some()
        {
            self.rebuild(&table);
        }
    }

    fn rebuild(&self, table: &BTreeMap<Arc<str>, Entry>) {
        let ready: Vec<_> = table.values().filter_map(|e| e.ready.clone()).collect();
        tracing::debug!(ready = ready.len(), backends = table.len(), "new picker");
        self.picker.send_replace(Arc::new(Picker::new(ready)));
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one subchannel per distinct address of the resolver's snapshots, until aborted.
pub(crate) async fn manage(
    resolver: Resolver,
    pool: Arc<Pool>,
    factory: Arc<EndpointFactory>,
    policy: ConnectPolicy,
) {
    let mut snapshots = resolver.subscribe();
    let mut subchannels: HashMap<Arc<str>, Option<AbortOnDrop>> = HashMap::new();
    let mut generation = 0u64;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let desired = snapshot.addrs();
        let removed: Vec<Arc<str>> = subchannels
            .keys()
            .filter(|a| !desired.contains(&***a))
            .cloned()
            .collect();
        for addr in removed {
            tracing::info!(%addr, "backend removed");
            // Out of the picker first; in-flight calls keep their channel and finish.
            pool.remove(&addr);
            subchannels.remove(&addr);
        }
        for addr in desired {
            if subchannels.contains_key(addr) {
                continue;
            }
            generation += 1;
            let addr: Arc<str> = Arc::from(addr);
            tracing::info!(%addr, "backend added");
            pool.insert(addr.clone(), generation);
            let task = match factory(&addr) {
                Ok(endpoint) => Some(AbortOnDrop(tokio::spawn(subchannel::run(
                    addr.clone(),
                    generation,
                    endpoint,
                    policy,
                    pool.clone(),
                )))),
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot configure backend endpoint");
                    pool.set_failed(&addr, format!("endpoint configuration: {e}"));
                    None
                }
            };
            subchannels.insert(addr, task);
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}
