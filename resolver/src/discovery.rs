//! Discovery: keeps the endpoint set of one target in sync with etcd.
//!
//! A [`Resolver`] lists `<target>/` at a revision, then watches from that revision + 1. A broken
//! stream is resumed from the last seen revision + 1; a compacted start revision makes it relist
//! and diff. While etcd is unreachable the last known set stays published (fail-static) and the
//! resolver reconnects with backoff. Consumers read [`Snapshot`]s through a
//! [`tokio::sync::watch`] channel, so a slow consumer never blocks the watcher: it just sees the
//! latest set when it looks again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Client, GetOptions, KeyValue, WatchOptions, WatchResponse};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::backoff::{Backoff, BackoffState};
use crate::error::{Error, etcd_call};
use crate::value::Endpoint;

/// Largest etcd response this crate decodes (a range over many big values can exceed tonic's
/// 4 MiB default; etcd's own per-value limit is 1.5 MiB by default).
const MAX_DECODING_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// The endpoint set of a target at one point in time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    revision: i64,
    endpoints: BTreeMap<String, Endpoint>,
}

impl Snapshot {
    /// The etcd revision this set reflects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Valid endpoints by their full etcd key.
    pub fn endpoints(&self) -> &BTreeMap<String, Endpoint> {
        &self.endpoints
    }

    /// The distinct addresses (several keys may name the same address).
    pub fn addrs(&self) -> BTreeSet<&str> {
        self.endpoints.values().map(|e| e.addr.as_str()).collect()
    }

    /// Number of endpoints (keys).
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there is no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// Options and constructor of a [`Resolver`].
#[derive(Clone)]
pub struct ResolverBuilder {
    client: Client,
    target: String,
    backoff: Backoff,
    request_timeout: Duration,
}

impl std::fmt::Debug for ResolverBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolverBuilder")
            .field("target", &self.target)
            .field("backoff", &self.backoff)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl ResolverBuilder {
    /// Backoff between attempts to reach etcd again (default 0.5 s ×1.6 up to 30 s, jitter 0.2).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Deadline for each list and watch-creation request to etcd (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Lists the target once (failing if etcd cannot be read) and starts watching it in a
    /// background task, which stops when the last clone of the [`Resolver`] is dropped.
    pub async fn build(self) -> Result<Resolver, Error> {
        let target = normalize_target(&self.target)?;
        let mut task = Discovery {
            client: self.client,
            prefix: format!("{target}/"),
            request_timeout: self.request_timeout,
            connected: Arc::new(AtomicBool::new(false)),
        };
        let (revision, endpoints) = task.list().await?;
        task.connected.store(true, Ordering::Relaxed);
        tracing::debug!(target = %target, revision, endpoints = endpoints.len(), "initial list");
        let snapshot = Snapshot {
            revision,
            endpoints,
        };
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        let connected = task.connected.clone();
        let backoff = self.backoff;
        let handle = tokio::spawn(task.run(tx, backoff));
        Ok(Resolver {
            inner: Arc::new(ResolverInner {
                target,
                rx,
                connected,
                task: handle.abort_handle(),
            }),
        })
    }
}

/// Watches the endpoints of one target in etcd (see the module docs). Cheap to clone; the
/// background task stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Resolver {
    inner: Arc<ResolverInner>,
}

#[derive(Debug)]
struct ResolverInner {
    target: String,
    rx: watch::Receiver<Arc<Snapshot>>,
    connected: Arc<AtomicBool>,
    task: AbortHandle,
}

impl Drop for ResolverInner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Resolver {
    /// A builder for a resolver of `target` (e.g. `registrar/shop/greeter`, without a trailing
    /// slash; keys are read from `<target>/`).
    pub fn builder(client: Client, target: impl Into<String>) -> ResolverBuilder {
        ResolverBuilder {
            client,
            target: target.into(),
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// A resolver of `target` with default options.
    pub async fn new(client: Client, target: impl Into<String>) -> Result<Resolver, Error> {
        Self::builder(client, target).build().await
    }

    /// The target, without a trailing slash.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// The latest endpoint set.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.rx.borrow().clone()
    }

    /// A receiver of endpoint sets: [`watch::Receiver::changed`] wakes on every new set.
    /// The sender closes when the resolver stops.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.rx.clone()
    }

