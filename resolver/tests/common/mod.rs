//! Shared helpers of the resolver's integration tests: loopback addresses, Greeter calls that
//! count which backend answered, plain (lease-less) endpoint keys, and a TCP proxy that can cut
//! a client off etcd while etcd itself keeps running.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use registrar_resolver::{Balancer, Endpoint, Metadata};
use registrar_testenv::greeter::{GreeterClient, HelloRequest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

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

/// A loopback TCP proxy to `upstream` that can be cut (every connection closed, new ones
/// refused) and restored.
pub struct Proxy {
    addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    conns: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let enabled = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let accept = tokio::spawn({
            let enabled = enabled.clone();
            let conns = conns.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !enabled.load(Ordering::SeqCst) {
                        continue; // dropped: connection closed at once
                    }
                    conns.lock().await.spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }
        });
        Ok(Proxy {
            addr,
            enabled,
            conns,
            accept,
        })
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every proxied connection and refuses new ones.
    pub async fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        self.conns.lock().await.abort_all();
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
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
