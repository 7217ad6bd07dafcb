//! Waiting for a change to settle: the Deployment rolled out, every pod Ready with its server
//! running, etcd holding exactly their addresses, the registration's status agreeing and, once
//! the client runs, every backend READY in it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use registrar::crd::{READY_CONDITION, ServiceRegistration};
use registrar_resolver::{Balancer, ConnectivityState};

use crate::console::Console;
use crate::etcd_log;
use crate::kubelet::{Kubelet, ServerState};
use crate::report::PodInfo;

/// Everything the phases act on and look at.
pub(crate) struct World {
    pub(crate) console: Arc<Console>,
    pub(crate) deployments: Api<Deployment>,
    pub(crate) pods: Api<Pod>,
    pub(crate) regs: Api<ServiceRegistration>,
    pub(crate) kv: etcd_client::Client,
    pub(crate) kubelet: Arc<Kubelet>,
    pub(crate) deployment: String,
    pub(crate) registration: String,
    pub(crate) selector: String,
    pub(crate) target: String,
}

/// The settled state after a change.
pub(crate) struct Settled {
    pub(crate) pods: BTreeMap<String, PodInfo>,
    pub(crate) keys: Vec<(String, String)>,
}

impl World {
    /// Waits until the Deployment has `replicas` Ready pods (no old or terminating ones), each
    /// with its server running, etcd holds exactly their addresses, the registration's status
    /// says so and, with a `client`, every backend is READY in it.
    pub(crate) async fn settle(
        &self,
        replicas: usize,
        client: Option<&Balancer>,
        timeout: Duration,
    ) -> anyhow::Result<Settled> {
        let deadline = Instant::now() + timeout;
        let mut waiting = String::new();
        loop {
            match self.check(replicas, client).await {
                Ok(settled) => return Ok(settled),
                Err(why) => {
                    if why != waiting {
                        tracing::debug!("settling: waiting for {why}");
                        waiting = why;
                    }
                }
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the change did not settle within {timeout:?}; still waiting for {waiting}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn check(&self, replicas: usize, client: Option<&Balancer>) -> Result<Settled, String> {
        let dep = self
            .deployments
            .get(&self.deployment)
            .await
            .map_err(|e| format!("the Deployment ({e})"))?;
        let want = i32::try_from(replicas).unwrap_or(i32::MAX);
        let st = dep.status.unwrap_or_default();
        let observed = st.observed_generation.unwrap_or(0) >= dep.metadata.generation.unwrap_or(0);
        if !observed
            || st.updated_replicas != Some(want)
            || st.replicas != Some(want)
            || st.ready_replicas != Some(want)
        {
            return Err(format!(
                "the rollout: {want} replicas wanted, {} updated, {} ready, {} in total",
                st.updated_replicas.unwrap_or(0),
                st.ready_replicas.unwrap_or(0),
                st.replicas.unwrap_or(0)
            ));
        }
        let pods = self
            .pods
            .list(&ListParams::default().labels(&self.selector))
            .await
            .map_err(|e| format!("the pod list ({e})"))?;
        let terminating = pods
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .count();
        if terminating > 0 {
            return Err(format!("{terminating} terminating pods to drain and go"));
        }
        if pods.items.len() != replicas {
            return Err(format!("{replicas} pods (have {})", pods.items.len()));
        }
        let serving: BTreeMap<String, String> = self
            .kubelet
            .backends()
            .into_iter()
            .filter(|b| b.state == ServerState::Serving)
            .map(|b| (b.uid, b.addr.to_string()))
            .collect();
        let mut settled = BTreeMap::new();
        for p in &pods.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            let uid = p.metadata.uid.clone().unwrap_or_default();
            if !is_ready(p) {
                return Err(format!("pod {name} to be Ready"));
            }
            let Some(addr) = serving.get(&uid) else {
                return Err(format!("the server of pod {name}"));
            };
            settled.insert(
                name,
                PodInfo {
                    uid,
                    addr: addr.clone(),
                    zone: None,
                },
            );
        }
        if serving.len() != replicas {
            return Err(format!("old servers to stop ({} serving)", serving.len()));
        }
        let want_addrs: BTreeSet<String> = settled.values().map(|p| p.addr.clone()).collect();
        let mut kv = self.kv.clone();
        let keys = etcd_log::list(&mut kv, &self.target)
            .await
            .map_err(|e| format!("etcd ({e})"))?;
        let have_addrs: BTreeSet<String> = keys
            .iter()
            .filter_map(|(k, _)| {
                k.strip_prefix(&format!("{}/", self.target))
                    .map(str::to_string)
            })
            .collect();
        if have_addrs != want_addrs {
            return Err(format!("etcd to hold {want_addrs:?} (has {have_addrs:?})"));
        }
        for info in settled.values_mut() {
            let key = format!("{}/{}", self.target, info.addr);
            info.zone = keys
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| published_zone(v));
        }
        let reg = self
            .regs
            .get(&self.registration)
            .await
            .map_err(|e| format!("the ServiceRegistration ({e})"))?;
        let status = reg.status.unwrap_or_default();
        let published = status
            .conditions
            .iter()
            .any(|c| c.type_ == READY_CONDITION && c.reason == "Published");
        if usize::try_from(status.ready_endpoints).ok() != Some(replicas) || !published {
            return Err(format!(
                "the registration's status to show {replicas} published endpoints"
            ));
        }
        if let Some(balancer) = client {
            let conns: BTreeMap<String, ConnectivityState> = balancer
                .backends()
                .into_iter()
                .map(|b| (b.addr, b.state))
                .collect();
            let ready: BTreeSet<String> = conns
                .iter()
                .filter(|(_, s)| **s == ConnectivityState::Ready)
                .map(|(a, _)| a.clone())
                .collect();
            if conns.len() != want_addrs.len() || ready != want_addrs {
                return Err(format!(
                    "the client to be connected to exactly {want_addrs:?} (READY: {ready:?})"
                ));
            }
            // Health checking: every backend SERVING (and not ejected), so calls go to it.
            let pickable: BTreeSet<String> = balancer
                .health()
                .into_iter()
                .filter(|b| b.pickable)
                .map(|b| b.addr)
                .collect();
            if pickable != want_addrs {
                return Err(format!(
                    "the client to pick exactly {want_addrs:?} (pickable: {pickable:?})"
                ));
            }
        }
        Ok(Settled {
            pods: settled,
            keys,
        })
    }
}

/// The `zone` in the metadata of an endpoint value (`{"Op":0,"Addr":..,"Metadata":{..}}`).
fn published_zone(value: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(value).ok()?;
    Some(v.get("Metadata")?.get("zone")?.as_str()?.to_string())
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
}
