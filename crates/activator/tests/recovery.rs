//! Crash safety: the activator and its process group are killed with
//! SIGKILL at each step of an activation. The switch script runs
//! detached and survives. The restarted activator resumes an activation
//! whose switch finished with status 0. Otherwise it must put the base
//! back, record what happened and refuse the certificate.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use countersign_activator::state::write_state;
use countersign_activator::{
    HISTORY_FILE, IntentStep, SWITCH_RUNS_DIR, read_state, verify_history,
};
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
        commit_evidence: support::commit_evidence(certificate),
    };
    thread::scope(|scope| {
        let reply =
            scope.spawn(|| activator.request_streaming(&request, &mut |_| {}));
        wait_for(what, kill_when);
        activator.kill_group();
        reply.join().unwrap()
    })
}

const STATUS_REQUEST: &[u8] = b"{\"request\":\"status\"}\n";

/// Returns the path of the file `name` of the detached switch runs.
fn run_file(activator: &Activator, name: &str) -> PathBuf {
    activator.state_dir.join(SWITCH_RUNS_DIR).join(name)
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
    // A runner may still hold its lock for a moment after it wrote its
    // status, and the recovery then finishes on a thread after start.
    wait_for("the recovery", || activator.record_kinds().len() >= 2);
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

/// Checks that the target's switch-to-configuration ran, then the
/// base's, each once, with the action `switch`.
fn assert_switched_target_then_base(world: &World) {
    assert_eq!(
        world.switch_log_lines(),
        [
            format!("switch {}", world.target),
            format!("switch {}", world.base)
        ]
    );
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
fn entry_lost_in_crash_stays_missing() {
    let world = World::build(WorldOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, script) = pausing_nix_env(dir.path(), Pause::BeforeNixEnv);
    let mut activator =
        Activator::start_with_programs(&world, "", &[("nix-env", script)]);
    fs::write(&wrapper.armed, "").unwrap();
    let certificate = approved(&world.statement(&policy_text(), 1));
    activate_and_kill(&activator, &certificate, "nix-env to pause", || {
        wrapper.paused.exists()
    });
    // The files of an activator killed after it wrote the state that
    // records the `accepted` entry, and before it appended that entry.
    let history = activator.state_dir.join(HISTORY_FILE);
    assert_eq!(fs::read_to_string(&history).unwrap().lines().count(), 1);
    fs::write(&history, "").unwrap();
    assert!(verify_history(&activator.state_dir).is_err());

    activator.restart();
    assert_eq!(intent_step(&activator), None, "{}", activator.log());
    assert_eq!(activator.profile_target(), world.base.as_path());
    // The entries written after the crash must not hide the lost one.
    let error = verify_history(&activator.state_dir).unwrap_err();
    assert!(error.to_string().contains("gap"), "{error}");
}

#[test]
fn switch_never_started_rolls_back() {
    let world = World::build(WorldOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, script) = pausing_nix_env(dir.path(), Pause::AfterNixEnv);
    let mut activator =
        Activator::start_with_programs(&world, "", &[("nix-env", script)]);
    fs::write(&wrapper.armed, "").unwrap();
    let certificate = approved(&world.statement(&policy_text(), 1));

    activate_and_kill(&activator, &certificate, "nix-env to pause", || {
        wrapper.paused.exists()
    });
    assert_eq!(activator.profile_target(), world.target.as_path());
    // The state of an activator that died after it recorded the switch
    // step and before it launched the runner.
    let mut state = read_state(&activator.state_dir).unwrap();
    let intent = state.intent.as_mut().unwrap();
    intent.step = IntentStep::Switch;
    intent.switch_started = true;
    write_state(&activator.state_dir, &state).unwrap();

    activator.restart();
    let message = assert_recovered(&activator, &world, &certificate, "switch");
    assert!(message.contains("never started the script"), "{message}");
    assert!(message.contains("generation 1"), "{message}");
    assert!(
        message.contains("the base's switch-to-configuration switch ran"),
        "{message}"
    );
    assert_eq!(world.switch_log_lines(), [format!("switch {}", world.base)]);
    assert!(run_file(&activator, "switch-1.abandoned").exists());

    // A runner that arrives late finds the run abandoned and does not
    // run the target's script.
    let output = Command::new(env!("CARGO_BIN_EXE_countersign-activator"))
        .arg("run-switch")
        .arg("--directory")
        .arg(activator.state_dir.join(SWITCH_RUNS_DIR))
        .args(["--run", "switch-1", "--toplevel", world.target.as_str()])
        .args(["--action", "switch"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(!run_file(&activator, "switch-1.started").exists());
    assert_eq!(world.switch_log_lines(), [format!("switch {}", world.base)]);
}

#[test]
fn kill_during_switch_resumes_after_restart() {
    let world = World::build(WorldOptions {
        switch_delay_secs: 3,
        ..WorldOptions::default()
    });
    let checks = tempfile::tempdir().unwrap();
    let health_log = checks.path().join("health.log");
    let extra = format!(
        "confirm_timeout_secs = 600\n\
         [[health.commands]]\n\
         command = [\"/bin/sh\", \"-c\", \"echo checked >> '{}'\"]\n",
        health_log.display()
    );
    let mut activator = Activator::start(&world, &extra);
    let certificate = approved(&world.statement(&policy_text(), 1));

    let events = activate_and_kill(
        &activator,
        &certificate,
        "the target's switch-to-configuration",
        || !world.switch_log_lines().is_empty(),
    );
    assert_eq!(finished_events(&events), 0, "{events:?}");
    assert_eq!(intent_step(&activator), Some(IntentStep::Switch));

    // The switch finishes without the activator.
    let status = run_file(&activator, "switch-1.status");
    wait_for("the detached switch to finish", || status.exists());
    let recorded: serde_json::Value =
        serde_json::from_slice(&fs::read(&status).unwrap()).unwrap();
    assert_eq!(
        recorded,
        serde_json::json!({
            "run": {
                "proposal": 1,
                "toplevel": world.target.as_str(),
                "action": "switch"
            },
            "outcome": {"exited": {"wait_status": 0}}
        })
    );
    assert_eq!(
        world.switch_log_lines(),
        [format!("switch {}", world.target)]
    );
    assert!(!health_log.exists());

    activator.restart();
    let mut awaiting = None;
    wait_for("the resumed confirmation window", || {
        awaiting = Some(activator.request(STATUS_REQUEST));
        matches!(
            awaiting.as_ref().unwrap().last(),
            Some(Event::Status {
                awaiting_confirmation: Some(1),
                ..
            })
        )
    });
    assert!(
        matches!(
            awaiting.unwrap().last(),
            Some(Event::Status {
                activating: Some(1),
                last_proposal: 1,
                ..
            })
        ),
        "the status shows the activation in progress"
    );
    assert_eq!(fs::read_to_string(&health_log).unwrap(), "checked\n");
    assert_eq!(activator.confirm(1), [Event::Confirmed { proposal: 1 }]);

    wait_for("the resumed activation to finish", || {
        activator.record_kinds().len() == 2
    });
    assert_eq!(
        activator.record_kinds(),
        ["accepted 1", "finished 1 Activated"],
        "{}",
        activator.log()
    );
    let message = activator.last_message();
    assert!(message.contains("restarted during the switch"), "{message}");
    assert!(message.contains("finished with status 0"), "{message}");
    assert_eq!(activator.profile_target(), world.target.as_path());
    assert_eq!(
        world.switch_log_lines(),
        [format!("switch {}", world.target)]
    );
    let state = read_state(&activator.state_dir).unwrap();
    assert_eq!(state.intent, None);
    verify_history(&activator.state_dir).unwrap();

    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Refused, "{message}");
}

#[test]
fn kill_during_failing_switch_rolls_back() {
    let world = World::build(WorldOptions {
        fail_switch: true,
        switch_delay_secs: 2,
    });
    let mut activator = Activator::start(&world, "");
    let certificate = approved(&world.statement(&policy_text(), 1));

    activate_and_kill(
        &activator,
        &certificate,
        "the target's switch-to-configuration",
        || !world.switch_log_lines().is_empty(),
    );
    let status = run_file(&activator, "switch-1.status");
    wait_for("the detached switch to finish", || status.exists());

    activator.restart();
    let message = assert_recovered(&activator, &world, &certificate, "switch");
    assert!(message.contains("exited with exit status: 1"), "{message}");
    assert!(message.contains("generation 1"), "{message}");
    assert_switched_target_then_base(&world);
}

#[test]
fn kill_during_rollback_recovers() {
    let world = World::build(WorldOptions {
        fail_switch: true,
        switch_delay_secs: 1,
    });
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, script) = pausing_nix_env(dir.path(), Pause::BeforeNixEnv);
    let mut activator =
        Activator::start_with_programs(&world, "", &[("nix-env", script)]);
    let certificate = approved(&world.statement(&policy_text(), 1));

    // Armed once the target's switch runs, the wrapper pauses the
    // rollback's `nix-env`, which puts the profile back.
    let mut armed = false;
    activate_and_kill(&activator, &certificate, "the rollback", || {
        if !armed && !world.switch_log_lines().is_empty() {
            fs::write(&wrapper.armed, "").unwrap();
            armed = true;
        }
        wrapper.paused.exists()
    });
    assert_eq!(intent_step(&activator), Some(IntentStep::RollBack));
    assert_eq!(activator.profile_target(), world.target.as_path());

    activator.restart();
    let message =
        assert_recovered(&activator, &world, &certificate, "roll-back");
    assert!(message.contains("generation 1"), "{message}");
    assert_switched_target_then_base(&world);
}

#[test]
fn restart_waits_for_running_switch() {
    let world = World::build(WorldOptions {
        fail_switch: true,
        switch_delay_secs: 6,
    });
    let mut activator = Activator::start(&world, "");
    let certificate = approved(&world.statement(&policy_text(), 1));

    activate_and_kill(
        &activator,
        &certificate,
        "the target's switch-to-configuration",
        || !world.switch_log_lines().is_empty(),
    );
    activator.restart();
    let status = run_file(&activator, "switch-1.status");
    assert!(
        !status.exists(),
        "the target's switch ended before the restart"
    );
    let reply = activator.request(STATUS_REQUEST);
    assert!(
        matches!(
            reply.last(),
            Some(Event::Status {
                activating: Some(1),
                ..
            })
        ),
        "{reply:?}"
    );

    // The base's switch may start only after the target's ended: the
    // status file is written before the runner releases its lock.
    wait_for("the recovery", || {
        let lines = world.switch_log_lines();
        let target_ended = status.exists();
        assert!(
            lines.len() == 1 || target_ended,
            "the base's switch started while the target's still ran ({}): \
             {lines:?}",
            activator.log()
        );
        activator.record_kinds().len() == 2
    });
    let message = assert_recovered(&activator, &world, &certificate, "switch");
    assert!(message.contains("exited with exit status: 1"), "{message}");
    assert_switched_target_then_base(&world);
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
    assert_switched_target_then_base(&world);
    // The restarted activator has no window open for the proposal.
    let events = activator.confirm(1);
    let (outcome, _, message) = finished(&events);
    assert_eq!(outcome, Outcome::Refused, "{message}");
}

#[test]
fn failing_test_action_recovers() {
    let world = World::build(WorldOptions {
        fail_switch: true,
        switch_delay_secs: 2,
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
    let status = run_file(&activator, "switch-1.status");
    wait_for("the detached switch to finish", || status.exists());

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
    assert!(message.contains("exited with exit status: 1"), "{message}");
}

/// Returns the ids of the processes whose parent is `parent`.
fn child_pids(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc").unwrap() {
        let Ok(pid) = entry.unwrap().file_name().to_string_lossy().parse()
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the command name, which is in parentheses:
        // state, then the parent's id.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after_name.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == parent {
            children.push(pid);
        }
    }
    children
}

/// Returns whether process `pid` exists and has not exited (a zombie
/// has exited).
fn process_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
        Err(_) => false,
    }
}

