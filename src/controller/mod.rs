//! The operator's engine: watches ServiceRegistrations and Pods into the [`Index`], publishes the
//! desired etcd keys to the etcd writer, and writes status, finalizers and Events.
//!
//! One task owns all state and reacts to: watcher events (debounced by the coalescing window),
//! leadership changes (only the leader runs an etcd writer and writes to the API), writer state
//! changes (status conditions) and writer progress (finalizers are released only after the keys
//! of a deleted registration are gone from etcd; statuses count what the writer applied).
//!
//! Statuses go through a keyed, latest-wins queue ([`status_queue`]): one write in flight per
//! registration, failures retried. Every [`DEFAULT_STATUS_RESYNC`] (or
//! `REGISTRAR_STATUS_RESYNC_SECONDS`), statuses that differ from what the API server shows are
//! written again.

mod kube_writes;
mod settle;
mod status_queue;
mod writer_metrics;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::sync::watch;

pub use kube_writes::{FINALIZER, KubeWriter};

use crate::coalesce::next_action;
use crate::crd::{ServiceRegistration, ServiceRegistrationStatus};
use crate::etcd::{Desired, WriterConfig, WriterHandle, WriterState, spawn_writer};
use crate::index::{Index, RegKey, trim_pod};
use crate::metrics::{ErrorKind, Metrics};
use crate::status::published::PublishedLog;
use crate::status::{self, InEtcd, Publishing};
use settle::Settled;
use status_queue::{QueueConfig, StatusQueue};

/// How often statuses are compared with what the API server shows.
pub const DEFAULT_STATUS_RESYNC: Duration = Duration::from_secs(60);

/// The status resync period: `REGISTRAR_STATUS_RESYNC_SECONDS` if set to a positive number.
fn status_resync() -> Duration {
    match std::env::var("REGISTRAR_STATUS_RESYNC_SECONDS") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Duration::from_secs(secs),
            _ => {
                tracing::warn!(value = %v, "REGISTRAR_STATUS_RESYNC_SECONDS is not a positive number of seconds; using the default");
                DEFAULT_STATUS_RESYNC
            }
        },
        Err(_) => DEFAULT_STATUS_RESYNC,
    }
}

/// What the engine needs to run.
pub struct Engine {
    /// Kubernetes client.
    pub client: kube::Client,
    /// The etcd connection as it comes up (see [`EtcdConnection`]); used only while leader.
    pub etcd: watch::Receiver<EtcdConnection>,
    /// etcd writer settings (prefix, cluster id, lease TTL, coalescing).
    pub writer: WriterConfig,
    /// Metrics registry.
    pub metrics: Metrics,
    /// This replica's identity (Events).
    pub identity: String,
    /// Debounce window for watcher events.
    pub coalesce: Duration,
}

/// The state of the connection to etcd, published by whoever dials it (with retries).
#[derive(Clone)]
pub enum EtcdConnection {
    /// Not connected yet; the text says why (shown in status conditions).
    Connecting(String),
    /// Connected.
    Connected(Box<etcd_client::Client>),
}

struct Term {
    handle: WriterHandle,
    stop: watch::Sender<bool>,
}

struct State {
    index: Index,
    seq: u64,
    desired_tx: watch::Sender<Desired>,
    term: Option<Term>,
    /// The writer's state as statuses show it (settled, see [`settle`]).
    publishing: Publishing,
    /// The writer's latest state, for logs.
    raw_publishing: Publishing,
    settle: Settled,
    leader: bool,
    kube: KubeWriter,
    metrics: Metrics,
    /// Status writes, latest wins; also what each status is or is about to be from our writes
    /// (the watch may lag behind them).
    statuses: StatusQueue<RegKey, ServiceRegistrationStatus>,
    /// What etcd holds of each registration, by the seq the writer applied.
    published: PublishedLog<RegKey>,
    /// Deleted registrations waiting for their keys to leave etcd: the seq that removed them.
    releasing: BTreeMap<RegKey, u64>,
    /// New endpoints waiting for their commit, for the propagation-latency metric.
    propagating: Vec<(u64, Vec<Time>)>,
    writer_cfg: WriterConfig,
    etcd: EtcdConnection,
}

