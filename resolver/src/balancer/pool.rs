//! The set of backends, one entry per distinct address: its connectivity, its health, its
//! ejection state and call counter, its subchannel task and, while READY, its channel; plus the
//! picker, rebuilt whenever the set of pickable backends (READY, healthy, not ejected) or their
//! routing metadata changes, applying the zone preference ([`super::locality`]) and the weights
//! ([`super::stride`]) on each rebuild.
//!
//! Rebuilds caused by the subchannels' reports (READY, lost, health) are coalesced: the first
//! backend of an empty pick set goes in at once, later changes within a short while (a few
//! scheduler turns, or twice the last rebuild's duration) share one rebuild, so N backends
//! turning READY together cost a few O(N) rebuilds rather than N. Reading the picker outside
//! the call path ([`Pool::picker`]) runs a due rebuild first.
//!
//! The pick path is lock-free and touches little memory per backend: the current picker is
//! loaded from an [`ArcSwap`] (no lock, no shared reference count), and the picked backend is one
//! shared [`Picked`] whose reference count and pick counter sit on one cache line, so a call
//! takes one reference rather than cloning the backend's channel, address and counters.
//! Sending needs a tonic `Channel` handle of its own (its `Service::call` takes `&mut self`):
//! the call borrows a spare one from its connection for the instant of handing the request
//! over and gives it back ([`Picked::take_channel`]); nothing waits for the spares (`try_lock`),
//! so a handle is cloned only when another call holds them at that instant.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::calls::{CallCounter, FailureCodes, Outcome};
use super::connector::Liveness;
use super::health::HealthState;
use super::locality::{self, ZoneFilter, ZonePreference};
use super::meta::BackendMeta;
use super::outlier::{self, Change, EjectionState, Host, OutlierDetection};
use super::picker::{PickEntry, Picker};
use super::snapshot::{BackendSnapshot, BackendState, RoutingSnapshot};
use super::stride;
use super::{BackendHealth, BackendStatus, ConnectivityState};

/// One READY connection of a backend, as calls use it: shared (`Arc<Picked>`) by the pickers
/// and by every call sent on it.
#[derive(Debug)]
// `picks` first: it shares a cache line with the `Arc`'s reference count, which every pick
// also updates.
#[repr(C)]
pub(crate) struct Picked {
    /// How many times this connection was picked.
    pub(crate) picks: AtomicU64,
    /// Spare handles of `channel`, for sending.
    spare: Mutex<Vec<Channel>>,
    pub(crate) addr: Arc<str>,
    pub(crate) channel: Channel,
    /// The liveness of the channel's connection (cleared when it turns out unusable).
    pub(crate) alive: Arc<Liveness>,
    /// Where the call's outcome is counted (with outlier ejection on).
    pub(crate) outcome: Option<Outcome>,
}

impl Picked {
    /// A connection on `channel`, not picked yet.
    pub(crate) fn new(
        addr: Arc<str>,
        channel: Channel,
        alive: Arc<Liveness>,
        outcome: Option<Outcome>,
    ) -> Self {
        Picked {
            picks: AtomicU64::new(0),
            spare: Mutex::new(Vec::new()),
            addr,
            channel,
            alive,
            outcome,
        }
    }

    /// A handle of the channel to send one request with: a spare one, or a new clone. Give it
    /// back with [`put_channel`](Self::put_channel) once the request is handed over.
    pub(crate) fn take_channel(&self) -> Channel {
        // Never waits: while another call holds the spares, a new clone it is.
        let spare = self.spare.try_lock().ok().and_then(|mut spare| spare.pop());
        spare.unwrap_or_else(|| self.channel.clone())
    }

    /// Gives back a handle taken by [`take_channel`](Self::take_channel) (dropped when there are
    /// enough spares already, or when another call holds them at this instant).
    pub(crate) fn put_channel(&self, channel: Channel) {
        let extra = match self.spare.try_lock() {
            Ok(mut spare) if spare.len() < SPARE_CHANNELS => {
                spare.push(channel);
                None
            }
            _ => Some(channel),
        };
        drop(extra);
    }

    /// Counts one pick of this connection; a handle to it for the call.
    pub(crate) fn count(this: &Arc<Picked>) -> Arc<Picked> {
        this.picks.fetch_add(1, Ordering::Relaxed);
        Arc::clone(this)
    }
}

/// Spare channel handles kept per connection: requests are handed over in an instant, so a few
/// cover many concurrent calls.
const SPARE_CHANNELS: usize = 16;

/// Everything known about one backend address.
struct Entry {
    generation: u64,
    state: ConnectivityState,
    last_error: Option<String>,
    ready: Option<PickEntry<Arc<Picked>>>,
    /// What health checking says of the current connection.
    health: HealthState,
    /// Why the last health Watch failed, while [`HealthState::Failed`].
    health_error: Option<String>,
    /// Outlier ejection: whether and since when it is ejected.
    ejection: EjectionState,
    /// Outcomes of its calls since the last sweep (with outlier ejection on).
    outcome: Option<Outcome>,
    /// The subchannel task keeping it connected; `None` while starting, or if its endpoint
    /// could not be configured. Dropping the entry aborts it.
    task: Option<AbortOnDrop>,
    /// Its zone and weight, from the endpoint's metadata.
    meta: BackendMeta,
    /// How many times its earlier connections were picked (the current one counts its own,
    /// [`Picked::picks`]).
    picks_before: u64,
}

