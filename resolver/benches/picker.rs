//! Per-call overhead of choosing a backend, for 1, 100 and 10,000 READY backends (criterion).
//!
//! - `pick/picker/N`: the bare round-robin step (one atomic increment and a liveness check).
//! - `pick/weighted/N`: the same picker with weights 1 to 10 through the static-stride scheduler
//!   (one or more atomic increments; with a single backend there is nothing to weigh).
//! - `pick/balancer/N`: everything [`Balancer`](registrar_resolver::Balancer) does per call
//!   before sending: load the current picker (lock-free), pick, count the pick and take a
//!   reference to the backend's connection (and drop it, as the call does when it ends).
//! - `pick/balancer+channel/N`: the same plus what sending does around handing the request to
//!   tonic: take a spare handle of the backend's `Channel` (tonic's `Service::call` needs one of
//!   its own) and give it back.
//! - `pick/balancer_8_threads/N`: `pick/balancer` with 8 threads calling on the same pool at once.
//! - `pick/balancer+channel_8_threads/N`: `pick/balancer+channel` with 8 threads calling on the
//!   same pool at once (CPU time summed over the threads).
//! - `pick/failover+channel/N` and `pick/failover+channel_8_threads/N`: the same through a
//!   [`FailoverBalancer`](registrar_resolver::FailoverBalancer)'s pick path (two groups of N
//!   READY backends, calls going to the first): load the current group choice, then pick in
//!   the first group with a live backend. Next to the `balancer` cases, the ratio is what
//!   failover adds per call.
//!
//! - `pick/shared_counter/1` and `pick/shared_counter_8_threads/1`: the floor, not Registrar
//!   code: one `fetch_add` on one shared counter per call, which any round-robin picker shared by
//!   its callers (grpc-go's too) does; with 8 threads its cache line moves between the cores.
//!
//! Every figure is the calling threads' CPU time per call (`CLOCK_THREAD_CPUTIME_ID`), not wall
//! time: on a shared machine the bench thread may get a fraction of a core, which wall time would
//! count as pick time; contention on shared cache lines is CPU time and counts.
//!
//! ```text
//! cargo bench -p registrar-resolver --bench picker
//! ```
//!
//! Each case warms up 0.5 s and measures 2 s, so the whole bench takes about a minute.
//! Backend channels are lazy and never used: nothing is dialed.

use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use registrar_resolver::bench_internals::{
    IndexPicker, PickedBackend, ReadyFailover, ReadyPool, WeightedIndexPicker,
};

const BACKENDS: [usize; 3] = [1, 100, 10_000];

/// Threads of the concurrent case.
const THREADS: usize = 8;

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always supported
    // on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of `iters` calls of `f` on this thread.
fn cpu_time<T>(iters: u64, mut f: impl FnMut() -> T) -> Duration {
    let before = thread_cpu_time();
    for _ in 0..iters {
        black_box(f());
    }
    thread_cpu_time() - before
}

/// `iters` picks (by `pick`) on each of [`THREADS`] threads at once; the CPU time they took,
/// divided by the number of threads (so criterion's per-iteration figure is CPU time per call).
fn concurrent_picks(pick: &(dyn Fn() -> Option<PickedBackend> + Sync), iters: u64) -> Duration {
    concurrent(&|| pick().map(|backend| backend.cycle_channel()), iters)
}

/// `iters` calls of `f` on each of [`THREADS`] threads at once; CPU time per thread.
fn concurrent<T>(f: &(dyn Fn() -> T + Sync), iters: u64) -> Duration {
    let start = Barrier::new(THREADS);
    let total: Duration = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    cpu_time(iters, f)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a picking thread panicked"))
            .sum()
    });
    total / THREADS as u32
}

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
    let counter = AtomicUsize::new(0);
    let step = || counter.fetch_add(1, Ordering::Relaxed);
    group.bench_function(BenchmarkId::new("shared_counter", 1), |b| {
        b.iter_custom(|iters| cpu_time(iters, step))
    });
    group.bench_function(
        BenchmarkId::new(format!("shared_counter_{THREADS}_threads"), 1),
        |b| b.iter_custom(|iters| concurrent(&step, iters)),
    );
    for n in BACKENDS {
        let picker = IndexPicker::new(n);
        group.bench_with_input(BenchmarkId::new("picker", n), &picker, |b, p| {
            b.iter_custom(|iters| cpu_time(iters, || p.pick()))
        });
        let weighted = WeightedIndexPicker::new(n);
        group.bench_with_input(BenchmarkId::new("weighted", n), &weighted, |b, p| {
            b.iter_custom(|iters| cpu_time(iters, || p.pick()))
        });
        let pool = ReadyPool::new(n).expect("building the READY backends");
        group.bench_with_input(BenchmarkId::new("balancer", n), &pool, |b, p| {
            b.iter_custom(|iters| cpu_time(iters, || p.pick()))
        });
        group.bench_with_input(BenchmarkId::new("balancer+channel", n), &pool, |b, p| {
            b.iter_custom(|iters| {
                cpu_time(iters, || p.pick().map(|backend| backend.cycle_channel()))
            })
        });
        group.bench_with_input(
            BenchmarkId::new(format!("balancer_{THREADS}_threads"), n),
            &pool,
            |b, p| b.iter_custom(|iters| concurrent(&|| p.pick(), iters)),
        );
        group.bench_with_input(
            BenchmarkId::new(format!("balancer+channel_{THREADS}_threads"), n),
            &pool,
            |b, p| b.iter_custom(|iters| concurrent_picks(&|| p.pick(), iters)),
        );
        let failover = ReadyFailover::new(n).expect("building the READY backends");
        group.bench_with_input(
            BenchmarkId::new("failover+channel", n),
            &failover,
            |b, f| {
                b.iter_custom(|iters| {
                    cpu_time(iters, || f.pick().map(|backend| backend.cycle_channel()))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new(format!("failover+channel_{THREADS}_threads"), n),
            &failover,
            |b, f| b.iter_custom(|iters| concurrent_picks(&|| f.pick(), iters)),
        );
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
