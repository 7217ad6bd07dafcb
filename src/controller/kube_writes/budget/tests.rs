use super::*;
use crate::metrics::Metrics;
use registrar_testenv::prometheus::sample;

fn budget(qps: f64, burst: u32, in_flight: usize) -> (WriteBudget, Metrics) {
    let metrics = Metrics::new();
    let limits = WriteLimits {
        qps,
        burst,
        in_flight,
    };
    (WriteBudget::new(limits, metrics.clone()), metrics)
}

/// Milliseconds since `start`, of each of `n` writes admitted one after the other.
async fn starts(b: &WriteBudget, start: Instant, n: usize) -> Vec<u128> {
    let mut out = Vec::new();
    for _ in 0..n {
        b.admit().await;
        out.push(start.elapsed().as_millis());
    }
    out
}

fn throttled(m: &Metrics) -> f64 {
    sample(&m.encode().unwrap(), "registrar_kube_throttled_total").unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_burst_then_the_sustained_rate() {
    let (b, _) = budget(10.0, 5, 100);
    let start = Instant::now();
    let seen = starts(&b, start, 12).await;
    println!("start times (ms): {seen:?}");
    assert_eq!(seen, [0, 0, 0, 0, 0, 100, 200, 300, 400, 500, 600, 700]);
    // A quiet second refills the bucket: 5 at once again, then 10 per second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = Instant::now();
    let seen = starts(&b, start, 7).await;
    assert_eq!(seen, [0, 0, 0, 0, 0, 100, 200], "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_every_write_and_is_counted() {
    let (b, m) = budget(100.0, 50, 100);
    assert_eq!(throttled(&m), 0.0);
    let too_many = kube::Error::Api(
        kube::core::Status::failure("too many requests", "TooManyRequests")
            .with_code(429)
            .boxed(),
    );
    let start = Instant::now();
    b.outcome::<()>(&Err(too_many));
    assert_eq!(throttled(&m), 1.0);
    // The first pause: 1 s, jittered down to no less than half.
    let seen = starts(&b, start, 3).await;
    println!("after one 429 (ms): {seen:?}");
    assert!((500..=1000).contains(&seen[0]), "{seen:?}");
    // Then the sustained rate, without a burst: 10 ms apart.
    assert_eq!(seen[1] - seen[0], 10, "{seen:?}");
    assert_eq!(seen[2] - seen[1], 10, "{seen:?}");

    // A second 429 in the same streak pauses longer (2 s, jittered: at least 1 s).
    let start = Instant::now();
    b.throttled(None);
    let seen = starts(&b, start, 1).await;
    assert!((1000..=2000).contains(&seen[0]), "second pause: {seen:?}");
    assert_eq!(throttled(&m), 2.0);

    // A success ends the streak: the next pause is back to at most 1 s.
    b.outcome(&Ok::<(), kube::Error>(()));
    let start = Instant::now();
    b.throttled(None);
    let seen = starts(&b, start, 1).await;
    assert!((500..=1000).contains(&seen[0]), "after a success: {seen:?}");

    // A 429 that asks for 5 s gets them.
    let asks = kube::Error::Api(
        kube::core::Status::failure("too many requests", "TooManyRequests")
            .with_code(429)
            .with_details(kube::core::response::StatusDetails {
                name: String::new(),
                group: String::new(),
                kind: String::new(),
                uid: String::new(),
                causes: Vec::new(),
                retry_after_seconds: 5,
            })
            .boxed(),
    );
    let start = Instant::now();
    b.outcome::<()>(&Err(asks));
    let seen = starts(&b, start, 1).await;
    assert_eq!(seen[0], 5000, "retry after 5 s: {seen:?}");
    assert_eq!(throttled(&m), 4.0);
}

#[tokio::test(start_paused = true)]
async fn a_write_waiting_for_its_token_is_paused_by_a_429() {
    // Five tokens per second, no burst: the second write waits until 0.2 s for its token.
    let (b, _) = budget(5.0, 1, 10);
    let start = Instant::now();
    b.admit().await;
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move {
            b.admit().await;
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.throttled(None);
    let at = waiting.await.unwrap();
    println!("the waiting write started after {at:?} (token due at 0.2 s, 429 at 0.1 s)");
    // Its token was due at 0.2 s, but the pause (0.5–1 s from 0.1 s) holds it until its end.
    assert!(at >= Duration::from_millis(600), "{at:?}");
    assert!(at <= Duration::from_millis(1100), "{at:?}");
}

/// Takes a seat of `class` in a task that records the order and holds it until told.
fn take(
    b: &WriteBudget,
    class: Class,
    label: &'static str,
    order: &std::sync::Arc<Mutex<Vec<&'static str>>>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (done, release) = tokio::sync::oneshot::channel::<()>();
    let b = b.clone();
    let order = order.clone();
    let task = tokio::spawn(async move {
        let _seat = b.seat(class).await;
        order.lock().unwrap().push(label);
        let _ = release.await;
    });
    (task, done)
}

#[tokio::test(start_paused = true)]
async fn seats_go_to_statuses_first_then_finalizers_then_events() {
    // in_flight 2: 4 seats, 1 for Events at most.
    let (b, _) = budget(1000.0, 1000, 2);
    let order = std::sync::Arc::new(Mutex::new(Vec::new()));
    // Four status patches hold every seat; the status queue has 8 ready in all.
    b.set_status_backlog(8);
    let mut held: Vec<_> = (0..4)
        .map(|_| take(&b, Class::Status, "status", &order))
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(b.busy(), [4, 0, 0]);
    // Then an Event, a finalizer and more statuses wait.
    let event = take(&b, Class::Event, "event", &order);
    let fin = take(&b, Class::Finalizer, "finalizer", &order);
    let mut more: Vec<_> = (0..4)
        .map(|_| take(&b, Class::Status, "status", &order))
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    // One status ends: the finalizer gets its own seat (none of its kind in flight) although
    // statuses wait.
    let (t, done) = held.remove(0);
    let _ = done.send(());
    t.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(b.busy(), [3, 1, 0], "{:?}", order.lock().unwrap());
    // The next three ends hand their seats to statuses, not to the Event.
    for (t, done) in held.drain(..) {
        let _ = done.send(());
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(b.busy(), [3, 1, 0]);
    // The last status gets the next free seat; then one more ends while the status queue
    // still reports a backlog: its seat stays free for the next status, not for the Event.
    for _ in 0..2 {
        let (t, done) = more.remove(0);
        let _ = done.send(());
        t.await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(b.busy(), [2, 1, 0]);
    // The backlog drops to what is in flight: the Event goes.
    b.set_status_backlog(2);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let seen = order.lock().unwrap().clone();
    println!("seats granted in order: {seen:?}");
    assert_eq!(b.busy(), [2, 1, 1]);
    assert_eq!(seen.last(), Some(&"event"));
    assert_eq!(seen.iter().filter(|s| **s == "status").count(), 8);
    assert_eq!(seen.iter().position(|s| *s == "finalizer"), Some(4));
    for (t, done) in more.into_iter().chain([event, fin]) {
        let _ = done.send(());
        t.await.unwrap();
    }
    assert_eq!(b.busy(), [0, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn events_take_at_most_a_quarter_and_a_dropped_waiter_gives_its_seat_back() {
    // in_flight 8: 16 seats, Events at most 2.
    let (b, _) = budget(1000.0, 1000, 8);
    let order = std::sync::Arc::new(Mutex::new(Vec::new()));
    let events: Vec<_> = (0..4)
        .map(|_| take(&b, Class::Event, "event", &order))
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(b.busy(), [0, 0, 2]);
    // A waiter that gives up leaves nothing behind.
    let gave_up = {
        let b = b.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(5), b.seat(Class::Event)).await;
        })
    };
    gave_up.await.unwrap();
    for (t, done) in events {
        let _ = done.send(());
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(b.busy(), [0, 0, 0]);
    assert_eq!(order.lock().unwrap().len(), 4);
}