    /// Whether the watch on etcd is currently established. While it is not, the last known set
    /// is kept.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }
}

/// Checks a target and strips trailing slashes.
pub(crate) fn normalize_target(target: &str) -> Result<String, Error> {
    let trimmed = target.trim_end_matches('/');
    let bad = |reason| Error::InvalidTarget {
        target: target.to_owned(),
        reason,
    };
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(bad("contains control characters"));
    }
    Ok(trimmed.to_owned())
}

/// How a watch ended.
enum WatchEnd {
    /// The start revision was compacted: relist.
    Compacted(i64),
    /// Anything else: resume from the last revision after a backoff.
    Broken(String),
}

struct Discovery {
    client: Client,
    prefix: String,
    request_timeout: Duration,
    connected: Arc<AtomicBool>,
}

impl Discovery {
    async fn list(&mut self) -> Result<(i64, BTreeMap<String, Endpoint>), Error> {
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE);
        let resp = etcd_call(
            self.request_timeout,
            kv.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut endpoints = BTreeMap::new();
        for kv in resp.kvs() {
            if let Some((key, endpoint)) = self.decode(kv) {
                endpoints.insert(key, endpoint);
            }
        }
        Ok((revision, endpoints))
    }

    /// Decodes a key-value, logging (once per value) and skipping what is invalid.
    fn decode(&self, kv: &KeyValue) -> Option<(String, Endpoint)> {
        let Ok(key) = kv.key_str() else {
            tracing::warn!(
                prefix = %self.prefix,
                key = ?String::from_utf8_lossy(&kv.key()[..kv.key().len().min(200)]),
                "skipping endpoint: key is not UTF-8"
            );
            return None;
        };
        match Endpoint::decode(kv.value()) {
            Ok(endpoint) => Some((key.to_owned(), endpoint)),
            Err(e) => {
                tracing::warn!(
                    key = ?truncate(key, 200),
                    value_len = kv.value().len(),
                    value_start = ?String::from_utf8_lossy(&kv.value()[..kv.value().len().min(64)]),
                    error = %e,
                    "skipping invalid endpoint value"
                );
                None
            }
        }
    }

