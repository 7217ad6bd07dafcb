//! Which etcd leases hold Registrar's keys: the keys under `<prefix>/`, its `<prefix>/.owner`
//! claim excluded (the claim is on the same lease, but it is not an endpoint key).

use anyhow::Result;
use etcd_client::{Client, GetOptions};

/// The distinct leases (sorted; 0 for a key on no lease) of the keys under `prefix/`, the
/// `.owner` claim excluded. Empty when there are no keys.
pub async fn leases_under(etcd: &Client, prefix: &str) -> Result<Vec<i64>> {
    let mut etcd = etcd.clone();
    let resp = etcd
        .get(format!("{prefix}/"), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut leases: Vec<i64> = resp
        .kvs()
        .iter()
        .filter(|kv| !kv.key().ends_with(b"/.owner"))
        .map(|kv| kv.lease())
        .collect();
    leases.sort_unstable();
    leases.dedup();
    Ok(leases)
}
