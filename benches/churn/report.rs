//! The churn benchmark's Markdown: the cold start with the status patches the API server
//! answered, and the churn's propagation, txns, CPU and memory.

use std::time::Duration;

use crate::apiserver::Patches;
use crate::common::operator::Memory;
use crate::common::report::{mib, secs, table};
use crate::flip::Flipped;
use crate::layout::Size;
use crate::propagation::{Seen, quantile};

/// The cold start; durations from the operator's spawn.
#[derive(Debug)]
pub struct Cold {
    pub readyz: Duration,
    pub all_keys: Duration,
    pub all_published: Duration,
    /// The sampler's readings (every 0.5 s) that first counted a patch and the last one.
    pub first_patch: Option<Duration>,
    pub last_patch: Option<Duration>,
    pub patches: Patches,
    pub throttled_metric: Option<f64>,
    /// The operator's Event counts: Normal sent, dropped, superseded; Warning sent, dropped,
    /// superseded (absent in builds without that metric).
    pub events_metric: [Option<f64>; 6],
    /// CPU of each process from the spawn to all Published.
    pub cpu: Vec<crate::process::CpuUse>,
    /// When the API server had counted a finalizer patch per registration (at most 120 s
    /// after all Published), and the Events it had counted by then.
    pub all_finalizers: Option<Duration>,
    pub events_after: f64,
    pub memory: Memory,
}

/// The churn.
#[derive(Debug)]
pub struct Churn {
    pub rate: u32,
    pub flipped: Flipped,
    /// From the first flip until every flip landed (or the drain gave up).
    pub window: Duration,
    pub seen: Seen,
    pub txns: i64,
    pub cpu: Duration,
    pub rss_start: u64,
    pub rss_end: u64,
    /// KiB per minute.
    pub rss_slope: Option<f64>,
    pub throttled_metric: Option<f64>,
}

pub struct Report {
    pub size: Size,
    pub when: String,
    pub load: String,
    pub versions: String,
    pub settings: String,
    pub setup: crate::setup::SetupTimes,
    pub cold: Cold,
    pub churn: Option<Churn>,
    pub total: Duration,
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
}

fn opt(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.0}"))
}

