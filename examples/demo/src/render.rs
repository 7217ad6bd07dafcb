//! Text views of the demo's state: a `kubectl get svcreg`-style table, an `etcdctl get --prefix`
//! listing and the traffic table (RPCs per backend). Pure functions, so they are unit-tested.

use std::time::Duration;

use registrar::crd::{READY_CONDITION, ServiceRegistration};

use crate::client::Counts;

/// Lays out `rows` in left-aligned columns separated by three spaces (like kubectl).
pub fn columns(rows: &[Vec<String>]) -> Vec<String> {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = widths[i].saturating_sub(c.chars().count());
                    format!("{c}{}", " ".repeat(pad))
                })
                .collect();
            cells.join("   ").trim_end().to_string()
        })
        .collect()
}

/// kubectl's short age format: `42s`, `3m12s`, `2h5m`, `4d`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d", s / 86400),
    }
}

/// `kubectl get svcreg -o wide`: NAME, SERVICE, READY, STATUS, AGE, TARGET.
pub fn svcreg_table(regs: &[ServiceRegistration], now_secs: i64) -> Vec<String> {
    let mut rows = vec![
        ["NAME", "SERVICE", "READY", "STATUS", "AGE", "TARGET"]
            .map(String::from)
            .to_vec(),
    ];
    for reg in regs {
        let status = reg.status.clone().unwrap_or_default();
        let reason = status
            .conditions
            .iter()
            .find(|c| c.type_ == READY_CONDITION)
            .map(|c| c.reason.clone())
            .unwrap_or_default();
        let created = reg
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(now_secs);
        rows.push(vec![
            reg.metadata.name.clone().unwrap_or_default(),
            status.service.unwrap_or_default(),
            status.ready_endpoints.to_string(),
            reason,
            age(Duration::from_secs(
                u64::try_from(now_secs - created).unwrap_or(0),
            )),
            status.target.unwrap_or_default(),
        ]);
    }
    columns(&rows)
}

/// `etcdctl get --prefix`, one `key  value` line per key.
pub fn etcd_listing(kvs: &[(String, String)]) -> Vec<String> {
    if kvs.is_empty() {
        return vec!["(no keys)".to_string()];
    }
    let width = kvs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    kvs.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}"))
        .collect()
}

/// One backend in the traffic table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The pod (also the backend name its replies carry).
    pub pod: String,
    /// `ip:port`.
    pub addr: String,
    /// Its zone, as the client's balancer has it from the endpoint's metadata (`-`: none).
    pub zone: String,
    /// The server's state (serving, draining, stopped).
    pub server: String,
    /// The backend's state in the client's balancer (`Balancer::snapshot()`: READY,
    /// CONNECTING, UNHEALTHY, EJECTED, ...; `-` when the client does not know it).
    pub client: String,
}

/// A bar of `width` cells for `n` out of `max`.
pub fn bar(n: u64, max: u64, width: usize) -> String {
    if max == 0 || n == 0 {
        return String::new();
    }
    let cells = ((n as f64 / max as f64) * width as f64).ceil() as usize;
    "█".repeat(cells.clamp(1, width))
}

/// The traffic table: a heading, then POD, ADDRESS, ZONE, SERVER, CLIENT, RPCS and a bar per
/// backend.
/// Backends that answered but are not in `rows` any more are listed as `gone`.
pub fn traffic_table(
    heading: &str,
    rows: &[Row],
    counts: &Counts,
    total_failures: u64,
) -> Vec<String> {
    let mut rows = rows.to_vec();
    for pod in counts.by_backend.keys() {
        if !rows.iter().any(|r| &r.pod == pod) {
            rows.push(Row {
                pod: pod.clone(),
                addr: String::new(),
                zone: "-".into(),
                server: "gone".into(),
                client: "-".into(),
            });
        }
    }
    let max = counts.by_backend.values().copied().max().unwrap_or(0);
    let mut table = vec![
        ["POD", "ADDRESS", "ZONE", "SERVER", "CLIENT", "RPCS", ""]
            .map(String::from)
            .to_vec(),
    ];
    for r in &rows {
        let n = counts.by_backend.get(&r.pod).copied().unwrap_or(0);
        table.push(vec![
            r.pod.clone(),
            r.addr.clone(),
            r.zone.clone(),
            r.server.clone(),
            r.client.clone(),
            format!("{n:>6}"),
            bar(n, max, 20),
        ]);
    }
    let mut out = vec![
        String::new(),
        format!(
            "  {heading} — {} answered, {} failed (run total {})",
            counts.ok(),
            counts.failures,
            total_failures
        ),
    ];
    out.extend(columns(&table).into_iter().map(|l| format!("  {l}")));
    out
}

