//! The sweep as a table of cases (gRFC A50's behaviours, with its defaults) and its invariants
//! under random inputs.

use proptest::prelude::*;

use super::*;

fn ok(n: u64) -> Host {
    calls(n, 0)
}

fn calls(successes: u64, failures: u64) -> Host {
    Host {
        state: EjectionState::default(),
        counts: Counts {
            successes,
            failures,
        },
    }
}

fn always() -> impl FnMut() -> u32 {
    || 0
}

fn ejected_indices(changes: &[(usize, Change)]) -> Vec<usize> {
    changes
        .iter()
        .filter(|(_, c)| matches!(c, Change::Ejected(_)))
        .map(|(i, _)| *i)
        .collect()
}

fn only_success_rate() -> OutlierDetection {
    OutlierDetection {
        failure_percentage: None,
        ..OutlierDetection::default()
    }
}

fn only_failure_percentage() -> OutlierDetection {
    OutlierDetection {
        success_rate: None,
        ..OutlierDetection::default()
    }
}

#[test]
fn table() {
    let defaults = OutlierDetection::default();
    let ten_ok = || -> Vec<Host> { (0..10).map(|_| ok(100)).collect() };
    struct Case {
        name: &'static str,
        config: OutlierDetection,
        hosts: Vec<Host>,
        ejected: Vec<usize>,
    }
    let cases = vec![
        Case {
            name: "one of ten at 50% failures: success-rate outlier",
            config: only_success_rate(),
            hosts: {
                let mut h = ten_ok();
                h[3] = calls(50, 50);
                h
            },
            ejected: vec![3],
        },
        Case {
            name: "50% failures are under the 85% failure threshold",
            config: only_failure_percentage(),
            hosts: {
                let mut h = ten_ok();
                h[3] = calls(50, 50);
                h
            },
            ejected: vec![],
        },
        Case {
            name: "below the success-rate request volume (99 < 100): no candidate",
            config: only_success_rate(),
            hosts: {
                let mut h: Vec<Host> = (0..10).map(|_| ok(99)).collect();
                h[3] = calls(49, 50);
                h
            },
            ejected: vec![],
        },
        Case {
            name: "three bad of ten, max 10%: one ejected",
            config: defaults.clone(),
            hosts: {
                let mut h = ten_ok();
                for i in [2, 5, 8] {
                    h[i] = calls(0, 100);
                }
                h
            },
            ejected: vec![2],
        },
        Case {
            name: "three bad of ten, max 30%: all three",
            config: OutlierDetection {
                max_ejection_percent: 30,
                ..defaults.clone()
            },
            hosts: {
                let mut h = ten_ok();
                for i in [2, 5, 8] {
                    h[i] = calls(0, 100);
                }
                h
            },
            ejected: vec![2, 5, 8],
        },
        Case {
            name: "four backends: fewer than minimum_hosts, never ejected",
            config: defaults.clone(),
            hosts: vec![ok(1000), ok(1000), ok(1000), calls(0, 1000)],
            ejected: vec![],
        },
        Case {
            name: "five backends, max 10%: one may always be ejected",
            config: defaults.clone(),
            hosts: vec![ok(200), ok(200), ok(200), calls(0, 200), calls(0, 200)],
            ejected: vec![3],
        },
        Case {
            name: "max 0%: still one",
            config: OutlierDetection {
                max_ejection_percent: 0,
                ..defaults.clone()
            },
            hosts: vec![ok(200), ok(200), ok(200), calls(0, 200), calls(0, 200)],
            ejected: vec![3],
        },
        Case {
            name: "failure percentage: 85% is not above 85",
            config: only_failure_percentage(),
            hosts: vec![ok(100), ok(100), ok(100), ok(100), calls(15, 85)],
            ejected: vec![],
        },
        Case {
            name: "failure percentage: 86% is",
            config: only_failure_percentage(),
            hosts: vec![ok(100), ok(100), ok(100), ok(100), calls(14, 86)],
            ejected: vec![4],
        },
        Case {
            name: "failure percentage volume is 50: 49 calls do not count",
            config: only_failure_percentage(),
            hosts: vec![ok(100), ok(100), ok(100), ok(100), calls(0, 49)],
            ejected: vec![],
        },
        Case {
            name: "everyone equally bad: no success-rate outlier",
            config: only_success_rate(),
            hosts: (0..10).map(|_| calls(50, 50)).collect(),
            ejected: vec![],
        },
        Case {
            name: "both checks off",
            config: OutlierDetection {
                success_rate: None,
                failure_percentage: None,
                ..defaults.clone()
            },
            hosts: vec![ok(100), ok(100), ok(100), ok(100), calls(0, 100)],
            ejected: vec![],
        },
    ];
    let now = Instant::now();
    for case in cases {
        let mut hosts = case.hosts.clone();
        let changes = sweep(&case.config, now, &mut hosts, &mut always());
        assert_eq!(ejected_indices(&changes), case.ejected, "{}", case.name);
        for i in &case.ejected {
            assert_eq!(hosts[*i].state.ejected_at, Some(now), "{}", case.name);
            assert_eq!(hosts[*i].state.multiplier, 1, "{}", case.name);
        }
    }
}