/// How the pool routes: zone preference and weights (both off by default).
#[derive(Clone, Debug, Default)]
pub(crate) struct Routing {
    pub(crate) zone: Option<ZonePreference>,
    pub(crate) weighted: bool,
}

/// Every backend (its connectivity and its subchannel task) and the current picker, shared by
/// the subchannels (through their [`Sink`]), the manager task and the balancer handles.
pub(crate) struct Pool {
    table: Mutex<BTreeMap<Arc<str>, Entry>>,
    /// The current picker, for picking (lock-free).
    current: ArcSwap<Picker<Arc<Picked>>>,
    /// The same picker, for waking whoever waits for a new one.
    picker: watch::Sender<Arc<Picker<Arc<Picked>>>>,
    /// Which statuses are failures, when call outcomes are counted (outlier ejection on).
    counting: Option<FailureCodes>,
    routing: Routing,
    /// The pick sequence, shared by every picker (rebuilds never reset it).
    sequence: Arc<AtomicUsize>,
    /// What the zone preference decided at the last rebuild.
    zone_filter: Mutex<ZoneFilter>,
    /// Whether "no filtering" was already logged for a missing zone / an unknown client zone.
    warned_missing: AtomicBool,
    warned_unknown: AtomicBool,
    /// How many pickers were built (a counter, for benchmarks and tests).
    rebuilds: AtomicU64,
    /// Whether a coalesced rebuild is due: set (under the table lock) by a backend's change,
    /// cleared by every rebuild.
    pending: AtomicBool,
    /// How long the last rebuild took, in nanoseconds (spaces coalesced rebuilds).
    last_rebuild: AtomicU64,
}

/// A coalesced rebuild waits this many times as long as the last rebuild took, so that during
/// a storm of changes rebuilding takes at most about a third of one core.
const COALESCE_FACTOR: u32 = 2;

/// Rebuilds quicker than this are coalesced by only letting the tasks already scheduled run
/// first (a timer cannot wait less than a millisecond anyway); slower ones by a timer.
const COALESCE_BY_TIMER_ABOVE: Duration = Duration::from_micros(100);

/// The longest a coalesced rebuild waits.
const COALESCE_AT_MOST: Duration = Duration::from_millis(50);

impl Pool {
    #[cfg(any(test, feature = "bench-internals"))]
    pub(crate) fn new() -> Self {
        Pool::counting(None)
    }

    /// A pool whose backends count the outcomes of their calls, by `failures`.
    pub(crate) fn counting(failures: Option<FailureCodes>) -> Self {
        let empty = Arc::new(Picker::empty());
        Pool {
            table: Mutex::new(BTreeMap::new()),
            current: ArcSwap::new(empty.clone()),
            picker: watch::Sender::new(empty),
            counting: failures,
            routing: Routing::default(),
            sequence: Arc::new(AtomicUsize::new(rand::random::<u32>() as usize)),
            zone_filter: Mutex::new(ZoneFilter::Off),
            warned_missing: AtomicBool::new(false),
            warned_unknown: AtomicBool::new(false),
            rebuilds: AtomicU64::new(0),
            pending: AtomicBool::new(false),
            last_rebuild: AtomicU64::new(0),
        }
    }

