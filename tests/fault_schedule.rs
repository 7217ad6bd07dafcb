//! The model check: two operator replicas (leader election) against a real kube-apiserver and
//! etcd while a seeded driver applies a random schedule of changes and faults, and the
//! invariants of DESIGN §5 are checked throughout.
//!
//! Each round applies a few random steps — pod readiness flips, scale up and down, a rollout,
//! registration create/update/delete, etcd killed (SIGKILL) and restarted, etcd wiped,
//! kube-apiserver restarted, one operator replica killed (SIGKILL) and restarted, the lease
//! revoked behind the operator's back, a key deleted or altered by hand — then waits (polling,
//! up to lease TTL + 5 s) for the quiet state. An etcd watch from a separate client (the test
//! ground's [`Recorder`]) records every event. Checked:
//! - never a DELETE of a key whose pod was Ready, selected and registered for the whole time
//!   around it ([`GUARD`] before the delete was seen), except the deletes the driver made itself
//!   (revoke, delete by hand; a wipe makes no events);
//! - after each round: etcd holds exactly the keys and values that the operator's own pure
//!   function ([`registrar::desired`]) computes from the API server's current objects, every key
//!   on one lease, and every registration's status counts its endpoints;
//! - at the end: both replicas alive, their open fds and RSS bounded, and their task count
//!   (`registrar_tasks`) within a few of what it was once the first state settled (printed).
//!
//! The run is one seed (`REGISTRAR_FAULT_SEED`, random by default; printed first and on
//! failure): the same seed replays the same schedule. `REGISTRAR_FAULT_ROUNDS` (default 20)
//! sets the length; the opt-in soak runs 200 rounds: `cargo test --test fault_schedule --
//! --ignored`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use registrar::crd::ServiceRegistration;
use registrar::desired;
use registrar_testenv::seeded::SeededRng;
use registrar_testenv::{RecordOptions, Recorded, Recorder, poll};
use serde_json::json;
use support::*;

/// Leader-election lease duration, seconds.
const LEASE_DURATION: u64 = 2;
/// etcd lease TTL: the chart's rule `ttl >= 1.5 x (lease duration + 2 s)`.
const ETCD_TTL: u64 = 6;
/// A delete is a violation only if its key was wanted for this long before the delete was seen
/// (the watch delivers within milliseconds; this absorbs the driver's own step latency).
const GUARD: Duration = Duration::from_secs(2);
/// The services, each selecting pods labelled `app: <service>`.
const SERVICES: [&str; 3] = ["alpha", "beta", "gamma"];

/// What the driver has asked for: the model the delete invariant is checked against.
#[derive(Clone)]
struct PodModel {
    service: &'static str,
    ip: String,
    ready: bool,
}

#[derive(Clone)]
struct RegModel {
    port: u16,
    version: u32,
}

/// One interval in which a key was wanted by the model: `[from, to)`.
#[derive(Clone, Copy)]
struct Wanted {
    from: Instant,
    to: Option<Instant>,
}

#[derive(Default)]
struct Model {
    pods: BTreeMap<String, PodModel>,
    regs: BTreeMap<&'static str, RegModel>,
    /// Per key, the intervals in which the model wanted it.
    wanted: BTreeMap<String, Vec<Wanted>>,
    next_pod: u32,
}

impl Model {
    fn keys(&self, g: &Ground) -> BTreeSet<String> {
        self.pods
            .values()
            .filter(|p| p.ready)
            .filter_map(|p| {
                let reg = self.regs.get(p.service)?;
                Some(g.key(p.service, &format!("{}:{}", p.ip, reg.port)))
            })
            .collect()
    }

