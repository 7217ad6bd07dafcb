//! The etcd writer's plan for one changed key, in process (no etcd): the full plan over the
//! whole desired and known maps (`plan::plan`, what every flush ran before) against the
//! incremental one (`plan::Planner`, the desired state's diff against the one last written
//! plus the keys changed by someone else), at 10,000 and 100,000 keys in line with etcd.
//!
//! `cargo bench --bench plan` (`REGISTRAR_BENCH_PLAN_KEYS=10000,100000` by default). Each
//! round derives the next desired state from the last one by changing one key (as the core
//! does), so the two share their structure; a last row rebuilds the desired state from
//! scratch instead (no shared structure: the diff walks both maps). Prints a Markdown table
//! and writes it to `<target>/bench/plan.md` (or `$REGISTRAR_BENCH_OUT`). Under
//! `cargo test --benches` it does nothing.

#[path = "common/report.rs"]
#[allow(dead_code)]
mod report;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use registrar::etcd::DesiredKeys;
use registrar::etcd::plan::{self, KnownKv, Op, Planner};

const P: &str = "registrar";
const LEASE: i64 = 7;

fn key(i: usize) -> String {
    format!(
        "{P}/ns{}/svc{}/192.0.{}.{}:{}",
        i % 50,
        i / 10,
        (i / 254) % 256,
        i % 254 + 1,
        50051 + i / 65024
    )
}

fn value(i: usize, v: usize) -> String {
    format!(
        r#"{{"Op":0,"Addr":"192.0.{}.{}:50051","Metadata":{{"v":{v}}}}}"#,
        (i / 254) % 256,
        i % 254 + 1
    )
}

struct Timing {
    samples: Vec<Duration>,
}

impl Timing {
    fn quantile(&self, q: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s[((s.len() - 1) as f64 * q).round() as usize]
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

/// Plans `rounds` single-key changes at `n` keys: full, incremental, incremental against a
/// rebuilt map. Each plan must be the one put.
fn run(n: usize, rounds: usize) -> Vec<Vec<String>> {
    let base: DesiredKeys = (0..n).map(|i| (key(i), value(i, 0))).collect();
    let known: BTreeMap<String, KnownKv> = base
        .iter()
        .map(|(k, v)| {
            let kv = KnownKv {
                value: v.clone(),
                lease: LEASE,
            };
            (k.clone(), kv)
        })
        .collect();
    let mut planner = Planner::new();
    let first = planner.plan(P, &known, &base, true, LEASE);
    assert!(first.ops.is_empty() && first.candidates.is_none());
    planner.committed(&base, true, LEASE);

    let mut full = Timing { samples: vec![] };
    let mut incremental = Timing { samples: vec![] };
    let mut rebuilt = Timing { samples: vec![] };
    for r in 0..rounds {
        let i = (r * 7919) % n;
        let mut next = base.clone();
        next.insert(key(i), value(i, r + 1));
        let want = [Op::Put {
            key: key(i),
            value: value(i, r + 1),
        }];

        let t = Instant::now();
        let ops = plan::plan(P, &known, &next, true, LEASE);
        full.samples.push(t.elapsed());
        assert_eq!(ops, want);

        let t = Instant::now();
        let planned = planner.plan(P, &known, &next, true, LEASE);
        incremental.samples.push(t.elapsed());
        assert_eq!(
            (planned.ops.as_slice(), planned.candidates),
            (&want[..], Some(1))
        );
        // back to the same baseline for the next round
        planner.committed(&base, true, LEASE);

        if r % 4 == 0 {
            let copy: DesiredKeys = next.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let t = Instant::now();
            let planned = planner.plan(P, &known, &copy, true, LEASE);
            rebuilt.samples.push(t.elapsed());
            assert_eq!(planned.ops, want);
            planner.committed(&base, true, LEASE);
        }
    }
    let row = |what: &str, t: &Timing| {
        vec![
            n.to_string(),
            what.to_string(),
            t.samples.len().to_string(),
            us(t.quantile(0.5)),
            us(t.quantile(0.99)),
            format!(
                "{:.0}×",
                full.quantile(0.5).as_secs_f64() / t.quantile(0.5).as_secs_f64()
            ),
        ]
    };
    vec![
        row("full plan (before)", &full),
        row("incremental, derived desired state", &incremental),
        row("incremental, desired state rebuilt", &rebuilt),
    ]
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let sizes: Vec<usize> = std::env::var("REGISTRAR_BENCH_PLAN_KEYS")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let load_start = loadavg();
    let mut rows = Vec::new();
    for n in sizes {
        rows.extend(run(n.max(1), 200));
    }
    let table = report::table(
        &[
            "keys",
            "plan for 1 changed key",
            "rounds",
            "p50",
            "p99",
            "full p50 ÷ this p50",
        ],
        &rows,
    );
    let md = format!(
        "## The etcd writer's plan for one changed key\n\n`cargo bench --bench plan`, {}, \
         load average (1/5/15 min) {load_start} at the start, {} at the end.\n\n{table}",
        report::when_and_where(),
        loadavg()
    );
    println!("{md}");
    let path = report::write("plan.md", &md)?;
    println!("written to {}", path.display());
    Ok(())
}
