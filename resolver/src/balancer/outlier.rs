//! Outlier ejection (gRFC A50, Envoy's algorithm): its settings and the pure sweep that decides,
//! once per interval, which backends to eject from the pick set and which to bring back.
//!
//! Each sweep looks at the calls that completed on each backend during the last interval:
//! - **success rate**: among the backends with at least `request_volume` calls (and only if
//!   there are at least `minimum_hosts` of them), one whose success rate is below
//!   `mean − stdev_factor × stdev` is ejected (with probability `enforcement_percentage`);
//! - **failure percentage**: among the same kind of candidates, one whose failure percentage is
//!   above `threshold` is ejected (same enforcement);
//! - never more than `max_ejection_percent` of all backends are ejected, but one always may be;
//! - an ejected backend comes back `base_ejection_time × multiplier` after its ejection (capped
//!   at `max(base_ejection_time, max_ejection_time)`); the multiplier grows by one per ejection
//!   and shrinks by one per sweep the backend spends not ejected.
//!
//! Ejection only filters the pick set: the connection stays open. Backends already ejected are
//! not candidates (they get no new calls), so their statistics do not skew the others'.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

/// Settings of outlier ejection ([`BalancerBuilder::outlier_detection`](crate::BalancerBuilder::outlier_detection)).
/// The defaults are gRFC A50's (and Envoy's).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OutlierDetection {
    /// How often ejections are decided, over the calls completed since the last time (10 s).
    pub interval: Duration,
    /// How long a first ejection lasts; the n-th in a row lasts n times longer (30 s).
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts (300 s; never less than `base_ejection_time`).
    pub max_ejection_time: Duration,
    /// The most backends ejected at once, in percent of all backends (10); one backend may
    /// always be ejected whatever this says.
    pub max_ejection_percent: u32,
    /// The success-rate check (on by default); `None` turns it off.
    pub success_rate: Option<SuccessRateEjection>,
    /// The failure-percentage check (on by default); `None` turns it off.
    pub failure_percentage: Option<FailurePercentageEjection>,
    /// The gRPC status codes that count as failures (UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS).
    /// Transport errors (the connection failed mid-call) always count; a call cancelled by the
    /// caller never does. Errors of the caller's own making (NOT_FOUND, INVALID_ARGUMENT, …)
    /// should stay out of this list.
    pub failure_codes: Vec<Code>,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            success_rate: Some(SuccessRateEjection::default()),
            failure_percentage: Some(FailurePercentageEjection::default()),
            failure_codes: vec![
                Code::Unavailable,
                Code::Internal,
                Code::Unknown,
                Code::DataLoss,
            ],
        }
    }
}

/// The success-rate check of [`OutlierDetection`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SuccessRateEjection {
    /// A backend is an outlier below `mean − stdev_factor × stdev` of the candidates' success
    /// rates (1.9).
    pub stdev_factor: f64,
    /// The chance, in percent, that an outlier is really ejected (100).
    pub enforcement_percentage: u32,
    /// The check runs only with at least this many candidates (5).
    pub minimum_hosts: usize,
    /// A backend is a candidate with at least this many calls in the interval (100).
    pub request_volume: u64,
}

