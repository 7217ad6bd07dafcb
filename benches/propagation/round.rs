//! One round of the benchmark: pods selected by both a Service and a ServiceRegistration, first
//! running with an IP but not Ready, then flipped Ready at once (in one or more waves, each
//! waiting for the previous one to be fully visible); each pod's latency is
//! measured from the instant its Ready patch was sent to the instant its key showed up in an
//! etcd watch (Registrar) and to the instant it showed up as a ready endpoint in an EndpointSlice
//! watch (the peer). Then the same pods are deleted in the same waves (each pod turns
//! terminating: no kubelet confirms the deletion) and each pod's removal is measured from its
//! delete request to its key's deletion in etcd and to its endpoint no longer ready.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use registrar::crd::ServiceRegistration;
use registrar_testenv::poll;
use serde_json::{Value, json};

use crate::common::objects::pod_status;
use crate::observe::{Observer, Sighting, Targets};
use crate::report::{OperatorLatency, Path, PathResult, Round, Stats, SystemResult};
use crate::world::{NODE, PREFIX, World};

/// Port of every pod, the Service and the registration.
const PORT: i32 = 50051;
/// Requests in flight while creating and patching pods.
const IN_FLIGHT: usize = 64;
/// The service (and registration) name in every round's namespace.
const SERVICE: &str = "echo";

/// Pod addresses: IPs in 192.0.2.0/24 (TEST-NET-1; the EndpointSlice controller refuses
/// loopback addresses), made distinct per pod by the pod's port: pod `i` has
/// `192.0.2.(i % 254 + 1)` and a container port named `grpc` numbered `PORT + i / 254`, which
/// the Service, the registration and the EndpointSlice controller all resolve by name. Nothing
/// ever connects to these addresses: the bench's balancer dials every backend on loopback
/// instead, see [`crate::client`].
/// Hosts per port (.1 to .254).
const HOSTS: usize = 254;
/// Ports per round above [`PORT`].
const PORTS: usize = 64;
/// The largest round the addresses allow (one distinct address per pod).
pub const MAX_PODS: usize = PORTS * HOSTS;

/// The IP of pod `i` (`i < MAX_PODS`).
fn pod_ip(i: usize) -> String {
    format!("192.0.2.{}", i % HOSTS + 1)
}

/// The container port of pod `i`.
fn pod_port(i: usize) -> i32 {
    // i < MAX_PODS, so the quotient is < PORTS (64).
    PORT + i32::try_from(i / HOSTS).unwrap_or(0)
}

/// The address (`ip:port`) pod `i` is published under.
fn pod_addr(i: usize) -> String {
    format!("{}:{}", pod_ip(i), pod_port(i))
}

/// Pause between waves. Registrar writes a change at once after a quiet period and batches
/// changes that arrive within its coalescing window (50 ms) of its last write; without a pause,
/// back-to-back waves would measure that window rather than a lone change. (The pause is part
/// of the scenario, not a synchronisation.)
const QUIET: Duration = Duration::from_millis(250);

fn pod_name(i: usize) -> String {
    format!("p-{i}")
}

/// The shape of a round: `waves` consecutive flips of `pods` pods each; a wave starts once the
/// previous one is fully visible to both systems and a quiet period ([`QUIET`]) has passed.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub pods: usize,
    pub waves: usize,
}

impl Plan {
    /// Pods created for the round.
    pub fn total(&self) -> usize {
        self.pods * self.waves
    }
}

