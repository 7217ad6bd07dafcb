//! Outlier-ejection benchmark (issue 12 §4): ten real tonic Greeter servers on 127.0.0.41-50
//! behind one target in a real etcd, a [`Balancer`] with 8 concurrent callers at ~1,000 RPCs per
//! second in all (bounded). After a healthy warmup one backend starts failing 30 % of its calls
//! with UNAVAILABLE; the share of failed RPCs the client sees over the next 60 s is measured
//! with outlier ejection on (gRFC A50 defaults: [`OutlierDetection::default`]) and off, in
//! one run each, side by side.
//!
//! ```text
//! cargo bench -p registrar-resolver --bench outlier
//! ```
//!
//! Environment (defaults in brackets):
//! - `REGISTRAR_OUTLIER_BENCH_SECONDS` measured seconds after the backend turns bad [60]
//! - `REGISTRAR_OUTLIER_BENCH_WARMUP_SECONDS` healthy seconds before [5]
//! - `REGISTRAR_OUTLIER_BENCH_OUT` where the Markdown goes [`<target>/bench/outlier.md`]
//!
//! Under `cargo test --benches` (no `--bench` argument) it does nothing. Everything stays on
//! loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use registrar_resolver::{Balancer, Endpoint, Metadata, OutlierDetection};
use registrar_testenv::Etcd;
use registrar_testenv::greeter::{
    Greeter, GreeterClient, GreeterServer, HelloReply, HelloRequest, NamedGreeter,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

const TARGET: &str = "registrar/bench-outlier/greeter";
const BACKENDS: u8 = 10;
const CALLERS: u32 = 8;
const RATE: u32 = 1000;
/// Of every 10 calls, the bad backend fails this many once it turns bad.
const BAD_IN_TEN: u64 = 3;

fn main() -> std::process::ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "outlier: a benchmark; run it with `cargo bench -p registrar-resolver --bench outlier`"
        );
        return std::process::ExitCode::SUCCESS;
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outlier benchmark failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn seconds(var: &str, default: u64) -> Result<Duration> {
    Ok(Duration::from_secs(match std::env::var(var) {
        Ok(v) => v.parse().with_context(|| format!("{var}={v:?}"))?,
        Err(_) => default,
    }))
}

/// A Greeter that, once `bad` is set, fails [`BAD_IN_TEN`] of every 10 calls with UNAVAILABLE.
struct Flaky {
    inner: NamedGreeter,
    bad: Arc<AtomicBool>,
    calls: AtomicU64,
}

#[tonic::async_trait]
impl Greeter for Flaky {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if self.bad.load(Ordering::Relaxed) && n % 10 < BAD_IN_TEN {
            return Err(Status::unavailable("flaky backend"));
        }
        self.inner.say_hello(request).await
    }
}

/// Starts a server on `127.0.0.<n>` (free port); returns its address.
async fn serve(n: u8, bad: Arc<AtomicBool>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, n], 0))).await?;
    let addr = listener.local_addr()?;
    let greeter = Flaky {
        inner: NamedGreeter::new(format!("b{n}"), Arc::new(AtomicU64::new(0))),
        bad,
        calls: AtomicU64::new(0),
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GreeterServer::new(greeter))
            .serve_with_incoming(incoming),
    );
    Ok(addr)
}

/// What one run saw after the backend turned bad.
struct Run {
    sent: u64,
    failed: u64,
    /// Seconds the bad backend spent ejected (sampled every 100 ms).
    ejected_s: f64,
    /// When it was first ejected, after it turned bad.
    first_ejection: Option<Duration>,
}

