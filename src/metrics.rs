//! Prometheus metrics of the operator.
//!
//! One [`Metrics`] value owns the registry and every metric; it is cheap to clone (an `Arc`
//! inside) and the rest of the operator records through its small methods
//! ([`Metrics::reconciled`], [`Metrics::txn`], [`Metrics::set_published`], ...). The admin
//! server exposes [`Metrics::encode`] (Prometheus text 0.0.4) and
//! [`Metrics::encode_openmetrics`] (OpenMetrics 1.0.0) on `/metrics`.
//!
//! Every labelled series is created at zero when the registry is built, so dashboards and
//! alerts see `0` rather than a missing series before the first event; the exception is
//! `registrar_target_endpoints{target_namespace, target_service}`, which has one series per
//! target that a ServiceRegistration names (its cardinality is the number of distinct targets,
//! never pods or addresses).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::etcd::Stage;

/// Prefix of every metric name.
pub const PREFIX: &str = "registrar";

/// `Content-Type` of [`Metrics::encode`].
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `Content-Type` of [`Metrics::encode_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of the propagation histogram, in seconds. Pod `lastTransitionTime` has a resolution
/// of one second, so sub-second buckets only say "within the same second".
const PROPAGATION_BUCKETS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets of the operator-latency histogram (watch event received → etcd txn committed), in
/// seconds: sub-millisecond at the low end, 5 to 10 ms apart from 20 to 100 ms (a burst waits
/// out the 50 ms coalescing window, so "within the window + 10 ms" can be read off), up to a
/// few seconds. The stage histogram uses the same.
const OPERATOR_LATENCY_BUCKETS: [f64; 24] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.055, 0.06, 0.07, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Outcome of a reconcile or an etcd transaction.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
}

impl Outcome {
    fn from_ok(ok: bool) -> Self {
        if ok { Self::Ok } else { Self::Error }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// How an Event ended, for `registrar_kube_events_total{outcome}`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum EventOutcome {
    /// The API server took it.
    Sent,
    /// Not sent: a limit of the Event queue (rate per registration, queue length).
    Dropped,
    /// Not sent: a newer Event of the same registration came first (the status moved on).
    Superseded,
    /// Sent, and the API server refused it or did not answer.
    Failed,
}

impl EventOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Dropped => "dropped",
            Self::Superseded => "superseded",
            Self::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for EventOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    r#type: &'static str,
    outcome: EventOutcome,
}

/// What went wrong, for `registrar_errors_total{kind}`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ErrorKind {
    /// A call to the Kubernetes API failed (list/watch, status patch, event, finalizer).
    KubeApi,
    /// An etcd request (txn, range, watch) failed.
    Etcd,
    /// Granting an etcd lease failed or the lease was lost.
    EtcdLease,
    /// The prefix is claimed by another cluster; nothing is written.
    PrefixOwnedElsewhere,
    /// A registration names a container port that a selected pod lacks.
    PortNotFound,
    /// Anything else (a bug or an unexpected state).
    Internal,
}

impl ErrorKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ErrorKind; 6] = [
        Self::KubeApi,
        Self::Etcd,
        Self::EtcdLease,
        Self::PrefixOwnedElsewhere,
        Self::PortNotFound,
        Self::Internal,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KubeApi => "kube_api",
            Self::Etcd => "etcd",
            Self::EtcdLease => "etcd_lease",
            Self::PrefixOwnedElsewhere => "prefix_owned_elsewhere",
            Self::PortNotFound => "port_not_found",
            Self::Internal => "internal",
        }
    }
}

impl EncodeLabelValue for ErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: ErrorKind,
}

/// Labels of `registrar_target_endpoints`. Not `namespace`/`service`: Prometheus' Kubernetes
/// service discovery gives every scraped series those labels (the operator's own namespace and
/// Service), which would rename ours to `exported_*`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target_namespace: String,
    target_service: String,
}

/// Labels of `registrar_stage_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

type StageHistograms = Family<StageLabels, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    Histogram::new(OPERATOR_LATENCY_BUCKETS)
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    published: Gauge,
    target_endpoints: Family<TargetLabels, Gauge>,
    /// The targets that have a `target_endpoints` series now (to remove those that went away).
    targets: Mutex<BTreeSet<(String, String)>>,
    registrations: Gauge,
    not_ready: Gauge,
    etcd_unavailable: Gauge,
    leader: Gauge,
    /// Tokio tasks alive in this process, read at each scrape.
    tasks: Gauge,
    txns: Family<ResultLabels, Counter>,
    txn_ops: Counter,
    txn_duration: Histogram,
    lease_grants: Counter,
    keepalive_failures: Counter,
    kube_throttled: Counter,
    kube_events: Family<EventLabels, Counter>,
    propagation: Histogram,
    operator_latency: Histogram,
    stages: StageHistograms,
}

