//! The operator's CPU time and resident memory from `/proc/<pid>`: user + system time (fields
//! 14 and 15 of `stat`, in clock ticks) and `VmRSS`, and the slope of RSS samples over time.

use std::time::Duration;

use anyhow::{Context, Result};

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when it cannot be asked).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// CPU time (user + system) used by process `pid` so far.
pub fn cpu(pid: u32, ticks_per_second: f64) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let tick = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("{path}: field {} missing", i + 3))
    };
    Ok(Duration::from_secs_f64(
        (tick(11)? + tick(12)?) / ticks_per_second,
    ))
}

/// Least-squares slope of `(seconds, kib)` samples, in KiB per minute.
pub fn slope_kib_per_min(samples: &[(f64, u64)]) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let n = samples.len() as f64;
    let mean_t = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_m = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, m) in samples {
        num += (t - mean_t) * (*m as f64 - mean_m);
        den += (t - mean_t) * (t - mean_t);
    }
    (den > 0.0).then(|| num / den * 60.0)
}

/// CPU used by a process over a window: in all, mean and peak (over the tracker's ticks,
/// about a second apart) in cores; and the time its threads were runnable but waited for a
/// CPU (`/proc/<pid>/task/*/schedstat`, second field; threads that ended meanwhile are not
/// counted): a process that waits on a run queue about as long as it runs is short of CPU, not
/// of work.
#[derive(Clone, Debug)]
pub struct CpuUse {
    pub name: &'static str,
    pub total: Duration,
    pub mean_cores: f64,
    pub peak_cores: f64,
    pub runqueue_wait: Duration,
}

/// Run-queue wait of every thread of `pid` so far.
fn runqueue_wait(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Samples the CPU time of named processes at each [`CpuTracker::tick`].
pub struct CpuTracker {
    ticks: f64,
    procs: Vec<(&'static str, u32)>,
    start: (std::time::Instant, Vec<Duration>),
    last: (std::time::Instant, Vec<Duration>),
    peak: Vec<f64>,
    wait_start: Vec<Duration>,
}

impl CpuTracker {
    /// Starts counting now.
    pub fn start(procs: Vec<(&'static str, u32)>) -> Self {
        let ticks = clock_ticks();
        let now = (std::time::Instant::now(), read_all(&procs, ticks, &[]));
        CpuTracker {
            wait_start: procs.iter().map(|(_, p)| runqueue_wait(*p)).collect(),
            ticks,
            peak: vec![0.0; procs.len()],
            procs,
            start: now.clone(),
            last: now,
        }
    }

    /// Reads every process now (a process that is gone keeps its last figure).
    pub fn tick(&mut self) {
        let at = std::time::Instant::now();
        let cpu = read_all(&self.procs, self.ticks, &self.last.1);
        let secs = at.duration_since(self.last.0).as_secs_f64();
        if secs >= 0.5 {
            for (i, (now, before)) in cpu.iter().zip(&self.last.1).enumerate() {
                let cores = now.saturating_sub(*before).as_secs_f64() / secs;
                self.peak[i] = self.peak[i].max(cores);
            }
            self.last = (at, cpu);
        }
    }

    /// The use of each process since the start.
    pub fn finish(mut self) -> Vec<CpuUse> {
        self.tick();
        let secs = self.last.0.duration_since(self.start.0).as_secs_f64();
        self.procs
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let total = self.last.1[i].saturating_sub(self.start.1[i]);
                CpuUse {
                    name,
                    total,
                    mean_cores: total.as_secs_f64() / secs.max(1e-9),
                    peak_cores: self.peak[i],
                    runqueue_wait: runqueue_wait(self.procs[i].1)
                        .saturating_sub(self.wait_start[i]),
                }
            })
            .collect()
    }
}

fn read_all(procs: &[(&'static str, u32)], ticks: f64, last: &[Duration]) -> Vec<Duration> {
    procs
        .iter()
        .enumerate()
        .map(|(i, (_, pid))| {
            cpu(*pid, ticks).unwrap_or_else(|_| last.get(i).copied().unwrap_or_default())
        })
        .collect()
}
