//! The rate budget of the operator's Kubernetes writes (status patches, finalizers, Events),
//! shared by all of them: writes start no faster than a token bucket allows (`qps` sustained,
//! `burst` at once; client-go's QPS/burst), and after the API server
//! answers 429 Too Many Requests (priority and fairness rejected or timed out a request) every
//! write waits: 1 s, doubling up to 32 s while 429s continue, jittered, or longer when the answer
//! asks for it (`retryAfterSeconds`, capped at 32 s); a success ends the streak. Watches and lists do not take from the budget (they are long-running or rare).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// The first pause after a 429 (doubling while they continue).
pub const THROTTLE_PAUSE_INITIAL: Duration = Duration::from_secs(1);
/// The longest pause after a 429.
pub const THROTTLE_PAUSE_MAX: Duration = Duration::from_secs(32);

/// The limits of a [`WriteBudget`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteLimits {
    /// Sustained writes per second (> 0).
    pub qps: f64,
    /// Writes that may start at once after a quiet period (>= 1).
    pub burst: u32,
    /// Writes in flight at once, per kind: status patches; finalizers and Events (>= 1).
    pub in_flight: usize,
}

impl WriteLimits {
    /// Default sustained writes per second (`--kube-api-qps`).
    pub const DEFAULT_QPS: f64 = 500.0;
    /// Default writes allowed at once above the sustained rate (`--kube-api-burst`).
    pub const DEFAULT_BURST: u32 = 1000;
    /// Default writes in flight at once (`--kube-api-max-in-flight`).
    pub const DEFAULT_IN_FLIGHT: u32 = 16;
}

impl Default for WriteLimits {
    fn default() -> Self {
        WriteLimits {
            qps: Self::DEFAULT_QPS,
            burst: Self::DEFAULT_BURST,
            in_flight: Self::DEFAULT_IN_FLIGHT as usize,
        }
    }
}

/// The token bucket as a generic cell rate: `tat` is the theoretical arrival time of the next
/// write at the sustained rate; a write may start once `tat - tolerance` has passed.
struct Bucket {
    /// Time per token (1 / qps).
    interval: Duration,
    /// `(burst - 1) × interval`: how far ahead of the sustained rate a burst may run.
    tolerance: Duration,
    tat: Instant,
    /// No write starts before this instant (after a 429).
    paused_until: Option<Instant>,
    /// The pauses of a streak of 429s (`None` after a success).
    throttle: Option<Backoff>,
}

struct Inner {
    bucket: Mutex<Bucket>,
    metrics: Metrics,
}

/// See the module docs. Clones share the budget.
#[derive(Clone)]
pub struct WriteBudget {
    inner: Arc<Inner>,
}

impl WriteBudget {
    /// A budget with `limits` (clamped to their valid ranges), counting 429s in `metrics`.
    pub fn new(limits: WriteLimits, metrics: Metrics) -> Self {
        let qps = if limits.qps.is_finite() && limits.qps > 0.0 {
            limits.qps
        } else {
            WriteLimits::DEFAULT_QPS
        };
        let interval = Duration::from_secs_f64(1.0 / qps);
        let burst = limits.burst.max(1);
        WriteBudget {
            inner: Arc::new(Inner {
                bucket: Mutex::new(Bucket {
                    interval,
                    tolerance: interval.saturating_mul(burst - 1),
                    tat: Instant::now(),
                    paused_until: None,
                    throttle: None,
                }),
                metrics,
            }),
        }
    }

    fn bucket(&self) -> MutexGuard<'_, Bucket> {
        // A poisoned lock only means a panic elsewhere mid-update; the bucket stays usable.
        self.inner.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a token: the write may start now.
    pub async fn admit(&self) {
        loop {
            let at = self.reserve(Instant::now());
            tokio::time::sleep_until(at).await;
            // A 429 that came while this write waited pauses it too.
            let paused = self.bucket().paused_until.filter(|p| *p > Instant::now());
            if paused.is_none() {
                return;
            }
        }
    }

    /// Takes the next token: the instant the write may start.
    fn reserve(&self, now: Instant) -> Instant {
        let mut b = self.bucket();
        let earliest = b.paused_until.filter(|p| *p > now).unwrap_or(now);
        let start = b.tat.max(earliest);
        let at = start
            .checked_sub(b.tolerance)
            .map_or(earliest, |t| t.max(earliest));
        b.tat = start + b.interval;
        at
    }

    /// Records how a write ended: a 429 pauses every write (and is counted), a success ends a
    /// streak of 429s.
    pub fn outcome<T>(&self, result: &Result<T, kube::Error>) {
        match result {
            Err(kube::Error::Api(e)) if e.code == 429 => {
                let asked = e.details.as_ref().map(|d| d.retry_after_seconds);
                self.throttled(asked.map(|s| Duration::from_secs(u64::from(s))));
            }
            Ok(_) => {
                self.bucket().throttle = None;
            }
            Err(_) => {}
        }
    }

    /// The API server answered 429 (asking to wait `retry_after`, if it did): no write starts
    /// for a while, then writes resume at the sustained rate (no burst).
    pub fn throttled(&self, retry_after: Option<Duration>) {
        self.inner.metrics.kube_throttled();
        let now = Instant::now();
        let mut b = self.bucket();
        let pause = b
            .throttle
            .get_or_insert_with(|| Backoff::new(THROTTLE_PAUSE_INITIAL, THROTTLE_PAUSE_MAX))
            .next_delay()
            .max(retry_after.unwrap_or_default().min(THROTTLE_PAUSE_MAX));
        let until = now + pause;
        b.paused_until = Some(b.paused_until.map_or(until, |p| p.max(until)));
        b.tat = b.tat.max(until + b.tolerance);
        tracing::debug!(
            ?pause,
            "the API server answered 429; pausing Kubernetes writes"
        );
    }
}

#[cfg(test)]
mod tests;
