//! Writes to the Kubernetes API on behalf of the engine: finalizers and Events, queued so the
//! engine never waits on the API, and the status write that the status queue
//! ([`super::status_queue`]) calls, one at a time per registration. Every write holds a seat of
//! one shared [`WriteBudget`] while it runs and takes from its rate (QPS and burst, a pause
//! after a 429); the seats go to status patches first, then finalizers, then Events
//! ([`budget`]). Finalizer additions wait in a queue of small descriptions and Events in a
//! bounded, rate-limited one ([`events`]); one dispatcher task per queue takes the next one
//! when a seat is free, so only the writes in flight are tasks (a cold start of 10,000
//! registrations does not park 20,000 request futures in memory).

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use serde_json::json;
use tokio::sync::{Notify, mpsc};

use super::status_queue::WriteResult;
use crate::backoff::Backoff;
use crate::crd::{ServiceRegistration, ServiceRegistrationStatus};
use crate::index::RegKey;
use crate::metrics::{ErrorKind, EventOutcome, Metrics};

mod budget;
mod events;
pub use budget::{Class, Seat, WriteBudget, WriteLimits};
use events::{DropCause, EventLimits, EventQueue, PendingEvent, WARNING_LOG_EVERY};

/// The finalizer that keeps a registration until its keys are gone from etcd.
pub const FINALIZER: &str = "registrar.dev/cleanup";

/// Field manager for status patches.
const MANAGER: &str = "registrar";

/// Retries of a finalizer removal that failed transiently, and their delays (the operator's
/// one retry policy, [`Backoff`]): 0.5 s doubling up to 8 s, jittered.
const FINALIZER_ATTEMPTS: u32 = 5;
const FINALIZER_RETRY_INITIAL: Duration = Duration::from_millis(500);
const FINALIZER_RETRY_MAX: Duration = Duration::from_secs(8);

/// A finalizer to add: what the patch needs, small while it waits.
struct FinalizerAdd {
    namespace: String,
    name: String,
    resource_version: Option<String>,
    /// The registration has a finalizer list already (append to it).
    has_list: bool,
}

/// The Event queue as the engine and its dispatcher share it.
struct EventState {
    queue: EventQueue,
    /// Dropped Warnings not logged yet, and when the last line was logged.
    unlogged_warnings: u64,
    last_warning_log: Option<tokio::time::Instant>,
}

/// Issues Kubernetes writes concurrently within the shared budget (see the module docs).
#[derive(Clone)]
pub struct KubeWriter {
    client: Client,
    budget: WriteBudget,
    metrics: Metrics,
    finalizers: mpsc::UnboundedSender<FinalizerAdd>,
    events: std::sync::Arc<(std::sync::Mutex<EventState>, Notify)>,
}

impl KubeWriter {
    /// A writer for `client`, reporting Events as `identity`, each write within `budget`;
    /// starts its dispatcher tasks.
    pub fn new(client: Client, identity: String, metrics: Metrics, budget: WriteBudget) -> Self {
        let reporter = Reporter {
            controller: "registrar".into(),
            instance: Some(identity),
        };
        let (finalizers, finalizer_rx) = mpsc::unbounded_channel();
        let events = std::sync::Arc::new((
            std::sync::Mutex::new(EventState {
                queue: EventQueue::new(EventLimits::default()),
                unlogged_warnings: 0,
                last_warning_log: None,
            }),
            Notify::new(),
        ));
        let writer = KubeWriter {
            client: client.clone(),
            budget,
            metrics,
            finalizers,
            events,
        };
        tokio::spawn(writer.clone().add_finalizers(finalizer_rx));
        tokio::spawn(writer.clone().send_events(Recorder::new(client, reporter)));
        writer
    }

