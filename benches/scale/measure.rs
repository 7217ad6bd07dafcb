//! The operator on an empty cluster (its baseline memory), and the timed parts: a cold start (a
//! fresh operator, nothing in etcd, everything already in the API server: [`crate::cold`]) until
//! every key is in etcd and every registration reports Ready/Published, with the txns, leases
//! and memory it took, and a warm restart (SIGTERM, start again) until the new operator is ready and every key hangs
//! on its new lease, watching that no key is deleted while the old lease runs out.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cold::{self, converge_deadline, ticker, time_readyz};
use crate::common::operator::{Memory, Operator, sample};
use crate::layout::Size;
use crate::observe::Observer;
use crate::setup::say;
use crate::world::{LeaseInfo, World};

/// How long etcd's revision must stay still to count the operator's writes as finished.
const QUIET: Duration = Duration::from_secs(1);

/// Figures of the cold start; durations from the operator's spawn.
#[derive(Debug)]
pub struct Cold {
    pub readyz: Duration,
    pub all_keys: Duration,
    pub all_statuses: Duration,
    pub memory: Memory,
    /// etcd revision delta: one txn is one revision, and only the operator writes.
    pub txns: i64,
    /// The operator's own count of ok txns and of ops in them.
    pub txn_metric: Option<f64>,
    pub ops_metric: Option<f64>,
    pub lease_grants: Option<f64>,
    pub leases: Vec<LeaseInfo>,
    /// Keys under the prefix at the end (the claim key included).
    pub etcd_keys: i64,
}

/// Figures of the warm restart.
#[derive(Debug)]
pub struct Warm {
    /// SIGTERM until the old process exited.
    pub shutdown: Duration,
    /// From the new process's spawn.
    pub readyz: Duration,
    pub reattached: Duration,
    /// From SIGTERM until the old lease was gone from etcd.
    pub old_lease_gone: Duration,
    pub deletes: usize,
    pub ready_lost: usize,
    pub txns: i64,
    pub memory: Memory,
    pub leases: Vec<LeaseInfo>,
    pub etcd_keys: i64,
    pub ready: usize,
}

/// The operator's memory on `world` with nothing to publish: started, ready, and its RSS
/// unchanged over 1 s (sampled every 200 ms; at most 30 s after ready); then stopped.
pub async fn empty_cluster(world: &World) -> Result<Memory> {
    let mut operator = world.spawn_operator()?;
    operator.wait_ready(Duration::from_secs(60)).await?;
    let end = Instant::now() + Duration::from_secs(30);
    let mut last = operator.memory()?;
    let mut still = 0;
    while still < 5 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = operator.memory()?;
        still = if now.rss_kib == last.rss_kib {
            still + 1
        } else {
            0
        };
        last = now;
    }
    operator.terminate(Duration::from_secs(20)).await?;
    Ok(last)
}

/// Starts the operator cold and measures until convergence (and etcd's revision has settled);
/// returns it still running.
pub async fn cold_start(
    world: &World,
    observer: &mut Observer,
    size: Size,
) -> Result<(Operator, Cold)> {
    let c = cold::cold_start(world, observer, size).await?;
    let rev_after = world
        .settled_revision(QUIET, Duration::from_secs(60))
        .await?;
    let metrics = c.operator.metrics().await?;
    let memory = c.operator.memory()?;
    let leases = world.leases().await?;
    let (_, etcd_keys) = world.revision_and_count().await?;
    let cold = Cold {
        readyz: c.readyz,
        all_keys: c.all_keys,
        all_statuses: c.all_published,
        memory,
        txns: rev_after - c.revision_before,
        txn_metric: sample(&metrics, r#"registrar_etcd_txns_total{result="ok"}"#),
        ops_metric: sample(&metrics, "registrar_etcd_txn_ops_total"),
        lease_grants: sample(&metrics, "registrar_etcd_lease_grants_total"),
        leases,
        etcd_keys,
    };
    say(&format!("cold start converged: {cold:?}"));
    Ok((c.operator, cold))
}

/// Restarts the operator (SIGTERM, start again) and measures until the new one has taken every
/// key over and the old lease has run out, counting deletions meanwhile.
pub async fn warm_restart(
    world: &World,
    observer: &mut Observer,
    size: Size,
    operator: Operator,
    lease_ttl: Duration,
) -> Result<(Operator, Warm)> {
    let old_leases: Vec<i64> = world.leases().await?.iter().map(|l| l.id).collect();
    let (rev_before, _) = world.revision_and_count().await?;
    let before = observer.now();
    say("warm restart: SIGTERM to registrar, then starting it again");
    let term = Instant::now();
    let shutdown = operator.terminate(Duration::from_secs(20)).await?;
    let started = Instant::now();
    let mut operator = world.spawn_operator()?;
    let deadline = converge_deadline(size);
    let readyz = time_readyz(&operator, deadline);
    let is_new = move |lease: &i64| !old_leases.contains(lease);
    let wait = observer
        .wait_ticking(
            "every key re-attached to a new lease",
            deadline,
            |p| p.lease_complete_at.keys().any(&is_new),
            ticker(&mut operator),
        )
        .await;
    let p = match wait {
        Ok(p) => p,
        Err(e) => anyhow::bail!("{e:#}; registrar log:\n{}", operator.log_tail(30)),
    };
    let reattached = p
        .lease_complete_at
        .iter()
        .filter(|(l, _)| is_new(l))
        .map(|(_, at)| *at)
        .min()
        .context("no new lease")?;
    let readyz = readyz.await??;

    say("warm restart: waiting for the old lease to run out");
    let gone_deadline = lease_ttl + Duration::from_secs(30);
    let end = Instant::now() + gone_deadline;
    let old_lease_gone = loop {
        let leases = world.leases().await?;
        if leases.iter().all(|l| is_new(&l.id)) {
            break term.elapsed();
        }
        operator.check_alive()?;
        anyhow::ensure!(
            Instant::now() < end,
            "old lease still alive {gone_deadline:?} after SIGTERM: {leases:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every event up to now must have reached the observer before counting deletions.
    let rev_after = world
        .settled_revision(QUIET, Duration::from_secs(60))
        .await?;
    let after = observer
        .wait("the watch to catch up", Duration::from_secs(30), |p| {
            p.revision >= rev_after
        })
        .await?;
    let (_, etcd_keys) = world.revision_and_count().await?;
    let warm = Warm {
        shutdown,
        readyz: readyz.saturating_duration_since(started),
        reattached: reattached.saturating_duration_since(started),
        old_lease_gone,
        deletes: after.deletes - before.deletes,
        ready_lost: after.ready_lost - before.ready_lost,
        txns: rev_after - rev_before,
        memory: operator.memory()?,
        leases: world.leases().await?,
        etcd_keys,
        ready: after.ready,
    };
    say(&format!("warm restart done: {warm:?}"));
    Ok((operator, warm))
}
