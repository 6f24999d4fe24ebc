//! The steps of an accepted activation (pre-switch commands, profile,
//! switch, health checks, confirmation window), the rollback to the
//! certificate's base, and the recovery of an activation that a crash
//! or a power loss interrupted.

use std::path::Path;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use countersign_core::protocol::{Event, Outcome, Step};
use countersign_core::{Action, StorePath};

use crate::activate::{Activator, EventSink, now, progress};
use crate::health::{self, ActivationInfo};
use crate::history::{History, HistoryRecord};
use crate::intent::{self, Intent, IntentStep};
use crate::switch::{self, Launcher, Run, RunEnd, SYSTEMD_RUNTIME_DIR};
use crate::system::SWITCH_SCRIPT;

impl Activator {
    /// Returns the profile generation that points at `base`, when the
    /// profile's current generation does.
    pub(crate) fn base_generation(&self, base: &StorePath) -> Option<u64> {
        let profile = &self.config.profile;
        let generation = intent::profile_generation(profile)?;
        let link = intent::generation_link(profile, generation);
        (intent::resolve_link(&link).as_ref() == Some(base))
            .then_some(generation)
    }

    /// Runs the steps of an accepted activation, writing the intent
    /// before each, and rolls back on failure.
    pub(crate) fn run_steps(
        &self,
        intent: &mut Intent,
        events: &mut dyn EventSink,
    ) -> (Outcome, String) {
        let proposal = intent.proposal;
        let action = intent.action;
        let target = intent.target.clone();
        let base = intent.base.clone();
        let info = ActivationInfo {
            proposal,
            action,
            base: &base,
            target: &target,
        };

        if !self.config.pre_switch.is_empty() {
            let ran =
                self.begin(intent, IntentStep::PreSwitch).and_then(|()| {
                    health::run_pre_switch(
                        &self.config.pre_switch,
                        &info,
                        events,
                    )
                });
            if let Err(error) = ran {
                return (
                    Outcome::Refused,
                    format!(
                        "proposal {proposal}: {error}; the activation was \
                         aborted before the profile or the running system \
                         changed"
                    ),
                );
            }
        }

        let profile = &self.config.profile;
        if action != Action::Test {
            if let Err(error) = self.begin(intent, IntentStep::SetProfile) {
                return self.roll_back(intent, error, events);
            }
            progress(
                events,
                Step::SetProfile,
                format!(
                    "setting the profile {} to {target}",
                    profile.display()
                ),
            );
            let set = match intent.rollback_generation {
                Some(generation) => {
                    self.nix.switch_generation(profile, generation)
                }
                None => self.nix.set_profile(profile, &target),
            };
            if let Err(error) = set {
                let failure = format!(
                    "setting the profile {} to {target} failed: {error}",
                    profile.display()
                );
                return self.roll_back(intent, failure, events);
            }
        }

        if let Err(error) = self.begin(intent, IntentStep::Switch) {
            return self.roll_back(intent, error, events);
        }
        progress(
            events,
            Step::Switch,
            format!("running {target}/{SWITCH_SCRIPT} {action}"),
        );
        let run = Run::target(&self.config.state_dir, proposal);
        if let Err(error) = self.run_switch(&run, &target, action, events) {
            return self.roll_back(intent, error, events);
        }
        self.after_switch(intent, events)
    }

    /// Runs the steps after a successful switch (health checks and the
    /// confirmation window) and rolls back on failure.
    fn after_switch(
        &self,
        intent: &mut Intent,
        events: &mut dyn EventSink,
    ) -> (Outcome, String) {
        let proposal = intent.proposal;
        let action = intent.action;
        let target = intent.target.clone();
        let base = intent.base.clone();
        let info = ActivationInfo {
            proposal,
            action,
            base: &base,
            target: &target,
        };
        if action == Action::Boot {
            // `boot` changes nothing that runs before the next boot, so
            // there is nothing to check or confirm now.
            return (
                Outcome::Activated,
                format!(
                    "proposal {proposal}: {target} is the boot default after \
                     `boot`; it runs after the next reboot"
                ),
            );
        }

        if !self.config.health.is_empty() {
            let checked =
                self.begin(intent, IntentStep::HealthCheck).and_then(|()| {
                    health::run_health_checks(
                        &self.config.health,
                        &info,
                        events,
                    )
                });
            if let Err(error) = checked {
                return self.roll_back(intent, error, events);
            }
        }

        let window = self.config.confirm_timeout_secs;
        if window > 0 {
            if let Err(error) =
                self.begin(intent, IntentStep::AwaitConfirmation)
            {
                return self.roll_back(intent, error, events);
            }
            if !self.await_confirmation(proposal, window, events) {
                let failure = format!(
                    "the server of the new system did not confirm proposal \
                     {proposal} within {window} s"
                );
                return self.roll_back(intent, failure, events);
            }
        }

        (
            Outcome::Activated,
            format!("proposal {proposal}: {target} activated with `{action}`"),
        )
    }

