//! A readiness storm, for `benches/storm.rs`: N backends become known at once (one resolver
//! update) and all turn READY at about the same time, as at a client's cold start. The figures
//! are the time from the update to the first and to all N backends in the pick set, and how
//! many pickers were built on the way.
//!
//! Two ways: [`in_process`] (each backend's subchannel replaced by a task reporting READY on a
//! lazily connected channel that is never used: the balancer's own cost alone, any N) and
//! [`loopback`] (one tonic server listening on N ports of `127.0.0.1`, the balancer's real
//! subchannels dialing them: three file descriptors per backend).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use super::updates::{addr, put_at};
use crate::backoff::Backoff;
use crate::balancer::connector::Liveness;
use crate::balancer::health::HealthState;
use crate::balancer::manager::{EndpointFactory, Manager};
use crate::balancer::meta::BackendMeta;
use crate::balancer::picker::Picker;
use crate::balancer::pool::{Picked, Pool};
use crate::balancer::subchannel::ConnectPolicy;
use crate::discovery::{self, Endpoints, Snapshot};
use crate::error::Error;

/// What one storm cost.
#[derive(Clone, Copy, Debug)]
pub struct StormCost {
    /// From the update to the first backend in the pick set.
    pub first: Duration,
    /// From the update to every backend in the pick set.
    pub all: Duration,
    /// Pickers built on the way.
    pub rebuilds: u64,
}

/// `n` backends added by one update, each turned READY by a task of its own (spawned on the
/// current runtime, so a multi-threaded one runs them in parallel). Waits at most `deadline`.
pub async fn in_process(n: usize, deadline: Duration) -> Result<StormCost, Error> {
    let pool = Arc::new(Pool::new());
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
    let mut sets = pool.subscribe();
    let wanted = (0..n)
        .map(|i| (Arc::from(addr(i)), BackendMeta::default()))
        .collect();
    let start = Instant::now();
    let mut generation = 0;
    let sinks = pool.update(&[], wanted, &mut generation);
    for sink in sinks {
        let channel = channel.clone();
        tokio::spawn(async move {
            sink.ready(channel, Arc::new(Liveness::new()), HealthState::Off);
        });
    }
    let (first, all) = wait_for_all(&mut sets, n, start, deadline).await?;
    Ok(StormCost {
        first,
        all,
        rebuilds: pool.rebuilds(),
    })
}

/// `n` backends on `127.0.0.1` (one tonic server with the health service, listening on `n`
/// ports) added by one update, dialed by the balancer's own subchannels. Waits at most
/// `deadline`.
pub async fn loopback(n: usize, deadline: Duration) -> Result<StormCost, Error> {
    let mut listeners = Vec::with_capacity(n);
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::config(format!("binding a loopback listener: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::config(format!("reading a listener's address: {e}")))?;
        addrs.push(local.to_string());
        listeners.push(listener);
    }
    let incoming = futures::stream::select_all(listeners.into_iter().map(|listener| {
        futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        })
        .boxed()
    }));
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    let factory: Arc<EndpointFactory> =
        Arc::new(|a: &str| tonic::transport::Endpoint::from_shared(format!("http://{a}")));
    let policy = ConnectPolicy {
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
        min_connect_timeout: Duration::from_secs(20),
        health: None,
    };
    let pool = Arc::new(Pool::new());
    let mut sets = pool.subscribe();
    let mut endpoints = Endpoints::new();
    let events = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| put_at(i, a, 1))
        .collect::<Result<Vec<_>, _>>()?;
    discovery::apply(&events, &mut endpoints);
    let snapshot = Snapshot::new(1, endpoints);
    let mut manager = Manager::new(pool.clone(), factory, policy);
    let start = Instant::now();
    manager.reconcile(&snapshot);
    let waited = wait_for_all(&mut sets, n, start, deadline).await;
    let rebuilds = pool.rebuilds();
    // Dropping the manager and the pool aborts the subchannels (closing the connections).
    drop((manager, pool, sets));
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    let (first, all) = waited?;
    Ok(StormCost {
        first,
        all,
        rebuilds,
    })
}

/// Waits until the pick set holds `n` backends; (first backend, all) after `start`.
async fn wait_for_all(
    sets: &mut watch::Receiver<Arc<Picker<Arc<Picked>>>>,
    n: usize,
    start: Instant,
    deadline: Duration,
) -> Result<(Duration, Duration), Error> {
    let mut first = None;
    let until = tokio::time::Instant::from_std(start) + deadline;
    loop {
        let len = sets.borrow_and_update().len();
        if len > 0 && first.is_none() {
            first = Some(start.elapsed());
        }
        if len >= n {
            let all = start.elapsed();
            return Ok((first.unwrap_or(all), all));
        }
        match tokio::time::timeout_at(until, sets.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Error::stopped()),
            Err(_) => return Err(Error::timeout(deadline)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_backend_of_a_storm_reaches_the_pick_set() {
        let cost = in_process(300, Duration::from_secs(30)).await.unwrap();
        println!("in-process storm of 300: {cost:?}");
        assert!(cost.first <= cost.all);
        assert!(cost.rebuilds >= 1);
        let cost = loopback(50, Duration::from_secs(30)).await.unwrap();
        println!("loopback storm of 50: {cost:?}");
        assert!(cost.first <= cost.all);
    }
}
