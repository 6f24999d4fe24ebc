//! The confirmation window: after a switch, the server of the new system
//! must reach the activator and confirm the activation in time, or the
//! activator rolls it back.
//!
//! A confirmation shows that the new system still runs a server that can
//! reach the activator. It is no approval: it can only keep an activation
//! that a quorum approved and whose health checks passed. A server that
//! never confirms causes a rollback.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// The activation waiting for its confirmation, if any.
#[derive(Default)]
pub(crate) struct Confirmations {
    pending: Mutex<Option<Pending>>,
    changed: Condvar,
}

struct Pending {
    proposal: u64,
    confirmed: bool,
}

impl Confirmations {
    fn lock(&self) -> MutexGuard<'_, Option<Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens the window for `proposal`, so that `confirm` requests for
    /// it are accepted from now on.
    pub(crate) fn open(&self, proposal: u64) {
        *self.lock() = Some(Pending {
            proposal,
            confirmed: false,
        });
    }

    /// Waits until the open window is confirmed or `deadline` passes,
    /// then closes it; returns whether it was confirmed.
    pub(crate) fn wait(&self, deadline: Instant) -> bool {
        let mut pending = self.lock();
        loop {
            if pending.as_ref().is_some_and(|pending| pending.confirmed) {
                *pending = None;
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                *pending = None;
                return false;
            }
            pending = self
                .changed
                .wait_timeout(pending, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Confirms the activation of `proposal`, whose window must be open.
    pub(crate) fn confirm(&self, proposal: u64) -> Result<(), String> {
        let mut pending = self.lock();
        match pending.as_mut() {
            Some(waiting) if waiting.proposal == proposal => {
                waiting.confirmed = true;
                self.changed.notify_all();
                Ok(())
            }
            Some(waiting) => Err(format!(
                "proposal {proposal} awaits no confirmation; the activation \
                 of proposal {} does",
                waiting.proposal
            )),
            None => Err(format!(
                "proposal {proposal} awaits no confirmation: no activation \
                 is in its confirmation window"
            )),
        }
    }

    /// Returns the proposal whose window is open and not yet confirmed.
    pub(crate) fn awaiting(&self) -> Option<u64> {
        self.lock()
            .as_ref()
            .filter(|pending| !pending.confirmed)
            .map(|pending| pending.proposal)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    use super::*;

    #[test]
    fn confirmation_in_time_is_kept() {
        let confirmations = Arc::new(Confirmations::default());
        confirmations.open(7);
        assert_eq!(confirmations.awaiting(), Some(7));
        let confirmer = Arc::clone(&confirmations);
        let thread = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            confirmer.confirm(7)
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(confirmations.wait(deadline));
        assert_eq!(thread.join().unwrap(), Ok(()));
        assert_eq!(confirmations.awaiting(), None);
    }

    #[test]
    fn window_expires_without_confirmation() {
        let confirmations = Confirmations::default();
        confirmations.open(7);
        let started = Instant::now();
        assert!(!confirmations.wait(started + Duration::from_millis(200)));
        assert!(started.elapsed() >= Duration::from_millis(200));
        let error = confirmations.confirm(7).unwrap_err();
        assert!(error.contains("no activation"), "{error}");
    }

    #[test]
    fn other_proposal_is_not_confirmed() {
        let confirmations = Confirmations::default();
        confirmations.open(7);
        let error = confirmations.confirm(6).unwrap_err();
        assert!(error.contains("proposal 7 does"), "{error}");
        assert_eq!(confirmations.awaiting(), Some(7));
    }

    #[test]
    fn early_confirmation_counts() {
        let confirmations = Confirmations::default();
        confirmations.open(3);
        confirmations.confirm(3).unwrap();
        assert_eq!(confirmations.awaiting(), None);
        assert!(confirmations.wait(Instant::now()));
    }
}
