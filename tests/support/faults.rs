//! Fixtures of the etcd cluster fault tests (`tests/cluster_faults.rs`): RPC traffic at a
//! bounded rate through a resolver [`Balancer`], a record of every change under the prefix as
//! one etcd member sees it, the keys the Ready pods call for, and which member serves the
//! operator's streams (from the members' own gRPC metrics).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use registrar_resolver::Balancer;
use registrar_testenv::greeter::{GreeterClient, HelloRequest};
use registrar_testenv::{EtcdCluster, PrefixEvent, http_get, poll, watch_prefix};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{DEADLINE, etcd_keys};

/// Deadline of one RPC of [`Traffic`]: longer means failed.
pub const RPC_DEADLINE: Duration = Duration::from_secs(5);

/// What [`Traffic`] saw.
#[derive(Debug, Clone, Default)]
pub struct TrafficStats {
    pub sent: u64,
    pub failed: u64,
    /// The first few failures, with when they happened (since the start).
    pub errors: Vec<String>,
    pub max_latency: Duration,
    /// Answers per backend.
    pub by_backend: BTreeMap<String, u64>,
}

impl std::fmt::Display for TrafficStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} RPCs sent, {} failed, slowest {:.1?}, {} backends answered",
            self.sent,
            self.failed,
            self.max_latency,
            self.by_backend.len()
        )?;
        if !self.errors.is_empty() {
            write!(f, "; first errors: {:?}", self.errors)?;
        }
        Ok(())
    }
}

/// SayHello calls through a [`Balancer`] by a number of callers, each one call at a time, at
/// most `rate` per second in all, each call with [`RPC_DEADLINE`].
pub struct Traffic {
    stats: Arc<Mutex<TrafficStats>>,
    calls: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Traffic {
    /// One caller: at most one call in flight.
    pub fn start(balancer: Balancer, rate: u32) -> Traffic {
        Self::start_callers(balancer, rate, 1)
    }

    /// `callers` concurrent callers (at most that many calls in flight), `rate` per second in
    /// all.
    pub fn start_callers(balancer: Balancer, rate: u32, callers: u32) -> Traffic {
        let stats = Arc::new(Mutex::new(TrafficStats::default()));
        let calls = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let callers = callers.max(1);
        let every = Duration::from_secs(1) * callers / rate.max(1);
        let tasks = (0..callers)
            .map(|i| {
                let (s, c) = (stats.clone(), calls.clone());
                let client = GreeterClient::new(balancer.clone());
                // Spread the callers' ticks over one period.
                let first = started + every * i / callers;
                tokio::spawn(call_loop(client, first, every, started, s, c))
            })
            .collect();
        Traffic {
            stats,
            calls,
            tasks,
        }
    }

    /// What it saw so far.
    pub fn stats(&self) -> TrafficStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `n` more calls have completed (proves traffic flows now).
    pub async fn wait_calls(&self, n: u64) -> Result<()> {
        let target = self.calls.load(Ordering::Relaxed) + n;
        poll(&format!("{n} more RPCs"), DEADLINE, || async {
            (self.calls.load(Ordering::Relaxed) >= target).then_some(())
        })
        .await
    }
}

/// One caller of [`Traffic`]: a call every `every` (or as soon as the last one ended).
async fn call_loop(
    mut client: GreeterClient<Balancer>,
    first: Instant,
    every: Duration,
    started: Instant,
    s: Arc<Mutex<TrafficStats>>,
    c: Arc<AtomicU64>,
) {
    let mut ticker = tokio::time::interval_at(first, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let at = Instant::now();
        let call = client.say_hello(HelloRequest {
            name: "fault".into(),
        });
        let result = tokio::time::timeout(RPC_DEADLINE, call).await;
        let took = at.elapsed();
        let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
        st.sent += 1;
        st.max_latency = st.max_latency.max(took);
        match result {
            Ok(Ok(reply)) => {
                *st.by_backend.entry(reply.into_inner().backend).or_default() += 1;
            }
            failed => {
                st.failed += 1;
                if st.errors.len() < 5 {
                    let why = match failed {
                        Ok(Err(status)) => format!("{status}"),
                        _ => format!("no answer within {RPC_DEADLINE:?}"),
                    };
                    st.errors.push(format!("at {:.1?}: {why}", at - started));
                }
            }
        }
        drop(st);
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every change under the prefix, as the watch of one etcd member delivers it.
pub struct Record {
    rx: UnboundedReceiver<PrefixEvent>,
    events: Vec<PrefixEvent>,
    /// The member watched.
    pub member: usize,
}

impl Record {
    pub async fn start(etcd: &EtcdCluster, member: usize, prefix: &str) -> Result<Record> {
        let client = etcd.member_client(member).await?;
        let rx = watch_prefix(&client, prefix).await?;
        Ok(Record {
            rx,
            events: Vec::new(),
            member,
        })
    }

    /// Everything seen so far.
    pub fn events(&mut self) -> &[PrefixEvent] {
        while let Ok(ev) = self.rx.try_recv() {
            self.events.push(ev);
        }
        &self.events
    }

    /// Keys deleted so far (owner claim excluded), in order.
    pub fn deleted(&mut self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e.delete && !e.key.ends_with("/.owner"))
            .map(|e| e.key.clone())
            .collect()
    }

    /// PUTs seen so far (owner claim excluded).
    pub fn puts(&mut self) -> usize {
        self.events()
            .iter()
            .filter(|e| !e.delete && !e.key.ends_with("/.owner"))
            .count()
    }

    /// Leases the PUTs were made under, in order of first use.
    pub fn put_leases(&mut self) -> Vec<i64> {
        let mut out = Vec::new();
        for e in self.events() {
            if !e.delete && !e.key.ends_with("/.owner") && !out.contains(&e.lease) {
                out.push(e.lease);
            }
        }
        out
    }
}

/// The keys the Ready, not terminating pods of `ns` call for (`<prefix>/<ns>/<service>/<ip>:<port>`).
pub async fn ready_pod_keys(
    client: &kube::Client,
    ns: &str,
    prefix: &str,
    service: &str,
    port: u16,
) -> Result<BTreeSet<String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ready = status
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = status.pod_ip.as_deref()?;
            ready.then(|| format!("{prefix}/{ns}/{service}/{ip}:{port}"))
        })
        .collect())
}

