//! The writer task: a loop of sessions, each of which claims the prefix, makes sure a lease is
//! alive, lists (or resumes watching) the prefix and then, until something breaks, writes the
//! diff between the desired and the known state in coalesced, batched transactions and repairs
//! whatever the watch shows drifting.
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
use registrar_etcd::{Reflector, Update};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::coalesce::next_action;

use super::config::WriterConfig;
use super::error::{EtcdError, is_lease_not_found, timed};
use super::known::{Known, Seen};
use super::lease::{KeepaliveTiming, Lease, LeaseHealth};
use super::owner::{self, Claim};
use super::plan::KnownKv;
use super::plan::{self, Op};
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

/// Starts the writer. It stops when `shutdown` becomes true (or its sender is dropped) or when
/// the `desired` sender is dropped; it never revokes its lease, so the keys stay until a new
/// leader takes them over or the TTL ends.
pub fn spawn_writer(
    client: Client,
    cfg: WriterConfig,
    desired: watch::Receiver<Desired>,
    shutdown: watch::Receiver<bool>,
) -> WriterHandle {
    let (state_tx, state) = watch::channel(WriterState::Starting);
    let (applied_tx, applied) = watch::channel(0);
    let stats = Arc::new(WriterStats::default());
    let prefix = cfg.prefix.trim_end_matches('/').to_owned();
    let dir = format!("{prefix}/");
    let reflector = Reflector::builder(client.clone(), dir.clone())
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
        stats: stats.clone(),
        lease: None,
        known: None,
    };
    let join = tokio::spawn(writer.run());
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
    stats: Arc<WriterStats>,
    lease: Option<Lease>,
    known: Option<Known>,
}

