//! The soak's report: one line per sample while it runs, then the Markdown summary (setup,
//! churn, faults, sample summary with slopes, lease re-grants, write accounting), the samples
//! as CSV, and the list of problems that fail the run.

use std::fmt::Write as _;

use super::churn::ChurnCounts;
use super::config::{Config, LEASE_TTL, MAX_REPLICAS, MIN_REPLICAS, REPLICAS, SERVICES};
use super::faults::Fault;
use super::model::ModelState;
use super::sample::Sample;
use super::stats::{self, Series};
use crate::report::{table, when_and_where};
use registrar_testenv::Recording;

/// Everything one run produced.
pub struct Outcome {
    pub cfg: Config,
    /// Seconds of churn actually run.
    pub churn_s: f64,
    /// Seconds from the end of the churn until etcd equalled the desired keys.
    pub settle_s: f64,
    pub load_start: String,
    pub load_end: String,
    pub counts: ChurnCounts,
    pub faults: Vec<Fault>,
    pub samples: Vec<Sample>,
    pub model: ModelState,
    pub recording: Recording,
    /// etcd's revision when counting started, and at the end.
    pub r0: i64,
    pub r_end: i64,
    /// The number of keys at the end, or why etcd never equalled the desired keys.
    pub final_keys: Result<usize, String>,
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// One progress line.
pub fn sample_line(s: &Sample) -> String {
    format!(
        "{:>6.0} s  RSS {:>6.1} MiB  fds {:>3}  tasks {:>4}  cpu {:>6.1} s  grants {}  txns {}  ops {}  rev {}  keys {}  lease {}",
        s.t,
        s.rss_kib as f64 / 1024.0,
        s.fds,
        opt(s.tasks),
        s.cpu_s,
        opt(s.lease_grants),
        opt(s.txns_ok),
        opt(s.txn_ops),
        opt(s.revision),
        opt(s.keys),
        s.lease.map_or_else(|| "-".into(), |l| format!("{l:x}")),
    )
}

/// The samples the slopes are taken over: after the warm-up, and taken while etcd answered
/// (while it is down the operator holds fewer connections and tasks, which says nothing about
/// leaks).
fn steady(o: &Outcome) -> Vec<Sample> {
    let w = o.cfg.warm_up.as_secs_f64();
    o.samples
        .iter()
        .filter(|s| s.t >= w && s.revision.is_some())
        .cloned()
        .collect()
}

fn series(o: &Outcome) -> Vec<Series> {
    let samples = steady(o);
    [
        stats::series("RSS (MiB)", &samples, 0.0, |s| {
            Some(s.rss_kib as f64 / 1024.0)
        }),
        stats::series("open fds", &samples, 0.0, |s| Some(s.fds as f64)),
        stats::series("tasks (registrar_tasks)", &samples, 0.0, |s| s.tasks),
        stats::series(
            "CPU s (cumulative; slope = CPU s per hour)",
            &samples,
            0.0,
            |s| Some(s.cpu_s),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// About a dozen samples spread over the run, as rows.
fn sample_rows(samples: &[Sample]) -> Vec<Vec<String>> {
    let step = samples.len().div_ceil(12).max(1);
    let mut picked: Vec<&Sample> = samples.iter().step_by(step).collect();
    if let Some(last) = samples.last()
        && picked.last().is_none_or(|p| p.t != last.t)
    {
        picked.push(last);
    }
    picked
        .into_iter()
        .map(|s| {
            vec![
                format!("{:.0} s", s.t),
                format!("{:.1}", s.rss_kib as f64 / 1024.0),
                s.fds.to_string(),
                opt(s.tasks),
                format!("{:.1}", s.cpu_s),
                opt(s.lease_grants),
                opt(s.txns_ok),
                opt(s.revision),
                opt(s.keys),
            ]
        })
        .collect()
}

/// Key events the operator wrote and key changes it was expected to write: the watch's events
/// minus the revocation's deletes, against the model's changes plus the keys put back after
/// the revocation.
pub struct Writes {
    pub operator_events: usize,
    pub expected: u64,
    pub revoke_deletes: usize,
    pub revoke_revisions: usize,
}

pub fn writes(o: &Outcome) -> Writes {
    let revokes: Vec<i64> = o.faults.iter().filter_map(|f| f.revision).collect();
    let revoke_deletes: usize = revokes.iter().map(|r| o.recording.at(*r)).sum();
    Writes {
        operator_events: o.recording.events.len() - revoke_deletes,
        expected: o.model.changes + revoke_deletes as u64,
        revoke_deletes,
        revoke_revisions: revokes.iter().filter(|r| o.recording.at(**r) > 0).count(),
    }
}

fn delta(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let first = samples.iter().find_map(&f)?;
    let last = samples.iter().rev().find_map(&f)?;
    Some(last - first)
}

/// What fails the run.
pub fn problems(o: &Outcome) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(e) = &o.final_keys {
        out.push(format!(
            "etcd never equalled the desired keys at the end: {e}"
        ));
    }
    let ttl = LEASE_TTL.as_secs_f64();
    for r in stats::regrants(&o.samples, &o.faults, ttl) {
        if r.loss.is_none() {
            out.push(format!(
                "{} lease grant(s) between {:.0} s and {:.0} s without a real loss",
                r.grants, r.from_s, r.to_s
            ));
        }
    }
    for f in &o.faults {
        if !f.kind.is_loss() && f.lease_before.is_some() && f.lease_after != f.lease_before {
            out.push(format!(
                "{} at {:.0} s moved the keys from lease {:?} to {:?}",
                f.kind.label(),
                f.at_s,
                f.lease_before,
                f.lease_after
            ));
        }
    }
    let noop = o.recording.noop_puts();
    if noop > 0 {
        out.push(format!("{noop} puts rewrote an unchanged value"));
    }
    out
}

/// The Markdown report.
pub fn markdown(o: &Outcome) -> String {
    let mut md = String::new();
    let c = &o.counts;
    let _ = writeln!(
        md,
        "`REGISTRAR_SOAK_SECS={} cargo bench --bench soak` — {}; load (1/5/15 min) {} at the \
         start, {} at the end; seed {}.\n",
        o.cfg.duration.as_secs(),
        when_and_where(),
        o.load_start,
        o.load_end,
        o.cfg.seed
    );
    let _ = writeln!(
        md,
        "Load: a kwok cluster (2 fake Nodes), {} Deployments of {REPLICAS} replicas (scaled \
         within {MIN_REPLICAS}–{MAX_REPLICAS}), one ServiceRegistration each; the operator \
         ({} binary, lease TTL {} s) on its own etcd. {:.0} s of churn at <= 1 action/s: \
         {} actions — {} readiness flips to NotReady, {} to Ready, {} scales (+{} / -{} \
         replicas), {} rolling restarts; {} API errors, {} idle ticks. Samples every {} s; \
         slopes (per hour) by least squares over the {} samples after a {} s warm-up taken \
         while etcd answered ({} taken while it was down left out).\n",
        SERVICES.len(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        LEASE_TTL.as_secs(),
        o.churn_s,
        c.actions(),
        c.flips_to_unready,
        c.flips_to_ready,
        c.scales,
        c.scaled_up,
        c.scaled_down,
        c.rollouts,
        c.api_errors,
        c.idle,
        o.cfg.sample_every.as_secs(),
        steady(o).len(),
        o.cfg.warm_up.as_secs(),
        o.samples
            .iter()
            .filter(|s| s.t >= o.cfg.warm_up.as_secs_f64() && s.revision.is_none())
            .count(),
    );
    let _ = writeln!(
        md,
        "{}",
        table(
            &[
                "t",
                "RSS MiB",
                "fds",
                "tasks",
                "CPU s",
                "lease grants",
                "txns",
                "etcd revision",
                "keys"
            ],
            &sample_rows(&o.samples)
        )
    );
    let rows: Vec<Vec<String>> = series(o)
        .iter()
        .map(|s| {
            vec![
                s.name.to_string(),
                format!("{:.1}", s.first),
                format!("{:.1}", s.last),
                format!("{:.1}", s.min),
                format!("{:.1}", s.max),
                format!("{:.1}", s.mean),
                s.per_hour.map_or("-".into(), |v| format!("{v:+.2}")),
            ]
        })
        .collect();
    let _ = writeln!(
        md,
        "{}",
        table(
            &[
                "after warm-up",
                "first",
                "last",
                "min",
                "max",
                "mean",
                "slope / hour"
            ],
            &rows
        )
    );
    // Faults.
    let rows: Vec<Vec<String>> = o
        .faults
        .iter()
        .map(|f| {
            let kept = match (f.kind.is_loss(), f.lease_before, f.lease_after) {
                (true, _, Some(_)) if f.lease_after != f.lease_before => "new lease (expected)",
                (true, _, _) => "NOT replaced",
                (false, Some(a), Some(b)) if a == b => "kept",
                _ => "CHANGED",
            };
            vec![
                format!("{:.0} s", f.at_s),
                f.kind.label().to_string(),
                format!("{:.1} s", f.down.as_secs_f64()),
                format!(
                    "{} -> {}",
                    f.lease_before.map_or("-".into(), |l| format!("{l:x}")),
                    f.lease_after.map_or("-".into(), |l| format!("{l:x}"))
                ),
                kept.to_string(),
            ]
        })
        .collect();
    let _ = writeln!(
        md,
        "{}",
        table(
            &["at", "fault", "took", "lease of the keys", "lease"],
            &rows
        )
    );
    let ttl = LEASE_TTL.as_secs_f64();
    let regrants = stats::regrants(&o.samples, &o.faults, ttl);
    let losses = o.faults.iter().filter(|f| f.kind.is_loss()).count();
    let explained = regrants.iter().filter(|r| r.loss.is_some()).count();
    let grants = regrants.iter().map(|r| r.grants).sum::<f64>();
    let _ = writeln!(
        md,
        "Lease re-grants: {grants} after the first grant ({explained} of {} each within a \
         sample of a real loss: {}); real losses: {losses} (the revocation). Restarts with the \
         data kept are not losses: etcd keeps its leases and the operator's keepalive resumes.\n",
        regrants.len(),
        regrants
            .iter()
            .map(|r| format!(
                "{:.0}–{:.0} s after the loss at {}",
                r.from_s,
                r.to_s,
                r.loss.map_or("none".into(), |l| format!("{l:.0} s"))
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let w = writes(o);
    let rec = &o.recording;
    let txns = delta(&o.samples, |s| s.txns_ok);
    let ops = delta(&o.samples, |s| s.txn_ops);
    let revs = o.r_end - o.r0;
    let ratio = if w.expected > 0 {
        w.operator_events as f64 / w.expected as f64
    } else {
        0.0
    };
    let _ = writeln!(
        md,
        "Writes: etcd revision {} -> {} (+{revs}); the prefix watch saw {} events ({} puts, {} \
         deletes) in {} revisions, {} puts of an unchanged value, {} watch reconnects. The \
         operator committed {} txns ({} ops); the revocation made {} revision(s) deleting {} \
         keys. Expected key changes: {} (the model: an independent pod watch, after every pod \
         event the keys the operator's own desired-state function wants, counting every key \
         added, removed or changed — {} pod events) + {} keys put back after the revocation = \
         {}. Key events written by the operator: {} -> write amplification {ratio:.3} (<= 1: \
         every event was a wanted change, and intermediate states coalesced away are not \
         written); revisions per operator txn {}.\n",
        o.r0,
        o.r_end,
        rec.events.len(),
        rec.puts(),
        rec.deletes(),
        rec.revisions(),
        rec.noop_puts(),
        rec.reconnects,
        opt(txns),
        opt(ops),
        w.revoke_revisions,
        w.revoke_deletes,
        o.model.changes,
        o.model.pod_events,
        w.revoke_deletes,
        w.expected,
        w.operator_events,
        txns.filter(|t| *t > 0.0).map_or("-".into(), |t| format!(
            "{:.3}",
            (revs - w.revoke_revisions as i64) as f64 / t
        )),
    );
    let _ = writeln!(
        md,
        "End: {}; etcd equal to the desired keys {:.1} s after the churn stopped.",
        match &o.final_keys {
            Ok(n) => format!("etcd holds exactly the {n} desired keys on one lease"),
            Err(e) => format!("NOT converged: {e}"),
        },
        o.settle_s
    );
    let problems = problems(o);
    if !problems.is_empty() {
        let _ = writeln!(md, "\nProblems: {}", problems.join("; "));
    }
    md
}

/// The samples as CSV.
pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::from(
        "t_s,rss_kib,fds,cpu_s,tasks,lease_grants,txns_ok,txn_ops,revision,keys,lease\n",
    );
    for s in samples {
        let _ = writeln!(
            out,
            "{:.1},{},{},{:.2},{},{},{},{},{},{},{}",
            s.t,
            s.rss_kib,
            s.fds,
            s.cpu_s,
            opt(s.tasks),
            opt(s.lease_grants),
            opt(s.txns_ok),
            opt(s.txn_ops),
            opt(s.revision),
            opt(s.keys),
            opt(s.lease)
        );
    }
    out
}
