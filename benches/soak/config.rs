//! The soak's knobs: its length (`REGISTRAR_SOAK_SECS`, default 1800 s) and the schedule
//! derived from it (warm-up, sampling, etcd restarts, the one lease revocation), and the
//! fixed, bounded churn rate.

use std::time::Duration;

/// One churn action per this period at most (a readiness flip, a scale, or a rollout).
pub const CHURN_PERIOD: Duration = Duration::from_secs(1);
/// A rollout at most this often (per soak, not per Deployment).
pub const ROLLOUT_EVERY: Duration = Duration::from_secs(45);
/// The Deployments (each selected by the ServiceRegistration of the same name).
pub const SERVICES: [&str; 3] = ["alpha", "beta", "gamma"];
/// Initial replicas of each Deployment; scaling keeps each within `MIN..=MAX`.
pub const REPLICAS: i32 = 6;
pub const MIN_REPLICAS: i32 = 3;
pub const MAX_REPLICAS: i32 = 10;
/// The operator's etcd lease TTL (its default).
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How long etcd stays down in a short restart.
pub const SHORT_OUTAGE: Duration = Duration::from_secs(2);
/// The etcd prefix.
pub const PREFIX: &str = "registrar";
/// The namespace of the workload.
pub const NAMESPACE: &str = "soak";

/// The schedule of one run.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// How long the churn runs.
    pub duration: Duration,
    /// Samples before this are shown but left out of the slopes.
    pub warm_up: Duration,
    /// Time between samples.
    pub sample_every: Duration,
    /// Time between etcd restarts.
    pub restart_every: Duration,
    /// When the lease is revoked behind the operator's back (the one real loss).
    pub revoke_at: Duration,
    /// Seed of the churn.
    pub seed: u64,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

impl Config {
    /// From the environment: `REGISTRAR_SOAK_SECS` (default 1800, at least 60),
    /// `REGISTRAR_SOAK_SEED` (default: the time).
    pub fn from_env() -> Config {
        let secs = env_u64("REGISTRAR_SOAK_SECS").unwrap_or(1800).max(60);
        let seed = env_u64("REGISTRAR_SOAK_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
        Config {
            duration: Duration::from_secs(secs),
            // 2 minutes, or a fifth of a short run.
            warm_up: Duration::from_secs((secs / 5).min(120)),
            sample_every: Duration::from_secs(10),
            // About seven restarts, at most one every 4 minutes, at least 20 s apart.
            restart_every: Duration::from_secs((secs / 7).clamp(20, 240)),
            revoke_at: Duration::from_secs(secs * 3 / 5 + 7),
            seed,
        }
    }
}
