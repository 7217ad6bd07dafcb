//! A real tonic Greeter server on a loopback address with (optionally) the standard
//! `grpc.health.v1` service from tonic-health, instrumented for the health checking and outlier
//! ejection tests: it counts accepted TCP connections, Watch calls (also when it has no health
//! service) and SayHello calls (also failed ones), and notes when the first Watch and the first
//! SayHello arrived. Its first answer on each Watch stream can be delayed, and it can be told to
//! fail every SayHello with UNAVAILABLE or NOT_FOUND.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Result;
use futures::{Stream, StreamExt};
use registrar_testenv::greeter::{Greeter, GreeterServer, HelloReply, HelloRequest, NamedGreeter};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

pub const WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";
const HELLO_PATH: &str = "/greeter.v1.Greeter/SayHello";

/// Whether and how the server offers the health service.
#[derive(Clone, Copy, Debug)]
pub enum HealthMode {
    /// No health service: a Watch gets `UNIMPLEMENTED`.
    Absent,
    /// tonic-health as is.
    Standard,
    /// tonic-health, but the first answer of every Watch stream comes this late.
    DelayFirstAnswer(Duration),
}

/// How the server answers SayHello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Answer {
    Hello = 0,
    Unavailable = 1,
    NotFound = 2,
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub accepted: AtomicUsize,
    pub watches: AtomicUsize,
    pub hellos: AtomicU64,
    pub first_watch: OnceLock<Instant>,
    pub first_hello: OnceLock<Instant>,
    pub last_hello: std::sync::Mutex<Option<Instant>>,
    /// When the server's serve future returned (after a shutdown future).
    pub stopped: OnceLock<Instant>,
}

/// A running server; its task is aborted when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub reporter: HealthReporter,
    pub seen: Arc<Seen>,
    served: Arc<AtomicU64>,
    answer: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Serves on `addr` (port 0: any free port) under `name`.
    pub async fn start(addr: SocketAddr, name: &str, mode: HealthMode) -> Result<Backend> {
        Self::start_with(addr, name, mode, |_| std::future::pending()).await
    }

    /// Like [`start`](Self::start), shutting down gracefully once the future that `shutdown`
    /// makes from the health reporter completes.
    pub async fn start_with<F>(
        addr: SocketAddr,
        name: &str,
        mode: HealthMode,
        shutdown: impl FnOnce(HealthReporter) -> F,
    ) -> Result<Backend>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen::default());
        let answer = Arc::new(AtomicU8::new(Answer::Hello as u8));
        let served = Arc::new(AtomicU64::new(0));
        let reporter = HealthReporter::new();
        let health = match mode {
            HealthMode::Absent => None,
            HealthMode::Standard => Some(Duration::ZERO),
            HealthMode::DelayFirstAnswer(d) => Some(d),
        }
        .map(|first_delay| {
            HealthServer::new(Delayed {
                inner: HealthService::from_health_reporter(reporter.clone()),
                first_delay,
            })
        });
        let incoming = futures::stream::unfold((listener, seen.clone()), |(l, seen)| async move {
            let accepted = l.accept().await.map(|(stream, _)| stream);
            if accepted.is_ok() {
                seen.accepted.fetch_add(1, Ordering::SeqCst);
            }
            Some((accepted, (l, seen)))
        });
        let record = {
            let seen = seen.clone();
            move |req: http::Request<tonic::body::Body>| {
                match req.uri().path() {
                    WATCH_PATH => {
                        seen.watches.fetch_add(1, Ordering::SeqCst);
                        let _ = seen.first_watch.set(Instant::now());
                    }
                    HELLO_PATH => {
                        seen.hellos.fetch_add(1, Ordering::SeqCst);
                        let now = Instant::now();
                        let _ = seen.first_hello.set(now);
                        *seen.last_hello.lock().unwrap() = Some(now);
                    }
                    _ => {}
                }
                req
            }
        };
        let router = tonic::transport::Server::builder()
            .layer(tower::util::MapRequestLayer::new(record))
            .add_service(GreeterServer::new(Answering {
                inner: NamedGreeter::new(name, served.clone()),
                answer: answer.clone(),
            }))
            .add_optional_service(health);
        let shutdown = shutdown(reporter.clone());
        let stopped = seen.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                eprintln!("test server stopped: {e}");
            }
            let _ = stopped.stopped.set(Instant::now());
        });
        Ok(Backend {
            addr,
            name: name.to_owned(),
            reporter,
            seen,
            served,
            answer,
            task,
        })
    }

    /// SayHello calls served.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// SayHello calls received (answered or failed).
    pub fn hellos(&self) -> u64 {
        self.seen.hellos.load(Ordering::SeqCst)
    }

    /// From now on, answers every SayHello this way.
    pub fn answer(&self, answer: Answer) {
        self.answer.store(answer as u8, Ordering::SeqCst);
    }

    pub fn accepted(&self) -> usize {
        self.seen.accepted.load(Ordering::SeqCst)
    }

    /// When the last SayHello arrived.
    pub fn last_hello(&self) -> Option<Instant> {
        *self.seen.last_hello.lock().unwrap()
    }

    pub fn watches(&self) -> usize {
        self.seen.watches.load(Ordering::SeqCst)
    }

    pub async fn set(&self, service: &str, status: ServingStatus) {
        self.reporter.set_service_status(service, status).await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Greeter, or a scripted failure.
struct Answering {
    inner: NamedGreeter,
    answer: Arc<AtomicU8>,
}

#[tonic::async_trait]
impl Greeter for Answering {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        match self.answer.load(Ordering::SeqCst) {
            1 => Err(Status::unavailable("told to fail")),
            2 => Err(Status::not_found("told to say not found")),
            _ => self.inner.say_hello(request).await,
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

/// tonic-health's service with the first answer of each Watch stream held back.
struct Delayed {
    inner: HealthService,
    first_delay: Duration,
}

#[tonic::async_trait]
impl Health for Delayed {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let answers = self.inner.watch(request).await?.into_inner();
        let delay = self.first_delay;
        let held = futures::stream::once(tokio::time::sleep(delay)).filter_map(|()| async { None });
        Ok(Response::new(Box::pin(held.chain(answers))))
    }
}