impl Writer {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.cfg.backoff_initial, self.cfg.backoff_max);
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
                lease = lease.id(),
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

        // 1. The claim.
        match owner::claim(&mut self.kv, &self.owner_key, &self.cfg.cluster_id, timeout).await {
            Ok(Claim::Ours { .. }) => {}
            Ok(Claim::Elsewhere { owner }) => return End::OwnedElsewhere(owner),
            Err(e) => return End::Failed(e),
        }

        // 2. The lease.
        if self.lease.as_ref().is_some_and(Lease::is_lost) {
            self.lease_lost();
        }
        let (lease_id, mut health) = match &self.lease {
            Some(l) => (l.id(), l.health()),
            None => {
                let timing = KeepaliveTiming {
                    request_timeout: timeout,
                    backoff_initial: self.cfg.backoff_initial,
                    backoff_max: self.cfg.backoff_max,
                };
                let granted = Lease::grant(
                    &self.client,
                    self.cfg.ttl_secs(),
                    timing,
                    self.stats.clone(),
                )
                .await;
                match granted {
                    Ok(l) => {
                        let got = (l.id(), l.health());
                        self.lease = Some(l);
                        got
                    }
                    Err(e) => return End::Failed(e),
                }
            }
        };

        // 3. The known state and the watch (the reflector lists again instead of resuming
        // when etcd's history went back: data wiped or restored from a backup).
        if let Err(e) = self.list_and_watch().await {
            return End::Failed(e);
        }

        // 4. Ready (unless the keepalives are failing right now).
        match &*health.borrow_and_update() {
            LeaseHealth::Failing(reason) => self.set_state(WriterState::EtcdUnavailable {
                reason: reason.clone(),
            }),
            _ => self.set_state(WriterState::Ready { lease: lease_id }),
        }

        // 5. Write and repair until something breaks.
        let mut flush_at = Some(Instant::now());
        let mut last_flush: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                r = self.shutdown.changed() => {
                    if r.is_err() || *self.shutdown.borrow() {
                        return End::Shutdown;
                    }
                }
                r = health.changed() => {
                    // The sender lives in the keepalive task; it ending means the lease is lost.
                    let h = if r.is_err() { LeaseHealth::Lost } else { health.borrow().clone() };
                    match h {
                        LeaseHealth::Lost => {
                            self.lease_lost();
                            return End::Restart("lease lost".into());
                        }
                        LeaseHealth::Failing(reason) => {
                            return End::Failed(EtcdError::Keepalive(reason));
                        }
                        LeaseHealth::Alive => self.set_state(WriterState::Ready { lease: lease_id }),
                    }
                }
                r = self.desired.changed() => {
                    if r.is_err() {
                        tracing::info!("desired-state sender dropped; stopping the etcd writer");
                        return End::Shutdown;
                    }
                    flush_at.get_or_insert_with(|| next_action(last_flush, self.cfg.coalesce));
                }
                update = self.reflector.next() => {
                    let update = match update {
                        Ok(update) => update,
                        Err(e) => return End::Failed(e),
                    };
                    match self.on_update(update) {
                        Ok(false) => {}
                        Ok(true) => {
                            flush_at.get_or_insert_with(|| next_action(last_flush, self.cfg.coalesce));
                        }
                        Err(end) => return end,
                    }
                }
                () = sleep_until_opt(flush_at) => {
                    flush_at = None;
                    let started = Instant::now();
                    match self.flush(lease_id).await {
                        // Only a real write starts a window: a no-op flush (e.g. our own
                        // writes echoed by the watch) must not delay the next change.
                        Ok(true) => last_flush = Some(started),
                        Ok(false) => {}
                        Err(end) => return end,
                    }
                    backoff.reset();
                }
            }
        }
    }

    /// Forgets the lease and the state read under it.
    fn lease_lost(&mut self) {
        WriterStats::add(&self.stats.leases_lost, 1);
        self.lease = None;
        self.known = None;
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
                    WriterStats::add(&self.stats.watch_resumes, 1);
                }
                return Ok(false);
            }
            Update::Listed {
                kvs,
                revision,
                reason,
            } => {
                tracing::info!(?reason, revision, keys = kvs.len(), "listed the prefix");
                WriterStats::add(&self.stats.relists, 1);
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
            if known.apply(ev) == Seen::Foreign {
                foreign += 1;
            }
        }
        known.progress(upto);
        WriterStats::add(&self.stats.foreign_changes, foreign);
        if claim_changed {
            return Err(End::Restart(
                "the prefix claim was changed or deleted".into(),
            ));
        }
        Ok(foreign > 0)
    }

    /// Writes the diff between the current desired state and the known state.
    /// Writes the diff between the desired and the known state; `Ok(true)` when it wrote
    /// anything (which starts a new coalescing window).
    async fn flush(&mut self, lease: i64) -> Result<bool, End> {
        let desired = self.desired.borrow_and_update().clone();
        let Some(known) = self.known.as_mut() else {
            return Err(End::Restart("no known state".into()));
        };
        let ops = plan::plan(
            &self.prefix,
            &known.kvs,
            &desired.keys,
            desired.complete,
            lease,
        );
        let wrote = !ops.is_empty();
        for batch in plan::batches(ops, self.cfg.max_txn_ops, self.cfg.max_txn_bytes) {
            // A stopped writer (leadership lost) must not go on writing the rest of a flush
            // next to the new leader's writer.
            if *self.shutdown.borrow() {
                return Err(End::Shutdown);
            }
            let txn = Txn::new()
                .when([owner::still_ours(&self.owner_key, &self.cfg.cluster_id)])
                .and_then(batch.iter().map(|op| txn_op(op, lease)).collect::<Vec<_>>());
            let started = Instant::now();
            let result = timed(
                "write a transaction",
                self.cfg.request_timeout,
                self.kv.txn(txn),
            )
            .await;
            let resp = match result {
                Ok(resp) => resp,
                Err(EtcdError::Etcd { source, .. }) if is_lease_not_found(&source) => {
                    WriterStats::add(&self.stats.txn_failures, 1);
                    self.lease_lost();
                    return Err(End::Restart("lease not found on write".into()));
                }
                Err(e) => {
                    WriterStats::add(&self.stats.txn_failures, 1);
                    return Err(End::Failed(e));
                }
            };
            if !resp.succeeded() {
                WriterStats::add(&self.stats.txn_failures, 1);
                return Err(End::Restart(
                    "the prefix claim no longer holds our id".into(),
                ));
            }
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let stats = &self.stats;
            stats
                .last_txn_micros
                .store(micros, std::sync::atomic::Ordering::Relaxed);
            WriterStats::add(&stats.txns, 1);
            let puts = batch
                .iter()
                .filter(|op| matches!(op, Op::Put { .. }))
                .count();
            WriterStats::add(&stats.puts, puts as u64);
            WriterStats::add(&stats.deletes, (batch.len() - puts) as u64);
            let revision = resp.header().map_or(0, |h| h.revision());
            known.record_own(&batch, lease, revision);
        }
        self.applied.send_if_modified(|cur| {
            let changed = *cur != desired.seq;
            *cur = desired.seq;
            changed
        });
        Ok(wrote)
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

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
