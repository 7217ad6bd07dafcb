//! [`Reflector`]: follows every key under a prefix of etcd.
//!
//! A reader calls [`Reflector::next`] in a loop and applies what it gets to its own picture:
//! [`Update::Listed`] replaces the picture with a full listing (first call, compaction, etcd's
//! history gone back, or a relist asked for), [`Update::Changes`] carries the events since the
//! previous update. An error leaves the reflector ready to resume: the caller backs off (its
//! own policy) and calls `next` again, which reconnects and watches from the revision after the
//! last one delivered, without listing again.
//!
//! Before each watch is (re)created, and every [`ReflectorBuilder::history_check`] while
//! watching, a cheap linearizable read (count only) checks that etcd still has the history
//! delivered so far ([`History`]); the header of the watch's `created` response is checked too.
//! When etcd's data was wiped or restored from an older snapshot, its revision (or raft term, or
//! cluster id) is behind what was seen, and a watch from the next revision would wait for
//! revisions the new store may never reach: the reflector logs one warning and lists again, and
//! the reader diffs the listing against its picture. So a reader recovers from a wipe within
//! one history check interval (default 5 s) plus one listing, connected or not in between.

use std::time::Duration;

use etcd_client::{Client, GetOptions, KvClient, WatchOptions, WatchResponse, WatchStream};
use tokio::time::Instant;

use crate::error::{EtcdError, timed};
use crate::history::{History, HistoryCheck};

/// Largest etcd response decoded (one page of big values can exceed tonic's 4 MiB default;
/// etcd's own per-request limit is 1.5 MiB by default, but a page holds many values).
const MAX_DECODING_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// One key under the prefix, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The full key. Keys that are not UTF-8 are skipped (with a warning).
    pub key: String,
    /// The raw value.
    pub value: Vec<u8>,
    /// The lease the key is attached to (0 for none).
    pub lease: i64,
    /// The revision of the key's last change.
    pub mod_revision: i64,
}

/// One change of a key under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEvent {
    /// The full key.
    pub key: String,
    /// The new value; `None` for a deletion.
    pub value: Option<Vec<u8>>,
    /// The lease of the new value (0 for a deletion or none).
    pub lease: i64,
    /// The revision of the change.
    pub revision: i64,
}

/// Why the prefix was listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListReason {
    /// The first listing.
    Initial,
    /// The reader asked for it ([`Reflector::relist`]).
    Asked,
    /// The revision to resume from was compacted away.
    Compacted {
        /// etcd's compaction revision.
        compact_revision: i64,
    },
    /// etcd's history went back (data wiped or restored): resuming would miss changes.
    HistoryWentBack {
        /// What showed it.
        why: String,
    },
}

/// What [`Reflector::next`] delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The whole content of the prefix at `revision`: replaces the reader's picture.
    Listed {
        /// Every key under the prefix, in key order.
        kvs: Vec<Kv>,
        /// The revision of the listing.
        revision: i64,
        /// Why it was listed.
        reason: ListReason,
    },
    /// A watch was (re)established from revision `from`: the reader is live again.
    Watching {
        /// The first revision the watch delivers.
        from: i64,
    },
    /// Changes since the previous update (possibly none: a progress notification); every
    /// change up to revision `upto` has been delivered.
    Changes {
        /// The changes, in revision order.
        events: Vec<KvEvent>,
        /// Delivered up to this revision.
        upto: i64,
    },
}

/// Options of a [`Reflector`].
#[derive(Clone)]
pub struct ReflectorBuilder {
    client: Client,
    dir: String,
    page: i64,
    request_timeout: Duration,
    history_check: Duration,
}

impl std::fmt::Debug for ReflectorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReflectorBuilder")
            .field("dir", &self.dir)
            .field("page", &self.page)
            .field("request_timeout", &self.request_timeout)
            .field("history_check", &self.history_check)
            .finish_non_exhaustive()
    }
}

impl ReflectorBuilder {
    /// Keys per page of the listing (default 1,000).
    pub fn page_size(mut self, page: i64) -> Self {
        self.page = page.max(1);
        self
    }

