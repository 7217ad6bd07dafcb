//! RPC-path benchmark: requests/s, p50/p99 latency and spread over the same three loopback
//! Greeter servers through (1) the [`Balancer`], (2) a direct tonic `Channel` to one server,
//! (3) tonic's `Channel::balance_channel` over the three.
//!
//! ```text
//! cargo run --release -p registrar-resolver --example bench_rpc -- [seconds per client kind (3)] [concurrency (32)]
//! ```
//!
//! Starts its own etcd (the test ground's) and servers on 127.0.0.2-4; everything stays on
//! loopback. Each run is bounded in time and in requests (at most 2,000,000).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use registrar_resolver::{Balancer, Endpoint, Metadata};
use registrar_testenv::Etcd;
use registrar_testenv::greeter::{self, GreeterClient, HelloRequest};
use tonic::client::GrpcService;
use tonic::transport::Channel;
use tonic::transport::channel::Change;

const MAX_REQUESTS: u64 = 2_000_000;

struct Outcome {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    spread: BTreeMap<String, u64>,
}

async fn run<S>(service: S, seconds: u64, concurrency: usize) -> Outcome
where
    S: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let per_task = MAX_REQUESTS / concurrency as u64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = GreeterClient::new(service.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut spread: BTreeMap<String, u64> = BTreeMap::new();
            let mut errors = 0;
            for _ in 0..per_task {
                if Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                match client
                    .say_hello(HelloRequest {
                        name: "bench".into(),
                    })
                    .await
                {
                    Ok(reply) => {
                        latencies.push(t.elapsed());
                        *spread.entry(reply.into_inner().backend).or_default() += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, spread, errors)
        }));
    }
    let mut outcome = Outcome {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        spread: BTreeMap::new(),
    };
    for task in tasks {
        if let Ok((latencies, spread, errors)) = task.await {
            outcome.latencies.extend(latencies);
            outcome.errors += errors;
            for (k, v) in spread {
                *outcome.spread.entry(k).or_default() += v;
            }
        }
    }
    outcome.elapsed = start.elapsed();
    outcome.requests = outcome.latencies.len() as u64;
    outcome.latencies.sort();
    outcome
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, o: &Outcome) {
    let max = o.spread.values().max().copied().unwrap_or(0) as f64;
    let min = o.spread.values().min().copied().unwrap_or(0) as f64;
    let share = if o.spread.len() > 1 && min > 0.0 {
        format!("{:.3}", max / min)
    } else {
        "-".into()
    };
    println!(
        "| {name:<28} | {:>10.0} | {:>8.1} | {:>8.1} | {:>6} | {:>13} | {share:>9} |",
        o.requests as f64 / o.elapsed.as_secs_f64(),
        percentile(&o.latencies, 0.50).as_secs_f64() * 1e6,
        percentile(&o.latencies, 0.99).as_secs_f64() * 1e6,
        o.errors,
        o.spread.len(),
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = args.first().map_or(Ok(3), |s| s.parse())?.clamp(1, 60);
    let concurrency: usize = args.get(1).map_or(Ok(32), |s| s.parse())?.clamp(1, 1024);

    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = "registrar/bench/greeter";
    let mut servers = Vec::new();
    for (i, n) in [2u8, 3, 4].into_iter().enumerate() {
        let s = greeter::serve(SocketAddr::from(([127, 0, 0, n], 0)), format!("b{i}")).await;
        let value = Endpoint::new(s.addr().to_string(), Metadata::null())?.encode();
        kv.put(format!("{target}/{}", s.addr()), value, None)
            .await?;
        servers.push(s);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr()).collect();

    println!("{seconds} s per client kind, {concurrency} concurrent callers, 3 loopback servers\n");
    println!(
        "| {:<28} | {:>10} | {:>8} | {:>8} | {:>6} | {:>13} | {:>9} |",
        "client", "req/s", "p50 µs", "p99 µs", "errors", "backends used", "max/min"
    );
    println!(
        "|{:-<30}|{:->12}|{:->10}|{:->10}|{:->8}|{:->15}|{:->11}|",
        "", "", "", "", "", "", ""
    );

    let balancer = Balancer::builder(etcd.client().await?, target)
        .build()
        .await?;
    while balancer.ready_count() < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let o = run(balancer, seconds, concurrency).await;
    report("registrar Balancer (RR)", &o);

    let direct = Channel::from_shared(format!("http://{}", addrs[0]))?
        .connect()
        .await?;
    let o = run(direct, seconds, concurrency).await;
    report("tonic Channel (1 server)", &o);

    let (balanced, tx) = Channel::balance_channel::<SocketAddr>(16);
    for addr in &addrs {
        let endpoint = Channel::from_shared(format!("http://{addr}"))?;
        tx.send(Change::Insert(*addr, endpoint)).await?;
    }
    let o = run(balanced, seconds, concurrency).await;
    report("tonic balance_channel (p2c)", &o);
    Ok(())
}
