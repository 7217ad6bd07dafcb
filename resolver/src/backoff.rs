//! Exponential backoff with jitter, as specified by gRPC's connection backoff
//! (<https://github.com/grpc/grpc/blob/master/doc/connection-backoff.md>), used for backend
//! connections, etcd reconnects and lease re-grants.

use std::time::Duration;

use rand::Rng;

/// Backoff parameters: the delay starts at `initial`, is multiplied by `multiplier` after every
/// failure up to `max`, and each delay is spread by ±`jitter` (a fraction).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// Growth factor per failure (≥ 1).
    pub multiplier: f64,
    /// Upper bound of the delay (before jitter).
    pub max: Duration,
    /// Random spread of each delay, as a fraction in `[0, 1)`.
    pub jitter: f64,
}

impl Backoff {
    /// gRPC's connection backoff: 1 s, ×1.6, at most 120 s, jitter 0.2.
    pub const GRPC: Backoff = Backoff {
        initial: Duration::from_secs(1),
        multiplier: 1.6,
        max: Duration::from_secs(120),
        jitter: 0.2,
    };

    /// A backoff from `initial` to `max` with gRPC's multiplier and jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            multiplier: 1.6,
            jitter: 0.2,
        }
    }

    /// The parameters with out-of-range values clamped (multiplier ≥ 1, jitter in `[0, 1)`,
    /// max ≥ initial).
    pub(crate) fn sanitized(self) -> Self {
        let multiplier = if self.multiplier.is_finite() && self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 0.99)
        } else {
            0.0
        };
        Backoff {
            initial: self.initial,
            multiplier,
            max: self.max.max(self.initial),
            jitter,
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::GRPC
    }
}

/// The running state of one backoff sequence.
#[derive(Clone, Debug)]
pub(crate) struct BackoffState {
    params: Backoff,
    current: Duration,
}

impl BackoffState {
    pub(crate) fn new(params: Backoff) -> Self {
        let params = params.sanitized();
        BackoffState {
            current: params.initial,
            params,
        }
    }

    /// The next delay to wait (jittered), growing the base for the following call.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = jittered(self.current, self.params.jitter);
        self.current = self
            .current
            .mul_f64(self.params.multiplier)
            .min(self.params.max);
        delay
    }

    /// Grows the base delay and returns it jittered: gRPC's next connection-attempt window
    /// (the first window is [`current`](Self::current), without jitter).
    pub(crate) fn next_window(&mut self) -> Duration {
        self.current = self
            .current
            .mul_f64(self.params.multiplier)
            .min(self.params.max);
        jittered(self.current, self.params.jitter)
    }

    /// The current base delay without jitter (gRPC's first attempt window).
    pub(crate) fn current(&self) -> Duration {
        self.current
    }

    /// Starts over from the initial delay.
    pub(crate) fn reset(&mut self) {
        self.current = self.params.initial;
    }
}

/// The shared lease keepalive ([`registrar_etcd::KeptLease`]) retries with this backoff.
impl registrar_etcd::Retry for BackoffState {
    fn next_delay(&mut self) -> Duration {
        BackoffState::next_delay(self)
    }

    fn reset(&mut self) {
        BackoffState::reset(self)
    }
}

fn jittered(base: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return base;
    }
    let factor = rand::rng().random_range(1.0 - jitter..=1.0 + jitter);
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_sequence_grows_to_max_within_jitter() {
        let mut s = BackoffState::new(Backoff::GRPC);
        let mut base = 1.0f64;
        for _ in 0..30 {
            let d = s.next_delay().as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "{d} vs {base}"
            );
            base = (base * 1.6).min(120.0);
        }
        assert_eq!(s.current(), Duration::from_secs(120));
        s.reset();
        assert_eq!(s.current(), Duration::from_secs(1));
    }

    #[test]
    fn grpc_windows_start_unjittered_then_grow() {
        let mut s = BackoffState::new(Backoff {
            jitter: 0.0,
            ..Backoff::GRPC
        });
        assert_eq!(s.current(), Duration::from_secs(1));
        assert_eq!(s.next_window(), Duration::from_millis(1600));
        assert_eq!(s.next_window(), Duration::from_millis(2560));
        s.reset();
        assert_eq!(s.current(), Duration::from_secs(1));
    }

    #[test]
    fn no_jitter_is_exact() {
        let mut s = BackoffState::new(Backoff {
            jitter: 0.0,
            ..Backoff::new(Duration::from_millis(100), Duration::from_millis(300))
        });
        let got: Vec<_> = (0..4).map(|_| s.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 160, 256, 300]);
    }

    #[test]
    fn nonsense_parameters_are_clamped() {
        let mut s = BackoffState::new(Backoff {
            initial: Duration::from_secs(2),
            multiplier: f64::NAN,
            max: Duration::from_secs(1),
            jitter: 7.0,
        });
        for _ in 0..5 {
            let d = s.next_delay();
            assert!(d <= Duration::from_secs(4), "{d:?}");
        }
    }
}