    /// Records the wanted set after a step that changed the model.
    fn settle(&mut self, g: &Ground, at: Instant) {
        let now = self.keys(g);
        for (key, spans) in &mut self.wanted {
            if let Some(open) = spans.last_mut().filter(|s| s.to.is_none())
                && !now.contains(key)
            {
                open.to = Some(at);
            }
        }
        for key in now {
            let spans = self.wanted.entry(key).or_default();
            if spans.last().is_none_or(|s| s.to.is_some()) {
                spans.push(Wanted { from: at, to: None });
            }
        }
    }

    /// Whether `key` was wanted over the whole of `[from, to]`.
    fn wanted_throughout(&self, key: &str, from: Instant, to: Instant) -> bool {
        self.wanted.get(key).is_some_and(|spans| {
            spans
                .iter()
                .any(|s| s.from <= from && s.to.is_none_or(|end| end > to))
        })
    }
}

/// A step of the schedule.
#[derive(Clone, Copy, Debug)]
enum Step {
    Flip,
    ScaleUp,
    ScaleDown,
    Rollout,
    RegCreate,
    RegUpdate,
    RegDelete,
    EtcdKill,
    EtcdWipe,
    ApiserverRestart,
    OperatorKill,
    LeaseRevoke,
    KeyDelete,
    KeyAlter,
}

/// Steps with their weights (a seeded pick): changes are common, faults rarer.
const STEPS: [(Step, u64); 14] = [
    (Step::Flip, 10),
    (Step::ScaleUp, 6),
    (Step::ScaleDown, 3),
    (Step::Rollout, 3),
    (Step::RegCreate, 3),
    (Step::RegUpdate, 3),
    (Step::RegDelete, 2),
    (Step::EtcdKill, 2),
    (Step::EtcdWipe, 1),
    (Step::ApiserverRestart, 1),
    (Step::OperatorKill, 2),
    (Step::LeaseRevoke, 1),
    (Step::KeyDelete, 2),
    (Step::KeyAlter, 2),
];

/// A delete the driver made: every delete event at `revision` (of `key` only, when set) seen
/// within [`OWN`] after `sent`. (A revoke deletes all keys of its lease in one revision; the
/// time window keeps a revision number reused after a wipe from matching.)
struct OwnDelete {
    revision: i64,
    key: Option<String>,
    sent: Instant,
}

/// How long after the driver's own delete its events may arrive.
const OWN: Duration = Duration::from_secs(10);

impl OwnDelete {
    fn covers(&self, seen: &Recorded) -> bool {
        seen.revision == self.revision
            && self.key.as_ref().is_none_or(|k| *k == seen.key)
            && seen.at >= self.sent
            && seen.at <= self.sent + OWN
    }
}

/// The world of one run.
struct World {
    g: Ground,
    ops: [Option<Operator>; 2],
    model: Model,
    /// The deletes the driver made itself (revoke, delete by hand).
    own_deletes: Vec<OwnDelete>,
    counts: BTreeMap<String, u32>,
}

fn replica(g: &Ground, identity: &str) -> OperatorOptions {
    let mut o = g.options();
    o.lease_ttl = ETCD_TTL;
    o.extra = vec![
        "--leader-elect=true".into(),
        format!("--leader-election-lease-duration={LEASE_DURATION}"),
        format!("--leader-election-namespace={}", g.ns),
        "--leader-election-lease-name=registrar".into(),
        format!("--identity={identity}"),
    ];
    o
}

