//! A keyed, latest-wins write queue for object statuses.
//!
//! The engine says what each object's status should be ([`StatusQueue::set`]); a worker task
//! writes it. Per key, at most one write is in flight, and a newer value replaces a queued older
//! one, so writes for one object land in the order they were decided and the last one wins.
//! A failed write is retried with the operator's one retry policy ([`crate::backoff`]: capped
//! exponential backoff with jitter, per key), writing the latest value, not the one that
//! failed. The engine decides each status against the last one it decided (its own copy,
//! immune to a watch that lags behind our writes); a periodic resync ([`StatusQueue::force`])
//! covers what that view cannot see (someone else rewrote a status).
//!
//! The worker reports its backlog (values ready to write plus writes in flight) after every
//! step ([`StatusQueue::spawn_with_backlog`]): the Kubernetes write budget gives status patches
//! its seats first while it is not zero.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use crate::backoff::Backoff;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How one write ended, as the write function reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// The server stored the value.
    Written,
    /// The object does not exist (any more): nothing to write.
    Gone,
    /// The server refused the value for good (e.g. invalid): not retried until a new value
    /// (or a resync) comes.
    Rejected,
    /// A transient failure: retried with backoff.
    Failed,
}

/// Retry and concurrency settings.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Writes in flight at once, over all keys.
    pub concurrency: usize,
    /// First retry delay after a failure.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            concurrency: 16,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

struct Entry<V> {
    /// The last value the server acknowledged from us.
    confirmed: Option<V>,
    /// The value to write (None: nothing to do).
    wanted: Option<V>,
    /// A write of this value is in flight.
    in_flight: Option<V>,
    /// The retry delays of a streak of failures (`None` after a success).
    backoff: Option<Backoff>,
    /// No write before this instant (backoff).
    not_before: Option<Instant>,
    /// Forgotten while a write was in flight: dropped once it ends (unless set again).
    forgotten: bool,
}

impl<V> Default for Entry<V> {
    fn default() -> Self {
        Entry {
            confirmed: None,
            wanted: None,
            in_flight: None,
            backoff: None,
            not_before: None,
            forgotten: false,
        }
    }
}

impl<V> Entry<V> {
    /// Forgets everything but a write in flight (which must still end before the next one
    /// starts); whether the entry can go at once.
    fn forget(&mut self) -> bool {
        self.confirmed = None;
        self.wanted = None;
        self.backoff = None;
        self.not_before = None;
        self.forgotten = true;
        self.in_flight.is_none()
    }
}

struct Shared<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// Keys whose entry may have something to write.
    ready: HashSet<K>,
}

/// The engine's handle; the worker stops when every handle is dropped.
pub struct StatusQueue<K, V> {
    shared: Arc<Mutex<Shared<K, V>>>,
    wake: mpsc::Sender<()>,
}

impl<K, V> StatusQueue<K, V>
where
    K: Clone + Eq + Hash + Send + 'static,
    V: Clone + PartialEq + Send + 'static,
{
    /// A queue whose worker writes with `write(key, value)`.
    #[cfg(test)]
    pub fn spawn<F, Fut>(cfg: QueueConfig, write: F) -> Self
    where
        F: Fn(K, V) -> Fut + Send + 'static,
        Fut: Future<Output = WriteResult> + Send + 'static,
    {
        Self::spawn_with_backlog(cfg, write, |_| {})
    }

    /// A queue whose worker writes with `write(key, value)` and tells `backlog` how many
    /// values are ready to write or in flight whenever that may have changed.
    pub fn spawn_with_backlog<F, Fut, B>(cfg: QueueConfig, write: F, backlog: B) -> Self
    where
        F: Fn(K, V) -> Fut + Send + 'static,
        Fut: Future<Output = WriteResult> + Send + 'static,
        B: Fn(usize) + Send + 'static,
    {
        let shared = Arc::new(Mutex::new(Shared {
            entries: HashMap::new(),
            ready: HashSet::new(),
        }));
        let (wake, wake_rx) = mpsc::channel(1);
        tokio::spawn(worker(shared.clone(), wake_rx, cfg, write, backlog));
        StatusQueue { shared, wake }
    }

    fn lock(&self) -> MutexGuard<'_, Shared<K, V>> {
        // A poisoned lock only means a panic elsewhere mid-update; the maps stay usable.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        let _ = self.wake.try_send(());
    }

    /// The status `key` has or is about to have from our writes: the newest value decided,
    /// else the last one written. None when this queue never wrote `key`. (The engine keeps
    /// its own copy of what it decided; this is for tests.)
    #[cfg(test)]
    pub fn latest(&self, key: &K) -> Option<V> {
        let shared = self.lock();
        let e = shared.entries.get(key)?;
        e.wanted
            .clone()
            .or_else(|| e.in_flight.clone())
            .or_else(|| e.confirmed.clone())
    }

    /// `key` should show `value`: written unless that is already what it shows or will show.
    pub fn set(&self, key: K, value: V) {
        self.put(key, value, false);
    }

    /// Like [`StatusQueue::set`], but written even if our last write was that value (the
    /// server's copy differs: someone else changed it).
    pub fn force(&self, key: K, value: V) {
        self.put(key, value, true);
    }

    fn put(&self, key: K, value: V, force: bool) {
        let mut shared = self.lock();
        let e = shared.entries.entry(key.clone()).or_default();
        e.forgotten = false;
        let in_flight_or_confirmed = e.in_flight.as_ref().or(e.confirmed.as_ref());
        if !force && e.in_flight.is_none() && e.confirmed.as_ref() == Some(&value) {
            e.wanted = None;
            return;
        }
        if !force && e.wanted.is_none() && in_flight_or_confirmed == Some(&value) {
            return;
        }
        if e.wanted.as_ref() == Some(&value) {
            return;
        }
        e.wanted = Some(value);
        shared.ready.insert(key);
        drop(shared);
        self.notify();
    }

    /// Forgets `key` (the object is gone); a write in flight still ends first.
    pub fn forget(&self, key: &K) {
        let mut shared = self.lock();
        if shared.entries.get_mut(key).is_some_and(Entry::forget) {
            shared.entries.remove(key);
        }
        shared.ready.remove(key);
    }

    /// Forgets every key (leadership changed: someone else may have written); writes in
    /// flight still end first.
    pub fn clear(&self) {
        let mut shared = self.lock();
        shared.entries.retain(|_, e| !e.forget());
        shared.ready.clear();
    }

    /// Whether `key` has a write queued, waiting for a retry or in flight.
    pub fn is_busy(&self, key: &K) -> bool {
        let shared = self.lock();
        shared
            .entries
            .get(key)
            .is_some_and(|e| e.wanted.is_some() || e.in_flight.is_some())
    }

    /// Keys with a write queued, waiting for a retry or in flight.
    #[cfg(test)]
    pub fn busy(&self) -> usize {
        let shared = self.lock();
        shared
            .entries
            .values()
            .filter(|e| e.wanted.is_some() || e.in_flight.is_some())
            .count()
    }
}

