//! The API server's own count of the operator's status patches (`apiserver_request_total` for
//! PATCH on `serviceregistrations/status`, by code), sampled twice a second while the operator
//! starts cold: how many it sent, how fast, and how many were answered 429; and, from the same
//! metric, the other writes of a cold start: PATCHes of ServiceRegistrations themselves (the
//! finalizer) and Events created or patched.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often the API server's metrics are read.
const EVERY: Duration = Duration::from_millis(500);

/// One reading: (all status patches, 429 answers, other writes) at an instant.
#[derive(Clone, Copy, Debug)]
struct Reading {
    at: Instant,
    patches: f64,
    throttled: f64,
    others: Others,
}

/// The cold start's other writes, as the API server counts them (any code).
#[derive(Clone, Copy, Debug, Default)]
pub struct Others {
    /// PATCH of `serviceregistrations` (no subresource): finalizers.
    pub finalizer_patches: f64,
    /// POST or PATCH of `events` (either API group).
    pub events: f64,
}

/// What the samples show.
#[derive(Clone, Copy, Debug, Default)]
pub struct Patches {
    /// Status patches the API server answered (any code).
    pub total: f64,
    /// Of which 429 Too Many Requests.
    pub throttled: f64,
    /// From the first reading that counted a patch to the first that counted the last one.
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    /// Highest rate between two readings a second apart (patches/s).
    pub peak_rate: f64,
    /// The other writes over the same readings.
    pub others: Others,
    /// The counts of the other writes before the first reading.
    pub others_base: Others,
}

impl Patches {
    /// Mean patches/s between the first and the last reading that moved.
    pub fn mean_rate(&self) -> Option<f64> {
        let span = self
            .last?
            .checked_duration_since(self.first?)?
            .as_secs_f64();
        (span > 0.0).then(|| self.total / span)
    }
}

/// Sums `apiserver_request_total` over the series of status PATCHes of ServiceRegistrations:
/// (all codes, code 429), and the other writes.
fn parse(text: &str) -> (f64, f64, Others) {
    let (mut all, mut throttled, mut others) = (0.0, 0.0, Others::default());
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let patch = rest.contains(r#"verb="PATCH""#);
        let status = rest.contains(r#"subresource="status""#);
        if rest.contains(r#"resource="events""#) && (patch || rest.contains(r#"verb="POST""#)) {
            others.events += value;
        }
        if !(rest.contains(r#"resource="serviceregistrations""#) && patch) {
            continue;
        }
        if !status {
            others.finalizer_patches += value;
            continue;
        }
        all += value;
        if rest.contains(r#"code="429""#) {
            throttled += value;
        }
    }
    (all, throttled, others)
}

/// (status patches, 429s among them, the other writes) as the API server counts them now.
pub async fn read(client: &kube::Client) -> Result<(f64, f64, Others)> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    Ok(parse(&client.request_text(req).await?))
}

/// The running sampler.
pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<Vec<Reading>>>,
    base: (f64, f64, Others),
}

impl Sampler {
    /// Reads the counters now (the baseline) and then every [`EVERY`] until stopped.
    pub async fn start(client: kube::Client) -> Result<Sampler> {
        let base = read(&client).await?;
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                let (patches, throttled, others) = read(&client).await?;
                out.push(Reading {
                    at: Instant::now(),
                    patches,
                    throttled,
                    others,
                });
            }
            let (patches, throttled, others) = read(&client).await?;
            out.push(Reading {
                at: Instant::now(),
                patches,
                throttled,
                others,
            });
            Ok(out)
        });
        Ok(Sampler { stop, task, base })
    }

    /// Stops and sums up.
    pub async fn finish(self) -> Result<Patches> {
        let _ = self.stop.send(());
        let readings = self.task.await??;
        let (base_all, base_429, base_others) = self.base;
        let mut p = Patches::default();
        let Some(end) = readings.last() else {
            return Ok(p);
        };
        p.total = end.patches - base_all;
        p.throttled = end.throttled - base_429;
        p.others_base = base_others;
        p.others = Others {
            finalizer_patches: end.others.finalizer_patches - base_others.finalizer_patches,
            events: end.others.events - base_others.events,
        };
        p.first = readings.iter().find(|r| r.patches > base_all).map(|r| r.at);
        p.last = readings
            .iter()
            .find(|r| r.patches >= end.patches)
            .map(|r| r.at);
        let pairs = readings.iter().zip(readings.iter().skip(2));
        for (a, b) in pairs {
            let secs = b.at.duration_since(a.at).as_secs_f64();
            if secs > 0.0 {
                p.peak_rate = p.peak_rate.max((b.patches - a.patches) / secs);
            }
        }
        Ok(p)
    }
}
