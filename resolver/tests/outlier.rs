//! Outlier ejection (gRFC A50) against real etcd and real tonic servers on 127.0.0.x: a backend
//! that fails every call with UNAVAILABLE is ejected (no call reaches it, its connection stays),
//! comes back after the base ejection time, is ejected again for twice as long while it still
//! fails, and stays once it recovers; a backend answering only NOT_FOUND is never ejected.

mod backend;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use backend::{Answer, Backend, HealthMode};
use common::*;
use registrar_resolver::{
    Balancer, FailurePercentageEjection, OutlierDetection, SuccessRateEjection,
};
use registrar_testenv::Etcd;
use registrar_testenv::greeter::{GreeterClient, HelloRequest};
use tokio::time::Instant;

/// Callers sending SayHello in a loop until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(balancer: &Balancer, callers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let tasks = (0..callers)
            .map(|_| {
                let mut client = GreeterClient::new(balancer.clone());
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let request = HelloRequest {
                            name: "load".into(),
                        };
                        match client.say_hello(request).await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops and waits for every caller (no call is in flight afterwards); (ok, failed).
    async fn stop(self) -> Result<(usize, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await?;
        }
        Ok((
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        ))
    }
}

/// Whether the balancer has `addr` ejected.
fn ejected(balancer: &Balancer, addr: std::net::SocketAddr) -> bool {
    balancer
        .health()
        .iter()
        .any(|b| b.addr == addr.to_string() && b.ejected)
}

/// Polls every 10 ms until `addr`'s ejection is `want`, failing if `never` gets ejected
/// meanwhile; when it was seen.
async fn until_ejected(
    balancer: &Balancer,
    addr: std::net::SocketAddr,
    want: bool,
    never: std::net::SocketAddr,
) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ejected(balancer, never) {
            bail!("{never} was ejected: {:?}", balancer.health());
        }
        if ejected(balancer, addr) == want {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{addr} not ejected={want} in 20 s: {:?}", balancer.health());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_ejected_then_returns_and_a_not_found_backend_never_is() -> Result<()>
{
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("outlier");
    let mut backends = Vec::new();
    for (i, n) in [51u8, 52, 53, 54, 55].into_iter().enumerate() {
        let b = Backend::start(loopback(n), &format!("o{i}"), HealthMode::Absent).await?;
        put_endpoint(&mut kv, &target, b.addr).await?;
        backends.push(b);
    }
    let (bad, not_found) = (&backends[1], &backends[3]);
    bad.answer(Answer::Unavailable);
    not_found.answer(Answer::NotFound);

    let base = Duration::from_secs(2);
    let interval = Duration::from_millis(500);
    let mut config = OutlierDetection::default();
    config.interval = interval;
    config.base_ejection_time = base;
    let mut success_rate = SuccessRateEjection::default();
    // Low volumes, so that a slow machine still sees the bad backend at every sweep.
    success_rate.request_volume = 10;
    config.success_rate = Some(success_rate);
    let mut failure_percentage = FailurePercentageEjection::default();
    failure_percentage.request_volume = 10;
    config.failure_percentage = Some(failure_percentage);
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .outlier_detection(config)
        .build()
        .await?;
    wait_ready(&balancer, 5).await?;

    // Under load, the failing backend is ejected at a sweep.
    let started = Instant::now();
    let load = Load::start(&balancer, 4);
    let ejected_1 = until_ejected(&balancer, bad.addr, true, not_found.addr).await?;
    let (ok, failed) = load.stop().await?;
    eprintln!(
        "ejected {:?} after the load started ({ok} ok, {failed} failed RPCs until then)",
        ejected_1 - started
    );
    assert_eq!(balancer.ready_count(), 4);

    // While ejected, no call reaches it.
    let before = bad.hellos();
    let mut client = GreeterClient::new(balancer.clone());
    let mut failures = 0;
    for _ in 0..500 {
        match client
            .say_hello(HelloRequest {
                name: "probe".into(),
            })
            .await
        {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::NotFound, "{status}");
                failures += 1;
            }
        }
    }
    let still = ejected(&balancer, bad.addr);
    let reached = bad.hellos() - before;
    eprintln!(
        "500 RPCs while ejected: {reached} reached the ejected backend, {failures} NOT_FOUND \
         from o3; still ejected afterwards: {still}"
    );
    assert!(
        still,
        "the ejection ended during the probe; make the base time longer"
    );
    assert_eq!(reached, 0);

    // It comes back after the base time, still fails, and is ejected again for twice as long.
    let load = Load::start(&balancer, 4);
    let returned_1 = until_ejected(&balancer, bad.addr, false, not_found.addr).await?;
    let ejected_2 = until_ejected(&balancer, bad.addr, true, not_found.addr).await?;
    // It recovers while ejected (it gets no calls then), so that it comes back healthy: a few
    // failures among its first calls back would make it a success-rate outlier again.
    bad.answer(Answer::Hello);
    let returned_2 = until_ejected(&balancer, bad.addr, false, not_found.addr).await?;
    let (first, second) = (returned_1 - ejected_1, returned_2 - ejected_2);
    eprintln!(
        "first ejection lasted {first:?}, back for {:?}, second ejection lasted {second:?} \
         (base {base:?}, sweep every {interval:?})",
        ejected_2 - returned_1
    );
    let slack = Duration::from_millis(50);
    assert!(first + slack >= base && first < base * 2, "{first:?}");
    assert!(
        second + slack >= base * 2 && second < base * 3,
        "{second:?}"
    );

    // Answering again, it stays in and gets its share; NOT_FOUND never ejected o3.
    let window_start = bad.hellos();
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if ejected(&balancer, bad.addr) || ejected(&balancer, not_found.addr) {
            bail!("ejected after recovering: {:?}", balancer.health());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (ok, failed) = load.stop().await?;
    let got = bad.hellos() - window_start;
    eprintln!(
        "after recovery: {got} RPCs reached it in 1.5 s (3 sweeps); load since the probe: {ok} \
         ok, {failed} failed; TCP connections it accepted: {}",
        bad.accepted()
    );
    assert!(got > 0);
    assert_eq!(bad.accepted(), 1, "ejection must keep the connection");
    Ok(())
}
