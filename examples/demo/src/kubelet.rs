//! A stand-in for the kubelet's container lifecycle. kwok simulates the kubelet's API side (pods
//! get an IP and become Ready) but runs nothing, so this runs the workload: for every Running pod
//! it starts a [`GracefulServer`] with the resolver's drain helper on the pod's IP (loopback,
//! from kwok), and, driven by a pod watch, for every terminating pod it does what a kubelet
//! does — the container's `preStop` sleep (if any), then SIGTERM (the drain helper:
//! NOT_SERVING, serving on for [`DRAIN_DELAY`], then a graceful shutdown), the whole bounded by
//! `terminationGracePeriodSeconds` — before letting the pod go. Like a real kubelet it never
//! looks at etcd: what the client sees includes every propagation delay of the operator.
//!
//! kwok deletes terminating pods at once, which would hand their IP to a new pod while the old
//! server still drains. So the demo puts [`FINALIZER`] on its pods, and this kubelet removes it
//! (with the test ground's [`release_finalizer`]) only after the server has stopped: the pod
//! stays Terminating (and keeps its IP) meanwhile, as with a real kubelet.
//!
//! Why not the test ground's stand-in kubelet ([`registrar_testenv::pod_servers::PodServers`],
//! which the tests use): the two run the same lifecycle but serve different ends. This one is
//! the workload the demo shows, so it takes everything from each pod's spec (its `grpc`
//! container port, `preStop` sleep and `terminationGracePeriodSeconds`, which the demo's
//! manifests set and the reader can change), runs each pod's server as the workload's own
//! [`GracefulServer`] on the demo's runtime with the resolver's drain helper, narrates each
//! step on the console and keeps every server (stopped ones too) with its state and RPC count
//! for the live table. The tests' one takes a fixed port and termination from the test (so a
//! test states its timing), runs killable servers on their own runtimes (a kill is a crashed
//! process), lets a test choose what SIGTERM does (graceful, drain, exit), and reports when each
//! drained server answered its last call.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use registrar_testenv::pod_servers::{self, release_finalizer};
use tokio::task::JoinHandle;

use crate::console::Console;
use crate::greeter::{DRAIN_DELAY, GracefulServer, Shutdown, drainer};

/// The finalizer that holds a pod in Terminating until its server has stopped.
pub const FINALIZER: &str = "registrar.dev/demo-kubelet";
/// The container port used when a pod names none called `grpc`.
const DEFAULT_PORT: u16 = 50051;

/// The state of a pod's server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Listening and answering.
    Serving,
    /// The pod is terminating: preStop, then draining.
    Draining,
    /// Stopped.
    Stopped,
}

impl ServerState {
    /// Lower-case name for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Serving => "serving",
            ServerState::Draining => "draining",
            ServerState::Stopped => "stopped",
        }
    }
}

/// One pod's server, as [`Kubelet::backends`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Pod name (also the backend name in replies).
    pub pod: String,
    /// Pod UID.
    pub uid: String,
    /// Where the server listens.
    pub addr: SocketAddr,
    /// Its state.
    pub state: ServerState,
    /// RPCs it answered.
    pub served: u64,
}

struct Entry {
    pod: String,
    addr: SocketAddr,
    state: ServerState,
    served: Arc<AtomicU64>,
    server: Option<GracefulServer>,
}

type Entries = Arc<Mutex<BTreeMap<String, Entry>>>;

fn lock(entries: &Entries) -> MutexGuard<'_, BTreeMap<String, Entry>> {
    // Entries stay consistent across a panic elsewhere (each update is one assignment).
    entries.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running stand-in kubelet; stops every server when dropped.
pub struct Kubelet {
    entries: Entries,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Ctx {
    api: Api<Pod>,
    console: Arc<Console>,
    entries: Entries,
}

impl Kubelet {
    /// Runs the pods of `namespace` matching `selector` (a label selector string).
    pub fn start(
        client: kube::Client,
        namespace: &str,
        selector: &str,
        console: Arc<Console>,
    ) -> Kubelet {
        let entries: Entries = Arc::default();
        let ctx = Ctx {
            api: Api::namespaced(client, namespace),
            console,
            entries: entries.clone(),
        };
        let config = watcher::Config::default().labels(selector);
        let task = tokio::spawn(ctx.run(config));
        Kubelet { entries, task }
    }

