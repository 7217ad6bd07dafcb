//! A minimal stand-in kubelet for fault tests on a kwok [`Cluster`](crate::Cluster): kwok makes
//! pods Running and Ready but runs nothing, so this runs a Greeter server ([`crate::greeter`])
//! on `<pod IP>:<port>` for every pod of a label selector that has a loopback IP and is not
//! terminating. When a pod terminates (or is gone), its server behaves like a container under a
//! real kubelet: it keeps serving for the `preStop` time, then shuts down gracefully (HTTP/2
//! GOAWAY, in-flight calls finish) and is killed after the grace period. It never waits on etcd
//! or on the operator, so what clients see includes every propagation delay.
//!
//! With a [`Drainer`] ([`PodServers::start_draining`]) the servers also run `grpc.health.v1`
//! and the end of `preStop` triggers the drainer (the SIGTERM equivalent: e.g. the resolver's
//! drain helper sets NOT_SERVING, keeps serving for its drain delay, then shuts down
//! gracefully); [`PodServers::drains`] tells, per stopped server, when it answered its last
//! call relative to that trigger.
//!
//! kwok deletes a terminating pod at once and hands its IP to the next pod, so a test that wants
//! old and new pods on distinct IPs puts [`FINALIZER`] on its pods: the pod then stays
//! Terminating (keeping its IP) until its server has stopped, when this removes the finalizer,
//! as a real kubelet keeps a pod until its containers are gone.
//!
//! Pods are listed every [`EVERY`]; a server is keyed by its address, so a pod that gets the IP
//! of a pod still in its `preStop` simply keeps that server.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::greeter::{Drainer, TestServer, try_serve_draining};

/// The finalizer that holds a pod in Terminating until its server has stopped.
pub const FINALIZER: &str = "registrar.dev/test-kubelet";

/// How often the pods are listed.
pub const EVERY: Duration = Duration::from_millis(100);

/// How a terminating pod's server stops.
#[derive(Debug, Clone, Copy)]
pub struct Termination {
    /// Serving on after the pod started terminating (the `preStop` sleep).
    pub pre_stop: Duration,
    /// After `pre_stop`, how long a graceful shutdown may take before the server is killed.
    pub grace: Duration,
}

struct Entry {
    server: TestServer,
    /// When its pod was first seen terminating or gone.
    leaving: Option<Instant>,
    draining: bool,
}

#[derive(Default)]
struct Shared {
    servers: BTreeMap<SocketAddr, Entry>,
    /// Calls answered by servers already removed.
    served_by_gone: u64,
    /// Servers started so far.
    started: u64,
    /// Per stopped server that was drained: its name and when it answered its last call,
    /// in milliseconds after the drain trigger (negative: before it; `None`: never).
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
    }
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
        Self::start_with(client, namespace, selector, port, termination, None)
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
        Self::start_with(
            client,
            namespace,
            selector,
            port,
            termination,
            Some(drainer),
        )
    }

    fn start_with(
        client: kube::Client,
        namespace: &str,
        selector: &str,
        port: u16,
        termination: Termination,
        drainer: Option<Drainer>,
    ) -> PodServers {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let params = ListParams::default().labels(selector);
        let state = shared.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(EVERY);
            loop {
                ticker.tick().await;
                let Ok(pods) = api.list(&params).await else {
                    continue;
                };
                let wanted: Vec<SocketAddr> = pods
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
                    .filter(|ip: &IpAddr| ip.is_loopback())
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect();
                let names: BTreeMap<SocketAddr, String> = pods
                    .items
                    .iter()
                    .filter_map(|p| {
                        let ip: IpAddr = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
                        Some((SocketAddr::new(ip, port), p.metadata.name.clone()?))
                    })
                    .collect();
                step(&state, &wanted, &names, termination, drainer.as_ref()).await;
                release(&api, &pods.items, &state, port).await;
            }
        });
        PodServers { shared, task }
    }

    /// Addresses whose servers accept calls (serving or in `preStop`).
    pub fn serving(&self) -> Vec<SocketAddr> {
        self.lock()
            .servers
            .iter()
            .filter(|(_, e)| !e.draining)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Calls answered by all servers so far.
    pub fn served(&self) -> u64 {
        let s = self.lock();
        s.served_by_gone + s.servers.values().map(|e| e.server.served()).sum::<u64>()
    }

    /// Servers started so far.
    pub fn started(&self) -> u64 {
        self.lock().started
    }

    /// Per stopped server that was drained: its name and when it answered its last call, in
    /// milliseconds after the drain trigger (negative: before it; `None`: never).
    pub fn drains(&self) -> Vec<(String, Option<f64>)> {
        self.lock().drains.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One reconciliation: start missing servers, move leaving ones through their termination.
async fn step(
    state: &Mutex<Shared>,
    wanted: &[SocketAddr],
    names: &BTreeMap<SocketAddr, String>,
    termination: Termination,
    drainer: Option<&Drainer>,
) {
    let now = Instant::now();
    let missing: Vec<SocketAddr> = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone = Vec::new();
        for (addr, e) in s.servers.iter_mut() {
            if wanted.contains(addr) && !e.draining {
                e.leaving = None;
                continue;
            }
            let since = *e.leaving.get_or_insert(now);
            let elapsed = now - since;
            if elapsed >= termination.pre_stop + termination.grace {
                gone.push(*addr);
            } else if elapsed >= termination.pre_stop && !e.draining {
                e.draining = true;
                e.server.drain();
            }
        }
        for addr in gone {
            if let Some(mut e) = s.servers.remove(&addr) {
                e.server.stop();
                s.served_by_gone += e.server.served();
                if let Some(at) = e.server.drained_at() {
                    let last =
                        e.server
                            .last_served_at()
                            .map(|l| match l.checked_duration_since(at) {
                                Some(after) => after.as_secs_f64() * 1e3,
                                None => -(at - l).as_secs_f64() * 1e3,
                            });
                    s.drains.push((e.server.name().to_string(), last));
                }
            }
        }
        wanted
            .iter()
            .filter(|a| !s.servers.contains_key(a))
            .copied()
            .collect()
    };
    for addr in missing {
        let name = names
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| addr.to_string());
        match try_serve_draining(addr, name, drainer.cloned()).await {
            Ok(server) => {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.started += 1;
                s.servers.insert(
                    addr,
                    Entry {
                        server,
                        leaving: None,
                        draining: false,
                    },
                );
            }
            Err(e) => tracing::warn!(%addr, "stand-in kubelet: cannot serve: {e:#}"),
        }
    }
}

/// Removes [`FINALIZER`] from terminating pods whose server is gone.
async fn release(api: &Api<Pod>, pods: &[Pod], state: &Mutex<Shared>, port: u16) {
    for pod in pods {
        let Some(finalizers) = pod.metadata.finalizers.as_ref() else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER) {
            continue;
        }
        let addr = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, port));
        let serving = addr.is_some_and(|a| {
            state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .servers
                .contains_key(&a)
        });
        let Some(name) = pod.metadata.name.as_deref() else {
            continue;
        };
        if serving {
            continue;
        }
        let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
        let patch = Patch::Merge(serde_json::json!({"metadata": {"finalizers": rest}}));
        if let Err(e) = api.patch(name, &PatchParams::default(), &patch).await {
            tracing::debug!(pod = name, "stand-in kubelet: removing the finalizer: {e}");
        }
    }
}
