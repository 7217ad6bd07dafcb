//! The crate's error type: opaque, with a [`kind`](Error::kind) to branch on and the
//! underlying error (etcd client, tonic transport, I/O) kept as its [`source`](StdError::source),
//! so that upgrading those dependencies does not change this crate's public API.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::value::ValueError;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Errors returned by this crate's constructors and etcd-facing operations.
///
/// Branch on [`Error::kind`]; the underlying error, if any, is the [`source`](StdError::source)
/// (e.g. an [`etcd_client::Error`] for [`ErrorKind::Etcd`], which can be downcast).
///
/// RPCs sent through a [`Balancer`](crate::Balancer) fail with a [`tonic::Status`] instead
/// (`Unavailable` when no backend becomes ready in time).
///
/// ```
/// # fn f(err: registrar_resolver::Error) {
/// use registrar_resolver::ErrorKind;
///
/// match err.kind() {
///     ErrorKind::Etcd | ErrorKind::Timeout | ErrorKind::NoLease => { /* retry later */ }
///     _ => { /* a configuration mistake: report it */ }
/// }
/// # }
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
}

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The target is empty or malformed.
    InvalidTarget,
    /// An endpoint address is not `host:port` (the source is a
    /// [`ValueError`](crate::value::ValueError)).
    InvalidValue,
    /// etcd answered with an error or could not be reached (the source is the etcd client's
    /// error, when there is one).
    Etcd,
    /// etcd did not answer in time.
    Timeout,
    /// A backend endpoint could not be configured: bad URI, TLS settings (the source is tonic's
    /// transport error).
    Endpoint,
    /// A file (certificate, key) could not be read (the source is the I/O error).
    Io,
    /// Invalid configuration.
    Config,
    /// The shared lease is lost and being re-granted (etcd unreachable?): new registrations
    /// fail until it is back; existing ones are re-put automatically.
    NoLease,
    /// The background task serving this handle has stopped (the runtime is shutting down).
    Stopped,
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether etcd could not be reached or did not answer in time ([`ErrorKind::Etcd`] or
    /// [`ErrorKind::Timeout`]): a retry later may succeed.
    pub fn is_etcd(&self) -> bool {
        matches!(self.kind(), ErrorKind::Etcd | ErrorKind::Timeout)
    }

    fn new(kind: ErrorKind, message: impl Into<String>, source: Option<BoxError>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                source,
            }),
        }
    }

    /// The target is malformed.
    pub(crate) fn invalid_target(target: &str, reason: &'static str) -> Self {
        Error::new(
            ErrorKind::InvalidTarget,
            format!("invalid target {target:?}: {reason}"),
            None,
        )
    }

    /// Invalid configuration.
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::new(
            ErrorKind::Config,
            format!("invalid configuration: {}", message.into()),
            None,
        )
    }

    /// An etcd client error.
    pub(crate) fn etcd(source: etcd_client::Error) -> Self {
        Error::new(ErrorKind::Etcd, "etcd", Some(Box::new(source)))
    }

    /// Another etcd failure (a watch ended…) that carries no client error.
    pub(crate) fn etcd_other(source: impl Into<BoxError>) -> Self {
        Error::new(ErrorKind::Etcd, "etcd", Some(source.into()))
    }

    /// etcd did not answer within `after`.
    pub(crate) fn timeout(after: Duration) -> Self {
        Error::new(
            ErrorKind::Timeout,
            format!("etcd did not answer within {after:?}"),
            None,
        )
    }

    /// A file could not be read.
    pub(crate) fn io(path: PathBuf, source: std::io::Error) -> Self {
        Error::new(
            ErrorKind::Io,
            format!("reading {}", path.display()),
            Some(Box::new(source)),
        )
    }

    /// No lease at the moment.
    pub(crate) fn no_lease() -> Self {
        Error::new(
            ErrorKind::NoLease,
            "no etcd lease at the moment (being re-granted)",
            None,
        )
    }

    /// The background task has stopped.
    pub(crate) fn stopped() -> Self {
        Error::new(ErrorKind::Stopped, "the background task has stopped", None)
    }

    /// The etcd client's error, if this is one (for the crate's own retry decisions).
    pub(crate) fn etcd_source(&self) -> Option<&etcd_client::Error> {
        self.inner.source.as_deref()?.downcast_ref()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("registrar_resolver::Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    /// The message and, when there is one, the underlying error after a colon (as the previous
    /// enum did), so that a plain `{}` in a log line says everything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.source {
            Some(source) if self.inner.kind != ErrorKind::InvalidValue => {
                write!(f, "{}: {source}", self.inner.message)
            }
            _ => f.write_str(&self.inner.message),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

impl From<ValueError> for Error {
    fn from(e: ValueError) -> Self {
        Error::new(ErrorKind::InvalidValue, e.to_string(), Some(Box::new(e)))
    }
}

/// For the crate's own `?`; not part of the documented API.
#[doc(hidden)]
impl From<etcd_client::Error> for Error {
    fn from(e: etcd_client::Error) -> Self {
        Error::etcd(e)
    }
}

/// For the crate's own `?`; not part of the documented API.
#[doc(hidden)]
impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Error::new(
            ErrorKind::Endpoint,
            "backend endpoint configuration",
            Some(Box::new(e)),
        )
    }
}