    /// Every pod's server so far (stopped ones included), by pod name.
    pub fn backends(&self) -> Vec<Backend> {
        let mut v: Vec<Backend> = lock(&self.entries)
            .iter()
            .map(|(uid, e)| Backend {
                pod: e.pod.clone(),
                uid: uid.clone(),
                addr: e.addr,
                state: e.state,
                served: e.served.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.pod.cmp(&b.pod));
        v
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        // Dropping the servers closes their listeners.
        lock(&self.entries).clear();
    }
}

impl Ctx {
    async fn run(self, config: watcher::Config) {
        let mut events = watcher(self.api.clone(), config).default_backoff().boxed();
        let mut listed: Option<HashSet<String>> = None;
        while let Some(ev) = events.next().await {
            match ev {
                Ok(watcher::Event::Init) => listed = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(pod)) => {
                    if let (Some(seen), Some(uid)) = (listed.as_mut(), pod.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    self.sync(&pod).await;
                }
                Ok(watcher::Event::InitDone) => {
                    // Pods that vanished while the watch was down.
                    if let Some(seen) = listed.take() {
                        let gone: Vec<String> = lock(&self.entries)
                            .iter()
                            .filter(|(uid, e)| {
                                e.state == ServerState::Serving && !seen.contains(*uid)
                            })
                            .map(|(uid, _)| uid.clone())
                            .collect();
                        for uid in gone {
                            self.terminate(&uid, None);
                        }
                    }
                }
                Ok(watcher::Event::Apply(pod)) => self.sync(&pod).await,
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        self.terminate(uid, Some(&pod));
                    }
                }
                Err(e) => self
                    .console
                    .event("kubelet", format!("pod watch failed ({e}); retrying")),
            }
        }
    }