    /// How many pickers were built so far.
    #[cfg(any(test, feature = "bench-internals"))]
    pub(crate) fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// The same pool, routing by `routing`.
    pub(crate) fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<Arc<str>, Entry>> {
        // Nothing panics while holding the lock (plain map updates), so a poisoned lock still
        // holds a consistent table.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pool with no backends whose picker holds `ready` (for the pick-path benchmark).
    #[cfg(any(test, feature = "bench-internals"))]
    pub(crate) fn with_ready(ready: Vec<PickEntry<Arc<Picked>>>) -> Self {
        let pool = Pool::new();
        pool.install(Arc::new(Picker::new(ready)));
        pool
    }

    /// Makes the backends `addrs` READY on (a handle of) `channel`, then rebuilds the picker
    /// once (for the update benchmark: nothing is dialed).
    #[cfg(any(test, feature = "bench-internals"))]
    pub(crate) fn make_ready(&self, addrs: &[Arc<str>], channel: &Channel) {
        let mut table = self.table();
        for addr in addrs {
            let Some((addr, entry)) = table
                .get_key_value(&**addr)
                .map(|(a, _)| a.clone())
                .and_then(|a| table.get_mut(&a).map(|e| (a, e)))
            else {
                continue;
            };
            let alive = Arc::new(Liveness::new());
            entry.state = ConnectivityState::Ready;
            entry.ready = Some(PickEntry {
                value: Arc::new(Picked::new(addr, channel.clone(), alive.clone(), None)),
                alive,
            });
        }
        self.rebuild(&table);
    }

    /// Rebuilds the picker (for the update benchmark).
    #[cfg(any(test, feature = "bench-internals"))]
    pub(crate) fn force_rebuild(&self) {
        self.rebuild(&self.table());
    }

    /// Makes `picker` the current one and wakes whoever waits for a new one.
    fn install(&self, picker: Arc<Picker<Arc<Picked>>>) {
        self.current.store(picker.clone());
        self.picker.send_replace(picker);
    }

    /// The current picker, brought up to date first if a coalesced rebuild is due (so that
    /// what it holds agrees with [`statuses`](Self::statuses) and the snapshot).
    pub(crate) fn picker(&self) -> Arc<Picker<Arc<Picked>>> {
        self.flush();
        self.current.load_full()
    }

    /// Runs the coalesced rebuild now if one is due.
    pub(crate) fn flush(&self) {
        if self.pending.load(Ordering::Acquire) {
            let table = self.table();
            // Set and cleared under the table lock: still due?
            if self.pending.load(Ordering::Acquire) {
                self.rebuild(&table);
            }
        }
    }

    /// Brings the picker up to a change of a backend's pickability reported by its
    /// subchannel (READY, lost, health). At once when the pick set is empty (a call may be
    /// waiting for its first backend) or outside a Tokio runtime; otherwise the rebuild is
    /// coalesced with the changes that follow it within a short while, so that N backends
    /// turning READY together (a cold start) cost a few rebuilds instead of N, each O(N).
    /// A connection lost meanwhile is never picked (its liveness flag says so at once).
    fn rebuild_soon(self: &Arc<Self>, table: &BTreeMap<Arc<str>, Entry>) {
        if self.current.load().len() == 0 {
            self.rebuild(table);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.rebuild(table);
            return;
        };
        if self.pending.swap(true, Ordering::AcqRel) {
            // Already due: that rebuild will see this change too.
            return;
        }
        let wait = (Duration::from_nanos(self.last_rebuild.load(Ordering::Relaxed))
            * COALESCE_FACTOR)
            .min(COALESCE_AT_MOST);
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            if wait > COALESCE_BY_TIMER_ABOVE {
                tokio::time::sleep(wait).await;
            } else {
                tokio::task::yield_now().await;
            }
            if let Some(pool) = pool.upgrade() {
                pool.flush();
            }
        });
    }

    /// The backend for the next call: the current picker's next live entry, if any. Lock-free;
    /// takes one reference to the backend's connection.
    pub(crate) fn pick(&self) -> Option<Arc<Picked>> {
        self.current.load().pick().map(Picked::count)
    }

    /// A receiver woken whenever the picker is replaced.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Picker<Arc<Picked>>>> {
        self.picker.subscribe()
    }

    /// Every backend's connectivity. A due coalesced rebuild runs first, so that the pick set
    /// agrees with what this reports from then on.
    pub(crate) fn statuses(&self) -> Vec<BackendStatus> {
        self.flush();
        self.table()
            .iter()
            .map(|(addr, e)| BackendStatus {
                addr: addr.to_string(),
                state: e.state,
                last_error: e.last_error.clone(),
            })
            .collect()
    }

    /// Every backend's health and whether it is pickable. A due coalesced rebuild runs first:
    /// a backend reported not pickable is out of the pick set for the calls that follow.
    pub(crate) fn health(&self) -> Vec<BackendHealth> {
        self.flush();
        self.table()
            .iter()
            .map(|(addr, e)| BackendHealth {
                addr: addr.to_string(),
                health: e.health,
                ejected: e.ejection.ejected_at.is_some(),
                pickable: e.pickable(),
                last_error: e.health_error.clone(),
            })
            .collect()
    }

    fn set_state(
        self: &Arc<Self>,
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
        let was_pickable = entry.pickable();
        entry.retire();
        // The next connection starts over with its own health checking.
        if entry.health != HealthState::Off {
            entry.health = HealthState::Pending;
            entry.health_error = None;
        }
        if was_pickable {
            self.rebuild_soon(&table);
        }
    }

    fn set_health(
        self: &Arc<Self>,
        addr: &str,
        generation: u64,
        health: HealthState,
        error: Option<String>,
    ) {
        let mut table = self.table();
        let Some(entry) = table.get_mut(addr).filter(|e| e.generation == generation) else {
            return;
        };
        if entry.health != health {
            if health.is_pickable() {
                tracing::info!(%addr, from = ?entry.health, to = ?health, "backend healthy");
            } else {
                tracing::info!(%addr, from = ?entry.health, to = ?health, error = ?error, "backend not healthy");
            }
        }
        let was_pickable = entry.pickable();
        entry.health = health;
        entry.health_error = error;
        if entry.pickable() != was_pickable {
            self.rebuild_soon(&table);
        }
    }

    fn set_ready(
        self: &Arc<Self>,
        addr: &str,
        generation: u64,
        channel: Channel,
        alive: Arc<Liveness>,
        health: HealthState,
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
        let was_pickable = entry.pickable();
        entry.state = ConnectivityState::Ready;
        entry.last_error = None;
        entry.health = health;
        entry.health_error = None;
        entry.retire();
        entry.ready = Some(PickEntry {
            value: Arc::new(Picked::new(
                addr,
                channel,
                alive.clone(),
                entry.outcome.clone(),
            )),
            alive,
        });
        if was_pickable || entry.pickable() {
            self.rebuild_soon(&table);
        }
    }

    /// Applies what one resolver update changed, under one lock and with at most one picker
    /// rebuild: removes the backends `removed` (out of the picker at once; calls already sent
    /// keep their channel and finish), gives each of `wanted` its metadata, adding it as IDLE
    /// under the next `generation` if it is new. The sinks of the new backends, to start their
    /// subchannels with.
    pub(crate) fn update(
        self: &Arc<Self>,
        removed: &[Arc<str>],
        wanted: Vec<(Arc<str>, BackendMeta)>,
        generation: &mut u64,
    ) -> Vec<Sink> {
        let mut gone = Vec::with_capacity(removed.len());
        let mut sinks = Vec::new();
        let mut table = self.table();
        let mut rebuild = false;
        for addr in removed {
            if let Some(entry) = table.remove(&**addr) {
                rebuild |= entry.pickable() || self.routing.zone.is_some();
                gone.push(entry);
            }
        }
        for (addr, meta) in wanted {
            if let Some(entry) = table.get_mut(&*addr) {
                if entry.meta != meta {
                    tracing::debug!(%addr, zone = ?meta.zone, weight = ?meta.weight, "backend metadata");
                    entry.meta = meta;
                    rebuild = true;
                }
                continue;
            }
            *generation += 1;
            table.insert(addr.clone(), self.entry(*generation, meta));
            // A new backend (not pickable yet) may still change what the zone filter decides.
            rebuild |= self.routing.zone.is_some();
            sinks.push(Sink {
                pool: Arc::downgrade(self),
                addr,
                generation: *generation,
            });
        }
        if rebuild {
            self.rebuild(&table);
        }
        drop(table);
        // Aborts their subchannel tasks, outside the lock.
        drop(gone);
        sinks
    }

    /// A new IDLE backend's entry.
    fn entry(&self, generation: u64, meta: BackendMeta) -> Entry {
        Entry {
            generation,
            state: ConnectivityState::Idle,
            last_error: None,
            ready: None,
            health: HealthState::Off,
            health_error: None,
            ejection: EjectionState::default(),
            outcome: self.counting.map(|failures| Outcome {
                counter: Arc::new(CallCounter::default()),
                failures,
            }),
            task: None,
            meta,
            picks_before: 0,
        }
    }

    /// Adds (or replaces) the backend `addr` as IDLE under `generation`; its reporting sink.
    #[cfg(test)]
    pub(crate) fn add(self: &Arc<Self>, addr: Arc<str>, generation: u64) -> Sink {
        self.add_with(addr, generation, BackendMeta::default())
    }

    /// Adds (or replaces) the backend `addr` with routing metadata `meta` as IDLE under
    /// `generation`; its reporting sink.
    #[cfg(test)]
    pub(crate) fn add_with(
        self: &Arc<Self>,
        addr: Arc<str>,
        generation: u64,
        meta: BackendMeta,
    ) -> Sink {
        let replaced = self
            .table()
            .insert(addr.clone(), self.entry(generation, meta));
        if self.routing.zone.is_some() {
            // A new backend (not pickable yet) may still change what the zone filter decides.
            self.rebuild(&self.table());
        }
        drop(replaced);
        Sink {
            pool: Arc::downgrade(self),
            addr,
            generation,
        }
    }

    /// Gives the backend of `sink` its subchannel task (aborted if the backend is gone).
    pub(crate) fn attach(&self, sink: &Sink, task: AbortOnDrop) {
        let mut table = self.table();
        if let Some(entry) = table
            .get_mut(&*sink.addr)
            .filter(|e| e.generation == sink.generation)
        {
            entry.task = Some(task);
        }
    }

    /// Removes a backend: out of the picker at once, its subchannel task aborted. Calls already
    /// sent on its channel keep their own handle to it and finish.
    #[cfg(test)]
    pub(crate) fn remove(&self, addr: &str) {
        let removed = {
            let mut table = self.table();
            let removed = table.remove(addr);
            if removed.as_ref().is_some_and(Entry::pickable) || self.routing.zone.is_some() {
                self.rebuild(&table);
            }
            removed
        };
        drop(removed);
    }

    /// One outlier ejection sweep at `now` over the calls counted since the last one.
    pub(crate) fn sweep(
        &self,
        config: &OutlierDetection,
        now: tokio::time::Instant,
        roll: &mut impl FnMut() -> u32,
    ) {
        let mut table = self.table();
        let mut hosts: Vec<Host> = table
            .values()
            .map(|e| Host {
                state: e.ejection,
                counts: e
                    .outcome
                    .as_ref()
                    .map(|o| o.counter.take())
                    .unwrap_or_default(),
            })
            .collect();
        let counts: Vec<_> = hosts.iter().map(|h| h.counts).collect();
        let changes = outlier::sweep(config, now, &mut hosts, roll);
        let mut rebuild = false;
        for (entry, host) in table.values_mut().zip(&hosts) {
            let was_pickable = entry.pickable();
            entry.ejection = host.state;
            rebuild |= entry.pickable() != was_pickable;
        }
        let addrs: Vec<&Arc<str>> = table.keys().collect();
        for (i, change) in changes {
            let (Some(addr), Some(c)) = (addrs.get(i), counts.get(i)) else {
                continue;
            };
            match change {
                Change::Ejected(time) => tracing::warn!(
                    %addr,
                    successes = c.successes,
                    failures = c.failures,
                    ?time,
                    "outlier ejected"
                ),
                Change::Returned => tracing::info!(%addr, "outlier ejection over"),
            }
        }
        if rebuild {
            self.rebuild(&table);
        }
    }

    /// Sets the zone and weight of `addr` from its endpoint's metadata (rebuilding the picker
    /// when they changed).
    #[cfg(test)]
    pub(crate) fn set_meta(&self, addr: &str, meta: BackendMeta) {
        let mut table = self.table();
        let Some(entry) = table.get_mut(addr) else {
            return;
        };
        if entry.meta != meta {
            tracing::debug!(%addr, zone = ?meta.zone, weight = ?meta.weight, "backend metadata");
            entry.meta = meta;
            self.rebuild(&table);
        }
    }

    /// What the zone preference decides for `table`, logging a change of decision (and each
    /// reason not to filter only once).
    fn zone_filter(&self, table: &BTreeMap<Arc<str>, Entry>) -> ZoneFilter {
        let preference = self.routing.zone.as_ref();
        let filter = locality::select(
            preference,
            table
                .values()
                .map(|e| (e.meta.zone.as_deref(), e.pickable())),
        );
        let mut last = self.zone_filter.lock().unwrap_or_else(|p| p.into_inner());
        if *last != filter {
            let zone = preference.map(|p| p.zone.as_str());
            match filter {
                ZoneFilter::MissingZone if !self.warned_missing.swap(true, Ordering::Relaxed) => {
                    tracing::warn!(
                        ?zone,
                        "some backends have no zone metadata: zone preference off"
                    )
                }
                ZoneFilter::UnknownZone if !self.warned_unknown.swap(true, Ordering::Relaxed) => {
                    tracing::warn!(
                        ?zone,
                        "no backend in the client's zone: zone preference off"
                    )
                }
                ZoneFilter::Local | ZoneFilter::FallBack => {
                    tracing::info!(?zone, ?filter, "zone preference")
                }
                _ => {}
            }
            *last = filter;
        }
        filter
    }

    /// Builds and installs the picker of `table` (held locked by the caller).
    fn rebuild(&self, table: &BTreeMap<Arc<str>, Entry>) {
        let started = std::time::Instant::now();
        self.pending.store(false, Ordering::Release);
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        let filter = self.zone_filter(table);
        let preference = self.routing.zone.as_ref();
        let chosen: Vec<&Entry> = table
            .values()
            .filter(|e| {
                e.pickable() && locality::admits(filter, preference, e.meta.zone.as_deref())
            })
            .collect();
        let weights = if self.routing.weighted {
            stride::scale(&chosen.iter().map(|e| e.meta.weight).collect::<Vec<_>>())
        } else {
            None
        };
        let ready: Vec<_> = chosen.iter().filter_map(|e| e.ready.clone()).collect();
        tracing::debug!(
            pickable = ready.len(),
            backends = table.len(),
            ?filter,
            weighted = weights.is_some(),
            "new picker"
        );
        self.install(Arc::new(Picker::continuing(
            ready,
            weights,
            self.sequence.clone(),
        )));
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_rebuild.store(took, Ordering::Relaxed);
    }

    /// Every backend's routing: zone, weight, state, picks.
    pub(crate) fn snapshot(&self) -> RoutingSnapshot {
        let table = self.table();
        let filter = *self.zone_filter.lock().unwrap_or_else(|p| p.into_inner());
        let preference = self.routing.zone.as_ref();
        let backends: Vec<BackendSnapshot> = table
            .iter()
            .map(|(addr, e)| BackendSnapshot {
                addr: addr.to_string(),
                zone: e.meta.zone.as_deref().map(str::to_owned),
                weight: e.meta.weight,
                state: if e.ejection.ejected_at.is_some() {
                    BackendState::Ejected
                } else if e.ready.is_some() && !e.health.is_pickable() {
                    BackendState::Unhealthy
                } else {
                    match e.state {
                        ConnectivityState::Ready => BackendState::Ready,
                        ConnectivityState::Idle => BackendState::Idle,
                        ConnectivityState::Connecting => BackendState::Connecting,
                        ConnectivityState::TransientFailure => BackendState::TransientFailure,
                    }
                },
                in_pick_set: e.pickable()
                    && locality::admits(filter, preference, e.meta.zone.as_deref()),
                picks: e.picks(),
            })
            .collect();
        RoutingSnapshot {
            zone: preference.map(|p| p.zone.clone()),
            min_local: preference.map(|p| p.min_local),
            zone_filter: filter,
            weighted: self.routing.weighted,
            weights_defaulted: if self.routing.weighted {
                table.values().filter(|e| e.meta.weight.is_none()).count()
            } else {
                0
            },
            weights_invalid: table.values().filter(|e| e.meta.weight_invalid).count(),
            backends,
        }
    }
}

