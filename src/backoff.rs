//! The operator's one retry policy: capped exponential backoff with jitter, for every loop that
//! retries (the etcd writer and its lease, connecting to etcd, Kubernetes writes).

use std::time::Duration;

/// Delays `initial, 2·initial, 4·initial, …` capped at `max`, each scaled by a random factor in
/// [0.5, 1.0] so that many writers do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The un-jittered delay of the current attempt.
    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random_range(0.5..=1.0))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The shared lease keepalive ([`registrar_etcd::KeptLease`]) retries with this policy too.
impl registrar_etcd::Retry for Backoff {
    fn next_delay(&mut self) -> Duration {
        Backoff::next_delay(self)
    }

    fn reset(&mut self) {
        Backoff::reset(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let bounds = [100, 200, 400, 800, 1000, 1000, 1000];
        for ms in bounds {
            let d = b.next_delay();
            let hi = Duration::from_millis(ms);
            assert!(
                d <= hi && d >= hi / 2,
                "{d:?} not in [{:?}, {hi:?}]",
                hi / 2
            );
        }
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
