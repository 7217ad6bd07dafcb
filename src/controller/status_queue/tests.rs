//! Unit tests of the status queue, with a scripted write function instead of an API server.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use super::*;

/// A write function that records its calls, holds each write until a permit is released (when
/// gated) and answers from a script (then `Written`).
#[derive(Clone, Default)]
struct Fake {
    calls: Arc<Mutex<Vec<(u32, u32, Instant)>>>,
    script: Arc<Mutex<Vec<WriteResult>>>,
    in_flight: Arc<Mutex<HashMap<u32, usize>>>,
    max_in_flight_per_key: Arc<AtomicUsize>,
    gate: Option<Arc<Semaphore>>,
    delay_ms: Option<(u64, u64)>,
}

impl Fake {
    fn gated() -> (Fake, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        (
            Fake {
                gate: Some(gate.clone()),
                ..Fake::default()
            },
            gate,
        )
    }

    fn queue(&self, cfg: QueueConfig) -> StatusQueue<u32, u32> {
        let fake = self.clone();
        StatusQueue::spawn(cfg, move |k, v| {
            let fake = fake.clone();
            async move { fake.write(k, v).await }
        })
    }

    async fn write(&self, k: u32, v: u32) -> WriteResult {
        self.calls.lock().unwrap().push((k, v, Instant::now()));
        {
            let mut m = self.in_flight.lock().unwrap();
            let n = m.entry(k).or_default();
            *n += 1;
            self.max_in_flight_per_key.fetch_max(*n, Ordering::SeqCst);
        }
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        if let Some((lo, hi)) = self.delay_ms {
            let ms = rand::random_range(lo..=hi);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        *self.in_flight.lock().unwrap().get_mut(&k).unwrap() -= 1;
        let mut script = self.script.lock().unwrap();
        if script.is_empty() {
            WriteResult::Written
        } else {
            script.remove(0)
        }
    }

    fn values(&self, key: u32) -> Vec<u32> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(k, _, _)| *k == key)
            .map(|(_, v, _)| *v)
            .collect()
    }

    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

/// Lets the worker run until `cond` holds (time is paused: sleeps advance it instantly).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

fn fast() -> QueueConfig {
    QueueConfig {
        concurrency: 4,
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
    }
}

#[tokio::test(start_paused = true)]
async fn the_latest_value_wins_and_one_write_is_in_flight_per_key() {
    let (fake, gate) = Fake::gated();
    let q = fake.queue(fast());
    q.set(1, 10);
    until("the first write started", || fake.count() == 1).await;
    // Decided while the first write is in flight: only the newest one is written after it.
    q.set(1, 11);
    q.set(1, 12);
    q.set(1, 13);
    assert_eq!(q.latest(&1), Some(13));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        fake.values(1),
        vec![10],
        "a second write started in parallel"
    );
    gate.add_permits(1);
    until("the newest value written", || fake.count() == 2).await;
    gate.add_permits(1);
    until("idle", || q.busy() == 0).await;
    assert_eq!(fake.values(1), vec![10, 13]);
    assert_eq!(fake.max_in_flight_per_key.load(Ordering::SeqCst), 1);
    assert_eq!(q.latest(&1), Some(13));

    // The value already written is not written again; a forced one is (resync).
    q.set(1, 13);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake.count(), 2);
    q.force(1, 13);
    gate.add_permits(1);
    until("the forced write", || fake.count() == 3).await;
    until("idle", || q.busy() == 0).await;
}

#[tokio::test(start_paused = true)]
async fn going_back_to_the_written_value_while_another_is_in_flight_writes_it_again() {
    // The race of issue 9: A written, B in flight, then A again. B must not be the last word.
    let (fake, gate) = Fake::gated();
    let q = fake.queue(fast());
    q.set(1, 1);
    gate.add_permits(1);
    until("A written", || q.busy() == 0).await;
    q.set(1, 2);
    until("B in flight", || fake.count() == 2).await;
    q.set(1, 1);
    gate.add_permits(2);
    until("idle", || q.busy() == 0).await;
    assert_eq!(fake.values(1), vec![1, 2, 1]);
}