/// Runs round number `index` in a fresh namespace.
pub async fn run(world: &mut World, index: usize, plan: Plan) -> Result<Round> {
    let total = plan.total();
    anyhow::ensure!(
        plan.pods >= 1 && (1..=MAX_PODS).contains(&total),
        "a round needs 1..={MAX_PODS} pods in all"
    );
    let client = world.client.clone();
    let ns = format!("bench-{index}-{}x{}", plan.pods, plan.waves);
    say(
        &ns,
        &format!("creating the Service, the registrations and {total} pods"),
    );
    setup(&client, &ns, total).await?;

    let mut observer = Observer::start(Targets {
        kubeconfig: world.cp.kubeconfig().to_path_buf(),
        etcd_endpoint: world.etcd.endpoint(),
        namespace: ns.clone(),
        service: SERVICE.into(),
        prefix: format!("{PREFIX}/{ns}/{SERVICE}/"),
    })
    .await?;
    let mut balancer = crate::client::start(
        world.etcd.endpoint(),
        format!("{PREFIX}/{ns}/{SERVICE}"),
        world.backends.addr(),
    )
    .await?;
    settle(world, &mut observer, &ns, total).await?;

    let mut etcd = world.etcd.client().await?;
    let metrics_before = world.metrics().await?;
    let rev_before = revision(&mut etcd).await?;

    let (sent, flip_time) =
        waves(Path::Ready, world, &ns, plan, &mut observer, &mut balancer).await?;
    let ready_end = Instant::now();
    let rev_after = revision(&mut etcd).await?;
    let metrics_after = world.metrics().await?;
    let ltt = ready_transition_times(&client, &ns).await?;
    say(&ns, "converged; deleting the pods in the same waves");
    // The Ready waves just ended: the first removal wave is a lone change too.
    tokio::time::sleep(QUIET).await;
    let (deleted, _) = waves(
        Path::Removal,
        world,
        &ns,
        plan,
        &mut observer,
        &mut balancer,
    )
    .await?;
    let seen = observer.finish().await?;
    let client_seen = balancer.finish().await?;
    let metrics_removed = world.metrics().await?;
    say(&ns, "removals converged");

    let key_prefix = format!("{PREFIX}/{ns}/{SERVICE}/");
    let pods = Pods {
        plan,
        addrs: (0..total).map(|i| (pod_addr(i), i)).collect(),
        key_prefix: key_prefix.clone(),
    };
    // Where the time goes, per pod, from the bench's own sightings.
    let mut stages: [Vec<Duration>; 4] = Default::default();
    for (i, patch) in sent.iter().enumerate() {
        let addr = pod_addr(i);
        let key = format!("{key_prefix}{addr}");
        let (Some(watched), Some(etcd), Some(resolved), Some(picked)) = (
            seen.pod_ready.get(&pod_name(i)),
            seen.keys.get(&key),
            client_seen.resolved.get(&addr),
            client_seen.picked.get(&addr),
        ) else {
            continue;
        };
        stages[0].push(watched.saturating_duration_since(patch.at));
        stages[1].push(etcd.at.saturating_duration_since(*watched));
        stages[2].push(resolved.saturating_duration_since(etcd.at));
        stages[3].push(picked.saturating_duration_since(*resolved));
    }
    let stages = stages.map(Stats::of);
    let flip_start = sent.iter().map(|s| s.at).min().context("nothing flipped")?;
    let txns = seen.revisions.len();
    let slice_writes = seen
        .slice_writes
        .iter()
        .filter(|t| **t >= flip_start && **t < ready_end)
        .count();
    let ready = pods.result(
        Path::Ready,
        &sent,
        Sightings {
            client: &client_seen.picked,
            etcd: &seen.keys,
            peer: &seen.ready,
        },
        Some(&ltt),
        (txns, slice_writes),
        OperatorLatency::between(&metrics_before, &metrics_after),
    )?;
    let removal = pods.result(
        Path::Removal,
        &deleted,
        Sightings {
            client: &client_seen.unpicked,
            etcd: &seen.gone,
            peer: &seen.unready,
        },
        None,
        (0, 0),
        OperatorLatency::between(&metrics_after, &metrics_removed),
    )?;
    Ok(Round {
        pods: plan.pods,
        waves: plan.waves,
        flip: flip_time,
        ready,
        removal,
        revision_delta: rev_after - rev_before,
        operator_metric_mean: metric_mean(&metrics_before, &metrics_after),
        stages,
        operator_stages: crate::report::STAGES
            .map(|stage| OperatorLatency::of_stage(stage, &metrics_before, &metrics_after)),
    })
}