    fn api(&self, ns: &str) -> Api<ServiceRegistration> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn event_state(&self) -> std::sync::MutexGuard<'_, EventState> {
        // A poisoned lock only means a panic elsewhere mid-update; the queue stays usable.
        self.events.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `write` in its own task, holding `seat` (if given: else it takes one per request,
    /// through the [`Budgeted`] handed to it).
    fn spawn<F, Fut>(&self, what: &'static str, name: String, seat: Option<Seat>, write: F)
    where
        F: FnOnce(Budgeted) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), kube::Error>> + Send + 'static,
    {
        let budgeted = Budgeted {
            budget: self.budget.clone(),
            class: Class::Finalizer,
            held: seat.is_some(),
        };
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _seat = seat;
            match write(budgeted).await {
                Ok(()) => {}
                // The object is gone: nothing left to write.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    metrics.error(ErrorKind::KubeApi);
                    tracing::warn!(registration = %name, error = %e, "{what} failed");
                }
            }
        });
    }

    /// Adds the finalizer to `reg` (JSON patch guarded by the resourceVersion seen), once a
    /// seat is free for it.
    pub fn add_finalizer(&self, reg: &ServiceRegistration) {
        let (Some(namespace), Some(name)) =
            (reg.metadata.namespace.clone(), reg.metadata.name.clone())
        else {
            return;
        };
        let _ = self.finalizers.send(FinalizerAdd {
            namespace,
            name,
            resource_version: reg.metadata.resource_version.clone(),
            has_list: reg.metadata.finalizers.is_some(),
        });
    }

    /// The dispatcher of finalizer additions: each one in its own task once it has a seat.
    async fn add_finalizers(self, mut rx: mpsc::UnboundedReceiver<FinalizerAdd>) {
        while let Some(add) = rx.recv().await {
            let seat = self.budget.seat(Class::Finalizer).await;
            let api = self.api(&add.namespace);
            let patch = if add.has_list {
                json!([
                    { "op": "test", "path": "/metadata/resourceVersion", "value": add.resource_version },
                    { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER }
                ])
            } else {
                json!([
                    { "op": "test", "path": "/metadata/resourceVersion", "value": add.resource_version },
                    { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }
                ])
            };
            let name = add.name;
            self.spawn(
                "adding the finalizer",
                format!("{}/{name}", add.namespace),
                Some(seat),
                |budget| async move {
                    let patch: json_patch::Patch =
                        serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
                    ignore_conflict(
                        budget
                            .send(api.patch(
                                &name,
                                &PatchParams::default(),
                                &Patch::Json::<()>(patch),
                            ))
                            .await,
                    )
                },
            );
        }
    }

    /// Removes the finalizer from `reg` (after its keys were deleted from etcd).
    pub fn remove_finalizer(&self, reg: &ServiceRegistration) {
        let (Some(ns), Some(name)) = (reg.metadata.namespace.clone(), reg.metadata.name.clone())
        else {
            return;
        };
        let current = reg.metadata.finalizers.clone().unwrap_or_default();
        let remaining: Vec<&String> = current.iter().filter(|f| *f != FINALIZER).collect();
        let api = self.api(&ns);
        let patch = json!([
            { "op": "test", "path": "/metadata/finalizers", "value": current },
            { "op": "replace", "path": "/metadata/finalizers", "value": remaining }
        ]);
        // A deleting registration gets no further watch event that would make the engine try
        // again, so transient failures are retried here (a failed `test` means the object
        // changed: the next watch event brings it back to the engine).
        self.spawn(
            "removing the finalizer",
            format!("{ns}/{name}"),
            None,
            |budget| async move {
                let patch: json_patch::Patch =
                    serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
                let mut backoff = Backoff::new(FINALIZER_RETRY_INITIAL, FINALIZER_RETRY_MAX);
                for attempt in 0.. {
                    let res = budget
                        .send(api.patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Json::<()>(patch.clone()),
                        ))
                        .await;
                    match ignore_conflict(res) {
                        Err(kube::Error::Api(e)) if e.code < 500 && e.code != 429 => {
                            return Err(kube::Error::Api(e));
                        }
                        Err(e) if attempt < FINALIZER_ATTEMPTS => {
                            tracing::debug!(error = %e, "removing the finalizer failed; retrying");
                            tokio::time::sleep(backoff.next_delay()).await;
                        }
                        other => return other,
                    }
                }
                Ok(())
            },
        );
    }

    /// Queues a Kubernetes Event about `reg`, unless its limits drop it (see [`events`]).
    pub fn event(&self, reg: &ServiceRegistration, warning: bool, reason: &str, note: String) {
        let event = PendingEvent {
            reference: reg.object_ref(&()),
            warning,
            reason: reason.to_string(),
            note,
        };
        let now = tokio::time::Instant::now();
        let mut state = self.event_state();
        let dropped = state.queue.offer(event, now);
        drop(state);
        self.events.1.notify_one();
        for d in dropped {
            self.dropped_event(d, now);
        }
    }

    /// Counts an Event that will not be sent; logs a Warning dropped by a limit.
    fn dropped_event(&self, dropped: events::Dropped, now: tokio::time::Instant) {
        let ev = &dropped.event;
        let cause = match dropped.cause {
            DropCause::Superseded => {
                self.metrics
                    .kube_event(ev.warning, EventOutcome::Superseded);
                tracing::debug!(registration = %ev.object(), reason = %ev.reason, "Event superseded before it was sent");
                return;
            }
            DropCause::RateLimited => "its registration's Event rate limit",
            DropCause::QueueFull => "the Event queue is full",
        };
        self.metrics.kube_event(ev.warning, EventOutcome::Dropped);
        if !ev.warning {
            tracing::debug!(registration = %ev.object(), reason = %ev.reason, cause, "Normal Event dropped");
            return;
        }
        let mut state = self.event_state();
        state.unlogged_warnings += 1;
        let due = state
            .last_warning_log
            .is_none_or(|at| now.saturating_duration_since(at) >= WARNING_LOG_EVERY);
        if due {
            tracing::warn!(
                registration = %ev.object(),
                reason = %ev.reason,
                note = %ev.note,
                dropped_since_last_line = state.unlogged_warnings,
                "Warning Event not sent: {cause} (the status shows it; counted in registrar_kube_events_total)"
            );
            state.unlogged_warnings = 0;
            state.last_warning_log = Some(now);
        }
    }

    /// The dispatcher of Events: the oldest queued one in its own task once it has a seat.
    async fn send_events(self, recorder: Recorder) {
        loop {
            let notified = self.events.1.notified();
            if self.event_state().queue.is_empty() {
                notified.await;
                continue;
            }
            let seat = self.budget.seat(Class::Event).await;
            let Some(event) = self.event_state().queue.pop() else {
                continue;
            };
            let recorder = recorder.clone();
            let metrics = self.metrics.clone();
            let budget = self.budget.clone();
            tokio::spawn(async move {
                let _seat = seat;
                let warning = event.warning;
                let name = event.object();
                let kind = Event {
                    type_: if warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: event.reason,
                    note: Some(event.note),
                    action: "Publish".into(),
                    secondary: None,
                };
                let reference: ObjectReference = event.reference;
                budget.admit().await;
                let res = recorder.publish(&kind, &reference).await;
                budget.outcome(&res);
                match res {
                    Ok(()) => metrics.kube_event(warning, EventOutcome::Sent),
                    Err(e) => {
                        metrics.kube_event(warning, EventOutcome::Failed);
                        metrics.error(ErrorKind::KubeApi);
                        tracing::warn!(registration = %name, error = %e, "publishing an event failed");
                    }
                }
            });
        }
    }
}

