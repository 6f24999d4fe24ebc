//! The intent record: the activation in progress and the step it has
//! begun, written durably to the state file before each step, so that an
//! activator that restarts after a crash or a power loss can tell what
//! may have changed.
//!
//! # Recovery rule
//!
//! An intent that is still in the state file at start means that its
//! activation did not finish.
//!
//! When the interrupted step is the switch, the target's
//! `switch-to-configuration` ran detached (see [`crate::switch`]), so it
//! may have finished, or may still run, without the activator. The
//! activator first waits for its runner to end, logging every few
//! seconds, while its socket serves status requests that show the
//! activation in progress. If the script exited with status 0 and, for
//! `switch` and `test`, the running system (`current_system`) is the
//! target, the activation resumes without switching again: the health
//! checks, then
//! the confirmation window, then a `finished` history entry whose
//! message states that the activator restarted during the switch.
//! Otherwise the activation is rolled back as below, with the reason in
//! the history entry and the log. The reasons are: the script exited
//! with another status, its runner never started it or ended without
//! recording a status, its run files belong to another activation, or
//! another system runs, as after a reboot that follows a `test` switch.
//!
//! At every other step, and after a failed switch, the activation is not
//! kept. The activator puts the profile back at the generation it had
//! when the proposal was accepted. When that generation is gone or was
//! not recorded, it puts the profile at the base instead: at the base's
//! recorded generation when that still points at the base, otherwise at
//! a new generation. If the target's `switch-to-configuration` was
//! started, it may have run partly, so the activator runs the base's
//! with the same action. The restored profile may point at another
//! system than the base: a system approved for `boot`, or the profile
//! under a system approved for `test`. Then the running system and the
//! boot default are restored apart. The base's `switch-to-configuration
//! test` runs for `switch` and `test`, then the profile system's `boot`
//! for `switch` and `boot`. These scripts start only after every earlier
//! switch run has ended. The activator then records a `recovered`
//! history entry with the step and clears the intent. Either way the
//! proposal number stays used, so the certificate is never activated
//! again.
//!
//! When recovery cannot finish (the run files or the state cannot be
//! read), the intent stays, and every new certificate is refused with
//! the pending proposal and its step named, until a restart after the
//! cause is fixed recovers it.

use std::fs;
use std::path::{Path, PathBuf};

use countersign_core::{Action, StorePath};
use serde::{Deserialize, Serialize};

use crate::state::{self, StateError};

/// A step of an activation, in the order they run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum IntentStep {
    /// The configured pre-switch commands.
    PreSwitch,
    /// `nix-env --set` of the profile to the target.
    SetProfile,
    /// The target's `switch-to-configuration`.
    Switch,
    /// The configured health checks.
    HealthCheck,
    /// The wait for the new system's server to confirm.
    AwaitConfirmation,
    /// Restoring the base after a failure.
    RollBack,
}

impl std::fmt::Display for IntentStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PreSwitch => "pre-switch",
            Self::SetProfile => "set-profile",
            Self::Switch => "switch",
            Self::HealthCheck => "health-check",
            Self::AwaitConfirmation => "await-confirmation",
            Self::RollBack => "roll-back",
        })
    }
}

/// The activation in progress, as recorded before its current step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    pub proposal: u64,
    pub action: Action,
    pub base: StorePath,
    pub target: StorePath,
    /// The profile generation that pointed at the base when the proposal
    /// was accepted; `None` when the profile pointed at another system.
    pub base_generation: Option<u64>,
    /// The profile's generation when the proposal was accepted, whatever
    /// system it pointed at. A rollback returns the profile there, so
    /// that a system approved earlier for `boot` stays the boot default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_generation: Option<u64>,
    /// For a rollback, the generation of the profile that the target
    /// is; the profile is switched to it in place of a new generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_generation: Option<u64>,
    pub step: IntentStep,
    /// Whether the target's `switch-to-configuration` was started; it
    /// stays true through the later steps.
    pub switch_started: bool,
    /// Unix time at which the step began.
    pub since: u64,
}