impl Entry {
    /// Drops the current connection from the entry, keeping its pick count. (A pick through a
    /// picker being replaced at that very instant may go uncounted.)
    fn retire(&mut self) {
        if let Some(ready) = self.ready.take() {
            self.picks_before += ready.value.picks.load(Ordering::Relaxed);
        }
    }

    /// How many times this backend was picked, over all its connections.
    fn picks(&self) -> u64 {
        self.picks_before
            + self
                .ready
                .as_ref()
                .map_or(0, |r| r.value.picks.load(Ordering::Relaxed))
    }

    /// Whether calls may go to this backend: READY, healthy and not ejected.
    fn pickable(&self) -> bool {
        self.ready.is_some() && self.health.is_pickable() && self.ejection.ejected_at.is_none()
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

/// Where one subchannel reports its connectivity: its pool entry, named by address and
/// generation, so that a stale subchannel of a removed address cannot touch a newer entry.
///
/// It holds the pool weakly: the pool owns the subchannel tasks, and dropping the pool (with
/// the last balancer handle) must abort them.
#[derive(Clone, Debug)]
pub(crate) struct Sink {
    pool: Weak<Pool>,
    addr: Arc<str>,
    generation: u64,
}

impl Sink {
    /// The backend's `host:port`.
    pub(crate) fn addr(&self) -> &Arc<str> {
        &self.addr
    }

    /// Reports a state other than READY (and why the last attempt failed, if it did).
    pub(crate) fn state(&self, state: ConnectivityState, error: Option<String>) {
        if let Some(pool) = self.pool.upgrade() {
            pool.set_state(&self.addr, self.generation, state, error);
        }
    }

    /// Reports READY: calls may be sent on `channel` while `alive` holds and `health` (the
    /// connection's initial health: [`HealthState::Off`] or [`HealthState::Pending`]) allows.
    pub(crate) fn ready(&self, channel: Channel, alive: Arc<Liveness>, health: HealthState) {
        if let Some(pool) = self.pool.upgrade() {
            pool.set_ready(&self.addr, self.generation, channel, alive, health);
        }
    }

    /// Reports what health checking says of the current connection.
    pub(crate) fn health(&self, health: HealthState, error: Option<String>) {
        if let Some(pool) = self.pool.upgrade() {
            pool.set_health(&self.addr, self.generation, health, error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_sink_cannot_touch_a_newer_entry() {
        let pool = Arc::new(Pool::new());
        let old = pool.add(Arc::from("127.0.0.1:1"), 1);
        let new = pool.add(Arc::from("127.0.0.1:1"), 2);
        old.state(ConnectivityState::TransientFailure, Some("old".into()));
        assert_eq!(pool.statuses()[0].state, ConnectivityState::Idle);
        new.state(ConnectivityState::Connecting, None);
        assert_eq!(pool.statuses()[0].state, ConnectivityState::Connecting);
        pool.remove("127.0.0.1:1");
        new.state(ConnectivityState::Connecting, None);
        assert!(pool.statuses().is_empty());
    }

    #[tokio::test]
    async fn removing_a_backend_or_dropping_the_pool_aborts_its_task() {
        let pool = Arc::new(Pool::new());
        let mut handles = Vec::new();
        for (i, addr) in ["127.0.0.1:1", "127.0.0.1:2"].into_iter().enumerate() {
            let sink = pool.add(Arc::from(addr), i as u64);
            // The task holds its sink, as a subchannel does: it must not keep the pool alive.
            let reporter = sink.clone();
            let task = tokio::spawn(async move {
                let _sink = reporter;
                std::future::pending::<()>().await
            });
            handles.push(task.abort_handle());
            pool.attach(&sink, AbortOnDrop(task));
        }
        pool.remove("127.0.0.1:1");
        finished(&handles[0]).await;
        assert!(!handles[1].is_finished());
        drop(pool);
        finished(&handles[1]).await;
    }

    /// A READY backend's channel (lazy: nothing is dialed).
    fn ready(sink: &Sink, health: HealthState) -> Arc<Liveness> {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let alive = Arc::new(Liveness::new());
        sink.ready(channel, alive.clone(), health);
        alive
    }

    fn picked(pool: &Pool) -> Vec<String> {
        let picker = pool.picker();
        let mut addrs: Vec<String> = (0..picker.len())
            .filter_map(|_| picker.pick().map(|p| p.addr.to_string()))
            .collect();
        addrs.sort();
        addrs
    }

    #[tokio::test]
    async fn only_ready_healthy_backends_are_picked_and_health_restarts_with_each_connection() {
        let pool = Arc::new(Pool::new());
        let a = pool.add(Arc::from("127.0.0.1:1"), 1);
        let b = pool.add(Arc::from("127.0.0.1:2"), 2);
        ready(&a, HealthState::Off);
        ready(&b, HealthState::Pending);
        assert_eq!(picked(&pool), ["127.0.0.1:1"], "no answer yet: not picked");
        b.health(HealthState::Serving, None);
        assert_eq!(picked(&pool), ["127.0.0.1:1", "127.0.0.1:2"]);
        b.health(HealthState::NotServing, None);
        assert_eq!(picked(&pool), ["127.0.0.1:1"]);
        let status = pool.statuses();
        assert_eq!(status[1].state, ConnectivityState::Ready, "still connected");
        b.health(HealthState::Unimplemented, None);
        assert_eq!(picked(&pool).len(), 2);
        // A new connection starts unhealthy until its own first answer.
        b.state(ConnectivityState::Idle, None);
        assert_eq!(pool.health()[1].health, HealthState::Pending);
        ready(&b, HealthState::Pending);
        assert_eq!(picked(&pool), ["127.0.0.1:1"]);
        b.health(HealthState::Failed, Some("stream reset".into()));
        let health = pool.health();
        assert!(!health[1].pickable);
        assert_eq!(health[1].last_error.as_deref(), Some("stream reset"));
    }

    #[tokio::test]
    async fn a_sweep_ejects_from_the_picker_and_brings_back() {
        let codes = FailureCodes::new(&[tonic::Code::Unavailable]);
        let pool = Arc::new(Pool::counting(Some(codes)));
        let sinks: Vec<Sink> = (1..=5u64)
            .map(|i| pool.add(Arc::from(format!("127.0.0.1:{i}")), i))
            .collect();
        for sink in &sinks {
            ready(sink, HealthState::Off);
        }
        let picker = pool.picker();
        for _ in 0..100 {
            let picked = picker.pick().unwrap();
            let outcome = picked.outcome.as_ref().unwrap();
            if &*picked.addr == "127.0.0.1:3" {
                outcome.transport_failure();
            } else {
                outcome.counter.success();
            }
        }
        let config = OutlierDetection {
            success_rate: None,
            failure_percentage: Some(outlier::FailurePercentageEjection {
                request_volume: 20,
                ..Default::default()
            }),
            ..OutlierDetection::default()
        };
        let now = tokio::time::Instant::now();
        pool.sweep(&config, now, &mut || 0);
        assert_eq!(picked(&pool).len(), 4);
        assert!(!picked(&pool).contains(&"127.0.0.1:3".to_owned()));
        let ejected: Vec<bool> = pool.health().iter().map(|h| h.ejected).collect();
        assert_eq!(ejected, [false, false, true, false, false]);
        assert_eq!(pool.statuses()[2].state, ConnectivityState::Ready);
        pool.sweep(&config, now + config.base_ejection_time, &mut || 0);
        assert_eq!(picked(&pool).len(), 5);
    }

    fn meta(zone: Option<&str>, weight: Option<u32>) -> BackendMeta {
        BackendMeta {
            zone: zone.map(Arc::from),
            weight,
            weight_invalid: false,
        }
    }

    #[tokio::test]
    async fn zone_preference_follows_pickability_and_metadata() {
        let pool = Arc::new(Pool::new().routing(Routing {
            zone: Some(ZonePreference {
                zone: "a".into(),
                min_local: 2,
            }),
            weighted: false,
        }));
        let zones = [Some("a"), Some("a"), Some("b")];
        let sinks: Vec<Sink> = zones
            .iter()
            .enumerate()
            .map(|(i, z)| {
                pool.add_with(
                    Arc::from(format!("127.0.0.1:{}", i + 1)),
                    i as u64,
                    meta(*z, None),
                )
            })
            .collect();
        for sink in &sinks {
            ready(sink, HealthState::Off);
        }
        assert_eq!(picked(&pool), ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(pool.snapshot().zone_filter, ZoneFilter::Local);
        // One local backend left < min_local 2: every zone.
        sinks[1].state(ConnectivityState::TransientFailure, None);
        assert_eq!(picked(&pool), ["127.0.0.1:1", "127.0.0.1:3"]);
        assert_eq!(pool.snapshot().zone_filter, ZoneFilter::FallBack);
        ready(&sinks[1], HealthState::Off);
        assert_eq!(picked(&pool).len(), 2);
        // The third loses its zone: no filtering.
        pool.set_meta("127.0.0.1:3", meta(None, None));
        assert_eq!(picked(&pool).len(), 3);
        let snap = pool.snapshot();
        assert_eq!(snap.zone_filter, ZoneFilter::MissingZone);
        assert!(snap.backends.iter().all(|b| b.in_pick_set));
        assert_eq!(snap.backends[2].state, BackendState::Ready);
    }

    #[tokio::test]
    async fn weights_change_without_resetting_the_sequence_and_picks_are_counted() {
        let pool = Arc::new(Pool::new().routing(Routing {
            zone: None,
            weighted: true,
        }));
        let sinks: Vec<Sink> = (1..=3u32)
            .map(|i| {
                pool.add_with(
                    Arc::from(format!("127.0.0.1:{i}")),
                    i.into(),
                    meta(None, Some(i)),
                )
            })
            .collect();
        for sink in &sinks {
            ready(sink, HealthState::Off);
        }
        let before = pool.picker().sequence();
        for _ in 0..600 {
            pool.pick();
        }
        let at = before.load(Ordering::Relaxed);
        pool.set_meta("127.0.0.1:1", meta(None, Some(3)));
        let after = pool.picker().sequence();
        assert!(Arc::ptr_eq(&before, &after), "a new sequence");
        assert_eq!(after.load(Ordering::Relaxed), at, "the sequence was reset");
        let picks: Vec<u64> = pool.snapshot().backends.iter().map(|b| b.picks).collect();
        assert_eq!(picks.iter().sum::<u64>(), 600);
        assert!(
            picks[0].abs_diff(100) <= 10 && picks[2].abs_diff(300) <= 10,
            "{picks:?}"
        );
        // All three weigh 3 now: plain round-robin.
        pool.set_meta("127.0.0.1:2", meta(None, Some(3)));
        let picker = pool.picker();
        let cycle: std::collections::BTreeSet<_> = (0..3)
            .map(|_| picker.pick().unwrap().addr.clone())
            .collect();
        assert_eq!(cycle.len(), 3, "equal weights: round-robin");
        let snap = pool.snapshot();
        assert_eq!((snap.weights_defaulted, snap.weights_invalid), (0, 0));
    }

    #[tokio::test]
    async fn a_storm_of_ready_backends_costs_a_few_rebuilds_and_the_first_is_pickable_at_once() {
        const N: u64 = 2000;
        let pool = Arc::new(Pool::new());
        let sinks: Vec<Sink> = (0..N)
            .map(|i| pool.add(Arc::from(format!("127.1.{}.{}:1", i / 256, i % 256)), i))
            .collect();
        let mut sets = pool.subscribe();
        ready(&sinks[0], HealthState::Off);
        // The first READY backend of an empty pick set is in the picker at once.
        assert_eq!(
            pool.pick().map(|p| p.addr.clone()),
            Some(Arc::from("127.1.0.0:1"))
        );
        for sink in &sinks[1..] {
            ready(sink, HealthState::Off);
        }
        let start = std::time::Instant::now();
        let all = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            sets.wait_for(|p| p.len() == N as usize),
        )
        .await
        // Not holding the watch's read lock past this point (a rebuild would wait for it).
        .map(|r| r.is_ok());
        let rebuilds = pool.rebuilds();
        println!(
            "{N} backends READY one after another: all in the pick set {:?} after the last, \
             {rebuilds} pickers built",
            start.elapsed()
        );
        assert_eq!(all, Ok(true), "not all {N} in the pick set");
        assert!(
            rebuilds <= 3,
            "{rebuilds} pickers built for {N} READY backends"
        );
        // Losing one is coalesced too, and reading the picker brings it up to date.
        sinks[5].state(ConnectivityState::Idle, None);
        assert_eq!(pool.picker().len(), N as usize - 1);
        assert!(pool.rebuilds() <= rebuilds + 1);
    }

    #[tokio::test]
    async fn a_backend_reported_not_pickable_is_out_of_the_pick_path_from_then_on() {
        let pool = Arc::new(Pool::new());
        let sinks: Vec<Sink> = (0..3)
            .map(|i| pool.add(Arc::from(format!("127.0.0.{}:1", i + 1)), i))
            .collect();
        for sink in &sinks {
            ready(sink, HealthState::Pending);
            sink.health(HealthState::Serving, None);
        }
        assert_eq!(pool.picker().len(), 3);
        // NOT_SERVING: the rebuild is coalesced (due, not run yet) ...
        sinks[1].health(HealthState::NotServing, None);
        let due = pool.pending.load(Ordering::Acquire);
        // ... but whoever reads the health sees it out, and so does every pick after that read.
        let victim = pool
            .health()
            .into_iter()
            .find(|b| b.addr == "127.0.0.2:1")
            .map(|b| b.pickable);
        let picks: Vec<Arc<str>> = (0..30)
            .filter_map(|_| pool.pick().map(|p| p.addr.clone()))
            .collect();
        println!("rebuild due when health was read: {due}; 30 picks after: {picks:?}");
        assert!(due, "the rebuild was not coalesced: the test shows nothing");
        assert_eq!(victim, Some(false));
        assert_eq!(picks.len(), 30);
        assert!(picks.iter().all(|a| &**a != "127.0.0.2:1"), "{picks:?}");
    }

    async fn finished(task: &tokio::task::AbortHandle) {
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !task.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the task was not aborted");
    }
}
