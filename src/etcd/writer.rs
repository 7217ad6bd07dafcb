//! The writer task: it gets its etcd client (dialing it itself when given settings, see
//! [`dial`](super::dial)), then runs a loop of sessions, each of which claims the prefix, makes
//! sure a lease is alive, lists (or resumes watching) the prefix and then, until something
//! breaks, writes the diff between the desired and the known state in batched transactions
//! and repairs whatever the watch shows drifting.
//!
//! The diff is incremental ([`Planner`]): after a flush that committed in full, the next one
//! looks only at the keys the desired state changed (a diff of the persistent maps) and those
//! someone else changed (the watch's foreign events); a session's first flush, a flush after
//! a listing, after a failed flush or under a new lease or `complete` plans over both whole
//! maps. Either gives the same operations.
//!
//! The writer does not coalesce by itself: the engine already debounces the desired states it
//! publishes (`--coalesce-ms`), and whatever arrives while a flush is being written (new
//! desired states, changes seen by the watch) is written together by the next flush.
//!
//! The lease is a shared [`KeptLease`] (`registrar-etcd`), with its one expiry policy: the
//! lease is gone only when etcd says so (then it is granted again and every key put again
//! under the new one), never because a clock ran out; while etcd cannot be reached, the
//! keepalives fail and are retried, and a lease that survived is kept.
//!
//! Every transaction, keepalive answer or failure and lease grant or loss is reported where it
//! happens to the writer's stats and its [`WriterObserver`] (the operator's metrics).
//!
//! A failed session ends in `EtcdUnavailable` and is retried after a capped exponential backoff
//! with jitter, forever; when etcd could not be reached, the wait ends as soon as a probe finds
//! it answering again (`reachable.rs`), so publishing resumes within a probe interval of etcd's
//! return. What survives between sessions: the lease (unless etcd says it is lost) and the
//! known state with its revision, so a broken watch resumes at the next revision instead of
//! listing again. The prefix is read through the shared [`Reflector`], which lists again when
//! the watch reports compaction or when etcd's history went back (its data was wiped or
//! restored from a backup); the known state is also dropped when the lease is lost.

use etcd_client::{Client, KvClient, PutOptions, Txn, TxnOp};
use registrar_etcd::{KeptLease, LeaseState, Reflector, Update};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::WriterConfig;
use super::dial::{self, EtcdSource};
use super::error::{EtcdError, is_lease_not_found, timed};
use super::known::{Known, Seen};
use super::observer::{Events, Stage, WriterObserver};
use super::owner::{self, Claim};
use super::plan::{self, KnownKv, Op, Planner};
use super::reachable;
use super::stats::WriterStats;
use super::{Desired, WriterState};
use crate::backoff::Backoff;

/// The running writer.
#[derive(Debug)]
pub struct WriterHandle {
    /// The writer's current state.
    pub state: watch::Receiver<WriterState>,
    /// `seq` of the last [`Desired`] fully written to etcd (deletions withheld while it is not
    /// `complete` do not count against it). 0 before the first.
    pub applied: watch::Receiver<u64>,
    /// Counters for metrics.
    pub stats: Arc<WriterStats>,
    /// Ends after shutdown (or when the `Desired` sender is dropped).
    pub join: JoinHandle<()>,
}

/// Starts the writer on `etcd` (a client, or [`EtcdConnect`](registrar_etcd::EtcdConnect)
/// settings it dials itself). It stops when `shutdown` becomes true (or its sender is dropped)
/// or when the `desired` sender is dropped; it never revokes its lease, so the keys stay until
/// a new leader takes them over or the TTL ends.
pub fn spawn_writer(
    etcd: impl Into<EtcdSource>,
    cfg: WriterConfig,
    desired: watch::Receiver<Desired>,
    shutdown: watch::Receiver<bool>,
) -> WriterHandle {
    spawn_writer_with(etcd, cfg, desired, shutdown, Arc::new(()))
}