/// The operator's metrics. Clone it freely: clones share the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered and every labelled series at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);

        registry.register(
            "build",
            "Build information of the running operator",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );

        let reconciles = Family::<ResultLabels, Counter>::default();
        for result in [Outcome::Ok, Outcome::Error] {
            reconciles.get_or_create_owned(&ResultLabels { result });
        }
        registry.register(
            "reconciles",
            "Reconciles of ServiceRegistrations, by result",
            reconciles.clone(),
        );

        let errors = Family::<KindLabels, Counter>::default();
        for kind in ErrorKind::ALL {
            errors.get_or_create_owned(&KindLabels { kind });
        }
        registry.register("errors", "Errors, by kind", errors.clone());

        let published = Gauge::default();
        registry.register(
            "published_endpoints",
            "Endpoint keys the operator wants published in etcd (all registrations)",
            published.clone(),
        );

        // One series per target (a namespace/service pair some ServiceRegistration names), never
        // per pod or address: as many series as distinct targets, at most one per registration.
        let target_endpoints = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "target_endpoints",
            "Endpoint keys the operator wants published under each target \
             <prefix>/<target_namespace>/<target_service> (0 for a registered target without \
             ready endpoints; a target no registration names any more has no series)",
            target_endpoints.clone(),
        );

        let registrations = Gauge::default();
        registry.register(
            "registrations",
            "ServiceRegistrations known to the operator",
            registrations.clone(),
        );

        let not_ready = Gauge::default();
        registry.register(
            "registrations_not_ready",
            "ServiceRegistrations whose Ready condition is not True (set by the leader; 0 on a standby)",
            not_ready.clone(),
        );

        let etcd_unavailable = Gauge::default();
        registry.register(
            "etcd_unavailable",
            "1 while the leader's etcd writer cannot reach etcd (connecting or failing), else 0",
            etcd_unavailable.clone(),
        );

        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease and writes etcd, else 0",
            leader.clone(),
        );

        let tasks = Gauge::default();
        registry.register(
            "tasks",
            "Tokio tasks alive in the operator process, read at scrape time (flat in a steady \
             state; a rise that never comes back down is a task leak)",
            tasks.clone(),
        );

        let txns = Family::<ResultLabels, Counter>::default();
        for result in [Outcome::Ok, Outcome::Error] {
            txns.get_or_create_owned(&ResultLabels { result });
        }
        registry.register("etcd_txns", "etcd transactions, by result", txns.clone());

        let txn_ops = Counter::default();
        registry.register(
            "etcd_txn_ops",
            "Operations (puts and deletes) sent in etcd transactions",
            txn_ops.clone(),
        );

        let txn_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "etcd_txn_duration",
            "Latency of etcd transactions",
            Unit::Seconds,
            txn_duration.clone(),
        );

        let lease_grants = Counter::default();
        registry.register(
            "etcd_lease_grants",
            "etcd leases granted (one per leader term, plus one per lost lease)",
            lease_grants.clone(),
        );

        let keepalive_failures = Counter::default();
        registry.register(
            "etcd_keepalive_failures",
            "Failed etcd lease keepalives",
            keepalive_failures.clone(),
        );

        let kube_throttled = Counter::default();
        registry.register(
            "kube_throttled",
            "429 Too Many Requests answers of the API server to the operator's writes (each \
             pauses every write; see --kube-api-qps)",
            kube_throttled.clone(),
        );

        let kube_events = Family::<EventLabels, Counter>::default();
        for r#type in ["Normal", "Warning"] {
            for outcome in [
                EventOutcome::Sent,
                EventOutcome::Dropped,
                EventOutcome::Superseded,
                EventOutcome::Failed,
            ] {
                kube_events.get_or_create_owned(&EventLabels { r#type, outcome });
            }
        }
        registry.register(
            "kube_events",
            "Kubernetes Events about registrations, by type and outcome: sent, dropped (a \
             limit of the Event queue: per-registration rate or queue length; a dropped Warning \
             is also logged), superseded (a newer Event of the same registration came before it \
             was sent) or failed",
            kube_events.clone(),
        );

        let propagation = Histogram::new(PROPAGATION_BUCKETS);
        registry.register_with_unit(
            "propagation_latency",
            "etcd commit time of an endpoint minus its pod's Ready lastTransitionTime \
             (one-second resolution)",
            Unit::Seconds,
            propagation.clone(),
        );

        let operator_latency = Histogram::new(OPERATOR_LATENCY_BUCKETS);
        registry.register_with_unit(
            "operator_latency",
            "The operator's own part of propagation: a watch event received to the etcd txn \
             carrying its change committed (monotonic clock)",
            Unit::Seconds,
            operator_latency.clone(),
        );

        let stages: StageHistograms = Family::new_with_constructor(stage_histogram);
        for stage in [
            Stage::Window,
            Stage::Compute,
            Stage::Handoff,
            Stage::Plan,
            Stage::Commit,
        ] {
            stages.get_or_create_owned(&StageLabels {
                stage: stage.as_str(),
            });
        }
        registry.register_with_unit(
            "stage",
            "The operator's part of propagation by stage: window (per change: watch event \
             received to its flush), compute (the flush until the writer has its desired state), \
             handoff (until the writer takes it up), plan (until the first txn is sent), commit \
             (first txn sent to last committed); per flush except window",
            Unit::Seconds,
            stages.clone(),
        );

        Self {
            inner: Arc::new(Inner {
                registry,
                reconciles,
                errors,
                published,
                target_endpoints,
                targets: Mutex::default(),
                registrations,
                not_ready,
                etcd_unavailable,
                leader,
                tasks,
                txns,
                txn_ops,
                txn_duration,
                lease_grants,
                keepalive_failures,
                kube_throttled,
                kube_events,
                propagation,
                operator_latency,
                stages,
            }),
        }
    }

    /// Counts one 429 answer of the API server to a write.
    pub fn kube_throttled(&self) {
        self.inner.kube_throttled.inc();
    }

    /// Counts one Event (Warning or Normal) that ended so.
    pub fn kube_event(&self, warning: bool, outcome: EventOutcome) {
        let r#type = if warning { "Warning" } else { "Normal" };
        self.inner
            .kube_events
            .get_or_create(&EventLabels { r#type, outcome })
            .inc();
    }

    /// Counts one reconcile.
    pub fn reconciled(&self, ok: bool) {
        self.inner
            .reconciles
            .get_or_create(&ResultLabels {
                result: Outcome::from_ok(ok),
            })
            .inc();
    }

    /// Counts one error.
    pub fn error(&self, kind: ErrorKind) {
        self.inner.errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// Sets the number of endpoint keys the operator wants in etcd.
    pub fn set_published(&self, n: usize) {
        self.inner.published.set(saturating_i64(n));
    }

    /// Sets the number of endpoint keys wanted per target (namespace, service), replacing the
    /// previous set: targets missing from `counts` lose their series.
    pub fn set_target_endpoints(&self, counts: &BTreeMap<(String, String), usize>) {
        let mut targets = self
            .inner
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (namespace, service) in targets.iter() {
            if !counts.contains_key(&(namespace.clone(), service.clone())) {
                self.inner.target_endpoints.remove(&TargetLabels {
                    target_namespace: namespace.clone(),
                    target_service: service.clone(),
                });
            }
        }
        for ((namespace, service), n) in counts {
            self.inner
                .target_endpoints
                .get_or_create(&TargetLabels {
                    target_namespace: namespace.clone(),
                    target_service: service.clone(),
                })
                .set(saturating_i64(*n));
        }
        *targets = counts.keys().cloned().collect();
    }

    /// Applies changes of the number of endpoint keys wanted per target (namespace, service):
    /// `Some(n)` sets a target's series, `None` removes it (no registration names the target
    /// any more); other targets keep theirs.
    pub fn update_target_endpoints(&self, changes: &BTreeMap<(String, String), Option<usize>>) {
        let mut targets = self
            .inner
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for ((namespace, service), n) in changes {
            let labels = TargetLabels {
                target_namespace: namespace.clone(),
                target_service: service.clone(),
            };
            match n {
                Some(n) => {
                    self.inner
                        .target_endpoints
                        .get_or_create(&labels)
                        .set(saturating_i64(*n));
                    targets.insert((namespace.clone(), service.clone()));
                }
                None => {
                    self.inner.target_endpoints.remove(&labels);
                    targets.remove(&(namespace.clone(), service.clone()));
                }
            }
        }
    }

    /// Sets the number of ServiceRegistrations known.
    pub fn set_registrations(&self, n: usize) {
        self.inner.registrations.set(saturating_i64(n));
    }

    /// Sets the number of ServiceRegistrations whose Ready condition is not True.
    pub fn set_not_ready(&self, n: usize) {
        self.inner.not_ready.set(saturating_i64(n));
    }

    /// Records whether the leader's etcd writer cannot reach etcd.
    pub fn set_etcd_unavailable(&self, down: bool) {
        self.inner.etcd_unavailable.set(i64::from(down));
    }

    /// Records whether this replica is the leader.
    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }

    /// Records one etcd transaction of `ops` operations that took `latency`.
    pub fn txn(&self, latency: Duration, ops: usize, ok: bool) {
        self.inner
            .txns
            .get_or_create(&ResultLabels {
                result: Outcome::from_ok(ok),
            })
            .inc();
        self.inner
            .txn_ops
            .inc_by(u64::try_from(ops).unwrap_or(u64::MAX));
        self.inner.txn_duration.observe(latency.as_secs_f64());
    }

    /// Counts one granted etcd lease.
    pub fn lease_granted(&self) {
        self.inner.lease_grants.inc();
    }

    /// Counts one failed keepalive.
    pub fn keepalive_failed(&self) {
        self.inner.keepalive_failures.inc();
    }

    /// Records one propagation latency directly.
    pub fn propagation(&self, latency: Duration) {
        self.inner.propagation.observe(latency.as_secs_f64());
    }

    /// Records the propagation latency of one endpoint: `committed_at` (when etcd acknowledged
    /// the txn that put it) minus `ready_since` (the pod's Ready `lastTransitionTime`). A
    /// negative difference (clock skew between the node and the operator) counts as zero.
    pub fn propagated(&self, ready_since: &Time, committed_at: SystemTime) {
        if let Some(latency) = propagation_latency(ready_since, committed_at) {
            self.propagation(latency);
        }
    }

    /// Records one operator latency: a watch event received to the etcd txn carrying its
    /// change committed.
    pub fn operator_latency(&self, latency: Duration) {
        self.inner.operator_latency.observe(latency.as_secs_f64());
    }

    /// Records one stage of the operator's part of propagation.
    pub fn stage(&self, stage: Stage, latency: Duration) {
        self.inner
            .stages
            .get_or_create(&StageLabels {
                stage: stage.as_str(),
            })
            .observe(latency.as_secs_f64());
    }

    /// The exposition in the Prometheus text format 0.0.4 ([`PROMETHEUS_TEXT_CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        self.sample_runtime();
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }

    /// The exposition in the OpenMetrics 1.0.0 text format ([`OPENMETRICS_CONTENT_TYPE`]).
    pub fn encode_openmetrics(&self) -> Result<String, fmt::Error> {
        self.sample_runtime();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }
}

