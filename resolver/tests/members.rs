//! The member guard of [`EtcdConnect`] against a real 3-member etcd: a killed member is taken
//! out of the balanced set (requests stop failing on it) and put back once it serves again;
//! without the guard, requests keep failing on the dead member's address.

use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::Client;
use registrar_resolver::EtcdConnect;
use registrar_resolver::members::{MemberHealth, MemberState, ProbeSettings};
use registrar_testenv::{EtcdCluster, poll};

const WAIT: Duration = Duration::from_secs(20);

/// Sends `n` gets, one every 10 ms; returns how many failed.
async fn failures(client: &mut Client, n: usize) -> usize {
    let mut failed = 0;
    for _ in 0..n {
        let r = tokio::time::timeout(Duration::from_secs(2), client.get("probe-key", None)).await;
        if !matches!(r, Ok(Ok(_))) {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    failed
}

fn states(health: &MemberHealth) -> Vec<(MemberState, bool)> {
    health
        .snapshot()
        .into_iter()
        .map(|m| (m.state, m.in_balanced_set))
        .collect()
}

#[tokio::test]
async fn a_killed_member_is_taken_out_and_put_back() -> Result<()> {
    let mut cluster = EtcdCluster::start().await?;
    let (mut client, health) = EtcdConnect::new(cluster.endpoints())
        .member_probe(Some(ProbeSettings::new(
            Duration::from_millis(250),
            Duration::from_millis(500),
        )))
        .connect_with_health()
        .await?;
    let health = health.context("member probing is on")?;
    let victim = cluster.wait_leader().await?;
    let dead = cluster.endpoint(victim)?;

    cluster.kill(victim).await?;
    let killed = tokio::time::Instant::now();
    poll("the dead member taken out", WAIT, || async {
        health
            .snapshot()
            .iter()
            .any(|m| m.endpoint == dead && !m.in_balanced_set)
            .then_some(())
    })
    .await?;
    println!(
        "dead member out after {:?}: {:?}",
        killed.elapsed(),
        states(&health)
    );
    // Once it is out (and a leader is elected), nothing fails on it any more. The guard fails
    // requests in flight once when it sees the leader change; wait until that is past: 30 gets
    // in a row succeed (over a probe interval; with requests going to the dead member, about a
    // third would fail and this would never happen).
    cluster.wait_leader().await?;
    poll("the election to settle in the guard", WAIT, || {
        let mut c = client.clone();
        async move { (failures(&mut c, 30).await == 0).then_some(()) }
    })
    .await?;
    let failed = failures(&mut client, 100).await;
    println!("guarded: {failed} of 100 gets failed with member {victim} dead");
    assert_eq!(failed, 0, "requests went to the dead member");

    cluster.restart(victim).await?;
    poll("the member put back", WAIT, || async {
        health
            .snapshot()
            .iter()
            .all(|m| m.state == MemberState::Healthy && m.in_balanced_set)
            .then_some(())
    })
    .await?;
    assert_eq!(failures(&mut client, 20).await, 0);
    Ok(())
}

#[tokio::test]
async fn without_the_guard_requests_keep_failing_on_a_dead_member() -> Result<()> {
    let mut cluster = EtcdCluster::start().await?;
    let mut client = EtcdConnect::new(cluster.endpoints())
        .member_probe(None)
        .connect()
        .await?;
    let victim = cluster.wait_leader().await?;
    cluster.kill(victim).await?;
    cluster.wait_leader().await?;
    let failed = failures(&mut client, 100).await;
    println!("unguarded: {failed} of 100 gets failed with member {victim} dead");
    assert!(
        failed > 0,
        "etcd-client's balancing no longer picks dead members: the guard may be unneeded"
    );
    Ok(())
}
