//! The claim of the prefix: `<prefix>/.owner` holds the id of the cluster that writes it.
//!
//! The writer claims the prefix before writing anything: a transaction creates the claim key if
//! it is absent; if it exists it must hold our cluster id, otherwise the prefix belongs to
//! another cluster and the writer writes nothing at all (`PrefixOwnedElsewhere`). Every write
//! transaction also compares the claim, so a claim taken over between two checks fences us off.
//!
//! The claim key is deliberately NOT attached to the writer's lease: a claim must outlive the
//! operator being down, an etcd outage or a lost lease, otherwise another cluster could take the
//! prefix during a restart and the two would reap each other's keys. Releasing a prefix is an
//! explicit act: delete `<prefix>/.owner` by hand (for example after uninstalling).

use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp};
use std::time::Duration;

use super::error::{EtcdError, timed};

/// Result of claiming the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The prefix is ours; `revision` is etcd's revision when that was established.
    Ours { revision: i64 },
    /// Another cluster holds the claim.
    Elsewhere { owner: String },
}

/// The compare that every write transaction carries: the claim still holds our id.
pub(crate) fn still_ours(owner_key: &str, cluster_id: &str) -> Compare {
    Compare::value(owner_key, CompareOp::Equal, cluster_id)
}

/// Claims `owner_key` for `cluster_id` (creating it if absent), or reports who holds it.
pub(crate) async fn claim(
    kv: &mut KvClient,
    owner_key: &str,
    cluster_id: &str,
    timeout: Duration,
) -> Result<Claim, EtcdError> {
    // A claim deleted between our create attempt and our read makes us try again; a few
    // rounds settle it (someone deleting it in a tight loop is not worth more).
    for _ in 0..3 {
        let create = Txn::new()
            .when([Compare::create_revision(owner_key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(owner_key, cluster_id, None)]);
        let resp = timed("claim the prefix", timeout, kv.txn(create)).await?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            tracing::info!(key = owner_key, cluster_id, "claimed the prefix");
            return Ok(Claim::Ours { revision });
        }
        let got = timed("read the prefix claim", timeout, kv.get(owner_key, None)).await?;
        let revision = got.header().map_or(0, |h| h.revision());
        if let Some(kv) = got.kvs().first() {
            let owner = String::from_utf8_lossy(kv.value()).into_owned();
            return Ok(if owner == cluster_id {
                Claim::Ours { revision }
            } else {
                Claim::Elsewhere { owner }
            });
        }
    }
    Err(EtcdError::ClaimChurn(owner_key.to_owned()))
}
