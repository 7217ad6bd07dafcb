//! Discovery: keeps the endpoint set of one target in sync with etcd.
//!
//! A [`Resolver`] follows `<target>/` through the shared etcd reflector
//! ([`registrar_etcd::Reflector`]): a paginated list at a revision, then a watch from that
//! revision + 1. A broken stream is resumed from the last seen revision + 1; a compacted start
//! revision, or etcd's history going back (data wiped or restored from an older snapshot,
//! checked on every reconnect and every [`ResolverBuilder::history_check`]), makes it list
//! again and diff. While etcd is unreachable the last known set stays published (fail-static) and the
//! resolver reconnects with backoff. Consumers read [`Snapshot`]s through a
//! [`tokio::sync::watch`] channel, so a slow consumer never blocks the watcher: it just sees the
//! latest set when it looks again.
//!
//! The set is a persistent map ([`Endpoints`]): each watch response updates it in place of the
//! keys it names and publishes a snapshot sharing the rest with the one before, so an update
//! costs in proportion to its changes, not to the size of the set (100,000 keys stay cheap).

mod endpoints;

pub(crate) use endpoints::Change;
pub use endpoints::Endpoints;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use registrar_etcd::{Kv, KvEvent, ListReason, Reflector, Update};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::backoff::{Backoff, BackoffState};
use crate::error::Error;
use crate::value::Endpoint;

/// The endpoint set of a target at one point in time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    revision: i64,
    endpoints: Endpoints,
}

impl Snapshot {
    /// The set `endpoints` at `revision`.
    pub(crate) fn new(revision: i64, endpoints: Endpoints) -> Self {
        Snapshot {
            revision,
            endpoints,
        }
    }

    /// The etcd revision this set reflects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Valid endpoints by their full etcd key (a persistent map shared with the resolver's
    /// other snapshots; [`Endpoints::to_btree_map`] copies it into a standard one).
    pub fn endpoints(&self) -> &Endpoints {
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
    history_check: Duration,
}

impl std::fmt::Debug for ResolverBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolverBuilder")
            .field("target", &self.target)
            .field("backoff", &self.backoff)
            .field("request_timeout", &self.request_timeout)
            .field("history_check", &self.history_check)
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

    /// How often a live watch checks that etcd's history did not go back (default 5 s). After
    /// etcd's data is wiped or restored from an older snapshot, a watch resumed from the last
    /// revision seen would wait for revisions the new store has not reached; the resolver
    /// notices within this interval (at once when it reconnects), lists again and diffs.
    pub fn history_check(mut self, every: Duration) -> Self {
        self.history_check = every;
        self
    }

    /// Lists the target once (failing if etcd cannot be read) and starts watching it in a
    /// background task, which stops when the last clone of the [`Resolver`] is dropped.
    pub async fn build(self) -> Result<Resolver, Error> {
        let target = normalize_target(&self.target)?;
        let mut reflector = Reflector::builder(self.client, format!("{target}/"))
            .request_timeout(self.request_timeout)
            .history_check(self.history_check)
            .build();
        let (revision, endpoints) = match reflector.next().await? {
            Update::Listed { kvs, revision, .. } => (revision, Discovery::decode_all(&kvs)),
            // The first update of a reflector is its listing.
            other => {
                return Err(Error::config(format!(
                    "unexpected first update from etcd: {other:?}"
                )));
            }
        };
        tracing::debug!(target = %target, revision, endpoints = endpoints.len(), "initial list");
        let snapshot = Snapshot {
            revision,
            endpoints: endpoints.clone(),
        };
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        let connected = watch::Sender::new(true);
        let task = Discovery {
            reflector,
            connected: connected.clone(),
        };
        let handle = tokio::spawn(task.run(tx, self.backoff, endpoints));
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
    connected: watch::Sender<bool>,
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
            history_check: Duration::from_secs(5),
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
        *self.inner.connected.borrow()
    }

    /// A receiver of [`is_connected`](Self::is_connected), woken when it changes.
    pub(crate) fn connection(&self) -> watch::Receiver<bool> {
        self.inner.connected.subscribe()
    }
}

/// Checks a target and strips trailing slashes.
pub(crate) fn normalize_target(target: &str) -> Result<String, Error> {
    let trimmed = target.trim_end_matches('/');
    let bad = |reason| Error::invalid_target(target, reason);
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(bad("contains control characters"));
    }
    Ok(trimmed.to_owned())
}

/// The background task: applies the reflector's updates to the endpoint set and publishes it.
struct Discovery {
    reflector: Reflector,
    connected: watch::Sender<bool>,
}

impl Discovery {
    /// Decodes a listing into the endpoint set, skipping (and logging) invalid values.
    fn decode_all(kvs: &[Kv]) -> Endpoints {
        kvs.iter()
            .filter_map(|kv| decode(&kv.key, &kv.value).map(|e| (kv.key.clone(), e)))
            .collect()
    }