/// Sends `path`'s requests — Ready patches or deletes — to the round's pods in `plan.waves`
/// waves of `plan.pods`, each wave once the previous one is visible to the observers and the
/// balancer and [`QUIET`] has passed; returns when each request was sent (in pod order) and the
/// longest time a wave took to send.
async fn waves(
    path: Path,
    world: &mut World,
    ns: &str,
    plan: Plan,
    observer: &mut Observer,
    balancer: &mut crate::client::Client,
) -> Result<(Vec<Sent>, Duration)> {
    let total = plan.total();
    let deadline = Duration::from_secs(30) + Duration::from_millis(100) * plan.pods as u32;
    let (what, what_picked) = match path {
        Path::Ready => (
            "every key in etcd and every endpoint ready",
            "every backend in the pick set",
        ),
        Path::Removal => (
            "every key deleted and every endpoint no longer ready",
            "every removed backend out of the pick set",
        ),
    };
    let mut sent = Vec::with_capacity(total);
    let mut longest = Duration::ZERO;
    for wave in 0..plan.waves {
        if path == Path::Ready && (wave == 0 || wave + 1 == plan.waves) {
            say(
                ns,
                &format!(
                    "wave {}/{}: flipping {} pods Ready",
                    wave + 1,
                    plan.waves,
                    plan.pods
                ),
            );
        }
        if wave > 0 {
            tokio::time::sleep(QUIET).await;
        }
        let first = wave * plan.pods;
        let started = Instant::now();
        sent.extend(send(path, &world.client, ns, first..first + plan.pods).await?);
        longest = longest.max(started.elapsed());
        let done = first + plan.pods;
        let converged = observer
            .wait(what, deadline, |p| match path {
                Path::Ready => p.keys >= done && p.ready >= done,
                Path::Removal => p.gone >= done && p.ready <= total - done,
            })
            .await;
        let converged = match converged {
            Ok(_) => {
                balancer
                    .wait(what_picked, deadline, |p| match path {
                        Path::Ready => p.picked >= done,
                        Path::Removal => p.picked <= total - done,
                    })
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = converged {
            world.check_alive()?;
            return Err(e);
        }
    }
    Ok((sent, longest))
}

/// What the observers saw on one path, first time each: the client per backend address
/// (in or out of the pick set), the etcd watch per key (put or deleted), the peer per pod name
/// (ready endpoint or no longer).
struct Sightings<'a> {
    client: &'a HashMap<String, Instant>,
    etcd: &'a HashMap<String, Sighting>,
    peer: &'a HashMap<String, Sighting>,
}

/// The pods of a round, found again by what the observers know them by.
struct Pods {
    plan: Plan,
    /// Pod index by address (`ip:port`).
    addrs: HashMap<String, usize>,
    /// The round's target prefix, with its trailing '/'.
    key_prefix: String,
}

impl Pods {
    fn by_addr(&self, addr: &str) -> Result<usize> {
        self.addrs
            .get(addr)
            .copied()
            .with_context(|| format!("unknown address {addr}"))
    }

    fn by_key(&self, key: &str) -> Result<usize> {
        let addr = key
            .strip_prefix(&self.key_prefix)
            .with_context(|| format!("unexpected key {key}"))?;
        self.by_addr(addr)
    }

    /// The index of pod `p-<i>` (`i <` the round's pods).
    fn by_name(&self, pod: &str) -> Result<usize> {
        pod.strip_prefix("p-")
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < self.plan.total())
            .with_context(|| format!("unexpected endpoint {pod}"))
    }

    /// Each system's figures on `path`: per pod from its request (`requests[i]`) to its
    /// sighting, and from its Ready `lastTransitionTime` (`ltt`, when given); `writes` are
    /// Registrar's and the peer's. Fails unless every system saw every pod.
    fn result(
        &self,
        path: Path,
        requests: &[Sent],
        seen: Sightings<'_>,
        ltt: Option<&HashMap<String, SystemTime>>,
        writes: (usize, usize),
        operator: Option<OperatorLatency>,
    ) -> Result<PathResult> {
        let ltt_of = |i: usize| ltt.and_then(|l| l.get(&pod_name(i)));
        let mut pick = Samples::new(self.plan);
        for (addr, at) in seen.client {
            let i = self.by_addr(addr)?;
            pick.add(i, &requests[i], *at, SystemTime::now(), None);
        }
        let mut registrar = Samples::new(self.plan);
        for (key, s) in seen.etcd {
            let i = self.by_key(key)?;
            registrar.add(i, &requests[i], s.at, s.wall, ltt_of(i));
        }
        let mut peer = Samples::new(self.plan);
        for (pod, s) in seen.peer {
            let i = self.by_name(pod)?;
            peer.add(i, &requests[i], s.at, s.wall, ltt_of(i));
        }
        let result = PathResult {
            pick: pick.result(0)?,
            registrar: registrar.result(writes.0)?,
            peer: peer.result(writes.1)?,
            operator,
        };
        let total = self.plan.total();
        let counts = [&result.pick, &result.registrar, &result.peer].map(|s| s.from_patch.count);
        anyhow::ensure!(
            counts == [total; 3],
            "{path:?} waves: measured {} backends in the pick set or out of it, {} keys put or \
             deleted and {} endpoints (no longer) ready for {total} pods",
            counts[0],
            counts[1],
            counts[2]
        );
        Ok(result)
    }
}

