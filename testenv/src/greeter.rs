//! The shared demo/test gRPC service (`proto/greeter.proto`, package `greeter.v1`) and a
//! [`serve`] helper that runs a real tonic Greeter server on a loopback address.
//!
//! Each reply names the backend that answered, so tests and benchmarks can count how calls
//! spread. A request whose name is `sleep:<ms>` is answered after that many milliseconds, to
//! keep a call in flight. A [`TestServer`] counts the RPCs it served and is killed abruptly when stopped or
//! dropped: it runs on its own Tokio runtime, and shutting that runtime down closes the listener
//! and every open connection at once, like a crashed process (no GOAWAY, no draining).
//! [`TestServer::drain`] instead shuts down gracefully (GOAWAY, in-flight calls finish), or,
//! for a server started with a [`Drainer`] ([`try_serve_draining`]), triggers that drainer
//! (e.g. the resolver's drain helper: NOT_SERVING on `grpc.health.v1`, a drain delay, then the
//! graceful shutdown).
//!
//! [`GracefulServer`] is the same Greeter as a workload runs it (the demo's pods): on the
//! caller's runtime, with a shutdown bounded by a grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use tonic::{Request, Response, Status};

tonic::include_proto!("greeter.v1");

mod graceful;

pub use graceful::{GracefulServer, ServeError, Shutdown};

pub use greeter_client::GreeterClient;
pub use greeter_server::{Greeter, GreeterServer};

/// A boxed future of `()`.
pub type BoxUnit = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How a server drains: given the server's health reporter (`grpc.health.v1`, the whole server
/// `""` SERVING) and the trigger (resolves on [`TestServer::drain`]), the future whose end
/// starts tonic's graceful shutdown.
pub type Drainer =
    Arc<dyn Fn(tonic_health::server::HealthReporter, BoxUnit) -> BoxUnit + Send + Sync>;

/// The base of the nanosecond timestamps of [`TestServer::last_served_at`].
fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// A Greeter that answers `Hello <name>` and names itself in `backend` (`sleep:<ms>` delays the
/// answer).
#[derive(Clone, Debug)]
pub struct NamedGreeter {
    name: String,
    served: Arc<AtomicU64>,
    /// When it last answered: nanoseconds since [`epoch`] plus one (0: never).
    last: Arc<AtomicU64>,
}

impl NamedGreeter {
    /// A greeter called `name` that counts served calls in `served`.
    pub fn new(name: impl Into<String>, served: Arc<AtomicU64>) -> Self {
        epoch();
        Self {
            name: name.into(),
            served,
            last: Arc::new(AtomicU64::new(0)),
        }
    }
}

#[tonic::async_trait]
impl Greeter for NamedGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let who = request.into_inner().name;
        if let Some(ms) = who
            .strip_prefix("sleep:")
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        let since = u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last.fetch_max(since + 1, Ordering::Relaxed);
        Ok(Response::new(HelloReply {
            message: format!("Hello {who}"),
            backend: self.name.clone(),
        }))
    }
}

/// A running Greeter server; stopped (abruptly) when dropped.
pub struct TestServer {
    addr: SocketAddr,
    name: String,
    served: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
    drain: Option<tokio::sync::oneshot::Sender<()>>,
    drained_at: Option<std::time::Instant>,
    /// Turns `true` when the server task ended (its graceful shutdown finished).
    exited: tokio::sync::watch::Receiver<bool>,
}

impl TestServer {
    /// The address it listens on (the real port when started with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many RPCs it has served.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Starts a graceful shutdown: stops accepting, sends HTTP/2 GOAWAY on every connection and
    /// lets in-flight calls finish; [`stop`](Self::stop) or drop then kills what is left.
    pub fn drain(&mut self) {
        if let Some(tx) = self.drain.take() {
            self.drained_at = Some(std::time::Instant::now());
            let _ = tx.send(());
        }
    }

    /// When [`drain`](Self::drain) was called.
    pub fn drained_at(&self) -> Option<std::time::Instant> {
        self.drained_at
    }

    /// When it last answered a call.
    pub fn last_served_at(&self) -> Option<std::time::Instant> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            n => Some(epoch() + Duration::from_nanos(n - 1)),
        }
    }

    /// Kills the server: closes the listener and every connection without draining.
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Resolves when the server has ended on its own (after [`drain`](Self::drain): the
    /// graceful shutdown finished, every connection closed) or was [stopped](Self::stop) —
    /// the process exit a kubelet waits for after SIGTERM.
    pub fn exited(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut exited = self.exited.clone();
        async move {
            // An error means the server's runtime is gone: it has exited too.
            let _ = exited.wait_for(|done| *done).await;
        }
    }

    /// Whether it is still serving.
    pub fn is_running(&self) -> bool {
        self.runtime.is_some()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .field("served", &self.served())
            .field("running", &self.is_running())
            .finish()
    }
}

/// Starts a Greeter server called `name` on `addr` (a loopback address; port 0 picks a free
/// port) and returns once it accepts connections.
///
/// # Panics
/// If the address cannot be bound or the server's runtime cannot be created; use
/// [`try_serve`] to get an error instead.
pub async fn serve(addr: SocketAddr, name: String) -> TestServer {
    match try_serve(addr, name).await {
        Ok(server) => server,
        Err(e) => panic!("starting a test Greeter server on {addr}: {e:#}"),
    }
}

/// Like [`serve`], returning an error instead of panicking.
pub async fn try_serve(addr: SocketAddr, name: String) -> Result<TestServer> {
    try_serve_draining(addr, name, None).await
}

/// Binds `addr` for a server of the runtime entered by the caller; returns the listener and
/// the bound address.
fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let std_listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Like [`try_serve`]; with a `drainer`, the server also runs the `grpc.health.v1` service and
/// [`TestServer::drain`] triggers the drainer instead of shutting down at once.
pub async fn try_serve_draining(
    addr: SocketAddr,
    name: String,
    drainer: Option<Drainer>,
) -> Result<TestServer> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "test servers listen on loopback only, not {addr}"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("greeter-{name}"))
        .enable_all()
        .build()
        .context("building the server runtime")?;
    // On an error the runtime must not be dropped here, inside the caller's async context
    // (tokio panics): shut it down in the background instead.
    let bound = {
        let _guard = runtime.enter();
        bind(addr)
    };
    let (listener, addr) = match bound {
        Ok(bound) => bound,
        Err(e) => {
            runtime.shutdown_background();
            return Err(e);
        }
    };
    let served = Arc::new(AtomicU64::new(0));
    let greeter = NamedGreeter::new(name.clone(), served.clone());
    let last = greeter.last.clone();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task_name = name.clone();
    let (drain, drained) = tokio::sync::oneshot::channel::<()>();
    let (exit, exited) = tokio::sync::watch::channel(false);
    runtime.spawn(async move {
        let trigger: BoxUnit = Box::pin(async {
            let _ = drained.await;
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
        let result = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Err(e) = result {
            tracing::warn!(server = %task_name, "test Greeter server failed: {e}");
        }
        let _ = exit.send(true);
    });
    // The listener is bound before this returns, so connections queue until the server task
    // accepts them; still wait until a TCP connect succeeds to hand back a serving server.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                runtime.shutdown_background();
                return Err(e).with_context(|| format!("test server {name} on {addr}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    Ok(TestServer {
        addr,
        name,
        served,
        last,
        runtime: Some(runtime),
        drain: Some(drain),
        drained_at: None,
        exited,
    })
}
