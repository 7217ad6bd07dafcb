//! The seeded choices of randomized drivers (the fault schedule test, the soak's churn):
//! splitmix64, a tiny deterministic generator, so that a printed seed replays the same choices,
//! and a pick by weight from a table of actions.

/// splitmix64 (see the module docs).
#[derive(Clone, Debug)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// One of `items`, `None` when there are none.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len() as u64) as usize])
    }

    /// One of the actions of `table`, each with the chance of its weight in the sum of the
    /// weights, from one draw of `below(sum)` walked through the table in order (the first
    /// action when every weight is 0; `None` for an empty table).
    pub fn weighted<T: Copy>(&mut self, table: &[(T, u64)]) -> Option<T> {
        let total: u64 = table.iter().map(|(_, w)| w).sum();
        let mut n = self.below(total);
        for (action, w) in table {
            if n < *w {
                return Some(*action);
            }
            n -= w;
        }
        table.first().map(|(action, _)| *action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_choices() {
        let mut a = SeededRng::new(42);
        let mut b = SeededRng::new(42);
        let xs: Vec<u64> = (0..8).map(|_| a.below(1000)).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.below(1000)).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, (0..8).map(|_| a.below(1000)).collect::<Vec<_>>());
    }

    #[test]
    fn weighted_follows_the_weights_in_table_order() {
        // The draw is `below(total)`; the ranges are [0, 75), [75, 92), [92, 100).
        let table = [('f', 75), ('s', 17), ('r', 8)];
        let mut rng = SeededRng::new(7);
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..10_000 {
            *counts.entry(rng.weighted(&table).unwrap()).or_insert(0u32) += 1;
        }
        assert!((7200..7800).contains(&counts[&'f']), "{counts:?}");
        assert!((1500..1900).contains(&counts[&'s']), "{counts:?}");
        assert!((650..950).contains(&counts[&'r']), "{counts:?}");
        // Same draw as a threshold on `below(100)`.
        let (mut x, mut y) = (SeededRng::new(3), SeededRng::new(3));
        for _ in 0..1000 {
            let n = y.below(100);
            let want = if n >= 92 {
                'r'
            } else if n >= 75 {
                's'
            } else {
                'f'
            };
            assert_eq!(x.weighted(&table), Some(want));
        }
        assert_eq!(SeededRng::new(1).pick::<u8>(&[]), None);
        assert_eq!(SeededRng::new(1).weighted::<u8>(&[]), None);
    }
}
