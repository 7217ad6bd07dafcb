//! The operator's engine: watches ServiceRegistrations and Pods, publishes the desired etcd keys
//! to the etcd writer, and writes status, finalizers and Events.
//!
//! Every decision is made by [`core::Core`], a pure state machine (inputs in, effects out). This
//! module is its shell: one task turns I/O into inputs (watcher events, the debounce and
//! hysteresis timers, leadership, the writer's state and progress, the status resync tick) and
//! runs the effects (the desired-state channel, the writer term, the status queue, finalizer
//! and Event writes, metrics, readiness). Each writer term dials etcd itself and reports its
//! events straight into the metrics (the [`Metrics`] are its observer).
//!
//! Statuses go through a keyed, latest-wins queue ([`status_queue`]): one write in flight per
//! registration, failures retried. Every [`Engine::status_resync`]
//! (`--status-resync-seconds`, default 60 s), statuses that differ from what the API server shows are
//! written again.

mod core;
mod kube_writes;
mod not_ready;
mod settle;
mod status_queue;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::sync::watch;

pub use kube_writes::{FINALIZER, KubeWriter, WriteBudget, WriteLimits};

use self::core::{Core, CoreConfig, Effect, Input, Metric, Now};
use crate::crd::{ServiceRegistration, ServiceRegistrationStatus};
use crate::etcd::{
    Desired, DesiredKeys, EtcdSource, Stage, WriterConfig, WriterHandle, WriterState,
    spawn_writer_with,
};
use crate::index::RegKey;
use crate::metrics::{ErrorKind, Metrics};
use status_queue::{QueueConfig, StatusQueue};

/// How often statuses are compared with what the API server shows.
pub const DEFAULT_STATUS_RESYNC: Duration = Duration::from_secs(60);

/// What the engine needs to run.
pub struct Engine {
    /// Kubernetes client.
    pub client: kube::Client,
    /// etcd: the settings each writer term dials with (or a ready client); used only while
    /// leader.
    pub etcd: EtcdSource,
    /// etcd writer settings (prefix, cluster id, lease TTL).
    pub writer: WriterConfig,
    /// Metrics registry.
    pub metrics: Metrics,
    /// This replica's identity (Events).
    pub identity: String,
    /// Debounce window for watcher events: the one coalescing window before etcd.
    pub coalesce: Duration,
    /// How often statuses that differ from what the API server shows are rewritten
    /// ([`DEFAULT_STATUS_RESYNC`] unless configured).
    pub status_resync: Duration,
    /// The `cluster` metadata of every endpoint (`--publish-cluster-id`), when set.
    pub publish_cluster_id: Option<String>,
    /// The budget of Kubernetes writes (statuses, finalizers, Events): in flight at once, QPS
    /// and burst (`--kube-api-*`).
    pub kube_writes: WriteLimits,
}

/// A running etcd writer.
struct Term {
    handle: WriterHandle,
    stop: watch::Sender<bool>,
}

/// The I/O the core's effects act on.
struct Io {
    desired_tx: watch::Sender<Desired>,
    term: Option<Term>,
    /// Receivers of the running writer (stale ones in between terms; not polled then).
    writer_state: watch::Receiver<WriterState>,
    applied: watch::Receiver<u64>,
    etcd: EtcdSource,
    writer_cfg: WriterConfig,
    kube: KubeWriter,
    statuses: StatusQueue<RegKey, ServiceRegistrationStatus>,
    metrics: Metrics,
    ready: watch::Sender<bool>,
}

impl Engine {
    /// Runs until `shutdown` becomes true. `leader` says whether this replica may write;
    /// `ready` is set once both caches completed their first list.
    pub async fn run(
        self,
        mut leader: watch::Receiver<bool>,
        ready: watch::Sender<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let regs: Api<ServiceRegistration> = Api::all(self.client.clone());
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut reg_events = watcher(regs, watcher::Config::default())
            .default_backoff()
            .boxed();
        // The index keeps each pod in its compact form only.
        let mut pod_events = watcher(pods, watcher::Config::default())
            .default_backoff()
            .boxed();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut node_events = watcher(nodes, watcher::Config::default())
            .default_backoff()
            .map_ok(|ev| ev.modify(crate::topology::trim_node))
            .boxed();

        let (desired_tx, _) = watch::channel(Desired {
            seq: 0,
            keys: DesiredKeys::default(),
            complete: false,
            received: Arc::default(),
            flushed: None,
            published: None,
        });
        let mut core = Core::new(CoreConfig {
            prefix: self.writer.prefix.clone(),
            coalesce: self.coalesce,
            hold: settle::DEFAULT_HOLD,
            topology: true,
            publish_cluster_id: self.publish_cluster_id.clone(),
        });
        let budget = WriteBudget::new(self.kube_writes, self.metrics.clone());
        let mut io = Io {
            desired_tx,
            term: None,
            writer_state: watch::channel(WriterState::Starting).1,
            applied: watch::channel(0u64).1,
            etcd: self.etcd.clone(),
            writer_cfg: self.writer.clone(),
            kube: KubeWriter::new(
                self.client.clone(),
                self.identity.clone(),
                self.metrics.clone(),
                budget.clone(),
            ),
            // Status patches may take every seat of the budget (they come first).
            statuses: StatusQueue::spawn_with_backlog(
                QueueConfig {
                    concurrency: self.kube_writes.in_flight.max(1).saturating_mul(2),
                    ..QueueConfig::default()
                },
                kube_writes::status_writer(
                    self.client.clone(),
                    self.metrics.clone(),
                    budget.clone(),
                ),
                move |n| budget.set_status_backlog(n),
            ),
            metrics: self.metrics.clone(),
            ready,
        };
        let resync_every = self.status_resync;
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + resync_every, resync_every);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let leading = *leader.borrow_and_update();
        io.run(core.on(&Now::current(), Input::Leader(leading)));

