//! Feeds the etcd writer's counters ([`WriterStats`]) into the Prometheus [`Metrics`] while a
//! writer term runs: a small task takes a snapshot every [`PERIOD`] and records the difference
//! to the previous one (and once more when the term stops, so nothing is lost).
//!
//! The writer keeps counters, not a log of transactions, so the latency of each transaction
//! committed within one period is taken to be that of the last one committed (exact whenever a
//! period sees at most one transaction, the usual case with a 50 ms coalescing window). Failed
//! transactions have no latency to observe; they count as `errors_total{kind="etcd"}`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::etcd::{StatsSnapshot, WriterStats};
use crate::metrics::{ErrorKind, Metrics};

/// How often the writer's counters are copied into the metrics.
pub(super) const PERIOD: Duration = Duration::from_millis(100);

/// Starts copying `stats` into `metrics` until `stop` becomes true (or its sender is dropped).
pub(super) fn spawn(
    stats: Arc<WriterStats>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = StatsSnapshot::default();
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            last = record(&metrics, last, stats.snapshot());
            if stopping {
                return;
            }
        }
    })
}

/// Records what happened between `prev` and `now`; returns `now`.
fn record(metrics: &Metrics, prev: StatsSnapshot, now: StatsSnapshot) -> StatsSnapshot {
    let delta = |a: u64, b: u64| a.saturating_sub(b);
    let txns = delta(now.txns, prev.txns);
    let ops = usize::try_from(delta(now.puts + now.deletes, prev.puts + prev.deletes))
        .unwrap_or(usize::MAX);
    let latency = Duration::from_micros(now.last_txn_micros);
    for i in 0..txns {
        // The operations of the period are added once, with the first transaction.
        metrics.txn(latency, if i == 0 { ops } else { 0 }, true);
    }
    for _ in 0..delta(now.txn_failures, prev.txn_failures) {
        metrics.error(ErrorKind::Etcd);
    }
    for _ in 0..delta(now.lease_grants, prev.lease_grants) {
        metrics.lease_granted();
    }
    for _ in 0..delta(now.keepalive_failures, prev.keepalive_failures) {
        metrics.keepalive_failed();
    }
    for _ in 0..delta(now.leases_lost, prev.leases_lost) {
        metrics.error(ErrorKind::EtcdLease);
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn deltas_move_the_series_once() {
        let m = Metrics::new();
        let first = StatsSnapshot {
            txns: 2,
            puts: 5,
            deletes: 1,
            last_txn_micros: 1500,
            lease_grants: 1,
            ..Default::default()
        };
        let last = record(&m, StatsSnapshot::default(), first);
        assert_eq!(last, first);
        // The same snapshot again changes nothing.
        record(&m, last, first);
        let second = StatsSnapshot {
            txns: 3,
            puts: 6,
            txn_failures: 1,
            keepalive_failures: 2,
            leases_lost: 1,
            lease_grants: 2,
            ..first
        };
        record(&m, first, second);
        let text = m.encode().unwrap();
        let at = |s: &str| sample(&text, s);
        assert_eq!(at(r#"registrar_etcd_txns_total{result="ok"}"#), Some(3.0));
        assert_eq!(at("registrar_etcd_txn_ops_total"), Some(7.0));
        assert_eq!(at("registrar_etcd_txn_duration_seconds_count"), Some(3.0));
        assert_eq!(at("registrar_etcd_lease_grants_total"), Some(2.0));
        assert_eq!(at("registrar_etcd_keepalive_failures_total"), Some(2.0));
        assert_eq!(at(r#"registrar_errors_total{kind="etcd"}"#), Some(1.0));
        assert_eq!(
            at(r#"registrar_errors_total{kind="etcd_lease"}"#),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn the_task_flushes_on_stop() {
        let m = Metrics::new();
        let stats = Arc::new(WriterStats::default());
        let (stop_tx, stop) = watch::channel(false);
        let task = spawn(stats.clone(), m.clone(), stop);
        WriterStats::add(&stats.lease_grants, 1);
        WriterStats::add(&stats.txns, 1);
        stop_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, "registrar_etcd_lease_grants_total"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"registrar_etcd_txns_total{result="ok"}"#),
            Some(1.0)
        );
    }
}