/// [`spawn_writer`], reporting every event to `observer` where it happens.
pub fn spawn_writer_with(
    etcd: impl Into<EtcdSource>,
    cfg: WriterConfig,
    desired: watch::Receiver<Desired>,
    mut shutdown: watch::Receiver<bool>,
    observer: Arc<dyn WriterObserver>,
) -> WriterHandle {
    let (state_tx, state) = watch::channel(WriterState::Starting);
    let (applied_tx, applied) = watch::channel(0);
    let stats = Arc::new(WriterStats::default());
    let events = Arc::new(Events {
        stats: stats.clone(),
        observer,
    });
    let source = etcd.into();
    let join = tokio::spawn(async move {
        let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
        let Some(client) = dial::client(source, &mut backoff, &state_tx, &mut shutdown).await
        else {
            return;
        };
        let prefix = cfg.prefix.trim_end_matches('/').to_owned();
        let reflector = Reflector::builder(client.clone(), format!("{prefix}/"))
            .page_size(cfg.list_page)
            .request_timeout(cfg.request_timeout)
            .build();
        let writer = Writer {
            kv: client.kv_client(),
            client,
            reflector,
            listed: false,
            owner_key: plan::owner_key(&prefix),
            prefix,
            cfg,
            desired,
            shutdown,
            state: state_tx,
            applied: applied_tx,
            events,
            lease: None,
            known: None,
            known_lease: None,
            planner: Planner::new(),
            observed: None,
        };
        writer.run(backoff).await;
    });
    WriterHandle {
        state,
        applied,
        stats,
        join,
    }
}

/// How a session ended.
#[derive(Debug)]
enum End {
    Shutdown,
    /// Start over soon (the claim changed, the lease was lost, etcd restarted).
    Restart(String),
    OwnedElsewhere(String),
    Failed(EtcdError),
}

struct Writer {
    client: Client,
    kv: KvClient,
    /// Lists and watches the prefix (resumes across sessions; lists again after compaction or
    /// when etcd's history went back).
    reflector: Reflector,
    /// A listing came since the last watch was established.
    listed: bool,
    cfg: WriterConfig,
    prefix: String,
    /// `<prefix>/.owner`
    owner_key: String,
    desired: watch::Receiver<Desired>,
    shutdown: watch::Receiver<bool>,
    state: watch::Sender<WriterState>,
    applied: watch::Sender<u64>,
    /// Counts every event and passes it on to the observer.
    events: Arc<Events>,
    lease: Option<KeptLease>,
    known: Option<Known>,
    /// The lease the known state was read and written under: after a new lease, the prefix
    /// is listed again and every key put again.
    known_lease: Option<i64>,
    /// Plans only the keys that may differ since the last flush that committed in full (a
    /// full plan at the start of a session, after a listing and after a failed flush).
    planner: Planner,
    /// The latest receipt time of [`Desired::received`] already observed: each is observed
    /// once, by the first flush that committed it.
    observed: Option<Instant>,
}

