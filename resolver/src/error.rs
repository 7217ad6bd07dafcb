//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

use crate::value::ValueError;

/// Errors returned by this crate's constructors and etcd-facing operations.
///
/// RPCs sent through a [`Balancer`](crate::Balancer) fail with a [`tonic::Status`] instead
/// (`Unavailable` when no backend becomes ready in time).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target is empty or malformed.
    #[error("invalid target {target:?}: {reason}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An endpoint address is not `host:port`.
    #[error(transparent)]
    InvalidValue(#[from] ValueError),
    /// etcd answered with an error or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// etcd did not answer in time.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// A backend endpoint could not be configured (bad URI, TLS settings).
    #[error("backend endpoint configuration: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    /// A file (certificate, key) could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The shared lease is lost and being re-granted (etcd unreachable?): new registrations
    /// fail until it is back; existing ones are re-put automatically.
    #[error("no etcd lease at the moment (being re-granted)")]
    NoLease,
    /// The background task serving this handle has stopped (the runtime is shutting down).
    #[error("the background task has stopped")]
    Stopped,
    /// A watch ended or another etcd failure that carries no client error.
    #[error("etcd: {0}")]
    EtcdOther(String),
}

impl From<registrar_etcd::ConnectError> for Error {
    fn from(e: registrar_etcd::ConnectError) -> Self {
        match e {
            registrar_etcd::ConnectError::Io { path, source } => Error::Io { path, source },
            registrar_etcd::ConnectError::Config(reason) => Error::Config(reason),
            registrar_etcd::ConnectError::Etcd(e) => Error::Etcd(e),
            other => Error::EtcdOther(other.to_string()),
        }
    }
}

impl From<registrar_etcd::EtcdError> for Error {
    fn from(e: registrar_etcd::EtcdError) -> Self {
        match e {
            registrar_etcd::EtcdError::Etcd { source, .. } => Error::Etcd(source),
            registrar_etcd::EtcdError::Timeout { after, .. } => Error::Timeout(after),
            other => Error::EtcdOther(other.to_string()),
        }
    }
}

/// Runs an etcd call with a timeout, mapping both failures to [`Error`].
pub(crate) async fn etcd_call<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(Error::Etcd),
        Err(_) => Err(Error::Timeout(timeout)),
    }
}