/// The budget as a write task holds it.
struct Budgeted {
    budget: WriteBudget,
    /// The class of the seat each request takes.
    class: Class,
    /// The task holds a seat already (taken for its first request).
    held: bool,
}

impl Budgeted {
    /// Sends one request within the budget (with a seat of its own unless the task holds
    /// one) and records how it ended.
    async fn send<T>(
        &self,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, kube::Error> {
        let _seat = if self.held {
            None
        } else {
            Some(self.budget.seat(self.class).await)
        };
        self.budget.admit().await;
        let result = request.await;
        self.budget.outcome(&result);
        result
    }
}

/// A failed `test` (the object changed meanwhile) is not an error: the next watch event brings
/// the new version and the engine decides again.
fn ignore_conflict<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The status write of the status queue: replaces the status of a registration with a merge
/// patch and sorts the outcome into what the queue does next.
pub fn status_writer(
    client: Client,
    metrics: Metrics,
    budget: WriteBudget,
) -> impl Fn(RegKey, ServiceRegistrationStatus) -> BoxFuture<'static, WriteResult> + Send + 'static
{
    move |RegKey {
              namespace: ns,
              name,
          },
          status| {
        let api: Api<ServiceRegistration> = Api::namespaced(client.clone(), &ns);
        let metrics = metrics.clone();
        let budget = Budgeted {
            budget: budget.clone(),
            class: Class::Status,
            held: false,
        };
        async move {
            let mut patch = json!({ "status": status });
            // A merge patch leaves out what it omits: an empty endpoint list (skipped when
            // serialized) must be sent explicitly or the old addresses would stay.
            patch["status"]["endpoints"] = json!(status.endpoints);
            let res = budget
                .send(api.patch_status(&name, &PatchParams::apply(MANAGER), &Patch::Merge(&patch)))
                .await;
            match res {
                Ok(_) => WriteResult::Written,
                Err(kube::Error::Api(e)) if e.code == 404 => WriteResult::Gone,
                Err(kube::Error::Api(e)) if e.code < 500 && e.code != 429 && e.code != 409 => {
                    metrics.error(ErrorKind::KubeApi);
                    tracing::warn!(registration = %format!("{ns}/{name}"), error = %e, "the status update was refused");
                    WriteResult::Rejected
                }
                Err(e) => {
                    metrics.error(ErrorKind::KubeApi);
                    tracing::warn!(registration = %format!("{ns}/{name}"), error = %e, "status update failed; retrying");
                    WriteResult::Failed
                }
            }
        }
        .boxed()
    }
}
