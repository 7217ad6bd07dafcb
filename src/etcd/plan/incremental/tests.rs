//! The incremental plan against the full one: unit cases, and a property test that drives a
//! model of etcd and of the writer (its real [`Known`] state and [`Planner`]) through random
//! sequences of desired changes, foreign changes, lease changes, `complete` toggles, new
//! sessions and flushes whose transactions fail midway (committed or not), asserting at
//! every flush that the incremental operations are exactly the full plan's.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use registrar_etcd::KvEvent;

use super::*;
use crate::etcd::known::{Known, Seen};
use crate::etcd::plan::{batches, owner_key};

const P: &str = "registrar";

fn put(k: &str, v: &str) -> Op {
    Op::Put {
        key: k.into(),
        value: v.into(),
    }
}

fn keys(n: usize) -> DesiredKeys {
    (0..n)
        .map(|i| {
            (
                format!("{P}/shop/greeter/192.0.2.{i}:50051"),
                "v".to_string(),
            )
        })
        .collect()
}

fn in_line(desired: &DesiredKeys, lease: i64) -> BTreeMap<String, KnownKv> {
    desired
        .iter()
        .map(|(k, v)| {
            let kv = KnownKv {
                value: v.clone(),
                lease,
            };
            (k.clone(), kv)
        })
        .collect()
}

#[test]
fn one_changed_key_is_the_only_candidate() {
    let desired = keys(5000);
    let known = in_line(&desired, 7);
    let mut planner = Planner::new();
    let first = planner.plan(P, &known, &desired, true, 7);
    assert_eq!(
        first,
        Planned {
            ops: vec![],
            candidates: None
        },
        "first plan is full"
    );
    planner.committed(&desired, true, 7);

    let mut next = desired.clone();
    let key = format!("{P}/shop/greeter/192.0.2.42:50051");
    next.insert(key.clone(), "w".into());
    let got = planner.plan(P, &known, &next, true, 7);
    assert_eq!(got.ops, vec![put(&key, "w")]);
    assert_eq!(got.candidates, Some(1));
    assert_eq!(got.ops, plan(P, &known, &next, true, 7));
}

#[test]
fn no_baseline_after_an_uncommitted_plan_and_on_lease_or_complete_change() {
    let desired = keys(10);
    let known = in_line(&desired, 7);
    let mut planner = Planner::new();
    planner.plan(P, &known, &desired, true, 7);
    planner.committed(&desired, true, 7);
    // planned but never committed: the next plan is full
    assert!(
        planner
            .plan(P, &known, &desired, true, 7)
            .candidates
            .is_some()
    );
    assert_eq!(planner.plan(P, &known, &desired, true, 7).candidates, None);
    planner.committed(&desired, true, 7);
    let relet = planner.plan(P, &known, &desired, true, 8);
    assert_eq!(
        (relet.ops.len(), relet.candidates),
        (10, None),
        "new lease: all put again"
    );
    planner.committed(&desired, true, 7);
    assert_eq!(planner.plan(P, &known, &desired, false, 7).candidates, None);
    planner.committed(&desired, true, 7);
    planner.reset();
    assert_eq!(planner.plan(P, &known, &desired, true, 7).candidates, None);
}

#[test]
fn foreign_change_is_a_candidate() {
    let desired = keys(10);
    let mut known = in_line(&desired, 7);
    let mut planner = Planner::new();
    planner.plan(P, &known, &desired, true, 7);
    planner.committed(&desired, true, 7);
    let stray = format!("{P}/shop/greeter/stray");
    known.insert(
        stray.clone(),
        KnownKv {
            value: "x".into(),
            lease: 0,
        },
    );
    planner.changed(stray.clone());
    let got = planner.plan(P, &known, &desired, true, 7);
    assert_eq!(got.ops, vec![Op::Delete { key: stray }]);
    assert_eq!(got.candidates, Some(1));
}

/// etcd under the prefix, with the watch events not yet delivered to the writer.
#[derive(Debug, Default)]
struct Etcd {
    kvs: BTreeMap<String, KnownKv>,
    revision: i64,
    queued: VecDeque<KvEvent>,
}

impl Etcd {
    /// One transaction: one revision, one event per operation.
    fn txn(&mut self, ops: &[(String, Option<String>)], lease: i64) -> i64 {
        self.revision += 1;
        for (key, value) in ops {
            match value {
                Some(value) => {
                    let kv = KnownKv {
                        value: value.clone(),
                        lease,
                    };
                    self.kvs.insert(key.clone(), kv);
                }
                None => {
                    self.kvs.remove(key);
                }
            }
            self.queued.push_back(KvEvent {
                key: key.clone(),
                value: value.as_ref().map(|v| v.as_bytes().to_vec()),
                lease: if value.is_some() { lease } else { 0 },
                revision: self.revision,
            });
        }
        self.revision
    }