/// Returns the process id that the runner wrote to the `started`
/// marker of `run`.
fn runner_pid(activator: &Activator, run: &str) -> u32 {
    let started: serde_json::Value = serde_json::from_slice(
        &fs::read(run_file(activator, &format!("{run}.started"))).unwrap(),
    )
    .unwrap();
    u32::try_from(started["pid"].as_u64().unwrap()).unwrap()
}

#[test]
fn killed_runner_lock_outlives_script() {
    let world = World::build(WorldOptions {
        switch_delay_secs: 5,
        ..WorldOptions::default()
    });
    let activator = Activator::start(&world, "");
    let certificate = approved(&world.statement(&policy_text(), 1));
    let request = Request::Activate {
        certificate: certificate.clone(),
        audit_head: None,
        commit_evidence: support::commit_evidence(&certificate),
    };

    let events = thread::scope(|scope| {
        let reply =
            scope.spawn(|| activator.request_streaming(&request, &mut |_| {}));
        wait_for("the target's switch-to-configuration", || {
            !world.switch_log_lines().is_empty()
        });
        let runner = runner_pid(&activator, "switch-1");
        let scripts = child_pids(runner);
        assert_eq!(scripts.len(), 1, "children of the runner: {scripts:?}");
        let script = scripts[0];
        let status = Command::new("kill")
            .args(["-KILL", &runner.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_for("the runner to exit", || !process_running(runner));
        // The script is not killed with its runner.
        assert!(process_running(script), "the script died with its runner");

        // The base's switch starts only after the target's script ended.
        wait_for("the base's switch-to-configuration", || {
            let lines = world.switch_log_lines();
            assert!(
                lines.len() < 2 || !process_running(script),
                "the base's switch started while the target's script {script} \
                 still ran: {lines:?}"
            );
            lines.len() == 2
        });
        reply.join().unwrap()
    });

    let (outcome, proposal, message) = finished(&events);
    assert_eq!(outcome, Outcome::RolledBack, "{message}");
    assert_eq!(proposal, Some(1));
    assert!(
        message.contains("ended without recording an exit status"),
        "{message}"
    );
    assert_switched_target_then_base(&world);
    assert!(!run_file(&activator, "switch-1.status").exists());
}

#[test]
fn pending_intent_refuses_next_certificate() {
    let world = World::build(WorldOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, script) = pausing_nix_env(dir.path(), Pause::AfterNixEnv);
    let mut activator =
        Activator::start_with_programs(&world, "", &[("nix-env", script)]);
    fs::write(&wrapper.armed, "").unwrap();
    let first = approved(&world.statement(&policy_text(), 1));
    activate_and_kill(&activator, &first, "nix-env to pause", || {
        wrapper.paused.exists()
    });
    let mut state = read_state(&activator.state_dir).unwrap();
    let intent = state.intent.as_mut().unwrap();
    intent.step = IntentStep::Switch;
    intent.switch_started = true;
    write_state(&activator.state_dir, &state).unwrap();

    // The run's lock file cannot be opened at start, so recovery cannot
    // tell how the switch ended and leaves the intent.
    let lock = run_file(&activator, "switch-1.lock");
    fs::create_dir_all(&lock).unwrap();
    activator.restart();
    assert_eq!(intent_step(&activator), Some(IntentStep::Switch));
    assert!(
        activator.log().contains("switch-1.lock failed"),
        "{}",
        activator.log()
    );
    assert!(
        activator
            .log()
            .contains("move away the directory that has the lock file's name"),
        "{}",
        activator.log()
    );
    fs::remove_dir(&lock).unwrap();

    // A certificate for the profile's new state, which recovery has not
    // restored yet, is refused while the intent is pending.
    let mut statement = world.statement(&policy_text(), 2);
    statement.base = world.target.clone();
    statement.target = world.base.clone();
    let source = statement.source.as_mut().unwrap();
    source.store_path = world.base_source.store_path.clone();
    source.nar_hash = world.base_source.nar_hash.clone();
    let second = approved(&statement);
    let (outcome, proposal, message) = finished(&activator.activate(&second));
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert_eq!(proposal, Some(2));
    assert!(
        message
            .contains("activation of proposal 1 did not finish (step switch)"),
        "{message}"
    );
    assert!(message.contains("restart the activator"), "{message}");
    assert_eq!(intent_step(&activator), Some(IntentStep::Switch));
    assert_eq!(read_state(&activator.state_dir).unwrap().last_proposal, 1);
    assert!(world.switch_log_lines().is_empty());

    // Once the lock file can be opened, a restart recovers proposal 1.
    activator.restart();
    assert_eq!(
        activator.record_kinds(),
        [
            "accepted 1".to_owned(),
            "refused Some(2)".to_owned(),
            "recovered 1 switch RolledBack".to_owned()
        ],
        "{}",
        activator.log()
    );
    assert_eq!(intent_step(&activator), None);
    assert_eq!(activator.profile_target(), world.base.as_path());
    assert!(
        activator
            .last_message()
            .contains("never started the script")
    );
    verify_history(&activator.state_dir).unwrap();
}

#[test]
fn invalid_old_status_is_set_aside() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(&world, "");
    let runs = activator.state_dir.join(SWITCH_RUNS_DIR);
    fs::create_dir_all(&runs).unwrap();
    fs::write(runs.join("switch-0.lock"), "").unwrap();
    fs::write(runs.join("switch-0.started"), "").unwrap();
    fs::write(runs.join("switch-0.status"), "").unwrap();

    let certificate = approved(&world.statement(&policy_text(), 1));
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Activated, "{message}");
    assert_eq!(
        world.switch_log_lines(),
        [format!("switch {}", world.target)]
    );
    assert_eq!(
        fs::read_to_string(runs.join("switch-0.status.invalid")).unwrap(),
        ""
    );
    assert!(!runs.join("switch-0.status").exists());
    assert!(!runs.join("switch-0.lock").exists());
    let log = activator.log();
    assert!(
        log.contains("the switch status file of an earlier run is invalid"),
        "{log}"
    );
    assert!(log.contains("switch-0.status"), "{log}");
}