impl Engine {
    /// Runs until `shutdown` becomes true. `leader` says whether this replica may write;
    /// `ready` is set once both caches completed their first list.
    pub async fn run(
        self,
        mut leader: watch::Receiver<bool>,
        ready: watch::Sender<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let regs: Api<ServiceRegistration> = Api::all(self.client.clone());
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut reg_events = watcher(regs, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut pod_events = watcher(pods, watcher::Config::default())
            .default_backoff()
            .map_ok(|ev| ev.modify(trim_pod))
            .boxed();

        let (desired_tx, _) = watch::channel(Desired {
            seq: 0,
            keys: Arc::default(),
            complete: false,
        });
        let mut st = State {
            index: Index::new(self.writer.prefix.clone()),
            seq: 0,
            desired_tx,
            term: None,
            publishing: Publishing::Pending,
            raw_publishing: Publishing::Pending,
            settle: Settled::new(settle::DEFAULT_HOLD),
            leader: false,
            kube: KubeWriter::new(
                self.client.clone(),
                self.identity.clone(),
                self.metrics.clone(),
                16,
            ),
            metrics: self.metrics.clone(),
            statuses: StatusQueue::spawn(
                QueueConfig::default(),
                kube_writes::status_writer(self.client.clone(), self.metrics.clone()),
            ),
            published: PublishedLog::default(),
            releasing: BTreeMap::new(),
            propagating: Vec::new(),
            writer_cfg: self.writer.clone(),
            etcd: self.etcd.borrow().clone(),
        };
        let mut etcd_conn = self.etcd.clone();
        let mut etcd_settled = false;
        let mut flush_at: Option<tokio::time::Instant> = None;
        let mut last_flush: Option<tokio::time::Instant> = None;
        let mut writer_state = watch::channel(WriterState::Starting).1;
        let mut applied = watch::channel(0u64).1;
        let resync_every = status_resync();
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + resync_every, resync_every);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        st.set_leader(*leader.borrow_and_update(), &mut writer_state, &mut applied);

        loop {
            let debounce = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let settle_at = st.settle.due();
            let settled = async {
                match settle_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                }
                ev = reg_events.next() => match ev {
                    Some(Ok(ev)) => {
                        if st.leader {
                            st.ensure_finalizer(&ev);
                        }
                        st.index.apply_registration(ev);
                    }
                    Some(Err(e)) => { st.metrics.error(ErrorKind::KubeApi); tracing::warn!(error = %e, "ServiceRegistration watch failed; retrying"); }
                    None => anyhow::bail!("the ServiceRegistration watch ended"),
                },
                ev = pod_events.next() => match ev {
                    Some(Ok(ev)) => st.index.apply_pod(ev),
                    Some(Err(e)) => { st.metrics.error(ErrorKind::KubeApi); tracing::warn!(error = %e, "Pod watch failed; retrying"); }
                    None => anyhow::bail!("the Pod watch ended"),
                },
                _ = debounce => {
                    flush_at = None;
                    // Only a new desired state starts a window: a flush that changed nothing
                    // (e.g. the echo of our own status write) must not delay the next change.
                    let started = tokio::time::Instant::now();
                    if st.flush() {
                        last_flush = Some(started);
                    }
                }
                res = leader.changed() => {
                    if res.is_err() { anyhow::bail!("leader election stopped"); }
                    let now_leader = *leader.borrow_and_update();
                    st.set_leader(now_leader, &mut writer_state, &mut applied);
                }
                res = etcd_conn.changed(), if !etcd_settled => {
                    // The connector ends once connected (or on shutdown): its last value stays.
                    if res.is_err() { etcd_settled = true; }
                    st.etcd = etcd_conn.borrow_and_update().clone();
                    let leading = st.leader;
                    st.leader = false;
                    st.set_leader(leading, &mut writer_state, &mut applied);
                }
                res = writer_state.changed(), if st.term.is_some() => {
                    if res.is_ok() {
                        let state = writer_state.borrow_and_update().clone();
                        st.on_writer_state(state);
                    } else {
                        st.restart_writer(&mut writer_state, &mut applied);
                    }
                }
                _ = resync.tick() => st.resync_statuses(),
                () = settled => st.on_settled(),
                res = applied.changed(), if st.term.is_some() => {
                    if res.is_ok() {
                        let seq = *applied.borrow_and_update();
                        st.on_applied(seq);
                    } else {
                        st.restart_writer(&mut writer_state, &mut applied);
                    }
                }
            }
            if st.index.has_dirty() && flush_at.is_none() {
                flush_at = Some(next_action(last_flush, self.coalesce));
            }
            if st.index.synced() && !*ready.borrow() {
                tracing::info!(pods = st.index.pod_count(), "initial sync complete");
                let _ = ready.send(true);
                st.flush();
                st.schedule_releases(None);
                st.update_statuses(None);
            }
        }
        // Graceful shutdown: stop writing, but never revoke the lease (keys live on until a new
        // leader re-attaches them or the TTL ends).
        if let Some(term) = st.term.take() {
            let _ = term.stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), term.handle.join).await;
        }
        Ok(())
    }
}

