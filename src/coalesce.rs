//! Leading-edge coalescing: a change after a quiet period is acted on at once; changes that
//! arrive within `window` of the last action wait for the window to end and are handled
//! together. A lone pod turning Ready is written immediately, a rollout of hundreds in a
//! handful of transactions.
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
}