#[test]
fn run_files_of_other_target_roll_back() {
    let world = World::build(WorldOptions {
        switch_delay_secs: 2,
        ..WorldOptions::default()
    });
    let mut activator = Activator::start(&world, "");
    let certificate = approved(&world.statement(&policy_text(), 1));

    activate_and_kill(
        &activator,
        &certificate,
        "the target's switch-to-configuration",
        || !world.switch_log_lines().is_empty(),
    );
    let status = run_file(&activator, "switch-1.status");
    wait_for("the detached switch to finish", || status.exists());
    // Files of another activation under the same name: status 0, but
    // for another toplevel.
    let mut recorded: serde_json::Value =
        serde_json::from_slice(&fs::read(&status).unwrap()).unwrap();
    recorded["run"]["toplevel"] = world.base.as_str().into();
    fs::write(&status, serde_json::to_vec(&recorded).unwrap()).unwrap();

    activator.restart();
    let message = assert_recovered(&activator, &world, &certificate, "switch");
    assert!(message.contains("left by another activation"), "{message}");
    assert!(message.contains("switch-1.status"), "{message}");
    assert_switched_target_then_base(&world);
}

#[test]
fn finished_test_switch_needs_running_target() {
    let world = World::build(WorldOptions {
        switch_delay_secs: 2,
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
    let status = run_file(&activator, "switch-1.status");
    wait_for("the detached switch to finish", || status.exists());

    // The running system is the test's profile, which `test` leaves at
    // the base, as a reboot after a `test` switch brings the base back.
    assert_eq!(activator.profile_target(), world.base.as_path());
    activator.restart();
    wait_for("the recovery", || activator.record_kinds().len() == 2);
    let message = assert_recovered(&activator, &world, &certificate, "switch");
    assert!(
        message.contains(&format!(
            "is {}, not the target {}",
            world.base, world.target
        )),
        "{message}"
    );
    assert!(message.contains("rebooted or switched"), "{message}");
    assert_eq!(
        world.switch_log_lines(),
        [
            format!("test {}", world.target),
            format!("test {}", world.base)
        ]
    );
}
