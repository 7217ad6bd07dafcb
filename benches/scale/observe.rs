//! The observer: an etcd watch on Registrar's prefix (live keys, per lease, deletions) and a
//! watch on every ServiceRegistration (how many report Ready=True/Published with all their
//! endpoints). It runs on its own thread and tokio runtime, so the operator's start-up and the
//! bench's own polling never delay the timestamps of what it sees.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use etcd_client::{EventType, GetOptions, WatchOptions};
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use registrar::crd::ServiceRegistration;
use tokio::sync::{oneshot, watch};

/// What to watch and what "converged" means.
pub struct Targets {
    pub kubeconfig: PathBuf,
    pub etcd_endpoint: String,
    /// Registrar's prefix with its trailing '/'.
    pub prefix: String,
    /// Keys expected under the prefix (the claim key `<prefix>/.owner` is not counted).
    pub keys: usize,
    /// Registrations expected Ready.
    pub registrations: usize,
    /// Endpoints each registration must report.
    pub per_registration: i64,
}

/// Live state and first-reached instants.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Both watches are established.
    pub established: bool,
    /// Highest etcd revision the watch has caught up with.
    pub revision: i64,
    /// Live endpoint keys.
    pub keys: usize,
    /// Live endpoint keys per lease id (0: no lease).
    pub by_lease: BTreeMap<i64, usize>,
    /// First instant each lease held every expected key.
    pub lease_complete_at: BTreeMap<i64, Instant>,
    /// First instant every expected key was live.
    pub all_keys_at: Option<Instant>,
    /// Endpoint keys deleted (DELETE events, expiry included).
    pub deletes: usize,
    /// Registrations currently Ready=True/Published with all their endpoints.
    pub ready: usize,
    /// First instant every registration was.
    pub all_ready_at: Option<Instant>,
    /// Times a registration went from ready (as above) to not.
    pub ready_lost: usize,
}

/// The running observer.
pub type Observer = crate::common::observer::Observer<Progress, ()>;

impl Observer {
    /// Starts both watches on a new thread and waits until they are established.
    pub async fn start(targets: Targets) -> Result<Observer> {
        let mut observer = Observer::spawn("scale-observer", summary, move |stop, progress| {
            observe(targets, stop, progress)
        })?;
        observer
            .wait("watches established", Duration::from_secs(60), |p| {
                p.established
            })
            .await?;
        Ok(observer)
    }
}

/// A one-line summary of the progress, for errors and progress lines.
pub fn summary(p: &Progress) -> String {
    format!(
        "{} keys live (per lease {:?}), {} deleted, {} registrations ready, revision {}",
        p.keys, p.by_lease, p.deletes, p.ready, p.revision
    )
}

/// Whether a registration reports what the bench expects.
fn is_ready(reg: &ServiceRegistration, per_registration: i64) -> bool {
    let Some(status) = &reg.status else {
        return false;
    };
    status.ready_endpoints == per_registration
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "Published")
}

fn reg_key(reg: &ServiceRegistration) -> String {
    format!(
        "{}/{}",
        reg.metadata.namespace.as_deref().unwrap_or_default(),
        reg.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The etcd side: live keys and their leases.
struct Keys {
    owner_key: String,
    lease_of: HashMap<String, i64>,
}

impl Keys {
    fn put(&mut self, p: &mut Progress, key: String, lease: i64) {
        if key == self.owner_key {
            return;
        }
        if let Some(old) = self.lease_of.insert(key, lease) {
            dec(&mut p.by_lease, old);
        }
        *p.by_lease.entry(lease).or_default() += 1;
    }

    fn delete(&mut self, p: &mut Progress, key: &str) {
        if key == self.owner_key {
            return;
        }
        if let Some(old) = self.lease_of.remove(key) {
            dec(&mut p.by_lease, old);
            p.deletes += 1;
        }
    }

    fn update(&self, p: &mut Progress, want: usize, at: Instant) {
        p.keys = self.lease_of.len();
        if p.keys >= want && p.all_keys_at.is_none() {
            p.all_keys_at = Some(at);
        }
        for (lease, n) in &p.by_lease {
            if *n >= want {
                p.lease_complete_at.entry(*lease).or_insert(at);
            }
        }
    }
}

fn dec(map: &mut BTreeMap<i64, usize>, lease: i64) {
    if let Some(n) = map.get_mut(&lease) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&lease);
        }
    }
}

async fn observe(
    targets: Targets,
    mut stop: oneshot::Receiver<()>,
    progress: watch::Sender<Progress>,
) -> Result<()> {
    let client = registrar_testenv::client_from_kubeconfig(&targets.kubeconfig).await?;
    let mut etcd = etcd_client::Client::connect([targets.etcd_endpoint.as_str()], None).await?;
    let mut p = Progress::default();
    let mut keys = Keys {
        owner_key: format!("{}.owner", targets.prefix),
        lease_of: HashMap::new(),
    };
    let listed = etcd
        .get(
            targets.prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let revision = listed
        .header()
        .map(|h| h.revision())
        .context("etcd response without a header")?;
    for kv in listed.kvs() {
        keys.put(
            &mut p,
            String::from_utf8_lossy(kv.key()).into_owned(),
            kv.lease(),
        );
    }
    keys.update(&mut p, targets.keys, Instant::now());
    p.revision = revision;
    let mut watch = etcd
        .watch(
            targets.prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    let created = watch.message().await?.context("etcd watch closed")?;
    anyhow::ensure!(created.created(), "etcd watch not created: {created:?}");

    let api: Api<ServiceRegistration> = Api::all(client);
    let mut reg_events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut ready: HashMap<String, bool> = HashMap::new();
    let mut listed_regs = false;

    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            msg = watch.next() => {
                let at = Instant::now();
                let resp = msg.context("etcd watch ended")??;
                anyhow::ensure!(!resp.canceled(), "etcd watch canceled: {}", resp.cancel_reason());
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    match ev.event_type() {
                        EventType::Put => keys.put(&mut p, key, kv.lease()),
                        EventType::Delete => keys.delete(&mut p, &key),
                    }
                    p.revision = p.revision.max(kv.mod_revision());
                }
                if let Some(h) = resp.header() {
                    p.revision = p.revision.max(h.revision());
                }
                keys.update(&mut p, targets.keys, at);
            }
            ev = reg_events.next() => {
                let at = Instant::now();
                let ev = ev.context("ServiceRegistration watch ended")??;
                match ev {
                    watcher::Event::Init => {}
                    watcher::Event::InitApply(reg) | watcher::Event::Apply(reg) => {
                        let now = is_ready(&reg, targets.per_registration);
                        if ready.insert(reg_key(&reg), now) == Some(true) && !now {
                            p.ready_lost += 1;
                        }
                    }
                    watcher::Event::Delete(reg) => {
                        ready.remove(&reg_key(&reg));
                    }
                    watcher::Event::InitDone => listed_regs = true,
                }
                p.ready = ready.values().filter(|r| **r).count();
                if p.ready >= targets.registrations && p.all_ready_at.is_none() {
                    p.all_ready_at = Some(at);
                }
            }
        }
        p.established = listed_regs;
        progress.send_replace(p.clone());
    }
}
