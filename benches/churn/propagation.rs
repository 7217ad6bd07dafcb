//! Propagation of each readiness flip: the flipper notes, per pod address, the instant it sent
//! the patch and whether the key should appear or go; an etcd watch on Registrar's prefix, on
//! its own thread and runtime (so the flipper's load never delays its timestamps), matches
//! each PUT or DELETE of `<target>/<addr>` against that note.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use etcd_client::{EventType, WatchOptions};
use futures::StreamExt;
use tokio::sync::oneshot;

/// A flip the watch has not seen land yet.
#[derive(Clone, Copy, Debug)]
struct Pending {
    sent: Instant,
    /// The key should appear (Ready) or go (NotReady).
    put: bool,
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<String, Pending>,
    /// Latencies of puts (Ready) and deletes (NotReady) seen.
    puts: Vec<Duration>,
    deletes: Vec<Duration>,
    /// Events under the prefix that matched no flip (e.g. a repair or a lease re-attach).
    unmatched: usize,
    /// Highest revision the watch reported.
    revision: i64,
}

/// The shared record of flips and their landing.
#[derive(Clone, Default)]
pub struct Ledger {
    state: Arc<Mutex<State>>,
}

/// What the watch saw, in the end.
#[derive(Debug, Default)]
pub struct Seen {
    pub puts: Vec<Duration>,
    pub deletes: Vec<Duration>,
    /// Flips never seen land.
    pub missing: usize,
    pub unmatched: usize,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that the pod at `addr` (`ip:port`) is about to be patched Ready (`put`) or not.
    pub fn sent(&self, addr: String, put: bool) {
        let pending = Pending {
            sent: Instant::now(),
            put,
        };
        self.lock().pending.insert(addr, pending);
    }

    /// Flips sent but not seen land yet.
    pub fn outstanding(&self) -> usize {
        self.lock().pending.len()
    }

    fn landed(&self, addr: &str, put: bool, at: Instant) {
        let mut s = self.lock();
        match s.pending.get(addr) {
            Some(p) if p.put == put => {
                let latency = at.saturating_duration_since(p.sent);
                s.pending.remove(addr);
                if put {
                    s.puts.push(latency);
                } else {
                    s.deletes.push(latency);
                }
            }
            _ => s.unmatched += 1,
        }
    }

    /// Everything seen so far (the pending flips count as missing).
    pub fn take(&self) -> Seen {
        let mut s = self.lock();
        Seen {
            puts: std::mem::take(&mut s.puts),
            deletes: std::mem::take(&mut s.deletes),
            missing: s.pending.len(),
            unmatched: s.unmatched,
        }
    }
}

/// The watch thread; stops when dropped.
pub struct Watch {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Watch {
    /// Watches `prefix` (with its trailing '/') from the current revision on, feeding `ledger`;
    /// returns once the watch is established.
    pub fn start(endpoint: String, prefix: String, ledger: Ledger) -> Result<Watch> {
        let (stop, stopped) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("churn-watch".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(watch(endpoint, prefix, ledger, stopped, ready_tx))
            })?;
        let mut w = Watch {
            stop: Some(stop),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(()) => Ok(w),
            Err(_) => {
                let err = w.join().err();
                Err(err.unwrap_or_else(|| anyhow::anyhow!("the etcd watch was not established")))
            }
        }
    }

    fn join(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let thread = self.thread.take().context("watch already joined")?;
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the watch thread panicked"))?
    }

    /// Stops the watch; fails with its error if it failed.
    pub fn finish(mut self) -> Result<()> {
        self.join()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn watch(
    endpoint: String,
    prefix: String,
    ledger: Ledger,
    mut stop: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<()>,
) -> Result<()> {
    let mut etcd = etcd_client::Client::connect([endpoint.as_str()], None).await?;
    let mut stream = etcd
        .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
        .await?;
    let created = stream.message().await?.context("etcd watch closed")?;
    anyhow::ensure!(created.created(), "etcd watch not created: {created:?}");
    let _ = ready.send(());
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            msg = stream.next() => {
                let at = Instant::now();
                let resp = msg.context("etcd watch ended")??;
                anyhow::ensure!(!resp.canceled(), "etcd watch canceled: {}", resp.cancel_reason());
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key());
                    let Some(addr) = key.rsplit('/').next() else { continue };
                    ledger.landed(addr, ev.event_type() == EventType::Put, at);
                }
                if let Some(h) = resp.header() {
                    ledger.lock().revision = h.revision();
                }
            }
        }
    }
}

/// The `q`-quantile (0..=1) of `samples` (sorted here), nearest rank.
pub fn quantile(samples: &mut [Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    Some(samples[rank - 1])
}
