//! The pure write decision: given what etcd holds under the prefix and what should be there,
//! which puts and deletes bring etcd to the desired state, cut into transaction-sized batches.
//!
//! No I/O here; `writer` executes the batches. Rules:
//! - a desired key is put when etcd lacks it, holds another value, or holds it under another
//!   lease than the writer's current one (a key of a lost or foreign lease would vanish with it);
//! - a key under the prefix that is not desired is deleted, but only when the desired state is
//!   `complete` (both kube caches listed) — otherwise the writer only adds;
//! - the claim key `<prefix>/.owner` is never put or deleted here, and keys outside `<prefix>/`
//!   are never touched;
//! - puts come before deletes, so a rollout never drops a service to zero endpoints in between;
//! - a batch holds at most `max_ops` operations and about `max_bytes` of keys and values (etcd
//!   refuses transactions with more than 128 operations or requests over 1.5 MiB by default);
//! - the writer plans incrementally ([`Planner`], `plan/incremental.rs`): it looks only at the
//!   keys that may differ (the desired state's diff against the one last written in full, and
//!   the keys someone else changed since) and gives exactly the operations, in the same order,
//!   of a full [`plan`]; a full plan runs whenever that cannot be trusted (see there).

use std::collections::BTreeMap;

use super::DesiredKeys;

mod incremental;

pub use incremental::{Planned, Planner};

/// What the writer knows about one key under its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownKv {
    pub value: String,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put `value` at `key` under the writer's current lease.
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }

    /// Approximate bytes this operation adds to a request.
    fn size(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len() + 16,
            Op::Delete { key } => key.len() + 8,
        }
    }
}

/// The claim key of `prefix`: `<prefix>/.owner` (a namespace cannot start with '.').
pub fn owner_key(prefix: &str) -> String {
    format!("{prefix}/.owner")
}