async fn worker<K, V, F, Fut, B>(
    shared: Arc<Mutex<Shared<K, V>>>,
    mut wake: mpsc::Receiver<()>,
    cfg: QueueConfig,
    write: F,
    backlog: B,
) where
    K: Clone + Eq + Hash + Send + 'static,
    V: Clone + PartialEq + Send + 'static,
    F: Fn(K, V) -> Fut + Send + 'static,
    Fut: Future<Output = WriteResult> + Send + 'static,
    B: Fn(usize) + Send + 'static,
{
    let limit = cfg.concurrency.max(1);
    let mut running: JoinSet<(K, V, WriteResult)> = JoinSet::new();
    let mut open = true;
    loop {
        // Start what may start; note the next backoff deadline.
        let mut next_retry: Option<Instant> = None;
        {
            let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let Shared { entries, ready } = &mut *guard;
            // Walk the ready keys only as far as free slots allow (a cold start has thousands
            // ready: cloning them all at every wake cost O(ready) per write).
            let mut settled: Vec<K> = Vec::new();
            let mut waiting = 0usize;
            for key in ready.iter() {
                if running.len() >= limit {
                    break;
                }
                let Some(e) = entries.get_mut(key) else {
                    settled.push(key.clone());
                    continue;
                };
                if e.in_flight.is_some() {
                    continue; // back in `ready` handling when it ends
                }
                let Some(value) = e.wanted.take() else {
                    settled.push(key.clone());
                    continue;
                };
                if let Some(at) = e.not_before.filter(|at| *at > now) {
                    e.wanted = Some(value);
                    next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
                    waiting += 1;
                    continue;
                }
                e.in_flight = Some(value.clone());
                settled.push(key.clone());
                let fut = write(key.clone(), value.clone());
                let key = key.clone();
                running.spawn(async move {
                    // A panicking write is a failed one: the key must not stay in flight.
                    let result = AssertUnwindSafe(fut)
                        .catch_unwind()
                        .await
                        .unwrap_or(WriteResult::Failed);
                    (key, value, result)
                });
            }
            for key in &settled {
                ready.remove(key);
            }
            // Values in backoff are not counted (the API server is failing them anyway).
            backlog(running.len() + ready.len().saturating_sub(waiting));
        }
        if !open && running.is_empty() {
            return;
        }
        let retry = async {
            match next_retry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            w = wake.recv(), if open => {
                if w.is_none() {
                    open = false;
                }
            }
            Some(done) = running.join_next() => {
                let Ok((key, value, result)) = done else { continue };
                let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
                let sh = &mut *guard;
                let Some(e) = sh.entries.get_mut(&key) else { continue };
                e.in_flight = None;
                match result {
                    WriteResult::Written => {
                        e.backoff = None;
                        e.not_before = None;
                        if e.wanted.as_ref() == Some(&value) {
                            e.wanted = None;
                        }
                        e.confirmed = Some(value);
                    }
                    WriteResult::Gone if e.wanted.is_none() || e.wanted.as_ref() == Some(&value) => {
                        sh.entries.remove(&key);
                        sh.ready.remove(&key);
                        continue;
                    }
                    // Gone, but a newer value came meanwhile (maybe a new object of that name).
                    WriteResult::Gone => {}
                    WriteResult::Rejected => {
                        e.backoff = None;
                        e.not_before = None;
                        if e.wanted.as_ref() == Some(&value) {
                            e.wanted = None;
                        }
                    }
                    WriteResult::Failed => {
                        let delay = e
                            .backoff
                            .get_or_insert_with(|| {
                                Backoff::new(cfg.backoff_initial, cfg.backoff_max)
                            })
                            .next_delay();
                        e.not_before = Some(Instant::now() + delay);
                        if e.wanted.is_none() && !e.forgotten {
                            e.wanted = Some(value);
                        }
                    }
                }
                if e.wanted.is_some() {
                    sh.ready.insert(key);
                } else if e.forgotten {
                    sh.entries.remove(&key);
                }
            }
            () = retry => {}
        }
    }
}

#[cfg(test)]
mod tests;
