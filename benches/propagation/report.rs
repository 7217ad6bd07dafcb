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

/// Which way a round's pods went: the Ready waves (each pod's Ready patch → its endpoint
/// visible) or the removal waves (each pod's delete request → its endpoint gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Ready,
    Removal,
}

impl Path {
    pub const BOTH: [Path; 2] = [Path::Ready, Path::Removal];
}

/// What one path measured in one round, per system.
#[derive(Debug)]
pub struct PathResult {
    /// The client: the backend in (out of) a `Balancer`'s pick set.
    pub pick: SystemResult,
    /// Registrar: the key put (deleted), seen by an etcd watch.
    pub registrar: SystemResult,
    /// The peer: a ready endpoint (no longer ready) in an EndpointSlice watch.
    pub peer: SystemResult,
    /// The operator's own latency (watch event received → etcd txn committed) over the path's
    /// waves.
    pub operator: Option<OperatorLatency>,
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
    /// The Ready waves; writes are Registrar's etcd txns and the peer's EndpointSlice writes.
    pub ready: PathResult,
    /// The removal waves (writes not counted).
    pub removal: PathResult,
    /// etcd revision after convergence minus before the flip.
    pub revision_delta: i64,
    /// The operator's own propagation metric over the round: mean of (etcd commit − Ready
    /// `lastTransitionTime`), seconds.
    pub operator_metric_mean: Option<f64>,
    /// Per pod over the Ready waves, from the bench's sightings: patch → pod watch event
    /// (API server watch delivery), → key in the bench's etcd watch (the operator, etcd and
    /// etcd's watch delivery), → listed by the balancer's resolver, → in its pick set.
    pub stages: [Option<Stats>; 4],
    /// The operator's `registrar_stage_seconds` over the Ready waves, one per [`STAGES`].
    pub operator_stages: [Option<OperatorLatency>; 5],
}

/// The `stage` labels of `registrar_stage_seconds`, in order.
pub const STAGES: [&str; 5] = ["window", "compute", "handoff", "plan", "commit"];

/// The bench-side stages of [`Round::stages`].
const CLIENT_STAGES: [&str; 4] = [
    "API server watch delivery (patch → pod watch event)",
    "operator + etcd (pod watch event → key in an etcd watch)",
    "etcd → resolver watch (etcd watch → resolver lists it)",
    "resolver → pick set (connect, picker rebuild)",
];

/// The operator-latency histogram (`registrar_operator_latency_seconds`) between two scrapes:
/// its mean and the bucket bounds its p50 and p99 fall under.
#[derive(Clone, Copy, Debug)]
pub struct OperatorLatency {
    pub count: f64,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// The bucket bound every observation falls under.
    pub max: Duration,
}

const OPERATOR_LATENCY: &str = "registrar_operator_latency_seconds";

impl OperatorLatency {
    /// The operator-latency histogram's observations after `before` up to `after` (`None`
    /// when there were none).
    pub fn between(before: &str, after: &str) -> Option<OperatorLatency> {
        Self::histogram(OPERATOR_LATENCY, "", before, after)
    }

    /// The same of `registrar_stage_seconds{stage}`.
    pub fn of_stage(stage: &str, before: &str, after: &str) -> Option<OperatorLatency> {
        Self::histogram(
            "registrar_stage_seconds",
            &format!("stage=\"{stage}\""),
            before,
            after,
        )
    }

    /// Histogram `name` with `labels` (`a="x"`, or empty).
    fn histogram(name: &str, labels: &str, before: &str, after: &str) -> Option<OperatorLatency> {
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let delta = |series: &str| {
            Some(
                crate::common::operator::sample(after, series)?
                    - crate::common::operator::sample(before, series).unwrap_or(0.0),
            )
        };
        let count = delta(&format!("{name}_count{braced}"))?;
        let sum = delta(&format!("{name}_sum{braced}"))?;
        if count <= 0.0 {
            return None;
        }
        let bucket = if labels.is_empty() {
            format!("{name}_bucket{{le=\"")
        } else {
            format!("{name}_bucket{{{labels},le=\"")
        };
        let mut buckets: Vec<(f64, f64)> = buckets(after, &bucket)
            .into_iter()
            .map(|(le, n)| {
                let was = crate::common::operator::sample(before, &format!("{bucket}{le}\"}}"))
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
            max: under(1.0),
        })
    }
}

