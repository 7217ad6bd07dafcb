//! Property tests of the index: any interleaving of watch events, relists (`Init`/`InitApply`/
//! `InitDone`, including a list restarted half way) and flushes ends in the same view as a
//! fresh index listing the final state, and a relist never shows an intermediate view (in
//! particular never an empty one) before its `InitDone`; and after every flush the
//! incrementally kept desired keys and per-target counts equal the pure functions
//! ([`desired::desired_keys`], [`desired::endpoints_per_target`]) over all current outcomes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use proptest::prelude::*;

use super::*;
use crate::desired::props::{pod, registration};

const PREFIX: &str = "registrar";

/// What the API server holds, by namespace and name.
#[derive(Clone, Debug, Default)]
struct Cluster {
    regs: BTreeMap<(String, String), ServiceRegistration>,
    pods: BTreeMap<(String, String), Pod>,
}

fn id(meta: &kube::api::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The first object named `name` (any namespace).
fn named<'a, K>(objects: &'a BTreeMap<(String, String), K>, name: &str) -> Option<&'a K> {
    objects.iter().find(|((_, n), _)| n == name).map(|(_, k)| k)
}

#[derive(Clone, Debug)]
enum Step {
    PutReg(Box<ServiceRegistration>),
    DeleteReg(usize),
    PutPod(Box<Pod>),
    DeletePod(usize),
    /// Changes the watch missed (those of the relisted kind are applied to the cluster
    /// silently), then a relist of pods (`pods == true`) or registrations; `restart` abandons
    /// a first list half way.
    Relist {
        missed: Vec<Step>,
        pods: bool,
        restart: bool,
    },
    Flush,
}

fn change() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0usize..4).prop_flat_map(|i| registration(i).prop_map(|r| Step::PutReg(Box::new(r)))),
        1 => (0usize..4).prop_map(Step::DeleteReg),
        3 => (0usize..8).prop_flat_map(|i| pod(i).prop_map(|p| Step::PutPod(Box::new(p)))),
        1 => (0usize..8).prop_map(Step::DeletePod),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => change(),
        2 => Just(Step::Flush),
        1 => (proptest::collection::vec(change(), 0..4), any::<bool>(), any::<bool>())
            .prop_map(|(missed, pods, restart)| Step::Relist { missed, pods, restart }),
    ]
}

impl Cluster {
    /// Applies a change to the cluster only.
    fn change(&mut self, step: &Step) {
        match step {
            Step::PutReg(r) => {
                self.regs.insert(id(&r.metadata), (**r).clone());
            }
            Step::DeleteReg(i) => {
                if let Some(r) = named(&self.regs, &format!("r{i}")) {
                    self.regs.remove(&id(&r.metadata));
                }
            }
            Step::PutPod(p) => {
                self.pods.insert(id(&p.metadata), (**p).clone());
            }
            Step::DeletePod(i) => {
                if let Some(p) = named(&self.pods, &format!("p{i}")) {
                    self.pods.remove(&id(&p.metadata));
                }
            }
            Step::Relist { .. } | Step::Flush => {}
        }
    }
}

fn list_regs(index: &mut Index, cluster: &Cluster) {
    index.apply_registration(Event::Init);
    for r in cluster.regs.values() {
        index.apply_registration(Event::InitApply(r.clone()));
    }
    index.apply_registration(Event::InitDone);
}

fn list_pods(index: &mut Index, cluster: &Cluster) {
    index.apply_pod(Event::Init);
    for p in cluster.pods.values() {
        index.apply_pod(Event::InitApply(p.clone()));
    }
    index.apply_pod(Event::InitDone);
}

fn fresh(cluster: &Cluster) -> Index {
    fresh_with(cluster, Index::new(PREFIX))
}

/// [`fresh`] from `index` (empty).
fn fresh_with(cluster: &Cluster, mut index: Index) -> Index {
    list_regs(&mut index, cluster);
    list_pods(&mut index, cluster);
    index.flush();
    index
}

/// Starts a relist of pods or registrations.
fn init(index: &mut Index, pods: bool) {
    if pods {
        index.apply_pod(Event::Init);
    } else {
        index.apply_registration(Event::Init);
    }
}

/// The listed objects of a relist.
fn init_apply(index: &mut Index, cluster: &Cluster, pods: bool) {
    if pods {
        for p in cluster.pods.values() {
            index.apply_pod(Event::InitApply(p.clone()));
        }
    } else {
        for r in cluster.regs.values() {
            index.apply_registration(Event::InitApply(r.clone()));
        }
    }
}

