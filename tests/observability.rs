//! The chart's Grafana dashboard (a ConfigMap) and PrometheusRule: off by default; when on,
//! the dashboard is JSON whose every panel has a datasource and queries, every alert has an
//! expression, a severity and runbook text, and every metric they name is in the `/metrics`
//! output of a running operator (scraped here). The two gauges the alerts added
//! (`registrar_registrations_not_ready`, `registrar_etcd_unavailable`) follow reality.
//!
//! Every alert expression and dashboard query is parsed by the Prometheus parser itself
//! (`github.com/prometheus/prometheus/promql/parser`, the Go module in `tests/promql`, built with
//! the machine's Go into cargo's target dir and rebuilt only when its sources change); broken
//! expressions that pass a bracket check are shown to be rejected by it.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use registrar_testenv::workspace_root;
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

/// Builds (once per source version) the PromQL parser of `tests/promql`.
fn promql_binary() -> PathBuf {
    let started = Instant::now();
    let built = registrar_testenv::go_build(
        &workspace_root().join("tests/promql"),
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "promql",
    )
    .unwrap_or_else(|e| panic!("building tests/promql: {e:#}"));
    println!("promql parser ready in {:?}", started.elapsed());
    built
}

/// Parses each expression with the Prometheus parser: `Ok(value type)` or `Err(parse error)`.
fn parse_promql(exprs: &[String]) -> Vec<Result<String, String>> {
    let mut child = Command::new(promql_binary())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for e in exprs {
        writeln!(stdin, "{}", Value::from(e.as_str())).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Result<String, String>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            if r["ok"] == true {
                Ok(r["type"].as_str().unwrap().to_string())
            } else {
                Err(r["error"].as_str().unwrap().to_string())
            }
        })
        .collect();
    assert_eq!(results.len(), exprs.len(), "one answer per expression");
    results
}

/// A dashboard query with its Grafana variables replaced as Grafana does before sending it:
/// `$__rate_interval`/`$__interval`/`$__range` by a duration, any other `$var`/`${var}` (used
/// in label matchers) by a regex.
fn interpolated(query: &str) -> String {
    let mut out = query
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h");
    while let Some(at) = out.find('$') {
        let rest = &out[at + 1..];
        let len = match rest.strip_prefix('{') {
            Some(r) => r.find('}').map_or(rest.len(), |e| e + 2),
            None => rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len()),
        };
        out.replace_range(at..at + 1 + len, ".*");
    }
    out
}

/// (where, expression) for every dashboard query (interpolated) and every alert expression.
fn expressions(docs: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let dashboard: Value =
        serde_json::from_str(cm["data"]["registrar.json"].as_str().unwrap()).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            out.push((
                format!("panel {:?} {}", panel["title"], t["refId"]),
                interpolated(t["expr"].as_str().unwrap()),
            ));
        }
    }
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    for g in rule["spec"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            out.push((
                format!("alert {}", r["alert"]),
                r["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[test]
fn every_alert_and_dashboard_expression_parses_with_the_prometheus_parser() {
    let exprs = expressions(&rendered(true));
    let texts: Vec<String> = exprs.iter().map(|(_, e)| e.clone()).collect();
    let results = parse_promql(&texts);
    let mut failures = Vec::new();
    for ((at, expr), result) in exprs.iter().zip(&results) {
        match result {
            // Alerts and graphs need instant vectors (or a scalar for a stat).
            Ok(t) if t == "vector" || t == "scalar" => {}
            Ok(t) => failures.push(format!("{at}: {expr} is a {t}")),
            Err(e) => failures.push(format!("{at}: {expr}: {e}")),
        }
    }
    println!(
        "{} expressions parsed ({} alerts): {:?}",
        results.len(),
        exprs
            .iter()
            .filter(|(at, _)| at.starts_with("alert"))
            .count(),
        results
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(exprs.len() >= 20, "{}", exprs.len());

    // The check can fail: these pass the bracket check but are not PromQL.
    let broken = [
        // rate() of an instant vector
        r#"sum(rate(registrar_errors_total{namespace="registrar-system"})) > 0"#,
        // an unknown function
        r#"histogram_quantil(0.99, sum by (le) (rate(registrar_propagation_latency_seconds_bucket[5m]))) > 5"#,
        // a dangling operator
        r#"max(registrar_leader{namespace="registrar-system"}) <"#,
        // a bad duration
        r#"increase(registrar_etcd_lease_grants_total[5 m])"#,
        // a Grafana variable left in a range
        "rate(registrar_reconciles_total[$window])",
    ];
    let broken: Vec<String> = broken.iter().map(|b| b.to_string()).collect();
    let results = parse_promql(&broken);
    for (expr, result) in broken.iter().zip(&results) {
        assert!(balanced(expr), "{expr}");
        let err = result.as_ref().expect_err(expr);
        println!("rejected {expr}\n  -> {err}");
    }
}

#[test]
fn grafana_variables_are_interpolated() {
    assert_eq!(
        interpolated(r#"rate(x{namespace=~"$namespace", a="${b}"}[$__rate_interval])"#),
        r#"rate(x{namespace=~".*", a=".*"}[1m])"#
    );
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
    // The per-target gauge: greeter's one endpoint, idle's target at 0.
    let target = |service: &str| {
        format!(
            r#"registrar_target_endpoints{{target_namespace="{}",target_service="{service}"}}"#,
            g.ns
        )
    };
    let greeter = op
        .wait_metric(&target("greeter"), |v| v == 1.0)
        .await
        .unwrap();
    let idle = op.wait_metric(&target("idle"), |v| v == 0.0).await.unwrap();
    println!("registrar_target_endpoints: greeter {greeter}, idle {idle}");
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
