//! The scale benchmark's world: a control plane (its own etcd), Registrar's etcd (written only
//! by the operator, so its revision counts the operator's txns) and a temp dir for the
//! operator's log; plus the etcd figures the report needs.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::GetOptions;
use registrar_testenv::{ControlPlane, Etcd};

use crate::common::operator::{self, Operator};

/// Keys per page when counting the keys attached to each lease.
const PAGE: i64 = 10_000;

/// Registrar's etcd prefix in the benchmark.
pub const PREFIX: &str = "registrar";

/// Everything the bench talks to; dropping it kills the processes and removes the temp dirs.
pub struct World {
    pub cp: ControlPlane,
    /// Registrar's etcd (not the API server's).
    pub etcd: Etcd,
    pub client: kube::Client,
    /// "kube-apiserver vX, etcd Y".
    pub versions: String,
    dir: tempfile::TempDir,
}

/// A lease in Registrar's etcd.
#[derive(Clone, Copy, Debug)]
pub struct LeaseInfo {
    pub id: i64,
    /// Keys attached to it.
    pub keys: usize,
}

impl World {
    /// Starts the control plane and Registrar's etcd.
    pub async fn start() -> Result<World> {
        let (cp, etcd) = tokio::try_join!(ControlPlane::start(), Etcd::start())?;
        let client = cp.client().await?;
        let (kube, etcd_version) = operator::versions(&client, &etcd).await?;
        let dir = tempfile::Builder::new()
            .prefix("registrar-scale-")
            .tempdir()?;
        Ok(World {
            cp,
            etcd,
            client,
            versions: format!("kube-apiserver {kube}, etcd {etcd_version}"),
            dir,
        })
    }

    /// Starts the `registrar` binary (its log: `registrar.log` in the world's temp dir).
    pub fn spawn_operator(&self) -> Result<Operator> {
        Operator::spawn(
            self.cp.kubeconfig(),
            &self.etcd,
            PREFIX,
            &self.dir.path().join("registrar.log"),
        )
    }

    /// Registrar's etcd: (current revision, keys under `<prefix>/` including the claim key).
    pub async fn revision_and_count(&self) -> Result<(i64, i64)> {
        let mut etcd = self.etcd.client().await?;
        let resp = etcd
            .get(
                format!("{PREFIX}/"),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?;
        let revision = resp
            .header()
            .map(|h| h.revision())
            .context("etcd response without a header")?;
        Ok((revision, resp.count()))
    }

    /// The revision once it has not moved for `quiet` (polled every 100 ms, at most `deadline`):
    /// the operator has finished writing.
    pub async fn settled_revision(&self, quiet: Duration, deadline: Duration) -> Result<i64> {
        let end = tokio::time::Instant::now() + deadline;
        let (mut last, _) = self.revision_and_count().await?;
        let mut since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (rev, _) = self.revision_and_count().await?;
            let now = tokio::time::Instant::now();
            if rev != last {
                last = rev;
                since = now;
            } else if now - since >= quiet {
                return Ok(rev);
            }
            anyhow::ensure!(
                now < end,
                "etcd revision still moving after {deadline:?} (at {rev})"
            );
        }
    }

    /// Every lease in Registrar's etcd with the number of keys under the prefix attached. The
    /// keys are counted from a paged read of the prefix (a lease's key list in one response
    /// passes gRPC's 4 MiB limit from about 100,000 keys).
    pub async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let mut etcd = self.etcd.client().await?;
        let ids: Vec<i64> = etcd
            .leases()
            .await?
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        let mut attached: HashMap<i64, usize> = HashMap::new();
        let mut from = format!("{PREFIX}/").into_bytes();
        // The end of the prefix range: "<prefix>0" ('0' follows '/').
        let end = format!("{PREFIX}0").into_bytes();
        loop {
            let page = etcd
                .get(
                    from.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_keys_only()
                            .with_limit(PAGE),
                    ),
                )
                .await?;
            for kv in page.kvs() {
                *attached.entry(kv.lease()).or_default() += 1;
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let ttl = etcd.lease_time_to_live(id, None).await?;
            // An expired lease answers TTL -1: it is gone.
            if ttl.ttl() >= 0 {
                out.push(LeaseInfo {
                    id,
                    keys: attached.get(&id).copied().unwrap_or(0),
                });
            }
        }
        Ok(out)
    }
}