#[test]
fn enforcement_percentage_is_a_chance() {
    let config = OutlierDetection {
        success_rate: Some(SuccessRateEjection {
            enforcement_percentage: 30,
            ..SuccessRateEjection::default()
        }),
        failure_percentage: None,
        ..OutlierDetection::default()
    };
    let hosts = || {
        let mut h: Vec<Host> = (0..10).map(|_| ok(100)).collect();
        h[0] = calls(0, 100);
        h
    };
    let now = Instant::now();
    for (draw, ejected) in [(0, true), (29, true), (30, false), (99, false)] {
        let mut h = hosts();
        let changes = sweep(&config, now, &mut h, &mut || draw);
        assert_eq!(!changes.is_empty(), ejected, "draw {draw}");
    }
}

#[test]
fn ejections_last_base_times_multiplier_up_to_the_cap() {
    let config = OutlierDetection::default();
    let secs = |m| ejection_time(&config, m).as_secs();
    assert_eq!(
        [secs(1), secs(2), secs(3), secs(10), secs(11), secs(1000)],
        [30, 60, 90, 300, 300, 300]
    );
    let short_cap = OutlierDetection {
        max_ejection_time: Duration::from_secs(5),
        ..OutlierDetection::default()
    };
    // The cap is never below the base time.
    assert_eq!(ejection_time(&short_cap, 3), Duration::from_secs(30));
}

/// A bad backend among ten, swept every 10 s: ejected at the first sweep, back after 30 s,
/// ejected again at once when it is still bad (for 60 s: the multiplier is 2), back, and once
/// good its multiplier decays one step per sweep.
#[test]
fn a_second_ejection_in_a_row_lasts_twice_as_long_and_the_multiplier_decays() {
    let config = OutlierDetection::default();
    let start = Instant::now();
    let mut hosts: Vec<Host> = (0..10).map(|_| ok(100)).collect();
    let mut bad = true;
    let mut timeline = Vec::new();
    for tick in 1..=20u32 {
        let now = start + config.interval * tick;
        for (i, h) in hosts.iter_mut().enumerate() {
            // An ejected backend gets no calls.
            h.counts = match (i, h.state.ejected_at) {
                (_, Some(_)) => Counts::default(),
                (0, None) if bad => Counts {
                    successes: 0,
                    failures: 100,
                },
                _ => Counts {
                    successes: 100,
                    failures: 0,
                },
            };
        }
        for (i, change) in sweep(&config, now, &mut hosts, &mut always()) {
            assert_eq!(i, 0);
            timeline.push((tick * 10, change));
        }
        if tick == 11 {
            bad = false;
        }
    }
    assert_eq!(
        timeline,
        [
            (10, Change::Ejected(Duration::from_secs(30))),
            (40, Change::Returned),
            (50, Change::Ejected(Duration::from_secs(60))),
            (110, Change::Returned),
        ]
    );
    // Good since 110 s: one step down per sweep from 2 (at 120 s) to 0.
    assert_eq!(hosts[0].state, EjectionState::default());
}

fn arb_host() -> impl Strategy<Value = Host> {
    (
        0u64..300,
        0u64..300,
        prop::option::weighted(0.15, 0u64..=400),
        0u32..15,
    )
        .prop_map(
            |(successes, failures, ejected_secs_after_base, multiplier)| Host {
                counts: Counts {
                    successes,
                    failures,
                },
                state: EjectionState {
                    ejected_at: ejected_secs_after_base
                        .map(|s| base_instant() + Duration::from_secs(s)),
                    // An ejected backend was ejected at least once.
                    multiplier: if ejected_secs_after_base.is_some() {
                        multiplier.max(1)
                    } else {
                        multiplier
                    },
                },
            },
        )
}

