//! Printing an inspect [`Report`]: an aligned table (one line per row, the values of etcd
//! after it) or JSON.

use super::Report;
use super::verdict::Row;

/// The report as pretty JSON (the shape is documented in the README), ending in a newline.
pub fn json(report: &Report) -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    Ok(text)
}

const HEADER: [&str; 14] = [
    "POD",
    "NODE",
    "ZONE",
    "IP",
    "PHASE",
    "READY",
    "TERMINATING",
    "PORT",
    "KEY",
    "LEASE",
    "TTL",
    "MOD-REV",
    "VERDICT",
    "DETAIL",
];

/// The report as a table: a header with the target and the claim, one line per row, then the
/// values etcd holds (and the wanted ones where they differ).
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    if let Some(reg) = &report.registration {
        out.push_str(&format!("registration: {reg}\n"));
    }
    out.push_str(&format!("target:       {}\n", report.target));
    let owner = &report.owner;
    out.push_str(&format!(
        "owner:        {} = {} ({})\n",
        owner.key,
        owner.cluster.as_deref().unwrap_or("<none>"),
        owner.claim
    ));
    out.push_str(&format!("revision:     {}\n\n", report.revision));
    let lines: Vec<[String; 14]> = report.rows.iter().map(cells).collect();
    let mut widths = HEADER.map(str::len);
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut push_line = |cells: &[String]| {
        let last = cells.len() - 1;
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_line(&HEADER.map(String::from));
    for line in &lines {
        push_line(line);
    }
    if report.rows.is_empty() {
        out.push_str("(no selected pod and no key in etcd)\n");
    }
    let values: Vec<String> = report
        .rows
        .iter()
        .filter_map(|row| {
            let key = row.key.as_deref()?;
            let mut text = String::new();
            if let Some(held) = &row.etcd {
                text.push_str(&format!("{key}\n  etcd: {}\n", held.value));
            }
            if let Some(want) = &row.want
                && row.etcd.as_ref().map(|e| &e.value) != Some(want)
            {
                if text.is_empty() {
                    text.push_str(&format!("{key}\n"));
                }
                text.push_str(&format!("  want: {want}\n"));
            }
            (!text.is_empty()).then_some(text)
        })
        .collect();
    if !values.is_empty() {
        out.push_str("\nvalues:\n");
        for v in values {
            out.push_str(&v);
        }
    }
    out
}

fn cells(row: &Row) -> [String; 14] {
    let dash = || "-".to_string();
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let (name, node, zone, ip, phase, ready, terminating, port) = match &row.pod {
        Some(p) => (
            p.name.clone(),
            p.node.clone().unwrap_or_else(dash),
            p.zone.clone().unwrap_or_else(dash),
            p.ip.clone().unwrap_or_else(dash),
            p.phase.clone().unwrap_or_else(dash),
            yes_no(p.ready),
            yes_no(p.terminating),
            p.port
                .map_or_else(|| "missing".to_string(), |n| n.to_string()),
        ),
        None => (
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
            dash(),
        ),
    };
    let (lease, ttl, rev) = match &row.etcd {
        Some(e) => (
            if e.lease == 0 {
                dash()
            } else {
                format!("{:x}", e.lease)
            },
            e.ttl.map_or_else(dash, |t| {
                if t < 0 {
                    "expired".to_string()
                } else {
                    format!("{t}s")
                }
            }),
            e.mod_revision.to_string(),
        ),
        None => (dash(), dash(), dash()),
    };
    [
        name,
        node,
        zone,
        ip,
        phase,
        ready,
        terminating,
        port,
        row.key.clone().unwrap_or_else(dash),
        lease,
        ttl,
        rev,
        row.verdict.to_string(),
        if row.detail.is_empty() {
            dash()
        } else {
            row.detail.clone()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::Owner;
    use crate::inspect::verdict::{EtcdEntry, PodFacts, Verdict};

    fn report() -> Report {
        Report {
            registration: Some("shop/greeter".into()),
            target: "registrar/shop/greeter".into(),
            owner: Owner {
                key: "registrar/.owner".into(),
                cluster: Some("a".into()),
                this_cluster: Some("a".into()),
                claim: "ours",
            },
            revision: 9,
            rows: vec![Row {
                pod: Some(PodFacts {
                    name: "p1".into(),
                    node: Some("n1".into()),
                    zone: Some("z1".into()),
                    ip: Some("127.1.0.1".into()),
                    phase: Some("Running".into()),
                    ready: true,
                    terminating: false,
                    port: Some(50051),
                    port_error: None,
                }),
                key: Some("registrar/shop/greeter/127.1.0.1:50051".into()),
                want: Some("v".into()),
                etcd: Some(EtcdEntry {
                    value: "v".into(),
                    lease: 255,
                    ttl: Some(20),
                    mod_revision: 4,
                }),
                verdict: Verdict::Published,
                detail: String::new(),
            }],
        }
    }

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    /// The JSON shape is documented in the README: changing it is a breaking change.
    #[test]
    fn the_json_shape_is_stable() {
        let v: serde_json::Value = serde_json::from_str(&json(&report()).unwrap()).unwrap();
        assert_eq!(
            keys(&v),
            ["owner", "registration", "revision", "rows", "target"]
        );
        assert_eq!(
            keys(&v["owner"]),
            ["claim", "cluster", "key", "thisCluster"]
        );
        let row = &v["rows"][0];
        assert_eq!(
            keys(row),
            ["detail", "etcd", "key", "pod", "verdict", "want"]
        );
        assert_eq!(
            keys(&row["pod"]),
            [
                "ip",
                "name",
                "node",
                "phase",
                "port",
                "portError",
                "ready",
                "terminating",
                "zone"
            ]
        );
        assert_eq!(keys(&row["etcd"]), ["lease", "modRevision", "ttl", "value"]);
        assert_eq!(row["verdict"], "published");
    }

    #[test]
    fn the_table_has_one_line_per_row_and_the_lease_in_hex() {
        let text = table(&report());
        let lines: Vec<&str> = text.lines().collect();
        let header = lines.iter().position(|l| l.starts_with("POD")).unwrap();
        assert!(lines[header + 1].starts_with("p1 "), "{text}");
        assert!(lines[header + 1].contains(" ff "), "{text}");
        assert!(lines[header + 1].contains(" published"), "{text}");
        assert!(
            text.contains("owner:        registrar/.owner = a (ours)"),
            "{text}"
        );
    }
}
