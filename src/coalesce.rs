//! Leading-edge coalescing: a change after a quiet period is acted on at once; changes that
//! arrive within `window` of the last action wait for the window to end and are handled
//! together. A lone pod turning Ready is written immediately, a rollout of hundreds in a
//! handful of transactions.
//!
//! Removals are the exception: a change that takes a published endpoint away (a pod deleted,
//! terminating or not Ready) is acted on at once, even inside a window filled by unrelated
//! changes, since clients keep sending to that endpoint until its key is gone ([`schedule`]).
//!
//! This is the operator's one coalescing window (`--coalesce-ms`): the engine debounces the
//! desired states it publishes with it; the etcd writer adds no window of its own.

use std::time::Duration;

use tokio::time::Instant;

/// The default window (`--coalesce-ms`), in milliseconds.
pub const DEFAULT_WINDOW_MS: u64 = 50;

/// When to act on a change seen at `now`, given when we last acted.
pub fn next_action(last: Option<Instant>, window: Duration, now: Instant) -> Instant {
    match last {
        Some(last) => (last + window).max(now),
        None => now,
    }
}

/// When the pending changes are acted on, seen at `now`: `scheduled` is the time already
/// chosen for them (if any), `removal` whether one of them removes a published endpoint.
/// A removal is acted on at once; other changes keep the time already chosen, or get one
/// from [`next_action`].
pub fn schedule(
    scheduled: Option<Instant>,
    last: Option<Instant>,
    window: Duration,
    now: Instant,
    removal: bool,
) -> Instant {
    match (removal, scheduled) {
        (true, _) => now,
        (false, Some(at)) => at,
        (false, None) => next_action(last, window, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_acts_now_and_bursts_wait_for_the_window() {
        let window = Duration::from_millis(50);
        let now = Instant::now();
        assert_eq!(next_action(None, window, Instant::now()), now);
        // Acted 10 ms ago: wait for the remaining 40 ms.
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(next_action(Some(now), window, Instant::now()), now + window);
        // Acted long ago: act now.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            next_action(Some(now), window, Instant::now()),
            Instant::now()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn removals_are_acted_on_at_once() {
        let window = Duration::from_millis(50);
        let t0 = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        let now = Instant::now();
        let end = t0 + window;
        // (scheduled, last action, removal) -> when.
        let table = [
            (None, None, false, now),
            (None, None, true, now),
            (None, Some(t0), false, end),
            (None, Some(t0), true, now),
            (Some(end), Some(t0), false, end),
            (Some(end), Some(t0), true, now),
            (Some(now), Some(t0), false, now),
        ];
        for (i, (scheduled, last, removal, want)) in table.into_iter().enumerate() {
            assert_eq!(
                schedule(scheduled, last, window, now, removal),
                want,
                "row {i}: scheduled={scheduled:?} last={last:?} removal={removal}"
            );
        }
    }
}
