//! Crash safety: the activator and its children are killed with SIGKILL
//! at each step of an activation, and the restarted activator must put
//! the base back, record what happened and refuse the certificate.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;

use countersign_activator::{IntentStep, read_state, verify_history};
use countersign_core::Certificate;
use countersign_core::protocol::{Event, Outcome, Request};
use support::{
    Activator, World, WorldOptions, approved, finished, policy_text,
    real_program, wait_for,
};

/// Where a `nix-env` wrapper pauses, once it is armed.
#[derive(Clone, Copy)]
enum Pause {
    /// Before the real `nix-env` runs: the profile is unchanged.
    BeforeNixEnv,
    /// After the real `nix-env` set the profile, before it returns.
    AfterNixEnv,
}

/// Files through which a test arms a `nix-env` wrapper and detects its
/// pause.
struct Wrapper {
    armed: PathBuf,
    paused: PathBuf,
}

/// Returns a `nix-env` wrapper that pauses for a minute at `pause` the
/// first time it runs after the test creates the `armed` file.
fn pausing_nix_env(dir: &Path, pause: Pause) -> (Wrapper, String) {
    let wrapper = Wrapper {
        armed: dir.join("nix-env-armed"),
        paused: dir.join("nix-env-paused"),
    };
    let pause_once = format!(
        "if [ -e '{armed}' ]; then rm '{armed}'; touch '{paused}'; \
         sleep 60; fi",
        armed = wrapper.armed.display(),
        paused = wrapper.paused.display()
    );
    let (before, after) = match pause {
        Pause::BeforeNixEnv => (pause_once.as_str(), ""),
        Pause::AfterNixEnv => ("", pause_once.as_str()),
    };
    let script = format!(
        "#!/bin/sh\n{before}\n'{real}' \"$@\"\nstatus=$?\n{after}\n\
         exit $status\n",
        real = real_program("nix-env")
    );
    (wrapper, script)
}

/// Sends an activation request from another thread, calls `kill_when`
/// until it returns true, kills the activator's process group and
/// returns the events that arrived before the kill.
fn activate_and_kill(
    activator: &Activator,
    certificate: &Certificate,
    what: &str,
    kill_when: impl FnMut() -> bool,
) -> Vec<Event> {
    let request = Request::Activate {
        certificate: certificate.clone(),
        audit_head: None,
    };
    thread::scope(|scope| {
        let reply =
            scope.spawn(|| activator.request_streaming(&request, &mut |_| {}));
        wait_for(what, kill_when);
        activator.kill_group();
        reply.join().unwrap()
    })
}

fn intent_step(activator: &Activator) -> Option<IntentStep> {
    read_state(&activator.state_dir)
        .unwrap()
        .intent
        .map(|intent| intent.step)
}

/// Checks what every recovery leaves behind: the base in the profile,
/// no intent, the history entry, and a replay that is refused. Returns
/// the message of the `recovered` entry.
fn assert_recovered(
    activator: &Activator,
    world: &World,
    certificate: &Certificate,
    step: &str,
) -> String {
    let kinds = activator.record_kinds();
    assert_eq!(
        kinds,
        [
            "accepted 1".to_owned(),
            format!("recovered 1 {step} RolledBack")
        ],
        "{}",
        activator.log()
    );
    assert_eq!(activator.profile_target(), world.base.as_path());
    let state = read_state(&activator.state_dir).unwrap();
    assert_eq!(state.intent, None);
    assert_eq!(state.last_proposal, 1);
    verify_history(&activator.state_dir).unwrap();
    let recovered = activator.last_message();

    let (outcome, proposal, message) =
        finished(&activator.activate(certificate));
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert_eq!(proposal, Some(1));
    assert!(
        message
            .contains("proposal 1 is not above the last accepted proposal 1"),
        "{message}"
    );
    recovered
}

fn finished_events(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|event| matches!(event, Event::Finished { .. }))
        .count()
}

#[test]
fn kill_before_profile_switch_recovers() {
    let world = World::build(WorldOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, script) = pausing_nix_env(dir.path(), Pause::BeforeNixEnv);
    let mut activator =
        Activator::start_with_programs(&world, "", &[("nix-env", script)]);
    fs::write(&wrapper.armed, "").unwrap();
    let certificate = approved(&world.statement(&policy_text(), 1));

    let events = activate_and_kill(
        &activator,
        &certificate,
        "nix-env to pause",
        || wrapper.paused.exists(),
    );
    assert_eq!(finished_events(&events), 0, "{events:?}");
    assert_eq!(intent_step(&activator), Some(IntentStep::SetProfile));
    assert_eq!(activator.profile_target(), world.base.as_path());

    activator.restart();
    let message =
        assert_recovered(&activator, &world, &certificate, "set-profile");
    assert!(message.contains("still pointed at the base"), "{message}");
    assert!(world.switch_log_lines().is_empty());
}