        loop {
            let flush_at = core.flush_at();
            let debounce = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let settle_at = core.settle_at();
            let settled = async {
                match settle_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let writing = io.term.is_some();
            let input = tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                    continue;
                }
                ev = reg_events.next() => match ev {
                    Some(Ok(ev)) => Input::registration(ev),
                    Some(Err(e)) => {
                        io.metrics.error(ErrorKind::KubeApi);
                        tracing::warn!(error = %e, "ServiceRegistration watch failed; retrying");
                        continue;
                    }
                    None => anyhow::bail!("the ServiceRegistration watch ended"),
                },
                ev = pod_events.next() => match ev {
                    Some(Ok(ev)) => Input::pod(ev),
                    Some(Err(e)) => {
                        io.metrics.error(ErrorKind::KubeApi);
                        tracing::warn!(error = %e, "Pod watch failed; retrying");
                        continue;
                    }
                    None => anyhow::bail!("the Pod watch ended"),
                },
                ev = node_events.next() => match ev {
                    Some(Ok(ev)) => Input::node(ev),
                    Some(Err(e)) => {
                        io.metrics.error(ErrorKind::KubeApi);
                        tracing::warn!(error = %e, "Node watch failed; retrying");
                        continue;
                    }
                    None => anyhow::bail!("the Node watch ended"),
                },
                _ = debounce => Input::FlushDue,
                res = leader.changed() => {
                    if res.is_err() { anyhow::bail!("leader election stopped"); }
                    Input::Leader(*leader.borrow_and_update())
                }
                res = io.writer_state.changed(), if writing => match res {
                    Ok(()) => Input::WriterState(io.writer_state.borrow_and_update().clone()),
                    Err(_) => io.writer_died(),
                },
                _ = resync.tick() => Input::ResyncTick,
                () = settled => Input::SettleDue,
                res = io.applied.changed(), if writing => match res {
                    Ok(()) => Input::WriterApplied(*io.applied.borrow_and_update()),
                    Err(_) => io.writer_died(),
                },
            };
            io.run(core.on(&Now::current(), input));
        }
        // Graceful shutdown: stop writing, but never revoke the lease (keys live on until a new
        // leader re-attaches them or the TTL ends).
        if let Some(term) = io.term.take() {
            let _ = term.stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), term.handle.join).await;
        }
        Ok(())
    }
}

impl Io {
    /// The writer task ended without being asked to (it only returns on shutdown, so this is a
    /// panic): the core decides to start a new term rather than spin on closed channels.
    fn writer_died(&mut self) -> Input {
        self.term = None;
        Input::WriterDied
    }

    /// Runs the core's effects, in order.
    fn run(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            self.apply(effect);
        }
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::PublishDesired(mut desired) => {
                if desired.flushed.is_some() {
                    desired.published = Some(tokio::time::Instant::now());
                }
                self.desired_tx.send_replace(desired);
            }
            Effect::StartWriter => self.start_writer(),
            Effect::StopWriter => {
                if let Some(term) = self.term.take() {
                    let _ = term.stop.send(true);
                }
            }
            Effect::WriteStatus { key, status } => self.statuses.set(key, status),
            Effect::ResyncStatuses(differ) => {
                let mut rewritten = 0usize;
                for (key, status) in differ {
                    if !self.statuses.is_busy(&key) {
                        self.statuses.force(key, status);
                        rewritten += 1;
                    }
                }
                if rewritten > 0 {
                    tracing::info!(
                        rewritten,
                        "status resync: rewrote statuses that differ from the API server's"
                    );
                }
            }
            Effect::ForgetStatus(key) => self.statuses.forget(&key),
            Effect::ClearStatuses => self.statuses.clear(),
            Effect::AddFinalizer(reg) => self.kube.add_finalizer(&reg),
            Effect::ReleaseFinalizer(reg) => self.kube.remove_finalizer(&reg),
            Effect::Event {
                reg,
                warning,
                reason,
                note,
            } => self.kube.event(&reg, warning, &reason, note),
            Effect::SetReady => {
                let _ = self.ready.send(true);
            }
            Effect::Metric(m) => match m {
                Metric::Leader(on) => self.metrics.set_leader(on),
                Metric::Published(n) => self.metrics.set_published(n),
                Metric::TargetEndpoints(changes) => self.metrics.update_target_endpoints(&changes),
                Metric::Registrations(n) => self.metrics.set_registrations(n),
                Metric::NotReady(n) => self.metrics.set_not_ready(n),
                Metric::EtcdUnavailable(down) => self.metrics.set_etcd_unavailable(down),
                Metric::Reconciled(ok) => self.metrics.reconciled(ok),
                Metric::Error(kind) => self.metrics.error(kind),
                Metric::Propagated(times) => {
                    let now = SystemTime::now();
                    for t in &times {
                        self.metrics.propagated(t, now);
                    }
                }
                Metric::Window(waited) => {
                    for d in waited {
                        self.metrics.stage(Stage::Window, d);
                    }
                }
            },
        }
    }

    fn start_writer(&mut self) {
        if let Some(old) = self.term.take() {
            let _ = old.stop.send(true);
        }
        let (stop, stop_rx) = watch::channel(false);
        let handle = spawn_writer_with(
            self.etcd.clone(),
            self.writer_cfg.clone(),
            self.desired_tx.subscribe(),
            stop_rx,
            Arc::new(self.metrics.clone()),
        );
        self.writer_state = handle.state.clone();
        self.applied = handle.applied.clone();
        self.term = Some(Term { handle, stop });
    }
}
