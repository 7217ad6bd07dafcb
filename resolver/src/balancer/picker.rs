//! The picker: an immutable list of READY backends plus an atomic cursor, round-robin or, with
//! unequal weights, weighted by the static-stride scheduler ([`super::stride`]).
//!
//! A new picker is built whenever the pick set changes, as grpc-go's `round_robin` does: with a
//! random start, or going on with the previous picker's sequence (weights never reset it);
//! picking is one atomic increment (a few on average when weighted). Each entry also carries the liveness flag
//! of its connection, cleared by the transport the moment the connection is seen closed, so a
//! pick never lands on a dead connection in the short window before the picker is rebuilt.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[cfg(any(test, feature = "bench-internals"))]
use rand::Rng;

use super::connector::Liveness;
use super::stride;

/// One pickable backend.
#[derive(Clone, Debug)]
pub(crate) struct PickEntry<T> {
    pub(crate) value: T,
    pub(crate) alive: Arc<Liveness>,
}

/// Round-robin over a fixed list.
#[derive(Debug)]
pub(crate) struct Picker<T> {
    entries: Vec<PickEntry<T>>,
    next: Arc<AtomicUsize>,
    /// Scaled weights of the entries, when they differ.
    weights: Option<Box<[u16]>>,
}

impl<T> Picker<T> {
    /// A picker that never picks.
    pub(crate) fn empty() -> Self {
        Picker {
            entries: Vec::new(),
            next: Arc::new(AtomicUsize::new(0)),
            weights: None,
        }
    }

    /// A picker over `entries`, starting at a random position.
    #[cfg(any(test, feature = "bench-internals"))]
    pub(crate) fn new(entries: Vec<PickEntry<T>>) -> Self {
        let start = if entries.is_empty() {
            0
        } else {
            rand::rng().random_range(0..entries.len())
        };
        Picker {
            entries,
            next: Arc::new(AtomicUsize::new(start)),
            weights: None,
        }
    }

    /// A picker over `entries` with scaled `weights` (one per entry; `None`: round-robin), going
    /// on with the sequence `next`.
    pub(crate) fn continuing(
        entries: Vec<PickEntry<T>>,
        weights: Option<Box<[u16]>>,
        next: Arc<AtomicUsize>,
    ) -> Self {
        let weights = weights.filter(|w| w.len() == entries.len());
        Picker {
            entries,
            next,
            weights,
        }
    }

    /// The sequence this picker takes its positions from.
    #[cfg(test)]
    pub(crate) fn sequence(&self) -> Arc<AtomicUsize> {
        self.next.clone()
    }

    /// The next live entry in round-robin order, if any.
    pub(crate) fn pick(&self) -> Option<&T> {
        let n = self.entries.len();
        for _ in 0..n {
            let i = match &self.weights {
                None => self.next.fetch_add(1, Ordering::Relaxed) % n,
                Some(w) => stride::next_index(w, || self.next.fetch_add(1, Ordering::Relaxed)),
            };
            let entry = &self.entries[i];
            if entry.alive.is_alive() {
                return Some(&entry.value);
            }
        }
        None
    }

    /// Number of entries (live or not).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entries' values (live or not), in order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|e| &e.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn entry(v: &'static str) -> PickEntry<&'static str> {
        PickEntry {
            value: v,
            alive: Arc::new(Liveness::new()),
        }
    }

    #[test]
    fn empty_never_picks() {
        assert!(Picker::<u8>::empty().pick().is_none());
        assert!(Picker::<u8>::new(vec![]).pick().is_none());
    }

    #[test]
    fn exact_round_robin() {
        let p = Picker::new(vec![entry("a"), entry("b"), entry("c")]);
        let mut counts = HashMap::new();
        let first: Vec<_> = (0..3).map(|_| *p.pick().unwrap()).collect();
        for _ in 0..2997 {
            *counts.entry(*p.pick().unwrap()).or_insert(0) += 1;
        }
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, ["a", "b", "c"], "each backend once per cycle");
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), [999; 3]);
    }

    #[test]
    fn random_start() {
        let starts: std::collections::HashSet<_> = (0..200)
            .map(|_| {
                *Picker::new(vec![entry("a"), entry("b"), entry("c")])
                    .pick()
                    .unwrap()
            })
            .collect();
        assert_eq!(starts.len(), 3);
    }

    #[test]
    fn weighted_and_continuing() {
        let entries = vec![entry("a"), entry("b"), entry("c")];
        let weights = stride::scale(&[Some(1), Some(2), Some(3)]);
        let p = Picker::continuing(entries.clone(), weights, Arc::new(AtomicUsize::new(0)));
        let mut counts = HashMap::new();
        for _ in 0..6000 {
            *counts.entry(*p.pick().unwrap()).or_insert(0) += 1;
        }
        for (name, w) in [("a", 1i32), ("b", 2), ("c", 3)] {
            assert!((counts[name] - 1000 * w).abs() <= 100, "{counts:?}");
        }
        // A rebuild goes on with the same sequence.
        let seq = p.sequence();
        let at = seq.load(Ordering::Relaxed);
        let q = Picker::continuing(entries, None, seq.clone());
        q.pick();
        assert_eq!(seq.load(Ordering::Relaxed), at + 1);
    }

    #[test]
    fn weighted_shares_hold_with_eight_concurrent_callers() {
        let entries = vec![entry("a"), entry("b"), entry("c")];
        let weights = stride::scale(&[Some(1), Some(2), Some(3)]);
        let p = Arc::new(Picker::continuing(
            entries,
            weights,
            Arc::new(AtomicUsize::new(0)),
        ));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut counts = HashMap::new();
                    for _ in 0..7500 {
                        *counts.entry(*p.pick().unwrap()).or_insert(0usize) += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for t in threads {
            for (k, v) in t.join().unwrap() {
                *counts.entry(k).or_insert(0) += v;
            }
        }
        for (name, w) in [("a", 1.0), ("b", 2.0), ("c", 3.0)] {
            let share = counts[name] as f64 / 60_000.0;
            assert!((share - w / 6.0).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn equal_weights_any_n_consecutive_picks_are_distinct() {
        let entries = vec![entry("a"), entry("b"), entry("c"), entry("d")];
        let weights = stride::scale(&[Some(5); 4]);
        assert!(weights.is_none());
        let p = Picker::continuing(entries, weights, Arc::new(AtomicUsize::new(7)));
        let picks: Vec<_> = (0..400).map(|_| *p.pick().unwrap()).collect();
        for w in picks.windows(4) {
            let distinct: std::collections::HashSet<_> = w.iter().collect();
            assert_eq!(distinct.len(), 4, "{w:?}");
        }
    }

    #[test]
    fn skips_dead_entries() {
        let b = entry("b");
        let p = Picker::new(vec![entry("a"), b.clone(), entry("c")]);
        b.alive.kill("test");
        for _ in 0..30 {
            assert_ne!(*p.pick().unwrap(), "b");
        }
        let only = entry("x");
        let p = Picker::new(vec![only.clone()]);
        only.alive.kill("test");
        assert!(p.pick().is_none());
        assert_eq!(p.len(), 1);
    }
}
