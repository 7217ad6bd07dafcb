//! Reading one sample out of a Prometheus text exposition (what `/metrics` serves), for tests
//! and benchmarks that check counters and gauges.

/// The value of the sample `series` in a Prometheus text exposition, if present. `series` is
/// the metric name with its labels exactly as printed, e.g.
/// `registrar_etcd_txns_total{result="ok"}`; comment lines (`# HELP`, `# TYPE`) are skipped
/// and a trailing timestamp is ignored.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::sample;

    const TEXT: &str = "# HELP a_total A.\n# TYPE a_total counter\na_total{kind=\"x\"} 3\n\
        a_total{kind=\"xy\"} 4 1700000000\nb 0.5\n";

    #[test]
    fn finds_exact_series_only() {
        assert_eq!(sample(TEXT, r#"a_total{kind="x"}"#), Some(3.0));
        assert_eq!(sample(TEXT, r#"a_total{kind="xy"}"#), Some(4.0));
        assert_eq!(sample(TEXT, "b"), Some(0.5));
        assert_eq!(sample(TEXT, "a_total"), None);
        assert_eq!(sample(TEXT, "# TYPE"), None);
    }
}