pub fn markdown(r: &Report) -> String {
    let c = &r.cold;
    let p = &c.patches;
    let mut out = format!(
        "{} pods in {} registrations; {}; load {} at the end; {}; operator writes: {}; setup (not \
         timed) {:.0} s registrations + {:.0} s pods; {:.0} s in all.\n\n",
        r.size.pods,
        r.size.registrations,
        r.when,
        r.load,
        r.versions,
        r.settings,
        r.setup.registrations.as_secs_f64(),
        r.setup.pods.as_secs_f64(),
        r.total.as_secs_f64()
    );
    let first_to_last = match (c.first_patch, c.last_patch) {
        (Some(a), Some(b)) => format!("{} → {}", secs(a), secs(b)),
        _ => "—".into(),
    };
    let rows = vec![
        vec!["start → /readyz (initial list done)".into(), secs(c.readyz)],
        vec!["start → all keys in etcd".into(), secs(c.all_keys)],
        vec![
            "start → all registrations Published".into(),
            secs(c.all_published),
        ],
        vec![
            "status patches (API server count)".into(),
            format!("{:.0}", p.total),
        ],
        vec!["first → last patch (0.5 s readings)".into(), first_to_last],
        vec!["status patches/s, mean".into(), opt(p.mean_rate())],
        vec![
            "status patches/s, peak over 1 s".into(),
            opt(Some(p.peak_rate)),
        ],
        vec![
            "429 answers (API server / operator metric)".into(),
            format!("{:.0} / {}", p.throttled, opt(c.throttled_metric)),
        ],
        vec![
            "finalizer patches / Events written until all Published (API server count)".into(),
            format!("{:.0} / {:.0}", p.others.finalizer_patches, p.others.events),
        ],
        vec![
            "start → a finalizer patch per registration; Events written by then".into(),
            format!(
                "{}; {:.0}",
                c.all_finalizers.map_or("— (not within 120 s)".into(), secs),
                c.events_after
            ),
        ],
        vec![
            "Events Normal sent / dropped / superseded, Warning the same (operator metric)".into(),
            format!(
                "{} / {} / {}, {} / {} / {}",
                opt(c.events_metric[0]),
                opt(c.events_metric[1]),
                opt(c.events_metric[2]),
                opt(c.events_metric[3]),
                opt(c.events_metric[4]),
                opt(c.events_metric[5])
            ),
        ],
        vec![
            "operator RSS, peak / now".into(),
            format!("{} / {}", mib(c.memory.peak_kib), mib(c.memory.rss_kib)),
        ],
    ];
    let mut rows = rows;
    for u in &c.cpu {
        rows.push(vec![
            format!(
                "CPU of {} until all Published: s, mean / peak cores; run-queue wait",
                u.name
            ),
            format!(
                "{:.1} s, {:.2} / {:.2}; {:.1} s",
                u.total.as_secs_f64(),
                u.mean_cores,
                u.peak_cores,
                u.runqueue_wait.as_secs_f64()
            ),
        ]);
    }
    out.push_str("Cold start (status writes at scale):\n\n");
    out.push_str(&table(&["", "value"], &rows));
    let Some(ch) = &r.churn else {
        return out;
    };
    let mut puts = ch.seen.puts.clone();
    let mut deletes = ch.seen.deletes.clone();
    let mut all: Vec<Duration> = puts.iter().chain(deletes.iter()).copied().collect();
    let changes = ch.flipped.flips as f64;
    let window = ch.window.as_secs_f64();
    let slope = ch.rss_slope.map_or("—".into(), |s| {
        format!(
            "{s:+.0} KiB/min ({:+.2} %/min)",
            s / ch.rss_start.max(1) as f64 * 100.0
        )
    });
    let change = (ch.rss_end as f64 - ch.rss_start as f64) / ch.rss_start.max(1) as f64 * 100.0;
    let rows = vec![
        vec![
            "changes (target rate)".into(),
            format!(
                "{} in {} = {:.1}/s ({}/s); {} failed",
                ch.flipped.flips,
                secs(ch.flipped.took),
                changes / ch.flipped.took.as_secs_f64().max(1e-9),
                ch.rate,
                ch.flipped.failed
            ),
        ],
        vec![
            "propagation Ready → key put, p50 / p99".into(),
            format!(
                "{} / {} ({})",
                ms(quantile(&mut puts, 0.5)),
                ms(quantile(&mut puts, 0.99)),
                puts.len()
            ),
        ],
        vec![
            "propagation NotReady → key deleted, p50 / p99".into(),
            format!(
                "{} / {} ({})",
                ms(quantile(&mut deletes, 0.5)),
                ms(quantile(&mut deletes, 0.99)),
                deletes.len()
            ),
        ],
        vec![
            "propagation, all, p50 / p99 / max".into(),
            format!(
                "{} / {} / {}",
                ms(quantile(&mut all, 0.5)),
                ms(quantile(&mut all, 0.99)),
                ms(quantile(&mut all, 1.0))
            ),
        ],
        vec![
            "changes never seen in etcd / events matching no change".into(),
            format!("{} / {}", ch.seen.missing, ch.seen.unmatched),
        ],
        vec![
            "etcd txns (revision delta), per second".into(),
            format!(
                "{} in {}, {:.1}/s",
                ch.txns,
                secs(ch.window),
                ch.txns as f64 / window.max(1e-9)
            ),
        ],
        vec![
            "operator CPU, per 1,000 changes".into(),
            format!(
                "{:.2} s in all, {:.3} s per 1,000 ({:.0} % of a core)",
                ch.cpu.as_secs_f64(),
                ch.cpu.as_secs_f64() / changes.max(1.0) * 1000.0,
                ch.cpu.as_secs_f64() / window.max(1e-9) * 100.0
            ),
        ],
        vec![
            "operator RSS start → end (change)".into(),
            format!(
                "{} → {} ({change:+.1} %)",
                mib(ch.rss_start),
                mib(ch.rss_end)
            ),
        ],
        vec![
            "operator RSS slope (least squares, 10 s samples)".into(),
            slope,
        ],
        vec![
            "429 answers (operator metric, cumulative)".into(),
            opt(ch.throttled_metric),
        ],
    ];
    out.push_str("\nSteady churn:\n\n");
    out.push_str(&table(&["", "value"], &rows));
    out
}
