//! The engine's decisions as a pure state machine: [`Core::on`] takes one [`Input`] (a watcher
//! event applied, a timer fired, leadership changed, the writer moved)
//! and returns the [`Effect`]s to run (publish a desired state, start or stop the etcd writer,
//! write a status, add or release a finalizer, publish an Event, update a metric). It performs
//! no I/O and reads no clock: the time comes with each input ([`Now`]), so every decision is
//! tested by feeding inputs and looking at the effects (`core/tests.rs`).
//!
//! What lives here:
//! - the [`Index`] (registrations and pods) and the desired state's seq;
//! - the writer's term: started when leading (the writer dials etcd itself and says why while
//!   it cannot), stopped when leadership is lost, started again when it died; its applied seq;
//! - statuses: what each one is about to be from our writes (the base of the next decision),
//!   the writer's state as statuses show it ([`Settled`] hysteresis), what etcd holds of each
//!   registration ([`PublishedLog`]); nothing is written before both caches synced, nor while a
//!   new writer is starting (the previous term's keys are still in etcd);
//! - finalizers: deleted registrations wait in `releasing` for the writer to apply the seq that
//!   removed their keys; that list is dropped with leadership;
//! - Events: a Warning for every change of the Ready reason to a problem, a Normal one when a
//!   registration recovers; none for its first publication ([`recovers`]); how many are sent
//!   is the Event queue's business (`kube_writes::events`);
//! - the debounce of watcher events (leading-edge coalescing, [`crate::coalesce`]: the one
//!   place where changes are coalesced before they reach etcd; removals of published
//!   endpoints are not held by it) and readiness.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::watcher;
use tokio::time::Instant;

use super::kube_writes::FINALIZER;
use super::not_ready::NotReady;
use super::settle::Settled;
use crate::coalesce::schedule;
use crate::crd::{ServiceRegistration, ServiceRegistrationStatus};
use crate::desired;
use crate::etcd::{Desired, DesiredKeys, WriterState};
use crate::index::{Index, RegKey};
use crate::metrics::ErrorKind;
use crate::status::published::PublishedLog;
use crate::status::terminating::{DELETION_BLOCKED, TERMINATING_CONDITION, terminating_status};
use crate::status::{self, InEtcd, Publishing};

/// The time an input happened at: the monotonic instant (timers, hysteresis) and the wall
/// clock in whole seconds as the API server stores it (`lastTransitionTime`).
#[derive(Clone, Debug)]
pub struct Now {
    /// Monotonic.
    pub at: Instant,
    /// Wall clock, whole seconds.
    pub wall: Time,
}

impl Now {
    /// The current time.
    pub fn current() -> Self {
        let now = k8s_openapi::jiff::Timestamp::now();
        Now {
            at: Instant::now(),
            wall: Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)),
        }
    }
}

/// Something that happened.
#[derive(Debug)]
pub enum Input {
    /// A ServiceRegistration watcher event (boxed: the other inputs are small).
    Registration(Box<watcher::Event<ServiceRegistration>>),
    /// A Pod watcher event (trimmed).
    Pod(Box<watcher::Event<Pod>>),
    /// A Node watcher event (trimmed to name and topology labels).
    Node(Box<watcher::Event<Node>>),
    /// The debounce window ended ([`Core::flush_at`]).
    FlushDue,
    /// A writer state change may have held long enough ([`Core::settle_at`]).
    SettleDue,
    /// This replica leads (true) or not.
    Leader(bool),
    /// The running writer's state changed.
    WriterState(WriterState),
    /// The running writer applied every desired state up to this seq.
    WriterApplied(u64),
    /// The running writer's task ended without being asked to.
    WriterDied,
    /// The periodic status resync.
    ResyncTick,
}

impl Input {
    /// A ServiceRegistration watcher event.
    pub fn registration(ev: watcher::Event<ServiceRegistration>) -> Self {
        Input::Registration(Box::new(ev))
    }

    /// A Pod watcher event (trimmed).
    pub fn pod(ev: watcher::Event<Pod>) -> Self {
        Input::Pod(Box::new(ev))
    }

    /// A Node watcher event (trimmed).
    pub fn node(ev: watcher::Event<Node>) -> Self {
        Input::Node(Box::new(ev))
    }
}

