//! RPC-path benchmark: requests/s, p50/p99 latency and spread over the same three loopback
//! Greeter servers, in one run, through
//! 1. the registrar [`Balancer`] (etcd resolver, round-robin over READY backends),
//! 2. a direct tonic `Channel` to one of the servers (the baseline of the ratios),
//! 3. tonic's `Channel::balance_channel` over the three (power of two choices),
//! 4. grpc-go with etcd's `naming/resolver` and `round_robin` (the `tests/interop` Go module,
//!    built with the machine's Go; `$GO` selects it).
//!
//! ```text
//! cargo bench -p registrar-resolver --bench rpc
//! ```
//!
//! It starts its own etcd and tonic servers on 127.0.0.2-4; everything stays on loopback. Every
//! client gets the same number of concurrent callers, a warmup, then a measured run bounded in
//! time and in calls. Rounds alternate the clients' order (forward, then reversed) so that a
//! client is not always measured first on a noisy machine. The table is printed and written to
//! `<target>/bench/rpc.md`.
//!
//! Environment (defaults in brackets):
//! - `REGISTRAR_RPC_BENCH_SECONDS` measured seconds per client and round [3]
//! - `REGISTRAR_RPC_BENCH_WARMUP_MS` unmeasured warmup per client and round [500]
//! - `REGISTRAR_RPC_BENCH_CONCURRENCY` concurrent callers [32]
//! - `REGISTRAR_RPC_BENCH_ROUNDS` rounds [2]
//! - `REGISTRAR_RPC_BENCH_MAX_REQUESTS` measured calls per client and round at most [2000000]
//! - `REGISTRAR_RPC_BENCH_OUT` where the Markdown goes [`<target>/bench/rpc.md`]
//!
//! Under `cargo test --benches` (no `--bench` argument) it does nothing; a filter argument that
//! is not part of `rpc` (e.g. `cargo bench -- pick`) skips it.

#[path = "rpc/go.rs"]
mod go;
#[path = "rpc/load.rs"]
mod load;
#[path = "rpc/report.rs"]
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use load::{Limits, Measured};
use registrar_resolver::{Balancer, Endpoint, Metadata};
use registrar_testenv::greeter::{self, TestServer};
use registrar_testenv::{Etcd, poll};
use tonic::transport::Channel;
use tonic::transport::channel::Change;

const TARGET: &str = "registrar/bench/greeter";
const DIRECT: &str = "tonic Channel (1 server)";

/// The clients, in the order of the odd rounds (even rounds run them in reverse).
#[derive(Clone, Copy)]
enum Kind {
    Balancer,
    Direct,
    BalanceChannel,
    GrpcGo,
}

const KINDS: [Kind; 4] = [
    Kind::Balancer,
    Kind::Direct,
    Kind::BalanceChannel,
    Kind::GrpcGo,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Balancer => "registrar Balancer (round-robin)",
            Kind::Direct => DIRECT,
            Kind::BalanceChannel => "tonic balance_channel (p2c)",
            Kind::GrpcGo => "grpc-go round_robin + etcd resolver",
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("rpc: a benchmark; run it with `cargo bench -p registrar-resolver --bench rpc`");
        return std::process::ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| "rpc".contains(f.as_str())) {
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
            eprintln!("rpc benchmark failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn env_or<T: FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={text:?}: {e}")),
        Err(_) => Ok(default),
    }
}

struct Settings {
    limits: Limits,
    rounds: usize,
}

fn settings() -> Result<Settings> {
    let seconds: u64 = env_or("REGISTRAR_RPC_BENCH_SECONDS", 3)?;
    let warmup_ms: u64 = env_or("REGISTRAR_RPC_BENCH_WARMUP_MS", 500)?;
    let concurrency: usize = env_or("REGISTRAR_RPC_BENCH_CONCURRENCY", 32)?;
    let rounds: usize = env_or("REGISTRAR_RPC_BENCH_ROUNDS", 2)?;
    let max_requests: u64 = env_or("REGISTRAR_RPC_BENCH_MAX_REQUESTS", 2_000_000)?;
    anyhow::ensure!((1..=60).contains(&seconds), "seconds: 1..=60");
    anyhow::ensure!(warmup_ms <= 10_000, "warmup: at most 10000 ms");
    anyhow::ensure!((1..=1024).contains(&concurrency), "concurrency: 1..=1024");
    anyhow::ensure!((1..=10).contains(&rounds), "rounds: 1..=10");
    anyhow::ensure!(
        (concurrency as u64..=10_000_000).contains(&max_requests),
        "max requests: concurrency..=10000000"
    );
    Ok(Settings {
        limits: Limits {
            concurrency,
            warmup: Duration::from_millis(warmup_ms),
            duration: Duration::from_secs(seconds),
            max_requests,
        },
        rounds,
    })
}

