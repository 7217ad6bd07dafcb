//! Shared helpers of the resolver's integration tests: loopback addresses, Greeter calls that
//! count which backend answered, plain (lease-less) endpoint keys, and the test ground's TCP proxy (which can cut a
//! client off etcd while etcd itself keeps running) started in front of an etcd endpoint.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use registrar_resolver::{Balancer, Endpoint, Metadata};
use registrar_testenv::DelayProxy;
use registrar_testenv::greeter::{GreeterClient, HelloRequest};

/// Logs to the test output (`RUST_LOG` to change the level).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,registrar_resolver=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// `127.0.0.<n>:0`: a distinct loopback address, free port.
pub fn loopback(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 0))
}

/// A unique target for one test.
pub fn target(name: &str) -> String {
    format!("registrar/{}/greeter", registrar_testenv::unique_name(name))
}

/// Puts `<target>/<addr>` with no lease.
pub async fn put_endpoint(
    etcd: &mut etcd_client::Client,
    target: &str,
    addr: SocketAddr,
) -> Result<()> {
    let value = Endpoint::new(addr.to_string(), Metadata::null())?.encode();
    etcd.put(format!("{target}/{addr}"), value, None).await?;
    Ok(())
}

/// Deletes `<target>/<addr>`.
pub async fn delete_endpoint(
    etcd: &mut etcd_client::Client,
    target: &str,
    addr: SocketAddr,
) -> Result<()> {
    etcd.delete(format!("{target}/{addr}"), None).await?;
    Ok(())
}

/// One SayHello; the name of the backend that answered.
pub async fn hello(client: &mut GreeterClient<Balancer>) -> Result<String, tonic::Status> {
    let reply = client
        .say_hello(HelloRequest {
            name: "test".into(),
        })
        .await?;
    Ok(reply.into_inner().backend)
}

/// `n` sequential calls; answers per backend, failing on the first error.
pub async fn spread(
    client: &mut GreeterClient<Balancer>,
    n: usize,
) -> Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let backend = hello(client)
            .await
            .with_context(|| format!("call {i} of {n}"))?;
        *counts.entry(backend).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Waits until the balancer has exactly `n` READY backends.
pub async fn wait_ready(balancer: &Balancer, n: usize) -> Result<()> {
    registrar_testenv::poll(
        &format!("{n} READY backends"),
        Duration::from_secs(20),
        || async { (balancer.ready_count() == n).then_some(()) },
    )
    .await
    .with_context(|| format!("backends: {:?}", balancer.backends()))
}

/// The test ground's proxy in front of `upstream` (a loopback address), forwarding at once.
pub async fn etcd_proxy(upstream: SocketAddr) -> Result<DelayProxy> {
    anyhow::ensure!(upstream.ip().is_loopback(), "{upstream} is not loopback");
    DelayProxy::start(upstream.port(), Duration::ZERO).await
}

/// The socket address of an etcd endpoint URL `http://127.0.0.1:PORT`.
pub fn etcd_addr(endpoint: &str) -> Result<SocketAddr> {
    Ok(endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .parse()?)
}

/// The balancer's backend addresses, when every one of them is READY.
pub fn ready_addrs(balancer: &Balancer) -> Option<std::collections::BTreeSet<String>> {
    let backends = balancer.backends();
    let all_ready = backends
        .iter()
        .all(|b| b.state == registrar_resolver::ConnectivityState::Ready);
    all_ready.then(|| backends.into_iter().map(|b| b.addr).collect())
}

/// Waits until the balancer's backends are exactly `want`, all READY; returns how long it took.
pub async fn converge(balancer: &Balancer, want: &[std::net::SocketAddr]) -> Result<Duration> {
    let want: std::collections::BTreeSet<String> = want.iter().map(ToString::to_string).collect();
    let started = tokio::time::Instant::now();
    registrar_testenv::poll(
        &format!("the balancer to converge on {want:?}"),
        Duration::from_secs(30),
        || async { (ready_addrs(balancer).as_ref() == Some(&want)).then_some(()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}; backends {:?}", balancer.backends()))?;
    Ok(started.elapsed())
}

/// Writes unrelated keys so that etcd's revision moves well past what a fresh store reaches.
pub async fn advance_revision(kv: &mut etcd_client::Client, n: usize) -> Result<i64> {
    let mut rev = 0;
    for i in 0..n {
        rev = kv
            .put(format!("unrelated/{i}"), "x", None)
            .await?
            .header()
            .map_or(0, |h| h.revision());
    }
    Ok(rev)
}

/// `total` calls from `callers` concurrent clients; (succeeded, failed).
pub async fn calls(balancer: &Balancer, total: usize, callers: usize) -> Result<(usize, usize)> {
    let mut tasks = Vec::new();
    for c in 0..callers {
        let mut client = GreeterClient::new(balancer.clone());
        let n = total / callers + usize::from(c < total % callers);
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            for _ in 0..n {
                match hello(&mut client).await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await?;
        ok += o;
        failed += f;
    }
    Ok((ok, failed))
}

/// Waits until a Go test program's log at `log` has its `READY <addr>` line; the address.
pub async fn go_ready_addr(log: &std::path::Path, what: &str) -> Result<String> {
    registrar_testenv::poll(what, Duration::from_secs(30), || async {
        std::fs::read_to_string(log)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("READY ").map(str::to_owned))
    })
    .await
    .with_context(|| registrar_testenv::log_tail(log, 20))
}