    /// Deadline of each list page, history check and watch creation (default 10 s). Never
    /// applied to the watch stream itself, which may stay idle for as long as nothing changes.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How often a live watch checks that etcd's history did not go back (default 5 s): the
    /// bound on how long a reader can miss a wipe or restore of etcd while its watch looks
    /// healthy.
    pub fn history_check(mut self, every: Duration) -> Self {
        self.history_check = every.max(Duration::from_millis(10));
        self
    }

    /// The reflector. It does nothing until [`Reflector::next`] is called.
    pub fn build(self) -> Reflector {
        let end = range_end(&self.dir);
        Reflector {
            kv: self
                .client
                .kv_client()
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            client: self.client,
            dir: self.dir,
            end,
            page: self.page,
            request_timeout: self.request_timeout,
            history_check: self.history_check,
            history: History::default(),
            delivered: 0,
            relist: Some(ListReason::Initial),
            anchor: None,
            stream: None,
            next_check: Instant::now(),
        }
    }
}

/// Follows every key under a prefix (see the module docs).
pub struct Reflector {
    client: Client,
    kv: KvClient,
    dir: String,
    end: Vec<u8>,
    page: i64,
    request_timeout: Duration,
    history_check: Duration,
    history: History,
    /// Every change up to this revision has been delivered.
    delivered: i64,
    /// Set when the next call must list.
    relist: Option<ListReason>,
    /// The newest change delivered, checked against etcd before a watch is resumed.
    anchor: Option<Anchor>,
    stream: Option<WatchStream>,
    next_check: Instant,
}

impl std::fmt::Debug for Reflector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reflector")
            .field("dir", &self.dir)
            .field("delivered", &self.delivered)
            .field("watching", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}

/// The newest change delivered: a key and the revision at which it was put or deleted. If
/// etcd still has the history delivered, reading the key at that revision shows exactly that
/// change; after a wipe or a restore it shows something else, or the revision is in etcd's
/// future. Revision numbers alone cannot tell when the new store has already caught up.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Anchor {
    key: String,
    revision: i64,
    deleted: bool,
}

/// What woke a watching reflector.
enum Woken {
    Message(Result<Option<WatchResponse>, etcd_client::Error>),
    Check,
}

impl Reflector {
    /// A reflector of every key starting with `dir` (e.g. `registrar/shop/greeter/`, with
    /// the trailing slash, so that `greeter-canary` is not included).
    pub fn builder(client: Client, dir: impl Into<String>) -> ReflectorBuilder {
        ReflectorBuilder {
            client,
            dir: dir.into(),
            page: 1000,
            request_timeout: Duration::from_secs(10),
            history_check: Duration::from_secs(5),
        }
    }

    /// The prefix followed.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// Every change up to this revision has been delivered (0 before the first listing).
    pub fn revision(&self) -> i64 {
        self.delivered
    }

    /// Whether a watch is established.
    pub fn is_watching(&self) -> bool {
        self.stream.is_some()
    }

    /// Makes the next call list the prefix again (e.g. after the reader lost its picture).
    pub fn relist(&mut self) {
        self.stream = None;
        self.relist.get_or_insert(ListReason::Asked);
    }

    /// Drops the watch stream (e.g. while the reader pauses); the next call resumes it.
    pub fn disconnect(&mut self) {
        self.stream = None;
    }