#[test]
fn kill_during_profile_switch_recovers() {
    let world = World::build(WorldOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, script) = pausing_nix_env(dir.path(), Pause::AfterNixEnv);
    let mut activator =
        Activator::start_with_programs(&world, "", &[("nix-env", script)]);
    fs::write(&wrapper.armed, "").unwrap();
    let certificate = approved(&world.statement(&policy_text(), 1));

    let events = activate_and_kill(
        &activator,
        &certificate,
        "nix-env to pause",
        || wrapper.paused.exists(),
    );
    assert_eq!(finished_events(&events), 0, "{events:?}");
    // The profile was switched, but the activator never learned it.
    assert_eq!(intent_step(&activator), Some(IntentStep::SetProfile));
    assert_eq!(activator.profile_target(), world.target.as_path());

    activator.restart();
    let message =
        assert_recovered(&activator, &world, &certificate, "set-profile");
    assert!(
        message.contains("was set back to its generation 1"),
        "{message}"
    );
    assert!(world.switch_log_lines().is_empty());
}

#[test]
fn kill_after_profile_switch_recovers() {
    let world = World::build(WorldOptions {
        switch_delay_secs: 60,
        ..WorldOptions::default()
    });
    let mut activator = Activator::start(&world, "");
    let certificate = approved(&world.statement(&policy_text(), 1));

    activate_and_kill(&activator, &certificate, "the switch step", || {
        intent_step(&activator) == Some(IntentStep::Switch)
    });
    assert_eq!(activator.profile_target(), world.target.as_path());

    activator.restart();
    let message = assert_recovered(&activator, &world, &certificate, "switch");
    assert!(message.contains("generation 1"), "{message}");
    assert!(
        message.contains("the base's switch-to-configuration switch ran"),
        "{message}"
    );
    // The target's script may or may not have logged before the kill.
    let lines = world.switch_log_lines();
    assert_eq!(
        lines.last(),
        Some(&format!("switch {}", world.base)),
        "{lines:?}"
    );
}

#[test]
fn kill_during_switch_script_recovers() {
    let world = World::build(WorldOptions {
        switch_delay_secs: 60,
        ..WorldOptions::default()
    });
    let mut activator = Activator::start(&world, "");
    let certificate = approved(&world.statement(&policy_text(), 1));

    let events = activate_and_kill(
        &activator,
        &certificate,
        "the target's switch-to-configuration",
        || !world.switch_log_lines().is_empty(),
    );
    assert_eq!(finished_events(&events), 0, "{events:?}");
    assert_eq!(intent_step(&activator), Some(IntentStep::Switch));

    activator.restart();
    assert_recovered(&activator, &world, &certificate, "switch");
    assert_eq!(
        world.switch_log_lines(),
        [
            format!("switch {}", world.target),
            format!("switch {}", world.base)
        ]
    );
}

#[test]
fn kill_in_confirmation_window_recovers() {
    let world = World::build(WorldOptions::default());
    let mut activator = Activator::start(&world, "confirm_timeout_secs = 600");
    let certificate = approved(&world.statement(&policy_text(), 1));

    let events = activate_and_kill(
        &activator,
        &certificate,
        "the confirmation window",
        || intent_step(&activator) == Some(IntentStep::AwaitConfirmation),
    );
    assert_eq!(finished_events(&events), 0, "{events:?}");

    activator.restart();
    assert_recovered(&activator, &world, &certificate, "await-confirmation");
    assert_eq!(
        world.switch_log_lines(),
        [
            format!("switch {}", world.target),
            format!("switch {}", world.base)
        ]
    );
    // The restarted activator has no window open for the proposal.
    let events = activator.confirm(1);
    let (outcome, _, message) = finished(&events);
    assert_eq!(outcome, Outcome::Refused, "{message}");
}

#[test]
fn kill_of_test_action_recovers() {
    let world = World::build(WorldOptions {
        switch_delay_secs: 60,
        ..WorldOptions::default()
    });
    let mut activator = Activator::start(&world, "");
    let mut statement = world.statement(&policy_text(), 1);
    statement.action = countersign_core::Action::Test;
    let certificate = approved(&statement);

    activate_and_kill(
        &activator,
        &certificate,
        "the target's switch-to-configuration",
        || !world.switch_log_lines().is_empty(),
    );

    activator.restart();
    let message = assert_recovered(&activator, &world, &certificate, "switch");
    // `test` never touches the profile, so recovery runs only the
    // base's script, with the same action.
    assert_eq!(
        world.switch_log_lines(),
        [
            format!("test {}", world.target),
            format!("test {}", world.base)
        ]
    );
    assert!(!message.contains("profile"), "{message}");
}
