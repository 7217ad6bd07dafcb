//! The expected changes: an independent pod watch (not the operator's) that, after every pod
//! event, computes the keys the registrations want with the operator's own pure function
//! ([`registrar::desired`]) and counts how many keys changed (added, removed or given another
//! value) since the event before. Every intermediate desired state is counted, so an operator
//! that coalesces writes stays at or below this count; one that rewrites what did not change
//! goes above it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use registrar::crd::ServiceRegistration;
use registrar::desired;

use super::config::{NAMESPACE, PREFIX};

/// What the model has seen.
#[derive(Clone, Debug, Default)]
pub struct ModelState {
    /// The keys wanted now.
    pub desired: BTreeMap<String, String>,
    /// Key changes since counting started.
    pub changes: u64,
    /// Pod events since counting started.
    pub pod_events: u64,
    /// Whether changes are being counted (after the initial convergence).
    pub counting: bool,
}

/// Starts the pod watch; the returned state is updated after every event.
pub fn start(client: kube::Client, regs: Vec<ServiceRegistration>) -> Arc<Mutex<ModelState>> {
    let state = Arc::new(Mutex::new(ModelState::default()));
    let out = state.clone();
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
        // With backoff: without it a failing watch (the API server gone at the end of the run)
        // is retried in a loop that never yields, which kept a finished soak spinning a core and
        // blocked the runtime's shutdown.
        let mut stream = watcher::watcher(pods, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut store: BTreeMap<String, Pod> = BTreeMap::new();
        let mut init: BTreeMap<String, Pod> = BTreeMap::new();
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            match ev {
                Event::Apply(p) => {
                    store.insert(p.metadata.name.clone().unwrap_or_default(), p);
                }
                Event::Delete(p) => {
                    store.remove(p.metadata.name.as_deref().unwrap_or_default());
                }
                Event::Init => {
                    init.clear();
                    continue;
                }
                Event::InitApply(p) => {
                    init.insert(p.metadata.name.clone().unwrap_or_default(), p);
                    continue;
                }
                Event::InitDone => store = std::mem::take(&mut init),
            }
            let outcomes: Vec<_> = regs
                .iter()
                .map(|r| desired::registration_outcome(PREFIX, r, store.values()))
                .collect();
            let now = desired::desired_keys(PREFIX, &outcomes);
            if let Ok(mut s) = out.lock() {
                if s.counting {
                    s.changes += diff(&s.desired, &now);
                    s.pod_events += 1;
                }
                s.desired = now;
            }
        }
    });
    state
}

/// Keys added, removed or changed between `a` and `b`.
fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> u64 {
    let changed_or_removed = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count();
    let added = b.keys().filter(|k| !a.contains_key(*k)).count();
    (changed_or_removed + added) as u64
}
