//! Leading-edge coalescing: a change after a quiet period is acted on at once; changes that
//! arrive within `window` of the last action wait for the window to end and are handled
//! together. A lone pod turning Ready is written immediately, a rollout of hundreds in a
//! handful of transactions.

use std::time::Duration;

use tokio::time::Instant;

/// When to act on a change seen now, given when we last acted.
pub fn next_action(last: Option<Instant>, window: Duration) -> Instant {
    let now = Instant::now();
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
        assert_eq!(next_action(None, window), now);
        // Acted 10 ms ago: wait for the remaining 40 ms.
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(next_action(Some(now), window), now + window);
        // Acted long ago: act now.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(next_action(Some(now), window), Instant::now());
    }
}
