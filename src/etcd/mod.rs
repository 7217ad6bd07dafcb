//! The operator's etcd writer: it makes etcd hold exactly the desired endpoint keys under the
//! operator's prefix, and keeps it so through etcd restarts, data loss, lease expiry and hand
//! edits (see `docs/architecture.md`).
//!
//! The controller publishes the whole desired state as a [`Desired`] on a `watch` channel;
//! [`spawn_writer`] starts a task that gets its etcd client (dialing it itself from
//! [`EtcdConnect`](registrar_etcd::EtcdConnect) settings, [`dial`]), claims the prefix
//! ([`owner`]), writes under one lease per term (the shared
//! [`KeptLease`](registrar_etcd::KeptLease)), diffs against what etcd holds ([`plan`]) and
//! watches the prefix to repair drift. Its [`WriterHandle`] reports the [`WriterState`] and the
//! sequence number of the last desired state fully written; [`spawn_writer_with`] also reports
//! every event to a [`WriterObserver`] ([`observer`]).
//!
//! An etcd client given to the writer should have HTTP/2 keepalives on (e.g.
//! `ConnectOptions::new().with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))`) so
//! that a silent partition breaks the streams (`EtcdConnect` does); the lease's keepalive also
//! detects silent keepalive streams.

use std::sync::Arc;

use tokio::time::Instant;

mod config;
mod dial;
pub mod error;
mod known;
mod observer;
mod owner;
pub mod plan;
mod reachable;
mod stats;
mod writer;

pub use config::WriterConfig;
pub use dial::EtcdSource;
pub use error::EtcdError;
pub use observer::{Stage, WriterObserver};
pub(crate) use reachable::is_unreachable;
pub use registrar_etcd::value;
pub use stats::{StatsSnapshot, WriterStats};
pub use writer::{WriterHandle, spawn_writer, spawn_writer_with};

/// Full etcd key -> value of a desired state (persistent: cheap to clone and to diff against
/// the state it was derived from).
pub type DesiredKeys = imbl::OrdMap<String, String>;

/// The complete desired content of the prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Increases with every new desired state (start at 1: `applied` is 0 before anything).
    pub seq: u64,
    /// Full etcd key -> value for the WHOLE prefix. Never contains `<prefix>/.owner`; keys
    /// outside `<prefix>/` are ignored.
    /// A persistent map: a clone is O(1) and shares structure with the state it came from.
    pub keys: DesiredKeys,
    /// False until both kube caches finished their initial list: until then the writer only
    /// puts and never deletes.
    pub complete: bool,
    /// When the operator received the watch events whose changes this desired state carries
    /// and that no writer reported applied yet (oldest first; empty when not measured). The
    /// writer observes each once, when the txn that wrote it committed
    /// ([`WriterObserver::operator_latency`]).
    pub received: Arc<[Instant]>,
    /// When the operator's flush that computed this desired state started (`None` when not
    /// measured): the end of the coalescing window for the changes it carries. For the stage
    /// metric ([`WriterObserver::stage`]).
    pub flushed: Option<Instant>,
    /// When this desired state was handed to the writer (`None` when not measured).
    pub published: Option<Instant>,
}

/// What the writer is doing, for status conditions, readiness and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterState {
    /// Connected (or connecting for the first time), not yet claimed and leased.
    Starting,
    /// Dialing etcd failed; retrying with backoff. The reason is the last attempt's.
    Connecting { reason: String },
    /// The prefix is ours and keys are written under `lease`.
    Ready { lease: i64 },
    /// etcd cannot be reached or failed; retrying with backoff.
    EtcdUnavailable { reason: String },
    /// `<prefix>/.owner` names another cluster: nothing is written; checked again periodically.
    PrefixOwnedElsewhere { owner: String },
}