    /// Writes the intent for `step`. An error means that the step did
    /// not begin.
    fn begin(
        &self,
        intent: &mut Intent,
        step: IntentStep,
    ) -> Result<(), String> {
        intent
            .begin(&self.config.state_dir, step, now())
            .map_err(|error| {
                format!(
                    "cannot record the step {step} durably, so it did not \
                     begin: {error}"
                )
            })
    }

    /// Opens the confirmation window, reports it and waits; returns
    /// whether the confirmation arrived in time.
    fn await_confirmation(
        &self,
        proposal: u64,
        window: u64,
        events: &mut dyn EventSink,
    ) -> bool {
        let deadline = Instant::now() + Duration::from_secs(window);
        self.confirmations.open(proposal);
        progress(
            events,
            Step::AwaitConfirmation,
            format!(
                "waiting up to {window} s for the server of the new system \
                 to confirm proposal {proposal}"
            ),
        );
        events.send(&Event::AwaitingConfirmation {
            proposal,
            deadline: now() + window,
        });
        let confirmed = self.confirmations.wait(deadline);
        if confirmed {
            progress(
                events,
                Step::AwaitConfirmation,
                format!("proposal {proposal} confirmed"),
            );
        }
        confirmed
    }

    /// Restores the certificate's base after `failure`.
    fn roll_back(
        &self,
        intent: &mut Intent,
        failure: String,
        events: &mut dyn EventSink,
    ) -> (Outcome, String) {
        let proposal = intent.proposal;
        let base = intent.base.clone();
        tracing::error!(
            proposal,
            error = %failure,
            "activation failed; rolling back"
        );
        if let Err(error) = self.begin(intent, IntentStep::RollBack) {
            // The intent of the step that failed stays in the state file,
            // and a restart after a crash rolls back from there.
            tracing::error!(proposal, %error, "rolling back without an intent");
        }
        progress(
            events,
            Step::RollBack,
            format!("{failure}; rolling back to {base}"),
        );
        match self.restore_base(intent, events) {
            Ok(_) => (
                Outcome::RolledBack,
                format!(
                    "proposal {proposal}: {failure}; rolled back to {base}"
                ),
            ),
            Err(errors) => (
                Outcome::Failed,
                format!(
                    "proposal {proposal}: {failure}; rolling back to {base} \
                     failed too: {errors}; the machine needs an \
                     administrator, who can run `nixos-rebuild` on the \
                     console"
                ),
            ),
        }
    }

