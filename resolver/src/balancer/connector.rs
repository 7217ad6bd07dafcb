//! The transport of one backend connection: a TCP connector that can be used once and whose
//! stream reports when the connection is gone.
//!
//! tonic's `Channel` hides its connection: after a failure it silently redials (without backoff)
//! when the next request arrives and hands connection errors to callers. The balancer instead
//! wants to own connectivity: it gives each backend connection this one-shot connector, so the
//! channel can never redial behind its back, and learns the moment the connection is no longer
//! usable ([`Liveness`]) from:
//! - the stream itself: EOF, an I/O error, or hyper dropping it (e.g. after a keepalive timeout);
//! - an HTTP/2 GOAWAY from the server (graceful shutdown, max connection age), spotted by reading
//!   frame headers as they pass (plaintext `h2c` only: under TLS the frames are encrypted);
//! - tonic asking to redial, which it does when hyper reports the connection unusable.
//!
//! TLS, HTTP/2 and the other [`Endpoint`](tonic::transport::Endpoint) settings are still applied
//! by tonic on top of this stream.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// TCP options copied from the backend's tonic `Endpoint`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TcpSettings {
    pub(crate) nodelay: bool,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) keepalive_retries: Option<u32>,
}

impl TcpSettings {
    pub(crate) fn from_endpoint(endpoint: &tonic::transport::Endpoint) -> Self {
        TcpSettings {
            nodelay: endpoint.get_tcp_nodelay(),
            keepalive: endpoint.get_tcp_keepalive(),
            keepalive_interval: endpoint.get_tcp_keepalive_interval(),
            keepalive_retries: endpoint.get_tcp_keepalive_retries(),
        }
    }

    fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(self.nodelay)?;
        if let Some(time) = self.keepalive {
            let mut ka = socket2::TcpKeepalive::new().with_time(time);
            if let Some(interval) = self.keepalive_interval {
                ka = ka.with_interval(interval);
            }
            if let Some(retries) = self.keepalive_retries {
                ka = ka.with_retries(retries);
            }
            socket2::SockRef::from(stream).set_tcp_keepalive(&ka)?;
        }
        Ok(())
    }
}

/// Whether a backend connection is still usable for new calls; once cleared it stays cleared.
#[derive(Debug)]
pub(crate) struct Liveness {
    alive: AtomicBool,
    gone: Notify,
}

impl Liveness {
    pub(crate) fn new() -> Self {
        Liveness {
            alive: AtomicBool::new(true),
            gone: Notify::new(),
        }
    }

    /// Whether new calls may be sent on the connection.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Marks the connection unusable and wakes whoever waits in [`gone`](Self::gone).
    pub(crate) fn kill(&self, why: &'static str) {
        if self.alive.swap(false, Ordering::AcqRel) {
            tracing::debug!(why, "backend connection unusable");
            self.gone.notify_waiters();
        }
    }

    /// Resolves once the connection is unusable.
    pub(crate) async fn gone(&self) {
        loop {
            let notified = self.gone.notified();
            tokio::pin!(notified);
            // Registered before checking, so a concurrent `kill` cannot be missed.
            notified.as_mut().enable();
            if !self.is_alive() {
                return;
            }
            notified.await;
        }
    }
}

/// Kills the liveness when dropped (the stream, or a connector that never connected).
#[derive(Debug)]
struct Tracker(Arc<Liveness>);

impl Drop for Tracker {
    fn drop(&mut self) {
        self.0.kill("connection closed");
    }
}

/// A connector that makes at most one TCP connection; any later dial kills the liveness of the
/// first (tonic redials only when the connection became unusable) and fails.
#[derive(Clone, Debug)]
pub(crate) struct OneShotConnector {
    tracker: Arc<Mutex<Option<Tracker>>>,
    liveness: Arc<Liveness>,
    tcp: TcpSettings,
    sniff_h2: bool,
}

impl OneShotConnector {
    /// `sniff_h2`: the stream carries plaintext HTTP/2 (watch it for GOAWAY).
    pub(crate) fn new(tcp: TcpSettings, sniff_h2: bool) -> (Self, Arc<Liveness>) {
        let liveness = Arc::new(Liveness::new());
        let connector = OneShotConnector {
            tracker: Arc::new(Mutex::new(Some(Tracker(liveness.clone())))),
            liveness: liveness.clone(),
            tcp,
            sniff_h2,
        };
        (connector, liveness)
    }
}

/// Returned when tonic tries to redial through a connector that was already used: the balancer,
/// not the channel, decides when to reconnect.
#[derive(Debug, thiserror::Error)]
#[error("backend connection closed; the balancer reconnects it")]
pub(crate) struct ConnectionClosed;

impl tower::Service<Uri> for OneShotConnector {
    type Response = TokioIo<TrackedStream>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Response>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // A poisoned lock only means another caller panicked while holding it; the slot is
        // still a plain `Option`.
        let tracker = match self.tracker.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let tcp = self.tcp;
        let sniffer = self.sniff_h2.then(FrameSniffer::default);
        if tracker.is_none() {
            self.liveness.kill("tonic asked to redial");
        }
        Box::pin(async move {
            let Some(tracker) = tracker else {
                return Err(io::Error::other(ConnectionClosed));
            };
            let authority = uri
                .authority()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "URI without authority")
                })?
                .as_str()
                .to_owned();
            let stream = TcpStream::connect(authority.as_str()).await?;
            tcp.apply(&stream)?;
            Ok(TokioIo::new(TrackedStream {
                inner: stream,
                tracker: Some(tracker),
                sniffer,
            }))
        })
    }
}

