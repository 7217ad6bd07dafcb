//! A minimal stand-in kubelet for fault tests on a kwok [`Cluster`](crate::Cluster): kwok makes
//! pods Running and Ready but runs nothing, so this runs a Greeter server ([`crate::greeter`])
//! on `<pod IP>:<port>` for every pod of a label selector that has a loopback IP and is not
//! terminating.
//!
//! It behaves like a real kubelet: it is driven by a pod watch (it learns of a deletion as soon
//! as the API server has it), and when a pod starts terminating (or is gone) its server keeps
//! serving for the `preStop` time, then gets the SIGTERM equivalent ([`TestServer::drain`]),
//! and is killed when the grace period — counted from the deletion, as
//! `terminationGracePeriodSeconds` is — ends, unless it exited on its own before. It never looks
//! at etcd or at the operator, so what clients see includes every propagation delay.
//!
//! What a server does on SIGTERM is its [`OnSigterm`]: by default ([`PodServers::start`]) it
//! starts tonic's graceful shutdown at once (GOAWAY, in-flight calls finish); with a
//! [`Drainer`] ([`PodServers::start_draining`]) the servers also run `grpc.health.v1` and
//! SIGTERM triggers the drainer (e.g. the resolver's drain helper: NOT_SERVING, serving on for
//! its drain delay, then a graceful shutdown); [`OnSigterm::Exit`] is a server without a
//! SIGTERM handler: it dies at once, its connections and in-flight calls with it.
//! [`PodServers::drains`] tells, per stopped server, when it answered its last call relative to
//! its SIGTERM.
//!
//! kwok deletes a terminating pod at once and hands its IP to the next pod, so a test that wants
//! old and new pods on distinct IPs puts [`FINALIZER`] on its pods: the pod then stays
//! Terminating (keeping its IP) until its server has stopped, when this removes the finalizer,
//! as a real kubelet keeps a pod until its containers are gone. A pod that gets the IP of a pod
//! whose server is still terminating gets its server once that one has stopped.
//!
//! The demo (`examples/demo`) has its own stand-in kubelet on the same lifecycle and shares
//! [`release_finalizer`] with this one; it differs where a demo and a test differ: it reads the
//! port, `preStop` and grace period from each pod's spec, runs the workload's
//! [`GracefulServer`](crate::greeter::GracefulServer) on the caller's runtime, narrates every
//! step and keeps stopped servers for its live table. This one takes port and [`Termination`]
//! from the test, runs killable [`TestServer`]s (a kill is a crashed process), lets the test
//! choose [`OnSigterm`] and reports [`PodServers::drains`].

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::greeter::{Drainer, TestServer, try_serve_draining};

/// The finalizer that holds a pod in Terminating until its server has stopped.
pub const FINALIZER: &str = "registrar.dev/test-kubelet";

/// How a terminating pod's server stops.
#[derive(Debug, Clone, Copy)]
pub struct Termination {
    /// Serving on after the pod started terminating, before SIGTERM (the `preStop` sleep).
    pub pre_stop: Duration,
    /// The pod's `terminationGracePeriodSeconds`: counted from the deletion (`preStop`
    /// included, as a kubelet counts it); a server still running then is killed.
    pub grace: Duration,
}

/// What a server does on SIGTERM.
#[derive(Clone)]
pub enum OnSigterm {
    /// tonic's graceful shutdown at once: GOAWAY, no new connections, in-flight calls finish.
    GracefulShutdown,
    /// The drainer runs first (it gets the server's `grpc.health.v1` reporter and the SIGTERM
    /// trigger), then the graceful shutdown.
    Drain(Drainer),
    /// The process exits at once (no SIGTERM handler): listener and connections closed,
    /// in-flight calls lost.
    Exit,
}

struct Entry {
    /// The pod the server runs for.
    uid: String,
    name: String,
    server: TestServer,
    /// The pod is terminating (its termination task runs).
    leaving: bool,
    /// SIGTERM was sent (then).
    sigterm_at: Option<std::time::Instant>,
}

/// A pod (uid, name) waiting for its address to be freed by a terminating server.
type Waiting = BTreeMap<SocketAddr, (String, String)>;

#[derive(Default)]
struct Shared {
    servers: BTreeMap<SocketAddr, Entry>,
    waiting: Waiting,
    /// Calls answered by servers already removed.
    served_by_gone: u64,
    /// Servers started so far.
    started: u64,
    /// Per stopped server that was drained: its name and when it answered its last call,
    /// in milliseconds after SIGTERM (negative: before it; `None`: never).
    drains: Vec<(String, Option<f64>)>,
}