impl State {
    fn set_leader(
        &mut self,
        leader: bool,
        writer_state: &mut watch::Receiver<WriterState>,
        applied: &mut watch::Receiver<u64>,
    ) {
        if leader == self.leader {
            return;
        }
        self.leader = leader;
        self.metrics.set_leader(leader);
        if leader {
            match &self.etcd {
                EtcdConnection::Connected(client) if self.term.is_none() => {
                    tracing::info!("leading: starting the etcd writer");
                    let (stop, stop_rx) = watch::channel(false);
                    let handle = spawn_writer(
                        (**client).clone(),
                        self.writer_cfg.clone(),
                        self.desired_tx.subscribe(),
                        stop_rx,
                    );
                    *writer_state = handle.state.clone();
                    *applied = handle.applied.clone();
                    writer_metrics::spawn(
                        handle.stats.clone(),
                        self.metrics.clone(),
                        stop.subscribe(),
                    );
                    self.term = Some(Term { handle, stop });
                    self.propagating.clear();
                    self.settle_publishing(Publishing::Pending);
                }
                EtcdConnection::Connected(_) => {}
                EtcdConnection::Connecting(why) => {
                    // Each failed connection attempt says why: show the latest reason.
                    let state = Publishing::EtcdUnavailable(why.clone());
                    self.settle
                        .observe_with_text(state, tokio::time::Instant::now());
                    self.publishing = self.settle.shown().clone();
                }
            }
            // Another leader may have written statuses meanwhile: start from what the watch shows.
            self.statuses.clear();
            let regs: Vec<Arc<ServiceRegistration>> =
                self.index.registrations().map(|(_, r)| r.clone()).collect();
            for reg in regs {
                if reg.metadata.deletion_timestamp.is_none() && !has_finalizer(&reg) {
                    self.kube.add_finalizer(&reg);
                }
            }
            self.schedule_releases(None);
            self.update_statuses(None);
        } else if let Some(term) = self.term.take() {
            tracing::warn!("lost leadership: stopping the etcd writer");
            let _ = term.stop.send(true);
            self.statuses.clear();
            self.releasing.clear();
            self.propagating.clear();
        }
    }

    fn ensure_finalizer(&self, ev: &watcher::Event<ServiceRegistration>) {
        if let watcher::Event::Apply(reg) | watcher::Event::InitApply(reg) = ev
            && reg.metadata.deletion_timestamp.is_none()
            && !has_finalizer(reg)
        {
            self.kube.add_finalizer(reg);
        }
    }

