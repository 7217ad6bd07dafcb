//! The scale benchmark's Markdown: the empty-cluster baseline, a summary row per size (the
//! cost curve), then each size's cold start and warm restart in full.

use std::time::Duration;

use crate::common::operator::Memory;
use crate::common::report::{mib, secs, table};
use crate::layout::Size;
use crate::measure::{Cold, Warm};
use crate::setup::SetupTimes;
use crate::world::LeaseInfo;

/// One size, measured on its own fresh world.
pub struct Run {
    pub size: Size,
    pub setup: SetupTimes,
    pub cold: Cold,
    pub warm: Option<Warm>,
    /// This size's part of the run, setup included.
    pub total: Duration,
}

/// Everything one run measured.
pub struct Report {
    pub when: String,
    pub versions: String,
    /// Operator settings that matter here, e.g. "50 ms coalescing, 30 s lease TTL".
    pub settings: String,
    /// API requests in flight during the setup.
    pub in_flight: usize,
    /// The operator on an empty cluster.
    pub baseline: Memory,
    pub runs: Vec<Run>,
    pub total: Duration,
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.0}"))
}

fn leases(l: &[LeaseInfo]) -> String {
    let keys: Vec<String> = l.iter().map(|l| l.keys.to_string()).collect();
    format!("{} (keys attached: {})", l.len(), keys.join(", "))
}

/// KiB above the baseline, per pod, in bytes.
fn per_pod(kib: u64, baseline: u64, pods: usize) -> String {
    let above = kib.saturating_sub(baseline) as f64 * 1024.0;
    format!("{:.0} B", above / pods.max(1) as f64)
}

fn memory_rows(rows: &mut Vec<Vec<String>>, m: Memory) {
    rows.push(vec!["operator peak RSS (VmHWM)".into(), mib(m.peak_kib)]);
    rows.push(vec![
        "operator RSS after convergence (VmRSS)".into(),
        mib(m.rss_kib),
    ]);
}

fn cold_table(size: Size, c: &Cold) -> String {
    let mut rows = vec![
        vec!["start → /readyz (initial list done)".into(), secs(c.readyz)],
        vec![
            format!("start → all {} keys in etcd", size.pods),
            secs(c.all_keys),
        ],
        vec![
            format!(
                "start → all {} registrations Ready=True/Published",
                size.registrations
            ),
            secs(c.all_statuses),
        ],
    ];
    memory_rows(&mut rows, c.memory);
    rows.extend([
        vec!["etcd txns (revision delta)".into(), c.txns.to_string()],
        vec![
            "etcd txns / ops (operator metrics)".into(),
            format!("{} / {}", opt(c.txn_metric), opt(c.ops_metric)),
        ],
        vec!["etcd leases".into(), leases(&c.leases)],
        vec!["lease grants (operator metric)".into(), opt(c.lease_grants)],
        vec![
            "keys under the prefix (incl. `.owner`)".into(),
            c.etcd_keys.to_string(),
        ],
    ]);
    table(&["cold start", "value"], &rows)
}

fn warm_table(size: Size, w: &Warm) -> String {
    let mut rows = vec![
        vec!["SIGTERM → old process exited".into(), secs(w.shutdown)],
        vec!["new process start → /readyz".into(), secs(w.readyz)],
        vec![
            format!("new process start → all {} keys on its lease", size.pods),
            secs(w.reattached),
        ],
        vec![
            "SIGTERM → old lease gone from etcd".into(),
            secs(w.old_lease_gone),
        ],
        vec!["keys deleted (etcd watch)".into(), w.deletes.to_string()],
        vec![
            "registrations that left Ready/Published".into(),
            w.ready_lost.to_string(),
        ],
        vec![
            format!("registrations Ready at the end (of {})", size.registrations),
            w.ready.to_string(),
        ],
        vec!["etcd txns (revision delta)".into(), w.txns.to_string()],
    ];
    memory_rows(&mut rows, w.memory);
    rows.extend([
        vec!["etcd leases at the end".into(), leases(&w.leases)],
        vec![
            "keys under the prefix (incl. `.owner`)".into(),
            w.etcd_keys.to_string(),
        ],
    ]);
    table(&["warm restart", "value"], &rows)
}