/// A TCP stream that kills its liveness on EOF, on an I/O error, on a GOAWAY (when sniffing)
/// and when dropped.
#[derive(Debug)]
pub(crate) struct TrackedStream {
    inner: TcpStream,
    tracker: Option<Tracker>,
    sniffer: Option<FrameSniffer>,
}

impl TrackedStream {
    fn closed(&mut self) {
        self.tracker.take();
    }
}

/// Follows HTTP/2 frame boundaries in what the server sends (it starts with a frame: the
/// server's connection preface is a SETTINGS frame) and reports a GOAWAY frame.
#[derive(Debug, Default)]
struct FrameSniffer {
    header: [u8; 9],
    header_len: usize,
    payload_left: usize,
}

impl FrameSniffer {
    const GOAWAY: u8 = 0x7;

    /// Feeds received bytes; true when a GOAWAY frame header was seen.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut goaway = false;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 9 {
                let h = self.header;
                self.payload_left =
                    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                goaway |= h[3] == Self::GOAWAY;
                self.header_len = 0;
            }
        }
        goaway
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.closed();
            }
            Poll::Ready(Ok(())) => {
                let this = &mut *self;
                if let Some(sniffer) = this.sniffer.as_mut()
                    && sniffer.feed(&buf.filled()[before..])
                {
                    if let Some(tracker) = &this.tracker {
                        tracker.0.kill("GOAWAY received");
                    }
                    this.sniffer = None;
                }
            }
            Poll::Ready(Err(_)) => self.closed(),
            _ => {}
        }
        result
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(_)) = &result {
            self.closed();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Err(_)) = &result {
            self.closed();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Err(_)) = &result {
            self.closed();
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Shutting down our write side means the connection is going away.
        self.closed();
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    #[tokio::test]
    async fn signals_on_eof_and_is_single_use() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connector, live) = OneShotConnector::new(
            TcpSettings {
                nodelay: true,
                keepalive: Some(Duration::from_secs(30)),
                ..TcpSettings::default()
            },
            false,
        );
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let io = connector.clone().oneshot(uri.clone()).await.unwrap();
        let mut stream = io.into_inner();
        let (mut server, _) = listener.accept().await.unwrap();
        assert!(live.is_alive());

        server.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 1);
        assert!(live.is_alive());
        drop(server);
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        assert!(!live.is_alive());
        tokio::time::timeout(Duration::from_secs(5), live.gone())
            .await
            .unwrap();
        // A second dial through the same connector is refused.
        let err = connector.oneshot(uri).await.unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<ConnectionClosed>()));
    }

    #[tokio::test]
    async fn a_redial_kills_the_first_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (connector, live) = OneShotConnector::new(TcpSettings::default(), false);
        let _io = connector.clone().oneshot(uri.clone()).await.unwrap();
        assert!(live.is_alive());
        assert!(connector.oneshot(uri).await.is_err());
        assert!(!live.is_alive());
    }

    #[tokio::test]
    async fn goaway_kills_a_plaintext_h2_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (connector, live) = OneShotConnector::new(TcpSettings::default(), true);
        let mut stream = connector.oneshot(uri).await.unwrap().into_inner();
        let (mut server, _) = listener.accept().await.unwrap();
        // SETTINGS (empty), then a DATA frame whose payload contains a 0x07 byte, split oddly.
        let mut bytes = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
        bytes.extend([0, 0, 3, 0x0, 0, 0, 0, 0, 1, 7, 7, 7]);
        server.write_all(&bytes).await.unwrap();
        let mut buf = vec![0u8; bytes.len()];
        stream.read_exact(&mut buf).await.unwrap();
        assert!(live.is_alive());
        // GOAWAY (8-byte payload), delivered in two pieces.
        let goaway = [0u8, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        server.write_all(&goaway[..5]).await.unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        assert!(live.is_alive());
        server.write_all(&goaway[5..]).await.unwrap();
        let mut buf = [0u8; 12];
        stream.read_exact(&mut buf).await.unwrap();
        assert!(!live.is_alive());
    }

    #[tokio::test]
    async fn signals_when_dropped_or_never_connected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connector, live) = OneShotConnector::new(TcpSettings::default(), false);
        let io = connector
            .oneshot(format!("http://{addr}").parse().unwrap())
            .await
            .unwrap();
        drop(io);
        tokio::time::timeout(Duration::from_secs(5), live.gone())
            .await
            .unwrap();

        // Port 1 on loopback refuses connections.
        let (connector, live) = OneShotConnector::new(TcpSettings::default(), false);
        assert!(
            connector
                .oneshot("http://127.0.0.1:1".parse().unwrap())
                .await
                .is_err()
        );
        assert!(!live.is_alive());
    }
}
