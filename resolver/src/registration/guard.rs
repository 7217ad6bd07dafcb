//! The guard of one registered key: follows the key in etcd (a [`Reflector`] on it, which
//! survives reconnects, compactions and a wipe of etcd) and reports what it sees, so that a key
//! deleted or overwritten by someone else while the lease lives is put back.
//!
//! The guard only observes; the lease task decides whether to write (it knows the current
//! lease and whether the key is still wanted), so a key deregistered meanwhile is never
//! restored.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::Client;
use registrar_etcd::{Reflector, Update};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::backoff::{Backoff, BackoffState};

/// What a guard saw of its key.
#[derive(Debug)]
pub(super) struct Seen {
    /// The key.
    pub key: String,
    /// `None` when the key is absent; else whether the value is ours and its lease.
    pub state: Option<(bool, i64)>,
}

/// The running guards of one lease task, by key; dropping it stops them.
#[derive(Default)]
pub(super) struct Guards(BTreeMap<String, AbortHandle>);

impl Guards {
    /// Starts guarding `key`, whose value must be `value`.
    pub fn start(
        &mut self,
        client: &Client,
        key: &str,
        value: &str,
        backoff: Backoff,
        request_timeout: Duration,
        report: &mpsc::UnboundedSender<Seen>,
    ) {
        let guard = Guard {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            reflector: Reflector::builder(client.clone(), key)
                .request_timeout(request_timeout)
                .build(),
            backoff: BackoffState::new(backoff),
            report: report.clone(),
        };
        let handle = tokio::spawn(guard.run()).abort_handle();
        if let Some(old) = self.0.insert(key.to_owned(), handle) {
            old.abort();
        }
    }

    /// Stops guarding `key`.
    pub fn stop(&mut self, key: &str) {
        if let Some(handle) = self.0.remove(key) {
            handle.abort();
        }
    }

    /// Stops every guard.
    pub fn stop_all(&mut self) {
        for (_, handle) in std::mem::take(&mut self.0) {
            handle.abort();
        }
    }
}

impl Drop for Guards {
    fn drop(&mut self) {
        self.stop_all();
    }
}

struct Guard {
    key: String,
    value: Vec<u8>,
    /// Follows every key starting with `key`; only `key` itself is looked at.
    reflector: Reflector,
    backoff: BackoffState,
    report: mpsc::UnboundedSender<Seen>,
}

impl Guard {
    async fn run(mut self) {
        loop {
            let update = match self.reflector.next().await {
                Ok(update) => update,
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    tracing::debug!(key = %self.key, error = %e, ?delay, "watching the registered key failed; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            self.backoff.reset();
            let seen: Vec<Option<(bool, i64)>> = match update {
                Update::Listed { kvs, .. } => vec![
                    kvs.iter()
                        .find(|kv| kv.key == self.key)
                        .map(|kv| (kv.value == self.value, kv.lease)),
                ],
                Update::Changes { events, .. } => events
                    .iter()
                    .filter(|e| e.key == self.key)
                    .map(|e| e.value.as_ref().map(|v| (*v == self.value, e.lease)))
                    .collect(),
                Update::Watching { .. } => Vec::new(),
            };
            // Only the newest state matters.
            if let Some(state) = seen.into_iter().last() {
                let seen = Seen {
                    key: self.key.clone(),
                    state,
                };
                if self.report.send(seen).is_err() {
                    return;
                }
            }
        }
    }
}
