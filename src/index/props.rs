//! Property test of the index: any interleaving of watch events, relists (`Init`/`InitApply`/
//! `InitDone`, including a list restarted half way) and flushes ends in the same view as a
//! fresh index listing the final state, and a relist never shows an intermediate view (in
//! particular never an empty one) before its `InitDone`.

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
