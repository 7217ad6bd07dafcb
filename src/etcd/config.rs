//! Settings of the etcd writer.

use std::time::Duration;

/// How the writer behaves. `WriterConfig::new(prefix, cluster_id)` gives the defaults; the
/// fields are public to adjust them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// The key prefix the operator owns (no leading or trailing slash), e.g. `registrar`.
    pub prefix: String,
    /// This cluster's identity, written to `<prefix>/.owner`.
    pub cluster_id: String,
    /// TTL of the writer's lease (whole seconds, at least 1; etcd may raise it to its minimum).
    /// Keepalives are sent every TTL/3.
    pub lease_ttl: Duration,
    /// Maximum operations per transaction (etcd's `--max-txn-ops`, default 128).
    pub max_txn_ops: usize,
    /// Soft cap on the keys and values in one transaction (etcd refuses requests over 1.5 MiB).
    pub max_txn_bytes: usize,
    /// Deadline of each etcd request (and of opening a watch or keepalive stream).
    pub request_timeout: Duration,
    /// How often a prefix claimed by another cluster is checked again.
    pub owner_recheck: Duration,
    /// First retry delay after a failure; doubles up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Page size of the ranged get that lists the prefix.
    pub list_page: i64,
}

impl WriterConfig {
    pub fn new(prefix: impl Into<String>, cluster_id: impl Into<String>) -> Self {
        WriterConfig {
            prefix: prefix.into(),
            cluster_id: cluster_id.into(),
            lease_ttl: Duration::from_secs(30),
            max_txn_ops: 128,
            max_txn_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(5),
            owner_recheck: Duration::from_secs(15),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            list_page: 1000,
        }
    }

    /// The lease TTL in whole seconds as etcd wants it (rounded up, at least 1).
    pub(crate) fn ttl_secs(&self) -> i64 {
        let secs = self.lease_ttl.as_secs() + u64::from(self.lease_ttl.subsec_nanos() > 0);
        i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        let mut c = WriterConfig::new("registrar", "c1");
        assert_eq!(c.ttl_secs(), 30);
        c.lease_ttl = Duration::from_millis(2500);
        assert_eq!(c.ttl_secs(), 3);
        c.lease_ttl = Duration::ZERO;
        assert_eq!(c.ttl_secs(), 1);
    }
}
