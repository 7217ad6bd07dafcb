//! One etcd lease kept alive, with one expiry policy, for every holder of a lease in this
//! project: the operator's writer and the resolver's self-registration.
//!
//! [`KeptLease::builder`] grants a lease (one request; an error if etcd cannot be reached) and
//! starts a background task that sends a keepalive every TTL/3 (of the TTL etcd granted) over
//! etcd's keepalive stream. The task publishes what it knows as a [`LeaseState`].
//!
//! # Expiry policy
//!
//! - **Expiry is never guessed from the local clock.** A lease is known to be gone only when
//!   etcd says so: a keepalive answered with a TTL ≤ 0, or "lease not found" when opening the
//!   keepalive stream or on a put/txn with the lease (the holder reports that through
//!   [`KeptLease::report_not_found`]).
//! - While etcd cannot be reached (a broken stream, or a keepalive not answered within
//!   min(TTL/3, request timeout)), the state is [`LeaseState::Failing`]: unknown. The task keeps
//!   reopening the stream with the holder's backoff, but never waits longer than TTL/3 between
//!   attempts, forever. A clock cannot tell whether the lease expired:
//!   etcd gives every lease a fresh TTL when it restarts or elects a new leader, so a lease
//!   can outlive an outage longer than its TTL.
//! - When the stream works again and the lease survived, it is kept: same id, no new grant,
//!   no duplicate keys ([`LeaseState::Alive`] with the same id).
//! - When etcd says the lease is gone, the task grants a new one (retrying with backoff:
//!   [`LeaseState::Granting`]), then reports [`LeaseState::Alive`] with the new id. The holder
//!   puts every one of its keys again under the new id.
//!
//! Two timings keep a lease alive through faults that the TTL alone would not survive:
//!
//! - **An answer deadline per keepalive.** A member that stops answering without closing the
//!   connection (frozen, a partition dropping packets) would otherwise be noticed only after
//!   whole silent intervals, about a TTL after the last answer, when etcd has already expired
//!   the lease and deleted every key. With the deadline a silent stream is given up at most
//!   TTL/3 + min(TTL/3, request timeout) after the last answer and reopened on a member that
//!   answers.
//! - **Retries at least every TTL/3.** When quorum returns after a long outage, etcd gives the
//!   lease only its TTL anew; a retry delay grown beyond it would come too late.
//!
//! Dropping a [`KeptLease`] stops its keepalives without revoking the lease (the operator's
//! successor takes its keys over before the TTL ends); [`KeptLease::revoke`] revokes it.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, LeaseClient, LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{EtcdError, is_lease_not_found, timed};

/// The delays between retries (reopening a keepalive stream, granting again). Each crate
/// brings its own backoff.
pub trait Retry: Send + 'static {
    /// The delay before the next attempt (growing with every call).
    fn next_delay(&mut self) -> Duration;
    /// Starts over from the first delay (after a success).
    fn reset(&mut self);
}

/// Told about the lease's events where they happen (for metrics and counters). Every method
/// does nothing by default.
pub trait LeaseObserver: Send + Sync + 'static {
    /// Lease `id` was granted with `ttl` seconds.
    fn granted(&self, id: i64, ttl: i64) {
        let _ = (id, ttl);
    }
    /// etcd answered a keepalive of lease `id` with a positive TTL.
    fn kept_alive(&self, id: i64) {
        let _ = id;
    }
    /// The keepalive stream of lease `id` broke, stayed silent or could not be opened.
    fn keepalive_failed(&self, id: i64, reason: &str) {
        let _ = (id, reason);
    }
    /// etcd said lease `id` is gone (expired, revoked, or etcd lost its data).
    fn lost(&self, id: i64) {
        let _ = id;
    }
}

/// An observer that ignores everything.
impl LeaseObserver for () {}

/// What the keepalive task knows about the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// etcd answered the last keepalive of lease `id`.
    Alive {
        /// The lease.
        id: i64,
    },
    /// The keepalives of lease `id` are failing (etcd unreachable?) and being retried; the
    /// lease may well be alive.
    Failing {
        /// The lease.
        id: i64,
        /// The last failure.
        reason: String,
    },
    /// etcd said the last lease is gone; a new one is being granted.
    Granting {
        /// Why the lease was lost, or why the last grant failed.
        reason: String,
    },
}

impl LeaseState {
    /// The current lease, unless one is being granted.
    pub fn id(&self) -> Option<i64> {
        match self {
            LeaseState::Alive { id } | LeaseState::Failing { id, .. } => Some(*id),
            LeaseState::Granting { .. } => None,
        }
    }
}

/// Settings of a [`KeptLease`].
pub struct KeptLeaseBuilder {
    client: Client,
    ttl_secs: i64,
    request_timeout: Duration,
    retry: Box<dyn Retry>,
    observer: Arc<dyn LeaseObserver>,
}

