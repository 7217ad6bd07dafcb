//! The etcd side: a watch on `<prefix>/` from a separate client, from a given revision on,
//! that resumes from the last revision it saw when etcd restarts (the data is kept, so no event
//! is lost). Each event is kept with its revision and whether it was a put of the value the key
//! already had (a no-op write: pure write amplification).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};

/// One event.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub revision: i64,
    pub delete: bool,
    /// A put of the value the key already had.
    pub noop: bool,
}

/// Everything the watch saw.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    pub events: Vec<Seen>,
    /// Times the watch was re-established after etcd went away.
    pub reconnects: u64,
}

impl Recording {
    pub fn puts(&self) -> usize {
        self.events.iter().filter(|e| !e.delete).count()
    }

    pub fn deletes(&self) -> usize {
        self.events.iter().filter(|e| e.delete).count()
    }

    pub fn noop_puts(&self) -> usize {
        self.events.iter().filter(|e| e.noop).count()
    }

    pub fn revisions(&self) -> usize {
        self.events
            .iter()
            .map(|e| e.revision)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Events at `revision`.
    pub fn at(&self, revision: i64) -> usize {
        self.events
            .iter()
            .filter(|e| e.revision == revision)
            .count()
    }
}

/// Watches `prefix/` (the `.owner` claim excluded) from `after + 1`, with `known` as the keys'
/// values at `after`.
pub fn start(
    endpoint: String,
    prefix: String,
    after: i64,
    mut known: BTreeMap<String, Vec<u8>>,
) -> Arc<Mutex<Recording>> {
    let rec = Arc::new(Mutex::new(Recording::default()));
    let out = rec.clone();
    tokio::spawn(async move {
        let mut last = after;
        let mut first = true;
        loop {
            if !first {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let Ok(mut client) = etcd_client::Client::connect([endpoint.as_str()], None).await
            else {
                first = false;
                continue;
            };
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(last + 1);
            let Ok(mut stream) = client.watch(format!("{prefix}/"), Some(options)).await else {
                first = false;
                continue;
            };
            if !first && let Ok(mut r) = out.lock() {
                r.reconnects += 1;
            }
            first = false;
            while let Ok(Some(resp)) = stream.message().await {
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    last = last.max(kv.mod_revision());
                    let Ok(key) = kv.key_str() else { continue };
                    if key.ends_with("/.owner") {
                        continue;
                    }
                    let delete = ev.event_type() == EventType::Delete;
                    let noop = if delete {
                        known.remove(key);
                        false
                    } else {
                        let same = known.get(key).is_some_and(|v| v.as_slice() == kv.value());
                        known.insert(key.to_string(), kv.value().to_vec());
                        same
                    };
                    if let Ok(mut r) = out.lock() {
                        r.events.push(Seen {
                            revision: kv.mod_revision(),
                            delete,
                            noop,
                        });
                    }
                }
            }
        }
    });
    rec
}
