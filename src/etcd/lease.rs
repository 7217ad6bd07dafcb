//! The writer's lease: granted once per term and kept alive by a background task that sends a
//! keepalive every TTL/3 over etcd's keepalive stream.
//!
//! The task reports the lease's health. A broken or stalled stream (etcd restarting, a
//! partition) makes it `Failing` and the task reopens the stream with backoff, forever; only etcd
//! can say the lease is gone (`lease not found`: it expired during the outage, or etcd lost its
//! data), and then the health becomes `Lost` and the task ends — the writer then grants a new
//! lease and puts every key again. We never guess expiry from a clock: etcd restores leases with
//! a fresh TTL when it restarts, so a lease can outlive an outage longer than its TTL.
//!
//! Dropping a [`Lease`] stops its keepalives but does not revoke it: revoking on shutdown would
//! drop every endpoint until the next leader puts them again.

use etcd_client::{Client, LeaseClient, LeaseKeepAliveStream, LeaseKeeper};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::error::{EtcdError, is_lease_not_found, timed};
use super::stats::WriterStats;
use crate::backoff::Backoff;

/// What the keepalive task knows about the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseHealth {
    /// etcd answered the last keepalive.
    Alive,
    /// The keepalive stream is broken or silent; the task is retrying.
    Failing(String),
    /// etcd says the lease does not exist. Final.
    Lost,
}

/// Timing and retry settings of the keepalive task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepaliveTiming {
    pub(crate) request_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
}

/// A granted lease and its keepalive task (stopped, not revoked, on drop).
#[derive(Debug)]
pub(crate) struct Lease {
    id: i64,
    health: watch::Receiver<LeaseHealth>,
    task: JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Lease {
    /// Grants a lease of `ttl_secs` seconds and starts keeping it alive.
    pub(crate) async fn grant(
        client: &Client,
        ttl_secs: i64,
        timing: KeepaliveTiming,
        stats: Arc<WriterStats>,
    ) -> Result<Lease, EtcdError> {
        let mut lc = client.lease_client();
        let resp = timed(
            "grant a lease",
            timing.request_timeout,
            lc.grant(ttl_secs, None),
        )
        .await?;
        WriterStats::add(&stats.lease_grants, 1);
        let (id, ttl) = (resp.id(), resp.ttl().max(1));
        // TTL/3 in milliseconds; ttl >= 1 so this is at least 333 ms.
        let interval = Duration::from_millis(u64::try_from(ttl).unwrap_or(1) * 1000 / 3);
        tracing::info!(lease = id, ttl, "granted etcd lease");
        let (tx, health) = watch::channel(LeaseHealth::Alive);
        let task = tokio::spawn(keepalive(lc, id, interval, timing, tx, stats));
        Ok(Lease { id, health, task })
    }

    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    /// A receiver of the lease's health (marked as seen).
    pub(crate) fn health(&self) -> watch::Receiver<LeaseHealth> {
        let mut rx = self.health.clone();
        rx.mark_unchanged();
        rx
    }

    pub(crate) fn is_lost(&self) -> bool {
        *self.health.borrow() == LeaseHealth::Lost
    }
}

/// Why one keepalive stream ended.
enum StreamEnd {
    Lost,
    Broken(String),
}

async fn keepalive(
    mut lc: LeaseClient,
    id: i64,
    interval: Duration,
    timing: KeepaliveTiming,
    health: watch::Sender<LeaseHealth>,
    stats: Arc<WriterStats>,
) {
    let mut backoff = Backoff::new(timing.backoff_initial, timing.backoff_max);
    let set = |h: LeaseHealth| {
        health.send_if_modified(|cur| {
            let changed = *cur != h;
            *cur = h;
            changed
        });
    };
    loop {
        let end = match timed(
            "open the lease keepalive stream",
            timing.request_timeout,
            lc.keep_alive(id),
        )
        .await
        {
            Ok((mut keeper, mut stream)) => {
                // keep_alive() already sent one keepalive and saw a positive TTL.
                set(LeaseHealth::Alive);
                backoff.reset();
                let answer_within = interval.min(timing.request_timeout);
                keep(&mut keeper, &mut stream, interval, answer_within, &set).await
            }
            Err(EtcdError::Etcd { source, .. }) if is_lease_not_found(&source) => StreamEnd::Lost,
            Err(e) => StreamEnd::Broken(e.to_string()),
        };
        match end {
            StreamEnd::Lost => {
                tracing::warn!(
                    lease = id,
                    "etcd lease lost (expired or etcd lost its data)"
                );
                set(LeaseHealth::Lost);
                return;
            }
            StreamEnd::Broken(reason) => {
                WriterStats::add(&stats.keepalive_failures, 1);
                tracing::warn!(lease = id, %reason, "lease keepalive failing, retrying");
                set(LeaseHealth::Failing(reason));
            }
        }
        // Never wait longer than a keepalive interval between attempts: when etcd answers
        // again (e.g. quorum is back, which gives leases their full TTL anew), a keepalive
        // must get through within the TTL, however long the outage made the backoff.
        tokio::time::sleep(backoff.next_delay().min(interval)).await;
    }
}

/// Sends a keepalive every `interval` and reads the answers until the stream breaks, a
/// keepalive goes unanswered for `answer_within`, or etcd says the lease is gone.
///
/// The answer deadline is what saves the lease when the stream's member stops answering without
/// closing the connection (a frozen member, a partition that drops packets): waiting for silence
/// over whole intervals would notice only about a TTL after the last answer, when etcd expires
/// the lease. With it, a silent stream is given up at most `interval + answer_within` (2/3 of
/// the TTL) after the last answer, and reopened on a member that answers.
async fn keep(
    keeper: &mut LeaseKeeper,
    stream: &mut LeaseKeepAliveStream,
    interval: Duration,
    answer_within: Duration,
    set: &impl Fn(LeaseHealth),
) -> StreamEnd {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_answer = Instant::now();
    // When the oldest unanswered keepalive was sent.
    let mut unanswered: Option<Instant> = None;
    loop {
        let answer_due = unanswered.map(|sent| sent + answer_within);
        tokio::select! {
            () = sleep_until_opt(answer_due) => {
                return StreamEnd::Broken(format!(
                    "no keepalive answer within {answer_within:?} (last answer {:?} ago)",
                    last_answer.elapsed()
                ));
            }
            _ = ticker.tick() => {
                if last_answer.elapsed() > interval * 2 {
                    return StreamEnd::Broken(format!(
                        "no keepalive answer for {:?}", last_answer.elapsed()
                    ));
                }
                if let Err(e) = keeper.keep_alive().await {
                    return StreamEnd::Broken(e.to_string());
                }
                unanswered.get_or_insert_with(Instant::now);
            }
            msg = stream.message() => match msg {
                Ok(Some(resp)) if resp.ttl() <= 0 => return StreamEnd::Lost,
                Ok(Some(_)) => {
                    last_answer = Instant::now();
                    unanswered = None;
                    set(LeaseHealth::Alive);
                }
                Ok(None) => return StreamEnd::Broken("keepalive stream closed".into()),
                Err(e) if is_lease_not_found(&e) => return StreamEnd::Lost,
                Err(e) => return StreamEnd::Broken(e.to_string()),
            },
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
