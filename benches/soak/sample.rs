//! One sample of the operator and etcd: the operator's RSS, open fds, CPU time (from `/proc`)
//! and its `registrar_tasks`, lease-grant and txn counters (from `/metrics`); etcd's revision
//! and the keys' count and lease (absent while etcd is down).

use std::time::Duration;

use etcd_client::GetOptions;

use super::config::PREFIX;
use crate::operator::{Operator, sample};

/// One sample.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Seconds since the start of the churn.
    pub t: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub cpu_s: f64,
    pub tasks: Option<f64>,
    pub lease_grants: Option<f64>,
    pub txns_ok: Option<f64>,
    pub txn_ops: Option<f64>,
    pub revision: Option<i64>,
    pub keys: Option<usize>,
    pub lease: Option<i64>,
}

fn proc_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// utime + stime of `pid`, seconds (clock ticks of 1/100 s, Linux's USER_HZ).
fn proc_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Takes a sample (each part bounded by a short timeout).
pub async fn take(op: &Operator, etcd_endpoint: &str, t: f64) -> Sample {
    let pid = op.pid();
    let mut s = Sample {
        t,
        rss_kib: op.memory().map_or(0, |m| m.rss_kib),
        fds: proc_fds(pid),
        cpu_s: proc_cpu(pid),
        ..Sample::default()
    };
    if let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(2), op.metrics()).await {
        s.tasks = sample(&text, "registrar_tasks");
        s.lease_grants = sample(&text, "registrar_etcd_lease_grants_total");
        s.txns_ok = sample(&text, r#"registrar_etcd_txns_total{result="ok"}"#);
        s.txn_ops = sample(&text, "registrar_etcd_txn_ops_total");
    }
    let etcd = async {
        let mut c = etcd_client::Client::connect([etcd_endpoint], None)
            .await
            .ok()?;
        let resp = c
            .get(format!("{PREFIX}/"), Some(GetOptions::new().with_prefix()))
            .await
            .ok()?;
        let revision = resp.header().map(|h| h.revision());
        let mut leases: Vec<i64> = Vec::new();
        let mut keys = 0;
        for kv in resp.kvs() {
            if kv.key().ends_with(b"/.owner") {
                continue;
            }
            keys += 1;
            leases.push(kv.lease());
        }
        leases.sort_unstable();
        leases.dedup();
        Some((revision, keys, (leases.len() == 1).then(|| leases[0])))
    };
    if let Ok(Some((revision, keys, lease))) =
        tokio::time::timeout(Duration::from_secs(2), etcd).await
    {
        s.revision = revision;
        s.keys = Some(keys);
        s.lease = lease;
    }
    s
}
