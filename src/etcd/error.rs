//! Errors of the etcd writer: the shared etcd layer's, re-exported. None of them is fatal: the
//! writer reports them as `WriterState::EtcdUnavailable` and retries with backoff.

pub use registrar_etcd::{EtcdError, is_lease_not_found, timed};
