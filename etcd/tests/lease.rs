//! The shared lease keepalive against a real etcd: a lease that survives an outage is kept
//! (same id, no new grant); a lease revoked on the server is replaced and the new grant
//! reported; a holder's "lease not found" replaces it at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use registrar_etcd::{KeptLease, LeaseObserver, LeaseState, Retry};
use registrar_testenv::{Etcd, poll};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

/// A fixed, short retry delay.
struct Quick;

impl Retry for Quick {
    fn next_delay(&mut self) -> Duration {
        Duration::from_millis(100)
    }
    fn reset(&mut self) {}
}

/// Counts the lease's events.
#[derive(Default)]
struct Counts {
    granted: AtomicU64,
    kept_alive: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
}

impl LeaseObserver for Counts {
    fn granted(&self, _id: i64, _ttl: i64) {
        self.granted.fetch_add(1, Ordering::Relaxed);
    }
    fn kept_alive(&self, _id: i64) {
        self.kept_alive.fetch_add(1, Ordering::Relaxed);
    }
    fn keepalive_failed(&self, _id: i64, _reason: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    fn lost(&self, _id: i64) {
        self.lost.fetch_add(1, Ordering::Relaxed);
    }
}

impl Counts {
    fn get(&self) -> (u64, u64, u64) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (g(&self.granted), g(&self.failed), g(&self.lost))
    }
}

async fn granted(etcd: &Etcd, ttl: i64) -> Result<(KeptLease, Arc<Counts>)> {
    let counts = Arc::new(Counts::default());
    let lease = KeptLease::builder(etcd.client().await?, ttl, Quick)
        .request_timeout(Duration::from_secs(2))
        .observer(counts.clone())
        .grant()
        .await?;
    Ok((lease, counts))
}

/// The remaining TTL etcd reports for `id` (-1 when it does not know the lease).
async fn remaining(etcd: &Etcd, id: i64) -> Result<i64> {
    let mut client = etcd.client().await?;
    Ok(client.lease_time_to_live(id, None).await?.ttl())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_survives_an_outage_is_kept() -> Result<()> {
    let mut etcd = Etcd::start().await?;
    let (lease, counts) = granted(&etcd, 6).await?;
    let id = lease.id().context("no lease")?;
    let mut state = lease.state();

    let down = Instant::now();
    etcd.stop().await?;
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| matches!(s, LeaseState::Failing { .. })),
    )
    .await??;
    let noticed = down.elapsed();
    etcd.restart().await?;
    let back = down.elapsed();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == LeaseState::Alive { id })).await??;
    let alive = down.elapsed();
    println!(
        "etcd down at 0, failing noticed after {noticed:?}, etcd back after {back:?}, \
         lease {id} alive again after {alive:?}; (granted, keepalive failures, lost) = {:?}, \
         keepalive answers {}",
        counts.get(),
        counts.kept_alive.load(Ordering::Relaxed)
    );
    // Kept: the same id, never granted again, never reported lost, and etcd keeps it alive.
    assert_eq!(lease.id(), Some(id));
    let (grants, failures, lost) = counts.get();
    assert_eq!((grants, lost), (1, 0));
    assert!(failures >= 1);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(lease.id(), Some(id));
    assert!(remaining(&etcd, id).await? > 0, "the lease expired");
    assert_eq!(counts.get().0, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_revoked_on_the_server_is_granted_again() -> Result<()> {
    let etcd = Etcd::start().await?;
    let (lease, counts) = granted(&etcd, 3).await?;
    let old = lease.id().context("no lease")?;
    let mut state = lease.state();

    let revoked = Instant::now();
    etcd.client().await?.lease_revoke(old).await?;
    let new = tokio::time::timeout(WAIT, state.wait_for(|s| s.id().is_some_and(|id| id != old)))
        .await??
        .id()
        .context("no lease")?;
    println!(
        "lease {old} revoked; new lease {new} reported after {:?}; (granted, keepalive failures, \
         lost) = {:?}",
        revoked.elapsed(),
        counts.get()
    );
    assert_eq!(counts.get(), (2, 0, 1));
    assert!(remaining(&etcd, new).await? > 0);
    // The new lease is kept alive past its TTL.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(lease.id(), Some(new));
    assert!(remaining(&etcd, new).await? > 0, "the new lease expired");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_reporting_lease_not_found_gets_a_new_lease_at_once() -> Result<()> {
    let etcd = Etcd::start().await?;
    // A long TTL: the keepalive alone would notice the revocation only after 10 s.
    let (lease, counts) = granted(&etcd, 30).await?;
    let old = lease.id().context("no lease")?;
    let mut kv = etcd.client().await?;
    kv.lease_revoke(old).await?;
    let put = kv
        .put(
            "held",
            "x",
            Some(etcd_client::PutOptions::new().with_lease(old)),
        )
        .await;
    let err = put.err().context("a put on a revoked lease succeeded")?;
    assert!(registrar_etcd::is_lease_not_found(&err), "{err}");
    let reported = Instant::now();
    lease.report_not_found(old);
    let new = poll("a new lease", WAIT, || async {
        lease.id().filter(|id| *id != old)
    })
    .await?;
    let took = reported.elapsed();
    println!("lease {old} reported gone; new lease {new} after {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "re-granted only after {took:?}"
    );
    assert_eq!(counts.get(), (2, 0, 1));
    // A stale report (of the old lease) changes nothing.
    lease.report_not_found(old);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lease.id(), Some(new));
    assert_eq!(counts.get().0, 2);
    Ok(())
}
