//! Activations that switch: each test builds its own systems, because
//! their switch log is baked into them, and starts its own activator.

mod support;

use std::fs;
use std::process::Command;

use countersign_activator::{STATE_FILE, read_state, verify_history};
use countersign_core::protocol::{AuditHead, Event, Outcome, Step};
use countersign_core::{Action, Sha256Digest};
use support::{
    Activator, World, WorldOptions, approved, finished, log_lines,
    policy_text, set_profile, steps,
};

#[test]
fn two_of_two_activates_target() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(&world, "");
    let statement = world.statement(&policy_text(), 1);
    let head = AuditHead {
        seq: 7,
        hash: Sha256Digest::of(b"server audit entry 7"),
    };
    let events =
        activator.activate_with_head(&approved(&statement), Some(head));

    let (outcome, proposal, message) = finished(&events);
    assert_eq!(
        outcome,
        Outcome::Activated,
        "{message}\n{}",
        activator.log()
    );
    assert_eq!(proposal, Some(1));
    assert_eq!(
        steps(&events),
        [
            Step::Verify,
            Step::CheckSource,
            Step::Evaluate,
            Step::SetProfile,
            Step::Switch
        ]
    );
    assert_eq!(activator.profile_target(), world.target.as_path());
    assert_eq!(
        world.switch_log_lines(),
        [format!("switch {}", world.target)]
    );

    let state = read_state(&activator.state_dir).unwrap();
    assert_eq!(state.last_proposal, 1);
    assert_eq!(state.audit_head, Some(head));
    assert_eq!(
        activator.record_kinds(),
        ["accepted 1", "finished 1 Activated"]
    );
    let summary = verify_history(&activator.state_dir).unwrap();
    assert_eq!(summary.entries, 2);
    assert_eq!(summary.last_proposal, 1);

    let events = activator.request(b"{\"request\":\"status\"}\n");
    assert_eq!(
        events,
        [Event::Status {
            current_system: Some(world.target.clone()),
            last_proposal: 1,
            audit_head: Some(head),
            activating: None,
            awaiting_confirmation: None,
        }]
    );
}

#[test]
fn used_certificate_is_refused() {
    let world = World::build(WorldOptions::default());
    let mut activator = Activator::start(&world, "");
    let statement = world.statement(&policy_text(), 3);
    let certificate = approved(&statement);
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(
        outcome,
        Outcome::Activated,
        "{message}\n{}",
        activator.log()
    );
    let switched = vec![format!("switch {}", world.target)];
    assert_eq!(world.switch_log_lines(), switched);

    // The target runs now, so the base check refuses a replay first.
    let (outcome, proposal, message) =
        finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Refused);
    assert_eq!(proposal, Some(3));
    assert!(message.contains("is not the running system"), "{message}");

    // With the base running again, as after a rollback on the console,
    // only the proposal number stops the replay.
    set_profile(&activator.profile, &world.base);
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Refused);
    assert!(
        message
            .contains("proposal 3 is not above the last accepted proposal 3"),
        "{message}"
    );

    activator.restart();
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert!(message.contains("not above the last accepted"), "{message}");

    let older = approved(&world.statement(&policy_text(), 2));
    let (outcome, _, message) = finished(&activator.activate(&older));
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert!(
        message
            .contains("proposal 2 is not above the last accepted proposal 3"),
        "{message}"
    );

    assert_eq!(activator.profile_target(), world.base.as_path());
    assert_eq!(world.switch_log_lines(), switched);
    assert_eq!(read_state(&activator.state_dir).unwrap().last_proposal, 3);
    verify_history(&activator.state_dir).unwrap();
}

#[test]
fn lost_state_does_not_allow_replay() {
    let world = World::build(WorldOptions::default());
    let mut activator = Activator::start(&world, "");
    let certificate = approved(&world.statement(&policy_text(), 1));
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Activated, "{message}");
    set_profile(&activator.profile, &world.base);

    // The state file is gone, but the history still records proposal 1.
    activator.stop();
    let state_file = activator.state_dir.join(STATE_FILE);
    fs::remove_file(&state_file).unwrap();
    activator.restart_refusing_status();
    let log = activator.log();
    assert!(log.contains("is missing, but the history"), "{log}");
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert!(
        message.contains(&state_file.display().to_string()),
        "{message}"
    );
    assert!(message.contains("restore it from a backup"), "{message}");
    assert_eq!(activator.profile_target(), world.base.as_path());
    assert_eq!(
        world.switch_log_lines(),
        [format!("switch {}", world.target)]
    );
    assert!(verify_history(&activator.state_dir).is_err());
}

