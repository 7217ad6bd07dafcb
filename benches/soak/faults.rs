//! The etcd faults: a restart every `restart_every`, cycling through a clean stop (SIGTERM),
//! a kill -9 and a kill -9 with etcd down for longer than the lease TTL — all with the data
//! dir kept, so none of them is a loss of the lease: etcd keeps leases across a restart and
//! extends their TTL when it elects itself leader again, and the operator's keepalive resumes
//! when etcd is back. The one real loss is a revocation of the operator's lease behind its back
//! (`revoke_at`): its keys are gone, and the operator must grant a new lease and put every
//! key again. Each fault records the lease the keys were on before, and whether the keys are
//! on the same lease once etcd is back (checked after the operator's next keepalive).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use registrar_testenv::{Etcd, leases_under};
use tokio::time::Instant;

use super::config::{Config, LEASE_TTL, PREFIX, SHORT_OUTAGE};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SIGTERM, etcd down [`SHORT_OUTAGE`], restarted with its data.
    Terminate,
    /// SIGKILL, etcd down [`SHORT_OUTAGE`], restarted with its data.
    Kill,
    /// SIGKILL, etcd down for the lease TTL + 5 s, restarted with its data.
    LongOutage,
    /// The operator's lease revoked (a real loss).
    Revoke,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Terminate => "etcd SIGTERM + restart",
            Kind::Kill => "etcd kill -9 + restart",
            Kind::LongOutage => "etcd kill -9, down > lease TTL, restart",
            Kind::Revoke => "lease revoked (real loss)",
        }
    }

    pub fn is_loss(self) -> bool {
        self == Kind::Revoke
    }
}

/// One fault, as applied.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: Kind,
    /// Seconds since the start of the churn.
    pub at_s: f64,
    /// How long etcd was down (restart to ready included).
    pub down: Duration,
    /// The lease of the keys before.
    pub lease_before: Option<i64>,
    /// The lease of the keys afterwards (once one was seen).
    pub lease_after: Option<i64>,
    /// The revision of the revocation (its deletes are the driver's, not the operator's).
    pub revision: Option<i64>,
}

/// The faults of the run in order: restarts cycling through the three kinds, and the revocation.
pub fn schedule(cfg: &Config) -> Vec<(Duration, Kind)> {
    let kinds = [Kind::Terminate, Kind::Kill, Kind::LongOutage];
    let mut out = Vec::new();
    let mut at = cfg.restart_every;
    let mut i = 0;
    while at + Duration::from_secs(10) < cfg.duration {
        out.push((at, kinds[i % kinds.len()]));
        at += cfg.restart_every;
        i += 1;
    }
    out.push((cfg.revoke_at, Kind::Revoke));
    out.sort_by_key(|(t, _)| *t);
    out
}

/// The one lease of the keys under the prefix, if they are on exactly one (from a fresh client:
/// etcd restarts in between).
pub async fn lease_of_keys(endpoint: &str) -> Option<i64> {
    let c = tokio::time::timeout(
        Duration::from_secs(2),
        etcd_client::Client::connect([endpoint], None),
    )
    .await
    .ok()?
    .ok()?;
    let leases = tokio::time::timeout(Duration::from_secs(2), leases_under(&c, PREFIX))
        .await
        .ok()?
        .ok()?;
    match leases[..] {
        [lease] => Some(lease),
        _ => None,
    }
}

/// Applies the schedule (times from `start`) until it is done or `stop` is set; returns etcd
/// (running) and the faults applied.
pub async fn run(
    mut etcd: Etcd,
    cfg: Config,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> (Etcd, Vec<Fault>, Option<anyhow::Error>) {
    let mut done = Vec::new();
    for (at, kind) in schedule(&cfg) {
        let sleep = tokio::time::sleep_until(start + at);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) {
                        return (etcd, done, None);
                    }
                }
            }
        }
        match apply(&mut etcd, kind, start).await {
            Ok(f) => {
                println!(
                    "soak: {:>6.0} s  {}: down {:.1} s, lease {:?} -> {:?}",
                    f.at_s,
                    kind.label(),
                    f.down.as_secs_f64(),
                    f.lease_before,
                    f.lease_after
                );
                done.push(f);
            }
            Err(e) => return (etcd, done, Some(e)),
        }
    }
    (etcd, done, None)
}

async fn apply(etcd: &mut Etcd, kind: Kind, start: Instant) -> Result<Fault> {
    let endpoint = etcd.endpoint();
    let lease_before = lease_of_keys(&endpoint).await;
    let at_s = start.elapsed().as_secs_f64();
    let began = Instant::now();
    let mut revision = None;
    match kind {
        Kind::Terminate => {
            etcd.terminate(Duration::from_secs(10)).await?;
            tokio::time::sleep(SHORT_OUTAGE).await;
            etcd.restart().await?;
        }
        Kind::Kill => {
            etcd.stop().await?;
            tokio::time::sleep(SHORT_OUTAGE).await;
            etcd.restart().await?;
        }
        Kind::LongOutage => {
            etcd.stop().await?;
            tokio::time::sleep(LEASE_TTL + Duration::from_secs(5)).await;
            etcd.restart().await?;
        }
        Kind::Revoke => {
            let mut c = etcd.client().await?;
            if let Some(lease) = lease_before {
                let resp = c.lease_revoke(lease).await?;
                revision = resp.header().map(|h| h.revision());
            }
        }
    }
    let down = began.elapsed();
    // The keys' lease once the operator has had a keepalive round (a third of the TTL) and
    // time to put its keys again after a loss.
    let settle = Instant::now() + LEASE_TTL;
    let mut lease_after = None;
    while Instant::now() < settle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        lease_after = lease_of_keys(&endpoint).await;
        if lease_after.is_some() && (kind.is_loss() || began.elapsed() > LEASE_TTL / 3 + down) {
            break;
        }
    }
    Ok(Fault {
        kind,
        at_s,
        down,
        lease_before,
        lease_after,
        revision,
    })
}
