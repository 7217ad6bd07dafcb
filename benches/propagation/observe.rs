//! The observers of one round: an etcd watch on the round's target prefix (what a resolver
//! sees of Registrar), a watch on the Service's EndpointSlices (the peer), each recording
//! when an endpoint appeared and when it went away again, and a pod watch (when the API server
//! delivered each pod's Ready and terminating changes). They run on their
//! own thread and tokio runtime, so sending hundreds of status patches never delays the
//! timestamping of what they see.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use etcd_client::{EventType, GetOptions, WatchOptions};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{oneshot, watch};

/// When something was first seen, client side.
#[derive(Clone, Copy, Debug)]
pub struct Sighting {
    /// Monotonic time, comparable with the instants the bench recorded for its patches.
    pub at: Instant,
    /// Wall-clock time, comparable with the pods' `lastTransitionTime`.
    pub wall: SystemTime,
}

/// Everything the observers saw in one round.
#[derive(Debug, Default)]
pub struct Seen {
    /// First PUT of each etcd key under the prefix.
    pub keys: HashMap<String, Sighting>,
    /// Revisions of those PUTs: one etcd txn is one revision.
    pub revisions: BTreeSet<i64>,
    /// First time each pod (by name) was a ready endpoint in one of the Service's slices.
    pub ready: HashMap<String, Sighting>,
    /// When each EndpointSlice write (create, update, delete) after the initial list was seen.
    pub slice_writes: Vec<Instant>,
    /// First DELETE of each etcd key under the prefix.
    pub gone: HashMap<String, Sighting>,
    /// First time each pod seen ready was no longer a ready endpoint (terminating, not ready or
    /// out of the slices).
    pub unready: HashMap<String, Sighting>,
    /// First time a pod watch delivered each pod as Ready (what the API server's watch
    /// delivery costs; the operator's own pod watch is another such watch).
    pub pod_ready: HashMap<String, Instant>,
    /// First time a pod watch delivered each pod as terminating (deletion timestamp set).
    pub pod_deleting: HashMap<String, Instant>,
}

/// Live counts, to wait on.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Both watches are established (etcd watch created, EndpointSlices listed).
    pub established: bool,
    /// Distinct etcd keys seen.
    pub keys: usize,
    /// Pods currently listed as endpoints (ready or not) in the Service's slices.
    pub endpoints: usize,
    /// Pods currently listed as ready endpoints.
    pub ready: usize,
    /// Distinct etcd keys deleted.
    pub gone: usize,
}

/// What to watch.
pub struct Targets {
    pub kubeconfig: PathBuf,
    pub etcd_endpoint: String,
    pub namespace: String,
    pub service: String,
    /// The etcd prefix, with its trailing '/'.
    pub prefix: String,
}

/// The running observers of one round.
pub type Observer = crate::common::observer::Observer<Progress, Seen>;

impl Observer {
    /// Starts both watches on a new thread and waits until they are established.
    pub async fn start(targets: Targets) -> Result<Observer> {
        let mut observer = Observer::spawn(
            "bench-observer",
            |p| format!("{p:?}"),
            move |stop, progress| observe(targets, stop, progress),
        )?;
        observer
            .wait("watches established", Duration::from_secs(30), |p| {
                p.established
            })
            .await?;
        Ok(observer)
    }
}

/// The Service's slices as last seen: slice name -> (pod name, ready) per endpoint.
#[derive(Default)]
struct Slices(HashMap<String, Vec<(String, bool)>>);

impl Slices {
    fn ready_pods(&self) -> BTreeSet<&str> {
        self.0
            .values()
            .flatten()
            .filter(|(_, ready)| *ready)
            .map(|(pod, _)| pod.as_str())
            .collect()
    }

    fn counts(&self) -> (usize, usize) {
        let mut pods: HashMap<&str, bool> = HashMap::new();
        for (pod, ready) in self.0.values().flatten() {
            *pods.entry(pod).or_default() |= *ready;
        }
        (pods.len(), pods.values().filter(|r| **r).count())
    }
}