#[test]
fn older_state_backup_does_not_allow_replay() {
    let world = World::build(WorldOptions::default());
    let mut activator = Activator::start(&world, "");
    let events = activator.request(b"{broken\n");
    assert_eq!(finished(&events).0, Outcome::Refused);
    let state_file = activator.state_dir.join(STATE_FILE);
    let backup = fs::read(&state_file).unwrap();
    let certificate = approved(&world.statement(&policy_text(), 1));
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Activated, "{message}");
    set_profile(&activator.profile, &world.base);

    // The state is restored from a backup taken before proposal 1, and
    // the history still records proposal 1 as accepted.
    activator.stop();
    fs::write(&state_file, backup).unwrap();
    activator.restart();
    let status = activator.request(b"{\"request\":\"status\"}\n");
    assert!(
        matches!(
            status.last(),
            Some(Event::Status {
                last_proposal: 1,
                ..
            })
        ),
        "{status:?}"
    );
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert!(
        message
            .contains("proposal 1 is not above the last accepted proposal 1"),
        "{message}"
    );
    assert_eq!(activator.profile_target(), world.base.as_path());
    assert_eq!(
        world.switch_log_lines(),
        [format!("switch {}", world.target)]
    );
}

#[test]
fn failing_switch_rolls_back() {
    let world = World::build(WorldOptions {
        fail_switch: true,
        ..WorldOptions::default()
    });
    let activator = Activator::start(&world, "");
    let certificate = approved(&world.statement(&policy_text(), 1));
    let events = activator.activate(&certificate);

    let (outcome, proposal, message) = finished(&events);
    assert_eq!(
        outcome,
        Outcome::RolledBack,
        "{message}\n{}",
        activator.log()
    );
    assert_eq!(proposal, Some(1));
    assert!(message.contains("exited with exit status: 1"), "{message}");
    assert!(
        message.contains(&format!("rolled back to {}", world.base)),
        "{message}"
    );
    assert_eq!(steps(&events).last(), Some(&Step::RollBack));
    assert!(
        log_lines(&events)
            .iter()
            .any(|line| line.contains("failing as the test system requests")),
        "{events:?}"
    );
    assert_eq!(activator.profile_target(), world.base.as_path());
    assert_eq!(
        world.switch_log_lines(),
        [
            format!("switch {}", world.target),
            format!("switch {}", world.base)
        ]
    );
    assert_eq!(
        activator.record_kinds(),
        ["accepted 1", "finished 1 RolledBack"]
    );

    // The base runs again, but the certificate stays used.
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Refused);
    assert!(message.contains("not above the last accepted"), "{message}");
    assert_eq!(world.switch_log_lines().len(), 2);
    verify_history(&activator.state_dir).unwrap();
}

#[test]
fn test_action_leaves_profile() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(&world, "");
    let mut statement = world.statement(&policy_text(), 1);
    statement.action = Action::Test;
    let events = activator.activate(&approved(&statement));

    let (outcome, _, message) = finished(&events);
    assert_eq!(
        outcome,
        Outcome::Activated,
        "{message}\n{}",
        activator.log()
    );
    assert!(!steps(&events).contains(&Step::SetProfile), "{events:?}");
    assert_eq!(activator.profile_target(), world.base.as_path());
    assert_eq!(world.switch_log_lines(), [format!("test {}", world.target)]);
}

#[test]
fn invalid_config_names_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("activator.toml");
    std::fs::write(
        &config,
        "policy = \"/etc/countersign/policy.toml\"\n\
         state_dir = \"/var/lib/countersign-activator\"\n\
         socket = \"/run/countersign/activator.sock\"\n\
         verify_evalution = false\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_countersign-activator"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("verify_evalution"), "{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
}

