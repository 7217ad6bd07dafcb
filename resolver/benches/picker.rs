//! Per-call overhead of choosing a backend, for 1, 100 and 10,000 READY backends (criterion).
//!
//! - `pick/picker/N`: the bare round-robin step (one atomic increment and a liveness check).
//! - `pick/weighted/N`: the same picker with weights 1 to 10 through the static-stride scheduler
//!   (one or more atomic increments; with a single backend there is nothing to weigh).
//! - `pick/balancer/N`: everything [`Balancer`](registrar_resolver::Balancer) does per call
//!   before sending: load the current picker, pick, clone the backend's channel (and drop it).
//!
//! ```text
//! cargo bench -p registrar-resolver --bench picker
//! ```
//!
//! Each case warms up 0.5 s and measures 2 s, so the whole bench takes well under a minute.
//! Backend channels are lazy and never used: nothing is dialed.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use registrar_resolver::bench_internals::{IndexPicker, ReadyPool, WeightedIndexPicker};

const BACKENDS: [usize; 3] = [1, 100, 10_000];

fn pick(c: &mut Criterion) {
    // Lazy channels spawn an idle worker task each; a runtime that is never driven is enough.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("building a Tokio runtime");
    let _guard = runtime.enter();
    let mut group = c.benchmark_group("pick");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in BACKENDS {
        let picker = IndexPicker::new(n);
        group.bench_with_input(BenchmarkId::new("picker", n), &picker, |b, p| {
            b.iter(|| black_box(p.pick()))
        });
        let weighted = WeightedIndexPicker::new(n);
        group.bench_with_input(BenchmarkId::new("weighted", n), &weighted, |b, p| {
            b.iter(|| black_box(p.pick()))
        });
        let pool = ReadyPool::new(n).expect("building the READY backends");
        group.bench_with_input(BenchmarkId::new("balancer", n), &pool, |b, p| {
            b.iter(|| black_box(p.pick()))
        });
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
