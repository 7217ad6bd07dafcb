//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager). Every replica keeps
//! warm caches; only the one holding the Lease writes etcd and status. Without leader election
//! this replica is always the leader.

use anyhow::Context;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::config::RunArgs;

/// A channel that says whether this replica leads now. Dropping every receiver releases the
/// Lease (so a standby takes over at once on graceful shutdown).
pub async fn elect(client: kube::Client, args: &RunArgs) -> anyhow::Result<watch::Receiver<bool>> {
    if !args.leader_elect {
        // Keep the sender alive for the life of the process: this replica always leads.
        let (tx, rx) = watch::channel(true);
        std::mem::forget(tx);
        return Ok(rx);
    }
    let duration = args.leader_election_lease_duration;
    let grace = (duration / 3).max(1);
    let manager = LeaseManagerBuilder::new(client, args.leader_election_lease_name.clone())
        .with_namespace(args.leader_election_namespace())
        .with_identity(args.identity())
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await
        .context("setting up leader election")?;
    let (rx, task) = manager.watch().await;
    tokio::spawn(async move {
        match task.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "leader election stopped"),
            Err(e) => tracing::error!(error = %e, "leader election task failed"),
        }
    });
    Ok(rx)
}
