//! Markdown output of the benchmarks: aligned tables (readable on a terminal too), the
//! figures' formats they share, the machine's load, and where the report file goes.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

/// An aligned Markdown table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from("|");
        for (cell, w) in cells.zip(&widths) {
            let pad = w - cell.chars().count();
            let _ = write!(s, " {cell}{} |", " ".repeat(pad));
        }
        s.push('\n');
        s
    };
    let mut out = line(&mut headers.iter().copied());
    out.push('|');
    for w in &widths {
        let _ = write!(out, "{}|", "-".repeat(w + 2));
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// `$REGISTRAR_BENCH_OUT`, else `<target>/bench/<file>` (the bench binary lives in
/// `<target>/<profile>/deps/`).
pub fn out_path(file: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("REGISTRAR_BENCH_OUT") {
        return PathBuf::from(p);
    }
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench").join(file)
}

/// Writes `markdown` to [`out_path`]`(file)`, creating the directory; returns the path.
pub fn write(file: &str, markdown: &str) -> Result<PathBuf> {
    let path = out_path(file);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, markdown).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The time and machine line of a report: "2026-01-01 12:00 UTC, 2 CPUs".
pub fn when_and_where() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC");
    format!("{date}, {cpus} CPUs")
}

/// A duration: milliseconds below a second, else seconds with two decimals.
pub fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The 1/5/15-minute load averages, from `/proc/loadavg`.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}
