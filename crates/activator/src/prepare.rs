//! Prepare requests: the source check and the evaluation of an activation
//! done ahead of it, so that the activation finds both results cached
//! when the final approval arrives.
//!
//! A prepare request is untrusted input like any other. It only fills the
//! caches that an activation consults, and it fills them only with
//! results that the activator computed itself, so it cannot make an
//! activation accept anything it would otherwise refuse. It never sets
//! the profile, runs a switch script, uses a proposal number or writes
//! to the history.

use std::sync::atomic::Ordering;

use countersign_core::StorePath;
use countersign_core::protocol::{Event, Outcome};

use crate::activate::{Activator, EventSink};

/// Prepare requests that may run or wait for the evaluation lock at
/// once. Further ones are refused without waiting, so a flood of
/// requests neither piles up evaluations nor holds every connection.
pub(crate) const MAX_PREPARES: usize = 4;

/// One counted prepare request; dropping it frees the place.
struct PrepareSlot<'a>(&'a Activator);

impl Drop for PrepareSlot<'_> {
    fn drop(&mut self) {
        self.0.prepares.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activator {
    /// Checks `source` against `nar_hash` and evaluates `attribute` of
    /// it; the last event sent is `prepared` or a refusal.
    pub(crate) fn prepare(
        &self,
        source: &StorePath,
        nar_hash: &str,
        attribute: &str,
        events: &mut dyn EventSink,
    ) {
        let result = match self.take_prepare_slot() {
            Some(_slot) => {
                self.run_prepare(source, nar_hash, attribute, events)
            }
            None => Err(format!(
                "the activator already runs {MAX_PREPARES} prepare \
                 requests; try again later"
            )),
        };
        match result {
            Ok(target) => {
                tracing::info!(
                    %source,
                    nar_hash,
                    attribute,
                    target = target.as_ref().map(|path| path.as_str()),
                    "prepare request finished"
                );
                events.send(&Event::Prepared { target });
            }
            Err(reason) => {
                tracing::warn!(%source, %reason, "prepare request refused");
                events.send(&Event::Finished {
                    outcome: Outcome::Refused,
                    proposal: None,
                    message: reason,
                });
            }
        }
    }

    fn take_prepare_slot(&self) -> Option<PrepareSlot<'_>> {
        if self.prepares.fetch_add(1, Ordering::SeqCst) >= MAX_PREPARES {
            self.prepares.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(PrepareSlot(self))
    }

    fn run_prepare(
        &self,
        source: &StorePath,
        nar_hash: &str,
        attribute: &str,
        events: &mut dyn EventSink,
    ) -> Result<Option<StorePath>, String> {
        // Both values are validated before any Nix command receives them.
        countersign_nix::validate_nar_hash(nar_hash)
            .map_err(|error| error.to_string())?;
        countersign_nix::validate_attribute(attribute)
            .map_err(|error| error.to_string())?;
        self.check_source(source, nar_hash, "the request", events)?;
        if !self.config.verify_evaluation {
            return Ok(None);
        }
        if self.config.evaluator_user.is_none() && !self.config.prepare_as_root
        {
            tracing::info!(
                source = %source,
                "evaluation deferred until a quorum approves: no \
                 evaluator_user is set"
            );
            return Ok(None);
        }
        self.evaluate(source, nar_hash, attribute, events).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Config;
    use crate::history::History;
    use crate::nix::NixTools;

    #[test]
    fn prepare_slots_are_bounded() {
        let directory = tempfile::tempdir().unwrap();
        let config = Config::parse(&format!(
            "policy = \"/nonexistent/policy.toml\"\n\
             state_dir = \"{}\"\nsocket = \"/nonexistent/activator.sock\"\n",
            directory.path().display()
        ))
        .unwrap();
        let nix = NixTools::new(&BTreeMap::new(), None).unwrap();
        let history = History::open(directory.path()).unwrap();
        let activator = Activator::new(config, nix, history);

        let slots: Vec<_> = (0..MAX_PREPARES)
            .map(|_| activator.take_prepare_slot().expect("a free slot"))
            .collect();
        assert!(activator.take_prepare_slot().is_none());
        drop(slots);
        assert_eq!(activator.prepares.load(Ordering::SeqCst), 0);
        assert!(activator.take_prepare_slot().is_some());
    }
}