/// A metric update.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// `registrar_leader`.
    Leader(bool),
    /// Keys in the desired state.
    Published(usize),
    /// Changes of the keys in the desired state per target (namespace, service), since the
    /// previous such metric: `Some(n)` for a target some registration names (0 without
    /// endpoints), `None` for one no registration names any more (its series goes).
    TargetEndpoints(BTreeMap<desired::TargetName, Option<usize>>),
    /// Registrations known.
    Registrations(usize),
    /// Registrations whose Ready condition (as last decided by this leader) is not True.
    NotReady(usize),
    /// Whether the leader's etcd writer cannot reach etcd (connecting or failing).
    EtcdUnavailable(bool),
    /// One registration reconciled (ok or not).
    Reconciled(bool),
    /// An error of this kind.
    Error(ErrorKind),
    /// These endpoints (their ready-since times) are now in etcd.
    Propagated(Vec<Time>),
    /// A flush took up changes received this long ago (pod watch event received → the flush
    /// that computes its desired state starts: the coalescing window and the wait for the
    /// event loop), one per change: `registrar_stage_seconds{stage="window"}`.
    Window(Vec<Duration>),
}

/// Something to do.
#[derive(Debug)]
pub enum Effect {
    /// Hand this desired state to the writer (and to every writer started later).
    PublishDesired(Desired),
    /// Start an etcd writer term (it dials etcd itself), with the latest desired state.
    StartWriter,
    /// Stop the running writer (its lease is not revoked).
    StopWriter,
    /// Write this status (unless it is what the registration shows or will show).
    WriteStatus {
        /// Which registration.
        key: RegKey,
        /// The whole status.
        status: ServiceRegistrationStatus,
    },
    /// The periodic resync: write these statuses again (the API server shows something else),
    /// each unless a write of it is under way.
    ResyncStatuses(Vec<(RegKey, ServiceRegistrationStatus)>),
    /// The registration is gone: drop what the status queue knows of it.
    ForgetStatus(RegKey),
    /// Leadership changed: drop what the status queue knows.
    ClearStatuses,
    /// Add our finalizer.
    AddFinalizer(Arc<ServiceRegistration>),
    /// Remove our finalizer (the registration's keys are gone from etcd).
    ReleaseFinalizer(Arc<ServiceRegistration>),
    /// Publish a Kubernetes Event about the registration.
    Event {
        /// About which.
        reg: Arc<ServiceRegistration>,
        /// Warning (else Normal).
        warning: bool,
        /// The reason.
        reason: String,
        /// The note.
        note: String,
    },
    /// Both caches completed their first list: report ready.
    SetReady,
    /// Update a metric.
    Metric(Metric),
}

/// Settings of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// The etcd prefix (keys of the desired state).
    pub prefix: String,
    /// Debounce window of watcher events.
    pub coalesce: Duration,
    /// How long a new kind of writer state must hold before statuses show it.
    pub hold: Duration,
    /// Whether endpoints carry their node's `zone` and `region` (then Nodes are watched, and
    /// the first sync waits for them).
    pub topology: bool,
    /// The `cluster` metadata of every endpoint (`--publish-cluster-id`), when set.
    pub publish_cluster_id: Option<String>,
}

/// See the module docs.
pub struct Core {
    cfg: CoreConfig,
    index: Index,
    /// The last desired state published.
    desired: Desired,
    leader: bool,
    /// A writer term runs.
    writing: bool,
    /// The seq the running writer applied (0 without one).
    applied: u64,
    /// The writer's state as statuses show it (settled).
    publishing: Publishing,
    /// The writer's latest state, for logs.
    raw_publishing: Publishing,
    settle: Settled,
    /// What each status is or is about to be from our writes (the watch may lag behind them).
    statuses: BTreeMap<RegKey, ServiceRegistrationStatus>,
    /// The registrations whose Ready condition is not True, by `statuses` and the watch.
    not_ready: NotReady,
    /// What etcd holds of each registration, by the seq the writer applied.
    published: PublishedLog<RegKey>,
    /// Registrations whose outcome changed while the desired state was incomplete (before the
    /// first full list of every kind): recorded in `published` with the first complete one.
    unrecorded: BTreeSet<RegKey>,
    /// Deleted registrations waiting for their keys to leave etcd: the seq that removed them.
    releasing: BTreeMap<RegKey, u64>,
    /// New endpoints waiting for their commit, for the propagation-latency metric.
    propagating: Vec<(u64, Vec<Time>)>,
    /// When the pod events behind the pending (not yet flushed) changes were received, for
    /// the operator-latency metric.
    received: Vec<Instant>,
    /// Receipt times of the changes in published desired states the writer has not applied
    /// yet, by seq: every desired state carries them all ([`Desired::received`]), since the
    /// writer may skip a seq.
    unapplied: Vec<(u64, Vec<Instant>)>,
    /// When the debounce window ends.
    flush_at: Option<Instant>,
    /// When the last flush that published something started.
    last_flush: Option<Instant>,
    ready: bool,
}