    fn ops_txn(&mut self, ops: &[Op], lease: i64) -> i64 {
        let ops: Vec<_> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => (key.clone(), Some(value.clone())),
                Op::Delete { key } => (key.clone(), None),
            })
            .collect();
        self.txn(&ops, lease)
    }

    /// A lease ends: its keys go, in one revision.
    fn expire(&mut self, lease: i64) {
        let gone: Vec<_> = self
            .kvs
            .iter()
            .filter(|(_, kv)| kv.lease == lease)
            .map(|(k, _)| (k.clone(), None))
            .collect();
        if !gone.is_empty() {
            self.txn(&gone, 0);
        }
    }
}

/// The writer's state, as `writer.rs` keeps it.
struct Sim {
    etcd: Etcd,
    known: Known,
    planner: Planner,
    lease: i64,
    desired: DesiredKeys,
    complete: bool,
    /// Flushes that planned incrementally / fully, and failed.
    incremental: usize,
    full: usize,
    failed: usize,
}

impl Sim {
    fn new() -> Self {
        Sim {
            etcd: Etcd::default(),
            known: Known::default(),
            planner: Planner::new(),
            lease: 1,
            desired: DesiredKeys::new(),
            complete: false,
            incremental: 0,
            full: 0,
            failed: 0,
        }
    }

    /// The watch delivers the events of the next `revisions` revisions (as `on_update`).
    fn deliver(&mut self, revisions: usize) {
        let Some(first) = self.etcd.queued.front().map(|e| e.revision) else {
            return;
        };
        let upto = first.saturating_add(i64::try_from(revisions).unwrap_or(i64::MAX));
        while self.etcd.queued.front().is_some_and(|e| e.revision <= upto) {
            let Some(ev) = self.etcd.queued.pop_front() else {
                break;
            };
            // the watch is on `<prefix>/`; the claim is handled apart
            if !ours(&ev.key) {
                continue;
            }
            let key = ev.key.clone();
            if self.known.apply(ev) == Seen::Foreign {
                self.planner.changed(key);
            }
        }
        self.known.progress(upto.min(self.etcd.revision));
    }

    /// A new session that lists the prefix again (as `session` and `on_update`).
    fn relist(&mut self) {
        self.etcd.queued.clear();
        self.known = Known::listed(ours_only(&self.etcd.kvs), self.etcd.revision);
        self.planner.reset();
    }

    /// A flush (as `Writer::flush`): the plan must be the full plan's; the batch `fail_at`
    /// fails (its transaction committed or not), ending the flush.
    fn flush(
        &mut self,
        max_ops: usize,
        fail_at: Option<(usize, bool)>,
    ) -> Result<(), TestCaseError> {
        let full = plan(P, &self.known.kvs, &self.desired, self.complete, self.lease);
        let planned =
            self.planner
                .plan(P, &self.known.kvs, &self.desired, self.complete, self.lease);
        prop_assert_eq!(&planned.ops, &full, "candidates {:?}", planned.candidates);
        match planned.candidates {
            Some(_) => self.incremental += 1,
            None => self.full += 1,
        }
        for (i, batch) in batches(planned.ops, max_ops, usize::MAX).iter().enumerate() {
            if let Some((at, committed)) = fail_at
                && at == i
            {
                if committed {
                    // committed, but the answer was lost: the writer does not record it
                    self.etcd.ops_txn(batch, self.lease);
                }
                self.failed += 1;
                return Ok(());
            }
            let revision = self.etcd.ops_txn(batch, self.lease);
            self.known.record_own(batch, self.lease, revision);
        }
        self.planner
            .committed(&self.desired, self.complete, self.lease);
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Action {
    /// Changes derived from the current desired state (shares its structure).
    Desired(Vec<(String, Option<String>)>),
    /// A desired state built anew (shares nothing with the previous one).
    Rebuilt(Vec<(String, String)>),
    /// Someone else writes one key, under no lease, ours or another one.
    Foreign(String, Option<String>, u8),
    Deliver(usize),
    ToggleComplete,
    /// The lease is lost: its keys go, a new one is granted, the prefix is listed again.
    LeaseLost,
    /// The writer's lease id changes without a listing (a guard of the planner itself).
    LeaseSwap,
    /// A new session listing again.
    Relist,
    Flush(usize, Option<(usize, bool)>),
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => (0u8..40).prop_map(|i| format!("{P}/shop/greeter/192.0.2.{i}:50051")),
        1 => Just(owner_key(P)),
        1 => (0u8..3).prop_map(|i| format!("{P}x/shop/s/{i}")),
        1 => (0u8..3).prop_map(|i| format!("other/{i}")),
    ]
}

fn value() -> impl Strategy<Value = String> {
    (0u8..3).prop_map(|i| format!("v{i}"))
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => proptest::collection::vec((key(), proptest::option::of(value())), 1..6)
            .prop_map(Action::Desired),
        1 => proptest::collection::vec((key(), value()), 0..40).prop_map(Action::Rebuilt),
        3 => (key(), proptest::option::of(value()), 0u8..3)
            .prop_map(|(k, v, l)| Action::Foreign(k, v, l)),
        3 => (1usize..4).prop_map(Action::Deliver),
        1 => Just(Action::ToggleComplete),
        1 => Just(Action::LeaseLost),
        1 => Just(Action::LeaseSwap),
        1 => Just(Action::Relist),
        6 => (1usize..5, proptest::option::of((0usize..4, any::<bool>())))
            .prop_map(|(m, f)| Action::Flush(m, f)),
    ]
}

