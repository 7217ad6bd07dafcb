//! The etcd layer shared by the Registrar operator (`registrar`) and the client resolver
//! (`registrar-resolver`). It knows nothing of Kubernetes.
//!
//! - [`Reflector`]: follows every key under a prefix: a paginated list at one revision, a
//!   watch from the next revision, resumption after a broken stream, and a fresh list when the
//!   watch start revision was compacted or when etcd's history went backwards (its data was
//!   wiped or restored from an older snapshot). Both the operator's writer and the resolver's
//!   discovery read etcd through it, so a recovery path exists once, for both.
//! - [`value`]: the key and the value of an endpoint, exactly as Go's naming library writes
//!   them (one encoder for the operator and the resolver).
//! - [`EtcdConnect`]: one builder of etcd clients (endpoints, TLS, user, keepalive, member
//!   guard) for both, with one timeout policy: unary requests get deadlines from their callers
//!   ([`timed`]); watch and keepalive streams never have one (they may stay idle as long as
//!   nothing changes), and HTTP/2 keepalives detect a dead connection under them.
//! - [`members`]: an etcd client whose balanced endpoint set a guard keeps free of dead or
//!   frozen members (etcd-client alone keeps sending requests to a dead member).
//! - [`KeptLease`]: one lease kept alive (keepalive every TTL/3) with one expiry policy: gone
//!   only when etcd says so, never guessed from a clock; granted again when it is gone.
//! - [`EtcdError`] and [`timed`]: what went wrong talking to etcd, with the operation named.
//!
//! See `docs/architecture.md` for where this sits in the data path.

#![deny(missing_docs)]

mod connect;
mod error;
mod history;
mod lease;
pub mod members;
mod reflector;
pub mod value;

pub use connect::EtcdConnect;
pub use error::{ConnectError, EtcdError, is_lease_not_found, timed};
pub use history::{History, HistoryCheck};
pub use lease::{KeptLease, KeptLeaseBuilder, LeaseObserver, LeaseState, Retry};
pub use reflector::{Kv, KvEvent, ListReason, Reflector, ReflectorBuilder, Update, range_end};
