//! What one client measured, and the closed-loop load that measures a tonic client: a number
//! of concurrent callers sending `SayHello` back to back, bounded by time and by count.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use registrar_testenv::greeter::{GreeterClient, HelloRequest};
use tonic::client::GrpcService;
use tonic::codegen::{Body, Bytes, StdError};

/// Bounds of one measurement.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Concurrent callers (tasks or goroutines) sharing one client.
    pub concurrency: usize,
    /// Unmeasured load first (connections, pickers, caches).
    pub warmup: Duration,
    /// Measured load, at most this long.
    pub duration: Duration,
    /// At most this many measured calls (spread evenly over the callers).
    pub max_requests: u64,
}

/// What one client measured in one run.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// Successful calls.
    pub requests: u64,
    /// Failed calls.
    pub errors: u64,
    /// Wall time of the measured load.
    pub elapsed: Duration,
    /// Median latency of successful calls.
    pub p50: Duration,
    /// 99th percentile latency of successful calls.
    pub p99: Duration,
    /// Successful calls per backend name.
    pub backends: BTreeMap<String, u64>,
}

impl Measured {
    /// Successful calls per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The element at `round((len - 1) * p)` of sorted latencies (the Go side uses the same rule).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Warms up, then measures `service` under `limits`.
pub async fn measure<S>(service: S, limits: Limits) -> Measured
where
    S: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<StdError>,
    S::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    if !limits.warmup.is_zero() {
        run(
            service.clone(),
            limits.concurrency,
            limits.warmup,
            limits.max_requests,
        )
        .await;
    }
    run(
        service,
        limits.concurrency,
        limits.duration,
        limits.max_requests,
    )
    .await
}

struct Caller {
    latencies: Vec<Duration>,
    backends: BTreeMap<String, u64>,
    errors: u64,
}

async fn run<S>(service: S, concurrency: usize, duration: Duration, max_requests: u64) -> Measured
where
    S: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<StdError>,
    S::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let concurrency = concurrency.max(1);
    let per_caller = max_requests / concurrency as u64;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut client = GreeterClient::new(service.clone());
        tasks.push(tokio::spawn(async move {
            let mut caller = Caller {
                latencies: Vec::new(),
                backends: BTreeMap::new(),
                errors: 0,
            };
            for _ in 0..per_caller {
                if Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let request = HelloRequest {
                    name: "bench".into(),
                };
                match client.say_hello(request).await {
                    Ok(reply) => {
                        caller.latencies.push(t.elapsed());
                        *caller
                            .backends
                            .entry(reply.into_inner().backend)
                            .or_default() += 1;
                    }
                    Err(_) => caller.errors += 1,
                }
            }
            caller
        }));
    }
    let mut latencies = Vec::new();
    let mut measured = Measured::default();
    for task in tasks {
        match task.await {
            Ok(caller) => {
                latencies.extend(caller.latencies);
                measured.errors += caller.errors;
                for (backend, n) in caller.backends {
                    *measured.backends.entry(backend).or_default() += n;
                }
            }
            // A caller that panicked counts as one failure.
            Err(_) => measured.errors += 1,
        }
    }
    measured.elapsed = start.elapsed();
    measured.requests = latencies.len() as u64;
    latencies.sort_unstable();
    measured.p50 = percentile(&latencies, 0.50);
    measured.p99 = percentile(&latencies, 0.99);
    measured
}