async fn run_once(
    etcd: &Etcd,
    bad: &AtomicBool,
    bad_addr: SocketAddr,
    outlier: bool,
    warmup: Duration,
    measured: Duration,
) -> Result<Run> {
    bad.store(false, Ordering::Relaxed);
    let client = etcd.client().await?;
    let mut builder = Balancer::builder(client, TARGET);
    if outlier {
        builder = builder.outlier_detection(OutlierDetection::default());
    }
    let balancer = builder.build().await?;
    registrar_testenv::poll("every backend READY", Duration::from_secs(20), || async {
        (balancer.ready_count() == usize::from(BACKENDS)).then_some(())
    })
    .await?;
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_secs(1) * CALLERS / RATE;
    let start = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let mut client = GreeterClient::new(balancer.clone());
            let (sent, failed, stop) = (sent.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval_at(start + every * i / CALLERS, every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    ticker.tick().await;
                    let call = client.say_hello(HelloRequest {
                        name: "outlier".into(),
                    });
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(5), call).await,
                        Ok(Ok(_))
                    );
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(warmup).await;
    bad.store(true, Ordering::Relaxed);
    let turned = Instant::now();
    let (sent0, failed0) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let bad_name = bad_addr.to_string();
    let mut ejected_s = 0.0;
    let mut first_ejection = None;
    let mut sampler = tokio::time::interval(Duration::from_millis(100));
    while turned.elapsed() < measured {
        sampler.tick().await;
        let ejected = balancer
            .health()
            .iter()
            .any(|b| b.addr == bad_name && b.ejected);
        if ejected {
            ejected_s += 0.1;
            first_ejection.get_or_insert(turned.elapsed());
        }
    }
    let (sent1, failed1) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await?;
    }
    Ok(Run {
        sent: sent1 - sent0,
        failed: failed1 - failed0,
        ejected_s,
        first_ejection,
    })
}

async fn run() -> Result<()> {
    let measured = seconds("REGISTRAR_OUTLIER_BENCH_SECONDS", 60)?;
    let warmup = seconds("REGISTRAR_OUTLIER_BENCH_WARMUP_SECONDS", 5)?;
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let bad = Arc::new(AtomicBool::new(false));
    let never = Arc::new(AtomicBool::new(false));
    let mut bad_addr = None;
    for i in 0..BACKENDS {
        let n = 41 + i;
        let flag = if i == 0 { bad.clone() } else { never.clone() };
        let addr = serve(n, flag).await?;
        if i == 0 {
            bad_addr = Some(addr);
        }
        let value = Endpoint::new(addr.to_string(), Metadata::null())?.encode();
        kv.put(format!("{TARGET}/{addr}"), value, None).await?;
    }
    let bad_addr = bad_addr.context("no backend")?;
    println!(
        "outlier: {BACKENDS} backends, {CALLERS} callers at <= {RATE} RPC/s; {bad_addr} fails \
         {BAD_IN_TEN}0 % of its calls after {warmup:?}; measured for {measured:?}"
    );
    let mut rows = Vec::new();
    for (label, outlier) in [
        ("outlier ejection on (A50 defaults)", true),
        ("outlier ejection off", false),
    ] {
        let r = run_once(&etcd, &bad, bad_addr, outlier, warmup, measured).await?;
        let share = 100.0 * r.failed as f64 / r.sent.max(1) as f64;
        println!(
            "{label}: {} RPCs sent, {} failed ({share:.2} %); bad backend ejected {:.1} s of \
             {:.0} s, first after {}",
            r.sent,
            r.failed,
            r.ejected_s,
            measured.as_secs_f64(),
            r.first_ejection
                .map_or_else(|| "-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
        rows.push((label, r, share));
    }
    let mut md = format!(
        "`cargo bench -p registrar-resolver --bench outlier`: {BACKENDS} backends, {CALLERS} \
         callers at <= {RATE} RPC/s; one backend fails {BAD_IN_TEN}0 % of its calls (UNAVAILABLE) \
         after {warmup:?}; the {measured:?} after that:\n\n\
         | client | RPCs sent | failed | failed share | bad backend ejected | first ejection |\n\
         |---|---:|---:|---:|---:|---:|\n"
    );
    for (label, r, share) in rows {
        md.push_str(&format!(
            "| {label} | {} | {} | {share:.2} % | {:.1} s of {:.0} s | {} |\n",
            r.sent,
            r.failed,
            r.ejected_s,
            measured.as_secs_f64(),
            r.first_ejection
                .map_or_else(|| "-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
        ));
    }
    println!("\n{md}");
    let path = match std::env::var_os("REGISTRAR_OUTLIER_BENCH_OUT") {
        Some(p) => PathBuf::from(p),
        None => {
            let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
            tmp.parent().unwrap_or(tmp).join("bench").join("outlier.md")
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, md)?;
    println!("written to {}", path.display());
    Ok(())
}
