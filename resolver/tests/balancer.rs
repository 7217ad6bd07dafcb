//! The balancer against real etcd and real tonic servers on distinct 127.0.0.x addresses:
//! round-robin spread, backend failure and recovery, endpoint churn, an empty target, and
//! in-flight calls on a removed backend.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;
use registrar_resolver::{Backoff, Balancer, ConnectivityState};
use registrar_testenv::greeter::{self, GreeterClient, HelloRequest};
use registrar_testenv::{Etcd, poll};

/// Fast backoff so recovery tests take seconds.
fn test_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_backends_share_calls_evenly() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("spread");
    let mut servers = Vec::new();
    for (i, n) in [2u8, 3, 4].into_iter().enumerate() {
        let s = greeter::serve(loopback(n), format!("b{i}")).await;
        put_endpoint(&mut kv, &target, s.addr()).await?;
        servers.push(s);
    }
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .build()
        .await?;
    wait_ready(&balancer, 3).await?;
    let mut client = GreeterClient::new(balancer.clone());

    let counts = spread(&mut client, 3000).await?;
    let max = *counts.values().max().unwrap_or(&0) as f64;
    let min = *counts.values().min().unwrap_or(&0) as f64;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(max / min <= 1.05, "uneven spread {counts:?}");
    // The servers agree with what the replies say.
    for s in &servers {
        assert_eq!(s.served() as usize, counts[s.name()], "{}", s.name());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_skipped_then_used_again() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("kill");
    let mut servers = Vec::new();
    for (i, n) in [5u8, 6, 7].into_iter().enumerate() {
        let s = greeter::serve(loopback(n), format!("k{i}")).await;
        put_endpoint(&mut kv, &target, s.addr()).await?;
        servers.push(s);
    }
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .connection_backoff(test_backoff())
        .build()
        .await?;
    wait_ready(&balancer, 3).await?;

    // Four callers keep calls in flight while a backend dies.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let mut client = GreeterClient::new(balancer.clone());
        let stop = stop.clone();
        callers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match hello(&mut client).await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let victim = servers[1].addr();
    servers[1].stop();
    poll(
        "the killed backend to leave READY",
        Duration::from_secs(10),
        || async {
            balancer
                .backends()
                .iter()
                .any(|b| b.addr == victim.to_string() && b.state != ConnectivityState::Ready)
                .then_some(())
        },
    )
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failed_around_kill = 0;
    for c in callers {
        let (ok, failed) = c.await?;
        assert!(ok > 0);
        failed_around_kill += failed;
    }
    eprintln!("calls failed around the kill: {failed_around_kill}");
    // At most the calls that were in flight on the dying connection (one per caller).
    assert!(failed_around_kill <= 4, "{failed_around_kill} calls failed");

    // After the connection is seen broken: no failures, nothing reaches the dead backend.
    let mut client = GreeterClient::new(balancer.clone());
    let counts = spread(&mut client, 300).await?;
    assert_eq!(counts.get("k1"), None, "{counts:?}");
    assert_eq!(counts.get("k0"), Some(&150), "{counts:?}");
    assert_eq!(counts.get("k2"), Some(&150), "{counts:?}");

    // It comes back on the same address: it gets traffic again.
    let back = greeter::serve(victim, "k1-again".into()).await;
    wait_ready(&balancer, 3).await?;
    let counts = spread(&mut client, 300).await?;
    assert_eq!(counts.get("k1-again"), Some(&100), "{counts:?}");
    assert_eq!(back.served(), 100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_key_gets_no_calls_and_added_key_gets_calls() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("churn");
    let a = greeter::serve(loopback(8), "a".into()).await;
    let b = greeter::serve(loopback(9), "b".into()).await;
    let c = greeter::serve(loopback(10), "c".into()).await;
    put_endpoint(&mut kv, &target, a.addr()).await?;
    put_endpoint(&mut kv, &target, b.addr()).await?;
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .build()
        .await?;
    wait_ready(&balancer, 2).await?;
    let mut client = GreeterClient::new(balancer.clone());
    spread(&mut client, 10).await?;

    delete_endpoint(&mut kv, &target, b.addr()).await?;
    poll(
        "b to leave the balancer",
        Duration::from_secs(10),
        || async { (balancer.backends().len() == 1).then_some(()) },
    )
    .await?;
    let b_before = b.served();
    let counts = spread(&mut client, 200).await?;
    assert_eq!(counts.get("a"), Some(&200), "{counts:?}");
    assert_eq!(b.served(), b_before, "a deleted backend got calls");

    put_endpoint(&mut kv, &target, c.addr()).await?;
    wait_ready(&balancer, 2).await?;
    let counts = spread(&mut client, 200).await?;
    assert_eq!(counts.get("c"), Some(&100), "{counts:?}");
    assert_eq!(c.served(), 100);

    // Two keys naming one address share one backend (and its share of calls).
    kv.put(
        format!("{target}/alias-of-c"),
        registrar_resolver::Endpoint::new(c.addr().to_string(), Default::default())?.encode(),
        None,
    )
    .await?;
    poll(
        "the alias key to be seen",
        Duration::from_secs(10),
        || async { (balancer.resolver().snapshot().len() == 3).then_some(()) },
    )
    .await?;
    assert_eq!(balancer.backends().len(), 2);
    let counts = spread(&mut client, 200).await?;
    assert_eq!(counts.get("c"), Some(&100), "{counts:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_target_fails_unavailable_after_the_wait_or_succeeds_when_a_backend_appears()
-> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("empty");
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .wait_for_ready_timeout(Duration::from_millis(700))
        .build()
        .await?;
    let mut client = GreeterClient::new(balancer.clone());
    let start = Instant::now();
    let status = hello(&mut client).await.unwrap_err();
    let waited = start.elapsed();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // A shorter deadline on the call wins over the configured wait.
    let mut request = tonic::Request::new(HelloRequest { name: "x".into() });
    request.set_timeout(Duration::from_millis(100));
    let start = Instant::now();
    let status = client.say_hello(request).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_millis(600),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        "{status:?}"
    );

    // An endpoint appearing during the wait: the waiting call succeeds.
    let patient = Balancer::builder(etcd.client().await?, &target)
        .wait_for_ready_timeout(Duration::from_secs(15))
        .build()
        .await?;
    let mut patient_client = GreeterClient::new(patient);
    let call = tokio::spawn(async move { hello(&mut patient_client).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished());
    let s = greeter::serve(loopback(11), "late".into()).await;
    put_endpoint(&mut kv, &target, s.addr()).await?;
    let backend = tokio::time::timeout(Duration::from_secs(10), call).await???;
    assert_eq!(backend, "late");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_calls_finish_on_a_removed_backend() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("inflight");
    let s = greeter::serve(loopback(12), "slow".into()).await;
    put_endpoint(&mut kv, &target, s.addr()).await?;
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .wait_for_ready_timeout(Duration::from_millis(300))
        .build()
        .await?;
    wait_ready(&balancer, 1).await?;
    let mut client = GreeterClient::new(balancer.clone());
    let call = tokio::spawn(async move {
        client
            .say_hello(HelloRequest {
                name: "sleep:1500".into(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    delete_endpoint(&mut kv, &target, s.addr()).await?;
    poll(
        "the backend to be removed",
        Duration::from_secs(10),
        || async { balancer.backends().is_empty().then_some(()) },
    )
    .await?;
    assert!(!call.is_finished(), "the slow call should still be running");
    let reply = call.await??;
    assert_eq!(reply.into_inner().backend, "slow");
    // New calls have nowhere to go.
    let mut client = GreeterClient::new(balancer.clone());
    assert_eq!(
        hello(&mut client).await.unwrap_err().code(),
        tonic::Code::Unavailable
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_backs_off_and_is_not_picked() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("dead");
    let alive = greeter::serve(loopback(13), "alive".into()).await;
    put_endpoint(&mut kv, &target, alive.addr()).await?;
    // Nothing listens on 127.0.0.14:<port>: bind a port, then free it.
    let dead = {
        let l = std::net::TcpListener::bind(loopback(14))?;
        l.local_addr()?
    };
    put_endpoint(&mut kv, &target, dead).await?;
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .build()
        .await?;
    wait_ready(&balancer, 1).await?;
    poll(
        "the dead backend in TRANSIENT_FAILURE",
        Duration::from_secs(10),
        || async {
            balancer
                .backends()
                .into_iter()
                .find(|b| b.addr == dead.to_string())
                .filter(|b| b.state == ConnectivityState::TransientFailure)
                .and_then(|b| b.last_error)
        },
    )
    .await?;
    let mut client = GreeterClient::new(balancer.clone());
    let counts = spread(&mut client, 100).await?;
    assert_eq!(counts.get("alive"), Some(&100), "{counts:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_backend_finishes_in_flight_calls_and_new_calls_go_elsewhere() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("drain");
    let mut a = greeter::serve(loopback(15), "a".into()).await;
    let b = greeter::serve(loopback(16), "b".into()).await;
    put_endpoint(&mut kv, &target, a.addr()).await?;
    put_endpoint(&mut kv, &target, b.addr()).await?;
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .connection_backoff(test_backoff())
        .build()
        .await?;
    wait_ready(&balancer, 2).await?;
    // Slow calls in flight on both backends.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut client = GreeterClient::new(balancer.clone());
        slow.push(tokio::spawn(async move {
            client
                .say_hello(HelloRequest {
                    name: "sleep:1500".into(),
                })
                .await
                .map(|r| r.into_inner().backend)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.drain(); // GOAWAY; the slow calls on `a` keep running
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut client = GreeterClient::new(balancer.clone());
    let mut failed = 0;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..100 {
        match hello(&mut client).await {
            Ok(backend) => *counts.entry(backend).or_insert(0) += 1,
            Err(_) => failed += 1,
        }
    }
    assert_eq!(
        failed, 0,
        "calls failed while a backend drained: {counts:?}"
    );
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
    let mut finished = std::collections::BTreeMap::new();
    for call in slow {
        *finished.entry(call.await??).or_insert(0) += 1;
    }
    assert_eq!(finished.get("a"), Some(&2), "{finished:?}");
    assert_eq!(finished.get("b"), Some(&2), "{finished:?}");
    Ok(())
}
