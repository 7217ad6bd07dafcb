//! A TCP proxy on loopback that delays traffic: every chunk read from either side is written to
//! the other after a random delay (order kept within a connection). Concurrent requests on
//! separate connections therefore reach the server in a random order, like on a slow, busy
//! network (a zero delay forwards at once). The link can also be cut (connections dropped, new
//! ones refused) and opened again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// A running proxy; stops when dropped.
pub struct DelayProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    open: watch::Sender<bool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayProxy {
    /// Forwards 127.0.0.1:`port` to 127.0.0.1:`target`, delaying each chunk by a random time in
    /// `[0, max_delay]`.
    pub async fn start(target: u16, max_delay: Duration) -> anyhow::Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (open, open_rx) = watch::channel(true);
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            let mut changes = open_rx.clone();
            loop {
                tokio::select! {
                    acc = listener.accept() => {
                        let Ok((inbound, _)) = acc else { continue };
                        if !*open_rx.borrow() {
                            continue; // dropped: the client sees a reset
                        }
                        counter.fetch_add(1, Ordering::Relaxed);
                        let mut open = open_rx.clone();
                        conns.spawn(async move {
                            let Ok(out) = TcpStream::connect(("127.0.0.1", target)).await else {
                                return;
                            };
                            let (ir, iw) = inbound.into_split();
                            let (or, ow) = out.into_split();
                            tokio::select! {
                                _ = async { tokio::join!(pipe(ir, ow, max_delay), pipe(or, iw, max_delay)) } => {}
                                _ = open.wait_for(|o| !*o) => {}
                            }
                        });
                    }
                    r = changes.changed() => {
                        if r.is_err() {
                            return;
                        }
                        if !*changes.borrow_and_update() {
                            conns.abort_all();
                        }
                    }
                    Some(_) = conns.join_next() => {}
                }
            }
        });
        Ok(DelayProxy {
            port,
            open,
            accepted,
            task,
        })
    }

    /// Drops every connection and refuses new ones (`false`), or forwards again (`true`).
    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

/// Copies `from` to `to`, each chunk after a random delay, keeping the order.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    max_delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = max_delay.mul_f64(rand::random_range(0.0..=1.0));
            last = last.max(Instant::now() + delay);
            if tx.send((last, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
