//! Errors of talking to etcd. None of them is fatal for a long-running loop: callers report
//! them and retry with backoff.

use std::path::PathBuf;
use std::time::Duration;

/// Why an etcd client could not be built or connected ([`EtcdConnect`](crate::EtcdConnect)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// A file (certificate, key) could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Invalid settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// etcd could not be reached or refused the connection (e.g. wrong credentials).
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// Why one attempt to talk to etcd failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// etcd answered with an error, or could not be reached.
    #[error("{what}: {source}")]
    Etcd {
        /// The operation, e.g. "list the prefix".
        what: &'static str,
        /// What the client said.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd did not answer within the deadline.
    #[error("{what}: no answer from etcd within {after:?}")]
    Timeout {
        /// The operation.
        what: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// A lease's keepalives are failing.
    #[error("lease keepalive failing: {0}")]
    Keepalive(String),
    /// A watch ended (closed or canceled by etcd).
    #[error("watch of the prefix: {0}")]
    Watch(String),
    /// A claim key kept disappearing while it was being claimed.
    #[error("the claim {0} keeps disappearing while we claim it")]
    ClaimChurn(String),
}

impl EtcdError {
    /// A mapper from the client's error to [`EtcdError::Etcd`] naming `what`.
    pub fn etcd(what: &'static str) -> impl FnOnce(etcd_client::Error) -> Self {
        move |source| EtcdError::Etcd { what, source }
    }
}

/// Whether etcd said that a lease does not exist (a put with a dead lease, or a keepalive of one).
pub fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// Runs `fut` with a deadline, naming the operation in the error.
pub async fn timed<T>(
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r.map_err(EtcdError::etcd(what)),
        Err(_) => Err(EtcdError::Timeout { what, after }),
    }
}