impl Intent {
    /// Writes the intent with `step` begun to the state file in
    /// `state_dir` durably, and moves to `step` once it is written. The
    /// caller holds the activation lock, which serializes the writers of
    /// the state file.
    pub(crate) fn begin(
        &mut self,
        state_dir: &Path,
        step: IntentStep,
        now: u64,
    ) -> Result<(), StateError> {
        let mut next = self.clone();
        next.step = step;
        next.switch_started |= step == IntentStep::Switch;
        next.since = now;
        let mut state = state::read_state(state_dir)?;
        state.intent = Some(next.clone());
        state::write_state(state_dir, &state)?;
        *self = next;
        Ok(())
    }
}

/// Returns the generation number that the profile link `profile` points
/// at, from the name `<profile>-<N>-link` that `nix-env` gives it, or
/// `None` when `profile` is not such a link.
pub(crate) fn profile_generation(profile: &Path) -> Option<u64> {
    let link = fs::read_link(profile).ok()?;
    let link_name = link.file_name()?.to_str()?;
    let profile_name = profile.file_name()?.to_str()?;
    link_name
        .strip_prefix(profile_name)?
        .strip_prefix('-')?
        .strip_suffix("-link")?
        .parse()
        .ok()
}

/// Returns the path of generation `number` of `profile`.
pub(crate) fn generation_link(profile: &Path, number: u64) -> PathBuf {
    let name = profile
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    profile.with_file_name(format!("{name}-{number}-link"))
}

/// Returns the store path that `link` resolves to, or `None` when it
/// does not resolve to one.
pub(crate) fn resolve_link(link: &Path) -> Option<StorePath> {
    let resolved = fs::canonicalize(link).ok()?;
    StorePath::parse(resolved.to_str()?).ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn generation_is_read_from_link_name() {
        let directory = tempfile::tempdir().unwrap();
        let profile = directory.path().join("system");
        symlink("system-42-link", &profile).unwrap();
        assert_eq!(profile_generation(&profile), Some(42));
        assert_eq!(
            generation_link(&profile, 42),
            directory.path().join("system-42-link")
        );
    }

    #[test]
    fn other_links_have_no_generation() {
        let directory = tempfile::tempdir().unwrap();
        for (name, target) in [
            ("a", "/nix/store/x"),
            ("b", "b-x-link"),
            ("c", "other-3-link"),
            ("d", "d-3"),
        ] {
            let profile = directory.path().join(name);
            symlink(target, &profile).unwrap();
            assert_eq!(profile_generation(&profile), None, "{target}");
        }
        let missing = directory.path().join("missing");
        assert_eq!(profile_generation(&missing), None);
    }

    #[test]
    fn intent_round_trips_in_state() {
        let directory = tempfile::tempdir().unwrap();
        let mut intent = Intent {
            proposal: 5,
            action: Action::Switch,
            base: StorePath::parse(
                "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-a",
            )
            .unwrap(),
            target: StorePath::parse(
                "/nix/store/zyxwvsrqpnmlkjihgfdcba9876543210-nixos-system-b",
            )
            .unwrap(),
            base_generation: Some(3),
            profile_generation: Some(3),
            rollback_generation: None,
            step: IntentStep::SetProfile,
            switch_started: false,
            since: 1,
        };
        intent
            .begin(directory.path(), IntentStep::Switch, 2)
            .unwrap();
        let state = state::read_state(directory.path()).unwrap();
        let stored = state.intent.unwrap();
        assert_eq!(stored.step, IntentStep::Switch);
        assert!(stored.switch_started);
        assert_eq!(stored.since, 2);
        intent
            .begin(directory.path(), IntentStep::RollBack, 3)
            .unwrap();
        let state = state::read_state(directory.path()).unwrap();
        assert!(state.intent.unwrap().switch_started);
    }
}