/// At most this many receipt times wait for their commit (a burst beyond it is not measured).
const MAX_RECEIPTS: usize = 20_000;

/// Effects collected while handling one input.
type Out = Vec<Effect>;

impl Core {
    /// A core that is not leading, with nothing seen yet.
    pub fn new(cfg: CoreConfig) -> Self {
        Core {
            index: if cfg.topology {
                Index::with_topology(cfg.prefix.clone())
            } else {
                Index::new(cfg.prefix.clone())
            }
            .publishing_cluster(cfg.publish_cluster_id.clone()),
            settle: Settled::new(cfg.hold),
            cfg,
            desired: Desired {
                seq: 0,
                keys: DesiredKeys::default(),
                complete: false,
                received: Arc::default(),
                flushed: None,
                published: None,
            },
            leader: false,
            writing: false,
            applied: 0,
            publishing: Publishing::Pending,
            raw_publishing: Publishing::Pending,
            statuses: BTreeMap::new(),
            not_ready: NotReady::default(),
            published: PublishedLog::default(),
            unrecorded: BTreeSet::new(),
            releasing: BTreeMap::new(),
            propagating: Vec::new(),
            received: Vec::new(),
            unapplied: Vec::new(),
            flush_at: None,
            last_flush: None,
            ready: false,
        }
    }

    /// When to send [`Input::FlushDue`].
    pub fn flush_at(&self) -> Option<Instant> {
        self.flush_at
    }

    /// When to send [`Input::SettleDue`].
    pub fn settle_at(&self) -> Option<Instant> {
        self.settle.due()
    }