fn say(ns: &str, what: &str) {
    println!("[bench] {ns}: {what}");
}

/// Per-pod latencies of one system, and per wave its first patch and last sighting.
struct Samples {
    plan: Plan,
    from_patch: Vec<Duration>,
    from_ltt: Vec<Duration>,
    waves: Vec<Option<(Instant, Instant)>>,
}

impl Samples {
    fn new(plan: Plan) -> Self {
        Samples {
            plan,
            from_patch: Vec::new(),
            from_ltt: Vec::new(),
            waves: vec![None; plan.waves],
        }
    }

    fn add(
        &mut self,
        i: usize,
        sent: &Sent,
        at: Instant,
        wall: SystemTime,
        ltt: Option<&SystemTime>,
    ) {
        self.from_patch.push(at.saturating_duration_since(sent.at));
        if let Some(ltt) = ltt {
            self.from_ltt
                .push(wall.duration_since(*ltt).unwrap_or(Duration::ZERO));
        }
        if let Some(w) = self.waves.get_mut(i / self.plan.pods) {
            *w = Some(w.map_or((sent.at, at), |(s, l)| (s.min(sent.at), l.max(at))));
        }
    }

    /// `writes` counts the whole round; convergence is the slowest wave's.
    fn result(self, writes: usize) -> Result<SystemResult> {
        Ok(SystemResult {
            from_patch: Stats::of(self.from_patch).context("no samples")?,
            from_ltt: Stats::of(self.from_ltt),
            converge: self
                .waves
                .iter()
                .flatten()
                .map(|(s, l)| l.saturating_duration_since(*s))
                .max()
                .unwrap_or_default(),
            writes,
        })
    }
}

/// When a pod's Ready patch was sent.
struct Sent {
    at: Instant,
}

async fn setup(client: &kube::Client, ns: &str, n: usize) -> Result<()> {
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": SERVICE},
        "spec": {"selector": {"app": SERVICE},
                 "ports": [{"name": "grpc", "port": PORT, "targetPort": "grpc"}]},
    }))?;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &service)
        .await?;
    let regs: Api<ServiceRegistration> = Api::namespaced(client.clone(), ns);
    for name in [SERVICE, "sentinel"] {
        let reg: ServiceRegistration = serde_json::from_value(json!({
            "apiVersion": "registrar.dev/v1alpha1", "kind": "ServiceRegistration",
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": name}}, "port": "grpc"},
        }))?;
        regs.create(&PostParams::default(), &reg).await?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(pod(&pod_name(i), SERVICE, pod_port(i)))?;
                pods.create(&PostParams::default(), &pod).await?;
                pods.patch_status(
                    &pod_name(i),
                    &PatchParams::default(),
                    &Patch::Merge(pod_status(&pod_ip(i), false)),
                )
                .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await
}

