//! Outlier ejection end to end inside the balancer, on tokio's paused clock: the real sweep task
//! over a real pool of READY backends (lazy channels, nothing dialed), calls picked from the real
//! picker and their outcomes recorded through the real response classification. Minutes of
//! traffic at 1,000 calls per (virtual) second run in about a second each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::Endpoint;

use super::OutlierDetection;
use crate::balancer::HealthState;
use crate::balancer::calls::FailureCodes;
use crate::balancer::connector::Liveness;
use crate::balancer::pool::Pool;
use crate::balancer::sweep;

/// How a backend answers: the `grpc-status` of every n-th call, the others OK.
#[derive(Clone, Copy)]
enum Behaviour {
    Ok,
    /// Every `n`-th call fails with this status.
    Every(u64, &'static str),
}

const UNAVAILABLE: &str = "14";
const NOT_FOUND: &str = "5";

struct Run {
    /// Picks per backend while it was ejected.
    picks_while_ejected: BTreeMap<usize, u64>,
    /// (second, backend, ejected) each time a backend's ejection changed.
    timeline: Vec<(u64, usize, bool)>,
    /// The most backends ejected at once.
    most_ejected: usize,
}

/// `behaviours.len()` READY backends under 1,000 calls per second for `seconds` (virtual).
async fn run(config: OutlierDetection, behaviours: &[Behaviour], seconds: u64) -> Run {
    let pool = Arc::new(Pool::counting(Some(FailureCodes::new(
        &config.failure_codes,
    ))));
    for i in 0..behaviours.len() {
        let sink = pool.add(Arc::from(format!("127.0.0.1:{}", 1000 + i)), i as u64);
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        sink.ready(channel, Arc::new(Liveness::new()), HealthState::Off);
    }
    let index = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| p.parse::<usize>().ok())
            .map(|p| p - 1000)
            .unwrap()
    };
    let sweeper = tokio::spawn(sweep(pool.clone(), config));
    let start = Instant::now();
    let mut calls = vec![0u64; behaviours.len()];
    let mut ejected = vec![false; behaviours.len()];
    let mut result = Run {
        picks_while_ejected: BTreeMap::new(),
        timeline: Vec::new(),
        most_ejected: 0,
    };
    while start.elapsed() < Duration::from_secs(seconds) {
        for b in pool.health() {
            let i = index(&b.addr);
            if b.ejected != ejected[i] {
                ejected[i] = b.ejected;
                result
                    .timeline
                    .push((start.elapsed().as_secs(), i, b.ejected));
            }
        }
        result.most_ejected = result
            .most_ejected
            .max(ejected.iter().filter(|e| **e).count());
        for _ in 0..50 {
            let picked = pool.pick().unwrap();
            let i = index(&picked.addr);
            if ejected[i] {
                *result.picks_while_ejected.entry(i).or_default() += 1;
            }
            calls[i] += 1;
            let status = match behaviours[i] {
                Behaviour::Every(n, status) if calls[i].is_multiple_of(n) => status,
                _ => "0",
            };
            let mut response = http::Response::new(Body::empty());
            response
                .headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static(status));
            drop(picked.outcome.clone().unwrap().watch(response));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sweeper.abort();
    eprintln!(
        "{} backends, {seconds} s (virtual), {} calls: (second, backend, ejected) {:?}; most \
         ejected at once {}; picks while ejected {:?}",
        behaviours.len(),
        calls.iter().sum::<u64>(),
        result.timeline,
        result.most_ejected,
        result.picks_while_ejected
    );
    result
}

#[tokio::test(start_paused = true)]
async fn one_of_ten_failing_half_its_calls_is_ejected_at_the_first_sweep_then_twice_as_long() {
    let mut behaviours = vec![Behaviour::Ok; 10];
    behaviours[3] = Behaviour::Every(2, UNAVAILABLE);
    let run = run(OutlierDetection::default(), &behaviours, 115).await;
    // Sweeps every 10 s: ejected at the first (30 s), back, ejected at the next sweep for
    // 60 s (multiplier 2), back.
    assert_eq!(
        run.timeline,
        [
            (10, 3, true),
            (40, 3, false),
            (50, 3, true),
            (110, 3, false)
        ]
    );
    assert!(
        run.picks_while_ejected.is_empty(),
        "{:?}",
        run.picks_while_ejected
    );
}

#[tokio::test(start_paused = true)]
async fn three_bad_of_ten_with_max_ten_percent_never_more_than_one_ejected() {
    let mut behaviours = vec![Behaviour::Ok; 10];
    for i in [1, 4, 7] {
        behaviours[i] = Behaviour::Every(1, UNAVAILABLE);
    }
    let run = run(OutlierDetection::default(), &behaviours, 200).await;
    assert_eq!(run.most_ejected, 1, "{:?}", run.timeline);
    assert!(run.timeline.iter().all(|(_, i, _)| [1, 4, 7].contains(i)));
    assert!(run.picks_while_ejected.is_empty());
}

#[tokio::test(start_paused = true)]
async fn four_backends_are_never_ejected() {
    let behaviours = [
        Behaviour::Ok,
        Behaviour::Every(1, UNAVAILABLE),
        Behaviour::Ok,
        Behaviour::Ok,
    ];
    let run = run(OutlierDetection::default(), &behaviours, 120).await;
    assert!(run.timeline.is_empty(), "{:?}", run.timeline);
}

#[tokio::test(start_paused = true)]
async fn a_backend_answering_only_not_found_is_never_ejected() {
    let mut behaviours = vec![Behaviour::Ok; 10];
    behaviours[2] = Behaviour::Every(1, NOT_FOUND);
    let run = run(OutlierDetection::default(), &behaviours, 120).await;
    assert!(run.timeline.is_empty(), "{:?}", run.timeline);
}
