//! The operator's Events wait here before they are sent: Events are best-effort, the status is
//! the record (`kubectl describe` shows both; alerts and `kubectl wait` read the status), so
//! they must never cost a status its place at the API server. Like client-go's EventRecorder
//! (its spam filter and correlator), they are limited twice:
//!
//! - **Per registration**: a token bucket of [`EventLimits::per_object_burst`] Events, refilled
//!   one per [`EventLimits::per_object_every`] (client-go: 25, one per 5 minutes). A
//!   registration that flaps between two reasons emits its first Events and then one per
//!   interval; its status still shows every change.
//! - **Queue**: at most [`EventLimits::queue`] Events wait for a seat (they get one only when
//!   no status or finalizer patch waits, see [`super::budget`]). When it is full a new Normal
//!   Event is dropped; a new Warning takes the place of the oldest queued Normal one, and is
//!   dropped only when every queued Event is a Warning.
//! - **Latest per registration**: a new Event of a registration replaces its older one that is
//!   still queued (superseded: the status moved on before it was sent). A Normal Event that
//!   follows a Warning of the same registration that a limit dropped is dropped too (superseded:
//!   the problem was never announced, so neither is its end); so is one that replaces a queued
//!   Warning while the queue is under pressure ([`EventLimits::pressure`] Events or more wait).
//!   An etcd outage that ends while its Warnings still wait shows every registration
//!   `EtcdUnavailable` and then `Published`: those pairs cancel here instead of costing 20,000
//!   writes. Below that pressure the Normal Event goes out in the Warning's place: a lone
//!   registration whose pods all restarted still gets its `Published` Event.
//!
//! Every Event not sent is counted (`registrar_kube_events_total{type, outcome="dropped"}` for
//! a limit, `"superseded"` for a newer Event of the same registration) and a Warning dropped by
//! a limit is logged (at most one line per [`WARNING_LOG_EVERY`], with the count since the last
//! one): a Warning is never dropped silently. Which Events the engine emits at all is the
//! core's decision (no Normal Event for a registration's first publication).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use tokio::time::Instant;

/// How often a dropped Warning is logged at most.
pub const WARNING_LOG_EVERY: Duration = Duration::from_secs(10);

/// The limits of an [`EventQueue`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventLimits {
    /// Events waiting to be sent at most.
    pub queue: usize,
    /// Events one registration may emit at once.
    pub per_object_burst: u32,
    /// One more Event per registration this often.
    pub per_object_every: Duration,
    /// From this many queued Events on, a Normal Event that replaces a queued Warning of its
    /// registration is dropped with it.
    pub pressure: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            queue: 10_000,
            per_object_burst: 25,
            per_object_every: Duration::from_secs(300),
            pressure: 100,
        }
    }
}

/// An Event to send.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingEvent {
    /// The registration it is about.
    pub reference: ObjectReference,
    /// Warning (else Normal).
    pub warning: bool,
    /// The reason.
    pub reason: String,
    /// The note.
    pub note: String,
}

impl PendingEvent {
    /// "namespace/name" of the registration.
    pub fn object(&self) -> String {
        format!(
            "{}/{}",
            self.reference.namespace.as_deref().unwrap_or_default(),
            self.reference.name.as_deref().unwrap_or_default()
        )
    }
}

/// Why an Event was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropCause {
    /// Its registration used up its Events for now.
    RateLimited,
    /// Too many Events waited.
    QueueFull,
    /// A newer Event of its registration came before it was sent (or it ends a problem whose
    /// Warning was never sent).
    Superseded,
}

/// An Event that will not be sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Dropped {
    /// Which.
    pub event: PendingEvent,
    /// Why.
    pub cause: DropCause,
}

/// One registration's Event bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Its latest Warning was not sent (dropped or superseded): a Normal Event after it is
    /// not news.
    unsent_warning: bool,
}