/// Waits until both systems have caught up with the not-ready pods: every pod is a (not ready)
/// endpoint in the Service's slices, and Registrar has published a sentinel pod that became
/// Ready after all of them (it watches all pods in one ordered stream, so it has seen them all).
async fn settle(world: &World, observer: &mut Observer, ns: &str, n: usize) -> Result<()> {
    let deadline = Duration::from_secs(30) + Duration::from_millis(100) * n as u32;
    observer
        .wait("every pod listed as a not-ready endpoint", deadline, |p| {
            p.endpoints >= n && p.ready == 0
        })
        .await?;
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), ns);
    let sentinel: Pod = serde_json::from_value(pod("sentinel", "sentinel", PORT))?;
    pods.create(&PostParams::default(), &sentinel).await?;
    pods.patch_status(
        "sentinel",
        &PatchParams::default(),
        &Patch::Merge(pod_status(&pod_ip(0), true)),
    )
    .await?;
    let etcd = world.etcd.client().await?;
    let prefix = format!("{PREFIX}/{ns}/sentinel/");
    poll("the sentinel's key in etcd", deadline, || {
        let mut etcd = etcd.clone();
        let prefix = prefix.clone();
        async move {
            let resp = etcd
                .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .ok()?;
            (!resp.kvs().is_empty()).then_some(())
        }
    })
    .await
}

/// Sends `path`'s request to pods `range` at once (bounded concurrency): a Ready patch, or a
/// delete (each pod turns terminating, since no kubelet confirms it); records when each was
/// sent and returns them in index order.
async fn send(
    path: Path,
    client: &kube::Client,
    ns: &str,
    range: std::ops::Range<usize>,
) -> Result<Vec<Sent>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut sent: Vec<(usize, Sent)> = futures::stream::iter(range)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let at = match path {
                    Path::Ready => {
                        let body = pod_status(&pod_ip(i), true);
                        let at = Instant::now();
                        pods.patch_status(
                            &pod_name(i),
                            &PatchParams::default(),
                            &Patch::Merge(body),
                        )
                        .await?;
                        at
                    }
                    Path::Removal => {
                        let at = Instant::now();
                        pods.delete(&pod_name(i), &DeleteParams::default()).await?;
                        at
                    }
                };
                anyhow::Ok((i, Sent { at }))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    sent.sort_by_key(|(i, _)| *i);
    Ok(sent.into_iter().map(|(_, s)| s).collect())
}

fn pod(name: &str, app: &str, port: i32) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "example.invalid/app",
                 "ports": [{"name": "grpc", "containerPort": port}]}]},
    })
}

/// The Ready condition's `lastTransitionTime` of every pod in `ns`, as the API server stored it
/// (one-second resolution).
async fn ready_transition_times(
    client: &kube::Client,
    ns: &str,
) -> Result<HashMap<String, SystemTime>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={SERVICE}")))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| {
            let name = p.metadata.name?;
            let t = p
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "Ready")?
                .last_transition_time?;
            Some((name, SystemTime::from(t.0)))
        })
        .collect())
}

async fn revision(etcd: &mut etcd_client::Client) -> Result<i64> {
    etcd.get(
        format!("{PREFIX}/"),
        Some(
            etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only(),
        ),
    )
    .await?
    .header()
    .map(|h| h.revision())
    .context("etcd response without a header")
}

fn counter_delta(before: &str, after: &str, series: &str) -> Option<f64> {
    Some(
        crate::common::operator::sample(after, series)?
            - crate::common::operator::sample(before, series)?,
    )
}

/// Mean of the operator's own propagation histogram over the round (etcd commit minus the
/// pods' `lastTransitionTime`), in seconds.
fn metric_mean(before: &str, after: &str) -> Option<f64> {
    let sum = counter_delta(before, after, "registrar_propagation_latency_seconds_sum")?;
    let count = counter_delta(before, after, "registrar_propagation_latency_seconds_count")?;
    (count > 0.0).then(|| sum / count)
}
