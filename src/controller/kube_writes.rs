//! Writes to the Kubernetes API on behalf of the engine: finalizers and Events, each in its own
//! task so the engine never waits on the API, and the status write that the status queue
//! ([`super::status_queue`]) calls, one at a time per registration. Every write takes from one
//! shared [`WriteBudget`] (QPS and burst, a pause after a 429); finalizers and Events are bounded
//! in flight here, status patches by the status queue.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use serde_json::json;
use tokio::sync::Semaphore;

use super::status_queue::WriteResult;
use crate::backoff::Backoff;
use crate::crd::{ServiceRegistration, ServiceRegistrationStatus};
use crate::index::RegKey;
use crate::metrics::{ErrorKind, Metrics};

mod budget;
pub use budget::{WriteBudget, WriteLimits};

/// The finalizer that keeps a registration until its keys are gone from etcd.
pub const FINALIZER: &str = "registrar.dev/cleanup";

/// Field manager for status patches.
const MANAGER: &str = "registrar";

/// Retries of a finalizer removal that failed transiently, and their delays (the operator's
/// one retry policy, [`Backoff`]): 0.5 s doubling up to 8 s, jittered.
const FINALIZER_ATTEMPTS: u32 = 5;
const FINALIZER_RETRY_INITIAL: Duration = Duration::from_millis(500);
const FINALIZER_RETRY_MAX: Duration = Duration::from_secs(8);

/// Issues Kubernetes writes concurrently, at most `limit` at once, within the shared budget.
#[derive(Clone)]
pub struct KubeWriter {
    client: Client,
    recorder: Recorder,
    permits: std::sync::Arc<Semaphore>,
    budget: WriteBudget,
    metrics: Metrics,
}

impl KubeWriter {
    /// A writer for `client`, reporting Events as `identity`, at most `limit` writes at once,
    /// each within `budget`.
    pub fn new(
        client: Client,
        identity: String,
        metrics: Metrics,
        limit: usize,
        budget: WriteBudget,
    ) -> Self {
        let reporter = Reporter {
            controller: "registrar".into(),
            instance: Some(identity),
        };
        KubeWriter {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            permits: std::sync::Arc::new(Semaphore::new(limit.max(1))),
            budget,
            metrics,
        }
    }

    fn api(&self, ns: &str) -> Api<ServiceRegistration> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Runs `write` in its own task; it takes from the budget for each request it sends
    /// (through the [`Budgeted`] handed to it).
    fn spawn<F, Fut>(&self, what: &'static str, name: String, write: F)
    where
        F: FnOnce(Budgeted) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), kube::Error>> + Send + 'static,
    {
        let permits = self.permits.clone();
        let budget = Budgeted(self.budget.clone());
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            match write(budget).await {
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

    /// Adds the finalizer to `reg` (JSON patch guarded by the resourceVersion seen).
    pub fn add_finalizer(&self, reg: &ServiceRegistration) {
        let (Some(ns), Some(name)) = (reg.metadata.namespace.clone(), reg.metadata.name.clone())
        else {
            return;
        };
        let api = self.api(&ns);
        let patch = match &reg.metadata.finalizers {
            None => json!([
                { "op": "test", "path": "/metadata/resourceVersion", "value": reg.metadata.resource_version },
                { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }
            ]),
            Some(_) => json!([
                { "op": "test", "path": "/metadata/resourceVersion", "value": reg.metadata.resource_version },
                { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER }
            ]),
        };
        self.spawn(
            "adding the finalizer",
            format!("{ns}/{name}"),
            |budget| async move {
                let patch: json_patch::Patch =
                    serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
                ignore_conflict(
                    budget
                        .send(api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch)))
                        .await,
                )
            },
        );
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

    /// Publishes a Kubernetes Event about `reg`.
    pub fn event(&self, reg: &ServiceRegistration, warning: bool, reason: &str, note: String) {
        let reference: ObjectReference = reg.object_ref(&());
        let recorder = self.recorder.clone();
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: "Publish".into(),
            secondary: None,
        };
        let name = format!(
            "{}/{}",
            reg.metadata.namespace.as_deref().unwrap_or_default(),
            reg.metadata.name.as_deref().unwrap_or_default()
        );
        self.spawn("publishing an event", name, |budget| async move {
            budget.send(recorder.publish(&event, &reference)).await
        });
    }
}

/// The budget as a write task holds it.
struct Budgeted(WriteBudget);

impl Budgeted {
    /// Sends one request within the budget and records how it ended.
    async fn send<T>(
        &self,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, kube::Error> {
        self.0.admit().await;
        let result = request.await;
        self.0.outcome(&result);
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
        let budget = Budgeted(budget.clone());
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
