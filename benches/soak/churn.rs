//! The churn driver: one action per [`CHURN_PERIOD`] at most, picked by weight with the test
//! ground's seeded generator (as the fault schedule test picks its steps) —
//! a pod's readiness flipped (as a kubelet's probe would), a Deployment scaled within
//! `MIN_REPLICAS..=MAX_REPLICAS`, or (at most every [`ROLLOUT_EVERY`]) a rolling restart of a
//! Deployment. API errors are counted, not fatal (the soak restarts nothing on the API side).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use registrar_testenv::seeded::SeededRng;
use serde_json::json;
use tokio::time::Instant;

use super::config::{CHURN_PERIOD, MAX_REPLICAS, MIN_REPLICAS, NAMESPACE, ROLLOUT_EVERY, SERVICES};
use crate::objects::pod_status;

/// The actions with their weights (a seeded pick, then the Deployment): mostly flips; a
/// rollout that is not due yet is a scale instead.
#[derive(Clone, Copy, Debug)]
enum Action {
    Flip,
    Scale,
    Rollout,
}

const ACTIONS: [(Action, u64); 3] = [
    (Action::Flip, 75),
    (Action::Scale, 17),
    (Action::Rollout, 8),
];

/// What the driver did.
#[derive(Clone, Debug, Default)]
pub struct ChurnCounts {
    pub flips_to_ready: u64,
    pub flips_to_unready: u64,
    pub scales: u64,
    /// Replicas added and removed by the scales.
    pub scaled_up: u64,
    pub scaled_down: u64,
    pub rollouts: u64,
    pub api_errors: u64,
    /// Ticks without an action (no pod to flip).
    pub idle: u64,
}

impl ChurnCounts {
    pub fn actions(&self) -> u64 {
        self.flips_to_ready + self.flips_to_unready + self.scales + self.rollouts
    }
}

/// Runs until `stop` is set; returns what it did.
pub async fn run(client: kube::Client, seed: u64, stop: Arc<AtomicBool>) -> ChurnCounts {
    let mut rng = SeededRng::new(seed);
    let mut counts = ChurnCounts::default();
    let mut replicas: BTreeMap<&str, i32> = SERVICES
        .iter()
        .map(|s| (*s, super::config::REPLICAS))
        .collect();
    let mut last_rollout: Option<Instant> = None;
    let mut tick = tokio::time::interval(CHURN_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let action = rng.weighted(&ACTIONS).unwrap_or(Action::Flip);
        let service = *rng.pick(&SERVICES).unwrap_or(&SERVICES[0]);
        let rollout_due = last_rollout.is_none_or(|t| t.elapsed() >= ROLLOUT_EVERY);
        let res = match action {
            Action::Rollout if rollout_due => {
                last_rollout = Some(Instant::now());
                counts.rollouts += 1;
                rollout(&client, service).await
            }
            Action::Rollout | Action::Scale => {
                let now = replicas.get(service).copied().unwrap_or(MIN_REPLICAS);
                let span = (MAX_REPLICAS - MIN_REPLICAS) as u64;
                let mut to = MIN_REPLICAS + rng.below(span) as i32;
                if to >= now {
                    to += 1;
                }
                replicas.insert(service, to);
                counts.scales += 1;
                if to > now {
                    counts.scaled_up += (to - now) as u64;
                } else {
                    counts.scaled_down += (now - to) as u64;
                }
                scale(&client, service, to).await
            }
            Action::Flip => flip(&client, &mut rng, &mut counts).await,
        };
        if res.is_err() {
            counts.api_errors += 1;
        }
    }
    counts
}

async fn rollout(client: &kube::Client, service: &str) -> kube::Result<()> {
    let stamp = k8s_openapi::jiff::Timestamp::now().to_string();
    Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .patch(
            service,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": stamp}}}}})),
        )
        .await
        .map(|_| ())
}

async fn scale(client: &kube::Client, service: &str, replicas: i32) -> kube::Result<()> {
    Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .patch(
            service,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .map(|_| ())
}

/// Flips the Ready condition of a random Running pod with an IP that is not terminating.
async fn flip(
    client: &kube::Client,
    rng: &mut SeededRng,
    counts: &mut ChurnCounts,
) -> kube::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let list = pods.list(&ListParams::default()).await?;
    let candidates: Vec<(String, String, bool)> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            if status.phase.as_deref() != Some("Running") {
                return None;
            }
            let ip = status.pod_ip.clone()?;
            let ready = status
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Some((p.metadata.name.clone()?, ip, ready))
        })
        .collect();
    let Some((name, ip, ready)) = rng.pick(&candidates) else {
        counts.idle += 1;
        return Ok(());
    };
    if *ready {
        counts.flips_to_unready += 1;
    } else {
        counts.flips_to_ready += 1;
    }
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(pod_status(ip, !ready)),
    )
    .await
    .map(|_| ())
}
