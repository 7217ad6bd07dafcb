//! The writer's etcd client: given ready-made, or dialed by the writer itself through
//! [`EtcdConnect`] before its first session, retrying with the writer's backoff until etcd
//! answers (or shutdown). Until then the writer reports [`WriterState::Connecting`] with the
//! reason of the last failed attempt (e.g. wrong credentials), which registrations show as
//! `EtcdUnavailable`, instead of the process crash-looping. Once dialed, the client reconnects
//! by itself; it is kept for the writer's lifetime.

use std::time::Duration;

use etcd_client::Client;
use registrar_etcd::{ConnectError, EtcdConnect};
use tokio::sync::watch;

use super::WriterState;
use crate::backoff::Backoff;

/// Longest wait for one connection attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the writer gets its etcd client.
#[derive(Clone)]
pub enum EtcdSource {
    /// A client built by the caller.
    Client(Box<Client>),
    /// Settings the writer dials with.
    Dial(Box<EtcdConnect>),
}

impl std::fmt::Debug for EtcdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdSource::Client(_) => f.write_str("EtcdSource::Client(..)"),
            EtcdSource::Dial(connect) => f.debug_tuple("EtcdSource::Dial").field(connect).finish(),
        }
    }
}

impl From<Client> for EtcdSource {
    fn from(client: Client) -> Self {
        EtcdSource::Client(Box::new(client))
    }
}

impl From<EtcdConnect> for EtcdSource {
    fn from(connect: EtcdConnect) -> Self {
        EtcdSource::Dial(Box::new(connect))
    }
}

/// The client: the given one, or one dialed with retries. `None` if shutdown came first.
pub(crate) async fn client(
    source: EtcdSource,
    backoff: &mut Backoff,
    state: &watch::Sender<WriterState>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Client> {
    let connect = match source {
        EtcdSource::Client(client) => return Some(*client),
        EtcdSource::Dial(connect) => connect,
    };
    loop {
        if *shutdown.borrow() {
            return None;
        }
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, connect.connect_with_health()).await;
        let error = match attempt {
            Ok(Ok((client, _health))) => {
                tracing::info!(endpoints = ?connect.endpoints(), "connected to etcd");
                state.send_replace(WriterState::Starting);
                backoff.reset();
                return Some(client);
            }
            Ok(Err(ConnectError::Etcd(e))) => explain(&e, connect.user_name()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out connecting to etcd".to_string(),
        };
        let delay = backoff.next_delay();
        tracing::warn!(error = %error, endpoints = ?connect.endpoints(), "cannot connect to etcd; retrying in {delay:?}");
        state.send_replace(WriterState::Connecting {
            reason: format!("cannot connect to etcd: {error}"),
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            // Err: the sender is gone, which also means stop.
            _ = shutdown.wait_for(|s| *s) => return None,
        }
    }
}

/// The connect error, with a hint naming the flags when etcd refused the credentials (the
/// password itself is never part of it).
fn explain(e: &etcd_client::Error, username: Option<&str>) -> String {
    let text = e.to_string();
    match username {
        Some(user) if text.contains("authentication failed") => format!(
            "{text} (etcd refused user {user:?}: check --etcd-username and the password in \
             --etcd-password-file or REGISTRAR_ETCD_PASSWORD)"
        ),
        _ => text,
    }
}
