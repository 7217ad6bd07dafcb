use super::*;

fn ev(name: &str, warning: bool, reason: &str) -> PendingEvent {
    PendingEvent {
        reference: ObjectReference {
            namespace: Some("shop".into()),
            name: Some(name.into()),
            ..ObjectReference::default()
        },
        warning,
        reason: reason.into(),
        note: String::new(),
    }
}

fn limits(queue: usize, burst: u32, every_secs: u64) -> EventLimits {
    EventLimits {
        queue,
        per_object_burst: burst,
        per_object_every: Duration::from_secs(every_secs),
        // Always under pressure (the cold-start case); see the test of a lone registration.
        pressure: 1,
    }
}

#[test]
fn a_flapping_registration_gets_its_burst_then_one_event_per_interval() {
    let mut q = EventQueue::new(limits(100, 3, 60));
    let t0 = Instant::now();
    let mut dropped = Vec::new();
    // Each one sent before the next comes (else the newer supersedes the queued one).
    let mut sent = 0;
    for i in 0..5 {
        let reason = if i % 2 == 0 {
            "NoReadyPods"
        } else {
            "Published"
        };
        dropped.extend(q.offer(ev("a", i % 2 == 0, reason), t0));
        sent += usize::from(q.pop().is_some());
    }
    let causes: Vec<DropCause> = dropped.iter().map(|d| d.cause).collect();
    println!("sent {sent}, not sent {causes:?}");
    assert_eq!(sent, 3);
    // The 4th (Normal) is rate limited, the 5th (Warning) too.
    assert_eq!(causes, [DropCause::RateLimited, DropCause::RateLimited]);
    // Another registration is not limited by it.
    assert_eq!(q.offer(ev("b", false, "Published"), t0), []);
    assert_eq!(q.len(), 1);
    // 30 s later: half a token, still dropped; 60 s: one more.
    let d = q.offer(ev("a", true, "NoReadyPods"), t0 + Duration::from_secs(30));
    assert!(d.iter().any(|d| d.cause == DropCause::RateLimited), "{d:?}");
    let d = q.offer(ev("a", true, "NoReadyPods"), t0 + Duration::from_secs(60));
    assert!(d.iter().all(|d| d.cause != DropCause::RateLimited), "{d:?}");
    assert_eq!(q.pop().map(|e| e.object()), Some("shop/b".into()));
    assert_eq!(q.pop().map(|e| e.reason), Some("NoReadyPods".into()));
}

#[test]
fn a_full_queue_drops_normal_events_first_and_a_warning_only_among_warnings() {
    let mut q = EventQueue::new(limits(3, 25, 300));
    let t0 = Instant::now();
    let one = |d: Vec<Dropped>| -> Dropped {
        assert_eq!(d.len(), 1, "{d:?}");
        d.into_iter().next().unwrap()
    };
    assert_eq!(q.offer(ev("n1", false, "Published"), t0), []);
    assert_eq!(q.offer(ev("w1", true, "EtcdUnavailable"), t0), []);
    assert_eq!(q.offer(ev("n2", false, "Published"), t0), []);
    // Full: a Normal one is dropped.
    let d = one(q.offer(ev("n3", false, "Published"), t0));
    assert_eq!(
        (d.event.object().as_str(), d.cause),
        ("shop/n3", DropCause::QueueFull)
    );
    // A Warning displaces the oldest Normal one, then the next.
    let d = one(q.offer(ev("w2", true, "EtcdUnavailable"), t0));
    assert_eq!(d.event.object(), "shop/n1");
    let d = one(q.offer(ev("w3", true, "EtcdUnavailable"), t0));
    assert_eq!(d.event.object(), "shop/n2");
    // Only Warnings left: the new one is dropped (and counted by the caller).
    let d = one(q.offer(ev("w4", true, "EtcdUnavailable"), t0));
    assert_eq!(
        (d.event.object().as_str(), d.event.warning),
        ("shop/w4", true)
    );
    let left: Vec<String> = std::iter::from_fn(|| q.pop()).map(|e| e.object()).collect();
    println!("sent in order: {left:?}");
    assert_eq!(left, ["shop/w1", "shop/w2", "shop/w3"]);
}

#[test]
fn refilled_buckets_are_forgotten() {
    let mut q = EventQueue::new(limits(100, 2, 10));
    let t0 = Instant::now();
    for i in 0..50 {
        q.offer(ev(&format!("r{i}"), false, "Published"), t0);
    }
    assert_eq!(q.tracked(), 50);
    // After 20 s every bucket is full again: the next offer prunes them.
    q.offer(ev("late", false, "Published"), t0 + Duration::from_secs(20));
    assert_eq!(q.tracked(), 1);
}

#[test]
fn a_newer_event_supersedes_a_queued_one_and_an_unsent_warning_takes_its_recovery_along() {
    let mut q = EventQueue::new(limits(2, 25, 300));
    let t0 = Instant::now();
    // A Warning and its recovery (every pod of a registration restarted at once), both queued
    // behind the statuses: neither is sent.
    assert_eq!(q.offer(ev("a", true, "NoReadyPods"), t0), []);
    let d = q.offer(ev("a", false, "Published"), t0);
    let seen: Vec<(bool, DropCause)> = d.iter().map(|d| (d.event.warning, d.cause)).collect();
    println!("pair: {seen:?}");
    assert_eq!(
        seen,
        [
            (true, DropCause::Superseded),
            (false, DropCause::Superseded)
        ]
    );
    assert!(q.is_empty());
    // A Warning dropped for a full queue: its recovery is not sent either.
    q.offer(ev("x", true, "PortNotFound"), t0);
    q.offer(ev("y", true, "PortNotFound"), t0);
    let d = q.offer(ev("b", true, "NoReadyPods"), t0);
    assert_eq!(d[0].cause, DropCause::QueueFull);
    assert_eq!(q.pop().map(|e| e.object()), Some("shop/x".into()));
    let d = q.offer(ev("b", false, "Published"), t0);
    assert_eq!(d[0].cause, DropCause::Superseded);
    assert_eq!(q.len(), 1);
    // A Warning that was sent: its recovery is sent too.
    assert_eq!(q.pop().map(|e| e.object()), Some("shop/y".into()));
    assert_eq!(q.offer(ev("y", false, "Published"), t0), []);
    // Two Warnings: the newer one replaces the queued older one.
    q.offer(ev("c", true, "PortNotFound"), t0);
    let d = q.offer(ev("c", true, "NoReadyPods"), t0);
    assert_eq!(
        (d[0].event.reason.as_str(), d[0].cause),
        ("PortNotFound", DropCause::Superseded)
    );
    let left: Vec<String> = std::iter::from_fn(|| q.pop()).map(|e| e.reason).collect();
    assert_eq!(left, ["Published", "NoReadyPods"]);
}

#[test]
fn below_the_pressure_a_lone_registrations_published_event_takes_the_warnings_place() {
    let mut q = EventQueue::new(EventLimits::default());
    let t0 = Instant::now();
    // A registration whose pods all restarted: NoReadyPods, then Published again.
    assert_eq!(q.offer(ev("a", true, "NoReadyPods"), t0), []);
    let d = q.offer(ev("a", false, "Published"), t0);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].event.warning, d[0].cause),
        (true, DropCause::Superseded)
    );
    let left: Vec<String> = std::iter::from_fn(|| q.pop()).map(|e| e.reason).collect();
    println!("sent: {left:?}");
    assert_eq!(left, ["Published"]);
}
