//! What the resolver's plain (non-criterion) benches share: their environment knobs and the
//! machine's load, printed next to every figure.

/// The comma-separated sizes in `var`, else `default` (unparsable entries are skipped).
pub fn sizes(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// The number in `var`, else `default`.
pub fn number<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// The load averages (`/proc/loadavg`), empty where there are none.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}
