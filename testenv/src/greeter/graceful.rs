//! [`GracefulServer`]: the Greeter as a workload runs it (the demo's pods, `registrar-demo
//! serve`), on the caller's Tokio runtime, with the shutdown a pod does on SIGTERM: stop
//! accepting, let in-flight RPCs finish (HTTP/2 GOAWAY), then close, bounded by a grace period.
//! Started with a [`Drainer`] ([`GracefulServer::start_draining`]) it also serves
//! `grpc.health.v1`, and its shutdown runs the drainer first (e.g. the resolver's drain helper:
//! NOT_SERVING, serving on for the drain delay).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{BoxUnit, Drainer, GreeterServer, NamedGreeter};

/// Errors of starting a [`GracefulServer`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound (in use, or not a local address).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// How a [`GracefulServer::shutdown`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Every connection closed after its in-flight RPCs finished.
    Drained,
    /// The grace period ended first; the remaining connections were cut.
    Forced,
}

/// A running Greeter server on the caller's runtime. Dropping it stops accepting at once and
/// lets open connections drain in the background.
pub struct GracefulServer {
    addr: SocketAddr,
    name: String,
    served: Arc<AtomicU64>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl GracefulServer {
    /// Listens on `addr` and serves as backend `name`; returns once the socket is bound (so
    /// connections are accepted from then on).
    pub async fn start(addr: SocketAddr, name: impl Into<String>) -> Result<Self, ServeError> {
        Self::start_with(addr, name.into(), None).await
    }

    /// Like [`start`](Self::start), with the `grpc.health.v1` service (the whole server `""`
    /// SERVING) handed to `drainer`, whose future, started by [`shutdown`](Self::shutdown),
    /// ends before the graceful shutdown begins.
    pub async fn start_draining(
        addr: SocketAddr,
        name: impl Into<String>,
        drainer: Drainer,
    ) -> Result<Self, ServeError> {
        Self::start_with(addr, name.into(), Some(drainer)).await
    }

    async fn start_with(
        addr: SocketAddr,
        name: String,
        drainer: Option<Drainer>,
    ) -> Result<Self, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        let served = Arc::new(AtomicU64::new(0));
        let greeter = NamedGreeter::new(name.clone(), served.clone());
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let (tx, rx) = oneshot::channel::<()>();
        let trigger: BoxUnit = Box::pin(async {
            let _ = rx.await;
        });
        let mut router =
            tonic::transport::Server::builder().add_service(GreeterServer::new(greeter));
        let shutdown = match drainer {
            Some(drainer) => {
                let (reporter, health) = tonic_health::server::health_reporter();
                router = router.add_service(health);
                drainer(reporter, trigger)
            }
            None => trigger,
        };
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
        Ok(GracefulServer {
            addr,
            name,
            served,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The backend name its replies carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A counter of the RPCs it served (shared, live).
    pub fn served_counter(&self) -> Arc<AtomicU64> {
        self.served.clone()
    }

    /// How many RPCs it has served.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The SIGTERM of a pod: runs the drainer, if any, then stops accepting, lets in-flight
    /// RPCs finish (HTTP/2 GOAWAY) and waits for every connection to close — all within
    /// `grace`; cuts the rest after that.
    pub async fn shutdown(mut self, grace: Duration) -> Shutdown {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let Some(mut task) = self.task.take() else {
            return Shutdown::Drained;
        };
        match tokio::time::timeout(grace, &mut task).await {
            Ok(Ok(Ok(()))) => Shutdown::Drained,
            Ok(Ok(Err(e))) => {
                tracing::warn!(server = %self.name, "Greeter server failed: {e}");
                Shutdown::Drained
            }
            Ok(Err(_)) => Shutdown::Forced,
            Err(_) => {
                task.abort();
                Shutdown::Forced
            }
        }
    }
}

impl Drop for GracefulServer {
    fn drop(&mut self) {
        // Aborting the accept loop closes the listener; its connections see the shutdown
        // signal's sender go away and drain on their own.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for GracefulServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GracefulServer")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .field("served", &self.served())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::greeter::{GreeterClient, HelloRequest};

    #[tokio::test]
    async fn replies_name_the_backend_and_shutdown_drains() {
        let server = GracefulServer::start("127.0.0.1:0".parse().unwrap(), "b1")
            .await
            .unwrap();
        let addr = server.addr();
        let mut client = GreeterClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let reply = client
            .say_hello(HelloRequest { name: "x".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.message, "Hello x");
        assert_eq!(reply.backend, "b1");
        assert_eq!(server.served(), 1);
        drop(client);
        assert_eq!(
            server.shutdown(Duration::from_secs(5)).await,
            Shutdown::Drained
        );
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