    async fn sync(&self, pod: &Pod) {
        let (Some(uid), Some(name)) = (pod.metadata.uid.as_deref(), pod.metadata.name.as_deref())
        else {
            return;
        };
        let known = lock(&self.entries).get(uid).map(|e| e.state);
        if pod.metadata.deletion_timestamp.is_some() {
            match known {
                Some(ServerState::Serving) => self.terminate(uid, Some(pod)),
                Some(ServerState::Draining) => {}
                // Never started, or already stopped: nothing holds the pod any more.
                Some(ServerState::Stopped) | None => {
                    if has_finalizer(pod) {
                        let ctx = self.clone();
                        let (name, uid) = (name.to_string(), uid.to_string());
                        tokio::spawn(async move { ctx.release(&name, &uid).await });
                    }
                }
            }
            return;
        }
        if known.is_some() {
            return;
        }
        let status = pod.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()) else {
            return;
        };
        if !running {
            return;
        }
        let ip: IpAddr = match ip.parse() {
            Ok(ip) => ip,
            Err(_) => {
                self.console
                    .event("kubelet", format!("{name}: unusable pod IP {ip:?}"));
                return;
            }
        };
        if !ip.is_loopback() {
            // The network rule: the demo only ever listens on and dials loopback addresses.
            self.console.event(
                "kubelet",
                format!("{name}: pod IP {ip} is not a loopback address; not running it"),
            );
            return;
        }
        let addr = SocketAddr::new(ip, grpc_port(pod));
        match GracefulServer::start_draining(addr, name, drainer(DRAIN_DELAY)).await {
            Ok(server) => {
                self.console.event(
                    "kubelet",
                    format!("{name} is Running on {ip}: Greeter server listening on {addr}"),
                );
                lock(&self.entries).insert(
                    uid.to_string(),
                    Entry {
                        pod: name.to_string(),
                        addr,
                        state: ServerState::Serving,
                        served: server.served_counter(),
                        server: Some(server),
                    },
                );
            }
            Err(e) => self
                .console
                .event("kubelet", format!("{name}: cannot start its server: {e}")),
        }
    }

    /// Starts the termination of a serving pod's server (see the module docs). `pod` is its last
    /// known state (for the grace period and preStop), if any.
    fn terminate(&self, uid: &str, pod: Option<&Pod>) {
        let (server, name, addr) = {
            let mut entries = lock(&self.entries);
            let Some(e) = entries.get_mut(uid) else {
                return;
            };
            if e.state != ServerState::Serving {
                return;
            }
            e.state = ServerState::Draining;
            (e.server.take(), e.pod.clone(), e.addr)
        };
        let spec = pod.and_then(|p| p.spec.as_ref());
        let grace = Duration::from_secs(
            spec.and_then(|s| s.termination_grace_period_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(30),
        );
        let pre_stop = spec.map(pre_stop_sleep).unwrap_or_default();
        let ctx = self.clone();
        let uid = uid.to_string();
        tokio::spawn(async move {
            ctx.console.event(
                "kubelet",
                format!(
                    "{name} is terminating: preStop sleep {}s, then SIGTERM: NOT_SERVING, \
                     serving on for {}s, then a graceful shutdown (grace period {}s)",
                    pre_stop.as_secs(),
                    DRAIN_DELAY.as_secs(),
                    grace.as_secs()
                ),
            );
            let started = Instant::now();
            tokio::time::sleep(pre_stop.min(grace)).await;
            let remaining = grace.saturating_sub(started.elapsed());
            let outcome = match server {
                Some(server) => server.shutdown(remaining).await,
                None => Shutdown::Drained,
            };
            let served = {
                let mut entries = lock(&ctx.entries);
                match entries.get_mut(&uid) {
                    Some(e) => {
                        e.state = ServerState::Stopped;
                        e.served.load(Ordering::Relaxed)
                    }
                    None => 0,
                }
            };
            let how = match outcome {
                Shutdown::Drained => "drained and stopped",
                Shutdown::Forced => "cut off at the end of the grace period",
            };
            ctx.console.event(
                "kubelet",
                format!(
                    "{name}: server on {addr} {how} after {:.1}s; it answered {served} RPCs",
                    started.elapsed().as_secs_f64()
                ),
            );
            ctx.release(&name, &uid).await;
        });
    }

    /// Removes [`FINALIZER`] from pod `name` (if it is still the pod with `uid`), so the pod
    /// can go and kwok can reuse its IP.
    async fn release(&self, name: &str, uid: &str) {
        if let Err(e) = release_finalizer(&self.api, name, uid, FINALIZER).await {
            self.console.event(
                "kubelet",
                format!("{name}: cannot remove its finalizer: {e}"),
            );
        }
    }
}

fn has_finalizer(pod: &Pod) -> bool {
    pod_servers::has_finalizer(pod, FINALIZER)
}

/// The pod's container port named `grpc` (else its first port, else 50051).
fn grpc_port(pod: &Pod) -> u16 {
    let ports: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .collect();
    ports
        .iter()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .or(ports.first())
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(DEFAULT_PORT)
}

/// The longest `preStop` sleep among the pod's containers.
fn pre_stop_sleep(spec: &k8s_openapi::api::core::v1::PodSpec) -> Duration {
    spec.containers
        .iter()
        .filter_map(|c| c.lifecycle.as_ref()?.pre_stop.as_ref()?.sleep.as_ref())
        .filter_map(|s| u64::try_from(s.seconds).ok())
        .max()
        .map(Duration::from_secs)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ports_and_pre_stop_come_from_the_pod_spec() {
        let p = pod(json!({"metadata": {"name": "p", "finalizers": [FINALIZER]},
            "spec": {"containers": [
                {"name": "a", "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 9090}],
                 "lifecycle": {"preStop": {"sleep": {"seconds": 3}}}},
                {"name": "b", "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}}]}}));
        assert_eq!(grpc_port(&p), 9090);
        assert!(has_finalizer(&p));
        assert_eq!(
            pre_stop_sleep(p.spec.as_ref().unwrap()),
            Duration::from_secs(3)
        );

        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "ports": [{"containerPort": 7000}]}]}}));
        assert_eq!(grpc_port(&p), 7000);
        assert!(!has_finalizer(&p));
        assert_eq!(pre_stop_sleep(p.spec.as_ref().unwrap()), Duration::ZERO);

        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}));
        assert_eq!(grpc_port(&p), DEFAULT_PORT);
    }
}
