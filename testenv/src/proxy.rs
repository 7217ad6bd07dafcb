//! The project's one TCP proxy for fault tests, on loopback. It forwards to a local port and
//! can delay traffic: every chunk read from either side is written to the other after a random
//! delay (order kept within a connection), so concurrent requests on separate connections reach
//! the server in a random order, like on a slow, busy network (a zero delay forwards at once).
//!
//! The test controls its [`Link`]:
//! - open ([`Link::Open`]) forwards;
//! - frozen ([`Link::Frozen`]) accepts connections (new ones too) but moves no byte in either
//!   direction, holding every socket open: a partition where packets are dropped, or a server
//!   whose process lives but does not answer. Opening the link again resumes the held
//!   connections;
//! - cut ([`Link::Cut`]) drops every connection and refuses new ones (the client sees a reset).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the proxy does with traffic (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Forwards.
    Open,
    /// Accepts and holds connections, moves nothing.
    Frozen,
    /// Drops every connection, refuses new ones.
    Cut,
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct DelayProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    link: watch::Sender<Link>,
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
        let (link, link_rx) = watch::channel(Link::Open);
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            let mut changes = link_rx.clone();
            loop {
                tokio::select! {
                    acc = listener.accept() => {
                        let Ok((inbound, _)) = acc else { continue };
                        if *link_rx.borrow() == Link::Cut {
                            continue; // dropped: the client sees a reset
                        }
                        counter.fetch_add(1, Ordering::Relaxed);
                        let mut link = link_rx.clone();
                        conns.spawn(async move {
                            let Ok(out) = TcpStream::connect(("127.0.0.1", target)).await else {
                                return;
                            };
                            let (ir, iw) = inbound.into_split();
                            let (or, ow) = out.into_split();
                            let (up, down) = (link.clone(), link.clone());
                            tokio::select! {
                                _ = async {
                                    tokio::join!(pipe(ir, ow, max_delay, up), pipe(or, iw, max_delay, down))
                                } => {}
                                _ = link.wait_for(|l| *l == Link::Cut) => {}
                            }
                        });
                    }
                    r = changes.changed() => {
                        if r.is_err() {
                            return;
                        }
                        if *changes.borrow_and_update() == Link::Cut {
                            conns.abort_all();
                        }
                    }
                    Some(_) = conns.join_next() => {}
                }
            }
        });
        Ok(DelayProxy {
            port,
            link,
            accepted,
            task,
        })
    }

    /// `http://127.0.0.1:<port>`: the proxy as a client endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sets what the proxy does with traffic from now on.
    pub fn set_link(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// What the proxy does with traffic now.
    pub fn link(&self) -> Link {
        *self.link.borrow()
    }

    /// Forwards again (resuming frozen connections).
    pub fn open(&self) {
        self.set_link(Link::Open);
    }

    /// Holds every connection (and accepts new ones) without moving a byte.
    pub fn freeze(&self) {
        self.set_link(Link::Frozen);
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.set_link(Link::Cut);
    }

    /// [`open`](Self::open) (`true`) or [`cut`](Self::cut) (`false`).
    pub fn set_open(&self, open: bool) {
        self.set_link(if open { Link::Open } else { Link::Cut });
    }
}

/// Copies `from` to `to`, each chunk after a random delay, keeping the order; while the link is
/// frozen it neither reads nor writes.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    max_delay: Duration,
    link: watch::Receiver<Link>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut read_link = link.clone();
    let mut write_link = link;
    let reader = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if read_link.wait_for(|l| *l == Link::Open).await.is_err() {
                break;
            }
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
            if write_link.wait_for(|l| *l == Link::Open).await.is_err() {
                break;
            }
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
