//! The client end of the benchmark: a `registrar-resolver` `Balancer` on the round's target,
//! recording per backend when its resolver first listed it and when it entered the pick set
//! (and when each left again), plus the loopback gRPC server every backend connection is
//! dialed to.
//!
//! The pods' IPs are in a range nothing routes (the EndpointSlice controller refuses loopback
//! addresses), so the balancer's endpoint configuration replaces every backend's address with
//! the loopback server's: the balancer still keeps one connection per backend and picks only
//! READY ones, but no packet leaves loopback. The client runs on its own thread and runtime,
//! apart from the other observers, so its connection work never delays their timestamps; the
//! server runs on another.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use registrar_resolver::Balancer;
use tokio::sync::{oneshot, watch};
use tonic::transport::Endpoint;

/// A gRPC server on `127.0.0.1` with no services (every call is `UNIMPLEMENTED`): enough for
/// HTTP/2 connections to become READY. Runs until dropped.
pub struct LoopbackServer {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl LoopbackServer {
    /// Starts the server on its own thread and runtime.
    pub fn start() -> Result<LoopbackServer> {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("bench-backends".into())
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    tonic::transport::Server::builder()
                        .add_routes(tonic::service::Routes::default())
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        })
                        .await?;
                    anyhow::Ok(())
                })
            })?;
        Ok(LoopbackServer { addr, _stop: stop })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// What the client saw, per backend address (`ip:port`), first time each.
#[derive(Debug, Default)]
pub struct ClientSeen {
    /// Listed by the balancer's resolver (its etcd watch).
    pub resolved: HashMap<String, Instant>,
    /// In the pick set.
    pub picked: HashMap<String, Instant>,
    /// No longer listed by the resolver, after having been.
    pub unresolved: HashMap<String, Instant>,
    /// Out of the pick set, after having been in it.
    pub unpicked: HashMap<String, Instant>,
}

/// Live counts, to wait on.
#[derive(Clone, Debug, Default)]
pub struct ClientProgress {
    /// The balancer is built and its watches run.
    pub established: bool,
    /// Backends in the pick set now.
    pub picked: usize,
}

/// The running client of one round.
pub type Client = crate::common::observer::Observer<ClientProgress, ClientSeen>;

/// Starts a balancer on `target` (etcd at `etcd_endpoint`) whose connections all go to
/// `server`, and waits until it runs.
pub async fn start(etcd_endpoint: String, target: String, server: SocketAddr) -> Result<Client> {
    let mut client = Client::spawn(
        "bench-client",
        |p| format!("{p:?}"),
        move |stop, progress| follow(etcd_endpoint, target, server, stop, progress),
    )?;
    client
        .wait("the balancer built", Duration::from_secs(30), |p| {
            p.established
        })
        .await?;
    Ok(client)
}

async fn follow(
    etcd_endpoint: String,
    target: String,
    server: SocketAddr,
    mut stop: oneshot::Receiver<()>,
    progress: watch::Sender<ClientProgress>,
) -> Result<ClientSeen> {
    let etcd = etcd_client::Client::connect([etcd_endpoint.as_str()], None).await?;
    let loopback = format!("http://{server}");
    let balancer = Balancer::builder(etcd, target)
        // Every backend is dialed on loopback, whatever its registered address.
        .configure_endpoint(move |_| Endpoint::from_shared(loopback.clone()))
        .build()
        .await
        .context("building the balancer")?;
    let mut picks = balancer.watch_pick_set();
    let mut snapshots = balancer.resolver().subscribe();
    let mut seen = ClientSeen::default();
    let mut listed: HashSet<String> = HashSet::new();
    let mut in_set: HashSet<Arc<str>> = HashSet::new();
    let update = |in_set: &HashSet<Arc<str>>| {
        progress.send_replace(ClientProgress {
            established: true,
            picked: in_set.len(),
        });
    };
    update(&in_set);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = snapshots.changed() => {
                let at = Instant::now();
                changed.context("the resolver stopped")?;
                let snapshot = snapshots.borrow_and_update().clone();
                let now: HashSet<String> = snapshot.addrs().into_iter().map(str::to_owned).collect();
                for addr in now.difference(&listed) {
                    seen.resolved.entry(addr.clone()).or_insert(at);
                }
                for addr in listed.difference(&now) {
                    seen.unresolved.entry(addr.clone()).or_insert(at);
                }
                listed = now;
            }
            alive = picks.changed() => {
                let at = Instant::now();
                anyhow::ensure!(alive, "the balancer stopped");
                let now: HashSet<Arc<str>> = picks.addrs().into_iter().collect();
                for addr in now.difference(&in_set) {
                    seen.picked.entry(addr.to_string()).or_insert(at);
                }
                for addr in in_set.difference(&now) {
                    seen.unpicked.entry(addr.to_string()).or_insert(at);
                }
                in_set = now;
                update(&in_set);
            }
        }
    }
    Ok(seen)
}