/// For the crate's own `?`; not part of the documented API.
#[doc(hidden)]
impl From<registrar_etcd::ConnectError> for Error {
    fn from(e: registrar_etcd::ConnectError) -> Self {
        match e {
            registrar_etcd::ConnectError::Io { path, source } => Error::io(path, source),
            registrar_etcd::ConnectError::Config(reason) => Error::config(reason),
            registrar_etcd::ConnectError::Etcd(e) => Error::etcd(e),
            other => Error::etcd_other(other),
        }
    }
}

/// For the crate's own `?`; not part of the documented API.
#[doc(hidden)]
impl From<registrar_etcd::EtcdError> for Error {
    fn from(e: registrar_etcd::EtcdError) -> Self {
        match e {
            registrar_etcd::EtcdError::Etcd { source, .. } => Error::etcd(source),
            registrar_etcd::EtcdError::Timeout { after, .. } => Error::timeout(after),
            other => Error::etcd_other(other),
        }
    }
}

/// Runs an etcd call with a timeout, mapping both failures to [`Error`].
pub(crate) async fn etcd_call<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(Error::etcd),
        Err(_) => Err(Error::timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_errors_keep_their_source_and_message() {
        let e = Error::etcd(etcd_client::Error::InvalidArgs("boom".into()));
        assert_eq!(e.kind(), ErrorKind::Etcd);
        assert!(e.is_etcd());
        assert!(e.to_string().starts_with("etcd: "), "{e}");
        assert!(e.to_string().contains("boom"), "{e}");
        let source = e.source().expect("a source");
        assert!(source.downcast_ref::<etcd_client::Error>().is_some());
        assert!(e.etcd_source().is_some());
    }

    #[test]
    fn kinds_without_source() {
        let e = Error::timeout(Duration::from_secs(2));
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.source().is_none());
        assert_eq!(e.to_string(), "etcd did not answer within 2s");
        assert_eq!(Error::stopped().kind(), ErrorKind::Stopped);
        assert_eq!(Error::no_lease().kind(), ErrorKind::NoLease);
        let e = Error::invalid_target("/x", "leading slash");
        assert_eq!(e.kind(), ErrorKind::InvalidTarget);
        assert_eq!(e.to_string(), "invalid target \"/x\": leading slash");
    }

    #[test]
    fn io_and_value_errors() {
        let e = Error::io(
            "ca.pem".into(),
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.to_string(), "reading ca.pem: gone");
        assert!(e.source().is_some_and(|s| s.is::<std::io::Error>()));

        let value_err = crate::value::Endpoint::new("no-port", crate::Metadata::default())
            .expect_err("an address without a port");
        let message = value_err.to_string();
        let e = Error::from(value_err);
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        assert_eq!(e.to_string(), message);
        assert!(e.source().is_some_and(|s| s.is::<ValueError>()));
    }

    #[test]
    fn error_is_send_sync_static() {
        fn check<T: Send + Sync + 'static + StdError>() {}
        check::<Error>();
    }
}