/// The text of the progress events of `step`.
fn progress_messages(events: &[Event], step: Step) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Progress {
                step: reported,
                message,
            } if *reported == step => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn prepare_fills_caches_for_activation() {
    let world = World::build(WorldOptions::default());
    let activator =
        Activator::start_recording_nix(&world, "prepare_as_root = true");
    let source = &world.source;
    let events = activator.prepare(
        &source.store_path,
        &source.nar_hash,
        &world.attribute,
    );

    assert_eq!(
        events.last(),
        Some(&Event::Prepared {
            target: Some(world.target.clone())
        }),
        "{events:?}\n{}",
        activator.log()
    );
    assert_eq!(steps(&events), [Step::CheckSource, Step::Evaluate]);
    let calls = activator.nix_calls();
    let source_queries: Vec<&String> = calls
        .iter()
        .filter(|call| {
            call.contains("path-info")
                && call.contains(source.store_path.as_str())
        })
        .collect();
    assert_eq!(source_queries.len(), 1, "{calls:?}");
    let evaluations = calls.iter().filter(|call| call.contains(" eval "));
    assert_eq!(evaluations.count(), 1, "{calls:?}");

    // Preparing changes nothing that an activation decides on.
    assert_eq!(activator.profile_target(), world.base.as_path());
    assert_eq!(world.switch_log_lines(), Vec::<String>::new());
    assert_eq!(read_state(&activator.state_dir).unwrap().last_proposal, 0);
    assert_eq!(activator.record_kinds(), Vec::<String>::new());
    assert_eq!(
        activator
            .state_files(countersign_activator::EVALUATION_CACHE_DIR)
            .len(),
        1
    );
    assert_eq!(
        activator
            .state_files(countersign_activator::VERIFIED_SOURCES_DIR)
            .len(),
        1
    );

    activator.clear_nix_calls();
    let statement = world.statement(&policy_text(), 1);
    let events = activator.activate(&approved(&statement));
    let (outcome, _, message) = finished(&events);
    assert_eq!(
        outcome,
        Outcome::Activated,
        "{message}\n{}",
        activator.log()
    );
    let calls = activator.nix_calls();
    assert!(
        !calls
            .iter()
            .any(|call| call.contains(source.store_path.as_str())),
        "the activation queried the source again: {calls:?}"
    );
    assert!(
        !calls.iter().any(|call| call.contains(" eval ")),
        "the activation evaluated again: {calls:?}"
    );
    let checked = progress_messages(&events, Step::CheckSource);
    assert!(
        checked.iter().any(|message| message.contains("cache")),
        "{checked:?}"
    );
    let evaluated = progress_messages(&events, Step::Evaluate);
    assert!(
        evaluated
            .iter()
            .any(|message| message.contains("taken from the cache")),
        "{evaluated:?}"
    );
    assert_eq!(activator.profile_target(), world.target.as_path());
    assert_eq!(
        world.switch_log_lines(),
        [format!("switch {}", world.target)]
    );
}

#[test]
fn audit_head_going_back_is_refused() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(&world, "");
    let head = AuditHead {
        seq: 7,
        hash: Sha256Digest::of(b"server audit entry 7"),
    };
    let first = approved(&world.statement(&policy_text(), 1));
    let (outcome, _, message) =
        finished(&activator.activate_with_head(&first, Some(head)));
    assert_eq!(outcome, Outcome::Activated, "{message}");

    // The base runs again, as after a rollback on the console, so only
    // the audit head decides.
    set_profile(&activator.profile, &world.base);
    let second = approved(&world.statement(&policy_text(), 2));
    let rewritten = AuditHead {
        seq: 7,
        hash: Sha256Digest::of(b"another entry 7"),
    };
    let older = AuditHead {
        seq: 3,
        hash: Sha256Digest::of(b"server audit entry 3"),
    };
    for sent in [None, Some(older), Some(rewritten)] {
        let (outcome, _, message) =
            finished(&activator.activate_with_head(&second, sent));
        assert_eq!(outcome, Outcome::Refused, "{sent:?}: {message}");
        assert!(message.contains("audit log"), "{message}");
        assert_eq!(activator.profile_target(), world.base.as_path());
    }
    let state = read_state(&activator.state_dir).unwrap();
    assert_eq!(state.audit_head, Some(head));
    assert_eq!(state.last_proposal, 1);

    let newer = AuditHead {
        seq: 9,
        hash: Sha256Digest::of(b"server audit entry 9"),
    };
    let (outcome, _, message) =
        finished(&activator.activate_with_head(&second, Some(newer)));
    assert_eq!(outcome, Outcome::Activated, "{message}");
}

#[test]
fn prepare_defers_evaluation_without_evaluator() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start_recording_nix(&world, "");
    let source = &world.source;
    let events = activator.prepare(
        &source.store_path,
        &source.nar_hash,
        &world.attribute,
    );

    assert_eq!(
        events.last(),
        Some(&Event::Prepared { target: None }),
        "{events:?}\n{}",
        activator.log()
    );
    let calls = activator.nix_calls();
    let evaluations = calls.iter().filter(|call| call.contains(" eval "));
    assert_eq!(evaluations.count(), 0, "{calls:?}");

    // The approved certificate is still evaluated before the switch.
    let statement = world.statement(&policy_text(), 1);
    let (outcome, _, message) =
        finished(&activator.activate(&approved(&statement)));
    assert_eq!(outcome, Outcome::Activated, "{message}");
    let calls = activator.nix_calls();
    let evaluations = calls.iter().filter(|call| call.contains(" eval "));
    assert_eq!(evaluations.count(), 1, "{calls:?}");
}