impl std::fmt::Debug for KeptLeaseBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptLeaseBuilder")
            .field("ttl_secs", &self.ttl_secs)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl KeptLeaseBuilder {
    /// Deadline of each unary request (grant, revoke) and of opening a keepalive stream
    /// (default 5 s). The stream itself has none.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The observer of the lease's events (default: none).
    pub fn observer(mut self, observer: Arc<dyn LeaseObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Grants the lease and starts keeping it alive.
    pub async fn grant(self) -> Result<KeptLease, EtcdError> {
        let mut lc = self.client.lease_client();
        let (id, ttl) = grant(&mut lc, self.ttl_secs, self.request_timeout).await?;
        self.observer.granted(id, ttl);
        let (state_tx, state) = watch::channel(LeaseState::Alive { id });
        let (gone, gone_rx) = watch::channel(0);
        let task = Task {
            lc: lc.clone(),
            ttl_secs: self.ttl_secs,
            interval: interval(ttl),
            request_timeout: self.request_timeout,
            retry: self.retry,
            observer: self.observer,
            state: state_tx,
            gone: gone_rx,
        };
        let task = tokio::spawn(task.run(id));
        Ok(KeptLease {
            lc,
            state,
            gone,
            request_timeout: self.request_timeout,
            task,
        })
    }
}

/// A lease kept alive in the background (see the module docs). Dropping it stops the
/// keepalives and leaves the lease to its TTL.
pub struct KeptLease {
    lc: LeaseClient,
    state: watch::Receiver<LeaseState>,
    gone: watch::Sender<i64>,
    request_timeout: Duration,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for KeptLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptLease")
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeptLease {
    /// Settings for a lease of `ttl_secs` seconds (etcd may raise it to its minimum) granted
    /// through `client`, retried with `retry`.
    pub fn builder(client: Client, ttl_secs: i64, retry: impl Retry) -> KeptLeaseBuilder {
        KeptLeaseBuilder {
            client,
            ttl_secs,
            request_timeout: Duration::from_secs(5),
            retry: Box::new(retry),
            observer: Arc::new(()),
        }
    }

    /// The current lease, unless a new one is being granted.
    pub fn id(&self) -> Option<i64> {
        self.state.borrow().id()
    }

    /// A receiver of the lease's state (marked as seen).
    pub fn state(&self) -> watch::Receiver<LeaseState> {
        let mut rx = self.state.clone();
        rx.mark_unchanged();
        rx
    }

    /// etcd answered "lease not found" to a request with lease `id`: if it is the current
    /// lease, a new one is granted at once (see the module docs).
    pub fn report_not_found(&self, id: i64) {
        if self.id() == Some(id) {
            self.gone.send_replace(id);
        }
    }

    /// Stops the keepalives and revokes the current lease (deleting its keys).
    pub async fn revoke(self) -> Result<(), EtcdError> {
        self.task.abort();
        let Some(id) = self.id() else {
            return Ok(());
        };
        let mut lc = self.lc.clone();
        timed("revoke the lease", self.request_timeout, lc.revoke(id)).await?;
        tracing::info!(lease = id, "etcd lease revoked");
        Ok(())
    }
}

/// TTL/3 in milliseconds; at least 333 ms.
fn interval(ttl: i64) -> Duration {
    Duration::from_millis(u64::try_from(ttl.max(1)).unwrap_or(1) * 1000 / 3)
}

async fn grant(
    lc: &mut LeaseClient,
    ttl_secs: i64,
    timeout: Duration,
) -> Result<(i64, i64), EtcdError> {
    let resp = timed("grant a lease", timeout, lc.grant(ttl_secs, None)).await?;
    let (id, ttl) = (resp.id(), resp.ttl().max(1));
    tracing::info!(lease = id, ttl, "granted etcd lease");
    Ok((id, ttl))
}

/// Why one keepalive stream ended.
enum StreamEnd {
    /// etcd says the lease is gone.
    Gone(String),
    /// The stream broke or went silent; the lease may be alive.
    Broken(String),
}

struct Task {
    lc: LeaseClient,
    ttl_secs: i64,
    interval: Duration,
    request_timeout: Duration,
    retry: Box<dyn Retry>,
    observer: Arc<dyn LeaseObserver>,
    state: watch::Sender<LeaseState>,
    /// The id of a lease a holder found gone.
    gone: watch::Receiver<i64>,
}

impl Task {
    fn set(&self, s: LeaseState) {
        self.state.send_if_modified(|cur| {
            let changed = *cur != s;
            *cur = s;
            changed
        });
    }

    /// Keeps lease `id` alive; when etcd says it is gone, grants a new one; forever.
    async fn run(mut self, mut id: i64) {
        loop {
            let reason = self.keep(id).await;
            tracing::warn!(lease = id, %reason, "etcd lease lost; granting a new one");
            self.observer.lost(id);
            id = self.grant_again(reason).await;
        }
    }

    /// Grants a new lease, retrying forever.
    async fn grant_again(&mut self, mut reason: String) -> i64 {
        loop {
            self.set(LeaseState::Granting {
                reason: reason.clone(),
            });
            match grant(&mut self.lc, self.ttl_secs, self.request_timeout).await {
                Ok((id, ttl)) => {
                    self.observer.granted(id, ttl);
                    self.interval = interval(ttl);
                    self.retry.reset();
                    self.set(LeaseState::Alive { id });
                    return id;
                }
                Err(e) => {
                    reason = format!("granting a new lease: {e}");
                    let delay = self.retry.next_delay();
                    tracing::warn!(error = %e, ?delay, "granting a new etcd lease failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Keeps lease `id` alive until etcd says it is gone; returns why.
    async fn keep(&mut self, id: i64) -> String {
        loop {
            let opened = tokio::select! {
                opened = timed(
                    "open the lease keepalive stream",
                    self.request_timeout,
                    self.lc.keep_alive(id),
                ) => opened,
                () = reported_gone(&mut self.gone, id) => return reported(id),
            };
            let end = match opened {
                Ok((mut keeper, mut stream)) => {
                    // keep_alive() already sent one keepalive and saw a positive TTL.
                    self.observer.kept_alive(id);
                    self.set(LeaseState::Alive { id });
                    self.retry.reset();
                    self.keep_stream(id, &mut keeper, &mut stream).await
                }
                Err(EtcdError::Etcd { source, .. }) if is_lease_not_found(&source) => {
                    StreamEnd::Gone(source.to_string())
                }
                Err(e) => StreamEnd::Broken(e.to_string()),
            };
            let reason = match end {
                StreamEnd::Gone(reason) => return reason,
                StreamEnd::Broken(reason) => reason,
            };
            self.observer.keepalive_failed(id, &reason);
            let delay = self.retry.next_delay();
            tracing::warn!(lease = id, %reason, ?delay, "lease keepalive failing, retrying");
            self.set(LeaseState::Failing { id, reason });
            // Never wait longer than a keepalive interval between attempts: when etcd answers
            // again (e.g. quorum is back, which gives leases their full TTL anew), a keepalive
            // must get through within the TTL, however long the outage made the backoff.
            tokio::select! {
                () = tokio::time::sleep(delay.min(self.interval)) => {}
                () = reported_gone(&mut self.gone, id) => return reported(id),
            }
        }
    }

    /// Sends a keepalive every interval and reads the answers until the stream breaks, a
    /// keepalive goes unanswered for min(interval, request timeout), or etcd says the lease is
    /// gone (see the module docs: the answer deadline).
    async fn keep_stream(
        &mut self,
        id: i64,
        keeper: &mut LeaseKeeper,
        stream: &mut LeaseKeepAliveStream,
    ) -> StreamEnd {
        let interval = self.interval;
        let mut gone = self.gone.clone();
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_answer = Instant::now();
        let answer_within = interval.min(self.request_timeout);
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
                    Ok(Some(resp)) if resp.ttl() <= 0 => {
                        return StreamEnd::Gone("etcd answered a keepalive with TTL 0".into());
                    }
                    Ok(Some(_)) => {
                        last_answer = Instant::now();
                        unanswered = None;
                        self.observer.kept_alive(id);
                        self.set(LeaseState::Alive { id });
                    }
                    Ok(None) => return StreamEnd::Broken("keepalive stream closed".into()),
                    Err(e) if is_lease_not_found(&e) => return StreamEnd::Gone(e.to_string()),
                    Err(e) => return StreamEnd::Broken(e.to_string()),
                },
                () = reported_gone(&mut gone, id) => return StreamEnd::Gone(reported(id)),
            }
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

fn reported(id: i64) -> String {
    format!("etcd answered \"lease not found\" for lease {id}")
}

/// Waits until a holder reports lease `id` gone; never returns if the holders are gone.
async fn reported_gone(gone: &mut watch::Receiver<i64>, id: i64) {
    if gone.wait_for(|g| *g == id).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_every_third_of_the_ttl() {
        assert_eq!(interval(30), Duration::from_secs(10));
        assert_eq!(interval(2), Duration::from_millis(666));
        assert_eq!(interval(0), Duration::from_millis(333));
    }

    #[test]
    fn only_a_granting_state_has_no_id() {
        assert_eq!(LeaseState::Alive { id: 7 }.id(), Some(7));
        let failing = LeaseState::Failing {
            id: 7,
            reason: "x".into(),
        };
        assert_eq!(failing.id(), Some(7));
        let granting = LeaseState::Granting { reason: "x".into() };
        assert_eq!(granting.id(), None);
    }
}