    /// Recomputes dirty registrations, publishes the new desired state and statuses.
    /// Recomputes dirty registrations and publishes the new desired state (if it changed) and
    /// statuses. Returns whether a new desired state was published.
    fn flush(&mut self) -> bool {
        let flushed = self.index.flush();
        let touched = flushed.touched;
        let complete = self.index.synced();
        let published =
            !flushed.changed.is_empty() || complete != self.desired_tx.borrow().complete;
        if published {
            let before = self.desired_tx.borrow().keys.clone();
            let keys = self.index.desired_keys();
            self.seq += 1;
            let fresh: Vec<Time> = touched
                .iter()
                .filter_map(|k| self.index.outcome(k))
                .flat_map(|o| o.endpoints.values().map(move |e| (o, e)))
                .filter(|(o, e)| !before.contains_key(&crate::etcd::value::key(&o.target, &e.addr)))
                .filter_map(|(_, e)| e.ready_since.clone())
                .collect();
            // Only changes seen while a writer runs and after the initial sync measure
            // propagation; a cold start or a takeover would record pods' whole age.
            let measuring = self.term.is_some() && self.desired_tx.borrow().complete;
            if measuring && !fresh.is_empty() && self.propagating.len() < 10_000 {
                self.propagating.push((self.seq, fresh));
            }
            for key in &flushed.changed {
                let endpoints = self.index.outcome(key).map(InEtcd::of);
                self.published.record(key.clone(), self.seq, endpoints);
            }
            self.metrics.set_published(keys.len());
            self.desired_tx.send_replace(Desired {
                seq: self.seq,
                keys: Arc::new(keys),
                complete,
            });
        }
        self.metrics
            .set_registrations(self.index.registrations().count());
        self.schedule_releases(Some(&touched));
        self.update_statuses(Some(&touched));
        let applied = self
            .term
            .as_ref()
            .map(|t| *t.handle.applied.borrow())
            .unwrap_or(0);
        self.on_applied(applied);
        published
    }

    /// The writer task ended without being asked to (it only returns on shutdown, so this is a
    /// panic): start a new term rather than spin on closed channels.
    fn restart_writer(
        &mut self,
        writer_state: &mut watch::Receiver<WriterState>,
        applied: &mut watch::Receiver<u64>,
    ) {
        tracing::error!("the etcd writer stopped unexpectedly; starting it again");
        self.metrics.error(ErrorKind::Internal);
        self.term = None;
        let leading = self.leader;
        self.leader = false;
        self.set_leader(leading, writer_state, applied);
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
        let deleting: Vec<RegKey> = candidates
            .into_iter()
            .filter(|k| {
                // A dirty one's removal is not in any published seq yet: the next flush
                // schedules it.
                !self.index.is_dirty(k)
                    && self.index.registration(k).is_some_and(|reg| {
                        reg.metadata.deletion_timestamp.is_some() && has_finalizer(reg)
                    })
            })
            .collect();
        for key in deleting {
            self.releasing.entry(key).or_insert(self.seq);
        }
    }

    fn on_writer_state(&mut self, state: WriterState) {
        let publishing = match state {
            WriterState::Starting => Publishing::Pending,
            WriterState::Ready { .. } => Publishing::Ok,
            WriterState::EtcdUnavailable { reason } => Publishing::EtcdUnavailable(reason),
            WriterState::PrefixOwnedElsewhere { owner } => Publishing::PrefixOwnedElsewhere(owner),
        };
        // Keep the reason text from flapping every retry: compare the kind only.
        if std::mem::discriminant(&publishing) != std::mem::discriminant(&self.raw_publishing) {
            match &publishing {
                Publishing::EtcdUnavailable(r) => tracing::warn!(reason = %r, "etcd unavailable"),
                Publishing::PrefixOwnedElsewhere(o) => {
                    self.metrics.error(ErrorKind::PrefixOwnedElsewhere);
                    tracing::error!(owner = %o, prefix = %self.writer_cfg.prefix, "the etcd prefix is owned by another cluster; writing nothing")
                }
                Publishing::Ok => tracing::info!("publishing to etcd"),
                Publishing::Pending => {}
            }
        }
        self.raw_publishing = publishing.clone();
        if self.settle_publishing(publishing) {
            self.update_statuses(None);
        }
    }

    /// Tells the hysteresis the writer's state; whether what statuses show changed.
    fn settle_publishing(&mut self, state: Publishing) -> bool {
        let changed = self.settle.observe(state, tokio::time::Instant::now());
        self.publishing = self.settle.shown().clone();
        changed
    }