/// `$REGISTRAR_RPC_BENCH_OUT`, else `<target>/bench/rpc.md`.
fn out_path() -> PathBuf {
    if let Some(p) = std::env::var_os("REGISTRAR_RPC_BENCH_OUT") {
        return PathBuf::from(p);
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("bench").join("rpc.md")
}

/// The clients under test, built once and measured in every round.
struct Clients {
    etcd_endpoint: String,
    go_binary: PathBuf,
    balancer: Balancer,
    direct: Channel,
    balanced: Channel,
    // Dropping the sender would end tower's discovery stream.
    _balanced_changes: tokio::sync::mpsc::Sender<Change<SocketAddr, tonic::transport::Endpoint>>,
}

impl Clients {
    async fn new(etcd: &Etcd, addrs: &[SocketAddr], go_binary: PathBuf) -> Result<Clients> {
        let balancer = Balancer::builder(etcd.client().await?, TARGET)
            .build()
            .await?;
        poll(
            "the balancer to have every backend READY",
            Duration::from_secs(20),
            || async { (balancer.ready_count() == addrs.len()).then_some(()) },
        )
        .await?;
        let direct = Channel::from_shared(format!("http://{}", addrs[0]))?
            .connect()
            .await?;
        let (balanced, tx) = Channel::balance_channel::<SocketAddr>(16);
        for addr in addrs {
            let endpoint = Channel::from_shared(format!("http://{addr}"))?;
            tx.send(Change::Insert(*addr, endpoint)).await?;
        }
        Ok(Clients {
            etcd_endpoint: etcd.endpoint(),
            go_binary,
            balancer,
            direct,
            balanced,
            _balanced_changes: tx,
        })
    }

    async fn measure(&self, kind: Kind, limits: Limits, backends: usize) -> Result<Measured> {
        Ok(match kind {
            Kind::Balancer => load::measure(self.balancer.clone(), limits).await,
            Kind::Direct => load::measure(self.direct.clone(), limits).await,
            Kind::BalanceChannel => load::measure(self.balanced.clone(), limits).await,
            Kind::GrpcGo => {
                go::measure(
                    &self.go_binary,
                    &self.etcd_endpoint,
                    TARGET,
                    backends,
                    limits,
                )
                .await?
            }
        })
    }
}

async fn start_servers(etcd: &Etcd) -> Result<Vec<TestServer>> {
    let mut kv = etcd.client().await?;
    let mut servers = Vec::new();
    for (i, n) in [2u8, 3, 4].into_iter().enumerate() {
        let s = greeter::try_serve(SocketAddr::from(([127, 0, 0, n], 0)), format!("b{i}")).await?;
        let value = Endpoint::new(s.addr().to_string(), Metadata::null())?.encode();
        kv.put(format!("{TARGET}/{}", s.addr()), value, None)
            .await?;
        servers.push(s);
    }
    Ok(servers)
}

async fn run() -> Result<()> {
    let settings = settings()?;
    let limits = settings.limits;
    let started = Instant::now();
    println!("[bench] building the grpc-go client");
    let go_binary = go::binary().context("building the grpc-go client (tests/interop)")?;
    let etcd = Etcd::start().await?;
    let servers = start_servers(&etcd).await?;
    let addrs: Vec<SocketAddr> = servers.iter().map(TestServer::addr).collect();
    let clients = Clients::new(&etcd, &addrs, go_binary).await?;

    let mut results: Vec<report::Client> = KINDS
        .iter()
        .map(|k| report::Client {
            name: k.name(),
            rounds: Vec::new(),
        })
        .collect();
    for round in 0..settings.rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..KINDS.len()).collect()
        } else {
            (0..KINDS.len()).rev().collect()
        };
        for i in order {
            let kind = KINDS[i];
            let m = clients
                .measure(kind, limits, addrs.len())
                .await
                .with_context(|| format!("measuring {}", kind.name()))?;
            println!(
                "[bench] round {}: {:<38} {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  errors {}",
                round + 1,
                kind.name(),
                m.rate(),
                m.p50.as_secs_f64() * 1e6,
                m.p99.as_secs_f64() * 1e6,
                m.errors
            );
            results[i].rounds.push(m);
        }
    }
    for s in &servers {
        anyhow::ensure!(s.is_running(), "server {} stopped during the run", s.name());
    }

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let md = format!(
        "## RPC path: 3 loopback servers, four clients\n\n\
         `cargo bench -p registrar-resolver --bench rpc` — {date}, {cpus} CPUs shared by the \
         servers and the client. Three tonic Greeter servers (one runtime thread each) on \
         127.0.0.2-4; {concurrency} concurrent callers per client, calling `SayHello` back to \
         back; per client and round {warmup} ms warmup, then at most {seconds} s and {max} \
         calls measured; {rounds} rounds, alternating the clients' order. req/s is over all \
         rounds; p50/p99 are the median of the rounds'; max/min is the most calls one backend \
         got over the fewest another got. The direct Channel sends everything to one server, \
         so it is bounded by that server's single thread where the others can use three.\n\n\
         {summary}\n\
         Every round:\n\n\
         {rounds_table}",
        date = utc_now(),
        concurrency = limits.concurrency,
        warmup = limits.warmup.as_millis(),
        seconds = limits.duration.as_secs(),
        max = limits.max_requests,
        rounds = settings.rounds,
        summary = report::summary(&results, DIRECT),
        rounds_table = report::rounds(&results),
    );
    println!("\n{md}");
    let path = out_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "[bench] wrote {} ({:.0} s in all)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The current time as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm), in the proleptic
    // Gregorian calendar.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}