/// The `le` label and cumulative count of every bucket whose series starts with `start`
/// (`name_bucket{...le="`).
fn buckets(text: &str, start: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(start)?;
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

    pub fn path(&self, path: Path) -> &PathResult {
        match path {
            Path::Ready => &self.ready,
            Path::Removal => &self.removal,
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
        let p = &r.ready;
        for (name, s, unit) in [
            ("Registrar (Balancer pick set)", &p.pick, ""),
            ("Registrar (etcd watch)", &p.registrar, "txns"),
            ("EndpointSlice controller", &p.peer, "slice writes"),
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
                if unit.is_empty() {
                    "—".into()
                } else {
                    format!("{} {unit}", s.writes)
                },
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

/// Registrar ÷ EndpointSlice controller, same pods, same run (below 1: Registrar is faster):
/// the client's pick set first, then the etcd watch.
pub fn ratio_table(rounds: &[Round]) -> String {
    let rows: Vec<Vec<String>> = rounds
        .iter()
        .map(|r| {
            let p = &r.ready;
            let [pick50, pick99] = pick_ratios(p);
            vec![
                r.label(),
                pick50,
                pick99,
                ratio(p.pick.converge, p.peer.converge),
                ratio(p.registrar.from_patch.p50, p.peer.from_patch.p50),
                ratio(p.registrar.from_patch.p99, p.peer.from_patch.p99),
            ]
        })
        .collect();
    table(
        &[
            "pods",
            "pick set p50 ratio",
            "pick set p99 ratio",
            "pick set converge ratio",
            "etcd watch p50 ratio",
            "etcd watch p99 ratio",
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
                r.ready.registrar.writes.to_string(),
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

/// Pick set ÷ peer on one path: at p50 and at p99.
fn pick_ratios(p: &PathResult) -> [String; 2] {
    let (c, b) = (&p.pick.from_patch, &p.peer.from_patch);
    [ratio(c.p50, b.p50), ratio(c.p99, b.p99)]
}

/// The removal table: per round and system, from the delete request to the endpoint gone,
/// with Registrar ÷ peer.
pub fn removal_table(rounds: &[Round]) -> String {
    let rows: Vec<Vec<String>> = rounds
        .iter()
        .map(|r| {
            let p = &r.removal;
            let mut row = vec![r.label()];
            for s in [&p.pick, &p.registrar, &p.peer] {
                row.extend([ms(s.from_patch.p50), ms(s.from_patch.p99)]);
            }
            row.extend(pick_ratios(p));
            row
        })
        .collect();
    table(
        &[
            "pods",
            "pick set p50 (backend out)",
            "pick set p99",
            "etcd watch p50 (key deleted)",
            "etcd watch p99",
            "EndpointSlice p50 (not ready)",
            "EndpointSlice p99",
            "pick set p50 ratio",
            "pick set p99 ratio",
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
            format!("≤ {}", ms(o.max)),
        ],
        None => vec![
            "0".into(),
            "n/a".into(),
            "n/a".into(),
            "n/a".into(),
            "n/a".into(),
        ],
    };
    let rows: Vec<Vec<String>> = rounds
        .iter()
        .map(|r| {
            let mut row = vec![r.label()];
            for path in Path::BOTH {
                row.extend(cells(r.path(path).operator));
            }
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
            "all",
            "removal: events",
            "mean",
            "p50",
            "p99",
            "all",
        ],
        &rows,
    )
}

/// Where the time goes in the round with the largest waves (its last run): the bench's
/// per-pod sightings, then the operator's stage histogram.
pub fn stage_table(rounds: &[Round]) -> String {
    let Some(r) = rounds.iter().rev().max_by_key(|r| r.pods) else {
        return String::new();
    };
    let mut rows: Vec<Vec<String>> = CLIENT_STAGES
        .iter()
        .zip(&r.stages)
        .map(|(name, s)| {
            vec![
                (*name).to_string(),
                opt(*s, |s| s.count.to_string()),
                "—".into(),
                opt(*s, |s| ms(s.p50)),
                opt(*s, |s| ms(s.p99)),
                opt(*s, |s| ms(s.max)),
            ]
        })
        .collect();
    for (stage, o) in STAGES.iter().zip(&r.operator_stages) {
        rows.push(vec![
            format!("operator: {stage} (`registrar_stage_seconds`)"),
            opt(*o, |o| format!("{:.0}", o.count)),
            opt(*o, |o| ms(o.mean)),
            opt(*o, |o| format!("≤ {}", ms(o.p50))),
            opt(*o, |o| format!("≤ {}", ms(o.p99))),
            opt(*o, |o| format!("≤ {}", ms(o.max))),
        ]);
    }
    format!(
        "Round {} (Ready waves):\n\n{}",
        r.label(),
        table(&["stage", "samples", "mean", "p50", "p99", "max"], &rows)
    )
}

/// Per round size over several runs: the lowest and highest p50 and p99 of the pick set and
/// of the peer, and of their ratios (Ready, then removal).
pub fn spread_table(runs: &[Vec<Round>]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let range = |v: Vec<f64>, f: &dyn Fn(f64) -> String| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{}–{}", f(lo), f(hi))
    };
    let msf = |x: f64| format!("{:.1}", x * 1e3);
    let rf = |x: f64| format!("{x:.2}");
    let rows: Vec<Vec<String>> = (0..first.len())
        .map(|i| {
            let same: Vec<&Round> = runs.iter().filter_map(|run| run.get(i)).collect();
            let get = |f: &dyn Fn(&Round) -> f64| same.iter().map(|r| f(r)).collect::<Vec<f64>>();
            let secs = |d: Duration| d.as_secs_f64();
            let div = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
            let ratio_range = |path: Path, p99: bool| {
                let q = |s: &Stats| if p99 { s.p99 } else { s.p50 };
                range(
                    get(&|r| {
                        let p = r.path(path);
                        div(q(&p.pick.from_patch), q(&p.peer.from_patch))
                    }),
                    &rf,
                )
            };
            vec![
                first[i].label(),
                same.len().to_string(),
                range(get(&|r| secs(r.ready.pick.from_patch.p50)), &msf),
                range(get(&|r| secs(r.ready.pick.from_patch.p99)), &msf),
                range(get(&|r| secs(r.ready.peer.from_patch.p50)), &msf),
                range(get(&|r| secs(r.ready.peer.from_patch.p99)), &msf),
                ratio_range(Path::Ready, false),
                ratio_range(Path::Ready, true),
                ratio_range(Path::Removal, false),
                ratio_range(Path::Removal, true),
                range(
                    get(&|r| r.ready.operator.map_or(f64::NAN, |o| secs(o.p99))),
                    &msf,
                ),
            ]
        })
        .collect();
    table(
        &[
            "pods",
            "runs",
            "pick set p50 (ms)",
            "pick set p99 (ms)",
            "peer p50 (ms)",
            "peer p99 (ms)",
            "p50 ratio",
            "p99 ratio",
            "removal p50 ratio",
            "removal p99 ratio",
            "operator p99 bucket (ms)",
        ],
        &rows,
    )
}

/// The whole report: every run's tables, then the spread over the runs.
pub fn markdown(header: &str, runs: &[Vec<Round>]) -> String {
    let mut out = header.to_string();
    for (n, rounds) in runs.iter().enumerate() {
        if runs.len() > 1 {
            out.push_str(&format!("\n\n## Run {} of {}", n + 1, runs.len()));
        }
        out.push_str(&format!(
            "\n\n### Pod Ready → endpoint visible\n\n{}\n### Registrar ÷ EndpointSlice controller\n\n{}\n### Registrar's etcd writes\n\n{}\n### Pod terminating → endpoint gone\n\n{}\n### The operator's own latency (watch event received → etcd txn committed)\n\n{}\n### Where the time goes\n\n{}",
            latency_table(rounds),
            ratio_table(rounds),
            registrar_table(rounds),
            removal_table(rounds),
            operator_table(rounds),
            stage_table(rounds),
        ));
    }
    if runs.len() > 1 {
        out.push_str(&format!(
            "\n\n## Spread over {} runs (min–max)\n\n{}",
            runs.len(),
            spread_table(runs)
        ));
    }
    out
}