    /// The settling time of a writer state change ended.
    fn on_settled(&mut self) {
        if self.settle.tick(tokio::time::Instant::now()) {
            self.publishing = self.settle.shown().clone();
            tracing::info!(state = ?self.publishing, "the etcd writer's state held: statuses follow");
            self.update_statuses(None);
        }
    }

    fn on_applied(&mut self, seq: u64) {
        if seq == 0 {
            return;
        }
        let shown = self.published.applied(seq);
        if !shown.is_empty() {
            self.update_statuses(Some(&shown));
        }
        let now = SystemTime::now();
        self.propagating.retain(|(s, times)| {
            if *s <= seq {
                for t in times {
                    self.metrics.propagated(t, now);
                }
                false
            } else {
                true
            }
        });
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
                tracing::info!(registration = %format!("{}/{}", key.0, key.1), "keys removed from etcd; releasing the finalizer");
                self.kube.remove_finalizer(reg);
            }
        }
    }

    /// Writes the status of `only` (or every registration) where it changed. Leader only.
    ///
    /// Nothing is written before both caches are synced: a status computed from a partial pod
    /// list (e.g. `NoReadyPods` during a restart) would be a lie, and an Event about it noise.
    fn update_statuses(&mut self, only: Option<&[RegKey]>) {
        if !self.may_write_statuses() {
            return;
        }
        let keys: Vec<RegKey> = match only {
            Some(keys) => keys.to_vec(),
            None => self.index.registrations().map(|(k, _)| k.clone()).collect(),
        };
        let now = now_in_seconds();
        for key in keys {
            let (Some(reg), Some(outcome)) =
                (self.index.registration(&key), self.index.outcome(&key))
            else {
                self.statuses.forget(&key);
                continue;
            };
            if reg.metadata.deletion_timestamp.is_some() {
                continue;
            }
            // Decide against what the status is about to be from our own writes, else what
            // the watch shows.
            let latest = self.statuses.latest(&key);
            let update = status::next_status_from(
                reg,
                latest.as_ref().or(reg.status.as_ref()),
                outcome,
                self.published.in_etcd(&key),
                &self.publishing,
                now.clone(),
            );
            let ok = matches!(self.publishing, Publishing::Ok) && outcome.problems.is_empty();
            self.metrics.reconciled(ok);
            if !outcome.problems.is_empty() {
                self.metrics.error(ErrorKind::PortNotFound);
            }
            if !update.changed {
                continue;
            }
            if update.reason_changed
                && let Some(cond) = update.ready()
            {
                let warning = cond.status != "True" && cond.reason != status::reason::PENDING;
                if cond.reason != status::reason::PENDING {
                    self.kube
                        .event(reg, warning, &cond.reason, cond.message.clone());
                }
            }
            self.statuses.set(key, update.status);
        }
    }

    /// While the writer is starting, the keys of the previous term are still in etcd: keep the
    /// statuses as they are rather than flip every registration to Unknown and back.
    fn may_write_statuses(&self) -> bool {
        self.leader && self.index.synced() && self.publishing != Publishing::Pending
    }

    /// The periodic resync: every status that differs from what the API server shows (as the
    /// watch last saw it) and has no write under way is written again.
    fn resync_statuses(&mut self) {
        if !self.may_write_statuses() {
            return;
        }
        self.update_statuses(None);
        let mut rewritten = 0usize;
        for (key, reg) in self.index.registrations() {
            if reg.metadata.deletion_timestamp.is_some() || self.statuses.is_busy(key) {
                continue;
            }
            if let Some(latest) = self.statuses.latest(key)
                && reg.status.as_ref() != Some(&latest)
            {
                self.statuses.force(key.clone(), latest);
                rewritten += 1;
            }
        }
        if rewritten > 0 {
            tracing::info!(
                rewritten,
                "status resync: rewrote statuses that differ from the API server's"
            );
        }
    }
}

/// The current time as the API server stores it (whole seconds), so that a status we keep in
/// memory equals the one the watch brings back.
fn now_in_seconds() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

fn has_finalizer(reg: &ServiceRegistration) -> bool {
    reg.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}