/// Retries an API call through an API server restart.
async fn api<T, F, Fut>(what: &str, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    poll(what, DEADLINE, || async { f().await.ok() })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

impl World {
    fn reg_spec(service: &str, reg: &RegModel) -> serde_json::Value {
        json!({"selector": {"matchLabels": {"app": service}}, "port": reg.port,
               "metadata": {"version": format!("v{}", reg.version)}})
    }

    async fn add_pod(&mut self, service: &'static str, ready: bool) {
        self.model.next_pod += 1;
        let n = self.model.next_pod;
        let name = format!("{service}-{n}");
        let ip = format!("127.21.{}.{}", n / 250, n % 250 + 1);
        let (client, ns) = (self.g.client.clone(), self.g.ns.clone());
        api(&format!("create pod {name}"), || {
            create_pod(&client, &ns, &name, json!({"app": service}), 50051)
        })
        .await;
        api(&format!("status of {name}"), || {
            set_ready(&client, &ns, &name, &ip, ready)
        })
        .await;
        self.model
            .pods
            .insert(name, PodModel { service, ip, ready });
    }

    async fn delete_pod(&mut self, name: &str) {
        let pods: Api<Pod> = Api::namespaced(self.g.client.clone(), &self.g.ns);
        // The model stops wanting the key when the delete is sent.
        self.model.pods.remove(name);
        self.model.settle(&self.g, Instant::now());
        api(&format!("delete pod {name}"), || async {
            match pods
                .delete(name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await;
    }

    async fn create_registration(&mut self, service: &'static str) {
        let (client, ns) = (self.g.client.clone(), self.g.ns.clone());
        let reg = RegModel {
            port: 50051,
            version: 1,
        };
        let spec = Self::reg_spec(service, &reg);
        api(&format!("create {service}"), || async {
            match create_reg(&client, &ns, service, spec.clone()).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("already exists") => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await;
        self.model.regs.insert(service, reg);
        self.model.settle(&self.g, Instant::now());
    }

    async fn step(&mut self, step: Step, rng: &mut SeededRng) {
        *self.counts.entry(format!("{step:?}")).or_default() += 1;
        let (client, ns) = (self.g.client.clone(), self.g.ns.clone());
        match step {
            Step::Flip => {
                let names: Vec<String> = self.model.pods.keys().cloned().collect();
                let Some(name) = rng.pick(&names).cloned() else {
                    return;
                };
                let Some(pod) = self.model.pods.get_mut(&name) else {
                    return;
                };
                pod.ready = !pod.ready;
                let (ip, ready) = (pod.ip.clone(), pod.ready);
                if !ready {
                    self.model.settle(&self.g, Instant::now());
                }
                api(&format!("flip {name}"), || {
                    set_ready(&client, &ns, &name, &ip, ready)
                })
                .await;
                if ready {
                    self.model.settle(&self.g, Instant::now());
                }
            }
            Step::ScaleUp => {
                let service = *rng.pick(&SERVICES).unwrap_or(&SERVICES[0]);
                let ready = rng.below(4) != 0;
                self.add_pod(service, ready).await;
                self.model.settle(&self.g, Instant::now());
            }
            Step::ScaleDown => {
                let names: Vec<String> = self.model.pods.keys().cloned().collect();
                if let Some(name) = rng.pick(&names).cloned() {
                    self.delete_pod(&name).await;
                }
            }
            Step::Rollout => {
                // Surge one new Ready pod per old pod of one service, then delete the old.
                let service = *rng.pick(&SERVICES).unwrap_or(&SERVICES[0]);
                let old: Vec<String> = self
                    .model
                    .pods
                    .iter()
                    .filter(|(_, p)| p.service == service)
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in old {
                    self.add_pod(service, true).await;
                    self.model.settle(&self.g, Instant::now());
                    self.delete_pod(&name).await;
                }
            }
            Step::RegCreate => {
                let missing: Vec<&'static str> = SERVICES
                    .iter()
                    .copied()
                    .filter(|s| !self.model.regs.contains_key(s))
                    .collect();
                if let Some(service) = rng.pick(&missing).copied() {
                    self.create_registration(service).await;
                }
            }
            Step::RegUpdate => {
                let present: Vec<&'static str> = self.model.regs.keys().copied().collect();
                let Some(service) = rng.pick(&present).copied() else {
                    return;
                };
                let Some(reg) = self.model.regs.get_mut(service) else {
                    return;
                };
                // Half of the updates move the port (every key changes), half the metadata.
                if rng.below(2) == 0 {
                    reg.port = if reg.port == 50051 { 50052 } else { 50051 };
                } else {
                    reg.version += 1;
                }
                let spec = Self::reg_spec(service, reg);
                self.model.settle(&self.g, Instant::now());
                api(&format!("update {service}"), || {
                    patch_reg(&client, &ns, service, spec.clone())
                })
                .await;
                self.model.settle(&self.g, Instant::now());
            }
            Step::RegDelete => {
                let present: Vec<&'static str> = self.model.regs.keys().copied().collect();
                let Some(service) = rng.pick(&present).copied() else {
                    return;
                };
                self.model.regs.remove(service);
                self.model.settle(&self.g, Instant::now());
                let regs: Api<ServiceRegistration> = Api::namespaced(client.clone(), &ns);
                api(&format!("delete {service}"), || async {
                    match regs.delete(service, &DeleteParams::default()).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                        Err(e) => Err(e.into()),
                    }
                })
                .await;
                // The finalizer is released once its keys are gone; wait, so that a later
                // create of the same name is not refused as "being deleted".
                api(&format!("{service} gone"), || async {
                    match regs.get_opt(service).await? {
                        None => Ok(()),
                        Some(_) => anyhow::bail!("still there"),
                    }
                })
                .await;
            }
            Step::EtcdKill => {
                let down = Duration::from_millis(200 + rng.below(1800));
                self.g.etcd.stop().await.expect("kill etcd");
                tokio::time::sleep(down).await;
                self.g.etcd.restart().await.expect("restart etcd");
                self.g.kv = self.g.etcd.client().await.expect("etcd client");
            }
            Step::EtcdWipe => {
                self.g.etcd.wipe().await.expect("wipe etcd");
                self.g.kv = self.g.etcd.client().await.expect("etcd client");
            }
            Step::ApiserverRestart => {
                self.g
                    .cp
                    .restart_apiserver()
                    .await
                    .expect("restart kube-apiserver");
            }
            Step::OperatorKill => {
                let i = rng.below(2) as usize;
                if let Some(mut op) = self.ops[i].take() {
                    op.process.kill();
                }
                let opts = replica(&self.g, if i == 0 { "op-a" } else { "op-b" });
                let op = Operator::start(&self.g.cp, &self.g.etcd, &opts)
                    .await
                    .expect("restart the operator");
                self.ops[i] = Some(op);
            }
            Step::LeaseRevoke => {
                let leases = leases_under(&self.g.kv, &self.g.prefix)
                    .await
                    .unwrap_or_default();
                let mut kv = self.g.kv.clone();
                for lease in leases.into_iter().filter(|l| *l != 0) {
                    let sent = Instant::now();
                    if let Ok(resp) = kv.lease_revoke(lease).await
                        && let Some(h) = resp.header()
                    {
                        self.own_deletes.push(OwnDelete {
                            revision: h.revision(),
                            key: None,
                            sent,
                        });
                    }
                }
            }
            Step::KeyDelete | Step::KeyAlter => {
                let mut kv = self.g.kv.clone();
                let keys: Vec<String> = etcd_keys(&mut kv, &self.g.prefix)
                    .await
                    .unwrap_or_default()
                    .into_keys()
                    .collect();
                let Some(key) = rng.pick(&keys).cloned() else {
                    return;
                };
                if matches!(step, Step::KeyDelete) {
                    let sent = Instant::now();
                    if let Ok(resp) = kv.delete(key.as_str(), None).await
                        && let Some(h) = resp.header()
                    {
                        self.own_deletes.push(OwnDelete {
                            revision: h.revision(),
                            key: Some(key.clone()),
                            sent,
                        });
                    }
                } else {
                    let _ = kv
                        .put(key.as_str(), r#"{"Op":0,"Addr":"tampered"}"#, None)
                        .await;
                }
            }
        }
    }

    /// What the operator's pure function wants in etcd, from the API server's objects now.
    async fn desired_now(
        &self,
    ) -> anyhow::Result<(BTreeMap<String, String>, BTreeMap<String, i64>)> {
        let regs: Api<ServiceRegistration> = Api::namespaced(self.g.client.clone(), &self.g.ns);
        let pods: Api<Pod> = Api::namespaced(self.g.client.clone(), &self.g.ns);
        let regs = regs.list(&ListParams::default()).await?.items;
        let pods = pods.list(&ListParams::default()).await?.items;
        let outcomes: Vec<_> = regs
            .iter()
            .map(|r| desired::registration_outcome(&self.g.prefix, r, &pods))
            .collect();
        let counts = regs
            .iter()
            .zip(&outcomes)
            .filter(|(r, _)| r.metadata.deletion_timestamp.is_none())
            .map(|(r, o)| {
                let status = r.status.as_ref().map(|s| s.ready_endpoints).unwrap_or(-1);
                (
                    r.metadata.name.clone().unwrap_or_default(),
                    status - o.endpoints.len() as i64,
                )
            })
            .collect();
        Ok((desired::desired_keys(&self.g.prefix, &outcomes), counts))
    }

    /// Waits for the quiet state; returns how long it took and the number of keys.
    async fn converged(&self) -> Result<(Duration, usize), String> {
        let start = Instant::now();
        let deadline = Duration::from_secs(ETCD_TTL + 5);
        let mut last = String::new();
        while start.elapsed() < deadline {
            match self.quiet_state().await {
                Ok(keys) => return Ok((start.elapsed(), keys)),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    async fn quiet_state(&self) -> Result<usize, String> {
        let (want, status_diff) = self.desired_now().await.map_err(|e| e.to_string())?;
        let mut kv = self.g.kv.clone();
        let have = etcd_keys(&mut kv, &self.g.prefix)
            .await
            .map_err(|e| e.to_string())?;
        if have != want {
            let missing: Vec<_> = want.keys().filter(|k| !have.contains_key(*k)).collect();
            let extra: Vec<_> = have.keys().filter(|k| !want.contains_key(*k)).collect();
            let wrong: Vec<_> = want
                .iter()
                .filter(|(k, v)| have.get(*k).is_some_and(|h| h != *v))
                .map(|(k, _)| k)
                .collect();
            return Err(format!(
                "etcd differs from the desired state: missing {missing:?}, extra {extra:?}, wrong value {wrong:?}"
            ));
        }
        let leases = leases_under(&self.g.kv, &self.g.prefix)
            .await
            .map_err(|e| e.to_string())?;
        if !want.is_empty() && (leases.len() != 1 || leases[0] == 0) {
            return Err(format!("keys on leases {leases:?}, want exactly one"));
        }
        if let Some((name, diff)) = status_diff.iter().find(|(_, d)| **d != 0) {
            return Err(format!("status of {name} is off by {diff} endpoints"));
        }
        Ok(have.len())
    }

    /// The deletes among `seen` that the invariant forbids.
    fn forbidden_deletes(&self, seen: &[Recorded]) -> Vec<String> {
        seen.iter()
            .filter(|s| s.delete && !self.own_deletes.iter().any(|o| o.covers(s)))
            .filter(|s| {
                let since = s.gap.unwrap_or(s.at).checked_sub(GUARD).unwrap_or(s.at);
                self.model.wanted_throughout(&s.key, since, s.at)
            })
            .map(|s| format!("{} (revision {})", s.key, s.revision))
            .collect()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

fn rss_and_fds(op: &Operator) -> (u64, usize) {
    let pid = op.process.pid();
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

async fn run(rounds: u64) {
    let seed = env_u64("REGISTRAR_FAULT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!(
        "fault schedule: seed {seed} (replay with REGISTRAR_FAULT_SEED={seed}), {rounds} rounds"
    );
    let mut rng = SeededRng::new(seed);
    let g = Ground::new().await.expect("test ground");
    let a = Operator::start(&g.cp, &g.etcd, &replica(&g, "op-a"))
        .await
        .expect("operator a");
    let b = Operator::start(&g.cp, &g.etcd, &replica(&g, "op-b"))
        .await
        .expect("operator b");
    // Every event from etcd's first revision on, through restarts and wipes.
    let recorder = Recorder::start(
        g.etcd.endpoint(),
        g.prefix.clone(),
        RecordOptions::default(),
    );
    let mut w = World {
        g,
        ops: [Some(a), Some(b)],
        model: Model::default(),
        own_deletes: Vec::new(),
        counts: BTreeMap::new(),
    };
    for service in SERVICES {
        w.create_registration(service).await;
        for _ in 0..2 {
            w.add_pod(service, true).await;
        }
    }
    w.model.settle(&w.g, Instant::now());
    let first = w.converged().await;
    assert!(
        first.is_ok(),
        "seed {seed}: initial state never converged: {first:?}"
    );
    // The operator's own task count (leader or standby) once settled: the baseline for leaks.
    let mut baseline = 0.0f64;
    for op in w.ops.iter().flatten() {
        baseline = baseline.max(op.metric("registrar_tasks").await.unwrap_or(0.0));
    }

    let mut converge = Vec::new();
    let mut checked = 0;
    let mut published = Vec::new();
    let started = Instant::now();
    for round in 0..rounds {
        let steps = 2 + rng.below(5);
        let mut done = Vec::new();
        for _ in 0..steps {
            let step = rng.weighted(&STEPS).unwrap_or(Step::Flip);
            done.push(step);
            w.step(step, &mut rng).await;
            tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        }
        let took = w.converged().await;
        let events = recorder.events_after(checked);
        checked += events.len();
        let bad = w.forbidden_deletes(&events);
        assert!(
            bad.is_empty(),
            "seed {seed}, round {round} ({done:?}): deleted while Ready: {bad:?}"
        );
        match took {
            Ok((t, keys)) => {
                converge.push(t);
                published.push(keys);
            }
            Err(e) => {
                panic!("seed {seed}, round {round} ({done:?}): not converged within TTL + 5 s: {e}")
            }
        }
    }
    let events = recorder.recording().events;
    converge.sort();
    let p = |q: f64| converge[((converge.len() - 1) as f64 * q) as usize];
    eprintln!(
        "fault schedule: seed {seed}: {rounds} rounds in {:.1} s, steps {:?}; etcd events seen {} ({} deletes, {} by the driver); converged p50 {:?}, max {:?}; keys when quiet {:?}; 0 violations",
        started.elapsed().as_secs_f64(),
        w.counts,
        events.len(),
        events.iter().filter(|e| e.delete).count(),
        w.own_deletes.len(),
        p(0.5),
        p(1.0),
        published,
    );
    for (i, op) in w.ops.iter_mut().enumerate() {
        let op = op.as_mut().expect("both replicas run");
        op.process.check_alive().expect("replica alive");
        let (rss_kib, fds) = rss_and_fds(op);
        let tasks = op.metric("registrar_tasks").await.unwrap_or(f64::NAN);
        eprintln!(
            "replica {i}: RSS {} MiB, {fds} open fds, {tasks} tasks (baseline {baseline})",
            rss_kib / 1024
        );
        assert!(
            tasks <= baseline + 16.0,
            "replica {i}: {tasks} tasks alive, {baseline} when it started: a task leak"
        );
        assert!(rss_kib < 256 * 1024, "replica {i} RSS {rss_kib} KiB");
        assert!(fds < 256, "replica {i} has {fds} open fds");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_fault_schedules_keep_the_invariants() {
    run(env_u64("REGISTRAR_FAULT_ROUNDS").unwrap_or(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: 200 rounds, several minutes"]
async fn random_fault_schedules_soak() {
    run(env_u64("REGISTRAR_FAULT_ROUNDS").unwrap_or(200)).await;
}
