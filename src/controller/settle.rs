//! Hysteresis for the writer's state as statuses show it: a change of kind (e.g. `Ok` to
//! `EtcdUnavailable`) is shown only once the new kind has held for a while, so an etcd that
//! flaps between reachable and unreachable makes one status change (and one Event) per stable
//! change, not one per flap. Leaving or entering `Pending` (a writer starting) is shown at once.

use std::time::Duration;

use tokio::time::Instant;

use crate::status::Publishing;

/// How long a new kind of writer state must hold before statuses show it.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(5);

/// See the module docs.
pub struct Settled {
    shown: Publishing,
    /// A different kind seen since the instant, not shown yet.
    candidate: Option<(Publishing, Instant)>,
    hold: Duration,
}

fn same_kind(a: &Publishing, b: &Publishing) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

impl Settled {
    /// Shows `Pending` until told otherwise.
    pub fn new(hold: Duration) -> Self {
        Settled {
            shown: Publishing::Pending,
            candidate: None,
            hold,
        }
    }

    /// What statuses show.
    pub fn shown(&self) -> &Publishing {
        &self.shown
    }

    /// The writer is in `state` as of `now`. Returns whether the shown kind changed.
    pub fn observe(&mut self, state: Publishing, now: Instant) -> bool {
        if same_kind(&state, &self.shown) {
            // Back to what is shown before the hold ended: the flap is not shown. The text of
            // the shown state is kept (a retry's new error text is no status change).
            self.candidate = None;
            return false;
        }
        if state == Publishing::Pending || self.shown == Publishing::Pending {
            self.shown = state;
            self.candidate = None;
            return true;
        }
        match &mut self.candidate {
            Some((c, _)) if same_kind(c, &state) => *c = state,
            _ => self.candidate = Some((state, now)),
        }
        self.tick(now)
    }

    /// Like [`Settled::observe`], but a state of the shown kind replaces the shown one's text
    /// (a connection attempt that failed for a new reason).
    pub fn observe_with_text(&mut self, state: Publishing, now: Instant) -> bool {
        if same_kind(&state, &self.shown) {
            self.candidate = None;
            self.shown = state;
            return false;
        }
        self.observe(state, now)
    }

    /// When the candidate would be shown, if there is one.
    pub fn due(&self) -> Option<Instant> {
        self.candidate.as_ref().map(|(_, since)| *since + self.hold)
    }

    /// Shows the candidate if it held long enough by `now`. Returns whether the shown kind
    /// changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        match self.due() {
            Some(at) if at <= now => {
                if let Some((state, _)) = self.candidate.take() {
                    self.shown = state;
                }
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Publishing {
        Publishing::EtcdUnavailable("connection refused".into())
    }

    #[test]
    fn flaps_shorter_than_the_hold_are_not_shown_and_stable_changes_are_once() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut st = Settled::new(Duration::from_secs(5));
        assert!(st.observe(Publishing::Ok, s(0)), "Pending -> Ok at once");
        let mut changes = 0;
        // Flapping every second for 20 s.
        for i in 0..20u64 {
            let state = if i % 2 == 0 { down() } else { Publishing::Ok };
            changes += usize::from(st.observe(state, s(1000 + i * 1000)));
            changes += usize::from(st.tick(s(1500 + i * 1000)));
        }
        assert_eq!(changes, 0);
        assert_eq!(st.shown(), &Publishing::Ok);
        // Down for good: shown once, after the hold; retries with new texts change nothing.
        assert!(!st.observe(down(), s(30_000)));
        assert_eq!(st.due(), Some(s(35_000)));
        assert!(!st.observe(Publishing::EtcdUnavailable("timeout".into()), s(32_000)));
        assert!(!st.tick(s(34_999)));
        assert!(st.tick(s(35_000)));
        assert_eq!(st.shown(), &Publishing::EtcdUnavailable("timeout".into()));
        assert!(!st.observe(down(), s(36_000)));
        assert!(!st.tick(s(50_000)));
        // Up again for good: once.
        assert!(!st.observe(Publishing::Ok, s(60_000)));
        assert!(st.tick(s(65_000)));
        assert_eq!(st.shown(), &Publishing::Ok);
        // A writer restart is shown at once.
        assert!(st.observe(Publishing::Pending, s(70_000)));
        assert!(st.observe(down(), s(70_001)));
        // A new reason of the shown kind: the text follows only when asked.
        let why = Publishing::EtcdUnavailable("authentication failed".into());
        assert!(!st.observe(why.clone(), s(70_002)));
        assert_eq!(st.shown(), &down());
        assert!(!st.observe_with_text(why.clone(), s(70_003)));
        assert_eq!(st.shown(), &why);
    }
}