/// The view: desired keys and every registration's outcome.
fn view(index: &Index) -> (BTreeMap<String, String>, Vec<(RegKey, RegistrationOutcome)>) {
    let outcomes = index
        .registrations()
        .filter_map(|(k, _)| Some((k.clone(), index.outcome(k)?.clone())))
        .collect();
    (index.desired_keys(), outcomes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_interleaving_converges_to_a_fresh_list(
        initial in proptest::collection::vec(change(), 0..8),
        steps in proptest::collection::vec(step(), 0..25),
    ) {
        let mut cluster = Cluster::default();
        for c in &initial {
            cluster.change(c);
        }
        let mut index = fresh(&cluster);
        prop_assert!(index.synced());
        for step in &steps {
            match step {
                Step::PutReg(_) | Step::DeleteReg(_) | Step::PutPod(_) | Step::DeletePod(_) => {
                    // `deliver` also applies the step to `cluster`.
                    deliver(&mut index, &mut cluster, step);
                    continue;
                }
                Step::Flush => {
                    index.flush();
                }
                Step::Relist { missed, pods, restart } => {
                    index.flush();
                    let before = view(&index);
                    // The watch of the relisted kind missed these (the other kind's watch did not).
                    for m in missed {
                        if matches!(m, Step::PutPod(_) | Step::DeletePod(_)) == *pods {
                            cluster.change(m);
                        }
                    }
                    init(&mut index, *pods);
                    if *restart {
                        init_apply(&mut index, &cluster, *pods);
                        init(&mut index, *pods);
                    }
                    init_apply(&mut index, &cluster, *pods);
                    index.flush();
                    prop_assert_eq!(&view(&index), &before, "the view moved before InitDone");
                    if *pods {
                        index.apply_pod(Event::InitDone);
                    } else {
                        index.apply_registration(Event::InitDone);
                    }
                }
            }
            cluster.change(step);
        }
        index.flush();
        let want = fresh(&cluster);
        prop_assert_eq!(view(&index), view(&want));
        prop_assert_eq!(index.pod_count(), cluster.pods.len());
        // Indexing the pods by label for every flush changes nothing.
        let by_label = fresh_with(&cluster, Index::new(PREFIX).with_label_index_from(1));
        prop_assert_eq!(view(&by_label), view(&want));
        // And the fresh view is the pure function of the final objects.
        let outcomes: Vec<RegistrationOutcome> = cluster
            .regs
            .values()
            .map(|r| desired::registration_outcome(PREFIX, r, cluster.pods.values()))
            .collect();
        prop_assert_eq!(want.desired_keys(), desired::desired_keys(PREFIX, &outcomes));
    }
}

/// Applies `step` to `index` as the watch would deliver it (a relist is delivered whole).
fn deliver(index: &mut Index, cluster: &mut Cluster, step: &Step) {
    match step {
        Step::PutReg(r) => index.apply_registration(Event::Apply((**r).clone())),
        Step::DeleteReg(i) => {
            if let Some(r) = named(&cluster.regs, &format!("r{i}")) {
                index.apply_registration(Event::Delete(r.clone()));
            }
        }
        Step::PutPod(p) => index.apply_pod(Event::Apply((**p).clone())),
        Step::DeletePod(i) => {
            if let Some(p) = named(&cluster.pods, &format!("p{i}")) {
                index.apply_pod(Event::Delete(p.clone()));
            }
        }
        Step::Flush => {}
        Step::Relist { missed, pods, .. } => {
            for m in missed {
                if matches!(m, Step::PutPod(_) | Step::DeletePod(_)) == *pods {
                    cluster.change(m);
                }
            }
            if *pods {
                list_pods(index, cluster);
            } else {
                list_regs(index, cluster);
            }
        }
    }
    cluster.change(step);
}

/// Flushes `index`, applies the per-target changes it reports to `gauge` (as the metrics do)
/// and checks the incremental state against the pure functions.
fn flush_and_check(
    index: &mut Index,
    gauge: &mut BTreeMap<desired::TargetName, usize>,
) -> Result<(), TestCaseError> {
    let flushed = index.flush();
    let mut seen = std::collections::BTreeSet::new();
    for t in &flushed.targets {
        prop_assert!(seen.insert(t.target.clone()), "{} reported twice", t.target);
        let Some(name) = desired::target_name(PREFIX, &t.target) else {
            continue;
        };
        match t.endpoints {
            Some(n) => {
                let before = gauge.insert(name, n);
                prop_assert_ne!(before, Some(n), "{} reported unchanged", t.target);
            }
            None => {
                prop_assert!(gauge.remove(&name).is_some(), "{} removed unseen", t.target);
            }
        }
    }
    let outcomes: Vec<&RegistrationOutcome> = index.outcomes().collect();
    let want = desired::desired_keys(PREFIX, outcomes.iter().copied());
    prop_assert_eq!(&index.desired_keys(), &want);
    let counts = desired::endpoints_per_target(PREFIX, want.keys(), index.targets());
    prop_assert_eq!(&*gauge, &counts);
    Ok(())
}

/// A registration in a cluster made for overlaps: mostly one namespace and two services, so
/// several registrations share a target and want the same addresses with different values
/// (metadata), ordered by creation time and name.
fn overlapping_registration(index: usize) -> impl Strategy<Value = ServiceRegistration> {
    (
        proptest::sample::select(&["shop", "shop", "shop", "other"][..]),
        proptest::sample::select(&["svc-a", "svc-b"][..]),
        proptest::sample::select(&["a", "b"][..]),
        proptest::option::of(proptest::sample::select(&["gold", "silver"][..])),
        proptest::option::of(0i64..3),
        proptest::bool::weighted(0.1),
    )
        .prop_map(move |(ns, service, app, tier, created, deleting)| {
            let mut reg: ServiceRegistration = serde_json::from_value(serde_json::json!({
                "apiVersion": "registrar.dev/v1alpha1", "kind": "ServiceRegistration",
                "metadata": {"name": format!("r{index}"), "namespace": ns},
                "spec": {"service": service, "selector": {"matchLabels": {"app": app}},
                         "port": 50051, "metadata": tier.map(|t| BTreeMap::from([("tier", t)]))}
            }))
            .unwrap_or_else(|e| panic!("a registration: {e}"));
            let time = |s: i64| {
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::from_second(s).unwrap_or_default(),
                )
            };
            reg.metadata.creation_timestamp = created.map(|s| time(1_000 + s));
            reg.metadata.deletion_timestamp = deleting.then(|| time(2_000));
            reg
        })
}

