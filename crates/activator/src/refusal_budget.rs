//! The limit on refusals written to the history.
//!
//! Each history entry is appended and synced to disk, and any process
//! that may connect to the socket can send requests without end. Past
//! [`MAX_RECORDED`] refusals in one [`WINDOW`], refusals still get a
//! reply and a log line, but the history only counts them. The next
//! recorded refusal states how many were left out.

use std::time::{Duration, Instant};

/// Refusals recorded in the history per window.
pub(crate) const MAX_RECORDED: u32 = 20;

/// The length of a window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct RefusalBudget {
    window_start: Instant,
    recorded: u32,
    /// Refusals left out of the history since the last recorded one.
    left_out: u64,
}

impl RefusalBudget {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            recorded: 0,
            left_out: 0,
        }
    }

    /// Decides whether a refusal at `now` is recorded. Returns `None`
    /// when it is left out, else the number of refusals left out since
    /// the last recorded one.
    pub(crate) fn admit(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.recorded = 0;
        }
        if self.recorded >= MAX_RECORDED {
            self.left_out += 1;
            return None;
        }
        self.recorded += 1;
        Some(std::mem::take(&mut self.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_past_the_limit_are_counted() {
        let start = Instant::now();
        let mut budget = RefusalBudget::new(start);
        for _ in 0..MAX_RECORDED {
            assert_eq!(budget.admit(start), Some(0));
        }
        assert_eq!(budget.admit(start), None);
        assert_eq!(budget.admit(start + Duration::from_secs(59)), None);
        // A new window records again and reports the two left out.
        let next = start + WINDOW;
        assert_eq!(budget.admit(next), Some(2));
        assert_eq!(budget.admit(next), Some(0));
    }
}
