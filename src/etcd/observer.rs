//! What the writer reports where it happens: every transaction (its result, latency and
//! operations), every keepalive answer or failure, every lease granted or lost. Each event is
//! counted in the writer's [`WriterStats`] and passed on, at once, to a [`WriterObserver`]
//! (the operator's Prometheus metrics), so no event is sampled or merged with another.

use std::sync::Arc;
use std::time::Duration;

use registrar_etcd::LeaseObserver;

use super::stats::WriterStats;

/// Told about the writer's events as they happen. Every method does nothing by default.
pub trait WriterObserver: Send + Sync + 'static {
    /// A write transaction of `ops` operations ended after `latency`: committed (`ok`), or
    /// failed (an error, a timeout, or the prefix claim no longer ours).
    fn txn(&self, latency: Duration, ops: usize, ok: bool) {
        let _ = (latency, ops, ok);
    }
    /// etcd answered a keepalive of the writer's lease (`ok`), or the keepalive stream broke,
    /// stayed silent or could not be opened.
    fn keepalive(&self, ok: bool) {
        let _ = ok;
    }
    /// A change committed `latency` after the operator received the watch event behind it
    /// (watch event received → etcd txn committed).
    fn operator_latency(&self, latency: Duration) {
        let _ = latency;
    }
    /// One stage of the operator's part of propagation took `latency` ([`Stage`]).
    fn stage(&self, stage: Stage, latency: Duration) {
        let _ = (stage, latency);
    }
    /// A lease was granted (one per term, plus one per lost lease).
    fn lease_granted(&self) {}
    /// etcd said the writer's lease is gone.
    fn lease_lost(&self) {}
}

/// The stages of the operator's part of propagation, in order, for
/// `registrar_stage_seconds{stage}`. Together they cover watch event received → etcd txn
/// committed (`registrar_operator_latency_seconds`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Stage {
    /// Per change: pod watch event received → the flush that takes it up starts (the
    /// coalescing window, and the wait for the event loop).
    Window,
    /// Per flush: the flush (index, desired state, plan of status writes) until its desired
    /// state is handed to the writer.
    Compute,
    /// Per flush: desired state handed over → the writer takes it up (it may be writing the
    /// previous one).
    Handoff,
    /// Per flush: the writer's diff against what etcd holds, until its first txn is sent.
    Plan,
    /// Per flush: first txn sent → last txn committed.
    Commit,
}

impl Stage {
    /// The `stage` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Window => "window",
            Stage::Compute => "compute",
            Stage::Handoff => "handoff",
            Stage::Plan => "plan",
            Stage::Commit => "commit",
        }
    }
}

/// An observer that ignores everything.
impl WriterObserver for () {}

/// The writer's events: counted in its stats and passed on to the observer.
pub(crate) struct Events {
    pub(crate) stats: Arc<WriterStats>,
    pub(crate) observer: Arc<dyn WriterObserver>,
}

impl Events {
    /// A committed transaction of `puts` puts and `deletes` deletes.
    pub(crate) fn txn_committed(&self, latency: Duration, puts: usize, deletes: usize) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let stats = &self.stats;
        stats
            .last_txn_micros
            .store(micros, std::sync::atomic::Ordering::Relaxed);
        WriterStats::add(&stats.txns, 1);
        WriterStats::add(&stats.puts, puts as u64);
        WriterStats::add(&stats.deletes, deletes as u64);
        self.observer.txn(latency, puts + deletes, true);
    }

    /// A change received `latency` before the txn that wrote it committed.
    pub(crate) fn operator_latency(&self, latency: Duration) {
        self.observer.operator_latency(latency);
    }

    /// One stage of a measured flush.
    pub(crate) fn stage(&self, stage: Stage, latency: Duration) {
        self.observer.stage(stage, latency);
    }

    /// A transaction of `ops` operations that failed.
    pub(crate) fn txn_failed(&self, latency: Duration, ops: usize) {
        WriterStats::add(&self.stats.txn_failures, 1);
        self.observer.txn(latency, ops, false);
    }
}

impl LeaseObserver for Events {
    fn granted(&self, _id: i64, _ttl: i64) {
        WriterStats::add(&self.stats.lease_grants, 1);
        self.observer.lease_granted();
    }

    fn kept_alive(&self, _id: i64) {
        self.observer.keepalive(true);
    }

    fn keepalive_failed(&self, _id: i64, _reason: &str) {
        WriterStats::add(&self.stats.keepalive_failures, 1);
        self.observer.keepalive(false);
    }

    fn lost(&self, _id: i64) {
        WriterStats::add(&self.stats.leases_lost, 1);
        self.observer.lease_lost();
    }
}
