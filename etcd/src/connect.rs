//! Building an etcd client from the usual settings: several endpoints, TLS (CA, client
//! certificate and key, server name) and user/password, with keepalive defaults that let a
//! watch notice a dead etcd member, and a guard that keeps dead or frozen members out of the
//! client's balanced endpoint set ([`crate::members`]).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::error::ConnectError as Error;
use crate::members::{self, MemberHealth, ProbeSettings};

/// etcd connection settings; [`options`](Self::options) gives the
/// [`etcd_client::ConnectOptions`], [`connect`](Self::connect) a client.
///
/// ```no_run
/// # async fn f() -> Result<(), registrar_etcd::ConnectError> {
/// use registrar_etcd::EtcdConnect;
/// let client = EtcdConnect::new(["https://192.0.2.11:2379", "https://192.0.2.12:2379"])
///     .ca_file("/etc/etcd/ca.crt")?
///     .identity_files("/etc/etcd/client.crt", "/etc/etcd/client.key")?
///     .user("registrar", "secret")
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdConnect {
    endpoints: Vec<String>,
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain_name: Option<String>,
    user: Option<(String, String)>,
    connect_timeout: Duration,
    keep_alive: Option<(Duration, Duration)>,
    request_timeout: Option<Duration>,
    member_probe: Option<ProbeSettings>,
}

impl fmt::Debug for EtcdConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConnect")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.is_tls())
            .field("client_identity", &self.identity.is_some())
            .field("domain_name", &self.domain_name)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("connect_timeout", &self.connect_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("request_timeout", &self.request_timeout)
            .field("member_probe", &self.member_probe)
            .finish()
    }
}

impl EtcdConnect {
    /// Settings for the given endpoints (`http://host:port`, `https://host:port`, or
    /// `host:port`, which gets `https://` when TLS is configured). Defaults: 5 s connect timeout,
    /// HTTP/2 keepalive every 10 s with a 5 s timeout, no per-request timeout, members probed
    /// with [`ProbeSettings::default`].
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdConnect {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ca: None,
            identity: None,
            domain_name: None,
            user: None,
            connect_timeout: Duration::from_secs(5),
            keep_alive: Some((Duration::from_secs(10), Duration::from_secs(5))),
            request_timeout: None,
            member_probe: Some(ProbeSettings::default()),
        }
    }

    /// Trust this CA (PEM) for the server certificates; enables TLS.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Reads the CA from a PEM file; enables TLS.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<Self, Error> {
        let pem = read(path.as_ref())?;
        Ok(self.ca_pem(pem))
    }

    /// Authenticate with this client certificate and key (PEM); enables TLS.
    pub fn identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Reads the client certificate and key from PEM files; enables TLS.
    pub fn identity_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        let cert = read(cert.as_ref())?;
        let key = read(key.as_ref())?;
        Ok(self.identity_pem(cert, key))
    }

    /// The name to verify in the server certificates (when endpoints are IP addresses or the
    /// certificates name something else); enables TLS.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    /// Authenticate as this etcd user.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Timeout of establishing a connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// HTTP/2 keepalive (ping interval, ack timeout), `None` to disable. etcd closes connections
    /// that ping more often than every 5 s by default.
    pub fn keep_alive(mut self, keep_alive: Option<(Duration, Duration)>) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// A deadline for the answer to each etcd request. Unset by default: the readers and
    /// writers of this project put their own deadline on each unary request. It bounds only the
    /// wait for a response to start, so it never cuts an open stream: a watch idle for longer
    /// stays up (`etcd/tests/connect.rs`).
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How the members are probed to keep dead or frozen ones out of the balanced set
    /// ([`crate::members`]); `None` balances over all endpoints blindly, as etcd-client does.
    pub fn member_probe(mut self, probe: Option<ProbeSettings>) -> Self {
        self.member_probe = probe;
        self
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The etcd user name, if one is set (never the password).
    pub fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|(name, _)| name.as_str())
    }

    /// Whether TLS is configured.
    pub fn is_tls(&self) -> bool {
        self.ca.is_some() || self.identity.is_some() || self.domain_name.is_some()
    }

    /// The etcd client options.
    pub fn options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new().with_connect_timeout(self.connect_timeout);
        if let Some((interval, timeout)) = self.keep_alive {
            options = options
                .with_keep_alive(interval, timeout)
                .with_keep_alive_while_idle(true);
        }
        if let Some(timeout) = self.request_timeout {
            options = options.with_timeout(timeout);
        }
        if let Some((name, password)) = &self.user {
            options = options.with_user(name.clone(), password.clone());
        }
        if self.is_tls() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(name) = &self.domain_name {
                tls = tls.domain_name(name.clone());
            }
            options = options.with_tls(tls);
        }
        options
    }

    /// Checks the settings and connects (authenticating when a user is set). Unless
    /// [`member_probe`](Self::member_probe) is `None`, a background task keeps unhealthy members
    /// out of the client's balanced set for as long as a clone of the client lives.
    pub async fn connect(&self) -> Result<Client, Error> {
        Ok(self.connect_with_health().await?.0)
    }

    /// Like [`connect`](Self::connect), also returning a view of the members' health (`None`
    /// when member probing is off).
    pub async fn connect_with_health(&self) -> Result<(Client, Option<MemberHealth>), Error> {
        if self.endpoints.is_empty() {
            return Err(Error::Config("no etcd endpoints".into()));
        }
        if self.is_tls()
            && let Some(plain) = self.endpoints.iter().find(|e| e.starts_with("http://"))
        {
            return Err(Error::Config(format!(
                "TLS is configured but endpoint {plain} is http://"
            )));
        }
        Ok(match self.member_probe {
            Some(probe) => {
                let (client, health) =
                    members::connect(&self.endpoints, self.options(), probe).await?;
                (client, Some(health))
            }
            None => (
                Client::connect(&self.endpoints, Some(self.options())).await?,
                None,
            ),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let c = EtcdConnect::new(["h:1"]).user("u", "hunter2");
        let text = format!("{c:?}");
        assert!(text.contains("\"u\""));
        assert!(!text.contains("hunter2"));
    }

    #[test]
    fn tls_is_enabled_by_any_tls_setting() {
        assert!(!EtcdConnect::new(["h:1"]).is_tls());
        assert!(EtcdConnect::new(["h:1"]).ca_pem("x").is_tls());
        assert!(EtcdConnect::new(["h:1"]).domain_name("etcd").is_tls());
        assert!(EtcdConnect::new(["h:1"]).identity_pem("c", "k").is_tls());
    }

    #[test]
    fn missing_files_are_reported_with_their_path() {
        let err = EtcdConnect::new(["h:1"])
            .ca_file("/nonexistent/ca.pem")
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[tokio::test]
    async fn rejects_plain_endpoints_with_tls_and_no_endpoints() {
        let result = EtcdConnect::new(["http://127.0.0.1:1"])
            .ca_pem("x")
            .connect()
            .await;
        assert!(matches!(result, Err(Error::Config(_))));
        let result = EtcdConnect::new(Vec::<String>::new()).connect().await;
        assert!(matches!(result, Err(Error::Config(_))));
    }
}