impl Metrics {
    /// Reads the runtime's figures into their gauges (outside a runtime: left as they are).
    fn sample_runtime(&self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.inner
                .tasks
                .set(saturating_i64(handle.metrics().num_alive_tasks()));
        }
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `committed_at - ready_since`, clamped at zero; `None` when `committed_at` is before the Unix
/// epoch (a broken clock), which is not worth an observation.
fn propagation_latency(ready_since: &Time, committed_at: SystemTime) -> Option<Duration> {
    let committed = committed_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let ready = ready_since.0.as_duration().as_secs_f64();
    Duration::try_from_secs_f64((committed - ready).max(0.0)).ok()
}

/// The etcd writer reports each event here as it happens.
impl crate::etcd::WriterObserver for Metrics {
    /// One transaction: its result and latency; the operations of committed ones (a failed one
    /// also counts as `errors_total{kind="etcd"}`).
    fn txn(&self, latency: Duration, ops: usize, ok: bool) {
        Metrics::txn(self, latency, if ok { ops } else { 0 }, ok);
        if !ok {
            self.error(ErrorKind::Etcd);
        }
    }

    fn keepalive(&self, ok: bool) {
        if !ok {
            self.keepalive_failed();
        }
    }

    fn lease_granted(&self) {
        Metrics::lease_granted(self);
    }

