//! Weighted picking with gRPC's static-stride scheduler (grpc-go `weightedroundrobin`, gRFC A58).
//!
//! Weights are scaled so that the largest is `u16::MAX`; a pick takes the next number `s` of a
//! shared sequence, looks at backend `s mod n` in generation `s / n`, and accepts it when
//! `(w × generation + i × u16::MAX/2) mod u16::MAX ≥ u16::MAX − w`. The backend with the
//! largest weight always accepts, so a pick looks at most `n` numbers, and as weights are capped
//! at [`MAX_RATIO`] × their mean it looks at fewer than `MAX_RATIO` of them on average. No lock,
//! no state but the sequence: a new scheduler (new weights) simply goes on with the same sequence.
//! Equal weights need no scheduler at all: plain round-robin over the same sequence.

/// The scale of weights: the largest weight becomes this.
const MAX_WEIGHT: u64 = u16::MAX as u64;

/// Weights are capped at this many times their mean.
pub(crate) const MAX_RATIO: f64 = 10.0;

/// The scaled weights for backends weighing `weights` (`None`: missing or invalid, uses the mean
/// of the others), or `None` when every backend weighs the same (round-robin is exact then).
pub(crate) fn scale(weights: &[Option<u32>]) -> Option<Box<[u16]>> {
    let valid: Vec<f64> = weights.iter().flatten().map(|w| f64::from(*w)).collect();
    if valid.is_empty() || weights.len() < 2 {
        return None;
    }
    let mean = valid.iter().sum::<f64>() / valid.len() as f64;
    let cap = mean * MAX_RATIO;
    let effective: Vec<f64> = weights
        .iter()
        .map(|w| w.map_or(mean, f64::from).min(cap))
        .collect();
    let max = effective.iter().copied().fold(0.0, f64::max);
    if effective.iter().all(|w| *w == max) || max <= 0.0 {
        return None;
    }
    let factor = MAX_WEIGHT as f64 / max;
    Some(
        effective
            .iter()
            // In 1..=u16::MAX by construction (w ≤ max, and at least 1).
            .map(|w| (w * factor).round().clamp(1.0, MAX_WEIGHT as f64) as u16)
            .collect(),
    )
}

/// The next backend under `scaled`, taking sequence numbers from `next` (at most `n` of them).
pub(crate) fn next_index(scaled: &[u16], mut next: impl FnMut() -> usize) -> usize {
    let n = scaled.len() as u64;
    const OFFSET: u64 = MAX_WEIGHT / 2;
    loop {
        let seq = next() as u64;
        let index = seq % n;
        let generation = seq / n;
        let weight = u64::from(scaled[index as usize]);
        // (w × generation) mod M computed on generation mod M: no overflow.
        let at = (weight * (generation % MAX_WEIGHT) + (index % MAX_WEIGHT) * OFFSET) % MAX_WEIGHT;
        if at >= MAX_WEIGHT - weight {
            return index as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shares(weights: &[Option<u32>], picks: usize, start: usize) -> (Vec<usize>, usize) {
        let scaled = scale(weights).expect("unequal weights");
        let mut seq = start;
        let mut counts = vec![0; weights.len()];
        let mut most = 0;
        for _ in 0..picks {
            let mut looked = 0;
            let i = next_index(&scaled, || {
                looked += 1;
                seq = seq.wrapping_add(1);
                seq
            });
            most = most.max(looked);
            counts[i] += 1;
        }
        (counts, most)
    }

    #[test]
    fn scaling_table() {
        let s = |w: &[Option<u32>]| scale(w).map(|v| v.to_vec());
        assert_eq!(s(&[Some(1), Some(1), Some(1)]), None, "equal: round-robin");
        assert_eq!(s(&[Some(5)]), None, "one backend");
        assert_eq!(s(&[None, None]), None, "no weights at all");
        assert_eq!(s(&[Some(2), None, Some(2)]), None, "missing = mean = equal");
        assert_eq!(s(&[Some(1), Some(2)]), Some(vec![32768, 65535]));
        assert_eq!(
            s(&[Some(1), Some(3), None]),
            Some(vec![21845, 65535, 43690])
        );
        // 1000 among twenty 1s: mean 50.95, capped at 509.5.
        let mut w = vec![Some(1); 20];
        w[0] = Some(1000);
        let scaled = scale(&w).unwrap();
        assert_eq!(scaled[0], u16::MAX);
        assert_eq!(scaled[1], (65535.0 / 509.5f64).round() as u16);
    }

    #[test]
    fn one_two_three_over_sixty_thousand_picks() {
        let (counts, most) = shares(&[Some(1), Some(2), Some(3)], 60_000, 12345);
        for (c, w) in counts.iter().zip([1, 2, 3]) {
            let want = 10_000 * w;
            assert!(c.abs_diff(want) <= 600, "{counts:?}");
        }
        assert!(most <= 3, "looked at {most} numbers for one pick");
    }

    #[test]
    fn capped_weights_loop_a_bounded_number_of_times() {
        let mut w = vec![Some(1); 20];
        w[0] = Some(1000);
        let (counts, most) = shares(&w, 100_000, 7);
        assert!(most <= 20, "looked at {most} numbers for one pick");
        // Capped at 509.5 against 19 × 1: share ≈ 509.5 / 528.5.
        let share = counts[0] as f64 / 100_000.0;
        assert!((share - 509.5 / 528.5).abs() < 0.01, "{share} {counts:?}");
    }

    proptest! {
        #[test]
        fn shares_follow_weights(
            weights in proptest::collection::vec(proptest::option::weighted(0.9, 1u32..50), 2..8),
            start in any::<usize>(),
        ) {
            let Some(scaled) = scale(&weights) else {
                return Ok(());
            };
            let total: f64 = scaled.iter().map(|w| f64::from(*w)).sum();
            let picks = 50_000;
            let (counts, most) = shares(&weights, picks, start);
            prop_assert!(most <= weights.len());
            for (c, w) in counts.iter().zip(scaled.iter()) {
                let want = f64::from(*w) / total;
                let got = *c as f64 / picks as f64;
                prop_assert!((got - want).abs() < 0.01, "{got} vs {want}: {counts:?} {scaled:?}");
            }
            let valid: Vec<f64> = weights.iter().flatten().map(|w| f64::from(*w)).collect();
            let mean = valid.iter().sum::<f64>() / valid.len() as f64;
            for (w, s) in weights.iter().zip(scaled.iter()) {
                // Missing weights weigh as the mean; ratios follow the weights (capped).
                let w = w.map_or(mean, f64::from).min(mean * MAX_RATIO);
                let max = weights.iter().map(|w| w.map_or(mean, f64::from).min(mean * MAX_RATIO)).fold(0.0, f64::max);
                prop_assert!((f64::from(*s) - w / max * MAX_WEIGHT as f64).abs() <= 1.0);
            }
        }

        #[test]
        fn equal_weights_are_round_robin(w in 1u32..1000, n in 1usize..10) {
            prop_assert!(scale(&vec![Some(w); n]).is_none());
        }
    }
}