fn endpoints_of(slice: &EndpointSlice) -> Vec<(String, bool)> {
    slice
        .endpoints
        .iter()
        .filter_map(|ep| {
            let pod = ep.target_ref.as_ref()?.name.clone()?;
            let ready = ep.conditions.as_ref().and_then(|c| c.ready) == Some(true);
            Some((pod, ready))
        })
        .collect()
}

/// Whether the pod's Ready condition is True.
fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn observe(
    targets: Targets,
    mut stop: oneshot::Receiver<()>,
    progress: watch::Sender<Progress>,
) -> Result<Seen> {
    let client = registrar_testenv::client_from_kubeconfig(&targets.kubeconfig).await?;
    let mut etcd = etcd_client::Client::connect([targets.etcd_endpoint.as_str()], None).await?;
    let revision = etcd
        .get(
            targets.prefix.as_str(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .header()
        .map(|h| h.revision())
        .context("etcd response without a header")?;
    let mut keys = etcd
        .watch(
            targets.prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    let created = keys.message().await?.context("etcd watch closed")?;
    anyhow::ensure!(created.created(), "etcd watch not created: {created:?}");

    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &targets.namespace);
    let config = watcher::Config::default()
        .labels(&format!("kubernetes.io/service-name={}", targets.service));
    let mut slice_events = watcher(api, config).default_backoff().boxed();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &targets.namespace);
    let mut pod_events = watcher(
        pods,
        watcher::Config::default().labels(&format!("app={}", targets.service)),
    )
    .default_backoff()
    .boxed();

    let mut seen = Seen::default();
    let mut slices = Slices::default();
    let mut listed = false;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            msg = keys.next() => {
                let sighting = Sighting { at: Instant::now(), wall: SystemTime::now() };
                let resp = msg.context("etcd watch ended")??;
                anyhow::ensure!(!resp.canceled(), "etcd watch canceled: {}", resp.cancel_reason());
                for ev in resp.events() {
                    if ev.event_type() != EventType::Put {
                        if let Some(kv) = ev.kv() {
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            seen.gone.entry(key).or_insert(sighting);
                        }
                        continue;
                    }
                    if let Some(kv) = ev.kv() {
                        seen.revisions.insert(kv.mod_revision());
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        seen.keys.entry(key).or_insert(sighting);
                    }
                }
            }
            ev = pod_events.next() => {
                let at = Instant::now();
                let ev = ev.context("Pod watch ended")??;
                if let watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) = ev {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    if pod.metadata.deletion_timestamp.is_some() {
                        seen.pod_deleting.entry(name).or_insert(at);
                    } else if is_ready(&pod) {
                        seen.pod_ready.entry(name).or_insert(at);
                    }
                }
                continue;
            }
            ev = slice_events.next() => {
                let sighting = Sighting { at: Instant::now(), wall: SystemTime::now() };
                let ev = ev.context("EndpointSlice watch ended")??;
                let applied = match ev {
                    watcher::Event::Init => { slices.0.clear(); None }
                    watcher::Event::InitApply(s) => Some((s, false)),
                    watcher::Event::InitDone => { listed = true; None }
                    watcher::Event::Apply(s) => Some((s, true)),
                    watcher::Event::Delete(s) => {
                        seen.slice_writes.push(sighting.at);
                        slices.0.remove(s.metadata.name.as_deref().unwrap_or_default());
                        None
                    }
                };
                if let Some((slice, write)) = applied {
                    if write {
                        seen.slice_writes.push(sighting.at);
                    }
                    let eps = endpoints_of(&slice);
                    for (pod, ready) in &eps {
                        if *ready {
                            seen.ready.entry(pod.clone()).or_insert(sighting);
                        }
                    }
                    slices.0.insert(slice.metadata.name.clone().unwrap_or_default(), eps);
                }
                let ready = slices.ready_pods();
                for pod in seen.ready.keys() {
                    if !ready.contains(pod.as_str()) && !seen.unready.contains_key(pod) {
                        seen.unready.insert(pod.clone(), sighting);
                    }
                }
            }
        }
        let (endpoints, ready) = slices.counts();
        progress.send_replace(Progress {
            established: listed,
            keys: seen.keys.len(),
            endpoints,
            ready,
            gone: seen.gone.len(),
        });
    }
    Ok(seen)
}