/// The traffic as one line: `heading: N ok, F failed | pod=n pod=n ...`.
pub fn traffic_summary(heading: &str, counts: &Counts) -> String {
    let per: Vec<String> = counts
        .by_backend
        .iter()
        .map(|(pod, n)| format!("{pod}={n}"))
        .collect();
    let line = format!("[{heading}] {} ok, {} failed", counts.ok(), counts.failures);
    if per.is_empty() {
        line
    } else {
        format!("{line} | {}", per.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn columns_align_and_trim() {
        let rows = vec![
            vec!["A".to_string(), "BB".to_string(), "C".to_string()],
            vec!["long".to_string(), "x".to_string(), String::new()],
        ];
        assert_eq!(columns(&rows), vec!["A      BB   C", "long   x"]);
    }

    #[test]
    fn ages_look_like_kubectl() {
        assert_eq!(age(Duration::from_secs(5)), "5s");
        assert_eq!(age(Duration::from_secs(150)), "2m30s");
        assert_eq!(age(Duration::from_secs(7260)), "2h1m");
        assert_eq!(age(Duration::from_secs(200_000)), "2d");
    }

    #[test]
    fn svcreg_table_shows_status_columns() {
        let reg: ServiceRegistration = serde_json::from_value(serde_json::json!({
            "apiVersion": "registrar.dev/v1alpha1", "kind": "ServiceRegistration",
            "metadata": {"name": "greeter", "namespace": "demo", "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"selector": {"matchLabels": {"app": "greeter"}}, "port": "grpc"},
            "status": {"service": "greeter", "target": "registrar/demo/greeter", "readyEndpoints": 3,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Published", "message": "",
                                "lastTransitionTime": "2025-01-01T00:00:00Z"}]}
        }))
        .unwrap();
        let now = 1_735_689_600 + 42; // 2025-01-01T00:00:42Z
        let t = svcreg_table(&[reg], now);
        assert_eq!(t[0], "NAME      SERVICE   READY   STATUS      AGE   TARGET");
        assert_eq!(
            t[1],
            "greeter   greeter   3       Published   42s   registrar/demo/greeter"
        );
    }

    #[test]
    fn traffic_table_lists_every_backend_that_answered() {
        let counts = Counts {
            by_backend: BTreeMap::from([("p1".to_string(), 10), ("old".to_string(), 5)]),
            failures: 0,
            errors: vec![],
        };
        let rows = vec![
            Row {
                pod: "p1".into(),
                addr: "127.1.0.2:50051".into(),
                zone: "zone-a".into(),
                server: "serving".into(),
                client: "READY".into(),
            },
            Row {
                pod: "p2".into(),
                addr: "127.1.0.3:50051".into(),
                zone: "zone-b".into(),
                server: "serving".into(),
                client: "CONNECTING".into(),
            },
        ];
        let t = traffic_table("phase", &rows, &counts, 0);
        assert!(
            t[1].contains("15 answered, 0 failed (run total 0)"),
            "{t:?}"
        );
        let p1 = t.iter().find(|l| l.contains("p1")).unwrap();
        assert!(p1.contains("10") && p1.contains(&"█".repeat(20)), "{p1}");
        assert!(p1.contains("zone-a"), "{p1}");
        let p2 = t.iter().find(|l| l.contains("p2")).unwrap();
        assert!(p2.contains(" 0") && !p2.contains('█'), "{p2}");
        let old = t.iter().find(|l| l.contains("old")).unwrap();
        assert!(old.contains("gone") && old.contains('5'), "{old}");
        assert_eq!(
            traffic_summary("phase", &counts),
            "[phase] 15 ok, 0 failed | old=5 p1=10"
        );
        assert_eq!(
            traffic_summary("phase", &Counts::default()),
            "[phase] 0 ok, 0 failed"
        );
    }

    #[test]
    fn bars_scale_and_show_small_counts() {
        assert_eq!(bar(0, 10, 10), "");
        assert_eq!(bar(1, 1000, 10), "█");
        assert_eq!(bar(5, 10, 10), "█████");
        assert_eq!(bar(10, 10, 10).chars().count(), 10);
    }
}