/// The running stand-in kubelet; its servers are killed when it is dropped.
pub struct PodServers {
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl Drop for PodServers {
    fn drop(&mut self) {
        self.task.abort();
        // Kills every server (termination tasks still running find their entry gone).
        lock(&self.shared).servers.clear();
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the watch loop and the termination tasks share.
#[derive(Clone)]
struct Ctx {
    api: Api<Pod>,
    shared: Arc<Mutex<Shared>>,
    port: u16,
    termination: Termination,
    on_sigterm: OnSigterm,
}

impl PodServers {
    /// Runs servers on `port` for the pods in `namespace` matching `selector` (e.g. `app=g`).
    pub fn start(
        client: kube::Client,
        namespace: &str,
        selector: &str,
        port: u16,
        termination: Termination,
    ) -> PodServers {
        Self::start_on_sigterm(
            client,
            namespace,
            selector,
            port,
            termination,
            OnSigterm::GracefulShutdown,
        )
    }

    /// Like [`start`](Self::start), the servers draining with `drainer` (see the module docs).
    pub fn start_draining(
        client: kube::Client,
        namespace: &str,
        selector: &str,
        port: u16,
        termination: Termination,
        drainer: Drainer,
    ) -> PodServers {
        Self::start_on_sigterm(
            client,
            namespace,
            selector,
            port,
            termination,
            OnSigterm::Drain(drainer),
        )
    }

    /// Like [`start`](Self::start), the servers doing `on_sigterm` on SIGTERM.
    pub fn start_on_sigterm(
        client: kube::Client,
        namespace: &str,
        selector: &str,
        port: u16,
        termination: Termination,
        on_sigterm: OnSigterm,
    ) -> PodServers {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let ctx = Ctx {
            api: Api::namespaced(client, namespace),
            shared: shared.clone(),
            port,
            termination,
            on_sigterm,
        };
        let config = watcher::Config::default().labels(selector);
        let task = tokio::spawn(ctx.run(config));
        PodServers { shared, task }
    }

    /// Addresses whose servers accept calls (serving or in `preStop`).
    pub fn serving(&self) -> Vec<SocketAddr> {
        lock(&self.shared)
            .servers
            .iter()
            .filter(|(_, e)| e.sigterm_at.is_none())
            .map(|(a, _)| *a)
            .collect()
    }

    /// Calls answered by all servers so far.
    pub fn served(&self) -> u64 {
        let s = lock(&self.shared);
        s.served_by_gone + s.servers.values().map(|e| e.server.served()).sum::<u64>()
    }

    /// Servers started so far.
    pub fn started(&self) -> u64 {
        lock(&self.shared).started
    }

    /// Per stopped server that was drained: its name and when it answered its last call, in
    /// milliseconds after SIGTERM (negative: before it; `None`: never).
    pub fn drains(&self) -> Vec<(String, Option<f64>)> {
        lock(&self.shared).drains.clone()
    }
}

impl Ctx {
    async fn run(self, config: watcher::Config) {
        let mut events = watcher(self.api.clone(), config).default_backoff().boxed();
        let mut listed: Option<HashSet<String>> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => listed = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(pod)) => {
                    if let (Some(seen), Some(uid)) = (listed.as_mut(), pod.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    self.apply(&pod).await;
                }
                Ok(watcher::Event::InitDone) => {
                    // Pods deleted while the watch was down.
                    if let Some(seen) = listed.take() {
                        let gone: Vec<String> = lock(&self.shared)
                            .servers
                            .values()
                            .filter(|e| !seen.contains(&e.uid))
                            .map(|e| e.uid.clone())
                            .collect();
                        for uid in gone {
                            self.terminate(&uid);
                        }
                    }
                }
                Ok(watcher::Event::Apply(pod)) => self.apply(&pod).await,
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        self.terminate(uid);
                        lock(&self.shared).waiting.retain(|_, (u, _)| u != uid);
                    }
                }
                Err(e) => tracing::debug!("stand-in kubelet: pod watch: {e}"),
            }
        }
    }

    /// The address the pod's server listens on, if it has a loopback IP.
    fn addr(&self, pod: &Pod) -> Option<SocketAddr> {
        let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
        ip.is_loopback().then_some(SocketAddr::new(ip, self.port))
    }

    async fn apply(&self, pod: &Pod) {
        let (Some(uid), Some(name)) = (pod.metadata.uid.as_deref(), pod.metadata.name.as_deref())
        else {
            return;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            let known = lock(&self.shared).servers.values().any(|e| e.uid == uid);
            lock(&self.shared).waiting.retain(|_, (u, _)| u != uid);
            if known {
                self.terminate(uid);
            } else if has_finalizer(pod, FINALIZER) {
                // Never started, or already stopped: nothing holds the pod any more.
                release(&self.api, name, uid).await;
            }
            return;
        }
        let Some(addr) = self.addr(pod) else {
            return;
        };
        {
            let mut s = lock(&self.shared);
            match s.servers.get(&addr) {
                Some(e) if e.uid == uid => return,
                Some(_) => {
                    // The address is still held by a terminating pod's server.
                    s.waiting.insert(addr, (uid.to_string(), name.to_string()));
                    return;
                }
                None => {}
            }
        }
        self.serve(addr, uid, name).await;
    }

    async fn serve(&self, addr: SocketAddr, uid: &str, name: &str) {
        let drainer = match &self.on_sigterm {
            OnSigterm::Drain(drainer) => Some(drainer.clone()),
            OnSigterm::GracefulShutdown | OnSigterm::Exit => None,
        };
        match try_serve_draining(addr, name.to_string(), drainer).await {
            Ok(server) => {
                let mut s = lock(&self.shared);
                s.started += 1;
                s.servers.insert(
                    addr,
                    Entry {
                        uid: uid.to_string(),
                        name: name.to_string(),
                        server,
                        leaving: false,
                        sigterm_at: None,
                    },
                );
            }
            Err(e) => tracing::warn!(%addr, "stand-in kubelet: cannot serve: {e:#}"),
        }
    }

    /// Starts the termination of pod `uid`'s server (see the module docs), once.
    fn terminate(&self, uid: &str) {
        let addr = {
            let mut s = lock(&self.shared);
            let Some((addr, e)) = s.servers.iter_mut().find(|(_, e)| e.uid == uid) else {
                return;
            };
            if e.leaving {
                return;
            }
            e.leaving = true;
            *addr
        };
        let ctx = self.clone();
        tokio::spawn(async move { ctx.run_termination(addr).await });
    }

    /// `preStop`, SIGTERM, wait for the exit up to the grace period, kill; then lets the pod go
    /// and starts a pod waiting for the address.
    async fn run_termination(self, addr: SocketAddr) {
        let deleted = Instant::now();
        let killed_at = deleted + self.termination.grace;
        tokio::time::sleep_until((deleted + self.termination.pre_stop).min(killed_at)).await;
        let exited = {
            let mut s = lock(&self.shared);
            let Some(e) = s.servers.get_mut(&addr) else {
                return;
            };
            e.sigterm_at = Some(std::time::Instant::now());
            match self.on_sigterm {
                OnSigterm::Exit => e.server.stop(),
                OnSigterm::GracefulShutdown | OnSigterm::Drain(_) => e.server.drain(),
            }
            e.server.exited()
        };
        let _ = tokio::time::timeout_at(killed_at, exited).await;
        let (pod, next) = {
            let mut s = lock(&self.shared);
            let Some(mut e) = s.servers.remove(&addr) else {
                return;
            };
            e.server.stop();
            s.served_by_gone += e.server.served();
            if let Some(at) = e.sigterm_at {
                let last = e
                    .server
                    .last_served_at()
                    .map(|l| match l.checked_duration_since(at) {
                        Some(after) => after.as_secs_f64() * 1e3,
                        None => -(at - l).as_secs_f64() * 1e3,
                    });
                s.drains.push((e.server.name().to_string(), last));
            }
            ((e.name, e.uid), s.waiting.remove(&addr))
        };
        release(&self.api, &pod.0, &pod.1).await;
        if let Some((uid, name)) = next {
            self.serve(addr, &uid, &name).await;
        }
    }
}

