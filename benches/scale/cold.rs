//! What the scale and churn benchmarks share for one size: a fresh world populated (not
//! timed), the observer on it, and the common part of a cold start — the `registrar` binary
//! spawned against the empty etcd with every object already in the API server, timed from its
//! spawn until it answers `/readyz` and until every key is in etcd and every registration is
//! Ready/Published with all its endpoints (progress printed every 5 s, failing with the log
//! tail when the operator dies or the deadline passes).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::task::JoinHandle;

use crate::common::operator::{Operator, http_get};
use crate::layout::Size;
use crate::observe::{Observer, Progress, Targets, summary};
use crate::setup::{self, SetupTimes, say};
use crate::world::{PREFIX, World};

/// A fresh world with everything of `size` in the API server (`in_flight` requests at a time).
pub async fn populated(size: Size, in_flight: usize) -> Result<(World, SetupTimes)> {
    let world = World::start().await?;
    let setup = setup::populate(&world.client, size, in_flight).await?;
    Ok((world, setup))
}

/// The observer of `size` on `world` (its watches established).
pub async fn observer(world: &World, size: Size) -> Result<Observer> {
    Observer::start(Targets {
        kubeconfig: world.cp.kubeconfig().to_path_buf(),
        etcd_endpoint: world.etcd.endpoint(),
        prefix: format!("{PREFIX}/"),
        keys: size.pods,
        registrations: size.registrations,
        per_registration: i64::try_from(size.per_registration())?,
    })
    .await
}

/// Deadline for a cold convergence of `size` (and for a warm restart's).
pub fn converge_deadline(size: Size) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(20) * size.pods as u32
}

/// Polls `/readyz` every 20 ms from now on; the task yields the instant it first answered 200.
pub fn time_readyz(operator: &Operator, deadline: Duration) -> JoinHandle<Result<Instant>> {
    let admin = operator.admin.clone();
    tokio::spawn(async move {
        let end = Instant::now() + deadline;
        loop {
            if matches!(http_get(&admin, "/readyz").await, Ok((200, _))) {
                return Ok(Instant::now());
            }
            anyhow::ensure!(
                Instant::now() < end,
                "registrar /readyz not 200 within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Prints the progress every 5 s and fails when the operator died.
pub fn ticker<'a>(operator: &'a mut Operator) -> impl FnMut(&Progress) -> Result<()> + 'a {
    let mut n = 0u32;
    move |p| {
        n += 1;
        if n.is_multiple_of(5) {
            say(&format!("  {n} s: {}", summary(p)));
        }
        operator.check_alive()
    }
}

/// A cold start up to convergence; durations from the operator's spawn.
pub struct ColdStart {
    /// Still running.
    pub operator: Operator,
    pub spawned: Instant,
    /// Registrar's etcd revision before the spawn.
    pub revision_before: i64,
    pub readyz: Duration,
    pub all_keys: Duration,
    pub all_published: Duration,
}

/// Spawns the operator against the (checked empty) etcd of `world` and waits until every key
/// is in etcd and every registration is Ready/Published.
pub async fn cold_start(world: &World, observer: &mut Observer, size: Size) -> Result<ColdStart> {
    let (cold, ()) = cold_start_with(world, observer, size, |_| (), |()| ()).await?;
    Ok(cold)
}

/// [`cold_start`], with `watch` made from the spawned operator and `tick` run on it every
/// second of the wait (e.g. sampling the CPU of the processes involved).
pub async fn cold_start_with<T>(
    world: &World,
    observer: &mut Observer,
    size: Size,
    watch: impl FnOnce(&Operator) -> T,
    mut tick: impl FnMut(&mut T),
) -> Result<(ColdStart, T)> {
    let (revision_before, count_before) = world.revision_and_count().await?;
    anyhow::ensure!(
        count_before == 0,
        "Registrar's etcd is not empty ({count_before} keys)"
    );
    let deadline = converge_deadline(size);
    say(&format!(
        "cold start: starting registrar ({} pods, {} registrations already in the API server)",
        size.pods, size.registrations
    ));
    let spawned = Instant::now();
    let mut operator = world.spawn_operator()?;
    let readyz = time_readyz(&operator, deadline);
    let mut watched = watch(&operator);
    let wait = {
        let mut progress = ticker(&mut operator);
        observer
            .wait_ticking(
                "every key in etcd and every registration Ready/Published",
                deadline,
                |p| p.all_keys_at.is_some() && p.all_ready_at.is_some(),
                |p| {
                    tick(&mut watched);
                    progress(p)
                },
            )
            .await
    };
    let p = match wait {
        Ok(p) => p,
        Err(e) => anyhow::bail!("{e:#}; registrar log:\n{}", operator.log_tail(30)),
    };
    let readyz = readyz.await??;
    let since = |at: Option<Instant>| -> Result<Duration> {
        Ok(at
            .context("not reached")?
            .saturating_duration_since(spawned))
    };
    let cold = ColdStart {
        readyz: readyz.saturating_duration_since(spawned),
        all_keys: since(p.all_keys_at)?,
        all_published: since(p.all_ready_at)?,
        operator,
        spawned,
        revision_before,
    };
    Ok((cold, watched))
}