    async fn run(mut self, tx: watch::Sender<Arc<Snapshot>>, backoff: Backoff) {
        let mut backoff = BackoffState::new(backoff);
        let mut revision = tx.borrow().revision;
        let mut endpoints = tx.borrow().endpoints.clone();
        let mut relist = false;
        loop {
            if relist {
                match self.list().await {
                    Ok((rev, fresh)) => {
                        log_diff(&self.prefix, &endpoints, &fresh);
                        revision = rev;
                        endpoints = fresh;
                        publish(&tx, revision, &endpoints);
                        relist = false;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(prefix = %self.prefix, error = %e, ?delay, "relisting failed; keeping the last known endpoints");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                }
            }
            let end = self
                .watch(&tx, &mut revision, &mut endpoints, &mut backoff)
                .await;
            self.connected.store(false, Ordering::Relaxed);
            match end {
                WatchEnd::Compacted(compact_revision) => {
                    tracing::warn!(
                        prefix = %self.prefix,
                        resume_revision = revision + 1,
                        compact_revision,
                        "watch start revision compacted; relisting"
                    );
                    relist = true;
                }
                WatchEnd::Broken(reason) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        prefix = %self.prefix,
                        %reason,
                        resume_revision = revision + 1,
                        ?delay,
                        "etcd watch broken; keeping the last known endpoints and retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Watches from `revision + 1`, applying events to `endpoints` and publishing snapshots,
    /// until the watch ends.
    async fn watch(
        &mut self,
        tx: &watch::Sender<Arc<Snapshot>>,
        revision: &mut i64,
        endpoints: &mut BTreeMap<String, Endpoint>,
        backoff: &mut BackoffState,
    ) -> WatchEnd {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(*revision + 1)
            .with_progress_notify();
        let mut client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE);
        let mut stream = match etcd_call(
            self.request_timeout,
            client.watch(self.prefix.as_str(), Some(options)),
        )
        .await
        {
            Ok(stream) => stream,
            Err(e) => return WatchEnd::Broken(e.to_string()),
        };
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return WatchEnd::Broken("watch stream closed by etcd".into()),
                Err(e) => return WatchEnd::Broken(e.to_string()),
            };
            if resp.compact_revision() > 0 {
                return WatchEnd::Compacted(resp.compact_revision());
            }
            if resp.canceled() {
                return WatchEnd::Broken(format!("watch canceled: {}", resp.cancel_reason()));
            }
            if resp.created() {
                self.connected.store(true, Ordering::Relaxed);
                backoff.reset();
                tracing::debug!(prefix = %self.prefix, from = *revision + 1, "watching");
            }
            if self.apply(&resp, revision, endpoints) {
                publish(tx, *revision, endpoints);
            }
        }
    }

    /// Applies a watch response; returns whether the endpoint set changed.
    fn apply(
        &self,
        resp: &WatchResponse,
        revision: &mut i64,
        endpoints: &mut BTreeMap<String, Endpoint>,
    ) -> bool {
        let mut changed = false;
        if resp.events().is_empty() && !resp.created() {
            // A progress notification: everything up to its header revision was delivered.
            if let Some(h) = resp.header() {
                *revision = (*revision).max(h.revision());
            }
            return false;
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            *revision = (*revision).max(kv.mod_revision());
            // A deletion carries the key with version 0 (classified this way rather than through
            // `event_type()`, which panics on event types it does not know).
            let update = if kv.version() == 0 {
                None
            } else {
                self.decode(kv)
            };
            let Ok(key) = kv.key_str() else { continue };
            match update {
                Some((key, endpoint)) => {
                    if endpoints.get(&key) != Some(&endpoint) {
                        tracing::info!(?key, addr = %endpoint.addr, "endpoint added or updated");
                        endpoints.insert(key, endpoint);
                        changed = true;
                    }
                }
                None => {
                    // A delete, or a put of an invalid value: the key no longer names a valid
                    // endpoint (as a relist would find).
                    if let Some(old) = endpoints.remove(key) {
                        tracing::info!(?key, addr = %old.addr, "endpoint removed");
                        changed = true;
                    }
                }
            }
        }
        changed
    }
}

fn publish(
    tx: &watch::Sender<Arc<Snapshot>>,
    revision: i64,
    endpoints: &BTreeMap<String, Endpoint>,
) {
    tx.send_if_modified(|current| {
        if current.endpoints == *endpoints {
            return false;
        }
        *current = Arc::new(Snapshot {
            revision,
            endpoints: endpoints.clone(),
        });
        true
    });
}

fn log_diff(prefix: &str, old: &BTreeMap<String, Endpoint>, new: &BTreeMap<String, Endpoint>) {
    let added = new.keys().filter(|k| !old.contains_key(*k)).count();
    let removed = old.keys().filter(|k| !new.contains_key(*k)).count();
    let updated = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .count();
    tracing::info!(
        prefix,
        added,
        removed,
        updated,
        total = new.len(),
        "relisted endpoints"
    );
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_normalized() {
        assert_eq!(normalize_target("a/b/c/").unwrap(), "a/b/c");
        assert_eq!(normalize_target("a").unwrap(), "a");
        assert!(normalize_target("").is_err());
        assert!(normalize_target("//").is_err());
        assert!(normalize_target("a\nb").is_err());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 2), "éé");
        assert_eq!(truncate("ab", 5), "ab");
    }

    #[test]
    fn snapshot_dedups_addrs() {
        let mut endpoints = BTreeMap::new();
        for (k, a) in [("t/1", "h:1"), ("t/2", "h:1"), ("t/3", "h:2")] {
            endpoints.insert(
                k.to_owned(),
                Endpoint::new(a, crate::Metadata::null()).unwrap(),
            );
        }
        let s = Snapshot {
            revision: 3,
            endpoints,
        };
        assert_eq!(s.len(), 3);
        assert_eq!(s.addrs().into_iter().collect::<Vec<_>>(), ["h:1", "h:2"]);
    }
}