    /// The next update. Cancel-safe: a call dropped before it returns (e.g. in a `select!`)
    /// loses nothing that the next call does not deliver (at worst a progress notification).
    pub async fn next(&mut self) -> Result<Update, EtcdError> {
        loop {
            if self.relist.is_some() {
                self.stream = None;
                // The reason is taken only once the listing is in hand: a call dropped
                // meanwhile (the reader selects on other things) lists again next time.
                let (kvs, revision) = self.list().await?;
                let reason = self.relist.take().unwrap_or(ListReason::Asked);
                self.delivered = revision;
                self.anchor = kvs
                    .iter()
                    .max_by_key(|kv| kv.mod_revision)
                    .map(|kv| Anchor {
                        key: kv.key.clone(),
                        revision: kv.mod_revision,
                        deleted: false,
                    });
                self.next_check = Instant::now() + self.history_check;
                return Ok(Update::Listed {
                    kvs,
                    revision,
                    reason,
                });
            }
            if self.stream.is_none() {
                // (Re)connecting: etcd must still have the history delivered so far.
                if self.history_went_back().await? || self.anchor_lost().await? {
                    continue;
                }
                let from = self.delivered + 1;
                let options = WatchOptions::new()
                    .with_range(self.end.clone())
                    .with_start_revision(from)
                    .with_progress_notify();
                let mut wc = self
                    .client
                    .watch_client()
                    .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE);
                let stream = timed(
                    "watch the prefix",
                    self.request_timeout,
                    wc.watch(self.dir.as_str(), Some(options)),
                )
                .await?;
                self.stream = Some(stream);
                self.next_check = Instant::now() + self.history_check;
                return Ok(Update::Watching { from });
            }
            let next_check = self.next_check;
            let woken = match self.stream.as_mut() {
                Some(stream) => tokio::select! {
                    m = stream.message() => Woken::Message(m),
                    () = tokio::time::sleep_until(next_check) => Woken::Check,
                },
                None => continue,
            };
            match woken {
                Woken::Check => {
                    self.next_check = Instant::now() + self.history_check;
                    if let Err(e) = self.history_went_back().await {
                        self.stream = None;
                        return Err(e);
                    }
                }
                Woken::Message(Ok(Some(resp))) => {
                    if let Some(update) = self.on_response(&resp).await? {
                        return Ok(update);
                    }
                }
                Woken::Message(Ok(None)) => {
                    self.stream = None;
                    return Err(EtcdError::Watch("watch stream closed by etcd".into()));
                }
                Woken::Message(Err(e)) => {
                    self.stream = None;
                    return Err(EtcdError::etcd("watch the prefix")(e));
                }
            }
        }
    }

    /// Handles one watch response: an update to deliver, or `None` to read on.
    async fn on_response(&mut self, resp: &WatchResponse) -> Result<Option<Update>, EtcdError> {
        if resp.compact_revision() > 0 {
            tracing::warn!(
                dir = %self.dir,
                resume_revision = self.delivered + 1,
                compact_revision = resp.compact_revision(),
                "watch start revision compacted; relisting"
            );
            self.relist = Some(ListReason::Compacted {
                compact_revision: resp.compact_revision(),
            });
            self.stream = None;
            return Ok(None);
        }
        if resp.canceled() {
            self.stream = None;
            return Err(EtcdError::Watch(format!(
                "canceled by etcd: {}",
                resp.cancel_reason()
            )));
        }
        // Every response carries the answering member's current revision. One behind the
        // history seen means a watch from the future (etcd went back) or a member lagging for a
        // moment; a linearizable read tells which.
        if let Some(h) = resp.header() {
            let mut probe = self.history;
            match probe.check_header(Some(h)) {
                HistoryCheck::Consistent => self.history = probe,
                HistoryCheck::WentBack { .. } => {
                    if self.history_went_back().await? {
                        return Ok(None);
                    }
                }
            }
        }
        let mut events = Vec::with_capacity(resp.events().len());
        let mut upto = 0;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            upto = upto.max(kv.mod_revision());
            let Ok(key) = kv.key_str() else {
                tracing::warn!(key = ?kv.key(), "ignoring a change of a key that is not UTF-8");
                continue;
            };
            // A deletion's key-value is a tombstone with version 0; a put has version >= 1.
            // (This avoids `Event::event_type`, which panics on an event type it does not know.)
            events.push(KvEvent {
                key: key.to_owned(),
                value: (kv.version() > 0).then(|| kv.value().to_vec()),
                lease: kv.lease(),
                revision: kv.mod_revision(),
            });
        }
        if resp.events().is_empty() {
            if resp.created() {
                return Ok(None);
            }
            // A progress notification: everything up to the header revision was delivered.
            upto = resp.header().map_or(0, |h| h.revision());
        }
        if let Some(last) = events.last() {
            self.anchor = Some(Anchor {
                key: last.key.clone(),
                revision: last.revision,
                deleted: last.value.is_none(),
            });
        }
        self.delivered = self.delivered.max(upto);
        self.history.saw_revision(self.delivered);
        Ok(Some(Update::Changes {
            events,
            upto: self.delivered,
        }))
    }

    /// Reads etcd's current header with a cheap linearizable request and compares it with the
    /// history delivered; when it went back, logs it, drops the watch and schedules a listing.
    async fn history_went_back(&mut self) -> Result<bool, EtcdError> {
        let resp = timed(
            "check etcd's revision",
            self.request_timeout,
            self.kv.get(
                self.dir.as_str(),
                Some(
                    GetOptions::new()
                        .with_range(self.end.clone())
                        .with_count_only(),
                ),
            ),
        )
        .await?;
        self.history.saw_revision(self.delivered);
        match self.history.check_header(resp.header()) {
            HistoryCheck::Consistent => Ok(false),
            HistoryCheck::WentBack { why } => Ok(self.went_back(why)),
        }
    }

    /// Reads the newest delivered change again at its revision; when etcd shows another history
    /// (see [`Anchor`]), logs it, and schedules a listing.
    async fn anchor_lost(&mut self) -> Result<bool, EtcdError> {
        let Some(anchor) = self.anchor.clone() else {
            return Ok(false);
        };
        let read = tokio::time::timeout(
            self.request_timeout,
            self.kv.get(
                anchor.key.as_str(),
                Some(GetOptions::new().with_revision(anchor.revision)),
            ),
        )
        .await;
        let why = match read {
            Err(_) => {
                return Err(EtcdError::Timeout {
                    what: "check the last change seen",
                    after: self.request_timeout,
                });
            }
            Ok(Err(etcd_client::Error::GRpcStatus(status)))
                if status.message().contains("future revision") =>
            {
                format!(
                    "revision {} of {:?} is in etcd's future",
                    anchor.revision, anchor.key
                )
            }
            // Compacted: nothing to compare; resuming reports the compaction and lists again.
            Ok(Err(etcd_client::Error::GRpcStatus(status)))
                if status.message().contains("compacted") =>
            {
                return Ok(false);
            }
            Ok(Err(e)) => return Err(EtcdError::etcd("check the last change seen")(e)),
            Ok(Ok(resp)) => {
                let found = resp.kvs().first().map(|kv| kv.mod_revision());
                let same = if anchor.deleted {
                    found.is_none()
                } else {
                    found == Some(anchor.revision)
                };
                if same {
                    return Ok(false);
                }
                format!(
                    "the change of {:?} at revision {} is not in etcd's history",
                    anchor.key, anchor.revision
                )
            }
        };
        Ok(self.went_back(why))
    }

    /// etcd no longer has the history delivered: logs why, drops the watch and schedules a
    /// listing. Always true.
    fn went_back(&mut self, why: String) -> bool {
        tracing::warn!(
            dir = %self.dir,
            %why,
            delivered = self.delivered,
            "etcd's history went back (its data was wiped or restored from an older \
             snapshot); listing again instead of resuming"
        );
        self.stream = None;
        self.relist = Some(ListReason::HistoryWentBack { why });
        true
    }

    /// Lists every key under the prefix, page by page, all pages at the revision of the first.
    async fn list(&mut self) -> Result<(Vec<Kv>, i64), EtcdError> {
        let mut start = self.dir.as_bytes().to_vec();
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let mut opts = GetOptions::new()
                .with_range(self.end.clone())
                .with_limit(self.page);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp = timed(
                "list the prefix",
                self.request_timeout,
                self.kv.get(start.clone(), Some(opts)),
            )
            .await?;
            if revision == 0 {
                let h = resp.header();
                revision = h.map_or(0, |h| h.revision());
                // A listing starts a new history (whatever was seen before, e.g. before a wipe).
                self.history.reset(
                    h.map_or(0, |h| h.cluster_id()),
                    h.map_or(0, |h| h.raft_term()),
                    revision,
                );
            }
            for item in resp.kvs() {
                match item.key_str() {
                    Ok(key) => kvs.push(Kv {
                        key: key.to_owned(),
                        value: item.value().to_vec(),
                        lease: item.lease(),
                        mod_revision: item.mod_revision(),
                    }),
                    Err(_) => {
                        tracing::warn!(key = ?item.key(), "ignoring a key that is not UTF-8");
                    }
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok((kvs, revision))
    }
}

/// The end of the key range that holds every key starting with `prefix` (etcd's convention).
pub fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only for an empty or all-0xff prefix: "to the end of the keyspace".
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_increments_last_byte() {
        assert_eq!(range_end("registrar/"), b"registrar0".to_vec());
        assert_eq!(range_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(range_end(""), vec![0]);
    }
}
