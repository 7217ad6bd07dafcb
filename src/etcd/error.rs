//! Errors of the etcd writer. None of them is fatal: the writer reports them as
//! `WriterState::EtcdUnavailable` and retries with backoff.

use std::time::Duration;

/// Why one attempt to talk to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("{what}: {source}")]
    Etcd {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("{what}: no answer from etcd within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("lease keepalive failing: {0}")]
    Keepalive(String),
    #[error("watch of the prefix: {0}")]
    Watch(String),
    #[error("the claim {0} keeps disappearing while we claim it")]
    ClaimChurn(String),
}

impl EtcdError {
    pub(crate) fn etcd(what: &'static str) -> impl FnOnce(etcd_client::Error) -> Self {
        move |source| EtcdError::Etcd { what, source }
    }
}

/// Whether etcd said that a lease does not exist (a put with a dead lease, or a keepalive of one).
pub(crate) fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// Runs `fut` with a deadline, naming the operation in the error.
pub(crate) async fn timed<T>(
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r.map_err(EtcdError::etcd(what)),
        Err(_) => Err(EtcdError::Timeout { what, after }),
    }
}