    fn operator_latency(&self, latency: Duration) {
        Metrics::operator_latency(self, latency);
    }

    fn stage(&self, stage: Stage, latency: Duration) {
        Metrics::stage(self, stage, latency);
    }

    fn lease_lost(&self) {
        self.error(ErrorKind::EtcdLease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use registrar_testenv::prometheus::sample;

    #[test]
    fn exposition_names_every_metric() {
        let text = Metrics::new().encode().unwrap();
        for name in [
            "registrar_build_info",
            "registrar_reconciles_total",
            "registrar_errors_total",
            "registrar_published_endpoints",
            "registrar_registrations",
            "registrar_leader",
            "registrar_etcd_txns_total",
            "registrar_etcd_txn_ops_total",
            "registrar_etcd_txn_duration_seconds",
            "registrar_etcd_lease_grants_total",
            "registrar_etcd_keepalive_failures_total",
            "registrar_propagation_latency_seconds",
            "registrar_operator_latency_seconds",
            "registrar_stage_seconds",
            "registrar_tasks",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing from:\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn the_task_gauge_counts_the_runtime_s_live_tasks() {
        let metrics = Metrics::new();
        let before = sample(&metrics.encode().unwrap(), "registrar_tasks").unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let mut stopped = stopped.clone();
                tokio::spawn(async move { stopped.wait_for(|s| *s).await.map(|_| ()) })
            })
            .collect();
        let during = sample(&metrics.encode().unwrap(), "registrar_tasks").unwrap();
        assert_eq!(during, before + 5.0);
        stop.send(true).unwrap();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        // A finished task leaves the count when the runtime releases it, just after its output.
        let mut after = during;
        for _ in 0..1000 {
            after = sample(&metrics.encode().unwrap(), "registrar_tasks").unwrap();
            if after == before {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(after, before);
    }

    #[test]
    fn labelled_series_start_at_zero() {
        let text = Metrics::new().encode().unwrap();
        assert_eq!(
            sample(&text, r#"registrar_reconciles_total{result="ok"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, r#"registrar_reconciles_total{result="error"}"#),
            Some(0.0)
        );
        for kind in ErrorKind::ALL {
            let series = format!(r#"registrar_errors_total{{kind="{}"}}"#, kind.as_str());
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        assert!(text.contains(r#"registrar_build_info{version="0.1.0"} 1"#));
    }

    #[test]
    fn the_writer_observer_records_each_event_once() {
        use crate::etcd::WriterObserver;
        let m = Metrics::new();
        let o: &dyn WriterObserver = &m;
        o.txn(Duration::from_micros(1500), 5, true);
        o.txn(Duration::from_micros(700), 2, true);
        o.txn(Duration::from_millis(2), 3, false);
        o.keepalive(true);
        o.keepalive(false);
        o.keepalive(false);
        o.lease_granted();
        o.lease_granted();
        o.lease_lost();
        let text = m.encode().unwrap();
        let at = |s: &str| sample(&text, s);
        assert_eq!(at(r#"registrar_etcd_txns_total{result="ok"}"#), Some(2.0));
        assert_eq!(
            at(r#"registrar_etcd_txns_total{result="error"}"#),
            Some(1.0)
        );
        assert_eq!(at("registrar_etcd_txn_ops_total"), Some(7.0));
        // One latency sample per transaction, each its own.
        assert_eq!(at("registrar_etcd_txn_duration_seconds_count"), Some(3.0));
        let sum = at("registrar_etcd_txn_duration_seconds_sum").unwrap();
        assert!((sum - 0.0042).abs() < 1e-9, "{sum}");
        assert_eq!(at("registrar_etcd_lease_grants_total"), Some(2.0));
        assert_eq!(at("registrar_etcd_keepalive_failures_total"), Some(2.0));
        assert_eq!(at(r#"registrar_errors_total{kind="etcd"}"#), Some(1.0));
        assert_eq!(
            at(r#"registrar_errors_total{kind="etcd_lease"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn methods_move_the_series() {
        let m = Metrics::new();
        let clone = m.clone();
        m.reconciled(true);
        m.reconciled(true);
        clone.reconciled(false);
        m.error(ErrorKind::Etcd);
        m.set_published(42);
        m.set_registrations(3);
        m.set_leader(true);
        m.txn(Duration::from_millis(3), 128, true);
        m.txn(Duration::from_millis(30), 2, false);
        m.lease_granted();
        m.keepalive_failed();
        m.keepalive_failed();
        m.propagation(Duration::from_millis(1500));

        let text = m.encode().unwrap();
        let at = |series: &str| sample(&text, series);
        assert_eq!(at(r#"registrar_reconciles_total{result="ok"}"#), Some(2.0));
        assert_eq!(
            at(r#"registrar_reconciles_total{result="error"}"#),
            Some(1.0)
        );
        assert_eq!(at(r#"registrar_errors_total{kind="etcd"}"#), Some(1.0));
        assert_eq!(at(r#"registrar_errors_total{kind="kube_api"}"#), Some(0.0));
        assert_eq!(at("registrar_published_endpoints"), Some(42.0));
        assert_eq!(at("registrar_registrations"), Some(3.0));
        assert_eq!(at("registrar_leader"), Some(1.0));
        assert_eq!(at(r#"registrar_etcd_txns_total{result="ok"}"#), Some(1.0));
        assert_eq!(
            at(r#"registrar_etcd_txns_total{result="error"}"#),
            Some(1.0)
        );
        assert_eq!(at("registrar_etcd_txn_ops_total"), Some(130.0));
        assert_eq!(at("registrar_etcd_txn_duration_seconds_count"), Some(2.0));
        assert_eq!(at("registrar_etcd_lease_grants_total"), Some(1.0));
        assert_eq!(at("registrar_etcd_keepalive_failures_total"), Some(2.0));
        assert_eq!(at("registrar_propagation_latency_seconds_count"), Some(1.0));
        assert_eq!(
            at(r#"registrar_propagation_latency_seconds_bucket{le="1"}"#),
            Some(0.0)
        );
        assert_eq!(
            at(r#"registrar_propagation_latency_seconds_bucket{le="2"}"#),
            Some(1.0)
        );

        m.set_leader(false);
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, "registrar_leader"), Some(0.0));
    }

    #[test]
    fn target_endpoints_follow_the_latest_set() {
        let m = Metrics::new();
        // No target yet: no series (the family prints nothing at all).
        let text = m.encode().unwrap();
        assert!(!text.contains("registrar_target_endpoints"), "{text}");
        let pair = |n: &str, s: &str| (n.to_string(), s.to_string());
        m.set_target_endpoints(&BTreeMap::from([
            (pair("shop", "greeter"), 3),
            (pair("shop", "idle"), 0),
        ]));
        let text = m.encode().unwrap();
        let greeter =
            r#"registrar_target_endpoints{target_namespace="shop",target_service="greeter"}"#;
        let idle = r#"registrar_target_endpoints{target_namespace="shop",target_service="idle"}"#;
        assert_eq!(sample(&text, greeter), Some(3.0), "{text}");
        assert_eq!(sample(&text, idle), Some(0.0), "{text}");

        // idle's registration is gone: so is its series.
        m.set_target_endpoints(&BTreeMap::from([(pair("shop", "greeter"), 1)]));
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, greeter), Some(1.0), "{text}");
        assert_eq!(sample(&text, idle), None, "{text}");
    }

    #[test]
    fn target_endpoints_follow_the_changes() {
        let m = Metrics::new();
        let pair = |n: &str, s: &str| (n.to_string(), s.to_string());
        m.update_target_endpoints(&BTreeMap::from([
            (pair("shop", "greeter"), Some(3)),
            (pair("shop", "idle"), Some(0)),
        ]));
        let greeter =
            r#"registrar_target_endpoints{target_namespace="shop",target_service="greeter"}"#;
        let idle = r#"registrar_target_endpoints{target_namespace="shop",target_service="idle"}"#;
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, greeter), Some(3.0), "{text}");
        assert_eq!(sample(&text, idle), Some(0.0), "{text}");
        // Only greeter changed: idle keeps its series.
        m.update_target_endpoints(&BTreeMap::from([(pair("shop", "greeter"), Some(1))]));
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, greeter), Some(1.0), "{text}");
        assert_eq!(sample(&text, idle), Some(0.0), "{text}");
        // idle's registration is gone: so is its series.
        m.update_target_endpoints(&BTreeMap::from([(pair("shop", "idle"), None)]));
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, greeter), Some(1.0), "{text}");
        assert_eq!(sample(&text, idle), None, "{text}");
        // A full replacement still drops what the changes added.
        m.set_target_endpoints(&BTreeMap::new());
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, greeter), None, "{text}");
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let m = Metrics::new();
        m.reconciled(true);
        let text = m.encode_openmetrics().unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(
            sample(&text, r#"registrar_reconciles_total{result="ok"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn propagation_is_commit_minus_ready() {
        // 2025-01-01T00:00:00Z
        let secs = 1_735_689_600;
        let ready = Timestamp::from_second(secs).unwrap();
        let ready_at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs());
        let committed = ready_at + Duration::from_millis(2500);
        let latency = propagation_latency(&Time(ready), committed).unwrap();
        assert_eq!(latency, Duration::from_millis(2500));

        // The node's clock ahead of ours: clamp at zero, never negative.
        let early = ready_at - Duration::from_secs(3);
        assert_eq!(
            propagation_latency(&Time(ready), early),
            Some(Duration::ZERO)
        );

        let m = Metrics::new();
        m.propagated(&Time(ready), committed);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, "registrar_propagation_latency_seconds_sum"),
            Some(2.5)
        );
    }
}