/// One row per size: the cost curve.
fn summary_table(r: &Report) -> String {
    let base = r.baseline.rss_kib;
    let rows: Vec<Vec<String>> = r
        .runs
        .iter()
        .map(|run| {
            let (s, c) = (run.size, &run.cold);
            vec![
                format!("{} / {}", s.pods, s.registrations),
                format!(
                    "{} + {}",
                    secs(run.setup.registrations),
                    secs(run.setup.pods)
                ),
                secs(c.readyz),
                secs(c.all_keys),
                secs(c.all_statuses),
                c.txns.to_string(),
                c.leases.len().to_string(),
                mib(c.memory.peak_kib),
                mib(c.memory.rss_kib),
                format!(
                    "{} / {}",
                    per_pod(c.memory.peak_kib, base, s.pods),
                    per_pod(c.memory.rss_kib, base, s.pods)
                ),
            ]
        })
        .collect();
    table(
        &[
            "pods / registrations",
            "setup (regs + pods, not timed)",
            "→ /readyz",
            "→ all keys in etcd",
            "→ all Published",
            "txns",
            "leases",
            "peak RSS",
            "settled RSS",
            "RSS per pod above baseline (peak / settled)",
        ],
        &rows,
    )
}

/// The whole section.
pub fn markdown(r: &Report) -> String {
    let sizes: Vec<String> = r
        .runs
        .iter()
        .map(|run| format!("{}x{}", run.size.pods, run.size.registrations))
        .collect();
    let mut out = format!(
        "## Scale\n\n\
         `REGISTRAR_BENCH_SCALE={sizes} cargo bench --bench scale` — {when}, {versions}. \
         Everything (API server, both etcds, operator, bench) shares the machine. Each size runs \
         on a fresh world (control plane, Registrar's etcd).\n\n\
         Empty-cluster baseline (the operator ready with no registration and no pod, its RSS \
         still for 1 s): {base_rss} RSS, {base_peak} peak.\n\n\
         Setup, not timed: the ServiceRegistrations in up to 10 namespaces, every pod bound to \
         a Node that nothing manages and patched Running + Ready with its own 127.x.y.z address \
         (never dialed); pods are created and status-patched with {in_flight} requests in \
         flight. Cold start: the `registrar` release binary starts against an empty etcd \
         ({settings}); times run from its spawn to the instant an etcd watch on the prefix saw \
         the last key, and a ServiceRegistration watch the last registration Ready=True/Published \
         with all its endpoints. One etcd txn is one revision, and only the operator writes that \
         etcd; the cold start's revision delta includes the one txn that claims `<prefix>/.owner`, \
         which the operator's txn metric does not count. Warm restart: SIGTERM, then the same \
         binary again; deletions are counted by the same etcd watch until the old lease has run \
         out.\n\n",
        sizes = sizes.join(","),
        when = r.when,
        versions = r.versions,
        base_rss = mib(r.baseline.rss_kib),
        base_peak = mib(r.baseline.peak_kib),
        in_flight = r.in_flight,
        settings = r.settings,
    );
    out.push_str(&summary_table(r));
    for run in &r.runs {
        let s = run.size;
        out.push_str(&format!(
            "\n### {} pods in {} registrations ({} namespaces, {} pods each)\n\n",
            s.pods,
            s.registrations,
            s.namespaces(),
            s.per_registration()
        ));
        out.push_str(&cold_table(s, &run.cold));
        if let Some(w) = &run.warm {
            out.push('\n');
            out.push_str(&warm_table(s, w));
        }
        out.push_str(&format!(
            "\nThis size in all (setup included): {:.0} s.\n",
            run.total.as_secs_f64()
        ));
    }
    out.push_str(&format!("\nWhole run: {:.0} s.\n", r.total.as_secs_f64()));
    out
}
