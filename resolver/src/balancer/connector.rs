//! The transport of one backend connection: a TCP connector that can be used once and whose
//! stream reports when the connection is gone.
//!
//! tonic's `Channel` hides its connection: after a failure it silently redials (without backoff)
//! when the next request arrives and hands connection errors to callers. The balancer instead
//! wants to own connectivity: it gives each backend connection this one-shot connector, so the
//! channel can never redial behind its back, and learns from the stream itself (EOF, an I/O
//! error, or the connection being dropped by hyper, e.g. after a keepalive timeout) the moment
//! the connection is broken. TLS, HTTP/2 and the other [`Endpoint`](tonic::transport::Endpoint)
//! settings are still applied by tonic on top of this stream.

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
use tokio::sync::oneshot;

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

/// Signals that a connection made by a [`OneShotConnector`] is gone. Dropping it signals.
#[derive(Debug)]
struct Tracker {
    _closed: oneshot::Sender<()>,
    alive: Arc<AtomicBool>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Release);
    }
}

/// The observing side of a [`OneShotConnector`].
#[derive(Debug)]
pub(crate) struct ConnectionWatch {
    closed: oneshot::Receiver<()>,
    alive: Arc<AtomicBool>,
}

impl ConnectionWatch {
    /// Cleared as soon as the connection is seen closed.
    pub(crate) fn alive(&self) -> Arc<AtomicBool> {
        self.alive.clone()
    }

    /// Resolves when the connection is closed (or was never made).
    pub(crate) async fn closed(self) {
        // The sender is never used to send: it signals by being dropped.
        let _ = self.closed.await;
    }
}

/// A connector that makes at most one TCP connection.
#[derive(Clone, Debug)]
pub(crate) struct OneShotConnector {
    tracker: Arc<Mutex<Option<Tracker>>>,
    tcp: TcpSettings,
}

impl OneShotConnector {
    pub(crate) fn new(tcp: TcpSettings) -> (Self, ConnectionWatch) {
        let (tx, rx) = oneshot::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let tracker = Tracker {
            _closed: tx,
            alive: alive.clone(),
        };
        let connector = OneShotConnector {
            tracker: Arc::new(Mutex::new(Some(tracker))),
            tcp,
        };
        (connector, ConnectionWatch { closed: rx, alive })
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
            }))
        })
    }
}

/// A TCP stream that drops its [`Tracker`] on EOF, on an I/O error and when dropped.
#[derive(Debug)]
pub(crate) struct TrackedStream {
    inner: TcpStream,
    tracker: Option<Tracker>,
}

impl TrackedStream {
    fn closed(&mut self) {
        self.tracker.take();
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
        let (connector, watch) = OneShotConnector::new(TcpSettings {
            nodelay: true,
            keepalive: Some(Duration::from_secs(30)),
            ..TcpSettings::default()
        });
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let io = connector.clone().oneshot(uri.clone()).await.unwrap();
        let mut stream = io.into_inner();
        let (mut server, _) = listener.accept().await.unwrap();
        let alive = watch.alive();
        assert!(alive.load(Ordering::Acquire));

        // A second dial through the same connector is refused.
        let err = connector.oneshot(uri).await.unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<ConnectionClosed>()));

        server.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 1);
        assert!(alive.load(Ordering::Acquire));
        drop(server);
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        assert!(!alive.load(Ordering::Acquire));
        tokio::time::timeout(Duration::from_secs(5), watch.closed())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn signals_when_dropped_or_never_connected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connector, watch) = OneShotConnector::new(TcpSettings::default());
        let io = connector
            .oneshot(format!("http://{addr}").parse().unwrap())
            .await
            .unwrap();
        drop(io);
        tokio::time::timeout(Duration::from_secs(5), watch.closed())
            .await
            .unwrap();

        // Port 1 on loopback refuses connections.
        let (connector, watch) = OneShotConnector::new(TcpSettings::default());
        assert!(
            connector
                .oneshot("http://127.0.0.1:1".parse().unwrap())
                .await
                .is_err()
        );
        assert!(!watch.alive().load(Ordering::Acquire));
    }
}
