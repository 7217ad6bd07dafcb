//! Reading the prefix from etcd: the paginated ranged get that lists it at one revision, the
//! watch that follows it from the next revision, and the translation of watch responses.

use etcd_client::{GetOptions, KvClient, WatchClient, WatchOptions, WatchResponse, WatchStream};
use std::collections::BTreeMap;
use std::time::Duration;

use super::error::{EtcdError, timed};
use super::known::{Known, KvEvent};
use super::plan::KnownKv;

/// The end of the key range that holds every key starting with `prefix` (etcd's convention).
pub(crate) fn range_end(prefix: &str) -> Vec<u8> {
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

/// Lists every key under `dir` (`<prefix>/`) except `skip` (the claim), page by page, all pages
/// at the revision of the first one.
pub(crate) async fn list(
    kv: &mut KvClient,
    dir: &str,
    skip: &str,
    page: i64,
    timeout: Duration,
) -> Result<Known, EtcdError> {
    let end = range_end(dir);
    let mut start = dir.as_bytes().to_vec();
    let mut revision = 0;
    let mut kvs = BTreeMap::new();
    loop {
        let mut opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(page.max(1));
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = timed(
            "list the prefix",
            timeout,
            kv.get(start.clone(), Some(opts)),
        )
        .await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        for item in resp.kvs() {
            match item.key_str() {
                Ok(key) if key == skip => {}
                Ok(key) => {
                    let value = String::from_utf8_lossy(item.value()).into_owned();
                    kvs.insert(
                        key.to_owned(),
                        KnownKv {
                            value,
                            lease: item.lease(),
                        },
                    );
                }
                Err(_) => tracing::warn!(key = ?item.key(), "ignoring a key that is not UTF-8"),
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
    Ok(Known::listed(kvs, revision))
}

/// Opens a watch of every key under `dir` from `from_revision`, with progress notifications.
pub(crate) async fn watch(
    wc: &mut WatchClient,
    dir: &str,
    from_revision: i64,
    timeout: Duration,
) -> Result<WatchStream, EtcdError> {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from_revision)
        .with_progress_notify();
    timed("watch the prefix", timeout, wc.watch(dir, Some(opts))).await
}

/// What one watch response means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WatchNews {
    /// Changes (possibly none), and the revision up to which the watch has delivered all.
    Changes { events: Vec<KvEvent>, upto: i64 },
    /// The watch start revision was compacted away: list again.
    Compacted { revision: i64 },
    /// etcd cancelled the watch for another reason.
    Canceled(String),
}

/// Translates a watch response. Events whose key is not UTF-8 are skipped.
pub(crate) fn news(resp: &WatchResponse) -> WatchNews {
    if resp.compact_revision() > 0 {
        return WatchNews::Compacted {
            revision: resp.compact_revision(),
        };
    }
    if resp.canceled() {
        return WatchNews::Canceled(resp.cancel_reason().to_owned());
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
        // A deletion's key-value is a tombstone with version 0; a put has version >= 1. (This
        // avoids `Event::event_type`, which panics on an event type it does not know.)
        let value = (kv.version() > 0).then(|| String::from_utf8_lossy(kv.value()).into_owned());
        events.push(KvEvent {
            key: key.to_owned(),
            value,
            lease: kv.lease(),
            revision: kv.mod_revision(),
        });
    }
    if resp.events().is_empty() && !resp.created() {
        // A progress notification: everything up to the header revision was delivered.
        upto = resp.header().map_or(0, |h| h.revision());
    }
    WatchNews::Changes { events, upto }
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
