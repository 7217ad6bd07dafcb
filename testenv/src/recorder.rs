//! A recording of every event under an etcd prefix for a whole run, through etcd restarts: a
//! watch on `<prefix>/` from a separate client (the `<prefix>/.owner` claim excluded) that, when
//! etcd goes away, reconnects and resumes from the revision after the last one it saw (the data
//! is kept, so no event is lost), or from etcd's current revision after a wipe (the revisions
//! start again). Each event is kept with its revision, key and delivery time; an event replayed
//! after a reconnect also carries when the watch had broken. Optionally it tells, per put,
//! whether the key already had that value (a no-op write: pure write amplification).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::task::JoinHandle;

/// Pause before trying again when etcd does not answer.
const RETRY: Duration = Duration::from_millis(50);

/// Where a [`Recorder`] starts, and whether it counts no-op puts.
#[derive(Clone, Debug, Default)]
pub struct RecordOptions {
    /// Record the events after this revision (0: from etcd's first).
    pub after: i64,
    /// The keys' values at `after` (the `.owner` claim excluded): with them, each put is
    /// compared with the value its key had, and [`Recorded::noop`] tells whether it was the
    /// same. `None`: puts are not compared (`noop` is always false).
    pub noop_puts: Option<BTreeMap<String, Vec<u8>>>,
}

/// One event under the prefix.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub revision: i64,
    /// A DELETE (else a PUT).
    pub delete: bool,
    pub key: String,
    /// A put of the value the key already had (only with [`RecordOptions::noop_puts`]).
    pub noop: bool,
    /// When the watch delivered it.
    pub at: Instant,
    /// When the watch had broken before this event was delivered, if it was replayed after a
    /// reconnect (its real time is then anywhere in `[gap, at]`).
    pub gap: Option<Instant>,
}

/// Everything the recorder saw.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    pub events: Vec<Recorded>,
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

    /// Distinct revisions among the events.
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

/// A running recording (see the module docs); dropping it stops the watch.
pub struct Recorder {
    recording: Arc<Mutex<Recording>>,
    task: JoinHandle<()>,
}

impl Recorder {
    /// Starts recording `prefix/` on the etcd at `endpoint`; returns at once (the watch is set
    /// up in the background, from [`RecordOptions::after`], so nothing after it is missed).
    pub fn start(endpoint: String, prefix: String, options: RecordOptions) -> Recorder {
        let recording = Arc::new(Mutex::new(Recording::default()));
        let task = tokio::spawn(record(endpoint, prefix, options, recording.clone()));
        Recorder { recording, task }
    }

    /// A copy of everything recorded so far.
    pub fn recording(&self) -> Recording {
        self.recording.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The events recorded after the first `n` (for a caller that reads them in turns).
    pub fn events_after(&self, n: usize) -> Vec<Recorded> {
        self.recording
            .lock()
            .map(|r| r.events[n.min(r.events.len())..].to_vec())
            .unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    endpoint: String,
    prefix: String,
    options: RecordOptions,
    out: Arc<Mutex<Recording>>,
) {
    let RecordOptions {
        after: mut last,
        noop_puts: mut known,
    } = options;
    let mut gap: Option<Instant> = None;
    let mut first = true;
    loop {
        // etcd is down (or restarting): try again shortly. A watch that ended is re-established
        // at once.
        let Ok(mut client) = Client::connect([endpoint.as_str()], None).await else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let Ok(head) = client
            .get(
                format!("{prefix}/"),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
        else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let current = head.header().map_or(0, |h| h.revision());
        // After a wipe the revision starts again from 1 and every key is gone: resume from
        // what etcd has.
        let from = if current < last {
            if let Some(known) = known.as_mut() {
                known.clear();
            }
            current + 1
        } else {
            last + 1
        };
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let Ok(mut stream) = client.watch(format!("{prefix}/"), Some(options)).await else {
            continue;
        };
        if !first && let Ok(mut r) = out.lock() {
            r.reconnects += 1;
        }
        first = false;
        while let Ok(Some(resp)) = stream.message().await {
            let at = Instant::now();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                last = last.max(kv.mod_revision());
                let Ok(key) = kv.key_str() else { continue };
                if key.ends_with("/.owner") {
                    continue;
                }
                let delete = ev.event_type() == EventType::Delete;
                let noop = match known.as_mut() {
                    None => false,
                    Some(known) if delete => {
                        known.remove(key);
                        false
                    }
                    Some(known) => {
                        let value = kv.value();
                        let same = known.get(key).is_some_and(|v| v.as_slice() == value);
                        known.insert(key.to_string(), value.to_vec());
                        same
                    }
                };
                if let Ok(mut r) = out.lock() {
                    r.events.push(Recorded {
                        revision: kv.mod_revision(),
                        delete,
                        key: key.to_string(),
                        noop,
                        at,
                        gap,
                    });
                }
            }
            gap = None;
        }
        gap = Some(Instant::now());
    }
}