fn ours(key: &str) -> bool {
    key.starts_with(&format!("{P}/")) && key != owner_key(P)
}

fn ours_only(kvs: &BTreeMap<String, KnownKv>) -> BTreeMap<String, KnownKv> {
    kvs.iter()
        .filter(|(k, _)| ours(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn incremental_plan_is_the_full_plan(actions in proptest::collection::vec(action(), 1..60)) {
        let mut sim = Sim::new();
        sim.relist();
        for action in actions {
            match action {
                Action::Desired(changes) => {
                    let mut next = sim.desired.clone();
                    for (k, v) in changes {
                        match v {
                            Some(v) => { next.insert(k, v); }
                            None => { next.remove(&k); }
                        }
                    }
                    sim.desired = next;
                }
                Action::Rebuilt(entries) => sim.desired = entries.into_iter().collect(),
                Action::Foreign(k, v, l) => {
                    let lease = [0, sim.lease, 999][usize::from(l)];
                    sim.etcd.txn(&[(k, v)], lease);
                }
                Action::Deliver(n) => sim.deliver(n),
                Action::ToggleComplete => sim.complete = !sim.complete,
                Action::LeaseLost => {
                    sim.etcd.expire(sim.lease);
                    sim.lease += 1;
                    sim.relist();
                }
                Action::LeaseSwap => sim.lease += 1,
                Action::Relist => sim.relist(),
                Action::Flush(max_ops, fail_at) => sim.flush(max_ops, fail_at)?,
            }
        }
        // The end: complete, every change delivered, one flush that commits.
        sim.complete = true;
        sim.deliver(usize::MAX / 2);
        sim.flush(3, None)?;
        sim.deliver(usize::MAX / 2);
        let want: BTreeMap<String, KnownKv> = sim
            .desired
            .iter()
            .filter(|(k, _)| ours(k))
            .map(|(k, v)| (k.clone(), KnownKv { value: v.clone(), lease: sim.lease }))
            .collect();
        prop_assert_eq!(ours_only(&sim.known.kvs), want.clone(), "known == desired");
        prop_assert_eq!(ours_only(&sim.etcd.kvs), want, "etcd == desired");
        let last = sim.planner.plan(P, &sim.known.kvs, &sim.desired, true, sim.lease);
        prop_assert!(last.ops.is_empty(), "nothing left: {:?}", last.ops);
        prop_assert!(last.candidates.is_some(), "in line after a committed flush");
    }
}

/// The model's flushes do plan incrementally most of the time (the property above would hold
/// trivially if every plan were a full one).
#[test]
fn the_model_mostly_plans_incrementally() {
    let mut sim = Sim::new();
    sim.relist();
    sim.complete = true;
    for i in 0..200u32 {
        let mut next = sim.desired.clone();
        next.insert(
            format!("{P}/shop/greeter/192.0.2.{}:50051", i % 37),
            format!("v{}", i % 3),
        );
        if i % 5 == 0 {
            next.remove(&format!("{P}/shop/greeter/192.0.2.{}:50051", i % 11));
        }
        sim.desired = next;
        if i % 7 == 0 {
            sim.etcd.txn(
                &[(format!("{P}/shop/greeter/stray{i}"), Some("x".into()))],
                0,
            );
        }
        sim.deliver(3);
        let fail = (i % 50 == 49).then_some((0, i % 100 == 99));
        sim.flush(2, fail).expect("incremental == full");
    }
    println!(
        "flushes: {} incremental, {} full, {} failed",
        sim.incremental, sim.full, sim.failed
    );
    assert!(sim.incremental >= 190, "{} incremental", sim.incremental);
    assert!(sim.failed >= 1, "some flushes failed");
    assert!(
        (1..=1 + sim.failed).contains(&sim.full),
        "full plans: the first and one after each failure"
    );
}