    /// Applies the recovery rule: puts the profile back once its step
    /// began, and reruns switch scripts once the target's was started
    /// (see [`crate::intent`]). Returns what it did.
    fn restore_base(
        &self,
        intent: &Intent,
        events: &mut dyn EventSink,
    ) -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        let mut errors = Vec::new();
        let mut profile_system = None;
        if intent.action != Action::Test
            && intent.step >= IntentStep::SetProfile
        {
            match self.restore_profile(intent) {
                Ok((description, system)) => {
                    done.push(description);
                    profile_system = Some(system);
                }
                Err(error) => errors.push(error),
            }
        }
        if intent.switch_started {
            for (system, action) in
                restoring_switches(intent, profile_system.as_ref())
            {
                let run =
                    Run::next_base(&self.config.state_dir, intent.proposal);
                match self.run_switch(&run, system, action, events) {
                    Ok(()) if *system == intent.base => done.push(format!(
                        "the base's switch-to-configuration {action} ran"
                    )),
                    Ok(()) => done.push(format!(
                        "the switch-to-configuration {action} of {system}, \
                         the profile's system, ran"
                    )),
                    Err(error) => errors.push(error),
                }
            }
        }
        if errors.is_empty() {
            Ok(done)
        } else {
            Err(errors.join("; "))
        }
    }

    /// Points the profile back at the generation it had when the proposal
    /// was accepted, or, when that generation is gone or unknown, at the
    /// base: at the base's recorded generation while that still resolves
    /// to the base, otherwise at a new generation of the base. Returns
    /// what it did and the system the profile then points at.
    fn restore_profile(
        &self,
        intent: &Intent,
    ) -> Result<(String, StorePath), String> {
        let profile = &self.config.profile;
        let base = &intent.base;
        let accepted = intent.profile_generation.and_then(|generation| {
            let link = intent::generation_link(profile, generation);
            intent::resolve_link(&link).map(|system| (generation, system))
        });
        if let Some((generation, system)) = accepted {
            return self.return_to_generation(generation, system, base);
        }
        if intent::resolve_link(profile).as_ref() == Some(base) {
            let description = format!(
                "the profile {} still pointed at the base",
                profile.display()
            );
            return Ok((description, base.clone()));
        }
        let base_generation = intent.base_generation.filter(|generation| {
            let link = intent::generation_link(profile, *generation);
            intent::resolve_link(&link).as_ref() == Some(base)
        });
        if let Some(generation) = base_generation {
            return self.return_to_generation(generation, base.clone(), base);
        }
        match self.nix.set_profile(profile, base) {
            Ok(()) => {
                let description = format!(
                    "the profile {} was set to the base as a new generation",
                    profile.display()
                );
                Ok((description, base.clone()))
            }
            Err(error) => Err(format!(
                "setting the profile {} back to {base} failed: {error}",
                profile.display()
            )),
        }
    }

    /// Switches the profile to its `generation`, which is `system`,
    /// unless it is there already. Returns what it did and `system`.
    fn return_to_generation(
        &self,
        generation: u64,
        system: StorePath,
        base: &StorePath,
    ) -> Result<(String, StorePath), String> {
        let profile = &self.config.profile;
        if intent::profile_generation(profile) == Some(generation) {
            let base_note = if system == *base { "the base, " } else { "" };
            let description = format!(
                "the profile {} still pointed at {base_note}its generation \
                 {generation}",
                profile.display()
            );
            return Ok((description, system));
        }
        match self.nix.switch_generation(profile, generation) {
            Ok(()) => {
                let description = format!(
                    "the profile {} was set back to its generation \
                     {generation}",
                    profile.display()
                );
                Ok((description, system))
            }
            Err(error) => Err(format!(
                "setting the profile {} back to its generation {generation} \
                 ({system}) failed: {error}",
                profile.display()
            )),
        }
    }

    /// Finishes an activation that did not finish before the activator
    /// stopped, by the recovery rule of [`crate::intent`], and records
    /// it. Runs at start, before the socket accepts requests. When the
    /// target's switch may still run or finished with status 0, the rest
    /// runs on a thread that holds the activation lock, so that the
    /// socket serves status and `confirm` requests meanwhile. This
    /// returns once that thread holds the lock.
    pub(crate) fn recover(activator: &Arc<Self>) {
        let mut history = activator.lock();
        let state = match crate::state::read_state(&activator.config.state_dir)
        {
            Ok(state) => state,
            Err(error) => {
                tracing::error!(
                    %error,
                    "cannot read the state to look for an interrupted \
                     activation"
                );
                return;
            }
        };
        let Some(intent) = state.intent else {
            return;
        };
        tracing::warn!(
            proposal = intent.proposal,
            step = %intent.step,
            action = %intent.action,
            base = %intent.base,
            target = %intent.target,
            "the activator stopped during an activation"
        );
        if intent.step != IntentStep::Switch {
            activator.recover_by_rollback(&mut history, &intent, None);
            return;
        }
        let run = Run::target(&activator.config.state_dir, intent.proposal)
            .expecting(&intent.target, intent.action);
        let end = match run.try_settle() {
            Ok(Some(end)) if !end.succeeded() => {
                activator.recover_after_switch(&mut history, intent, end);
                return;
            }
            Ok(end) => end,
            Err(error) => {
                // Without the run's files the activator cannot tell
                // whether the target's switch still runs, so running the
                // base's switch now could overlap it.
                tracing::error!(
                    proposal = intent.proposal,
                    %error,
                    "cannot tell how the detached switch ended; the \
                     activation stays unfinished, and new certificates are \
                     refused, until the activator starts again after the \
                     cause is fixed"
                );
                return;
            }
        };
        drop(history);

        let (locked, lock_taken) = mpsc::channel();
        let resumer = Arc::clone(activator);
        let spawned =
            thread::Builder::new()
                .name("recovery".into())
                .spawn(move || {
                    let mut history = resumer.lock();
                    let _ = locked.send(());
                    let end = match end {
                        Some(end) => end,
                        None => match run.settle() {
                            Ok(end) => end,
                            Err(error) => {
                                tracing::error!(
                                    proposal = intent.proposal,
                                    %error,
                                    "cannot wait for the detached switch; the \
                                     activation stays unfinished, and new \
                                     certificates are refused, until the \
                                     activator starts again after the cause \
                                     is fixed"
                                );
                                return;
                            }
                        },
                    };
                    resumer.recover_after_switch(&mut history, intent, end);
                });
        match spawned {
            Ok(_) => {
                // The thread holds the activation lock before any
                // request can be served.
                let _ = lock_taken.recv();
            }
            Err(error) => tracing::error!(
                %error,
                "cannot start the recovery thread; the activation stays \
                 unfinished, and new certificates are refused, until the \
                 next start"
            ),
        }
    }

    /// Finishes an activation whose target's switch ran detached while
    /// the activator restarted: resumes it after status 0, and rolls it
    /// back otherwise. The same certificate is never switched again.
    fn recover_after_switch(
        &self,
        history: &mut History,
        mut intent: Intent,
        end: RunEnd,
    ) {
        let proposal = intent.proposal;
        let description =
            format!("{}/{SWITCH_SCRIPT} {}", intent.target, intent.action);
        if let Err(cause) = end.into_result(&description) {
            self.recover_by_rollback(history, &intent, Some(cause));
            return;
        }
        if let Err(cause) = self.check_target_runs(&intent) {
            self.recover_by_rollback(history, &intent, Some(cause));
            return;
        }
        tracing::warn!(
            proposal,
            "the detached switch-to-configuration finished with status 0 \
             while the activator restarted; resuming the activation"
        );
        let (outcome, message) = self.after_switch(&mut intent, &mut LogOnly);
        let message = format!(
            "{message}; the activator restarted during the switch, and \
             `{description}` finished with status 0 without it"
        );
        let record = HistoryRecord::Finished {
            time: now(),
            proposal,
            outcome,
            message: message.clone(),
        };
        match history.record(&record, |state| state.intent = None) {
            Ok(()) if outcome == Outcome::Activated => tracing::info!(
                proposal,
                %message,
                "resumed activation finished"
            ),
            Ok(()) => tracing::error!(
                proposal,
                outcome = ?outcome,
                %message,
                "resumed activation failed"
            ),
            Err(error) => tracing::error!(
                proposal,
                %error,
                %message,
                "cannot record the outcome of a resumed activation"
            ),
        }
    }

    /// Checks, before an activation resumes after its switch finished
    /// with status 0, that the running system is the target. A reboot
    /// since a `test` switch, or a switch by an administrator, means the
    /// target no longer runs, and health checks would judge another
    /// system. `boot` changes nothing that runs, so it is not checked.
    fn check_target_runs(&self, intent: &Intent) -> Result<(), String> {
        if intent.action == Action::Boot {
            return Ok(());
        }
        let link = &self.config.current_system;
        let running = crate::system::resolve_current_system(link)?;
        if running != intent.target {
            return Err(format!(
                "the running system {} is {running}, not the target {}, so \
                 the machine rebooted or switched since the target's \
                 `{}` finished",
                link.display(),
                intent.target,
                intent.action
            ));
        }
        Ok(())
    }

    /// Restores the base of an activation that did not finish and
    /// records a `recovered` entry. `cause` is the reason, when known.
    fn recover_by_rollback(
        &self,
        history: &mut History,
        intent: &Intent,
        cause: Option<String>,
    ) {
        let proposal = intent.proposal;
        let step = intent.step;
        let mut stopped = format!(
            "the activator stopped during the step {step} of proposal \
             {proposal}, which did not finish"
        );
        if let Some(cause) = cause {
            stopped = format!("{stopped}, and {cause}");
        }
        tracing::warn!(proposal, %step, reason = %stopped, "restoring the base");
        let (outcome, message) = match self.restore_base(intent, &mut LogOnly)
        {
            Ok(done) if done.is_empty() => (
                Outcome::RolledBack,
                format!(
                    "{stopped}; nothing had changed yet, so {} still runs",
                    intent.base
                ),
            ),
            Ok(done) => (
                Outcome::RolledBack,
                format!(
                    "{stopped}; rolled back to {}: {}",
                    intent.base,
                    done.join(", and ")
                ),
            ),
            Err(errors) => (
                Outcome::Failed,
                format!(
                    "{stopped}; restoring {} failed: {errors}; the \
                         machine needs an administrator, who can run \
                         `nixos-rebuild` on the console",
                    intent.base
                ),
            ),
        };
        let record = HistoryRecord::Recovered {
            time: now(),
            proposal,
            step,
            outcome,
            message: message.clone(),
        };
        match history.record(&record, |state| state.intent = None) {
            Ok(()) if outcome == Outcome::RolledBack => {
                tracing::warn!(proposal, %message, "activation recovered");
            }
            Ok(()) => {
                tracing::error!(proposal, %message, "recovery failed");
            }
            Err(error) => tracing::error!(
                proposal,
                %error,
                %message,
                "cannot record the recovery; it runs again at the next start"
            ),
        }
    }

    /// Runs a switch script detached as `run` and sends its output as
    /// log events.
    fn run_switch(
        &self,
        run: &Run,
        toplevel: &StorePath,
        action: Action,
        events: &mut dyn EventSink,
    ) -> Result<(), String> {
        let launcher = Launcher::choose(
            Path::new(SYSTEMD_RUNTIME_DIR),
            &self.config.systemd_run,
        );
        switch::run_detached(&launcher, run, toplevel, action, &mut |line| {
            tracing::info!(toplevel = %toplevel, line, "switch-to-configuration");
            events.send(&Event::Log {
                line: line.to_owned(),
            });
        })
    }
}

