//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager). Every replica keeps
//! warm caches; only the one holding the Lease writes etcd and status. Without leader election
//! this replica is always the leader.
//!
//! kube-lease-manager acquires and renews the Lease, but while the API server cannot be reached
//! it keeps saying "leader" (it cannot renew, so it cannot learn otherwise), although a standby
//! that reaches the API server takes the Lease over once it expires. Two writers would then
//! fight over every key. So a guard confirms the lease: while the manager says we lead, it reads
//! the Lease every quarter of the renewal grace, and this replica leads only while the last
//! renewal it saw is younger than the lease duration minus half the grace — the leader steps
//! down before anyone may take over (like client-go's renew deadline).
//!
//! [`Leadership::release`] gives the Lease up on graceful shutdown, so a standby takes over at
//! once instead of waiting for the Lease to expire.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::RunArgs;

/// How long [`Leadership::release`] waits for the Lease to be given up.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for one read of the Lease by the guard.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// This replica's leadership: a channel that says whether it leads now.
pub struct Leadership {
    rx: watch::Receiver<bool>,
    /// Keeps the channel open when leader election is off (always leading).
    _always: Option<watch::Sender<bool>>,
    /// The guard task (leader election on).
    task: Option<JoinHandle<()>>,
}

impl Leadership {
    /// A receiver of the leadership state (`true` while this replica may write).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Gives the Lease up (if held) and waits, at most a few seconds, until it is released.
    /// Call it after the writers stopped and every other receiver is dropped.
    pub async fn release(self) {
        let Leadership { rx, _always, task } = self;
        drop(rx);
        if let Some(task) = task
            && tokio::time::timeout(RELEASE_TIMEOUT, task).await.is_err()
        {
            tracing::warn!("leader election: the Lease was not released in time");
        }
    }
}

/// Starts leader election as configured by `args`.
pub async fn elect(client: kube::Client, args: &RunArgs) -> anyhow::Result<Leadership> {
    if !args.leader_elect {
        let (tx, rx) = watch::channel(true);
        return Ok(Leadership {
            rx,
            _always: Some(tx),
            task: None,
        });
    }
    let duration = args.leader_election_lease_duration;
    let grace = (duration / 3).max(1);
    let namespace = args.leader_election_namespace();
    let identity = args.identity();
    let name = args.leader_election_lease_name.clone();
    let manager = LeaseManagerBuilder::new(client.clone(), name.clone())
        .with_namespace(namespace.clone())
        .with_identity(identity.clone())
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await
        .context("setting up leader election")?;
    tracing::info!(lease = %format!("{namespace}/{name}"), %identity, duration, "leader election started");
    let (held, manager_task) = manager.watch().await;
    let guard = Guard {
        leases: Api::namespaced(client, &namespace),
        name,
        identity,
        timing: Timing::new(Duration::from_secs(duration), Duration::from_secs(grace)),
    };
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(guard.run(held, manager_task, tx));
    Ok(Leadership {
        rx,
        _always: None,
        task: Some(task),
    })
}

/// When to read the Lease and how long a renewal counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Timing {
    /// Time between two reads of the Lease while leading.
    check: Duration,
    /// How long after its renew time the Lease counts as ours.
    valid: Duration,
}

impl Timing {
    fn new(duration: Duration, grace: Duration) -> Timing {
        Timing {
            check: (grace / 4).max(Duration::from_millis(100)),
            valid: duration.saturating_sub(grace / 2),
        }
    }
}

struct Guard {
    leases: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
}

impl Guard {
    /// Publishes `manager says leader && renewal confirmed` on `out` until every receiver of
    /// `out` is gone, then lets the manager release the Lease.
    async fn run(
        self,
        mut held: watch::Receiver<bool>,
        manager: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
        out: watch::Sender<bool>,
    ) {
        let mut valid_until: Option<SystemTime> = None;
        // Whether the last read of the Lease failed (warn once per failure streak).
        let mut failing = false;
        let mut check = tokio::time::interval(self.timing.check);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let manager_leads = *held.borrow_and_update();
            let leading = manager_leads && valid_until.is_some_and(|v| SystemTime::now() < v);
            out.send_if_modified(|cur| {
                let changed = *cur != leading;
                if changed && leading {
                    tracing::info!(identity = %self.identity, "leader election: this replica leads");
                } else if changed {
                    tracing::warn!(identity = %self.identity, manager_leads, "leader election: this replica no longer leads");
                }
                *cur = leading;
                changed
            });
            let expiry = async {
                match valid_until.and_then(|v| v.duration_since(SystemTime::now()).ok()) {
                    Some(left) if leading => tokio::time::sleep(left).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                () = out.closed() => break,
                r = held.changed() => {
                    if r.is_err() {
                        tracing::error!("leader election stopped");
                        break;
                    }
                    valid_until = None;
                    check.reset_immediately();
                }
                _ = check.tick(), if manager_leads => {
                    // A read that hangs (packets dropped) must not keep us leading past the
                    // confirmation we have: it is cut off when that runs out.
                    let left = valid_until
                        .and_then(|v| v.duration_since(SystemTime::now()).ok())
                        .map_or(READ_TIMEOUT, |left| left.min(READ_TIMEOUT));
                    let read = tokio::time::timeout(left, self.leases.get(&self.name)).await;
                    match read {
                        Ok(Ok(lease)) => {
                            valid_until = self.valid_until(&lease);
                            failing = false;
                        }
                        // Keep the last confirmation: it runs out by itself.
                        Ok(Err(e)) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "leader election: cannot read the Lease");
                        }
                        Err(_) if !failing => {
                            failing = true;
                            tracing::warn!("leader election: reading the Lease timed out");
                        }
                        _ => tracing::debug!("leader election: the Lease still cannot be read"),
                    }
                }
                () = expiry => {}
            }
        }
        let _ = out.send(false);
        // With every receiver of the manager gone, it releases the Lease (if held) and ends.
        drop(held);
        match tokio::time::timeout(RELEASE_TIMEOUT, manager).await {
            Ok(Ok(Ok(_))) => tracing::info!("leader election: Lease released"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "leader election: releasing the Lease failed")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election task failed"),
            Err(_) => tracing::warn!("leader election: the Lease was not released in time"),
        }
    }

    /// Until when `lease` lets this replica lead (`None` if it is not ours).
    fn valid_until(&self, lease: &Lease) -> Option<SystemTime> {
        let spec = lease.spec.as_ref()?;
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return None;
        }
        let renewed: SystemTime = spec.renew_time.as_ref()?.0.into();
        renewed.checked_add(self.timing.valid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_counts_until_half_the_grace_before_it_expires() {
        let t = Timing::new(Duration::from_secs(15), Duration::from_secs(5));
        assert_eq!(t.check, Duration::from_millis(1250));
        assert_eq!(t.valid, Duration::from_millis(12_500));
        // A short lease still leaves the renewal (at duration - grace) time to be seen.
        let t = Timing::new(Duration::from_secs(4), Duration::from_secs(1));
        assert_eq!(t.check, Duration::from_millis(250));
        assert_eq!(t.valid, Duration::from_millis(3500));
        assert!(Duration::from_secs(4 - 1) + t.check < t.valid);
    }
}