/// Waits until the keys under the prefix are exactly those of the Ready pods; returns them and
/// how long it took.
pub async fn wait_converged(
    kv: &etcd_client::Client,
    client: &kube::Client,
    ns: &str,
    prefix: &str,
) -> Result<(BTreeSet<String>, Duration)> {
    let started = Instant::now();
    let res = poll(
        "etcd to hold exactly the Ready pods' keys",
        DEADLINE,
        || {
            let mut kv = kv.clone();
            async move {
                let want = ready_pod_keys(client, ns, prefix, "greeter", 50051)
                    .await
                    .ok()?;
                let have: BTreeSet<String> =
                    etcd_keys(&mut kv, prefix).await.ok()?.into_keys().collect();
                (have == want).then_some(have)
            }
        },
    )
    .await;
    match res {
        Ok(keys) => Ok((keys, started.elapsed())),
        Err(e) => {
            let want = ready_pod_keys(client, ns, prefix, "greeter", 50051).await?;
            let mut kv = kv.clone();
            let have = etcd_keys(&mut kv, prefix).await?;
            anyhow::bail!("{e}; Ready pods' keys {want:?}, etcd {:?}", have.keys())
        }
    }
}

/// Sum of the samples of `metric` whose labels contain every one of `labels`.
fn sum_of(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The gRPC streams of `service`/`method` (e.g. `etcdserverpb.Lease`, `LeaseKeepAlive`) open on
/// member `i` now, from its `/metrics` (started minus handled).
pub async fn open_streams(
    etcd: &EtcdCluster,
    i: usize,
    service: &str,
    method: &str,
) -> Result<i64> {
    let url = etcd.direct_endpoint(i)?;
    let addr = url.trim_start_matches("http://");
    let (code, text) = http_get(addr, "/metrics").await?;
    anyhow::ensure!(code == 200, "member {i} /metrics answered {code}");
    let service = format!("grpc_service=\"{service}\"");
    let method = format!("grpc_method=\"{method}\"");
    let labels = [service.as_str(), method.as_str()];
    let started = sum_of(&text, "grpc_server_started_total", &labels);
    let handled = sum_of(&text, "grpc_server_handled_total", &labels);
    Ok((started - handled).round() as i64)
}

/// The open streams of a kind on every member (`None` for a member that does not answer).
pub async fn streams_by_member(
    etcd: &EtcdCluster,
    service: &str,
    method: &str,
) -> Vec<Option<i64>> {
    let mut out = Vec::new();
    for i in 0..etcd.len() {
        out.push(open_streams(etcd, i, service, method).await.ok());
    }
    out
}

/// Lease keepalive streams per member.
pub async fn keepalive_streams(etcd: &EtcdCluster) -> Vec<Option<i64>> {
    streams_by_member(etcd, "etcdserverpb.Lease", "LeaseKeepAlive").await
}

/// Watch streams per member.
pub async fn watch_streams(etcd: &EtcdCluster) -> Vec<Option<i64>> {
    streams_by_member(etcd, "etcdserverpb.Watch", "Watch").await
}

/// Whether the Deployment finished rolling out: every replica updated and available, and no
/// other pod left.
pub async fn rolled_out(client: &kube::Client, ns: &str, replicas: i32) -> Option<()> {
    let d = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns)
        .get("greeter")
        .await
        .ok()?;
    let generation = d.metadata.generation?;
    let s = d.status?;
    let done = s.observed_generation? >= generation
        && s.updated_replicas? == replicas
        && s.replicas? == replicas
        && s.available_replicas? == replicas;
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .ok()?;
    (done && pods.items.len() == usize::try_from(replicas).ok()?).then_some(())
}

/// The `greeter` Deployment of the rollout tests: `replicas` pods of the stand-in kubelet's
/// servers, rolled one at a time (maxSurge 1, maxUnavailable 0), each held by [`registrar_testenv::pod_servers::FINALIZER`]
/// until its server stopped.
pub fn deployment(
    replicas: i32,
    grace_s: u64,
) -> anyhow::Result<k8s_openapi::api::apps::v1::Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "greeter"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "g"}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "g"}, "finalizers": [registrar_testenv::pod_servers::FINALIZER]},
                "spec": {
                    "terminationGracePeriodSeconds": grace_s,
                    "containers": [{"name": "greeter", "image": "registrar-demo:dev",
                                    "ports": [{"name": "grpc", "containerPort": 50051}]}]
                }
            }
        }
    }))?)
}
