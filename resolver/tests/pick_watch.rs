//! [`Balancer::watch_pick_set`] against real etcd and real tonic servers on 127.0.0.x: a backend
//! is in the pick set once its connection is READY, leaves it when its key is deleted or its
//! server stops, and every change wakes the watch.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use registrar_resolver::{Backoff, Balancer, PickSetWatch};
use registrar_testenv::Etcd;
use registrar_testenv::greeter;

/// Waits on the watch (up to 10 s) until the pick set is `want`; returns how many changes it
/// took.
async fn wait_for(watch: &mut PickSetWatch, want: &BTreeSet<String>) -> Result<usize> {
    let mut changes = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now: BTreeSet<String> = watch.addrs().iter().map(|a| a.to_string()).collect();
        if &now == want {
            return Ok(changes);
        }
        let woke = tokio::time::timeout_at(deadline, watch.changed())
            .await
            .with_context(|| format!("pick set still {now:?}, want {want:?}"))?;
        anyhow::ensure!(woke, "the balancer is gone");
        changes += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pick_set_watch_follows_keys_and_connections() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let target = target("pickwatch");
    let a = greeter::serve(loopback(21), "a".into()).await;
    let mut b = greeter::serve(loopback(22), "b".into()).await;
    let balancer = Balancer::builder(etcd.client().await?, &target)
        .connection_backoff(Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(500),
        ))
        .build()
        .await?;
    let mut watch = balancer.watch_pick_set();
    assert!(watch.addrs().is_empty());

    put_endpoint(&mut kv, &target, a.addr()).await?;
    put_endpoint(&mut kv, &target, b.addr()).await?;
    let both: BTreeSet<String> = [a.addr().to_string(), b.addr().to_string()].into();
    let changes = wait_for(&mut watch, &both).await?;
    println!("both backends in the pick set after {changes} change(s)");
    assert!(changes >= 1);

    delete_endpoint(&mut kv, &target, a.addr()).await?;
    let only_b: BTreeSet<String> = [b.addr().to_string()].into();
    wait_for(&mut watch, &only_b).await?;
    assert_eq!(balancer.ready_count(), 1);

    b.stop();
    wait_for(&mut watch, &BTreeSet::new()).await?;
    println!(
        "the stopped backend left the pick set; snapshot: {:?}",
        balancer.snapshot().backends
    );

    drop(balancer);
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while watch.changed().await {
            watch.addrs();
        }
    })
    .await;
    assert!(gone.is_ok(), "the watch did not end with the balancer");
    Ok(())
}