impl Default for SuccessRateEjection {
    fn default() -> Self {
        SuccessRateEjection {
            stdev_factor: 1.9,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

/// The failure-percentage check of [`OutlierDetection`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FailurePercentageEjection {
    /// A backend is an outlier above this share of failed calls, in percent (85).
    pub threshold: u32,
    /// The chance, in percent, that an outlier is really ejected (100).
    pub enforcement_percentage: u32,
    /// The check runs only with at least this many candidates (5).
    pub minimum_hosts: usize,
    /// A backend is a candidate with at least this many calls in the interval (50).
    pub request_volume: u64,
}

impl Default for FailurePercentageEjection {
    fn default() -> Self {
        FailurePercentageEjection {
            threshold: 85,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

/// The ejection state of one backend, kept across sweeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EjectionState {
    /// When it was ejected, while it is.
    pub(crate) ejected_at: Option<Instant>,
    pub(crate) multiplier: u32,
}

/// Calls completed on one backend during the last interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) successes: u64,
    pub(crate) failures: u64,
}

impl Counts {
    fn volume(self) -> u64 {
        self.successes.saturating_add(self.failures)
    }

    fn success_rate(self) -> f64 {
        self.successes as f64 / self.volume() as f64
    }
}

/// One backend as a sweep sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Host {
    pub(crate) state: EjectionState,
    pub(crate) counts: Counts,
}

/// What a sweep did to one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Ejected for this long.
    Ejected(Duration),
    /// Back in the pick set.
    Returned,
}

/// How long an ejection with `multiplier` lasts.
pub(crate) fn ejection_time(config: &OutlierDetection, multiplier: u32) -> Duration {
    let cap = config.base_ejection_time.max(config.max_ejection_time);
    config
        .base_ejection_time
        .saturating_mul(multiplier)
        .min(cap)
}

/// One sweep at `now` over every backend (`roll` draws a number in `0..100` for enforcement):
/// ejects outliers, brings back those whose time is up, and updates multipliers. Returns what
/// changed, by index into `hosts`.
pub(crate) fn sweep(
    config: &OutlierDetection,
    now: Instant,
    hosts: &mut [Host],
    roll: &mut impl FnMut() -> u32,
) -> Vec<(usize, Change)> {
    let total = hosts.len();
    let mut ejected = hosts
        .iter()
        .filter(|h| h.state.ejected_at.is_some())
        .count();
    let max_percent = u64::from(config.max_ejection_percent);
    // One more may be ejected while none is, or while fewer than the maximum share are.
    let room = |ejected: usize| ejected == 0 || (ejected as u64) * 100 < max_percent * total as u64;
    let mut changes = Vec::new();
    let mut eject = |host: &mut Host, i: usize, ejected: &mut usize| {
        host.state.ejected_at = Some(now);
        host.state.multiplier = host.state.multiplier.saturating_add(1);
        *ejected += 1;
        changes.push((
            i,
            Change::Ejected(ejection_time(config, host.state.multiplier)),
        ));
    };

    if let Some(check) = &config.success_rate {
        let candidates = candidates(hosts, check.request_volume);
        if !candidates.is_empty() && candidates.len() >= check.minimum_hosts {
            let rates: Vec<f64> = candidates
                .iter()
                .map(|&i| hosts[i].counts.success_rate())
                .collect();
            let n = rates.len() as f64;
            let mean = rates.iter().sum::<f64>() / n;
            let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
            let required = mean - check.stdev_factor * variance.sqrt();
            for (&i, &rate) in candidates.iter().zip(&rates) {
                if !room(ejected) {
                    break;
                }
                if rate < required && roll() < check.enforcement_percentage {
                    eject(&mut hosts[i], i, &mut ejected);
                }
            }
        }
    }

    if let Some(check) = &config.failure_percentage {
        let candidates = candidates(hosts, check.request_volume);
        if !candidates.is_empty() && candidates.len() >= check.minimum_hosts {
            for i in candidates {
                if !room(ejected) {
                    break;
                }
                let counts = hosts[i].counts;
                // failures / volume > threshold / 100, in integers.
                let above = u128::from(counts.failures) * 100
                    > u128::from(check.threshold) * u128::from(counts.volume());
                if above && roll() < check.enforcement_percentage {
                    eject(&mut hosts[i], i, &mut ejected);
                }
            }
        }
    }

    for (i, host) in hosts.iter_mut().enumerate() {
        match host.state.ejected_at {
            None => host.state.multiplier = host.state.multiplier.saturating_sub(1),
            Some(at) => {
                if now >= at + ejection_time(config, host.state.multiplier) {
                    host.state.ejected_at = None;
                    changes.push((i, Change::Returned));
                }
            }
        }
    }
    changes
}

/// The backends not ejected with at least `volume` calls (and at least one).
fn candidates(hosts: &[Host], volume: u64) -> Vec<usize> {
    hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| h.state.ejected_at.is_none() && h.counts.volume() >= volume.max(1))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod tests;
