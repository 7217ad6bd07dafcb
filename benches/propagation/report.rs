//! Figures of the propagation benchmark and their rendering as Markdown tables (aligned, so
//! the same text reads well on a terminal).

use std::time::Duration;

use crate::common::report::table;

/// Percentiles of a set of latencies (nearest-rank).
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub count: usize,
}

impl Stats {
    /// `None` for an empty set.
    pub fn of(mut samples: Vec<Duration>) -> Option<Stats> {
        samples.sort_unstable();
        let max = *samples.last()?;
        Some(Stats {
            p50: percentile(&samples, 50),
            p99: percentile(&samples, 99),
            max,
            count: samples.len(),
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty `samples`.
fn percentile(samples: &[Duration], p: usize) -> Duration {
    let rank = (samples.len() * p).div_ceil(100).max(1);
    samples[rank.min(samples.len()) - 1]
}

/// What one system did in one round.
#[derive(Debug)]
pub struct SystemResult {
    /// From each pod's Ready patch (sent) to its endpoint being seen.
    pub from_patch: Stats,
    /// From each pod's stored Ready `lastTransitionTime` (1 s resolution) to its endpoint seen.
    pub from_ltt: Option<Stats>,
    /// From the first Ready patch to the last endpoint seen.
    pub converge: Duration,
    /// Writes: etcd txns (Registrar) or EndpointSlice writes (the peer).
    pub writes: usize,
}

/// One round.
#[derive(Debug)]
pub struct Round {
    /// Pods flipped Ready at once.
    pub pods: usize,
    /// Consecutive flips of `pods` pods (latencies are over all of them, writes their total).
    pub waves: usize,
    /// Time to send all Ready patches of a wave (the longest wave).
    pub flip: Duration,
    pub registrar: SystemResult,
    pub peer: SystemResult,
    /// etcd revision after convergence minus before the flip.
    pub revision_delta: i64,
    /// The operator's own propagation metric over the round: mean of (etcd commit − Ready
    /// `lastTransitionTime`), seconds.
    pub operator_metric_mean: Option<f64>,
}

impl Round {
    fn label(&self) -> String {
        if self.waves > 1 {
            format!("{} (×{} waves)", self.pods, self.waves)
        } else {
            self.pods.to_string()
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "n/a".into();
    }
    format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "n/a".into(), f)
}

/// The latency table: one row per system per round.
pub fn latency_table(rounds: &[Round]) -> String {
    let mut rows = Vec::new();
    for r in rounds {
        for (name, s, unit) in [
            ("Registrar (etcd watch)", &r.registrar, "txns"),
            ("EndpointSlice controller", &r.peer, "slice writes"),
        ] {
            rows.push(vec![
                r.label(),
                name.to_string(),
                ms(s.from_patch.p50),
                ms(s.from_patch.p99),
                ms(s.from_patch.max),
                opt(s.from_ltt, |l| ms(l.p50)),
                opt(s.from_ltt, |l| ms(l.p99)),
                ms(s.converge),
                format!("{} {unit}", s.writes),
            ]);
        }
    }
    table(
        &[
            "pods",
            "system",
            "p50",
            "p99",
            "max",
            "p50 from LTT",
            "p99 from LTT",
            "converged after",
            "writes",
        ],
        &rows,
    )
}

/// Registrar ÷ EndpointSlice controller, same pods, same run (below 1: Registrar is faster).
pub fn ratio_table(rounds: &[Round]) -> String {
    let rows: Vec<Vec<String>> = rounds
        .iter()
        .map(|r| {
            let (a, b) = (&r.registrar, &r.peer);
            vec![
                r.label(),
                ratio(a.from_patch.p50, b.from_patch.p50),
                ratio(a.from_patch.p99, b.from_patch.p99),
                ratio(a.from_patch.max, b.from_patch.max),
                ratio(a.converge, b.converge),
            ]
        })
        .collect();
    table(
        &[
            "pods",
            "p50 ratio",
            "p99 ratio",
            "max ratio",
            "converge ratio",
        ],
        &rows,
    )
}

/// Registrar's write path per round.
pub fn registrar_table(rounds: &[Round]) -> String {
    let rows: Vec<Vec<String>> = rounds
        .iter()
        .map(|r| {
            vec![
                r.label(),
                r.registrar.writes.to_string(),
                r.revision_delta.to_string(),
                opt(r.operator_metric_mean, |m| format!("{:.0} ms", m * 1e3)),
                ms(r.flip),
            ]
        })
        .collect();
    table(
        &[
            "pods",
            "etcd txns (distinct revisions)",
            "etcd revision delta",
            "operator metric mean (commit − LTT)",
            "time to send all Ready patches",
        ],
        &rows,
    )
}

/// The whole report.
pub fn markdown(header: &str, rounds: &[Round]) -> String {
    format!(
        "{header}\n\n### Pod Ready → endpoint visible\n\n{}\n### Registrar ÷ EndpointSlice controller\n\n{}\n### Registrar's etcd writes\n\n{}",
        latency_table(rounds),
        ratio_table(rounds),
        registrar_table(rounds)
    )
}