/// A fixed instant that every generated host and sweep time is measured from.
fn base_instant() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn arb_config() -> impl Strategy<Value = OutlierDetection> {
    (
        0u32..=100,
        1u64..=60,
        0u64..=600,
        prop::option::of((0.0f64..3.0, 0u32..=100, 0usize..8, 0u64..200)),
        prop::option::of((0u32..=100, 0u32..=100, 0usize..8, 0u64..200)),
    )
        .prop_map(|(max_pct, base, max_time, sr, fp)| OutlierDetection {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(base),
            max_ejection_time: Duration::from_secs(max_time),
            max_ejection_percent: max_pct,
            success_rate: sr.map(
                |(stdev_factor, enforcement_percentage, minimum_hosts, request_volume)| {
                    SuccessRateEjection {
                        stdev_factor,
                        enforcement_percentage,
                        minimum_hosts,
                        request_volume,
                    }
                },
            ),
            failure_percentage: fp.map(
                |(threshold, enforcement_percentage, minimum_hosts, request_volume)| {
                    FailurePercentageEjection {
                        threshold,
                        enforcement_percentage,
                        minimum_hosts,
                        request_volume,
                    }
                },
            ),
            failure_codes: Vec::new(),
        })
}

proptest! {
    #[test]
    fn sweep_invariants(
        config in arb_config(),
        before in prop::collection::vec(arb_host(), 0..25),
        at in 400u64..800,
        draws in prop::collection::vec(0u32..100, 64),
    ) {
        let now = base_instant() + Duration::from_secs(at);
        let mut hosts = before.clone();
        let mut next = draws.into_iter().cycle();
        let changes = sweep(&config, now, &mut hosts, &mut || next.next().unwrap_or(0));
        let total = hosts.len() as u64;
        let ejected_before = before.iter().filter(|h| h.state.ejected_at.is_some()).count() as u64;
        let newly: Vec<usize> = ejected_indices(&changes);
        let cap = config.base_ejection_time.max(config.max_ejection_time);

        // Never more than max_ejection_percent ejected by a sweep, but one always may be.
        // (Returns are decided after ejections, so every backend ejected before counts.)
        if !newly.is_empty() {
            let allowed = (u64::from(config.max_ejection_percent) * total).div_ceil(100).max(1);
            prop_assert!(
                ejected_before + newly.len() as u64 <= allowed,
                "{} + {} > {allowed}", ejected_before, newly.len()
            );
        }
        for (i, (b, a)) in before.iter().zip(&hosts).enumerate() {
            let is_new = newly.contains(&i);
            if is_new {
                // Only a backend that was in, had failures and enough calls is ejected.
                prop_assert!(b.state.ejected_at.is_none());
                prop_assert!(b.counts.failures > 0);
                let volume = b.counts.successes + b.counts.failures;
                let min_volume = [
                    config.success_rate.as_ref().map(|c| c.request_volume),
                    config.failure_percentage.as_ref().map(|c| c.request_volume),
                ]
                .into_iter()
                .flatten()
                .min();
                prop_assert!(min_volume.is_some_and(|v| volume >= v.max(1)));
                prop_assert_eq!(a.state.ejected_at, Some(now));
                prop_assert_eq!(a.state.multiplier, b.state.multiplier.saturating_add(1));
            }
            match b.state.ejected_at {
                // An ejected backend returns exactly when its time is up, and never later than the cap.
                Some(at) => {
                    let until = at + ejection_time(&config, b.state.multiplier);
                    prop_assert!(until <= at + cap);
                    prop_assert_eq!(a.state.ejected_at.is_none(), now >= until);
                    prop_assert_eq!(a.state.multiplier, b.state.multiplier);
                }
                // A backend that stays in has its multiplier decay by one.
                None if !is_new => {
                    prop_assert_eq!(a.state.ejected_at, None);
                    prop_assert_eq!(a.state.multiplier, b.state.multiplier.saturating_sub(1));
                }
                None => {}
            }
        }
    }
}