/// The operations that turn `known` into `desired` (see the module docs). `lease` is the
/// writer's current lease. Output order: puts by key, then deletes by key.
pub fn plan(
    prefix: &str,
    known: &BTreeMap<String, KnownKv>,
    desired: &DesiredKeys,
    complete: bool,
    lease: i64,
) -> Vec<Op> {
    let scope = Scope::new(prefix);

    let mut ops: Vec<Op> = desired
        .iter()
        .filter(|(key, _)| scope.ours(key))
        .filter(|(key, value)| put_needed(known.get(*key), value, lease))
        .map(|(key, value)| Op::Put {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    if complete {
        ops.extend(
            known
                .keys()
                .filter(|key| scope.ours(key) && !desired.contains_key(*key))
                .map(|key| Op::Delete { key: key.clone() }),
        );
    }
    ops
}

/// The operations [`plan`] gives for `keys` (ascending, each once) and for no other key, in
/// the same order: every key [`plan`] would write that is among `keys` gets the same
/// operation.
pub fn plan_keys<'a>(
    prefix: &str,
    known: &BTreeMap<String, KnownKv>,
    desired: &DesiredKeys,
    complete: bool,
    lease: i64,
    keys: impl IntoIterator<Item = &'a str>,
) -> Vec<Op> {
    let scope = Scope::new(prefix);
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    for key in keys.into_iter().filter(|key| scope.ours(key)) {
        match desired.get(key) {
            Some(value) => {
                if put_needed(known.get(key), value, lease) {
                    puts.push(Op::Put {
                        key: key.to_owned(),
                        value: value.clone(),
                    });
                }
            }
            None => {
                if complete && known.contains_key(key) {
                    deletes.push(Op::Delete {
                        key: key.to_owned(),
                    });
                }
            }
        }
    }
    puts.append(&mut deletes);
    puts
}

/// A desired `value` is put when etcd lacks the key, holds another value, or holds it under
/// another lease.
fn put_needed(known: Option<&KnownKv>, value: &str, lease: i64) -> bool {
    known.is_none_or(|k| k.value != value || k.lease != lease)
}

/// The keys the writer may touch: under `<prefix>/`, except the claim key.
struct Scope {
    dir: String,
    owner: String,
}

impl Scope {
    fn new(prefix: &str) -> Self {
        Scope {
            dir: format!("{prefix}/"),
            owner: owner_key(prefix),
        }
    }

    fn ours(&self, key: &str) -> bool {
        key.starts_with(&self.dir) && key != self.owner
    }
}

/// Cuts `ops` into batches of at most `max_ops` operations (at least 1) and, where more than
/// one operation is in a batch, at most `max_bytes`. Order is kept.
pub fn batches(ops: Vec<Op>, max_ops: usize, max_bytes: usize) -> Vec<Vec<Op>> {
    let max_ops = max_ops.max(1);
    let mut out = Vec::new();
    let mut batch: Vec<Op> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = op.size();
        if !batch.is_empty() && (batch.len() >= max_ops || bytes + size > max_bytes) {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(op);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "registrar";
    const L: i64 = 7;

    fn known(entries: &[(&str, &str, i64)]) -> BTreeMap<String, KnownKv> {
        entries
            .iter()
            .map(|(k, v, l)| {
                (
                    k.to_string(),
                    KnownKv {
                        value: v.to_string(),
                        lease: *l,
                    },
                )
            })
            .collect()
    }

    fn desired(entries: &[(&str, &str)]) -> DesiredKeys {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    fn del(k: &str) -> Op {
        Op::Delete { key: k.into() }
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            known: &'static [(&'static str, &'static str, i64)],
            desired: &'static [(&'static str, &'static str)],
            complete: bool,
            want: Vec<Op>,
        }
        let cases = [
            Case {
                name: "empty both",
                known: &[],
                desired: &[],
                complete: true,
                want: vec![],
            },
            Case {
                name: "missing key is put",
                known: &[],
                desired: &[("registrar/a/s/1", "v1")],
                complete: true,
                want: vec![put("registrar/a/s/1", "v1")],
            },
            Case {
                name: "in sync is nothing",
                known: &[("registrar/a/s/1", "v1", L)],
                desired: &[("registrar/a/s/1", "v1")],
                complete: true,
                want: vec![],
            },
            Case {
                name: "altered value is put back",
                known: &[("registrar/a/s/1", "hand-edited", L)],
                desired: &[("registrar/a/s/1", "v1")],
                complete: true,
                want: vec![put("registrar/a/s/1", "v1")],
            },
            Case {
                name: "same value under another lease is re-attached",
                known: &[("registrar/a/s/1", "v1", 3), ("registrar/a/s/2", "v2", 0)],
                desired: &[("registrar/a/s/1", "v1"), ("registrar/a/s/2", "v2")],
                complete: true,
                want: vec![put("registrar/a/s/1", "v1"), put("registrar/a/s/2", "v2")],
            },
            Case {
                name: "unwanted key deleted when complete",
                known: &[("registrar/a/s/1", "v1", L), ("registrar/a/s/2", "v2", L)],
                desired: &[("registrar/a/s/1", "v1")],
                complete: true,
                want: vec![del("registrar/a/s/2")],
            },
            Case {
                name: "nothing deleted while incomplete",
                known: &[("registrar/a/s/1", "v1", L), ("registrar/a/s/2", "v2", L)],
                desired: &[("registrar/a/s/3", "v3")],
                complete: false,
                want: vec![put("registrar/a/s/3", "v3")],
            },
            Case {
                name: "owner key never deleted",
                known: &[("registrar/.owner", "cluster-a", 0)],
                desired: &[],
                complete: true,
                want: vec![],
            },
            Case {
                name: "owner key never put even if asked",
                known: &[],
                desired: &[("registrar/.owner", "evil")],
                complete: true,
                want: vec![],
            },
            Case {
                name: "keys outside the prefix never touched",
                known: &[("registrar2/x", "v", L), ("registrar", "v", L)],
                desired: &[("other/a/s/1", "v1"), ("registrarx/a", "v")],
                complete: true,
                want: vec![],
            },
            Case {
                name: "puts before deletes, each sorted",
                known: &[("registrar/a/s/0", "v0", L), ("registrar/a/s/9", "v9", L)],
                desired: &[("registrar/a/s/5", "v5"), ("registrar/a/s/2", "v2")],
                complete: true,
                want: vec![
                    put("registrar/a/s/2", "v2"),
                    put("registrar/a/s/5", "v5"),
                    del("registrar/a/s/0"),
                    del("registrar/a/s/9"),
                ],
            },
        ];
        for c in cases {
            let got = plan(P, &known(c.known), &desired(c.desired), c.complete, L);
            assert_eq!(got, c.want, "case {:?}", c.name);
        }
    }

    #[test]
    fn owner_key_format() {
        assert_eq!(owner_key("registrar"), "registrar/.owner");
    }

    #[test]
    fn batches_of_at_most_max_ops() {
        let ops: Vec<Op> = (0..500)
            .map(|i| put(&format!("registrar/a/s/{i:03}"), "v"))
            .collect();
        let b = batches(ops.clone(), 128, usize::MAX);
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            [128, 128, 128, 116]
        );
        assert_eq!(b.concat(), ops, "order kept, nothing lost");
        assert!(batches(vec![], 128, usize::MAX).is_empty());
        assert_eq!(batches(ops[..3].to_vec(), 0, usize::MAX).len(), 3);
    }

    #[test]
    fn batches_respect_bytes_but_never_drop_a_big_op() {
        let big = "x".repeat(1000);
        let ops = vec![put("k1", &big), put("k2", &big), put("k3", "v"), del("k4")];
        let b = batches(ops.clone(), 128, 1500);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0], vec![put("k1", &big)]);
        assert_eq!(b.concat(), ops);
        let huge = vec![put("k", &"y".repeat(5000))];
        assert_eq!(batches(huge.clone(), 128, 100), vec![huge]);
    }

    mod props {
        //! Property tests: applying the batches of a plan to a random known state gives exactly
        //! the desired state; batches stay within etcd's limits; nothing is deleted when the
        //! desired state is incomplete.

        use super::*;
        use proptest::prelude::*;

        /// Keys under and around the prefix: ours, the claim key, a sibling prefix, outside.
        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => (0u16..400).prop_map(|i| format!("{P}/shop/greeter/192.0.2.{}:{i}", i % 7)),
                1 => Just(owner_key(P)),
                1 => (0u8..3).prop_map(|i| format!("{P}x/shop/s/{i}")),
                1 => (0u8..3).prop_map(|i| format!("other/{i}")),
            ]
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => (0u8..3).prop_map(|i| format!("v{i}")),
                1 => (0usize..3000).prop_map(|n| "x".repeat(n)),
            ]
        }

        fn known_state() -> impl Strategy<Value = BTreeMap<String, KnownKv>> {
            proptest::collection::btree_map(
                key(),
                (value(), proptest::sample::select(&[0i64, L, 8][..]))
                    .prop_map(|(value, lease)| KnownKv { value, lease }),
                0..300,
            )
        }

        fn desired_state() -> impl Strategy<Value = DesiredKeys> {
            proptest::collection::btree_map(key(), value(), 0..300)
                .prop_map(|m| m.into_iter().collect())
        }

        fn ours(key: &str) -> bool {
            key.starts_with(&format!("{P}/")) && key != owner_key(P)
        }

        /// `known` after the batches ran, in order, under lease `L`.
        fn apply(
            mut state: BTreeMap<String, KnownKv>,
            batches: &[Vec<Op>],
        ) -> BTreeMap<String, KnownKv> {
            for op in batches.iter().flatten() {
                match op {
                    Op::Put { key, value } => {
                        state.insert(
                            key.clone(),
                            KnownKv {
                                value: value.clone(),
                                lease: L,
                            },
                        );
                    }
                    Op::Delete { key } => {
                        state.remove(key);
                    }
                }
            }
            state
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn batches_bring_known_to_desired(
                known in known_state(),
                desired in desired_state(),
                complete in any::<bool>(),
                max_ops in prop_oneof![Just(128usize), 1usize..20],
                max_bytes in prop_oneof![Just(1024 * 1024usize), 100usize..8000],
            ) {
                let ops = plan(P, &known, &desired, complete, L);
                let count = ops.len();
                let batches = batches(ops, max_ops, max_bytes);
                prop_assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), count);
                for batch in &batches {
                    prop_assert!(!batch.is_empty());
                    prop_assert!(batch.len() <= max_ops);
                    let bytes: usize = batch.iter().map(Op::size).sum();
                    prop_assert!(batch.len() == 1 || bytes <= max_bytes, "{} ops, {bytes} bytes", batch.len());
                    prop_assert!(batch.iter().all(|op| ours(op.key())), "only keys under the prefix");
                }
                let after = apply(known.clone(), &batches);
                for (k, v) in &desired {
                    if ours(k) {
                        prop_assert_eq!(after.get(k), Some(&KnownKv { value: v.clone(), lease: L }));
                    }
                }
                for (k, v) in &known {
                    if !ours(k) {
                        prop_assert_eq!(after.get(k), Some(v), "foreign key {} touched", k);
                    } else if !desired.contains_key(k) {
                        if complete {
                            prop_assert!(!after.contains_key(k), "stale key {} kept", k);
                        } else {
                            prop_assert_eq!(after.get(k), Some(v), "incomplete state deleted {}", k);
                        }
                    }
                }
                prop_assert!(after.keys().all(|k| known.contains_key(k) || desired.contains_key(k)));
                if !complete {
                    let puts_only = batches.iter().flatten().all(|op| matches!(op, Op::Put { .. }));
                    prop_assert!(puts_only, "a delete with an incomplete desired state");
                }
                // A second plan over the result has nothing left to do.
                prop_assert!(plan(P, &after, &desired, complete, L).is_empty());
            }
        }
    }
}
