//! The chart's Grafana dashboard (a ConfigMap) and PrometheusRule: off by default; when on,
//! the dashboard is JSON whose every panel has a datasource and queries, every alert has an
//! expression, a severity and runbook text, and every metric they name is in the `/metrics`
//! output of a running operator (scraped here). The two gauges the alerts added
//! (`registrar_registrations_not_ready`, `registrar_etcd_unavailable`) follow reality.
//!
//! The expressions are checked for balanced brackets and quotes only; they are not parsed with
//! the Prometheus parser.

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use support::*;

const ALERTS: [&str; 6] = [
    "RegistrarEtcdUnreachable",
    "RegistrarEtcdKeepaliveFailures",
    "RegistrarLeaseRegranted",
    "RegistrarPropagationSlow",
    "RegistrarNoLeader",
    "RegistrarRegistrationNotReady",
];

fn rendered(on: bool) -> Vec<Value> {
    let args: &[&str] = if on {
        &[
            "--set",
            "grafanaDashboard.enabled=true",
            "--set",
            "prometheusRule.enabled=true",
        ]
    } else {
        &[]
    };
    helm_template("registrar", "registrar-system", args).unwrap()
}

/// Every `registrar_*` metric name in `text`.
fn metric_names(text: &str, into: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(i) = text[at..].find("registrar_") {
        let start = at + i;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            into.insert(text[start..end].to_string());
        }
        at = end;
    }
}

/// Brackets balanced and quotes closed (outside quotes).
fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    let mut quote: Option<char> = None;
    for c in expr.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty() && quote.is_none()
}

#[test]
fn dashboard_and_rules_are_off_by_default() {
    let docs = rendered(false);
    assert!(!docs.iter().any(|d| d["kind"] == "PrometheusRule"));
    assert!(!docs.iter().any(|d| d["kind"] == "ConfigMap"));
}

#[tokio::test]
async fn every_metric_of_the_dashboard_and_the_alerts_is_exported() {
    let docs = rendered(true);
    let mut names = BTreeSet::new();

    // The dashboard.
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the dashboard ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["registrar.json"].as_str().unwrap()).expect("JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"datasource"), "{variables:?}");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "duplicate id: {title}"
        );
        assert!(
            panel["datasource"]["uid"]
                .as_str()
                .is_some_and(|u| !u.is_empty()),
            "panel {title:?} has no datasource"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "panel {title:?}: empty query");
            assert!(balanced(expr), "panel {title:?}: unbalanced {expr}");
            metric_names(expr, &mut names);
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            metric_names(q, &mut names);
        }
    }

    // The rules.
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("the PrometheusRule");
    let rules: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let alerts: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(alerts, ALERTS.into_iter().collect());
    for r in &rules {
        let alert = r["alert"].as_str().unwrap();
        let expr = r["expr"].as_str().unwrap_or_default();
        assert!(balanced(expr), "{alert}: unbalanced {expr}");
        assert!(
            expr.contains("namespace=\"registrar-system\""),
            "{alert}: {expr}"
        );
        assert!(r["labels"]["severity"].is_string(), "{alert}: no severity");
        for a in ["summary", "description", "runbook"] {
            assert!(
                r["annotations"][a].as_str().is_some_and(|t| t.len() > 10),
                "{alert}: no {a}"
            );
        }
        metric_names(expr, &mut names);
    }

    // A running operator exports every one of them.
    let g = Ground::new().await.unwrap();
    let (op, _) = g.greeter_with(&[("p1", "127.0.0.161")]).await.unwrap();
    wait_reason(&g.client, &g.ns, "greeter", "Published")
        .await
        .unwrap();
    // A registration whose pods never turn Ready.
    create_reg(
        &g.client,
        &g.ns,
        "idle",
        json!({"selector": {"matchLabels": {"app": "none"}}, "port": 50051}),
    )
    .await
    .unwrap();
    let not_ready = op
        .wait_metric("registrar_registrations_not_ready", |v| v == 1.0)
        .await
        .unwrap();
    let text = op.metrics().await.unwrap();
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_string))
        .collect();
    println!(
        "{} metric names in the dashboard and the rules: {names:?}; {} series names exported; registrations_not_ready = {not_ready}",
        names.len(),
        exported.len()
    );
    let missing: Vec<&String> = names.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "not in /metrics: {missing:?}\n{text}");
    assert!(names.len() >= 10, "{names:?}");
    assert_eq!(metric(&text, "registrar_etcd_unavailable"), Some(0.0));

    // etcd down: the gauge the etcd alert uses turns 1.
    let mut g = g;
    g.etcd.stop().await.unwrap();
    let down = op
        .wait_metric("registrar_etcd_unavailable", |v| v == 1.0)
        .await
        .unwrap();
    println!("registrar_etcd_unavailable with etcd stopped: {down}");
    g.etcd.restart().await.unwrap();
    op.wait_metric("registrar_etcd_unavailable", |v| v == 0.0)
        .await
        .unwrap();
}