/// The events of a recovery, which has no client: they go to the log.
struct LogOnly;

impl EventSink for LogOnly {
    fn send(&mut self, _event: &Event) {}
}

/// Lists the switch scripts that restore the running system and the boot
/// default after the target's script was started, in order. With the
/// profile back at the base this is the base's script with the same
/// action. With the profile at another system, the base's `test`
/// restores the running system for `switch` and `test`, and the profile
/// system's `boot` restores the boot default for `switch` and `boot`.
fn restoring_switches<'a>(
    intent: &'a Intent,
    profile_system: Option<&'a StorePath>,
) -> Vec<(&'a StorePath, Action)> {
    let base = &intent.base;
    match profile_system {
        Some(system) if system != base && intent.action != Action::Test => {
            let mut switches = Vec::new();
            if intent.action == Action::Switch {
                switches.push((base, Action::Test));
            }
            switches.push((system, Action::Boot));
            switches
        }
        _ => vec![(base, intent.action)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_path(name: &str) -> StorePath {
        StorePath::parse(&format!(
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-{name}"
        ))
        .unwrap()
    }

    fn intent(action: Action) -> Intent {
        Intent {
            proposal: 2,
            action,
            base: store_path("base"),
            target: store_path("target"),
            base_generation: None,
            profile_generation: Some(4),
            rollback_generation: None,
            step: IntentStep::HealthCheck,
            switch_started: true,
            since: 0,
        }
    }

    #[test]
    fn profile_at_base_reruns_base_with_same_action() {
        for action in [Action::Switch, Action::Boot, Action::Test] {
            let intent = intent(action);
            let base = intent.base.clone();
            assert_eq!(
                restoring_switches(&intent, Some(&base)),
                [(&base, action)]
            );
            assert_eq!(restoring_switches(&intent, None), [(&base, action)]);
        }
    }

    #[test]
    fn profile_elsewhere_restores_running_and_boot_apart() {
        let other = store_path("approved-for-boot");
        let switch = intent(Action::Switch);
        assert_eq!(
            restoring_switches(&switch, Some(&other)),
            [(&switch.base, Action::Test), (&other, Action::Boot)]
        );
        let boot = intent(Action::Boot);
        assert_eq!(
            restoring_switches(&boot, Some(&other)),
            [(&other, Action::Boot)]
        );
        // `test` leaves the profile and the boot default alone.
        let test = intent(Action::Test);
        assert_eq!(
            restoring_switches(&test, Some(&other)),
            [(&test.base, Action::Test)]
        );
    }
}