/// A pod in a cluster made for overlaps: few labels and few addresses (pods share them).
fn overlapping_pod(index: usize) -> impl Strategy<Value = Pod> {
    (
        proptest::sample::select(&["shop", "shop", "shop", "other"][..]),
        proptest::sample::select(&["a", "b"][..]),
        1u8..4,
        proptest::bool::weighted(0.7),
    )
        .prop_map(move |(ns, app, host, ready)| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("p{index}"), "namespace": ns, "labels": {"app": app}},
                "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 50051}]}],
                         "nodeName": "n1"},
                "status": {"phase": "Running", "podIP": format!("192.0.2.{host}"),
                           "conditions": [{"type": "Ready",
                                           "status": if ready {"True"} else {"False"}}]}
            }))
            .unwrap_or_else(|e| panic!("a pod: {e}"))
        })
}

fn overlapping_change() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0usize..4).prop_flat_map(|i| overlapping_registration(i).prop_map(|r| Step::PutReg(Box::new(r)))),
        1 => (0usize..4).prop_map(Step::DeleteReg),
        4 => (0usize..8).prop_flat_map(|i| overlapping_pod(i).prop_map(|p| Step::PutPod(Box::new(p)))),
        1 => (0usize..8).prop_map(Step::DeletePod),
    ]
}

/// Steps of either kind of cluster: the general one (every rule) or the overlapping one.
fn any_step(overlapping: bool) -> BoxedStrategy<Step> {
    let change = if overlapping {
        overlapping_change().boxed()
    } else {
        change().boxed()
    };
    prop_oneof![
        6 => change.clone(),
        2 => Just(Step::Flush),
        1 => (proptest::collection::vec(change, 0..4), any::<bool>())
            .prop_map(|(missed, pods)| Step::Relist { missed, pods, restart: false }),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn incremental_desired_keys_and_counts_equal_the_pure_functions(
        (initial, steps) in any::<bool>().prop_flat_map(|overlapping| (
            proptest::collection::vec(any_step(overlapping), 0..10),
            proptest::collection::vec(any_step(overlapping), 0..40),
        )),
        scan in any::<bool>(),
    ) {
        let mut cluster = Cluster::default();
        for c in &initial {
            cluster.change(c);
        }
        let mut index = Index::new(PREFIX);
        if scan {
            // Every pod of the namespace checked, instead of the label index's candidates.
            index = index.with_label_index_from(usize::MAX);
        }
        list_regs(&mut index, &cluster);
        list_pods(&mut index, &cluster);
        let mut gauge = BTreeMap::new();
        flush_and_check(&mut index, &mut gauge)?;
        for step in &steps {
            deliver(&mut index, &mut cluster, step);
            if matches!(step, Step::Flush | Step::Relist { .. }) {
                flush_and_check(&mut index, &mut gauge)?;
            }
        }
        flush_and_check(&mut index, &mut gauge)?;
        // And the end state is a fresh index's.
        let fresh = fresh(&cluster);
        prop_assert_eq!(index.desired_keys(), fresh.desired_keys());
    }
}
