//! The scale benchmark's Markdown: what was set up, the cold start and the warm restart.

use std::time::Duration;

use crate::common::operator::Memory;
use crate::common::report::table;
use crate::layout::Size;
use crate::measure::{Cold, Warm};
use crate::setup::SetupTimes;
use crate::world::LeaseInfo;

/// Everything one run measured.
pub struct Report {
    pub size: Size,
    pub when: String,
    pub versions: String,
    /// Operator settings that matter here, e.g. "50 ms coalescing, 30 s lease TTL".
    pub settings: String,
    pub setup: SetupTimes,
    pub cold: Cold,
    pub warm: Option<Warm>,
    pub total: Duration,
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.0}"))
}

fn leases(l: &[LeaseInfo]) -> String {
    let keys: Vec<String> = l.iter().map(|l| l.keys.to_string()).collect();
    format!("{} (keys attached: {})", l.len(), keys.join(", "))
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

/// The whole section.
pub fn markdown(r: &Report) -> String {
    let s = r.size;
    let mut out = format!(
        "## Scale: {pods} pods in {regs} registrations\n\n\
         `cargo bench --bench scale` (`REGISTRAR_BENCH_SCALE={pods}x{regs}`) — {when}, {versions}. \
         Everything (API server, both etcds, operator, bench) shares the machine.\n\n\
         Setup, not timed: {regs} ServiceRegistrations in {ns} namespaces, {per} pods each, every \
         pod bound to a Node that nothing manages and patched Running + Ready with its own \
         127.10.x.y address (never dialed); registrations created in {reg_t}, pods (create + status \
         patch, {in_flight} requests in flight) in {pod_t}. \
         Cold start: the `registrar` release binary starts against an empty etcd ({settings}); times run from its spawn to the instant an etcd watch on \
         the prefix saw the last key, and a ServiceRegistration watch the last registration \
         Ready=True/Published with all its endpoints. One etcd txn is one revision, and only the \
         operator writes that etcd; the cold start's revision delta includes the one txn that \
         claims `<prefix>/.owner`, which the operator's txn metric does not count. Warm restart: SIGTERM, then the same binary again; deletions are \
         counted by the same etcd watch until the old lease has run out.\n\n",
        pods = s.pods,
        regs = s.registrations,
        ns = s.namespaces(),
        per = s.per_registration(),
        when = r.when,
        versions = r.versions,
        settings = r.settings,
        reg_t = secs(r.setup.registrations),
        pod_t = secs(r.setup.pods),
        in_flight = crate::setup::IN_FLIGHT,
    );
    out.push_str("### Cold start\n\n");
    out.push_str(&cold_table(s, &r.cold));
    if let Some(w) = &r.warm {
        out.push_str("\n### Warm restart at scale\n\n");
        out.push_str(&warm_table(s, w));
    }
    out.push_str(&format!(
        "\nWhole run (setup included): {:.0} s.\n",
        r.total.as_secs_f64()
    ));
    out
}