/// See the module docs.
pub struct EventQueue {
    limits: EventLimits,
    /// Oldest first, with their registration ([`PendingEvent::object`]).
    queued: VecDeque<(String, PendingEvent)>,
    buckets: HashMap<String, Bucket>,
    last_prune: Option<Instant>,
}

impl EventQueue {
    /// An empty queue with `limits`.
    pub fn new(limits: EventLimits) -> Self {
        EventQueue {
            limits,
            queued: VecDeque::new(),
            buckets: HashMap::new(),
            last_prune: None,
        }
    }

    /// Events waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Registrations with a bucket that has not refilled yet (bounded by recent activity).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Queues `event` (at `now`) unless a limit says no; returns what is not sent: `event`
    /// itself, an older queued Event of its registration it supersedes, or a queued Normal
    /// Event it displaced.
    pub fn offer(&mut self, event: PendingEvent, now: Instant) -> Vec<Dropped> {
        self.prune(now);
        let mut out = Vec::new();
        let object = event.object();
        // An older Event of the same registration still waits: the status moved on.
        let pressure = self.queued.len() >= self.limits.pressure.max(1);
        let mut replaced_warning = false;
        if let Some(i) = self.queued.iter().position(|(o, _)| *o == object)
            && let Some((_, old)) = self.queued.remove(i)
        {
            replaced_warning = old.warning;
            out.push(Dropped {
                event: old,
                cause: DropCause::Superseded,
            });
        }
        let burst = f64::from(self.limits.per_object_burst.max(1));
        let every = self.limits.per_object_every.as_secs_f64().max(1e-9);
        let bucket = self.buckets.entry(object.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
            unsent_warning: false,
        });
        let unsent_warning = std::mem::take(&mut bucket.unsent_warning);
        if !event.warning && (unsent_warning || (replaced_warning && pressure)) {
            out.push(Dropped {
                event,
                cause: DropCause::Superseded,
            });
            return out;
        }
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() / every;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            bucket.unsent_warning |= event.warning;
            out.push(Dropped {
                event,
                cause: DropCause::RateLimited,
            });
            return out;
        }
        bucket.tokens -= 1.0;
        if self.queued.len() < self.limits.queue.max(1) {
            self.queued.push_back((object, event));
            return out;
        }
        let displaced = event
            .warning
            .then(|| self.queued.iter().position(|(_, e)| !e.warning))
            .flatten()
            .and_then(|i| self.queued.remove(i));
        match displaced {
            Some((_, old)) => {
                self.queued.push_back((object, event));
                out.push(Dropped {
                    event: old,
                    cause: DropCause::QueueFull,
                });
            }
            None => {
                if event.warning {
                    self.mark_unsent(&object, now);
                }
                out.push(Dropped {
                    event,
                    cause: DropCause::QueueFull,
                });
            }
        }
        out
    }

    /// The latest Warning of `object` will not be sent.
    fn mark_unsent(&mut self, object: &str, now: Instant) {
        let burst = f64::from(self.limits.per_object_burst.max(1));
        self.buckets
            .entry(object.to_string())
            .or_insert(Bucket {
                tokens: burst,
                at: now,
                unsent_warning: false,
            })
            .unsent_warning = true;
    }

    /// The oldest Event waiting.
    pub fn pop(&mut self) -> Option<PendingEvent> {
        self.queued.pop_front().map(|(_, e)| e)
    }

    /// Forgets the buckets that have refilled (at most once per refill interval).
    fn prune(&mut self, now: Instant) {
        let every = self.limits.per_object_every;
        if self
            .last_prune
            .is_some_and(|at| now.saturating_duration_since(at) < every)
        {
            return;
        }
        self.last_prune = Some(now);
        let burst = f64::from(self.limits.per_object_burst.max(1));
        let every = every.as_secs_f64().max(1e-9);
        self.buckets.retain(|_, b| {
            b.unsent_warning
                || b.tokens + now.saturating_duration_since(b.at).as_secs_f64() / every < burst
        });
    }
}

#[cfg(test)]
mod tests;
