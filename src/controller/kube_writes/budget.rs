//! The budget of the operator's Kubernetes writes (status patches, finalizers, Events), shared
//! by all of them:
//!
//! - **Seats** ([`WriteBudget::seat`]): at most `2 × in_flight` writes are in flight at once
//!   (each holds one seat of the API server's priority level while it runs). Which write gets a
//!   free seat goes by [`Class`]: a status patch first; a finalizer patch when no status patch
//!   waits for one, or when no finalizer patch is in flight (so finalizers never starve: one
//!   always moves); an Event only when neither waits, at most `in_flight / 4` (at least one)
//!   at once. "Waits" counts the status patches the status queue has ready but not yet in
//!   flight ([`WriteBudget::set_status_backlog`]), not only those blocked on a seat: a status
//!   patch that just ended hands its seat to the next status patch, not to an Event. When the
//!   API server is the bottleneck (not the QPS), the seats are what share it: a cold start of
//!   10,000 registrations gets every status out before the finalizers and Events, not
//!   interleaved with them.
//! - **Rate**: writes start no faster than a token bucket allows (`qps` sustained, `burst` at
//!   once; client-go's QPS/burst). A write takes its token once it holds a seat, so the classes
//!   share the rate in the proportion of their seats.
//! - **429**: after the API server answers 429 Too Many Requests (priority and fairness
//!   rejected or timed out a request) every write waits: 1 s, doubling up to 32 s while 429s
//!   continue, jittered, or longer when the answer asks for it (`retryAfterSeconds`, capped at
//!   32 s); a success ends the streak.
//!
//! Watches and lists do not take from the budget (they are long-running or rare).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
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
    /// Sizes the seats (>= 1): `2 × in_flight` writes in flight at once in all (the status
    /// patches may take every one), Events at most `in_flight / 4` of them (at least one).
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

/// What a write is, for the order in which writes get seats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A status patch: first.
    Status = 0,
    /// A finalizer patch: after status patches, but always one in flight when any waits.
    Finalizer = 1,
    /// An Event: only from seats nobody else waits for.
    Event = 2,
}

const CLASSES: usize = 3;

/// The seats (writes in flight) and who waits for one.
struct Seats {
    /// Seats in all.
    total: usize,
    /// Events in flight at most.
    event_cap: usize,
    /// In flight, by class.
    busy: [usize; CLASSES],
    /// Blocked on a seat, by class, in arrival order.
    queue: [VecDeque<oneshot::Sender<()>>; CLASSES],
    /// Status patches ready to be written or in flight (the status queue's view).
    status_backlog: usize,
}

impl Seats {
    fn free(&self) -> usize {
        self.total.saturating_sub(self.busy.iter().sum())
    }

    /// Status patches that want a seat and do not hold one.
    fn statuses_waiting(&self) -> bool {
        !self.queue[Class::Status as usize].is_empty()
            || self.status_backlog > self.busy[Class::Status as usize]
    }

    /// Whether a write of `class` may take a free seat now (those queued of its class first).
    fn may_take(&self, class: Class) -> bool {
        if self.free() == 0 {
            return false;
        }
        match class {
            Class::Status => true,
            Class::Finalizer => {
                self.busy[Class::Finalizer as usize] == 0 || !self.statuses_waiting()
            }
            Class::Event => {
                !self.statuses_waiting()
                    && self.queue[Class::Finalizer as usize].is_empty()
                    && self.busy[Class::Event as usize] < self.event_cap
            }
        }
    }

    /// The class whose first waiter gets the next free seat.
    fn next(&self) -> Option<Class> {
        let queued = |c: Class| !self.queue[c as usize].is_empty();
        // Finalizers' own seat first, then by priority.
        if queued(Class::Finalizer) && self.busy[Class::Finalizer as usize] == 0 && self.free() > 0
        {
            return Some(Class::Finalizer);
        }
        [Class::Status, Class::Finalizer, Class::Event]
            .into_iter()
            .find(|c| queued(*c) && self.may_take(*c))
    }

    /// Hands free seats to waiters, by priority.
    fn grant(&mut self) {
        while let Some(class) = self.next() {
            let Some(tx) = self.queue[class as usize].pop_front() else {
                break;
            };
            // A waiter that gave up (its future was dropped) takes nothing.
            if tx.send(()).is_ok() {
                self.busy[class as usize] += 1;
            }
        }
    }
}

/// A seat held by a write; given back (to the next waiter by priority) when dropped.
pub struct Seat {
    budget: WriteBudget,
    class: Class,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.budget.release(self.class);
    }
}

/// A write waiting for a seat: if it gives up after one was granted, the seat goes back.
struct Waiting {
    rx: Option<oneshot::Receiver<()>>,
    budget: WriteBudget,
    class: Class,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.budget.release(self.class);
            }
        }
    }
}

struct Inner {
    bucket: Mutex<Bucket>,
    seats: Mutex<Seats>,
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
        let in_flight = limits.in_flight.max(1);
        WriteBudget {
            inner: Arc::new(Inner {
                bucket: Mutex::new(Bucket {
                    interval,
                    tolerance: interval.saturating_mul(burst - 1),
                    tat: Instant::now(),
                    paused_until: None,
                    throttle: None,
                }),
                seats: Mutex::new(Seats {
                    total: in_flight.saturating_mul(2),
                    event_cap: (in_flight / 4).max(1),
                    busy: [0; CLASSES],
                    queue: Default::default(),
                    status_backlog: 0,
                }),
                metrics,
            }),
        }
    }

    fn bucket(&self) -> MutexGuard<'_, Bucket> {
        // A poisoned lock only means a panic elsewhere mid-update; the bucket stays usable.
        self.inner.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn seats(&self) -> MutexGuard<'_, Seats> {
        self.inner.seats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a seat for a write of `class` (see the module docs); the write holds it until
    /// it ends.
    pub async fn seat(&self, class: Class) -> Seat {
        let rx = {
            let mut seats = self.seats();
            if seats.queue[class as usize].is_empty() && seats.may_take(class) {
                seats.busy[class as usize] += 1;
                return Seat {
                    budget: self.clone(),
                    class,
                };
            }
            let (tx, rx) = oneshot::channel();
            seats.queue[class as usize].push_back(tx);
            seats.grant();
            rx
        };
        let mut waiting = Waiting {
            rx: Some(rx),
            budget: self.clone(),
            class,
        };
        if let Some(rx) = waiting.rx.as_mut() {
            // The sender is only dropped unsent by `grant` for a waiter that gave up (not us)
            // or with the budget itself; either way the write may go.
            let _ = rx.await;
        }
        waiting.rx = None;
        Seat {
            budget: self.clone(),
            class,
        }
    }

    fn release(&self, class: Class) {
        let mut seats = self.seats();
        seats.busy[class as usize] = seats.busy[class as usize].saturating_sub(1);
        seats.grant();
    }

    /// The status queue has `n` status patches ready to write or in flight: while some of them
    /// hold no seat, finalizers (beyond their own seat) and Events wait.
    pub fn set_status_backlog(&self, n: usize) {
        let mut seats = self.seats();
        if seats.status_backlog != n {
            seats.status_backlog = n;
            seats.grant();
        }
    }

    /// Writes in flight now, by class (status, finalizer, Event).
    #[cfg(test)]
    pub fn busy(&self) -> [usize; CLASSES] {
        self.seats().busy
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