    async fn run(
        mut self,
        tx: watch::Sender<Arc<Snapshot>>,
        backoff: Backoff,
        mut endpoints: Endpoints,
    ) {
        let mut backoff = BackoffState::new(backoff);
        let prefix = self.reflector.dir().to_owned();
        loop {
            match self.reflector.next().await {
                Ok(Update::Listed {
                    kvs,
                    revision,
                    reason,
                }) => {
                    let fresh = Self::decode_all(&kvs);
                    if relist(&prefix, &reason, &mut endpoints, &fresh) {
                        publish(&tx, revision, &endpoints);
                    }
                }
                Ok(Update::Watching { from }) => {
                    self.connected
                        .send_if_modified(|c| !std::mem::replace(c, true));
                    backoff.reset();
                    tracing::debug!(prefix = %prefix, from, "watching");
                }
                Ok(Update::Changes { events, upto }) => {
                    let applied = apply(&events, &mut endpoints);
                    if applied.changed() {
                        applied.log(&prefix, upto, endpoints.len());
                        publish(&tx, upto, &endpoints);
                    }
                }
                Err(e) => {
                    self.connected
                        .send_if_modified(|c| std::mem::replace(c, false));
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        prefix = %prefix,
                        error = %e,
                        resume_revision = self.reflector.revision() + 1,
                        ?delay,
                        "etcd unavailable; keeping the last known endpoints and retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Decodes one value, logging and skipping what is invalid.
fn decode(key: &str, value: &[u8]) -> Option<Endpoint> {
    match Endpoint::decode(value) {
        Ok(endpoint) => Some(endpoint),
        Err(e) => {
            tracing::warn!(
                key = ?truncate(key, 200),
                value_len = value.len(),
                value_start = ?String::from_utf8_lossy(&value[..value.len().min(64)]),
                error = %e,
                "skipping invalid endpoint value"
            );
            None
        }
    }
}

/// What one watch response changed in the endpoint set.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    added: usize,
    updated: usize,
    removed: usize,
    /// The first few keys changed (for the log line).
    sample: Vec<String>,
}

/// Keys named in the one-line summary of a watch response.
const SAMPLE_KEYS: usize = 3;

impl Applied {
    /// Whether the endpoint set changed.
    pub(crate) fn changed(&self) -> bool {
        self.added + self.updated + self.removed > 0
    }

    fn note(&mut self, key: &str) {
        if self.sample.len() < SAMPLE_KEYS {
            self.sample.push(truncate(key, 200).to_owned());
        }
    }

    /// One INFO line for the whole response (each endpoint is logged at DEBUG).
    fn log(&self, prefix: &str, revision: i64, total: usize) {
        tracing::info!(
            prefix,
            revision,
            added = self.added,
            updated = self.updated,
            removed = self.removed,
            total,
            keys = ?self.sample,
            "endpoints changed"
        );
    }
}

/// Applies the events of one watch response to the set (O(log n) per event; the set's other
/// snapshots are not touched); what changed.
pub(crate) fn apply(events: &[KvEvent], endpoints: &mut Endpoints) -> Applied {
    let mut applied = Applied::default();
    for event in events {
        let update = event.value.as_deref().and_then(|v| decode(&event.key, v));
        match update {
            Some(endpoint) => {
                if endpoints.get(&event.key) != Some(&endpoint) {
                    tracing::debug!(key = ?event.key, addr = %endpoint.addr, "endpoint added or updated");
                    match endpoints.insert(event.key.clone(), endpoint) {
                        Some(_) => applied.updated += 1,
                        None => applied.added += 1,
                    }
                    applied.note(&event.key);
                }
            }
            None => {
                // A delete, or a put of an invalid value: the key no longer names a valid
                // endpoint (as a relist would find).
                if let Some(old) = endpoints.remove(&event.key) {
                    tracing::debug!(key = ?event.key, addr = %old.addr, "endpoint removed");
                    applied.removed += 1;
                    applied.note(&event.key);
                }
            }
        }
    }
    applied
}

/// Publishes `endpoints` at `revision` unless the current snapshot holds the same set (a
/// comparison that skips what the two share).
pub(crate) fn publish(tx: &watch::Sender<Arc<Snapshot>>, revision: i64, endpoints: &Endpoints) {
    tx.send_if_modified(|current| {
        if current.endpoints == *endpoints {
            return false;
        }
        *current = Arc::new(Snapshot::new(revision, endpoints.clone()));
        true
    });
}

/// Brings `endpoints` to a fresh listing, changing only the keys that differ (so the new set
/// still shares the rest with the earlier snapshots); whether anything changed.
fn relist(prefix: &str, reason: &ListReason, endpoints: &mut Endpoints, fresh: &Endpoints) -> bool {
    let mut next = endpoints.clone();
    let (mut added, mut removed, mut updated) = (0usize, 0usize, 0usize);
    for Change { key, old, new } in endpoints.changes(fresh) {
        match (old, new) {
            (None, Some(e)) => {
                added += 1;
                next.insert(key.to_owned(), e.clone());
            }
            (Some(_), Some(e)) => {
                updated += 1;
                next.insert(key.to_owned(), e.clone());
            }
            (Some(_), None) => {
                removed += 1;
                next.remove(key);
            }
            (None, None) => {}
        }
    }
    if *reason != ListReason::Initial {
        tracing::info!(
            prefix,
            added,
            removed,
            updated,
            total = next.len(),
            ?reason,
            "relisted endpoints"
        );
    }
    *endpoints = next;
    added + removed + updated > 0
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
        let mut endpoints = Endpoints::new();
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
