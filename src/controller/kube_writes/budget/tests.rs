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
