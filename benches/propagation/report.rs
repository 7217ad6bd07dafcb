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
    /// Registrar: from each pod's delete request to its key's deletion seen by an etcd watch.
    pub removal_registrar: SystemResult,
    /// The peer: from each pod's delete request to its endpoint no longer ready.
    pub removal_peer: SystemResult,
    /// The operator's own latency (watch event received → etcd txn committed) over the Ready
    /// waves, and over the removal waves.
    pub operator_ready: Option<OperatorLatency>,
    pub operator_removal: Option<OperatorLatency>,
}

/// The operator-latency histogram (`registrar_operator_latency_seconds`) between two scrapes:
/// its mean and the bucket bounds its p50 and p99 fall under.
#[derive(Clone, Copy, Debug)]
pub struct OperatorLatency {
    pub count: f64,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

const OPERATOR_LATENCY: &str = "registrar_operator_latency_seconds";

impl OperatorLatency {
    /// The histogram's observations after `before` up to `after` (`None` when there were none).
    pub fn between(before: &str, after: &str) -> Option<OperatorLatency> {
        let delta = |series: &str| {
            Some(
                crate::common::operator::sample(after, series)?
                    - crate::common::operator::sample(before, series).unwrap_or(0.0),
            )
        };
        let count = delta(&format!("{OPERATOR_LATENCY}_count"))?;
        let sum = delta(&format!("{OPERATOR_LATENCY}_sum"))?;
        if count <= 0.0 {
            return None;
        }
        let mut buckets: Vec<(f64, f64)> = buckets(after)
            .into_iter()
            .map(|(le, n)| {
                let was = crate::common::operator::sample(
                    before,
                    &format!("{OPERATOR_LATENCY}_bucket{{le=\"{le}\"}}"),
                )
                .unwrap_or(0.0);
                (le.parse().unwrap_or(f64::INFINITY), n - was)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let under = |q: f64| {
            let bound = buckets
                .iter()
                .find(|(_, n)| *n >= q * count)
                .map_or(f64::INFINITY, |(le, _)| *le);
            Duration::try_from_secs_f64(bound).unwrap_or(Duration::MAX)
        };
        Some(OperatorLatency {
            count,
            mean: Duration::from_secs_f64((sum / count).max(0.0)),
            p50: under(0.5),
            p99: under(0.99),
        })
    }
}

/// The `le` label and cumulative count of every bucket of the operator-latency histogram.
fn buckets(text: &str) -> Vec<(String, f64)> {
    let start = format!("{OPERATOR_LATENCY}_bucket{{le=\"");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(start.as_str())?;
            let (le, rest) = rest.split_once("\"}")?;
            Some((le.to_owned(), rest.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
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

/// The removal table: per round and system, from the delete request to the endpoint gone,
/// with Registrar ÷ peer.
pub fn removal_table(rounds: &[Round]) -> String {
    let rows: Vec<Vec<String>> = rounds
        .iter()
        .map(|r| {
            let (a, b) = (&r.removal_registrar.from_patch, &r.removal_peer.from_patch);
            vec![
                r.label(),
                ms(a.p50),
                ms(a.p99),
                ms(b.p50),
                ms(b.p99),
                ratio(a.p50, b.p50),
                ratio(a.p99, b.p99),
            ]
        })
        .collect();
    table(
        &[
            "pods",
            "Registrar p50 (key deleted)",
            "Registrar p99",
            "EndpointSlice p50 (not ready)",
            "EndpointSlice p99",
            "p50 ratio",
            "p99 ratio",
        ],
        &rows,
    )
}

/// The operator's own latency per round (watch event received → etcd txn committed), from its
/// histogram: p50 and p99 are the bucket bounds they fall under.
pub fn operator_table(rounds: &[Round]) -> String {
    let cells = |o: Option<OperatorLatency>| match o {
        Some(o) => vec![
            format!("{:.0}", o.count),
            ms(o.mean),
            format!("≤ {}", ms(o.p50)),
            format!("≤ {}", ms(o.p99)),
        ],
        None => vec!["0".into(), "n/a".into(), "n/a".into(), "n/a".into()],
    };
    let rows: Vec<Vec<String>> = rounds
        .iter()
        .map(|r| {
            let mut row = vec![r.label()];
            row.extend(cells(r.operator_ready));
            row.extend(cells(r.operator_removal));
            row
        })
        .collect();
    table(
        &[
            "pods",
            "Ready: events",
            "mean",
            "p50",
            "p99",
            "removal: events",
            "mean",
            "p50",
            "p99",
        ],
        &rows,
    )
}

/// The whole report.
pub fn markdown(header: &str, rounds: &[Round]) -> String {
    format!(
        "{header}\n\n### Pod Ready → endpoint visible\n\n{}\n### Registrar ÷ EndpointSlice controller\n\n{}\n### Registrar's etcd writes\n\n{}\n### Pod terminating → endpoint gone\n\n{}\n### The operator's own latency (watch event received → etcd txn committed)\n\n{}",
        latency_table(rounds),
        ratio_table(rounds),
        registrar_table(rounds),
        removal_table(rounds),
        operator_table(rounds)
    )
}