/// Whether `pod` carries `finalizer`.
pub fn has_finalizer(pod: &Pod, finalizer: &str) -> bool {
    pod.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == finalizer))
}

/// Removes `finalizer` from pod `name` if it is still the pod `uid` and has it (a kubelet
/// letting a pod go once its containers are gone), guarded by the pod's resourceVersion and
/// tried up to 5 times; a pod that is gone or replaced needs nothing. Returns the last error
/// when every try failed.
pub async fn release_finalizer(
    api: &Api<Pod>,
    name: &str,
    uid: &str,
    finalizer: &str,
) -> Result<(), kube::Error> {
    let mut last_error = None;
    for _ in 0..5 {
        let pod = match api.get_opt(name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => return Ok(()),
            Err(e) => {
                last_error = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if pod.metadata.uid.as_deref() != Some(uid) || !has_finalizer(&pod, finalizer) {
            return Ok(());
        }
        let rest: Vec<String> = pod
            .metadata
            .finalizers
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != finalizer)
            .collect();
        let patch = Patch::Merge(serde_json::json!({"metadata": {
            "finalizers": rest,
            "resourceVersion": pod.metadata.resource_version,
        }}));
        match api.patch(name, &PatchParams::default(), &patch).await {
            Ok(_) => return Ok(()),
            // Changed or gone meanwhile: read it again.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => {
                last_error = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    last_error.map_or(Ok(()), Err)
}

/// [`release_finalizer`] of this kubelet's [`FINALIZER`].
async fn release(api: &Api<Pod>, name: &str, uid: &str) {
    if let Err(e) = release_finalizer(api, name, uid, FINALIZER).await {
        tracing::debug!(pod = name, "stand-in kubelet: removing the finalizer: {e}");
    }
}