impl Writer {
    async fn run(mut self, mut backoff: Backoff) {
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            // Whether the wait may end early as soon as etcd answers a probe.
            let mut probe = false;
            let delay = match self.session(&mut backoff).await {
                End::Shutdown => break,
                End::OwnedElsewhere(owner) => {
                    tracing::error!(
                        prefix = %self.prefix, %owner, cluster_id = %self.cfg.cluster_id,
                        "the prefix is claimed by another cluster; writing nothing"
                    );
                    // Stop keeping our lease alive (if we had one): the prefix is not ours.
                    self.lease = None;
                    self.known = None;
                    self.set_state(WriterState::PrefixOwnedElsewhere { owner });
                    backoff.reset();
                    self.cfg.owner_recheck
                }
                End::Restart(why) => {
                    tracing::info!(%why, "restarting the etcd session");
                    backoff.next_delay()
                }
                End::Failed(e) => {
                    tracing::warn!(error = %e, "etcd unavailable, retrying");
                    probe = reachable::is_unreachable(&e);
                    self.set_state(WriterState::EtcdUnavailable {
                        reason: e.to_string(),
                    });
                    backoff.next_delay()
                }
            };
            if self.sleep_or_shutdown(delay, probe).await {
                break;
            }
        }
        if let Some(lease) = self.lease.take() {
            tracing::info!(
                lease = ?lease.id(),
                "etcd writer stopped; lease left to a successor or its TTL (not revoked)"
            );
        }
    }

    /// Sleeps for `d`, or with `probe` only until etcd answers a probe (see [`reachable`]);
    /// true if shutdown was asked meanwhile.
    async fn sleep_or_shutdown(&mut self, d: Duration, probe: bool) -> bool {
        let (kv, key, timeout) = (
            self.kv.clone(),
            self.owner_key.clone(),
            self.cfg.request_timeout,
        );
        let answered = async move {
            if probe {
                reachable::until_etcd_answers(kv, key, timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let asked = tokio::select! {
            () = tokio::time::sleep(d) => false,
            () = answered => false,
            // Err: the sender is gone, which also means stop.
            _ = self.shutdown.wait_for(|s| *s) => true,
        };
        asked || *self.shutdown.borrow()
    }

    fn set_state(&self, s: WriterState) {
        self.state.send_if_modified(|cur| {
            let changed = *cur != s;
            *cur = s;
            changed
        });
    }

    async fn session(&mut self, backoff: &mut Backoff) -> End {
        let timeout = self.cfg.request_timeout;
        // Whatever happened since the last session, its first flush plans in full.
        self.planner.reset();

        // 1. The claim.
        match owner::claim(&mut self.kv, &self.owner_key, &self.cfg.cluster_id, timeout).await {
            Ok(Claim::Ours { .. }) => {}
            Ok(Claim::Elsewhere { owner }) => return End::OwnedElsewhere(owner),
            Err(e) => return End::Failed(e),
        }

        // 2. The lease.
        let (lease_id, mut lease_state) = match self.lease().await {
            Ok(got) => got,
            Err(end) => return end,
        };
        if self.known_lease != Some(lease_id) {
            // A new lease: what was written under the old one is listed again and put again.
            self.known = None;
            self.known_lease = Some(lease_id);
        }

        // 3. The known state and the watch (the reflector lists again instead of resuming
        // when etcd's history went back: data wiped or restored from a backup).
        if let Err(e) = self.list_and_watch().await {
            return End::Failed(e);
        }

        // 4. Ready (unless the keepalives are failing right now).
        match &*lease_state.borrow_and_update() {
            LeaseState::Failing { reason, .. } => self.set_state(WriterState::EtcdUnavailable {
                reason: format!("lease keepalive failing: {reason}"),
            }),
            _ => self.set_state(WriterState::Ready { lease: lease_id }),
        }

        // 5. Write and repair until something breaks. A flush is due at once, and again
        // whenever the desired state changed or someone else changed the prefix; what arrives
        // while one is written is written by the next.
        let mut due = true;
        loop {
            tokio::select! {
                biased;
                r = self.shutdown.changed() => {
                    if r.is_err() || *self.shutdown.borrow() {
                        return End::Shutdown;
                    }
                }
                r = lease_state.changed() => {
                    let state = match r {
                        Ok(()) => lease_state.borrow_and_update().clone(),
                        // The lease's task ended (it never does by itself): start over.
                        Err(_) => {
                            self.lease = None;
                            return End::Restart("the lease keepalive task ended".into());
                        }
                    };
                    match state {
                        LeaseState::Alive { id } if id == lease_id => {
                            self.set_state(WriterState::Ready { lease: lease_id });
                        }
                        LeaseState::Failing { id, reason } if id == lease_id => {
                            return End::Failed(EtcdError::Keepalive(reason));
                        }
                        // etcd said the lease is gone: a new one is (being) granted.
                        _ => return End::Restart("lease lost".into()),
                    }
                }
                r = self.desired.changed() => {
                    if r.is_err() {
                        tracing::info!("desired-state sender dropped; stopping the etcd writer");
                        return End::Shutdown;
                    }
                    due = true;
                }
                update = self.reflector.next() => {
                    let update = match update {
                        Ok(update) => update,
                        Err(e) => return End::Failed(e),
                    };
                    match self.on_update(update) {
                        Ok(false) => {}
                        Ok(true) => due = true,
                        Err(end) => return end,
                    }
                }
                () = std::future::ready(()), if due => {
                    due = false;
                    if let Err(end) = self.flush(lease_id).await {
                        return end;
                    }
                    backoff.reset();
                }
            }
        }
    }

    /// The current lease (granted first if there is none) and a receiver of its state; while
    /// a lost lease is being replaced, waits up to a request timeout for the new one.
    async fn lease(&mut self) -> Result<(i64, watch::Receiver<LeaseState>), End> {
        let timeout = self.cfg.request_timeout;
        let lease = match &self.lease {
            Some(lease) => lease,
            None => {
                let retry = Backoff::new(self.cfg.backoff_initial, self.cfg.backoff_max);
                let granted = KeptLease::builder(self.client.clone(), self.cfg.ttl_secs(), retry)
                    .request_timeout(timeout)
                    .observer(self.events.clone())
                    .grant()
                    .await
                    .map_err(End::Failed)?;
                self.lease.insert(granted)
            }
        };
        let mut state = lease.state();
        let current = tokio::time::timeout(timeout, state.wait_for(|s| s.id().is_some()))
            .await
            .map(|r| r.map(|s| s.id()));
        let id = match current {
            Ok(Ok(id)) => id,
            Ok(Err(_)) => None,
            Err(_) => {
                let reason = match &*state.borrow() {
                    LeaseState::Granting { reason } => reason.clone(),
                    other => format!("{other:?}"),
                };
                return Err(End::Failed(EtcdError::Keepalive(reason)));
            }
        };
        match id {
            Some(id) => Ok((id, state)),
            None => {
                self.lease = None;
                Err(End::Restart("the lease keepalive task ended".into()))
            }
        }
    }

    /// Lists the prefix if the known state is gone (or etcd's history went back), then
    /// watches from the next revision.
    async fn list_and_watch(&mut self) -> Result<(), EtcdError> {
        // Every session opens its own watch: the previous session's stream may sit on a member
        // that died or froze (it is what failed), and it would never say so by itself.
        self.reflector.disconnect();
        if self.known.is_none() {
            self.reflector.relist();
        }
        loop {
            match self.reflector.next().await? {
                update @ Update::Watching { .. } => {
                    let _ = self.on_update(update);
                    return Ok(());
                }
                update => {
                    // A listing, or changes delivered before the watch was (re)created: the
                    // next flush writes whatever they call for.
                    let _ = self.on_update(update);
                }
            }
        }
    }

    /// Applies an update of the reflector to the known state; `Ok(true)` if someone else
    /// changed something (or the state was listed again) and a flush is due.
    fn on_update(&mut self, update: Update) -> Result<bool, End> {
        let (events, upto) = match update {
            Update::Changes { events, upto } => (events, upto),
            Update::Watching { .. } => {
                // A watch not preceded by a listing resumed at the next revision.
                if !std::mem::take(&mut self.listed) {
                    WriterStats::add(&self.events.stats.watch_resumes, 1);
                }
                return Ok(false);
            }
            Update::Listed {
                kvs,
                revision,
                reason,
            } => {
                tracing::info!(?reason, revision, keys = kvs.len(), "listed the prefix");
                WriterStats::add(&self.events.stats.relists, 1);
                self.listed = true;
                let kvs = kvs
                    .into_iter()
                    .filter(|kv| kv.key != self.owner_key)
                    .map(|kv| {
                        let value = String::from_utf8_lossy(&kv.value).into_owned();
                        let known = KnownKv {
                            value,
                            lease: kv.lease,
                        };
                        (kv.key, known)
                    })
                    .collect();
                self.known = Some(Known::listed(kvs, revision));
                self.planner.reset();
                return Ok(true);
            }
        };
        let Some(known) = self.known.as_mut() else {
            return Err(End::Restart("no known state".into()));
        };
        let mut foreign = 0;
        let mut claim_changed = false;
        for ev in events {
            if ev.key == self.owner_key {
                claim_changed |= ev.value.as_deref() != Some(self.cfg.cluster_id.as_bytes());
                continue;
            }
            let key = ev.key.clone();
            if known.apply(ev) == Seen::Foreign {
                foreign += 1;
                self.planner.changed(key);
            }
        }
        known.progress(upto);
        WriterStats::add(&self.events.stats.foreign_changes, foreign);
        if claim_changed {
            return Err(End::Restart(
                "the prefix claim was changed or deleted".into(),
            ));
        }
        Ok(foreign > 0)
    }

    /// Writes the diff between the desired and the known state.
    async fn flush(&mut self, lease: i64) -> Result<(), End> {
        let desired = self.desired.borrow_and_update().clone();
        let taken = Instant::now();
        let mut first_sent = None;
        let Some(known) = self.known.as_mut() else {
            return Err(End::Restart("no known state".into()));
        };
        // Taken by the plan: a flush that does not commit in full leaves the next one a full plan.
        let planned = self.planner.plan(
            &self.prefix,
            &known.kvs,
            &desired.keys,
            desired.complete,
            lease,
        );
        tracing::trace!(
            ops = planned.ops.len(),
            candidates = ?planned.candidates,
            "planned (candidates None: a full plan)"
        );
        for batch in plan::batches(planned.ops, self.cfg.max_txn_ops, self.cfg.max_txn_bytes) {
            // A stopped writer (leadership lost) must not go on writing the rest of a flush
            // next to the new leader's writer.
            if *self.shutdown.borrow() {
                return Err(End::Shutdown);
            }
            let txn = Txn::new()
                .when([owner::still_ours(&self.owner_key, &self.cfg.cluster_id)])
                .and_then(batch.iter().map(|op| txn_op(op, lease)).collect::<Vec<_>>());
            let started = Instant::now();
            first_sent.get_or_insert(started);
            let result = timed(
                "write a transaction",
                self.cfg.request_timeout,
                self.kv.txn(txn),
            )
            .await;
            let latency = started.elapsed();
            let resp = match result {
                Ok(resp) => resp,
                Err(EtcdError::Etcd { source, .. }) if is_lease_not_found(&source) => {
                    self.events.txn_failed(latency, batch.len());
                    // etcd says the lease is gone: the lease is granted again, and the
                    // session under the new one lists and puts everything again.
                    if let Some(l) = &self.lease {
                        l.report_not_found(lease);
                    }
                    return Err(End::Restart("lease not found on write".into()));
                }
                Err(e) => {
                    self.events.txn_failed(latency, batch.len());
                    return Err(End::Failed(e));
                }
            };
            if !resp.succeeded() {
                self.events.txn_failed(latency, batch.len());
                return Err(End::Restart(
                    "the prefix claim no longer holds our id".into(),
                ));
            }
            let puts = batch
                .iter()
                .filter(|op| matches!(op, Op::Put { .. }))
                .count();
            self.events.txn_committed(latency, puts, batch.len() - puts);
            let revision = resp.header().map_or(0, |h| h.revision());
            known.record_own(&batch, lease, revision);
        }
        // Every change this desired state carries is in etcd now.
        self.planner
            .committed(&desired.keys, desired.complete, lease);
        let committed = Instant::now();
        let mut observed = self.observed;
        for &received in desired.received.iter() {
            if Some(received) > observed {
                self.events
                    .operator_latency(committed.saturating_duration_since(received));
                observed = Some(received);
            }
        }
        if observed != self.observed {
            self.observe_stages(&desired, taken, first_sent, committed);
        }
        self.observed = observed;
        self.applied.send_if_modified(|cur| {
            let changed = *cur != desired.seq;
            *cur = desired.seq;
            changed
        });
        Ok(())
    }
}

impl Writer {
    /// The stages of a flush that committed measured changes (`registrar_stage_seconds`): the
    /// core's flush, the handoff to this writer, the plan, and the txns.
    fn observe_stages(
        &self,
        desired: &Desired,
        taken: Instant,
        first_sent: Option<Instant>,
        committed: Instant,
    ) {
        let since = |later: Instant, earlier: Instant| later.saturating_duration_since(earlier);
        if let (Some(flushed), Some(published)) = (desired.flushed, desired.published) {
            self.events.stage(Stage::Compute, since(published, flushed));
            self.events.stage(Stage::Handoff, since(taken, published));
        }
        if let Some(sent) = first_sent {
            self.events.stage(Stage::Plan, since(sent, taken));
            self.events.stage(Stage::Commit, since(committed, sent));
        }
    }
}

fn txn_op(op: &Op, lease: i64) -> TxnOp {
    match op {
        Op::Put { key, value } => TxnOp::put(
            key.as_str(),
            value.as_str(),
            Some(PutOptions::new().with_lease(lease)),
        ),
        Op::Delete { key } => TxnOp::delete(key.as_str(), None),
    }
}