    /// Handles one input; returns what to do, in order.
    pub fn on(&mut self, now: &Now, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Registration(ev) => {
                if self.leader {
                    ensure_finalizer(&ev, &mut out);
                }
                match &*ev {
                    watcher::Event::Apply(reg)
                    | watcher::Event::InitApply(reg)
                    | watcher::Event::Delete(reg) => {
                        if let (Some(ns), Some(name)) =
                            (&reg.metadata.namespace, &reg.metadata.name)
                        {
                            self.not_ready.mark(RegKey::new(ns, name));
                        }
                    }
                    watcher::Event::InitDone => self.not_ready.mark_all(),
                    watcher::Event::Init => {}
                }
                self.index.apply_registration(*ev);
            }
            Input::Pod(ev) => {
                // A change (not a list) seen while measuring: its receipt time goes with it.
                let change = matches!(*ev, watcher::Event::Apply(_) | watcher::Event::Delete(_));
                self.index.apply_pod(*ev);
                if change && self.measuring() && self.index.has_dirty() {
                    self.received.push(now.at);
                }
            }
            Input::Node(ev) => self.index.apply_node(*ev),
            Input::FlushDue => {
                self.flush_at = None;
                // Only a new desired state starts a window: a flush that changed nothing
                // (e.g. the echo of our own status write) must not delay the next change.
                if self.flush(now, &mut out) {
                    self.last_flush = Some(now.at);
                }
            }
            Input::SettleDue => self.on_settled(now, &mut out),
            Input::Leader(true) if !self.leader => self.gain_leadership(now, &mut out),
            Input::Leader(false) if self.leader => self.lose_leadership(&mut out),
            Input::Leader(_) => {}
            Input::WriterState(state) if self.writing => self.on_writer_state(now, state, &mut out),
            Input::WriterApplied(seq) if self.writing => {
                self.applied = seq;
                self.on_applied(now, seq, &mut out);
            }
            Input::WriterDied if self.writing => {
                tracing::error!("the etcd writer stopped unexpectedly; starting it again");
                out.push(Effect::Metric(Metric::Error(ErrorKind::Internal)));
                self.writing = false;
                self.applied = 0;
                if self.leader {
                    self.start_writer(now, &mut out);
                }
            }
            // From a writer that is no longer ours (stopped with leadership).
            Input::WriterState(_) | Input::WriterApplied(_) | Input::WriterDied => {}
            Input::ResyncTick => self.resync_statuses(now, &mut out),
        }
        self.after(now, &mut out);
        out
    }

    /// What follows any input: the debounce window and the first sync.
    fn after(&mut self, now: &Now, out: &mut Out) {
        if self.index.has_dirty() {
            // Leading edge: at once after a quiet period, else when the window ends; a
            // removal of a published endpoint at once.
            self.flush_at = Some(schedule(
                self.flush_at,
                self.last_flush,
                self.cfg.coalesce,
                now.at,
                self.index.has_removal(),
            ));
        }
        if self.index.synced() && !self.ready {
            tracing::info!(pods = self.index.pod_count(), "initial sync complete");
            self.ready = true;
            out.push(Effect::SetReady);
            self.flush(now, out);
            self.schedule_releases(None);
            self.update_statuses(now, None, out);
        }
    }

    fn gain_leadership(&mut self, now: &Now, out: &mut Out) {
        self.leader = true;
        out.push(Effect::Metric(Metric::Leader(true)));
        if !self.writing {
            self.start_writer(now, out);
        }
        // Another leader may have written statuses meanwhile: start from what the watch shows.
        self.statuses.clear();
        self.not_ready.mark_all();
        out.push(Effect::ClearStatuses);
        for (_, reg) in self.index.registrations() {
            if reg.metadata.deletion_timestamp.is_none() && !has_finalizer(reg) {
                out.push(Effect::AddFinalizer(reg.clone()));
            }
        }
        self.schedule_releases(None);
        self.update_statuses(now, None, out);
    }

    fn lose_leadership(&mut self, out: &mut Out) {
        self.leader = false;
        out.push(Effect::Metric(Metric::Leader(false)));
        out.push(Effect::Metric(Metric::NotReady(0)));
        out.push(Effect::Metric(Metric::EtcdUnavailable(false)));
        if self.writing {
            tracing::warn!("lost leadership: stopping the etcd writer");
            self.writing = false;
            self.applied = 0;
            out.push(Effect::StopWriter);
        }
        // Nothing of this term may be acted on any more: no status write, no finalizer release.
        self.statuses.clear();
        self.not_ready.mark_all();
        out.push(Effect::ClearStatuses);
        self.releasing.clear();
        self.propagating.clear();
        self.received.clear();
        self.unapplied.clear();
    }

    /// Whether latencies are measured: only changes seen while a writer runs and after the
    /// initial sync; a cold start or a takeover would record pods' whole age.
    fn measuring(&self) -> bool {
        self.writing && self.desired.complete
    }

    fn start_writer(&mut self, now: &Now, out: &mut Out) {
        tracing::info!("leading: starting the etcd writer");
        self.writing = true;
        self.applied = 0;
        self.propagating.clear();
        self.received.clear();
        self.unapplied.clear();
        out.push(Effect::StartWriter);
        // Leaving or entering Pending is shown at once: statuses are kept while it starts.
        self.settle.observe(Publishing::Pending, now.at);
        self.publishing = self.settle.shown().clone();
        self.raw_publishing = Publishing::Pending;
    }

    /// Recomputes dirty registrations and publishes the new desired state (if it changed) and
    /// statuses. Returns whether a new desired state was published.
    fn flush(&mut self, now: &Now, out: &mut Out) -> bool {
        let flushed = self.index.flush();
        let touched = flushed.touched;
        let complete = self.index.synced();
        let publish = !flushed.changed.is_empty() || complete != self.desired.complete;
        if publish {
            let before = &self.desired.keys;
            // The index keeps the desired keys up to date per changed target: an O(1) clone.
            let keys = self.index.keys().clone();
            let seq = self.desired.seq + 1;
            let measuring = self.measuring();
            let fresh: Vec<Time> = if measuring {
                flushed
                    .changed
                    .iter()
                    .filter_map(|k| self.index.outcome(k))
                    .flat_map(|o| o.endpoints.values().map(move |e| (o, e)))
                    .filter(|(_, e)| e.ready_since.is_some())
                    .filter(|(o, e)| {
                        !before.contains_key(&crate::etcd::value::key(&o.target, &e.addr))
                    })
                    .filter_map(|(_, e)| e.ready_since.clone())
                    .collect()
            } else {
                Vec::new()
            };
            if measuring && !fresh.is_empty() && self.propagating.len() < 10_000 {
                self.propagating.push((seq, fresh));
            }
            let received = std::mem::take(&mut self.received);
            if measuring && !received.is_empty() {
                let waited = received
                    .iter()
                    .map(|r| now.at.saturating_duration_since(*r))
                    .collect();
                out.push(Effect::Metric(Metric::Window(waited)));
            }
            let carried: usize = self.unapplied.iter().map(|(_, r)| r.len()).sum();
            if measuring && !received.is_empty() && carried < MAX_RECEIPTS {
                self.unapplied.push((seq, received));
            }
            // An incomplete desired state (a kind not listed yet) says nothing about what etcd
            // holds of a registration: the writer deletes nothing for it, so the keys of a
            // previous leader stay. Recording its (e.g. pod-less) outcomes would make statuses
            // show 0 endpoints until the complete one is applied, flapping every registration
            // on a restart. Their changes are recorded with the first complete state instead.
            self.unrecorded.extend(flushed.changed.iter().cloned());
            if complete {
                for key in std::mem::take(&mut self.unrecorded) {
                    let endpoints = self.index.outcome(&key).map(InEtcd::of);
                    self.published.record(key, seq, endpoints);
                }
            }
            out.push(Effect::Metric(Metric::Published(keys.len())));
            self.desired = Desired {
                seq,
                keys,
                complete,
                received: self
                    .unapplied
                    .iter()
                    .flat_map(|(_, r)| r.iter().copied())
                    .collect(),
                flushed: measuring.then_some(now.at),
                published: None,
            };
            out.push(Effect::PublishDesired(self.desired.clone()));
        }
        let targets: BTreeMap<desired::TargetName, Option<usize>> = flushed
            .targets
            .into_iter()
            .filter_map(|t| {
                Some((
                    desired::target_name(&self.cfg.prefix, &t.target)?,
                    t.endpoints,
                ))
            })
            .collect();
        if !targets.is_empty() {
            out.push(Effect::Metric(Metric::TargetEndpoints(targets)));
        }
        out.push(Effect::Metric(Metric::Registrations(
            self.index.registration_count(),
        )));
        // Changes that changed no key: nothing is committed for them.
        self.received.clear();
        self.schedule_releases(Some(&touched));
        self.update_statuses(now, Some(&touched), out);
        self.on_applied(now, self.applied, out);
        publish
    }

    /// Deleted registrations (of `only`, or all) still holding our finalizer: their keys leave
    /// etcd with the current seq, so the finalizer may go once the writer applied it. Only once
    /// both caches are synced: before that the writer deletes nothing.
    fn schedule_releases(&mut self, only: Option<&[RegKey]>) {
        if !self.leader || !self.index.synced() {
            return;
        }
        let candidates: Vec<RegKey> = match only {
            Some(keys) => keys.to_vec(),
            None => self.index.registrations().map(|(k, _)| k.clone()).collect(),
        };
        for key in candidates {
            // A dirty one's removal is not in any published seq yet: the next flush
            // schedules it.
            let deleting = !self.index.is_dirty(&key)
                && self.index.registration(&key).is_some_and(|reg| {
                    reg.metadata.deletion_timestamp.is_some() && has_finalizer(reg)
                });
            if deleting {
                self.releasing.entry(key).or_insert(self.desired.seq);
            }
        }
    }

    fn on_writer_state(&mut self, now: &Now, state: WriterState, out: &mut Out) {
        // A failed connection attempt says why: its latest reason is shown.
        let (publishing, latest_text) = match state {
            WriterState::Starting => (Publishing::Pending, false),
            WriterState::Connecting { reason } => (Publishing::EtcdUnavailable(reason), true),
            WriterState::Ready { .. } => (Publishing::Ok, false),
            WriterState::EtcdUnavailable { reason } => (Publishing::EtcdUnavailable(reason), false),
            WriterState::PrefixOwnedElsewhere { owner } => {
                (Publishing::PrefixOwnedElsewhere(owner), false)
            }
        };
        out.push(Effect::Metric(Metric::EtcdUnavailable(matches!(
            publishing,
            Publishing::EtcdUnavailable(_)
        ))));
        // Keep the reason text from flapping every retry: compare the kind only.
        if std::mem::discriminant(&publishing) != std::mem::discriminant(&self.raw_publishing) {
            match &publishing {
                Publishing::EtcdUnavailable(r) => tracing::warn!(reason = %r, "etcd unavailable"),
                Publishing::PrefixOwnedElsewhere(o) => {
                    out.push(Effect::Metric(Metric::Error(
                        ErrorKind::PrefixOwnedElsewhere,
                    )));
                    tracing::error!(owner = %o, prefix = %self.cfg.prefix, "the etcd prefix is owned by another cluster; writing nothing")
                }
                Publishing::Ok => tracing::info!("publishing to etcd"),
                Publishing::Pending => {}
            }
        }
        self.raw_publishing = publishing.clone();
        let changed = if latest_text {
            let before = self.settle.shown().clone();
            self.settle.observe_with_text(publishing, now.at);
            *self.settle.shown() != before
        } else {
            self.settle.observe(publishing, now.at)
        };
        self.publishing = self.settle.shown().clone();
        if changed {
            self.update_statuses(now, None, out);
        }
    }

    /// The settling time of a writer state change may have ended.
    fn on_settled(&mut self, now: &Now, out: &mut Out) {
        if self.settle.tick(now.at) {
            self.publishing = self.settle.shown().clone();
            tracing::info!(state = ?self.publishing, "the etcd writer's state held: statuses follow");
            self.update_statuses(now, None, out);
        }
    }

    fn on_applied(&mut self, now: &Now, seq: u64, out: &mut Out) {
        if seq == 0 {
            return;
        }
        let shown = self.published.applied(seq);
        if !shown.is_empty() {
            self.update_statuses(now, Some(&shown), out);
        }
        self.unapplied.retain(|(s, _)| *s > seq);
        let mut committed = Vec::new();
        self.propagating.retain_mut(|(s, times)| {
            if *s <= seq {
                committed.append(times);
                false
            } else {
                true
            }
        });
        if !committed.is_empty() {
            out.push(Effect::Metric(Metric::Propagated(committed)));
        }
        // `applied >= seq` of a desired state published with `complete` proves the deletes
        // committed, whatever the writer reports about its keepalives right now.
        let done: Vec<RegKey> = self
            .releasing
            .iter()
            .filter(|(_, s)| **s <= seq)
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            self.releasing.remove(&key);
            if let Some(reg) = self.index.registration(&key) {
                tracing::info!(registration = %key, "keys removed from etcd; releasing the finalizer");
                out.push(Effect::ReleaseFinalizer(reg.clone()));
            }
        }
    }

    /// While the writer is starting, the keys of the previous term are still in etcd: keep the
    /// statuses as they are rather than flip every registration to Unknown and back. Nothing
    /// is written before both caches are synced: a status computed from a partial pod list
    /// (e.g. `NoReadyPods` during a restart) would be a lie, and an Event about it noise.
    fn may_write_statuses(&self) -> bool {
        self.leader && self.index.synced() && self.publishing != Publishing::Pending
    }

    /// Decides the status of `only` (or every registration) where it changed. Leader only.
    fn update_statuses(&mut self, now: &Now, only: Option<&[RegKey]>, out: &mut Out) {
        if !self.may_write_statuses() {
            return;
        }
        let keys: Vec<RegKey> = match only {
            Some(keys) => keys.to_vec(),
            None => self.index.registrations().map(|(k, _)| k.clone()).collect(),
        };
        for key in keys {
            let (Some(reg), Some(outcome)) =
                (self.index.registration(&key), self.index.outcome(&key))
            else {
                self.statuses.remove(&key);
                self.not_ready.mark(key.clone());
                out.push(Effect::ForgetStatus(key));
                continue;
            };
            if reg.metadata.deletion_timestamp.is_some() {
                if has_finalizer(reg) {
                    let update = terminating_status(
                        reg,
                        self.statuses.get(&key).or(reg.status.as_ref()),
                        &outcome.target,
                        FINALIZER,
                        &self.publishing,
                        now.wall.clone(),
                    );
                    if let Some(update) = update.filter(|u| u.changed) {
                        if update.reason_changed
                            && let Some(c) = update
                                .status
                                .conditions
                                .iter()
                                .find(|c| c.type_ == TERMINATING_CONDITION)
                        {
                            out.push(Effect::Event {
                                reg: reg.clone(),
                                warning: true,
                                reason: DELETION_BLOCKED.into(),
                                note: c.message.clone(),
                            });
                        }
                        self.statuses.insert(key.clone(), update.status.clone());
                        self.not_ready.mark(key.clone());
                        out.push(Effect::WriteStatus {
                            key,
                            status: update.status,
                        });
                    }
                }
                continue;
            }
            // Decide against what the status is about to be from our own writes, else what
            // the watch shows.
            let current = self.statuses.get(&key).or(reg.status.as_ref());
            let update = status::next_status_from(
                reg,
                current,
                outcome,
                self.published.in_etcd(&key),
                &self.publishing,
                now.wall.clone(),
            );
            let ok = matches!(self.publishing, Publishing::Ok) && outcome.problems.is_empty();
            out.push(Effect::Metric(Metric::Reconciled(ok)));
            if !outcome.problems.is_empty() {
                out.push(Effect::Metric(Metric::Error(ErrorKind::PortNotFound)));
            }
            if !update.changed {
                continue;
            }
            if update.reason_changed
                && let Some(cond) = update.ready()
                && cond.reason != status::reason::PENDING
                && (cond.status != "True" || recovers(current))
            {
                out.push(Effect::Event {
                    reg: reg.clone(),
                    warning: cond.status != "True",
                    reason: cond.reason.clone(),
                    note: cond.message.clone(),
                });
            }
            self.statuses.insert(key.clone(), update.status.clone());
            self.not_ready.mark(key.clone());
            out.push(Effect::WriteStatus {
                key,
                status: update.status,
            });
        }
        let not_ready = self.not_ready.count(&self.index, &self.statuses);
        out.push(Effect::Metric(Metric::NotReady(not_ready)));
    }

    /// The periodic resync: every status that differs from what the API server shows (as the
    /// watch last saw it) is written again (the shell skips those with a write under way).
    fn resync_statuses(&mut self, now: &Now, out: &mut Out) {
        if !self.may_write_statuses() {
            return;
        }
        self.update_statuses(now, None, out);
        let differ: Vec<(RegKey, ServiceRegistrationStatus)> = self
            .index
            .registrations()
            .filter(|(_, reg)| reg.metadata.deletion_timestamp.is_none())
            .filter_map(|(key, reg)| {
                let latest = self.statuses.get(key)?;
                (reg.status.as_ref() != Some(latest)).then(|| (key.clone(), latest.clone()))
            })
            .collect();
        if !differ.is_empty() {
            out.push(Effect::ResyncStatuses(differ));
        }
    }
}

/// Whether a registration whose status is `current` turning Ready is news: it had a Ready
/// condition with a problem (not `Pending`). A publication straight from no condition or
/// `Pending` is the normal course of things and gets no Event: the status says it, and a cold
/// start of 10,000 registrations would otherwise send 10,000 Events, each a write that competes
/// with the statuses for the API server. (A new registration is `Pending` until the writer
/// applied its keys, never `NoReadyPods` while its ready pods wait for the txn.) Warnings (any
/// False reason) are always emitted.
fn recovers(current: Option<&ServiceRegistrationStatus>) -> bool {
    current
        .and_then(status::ready_condition)
        .is_some_and(|c| c.reason != status::reason::PENDING)
}

fn ensure_finalizer(ev: &watcher::Event<ServiceRegistration>, out: &mut Out) {
    if let watcher::Event::Apply(reg) | watcher::Event::InitApply(reg) = ev
        && reg.metadata.deletion_timestamp.is_none()
        && !has_finalizer(reg)
    {
        out.push(Effect::AddFinalizer(Arc::new(reg.clone())));
    }
}

/// Whether `reg` carries our finalizer.
pub fn has_finalizer(reg: &ServiceRegistration) -> bool {
    reg.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

#[cfg(test)]
mod tests;