#[tokio::test(start_paused = true)]
async fn many_keys_with_random_latency_end_on_their_last_value_in_order() {
    let fake = Fake {
        delay_ms: Some((0, 40)),
        ..Fake::default()
    };
    let q = fake.queue(fast());
    let mut last = HashMap::new();
    for v in 1..=400u32 {
        let k = rand::random_range(0..5u32);
        q.set(k, v);
        last.insert(k, v);
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..8))).await;
    }
    until("idle", || q.busy() == 0).await;
    assert_eq!(fake.max_in_flight_per_key.load(Ordering::SeqCst), 1);
    for (k, v) in &last {
        let written = fake.values(*k);
        assert_eq!(written.last(), Some(v), "key {k}: {written:?}");
        assert!(
            written.windows(2).all(|w| w[0] < w[1]),
            "key {k} out of order: {written:?}"
        );
        assert_eq!(q.latest(k), Some(*v));
    }
    println!("400 values over 5 keys: {} writes", fake.count());
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_retried_with_backoff_with_the_newest_value() {
    let fake = Fake::default();
    *fake.script.lock().unwrap() = vec![
        WriteResult::Failed,
        WriteResult::Failed,
        WriteResult::Failed,
    ];
    let q = fake.queue(fast());
    q.set(7, 1);
    until("the first attempt", || fake.count() == 1).await;
    q.set(7, 2); // decided during the backoff: the retry writes this one
    until("idle", || q.busy() == 0).await;
    let calls = fake.calls.lock().unwrap().clone();
    let values: Vec<u32> = calls.iter().map(|c| c.1).collect();
    assert_eq!(values, vec![1, 2, 2, 2]);
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].2 - w[0].2).collect();
    println!("retry gaps: {gaps:?}");
    for (i, gap) in gaps.iter().enumerate() {
        // Attempt i+1 waits 100 ms · 2^i, jittered down to half.
        let ceiling = Duration::from_millis(100 << i);
        assert!(
            *gap >= ceiling / 2 && *gap <= ceiling + Duration::from_millis(5),
            "gap {i}: {gap:?}"
        );
    }
    assert_eq!(q.latest(&7), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_gone_object_is_forgotten_and_a_rejected_value_not_retried() {
    let fake = Fake::default();
    *fake.script.lock().unwrap() = vec![WriteResult::Gone, WriteResult::Rejected];
    let q = fake.queue(fast());
    q.set(1, 1);
    until("gone", || q.busy() == 0).await;
    assert_eq!(q.latest(&1), None);
    q.set(2, 5);
    until("rejected", || q.busy() == 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fake.values(2), vec![5]);
}

#[tokio::test(start_paused = true)]
async fn at_most_the_concurrency_limit_is_in_flight() {
    let (fake, gate) = Fake::gated();
    let q = fake.queue(fast());
    for k in 0..10 {
        q.set(k, 1);
    }
    until("four started", || fake.count() == 4).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake.count(), 4);
    gate.add_permits(10);
    until("all written", || fake.count() == 10 && q.busy() == 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_write_in_flight_ends_before_the_next_even_across_a_clear() {
    let (fake, gate) = Fake::gated();
    let q = fake.queue(fast());
    q.set(1, 1);
    until("in flight", || fake.count() == 1).await;
    // Leadership changed: forget everything, then decide again at once.
    q.clear();
    q.set(1, 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake.count(), 1, "a second write started beside the first");
    gate.add_permits(2);
    until("idle", || q.busy() == 0).await;
    assert_eq!(fake.values(1), vec![1, 2]);
    assert_eq!(fake.max_in_flight_per_key.load(Ordering::SeqCst), 1);
    // Forgotten with nothing new: the entry goes once its write ends, and a failure of it is
    // not retried.
    *fake.script.lock().unwrap() = vec![WriteResult::Failed];
    q.set(1, 3);
    until("in flight", || fake.count() == 3).await;
    q.forget(&1);
    gate.add_permits(1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fake.count(), 3);
    assert_eq!(q.latest(&1), None);
}
