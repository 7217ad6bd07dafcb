//! Counters of the etcd writer, for the metrics module and tests to read.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters (and one gauge) updated by the writer. Shared as `Arc<WriterStats>`.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Write transactions sent and committed.
    pub txns: AtomicU64,
    /// Put operations committed.
    pub puts: AtomicU64,
    /// Delete operations committed.
    pub deletes: AtomicU64,
    /// Write transactions that failed (error, timeout or a lost claim).
    pub txn_failures: AtomicU64,
    /// Duration of the last committed write transaction, in microseconds.
    pub last_txn_micros: AtomicU64,
    /// Leases granted (1 per term; more means leases were lost).
    pub lease_grants: AtomicU64,
    /// Keepalive streams that failed or could not be opened.
    pub keepalive_failures: AtomicU64,
    /// Leases found lost (expired, or etcd lost its data).
    pub leases_lost: AtomicU64,
    /// Full listings of the prefix (at start, after compaction or data loss).
    pub relists: AtomicU64,
    /// Watches resumed after a broken stream without a relist.
    pub watch_resumes: AtomicU64,
    /// Changes by someone else under the prefix seen by the watch (repaired if they drift).
    pub foreign_changes: AtomicU64,
}

/// A plain copy of [`WriterStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub txns: u64,
    pub puts: u64,
    pub deletes: u64,
    pub txn_failures: u64,
    pub last_txn_micros: u64,
    pub lease_grants: u64,
    pub keepalive_failures: u64,
    pub leases_lost: u64,
    pub relists: u64,
    pub watch_resumes: u64,
    pub foreign_changes: u64,
}

impl WriterStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            txns: g(&self.txns),
            puts: g(&self.puts),
            deletes: g(&self.deletes),
            txn_failures: g(&self.txn_failures),
            last_txn_micros: g(&self.last_txn_micros),
            lease_grants: g(&self.lease_grants),
            keepalive_failures: g(&self.keepalive_failures),
            leases_lost: g(&self.leases_lost),
            relists: g(&self.relists),
            watch_resumes: g(&self.watch_resumes),
            foreign_changes: g(&self.foreign_changes),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
