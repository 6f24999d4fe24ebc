//! Pre-switch commands, health checks and the confirmation window, all
//! configured in the activator's own configuration file.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;

use countersign_core::Action;
use countersign_core::protocol::{Event, Outcome, Request, Step};
use support::{
    Activator, World, WorldOptions, approved, finished, policy_text, steps,
};

/// Serves every connection on a loopback port with `status` and an empty
/// body, until the test process ends.
fn http_stub(status: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|read| read > 2) {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            );
        }
    });
    address
}

fn assert_rolled_back(
    activator: &Activator,
    world: &World,
    events: &[Event],
    expected: &str,
) {
    let (outcome, proposal, message) = finished(events);
    assert_eq!(
        outcome,
        Outcome::RolledBack,
        "{message}\n{}",
        activator.log()
    );
    assert_eq!(proposal, Some(1));
    assert!(message.contains(expected), "{message}");
    assert!(
        message.contains(&format!("rolled back to {}", world.base)),
        "{message}"
    );
    assert_eq!(steps(events).last(), Some(&Step::RollBack), "{events:?}");
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
    let state =
        countersign_activator::read_state(&activator.state_dir).unwrap();
    assert_eq!(state.intent, None);
}

#[test]
fn passing_checks_keep_target() {
    let world = World::build(WorldOptions::default());
    let healthy = http_stub("204 No Content");
    let seen = world.dir.path().join("health-env");
    let config = format!(
        "[[health.commands]]\n\
         command = [\"/bin/sh\", \"-c\", \"echo \
         $COUNTERSIGN_PROPOSAL $COUNTERSIGN_ACTION $COUNTERSIGN_TARGET \
         > {}\"]\n\
         [[health.http]]\nurl = \"http://{healthy}/ready\"\n",
        seen.display()
    );
    let activator = Activator::start(&world, &config);
    let events =
        activator.activate(&approved(&world.statement(&policy_text(), 1)));

    let (outcome, _, message) = finished(&events);
    assert_eq!(
        outcome,
        Outcome::Activated,
        "{message}\n{}",
        activator.log()
    );
    assert_eq!(
        steps(&events),
        [
            Step::Verify,
            Step::CheckSource,
            Step::Evaluate,
            Step::SetProfile,
            Step::Switch,
            Step::HealthCheck
        ]
    );
    assert_eq!(
        fs::read_to_string(&seen).unwrap(),
        format!("1 switch {}\n", world.target)
    );
    assert_eq!(activator.profile_target(), world.target.as_path());
    assert_eq!(
        activator.record_kinds(),
        ["accepted 1", "finished 1 Activated"]
    );
}

#[test]
fn failing_command_rolls_back() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(
        &world,
        "[[health.commands]]\n\
         command = [\"/bin/sh\", \"-c\", \"echo broken >&2; exit 3\"]\n\
         timeout_secs = 2\n",
    );
    let events =
        activator.activate(&approved(&world.statement(&policy_text(), 1)));
    assert_rolled_back(&activator, &world, &events, "exit status: 3");
    let (_, _, message) = finished(&events);
    assert!(message.contains("still failing after 2 s"), "{message}");
    assert!(
        support::log_lines(&events).contains(&"broken".to_owned()),
        "{events:?}"
    );
}

#[test]
fn command_passing_on_retry_keeps_target() {
    let world = World::build(WorldOptions::default());
    let attempts = world.dir.path().join("attempts");
    // Fails on the first attempt and succeeds on the second, as a
    // service that takes a moment to start would.
    let config = format!(
        "[[health.commands]]\n\
         command = [\"/bin/sh\", \"-c\", \"echo x >> {0}; \
         test $(wc -l < {0}) -ge 2\"]\ntimeout_secs = 30\n",
        attempts.display()
    );
    let activator = Activator::start(&world, &config);
    let events =
        activator.activate(&approved(&world.statement(&policy_text(), 1)));
    let (outcome, _, message) = finished(&events);
    assert_eq!(outcome, Outcome::Activated, "{message}");
    assert_eq!(fs::read_to_string(&attempts).unwrap().lines().count(), 2);
}

#[test]
fn hanging_command_times_out() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(
        &world,
        "[[health.commands]]\ncommand = [\"/bin/sleep\", \"600\"]\n\
         timeout_secs = 1\n",
    );
    let events =
        activator.activate(&approved(&world.statement(&policy_text(), 1)));
    assert_rolled_back(&activator, &world, &events, "was killed");
}

#[test]
fn unhealthy_url_rolls_back() {
    let world = World::build(WorldOptions::default());
    let unhealthy = http_stub("503 Service Unavailable");
    let activator = Activator::start(
        &world,
        &format!(
            "[[health.http]]\nurl = \"http://{unhealthy}/\"\ntimeout_secs = 2\n"
        ),
    );
    let events =
        activator.activate(&approved(&world.statement(&policy_text(), 1)));
    assert_rolled_back(&activator, &world, &events, "status 503");
}

#[test]
fn closed_port_rolls_back() {
    let world = World::build(WorldOptions::default());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let activator = Activator::start(
        &world,
        &format!(
            "[[health.http]]\nurl = \"http://{closed}/\"\ntimeout_secs = 2\n"
        ),
    );
    let events =
        activator.activate(&approved(&world.statement(&policy_text(), 1)));
    assert_rolled_back(&activator, &world, &events, "cannot connect");
}

#[test]
fn inactive_unit_rolls_back() {
    // No unit of this name exists, and these tests may run without
    // systemd as PID 1; either way `systemctl is-active` fails.
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(
        &world,
        "[[health.units]]\nunit = \"countersign-test-missing.service\"\n\
         timeout_secs = 2\n",
    );
    let events =
        activator.activate(&approved(&world.statement(&policy_text(), 1)));
    assert_rolled_back(
        &activator,
        &world,
        &events,
        "unit countersign-test-missing.service",
    );
}

#[test]
fn failing_check_of_test_action_rolls_back() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(
        &world,
        "[[health.commands]]\ncommand = [\"/bin/false\"]\ntimeout_secs = 1\n",
    );
    let mut statement = world.statement(&policy_text(), 1);
    statement.action = Action::Test;
    let events = activator.activate(&approved(&statement));
    let (outcome, _, message) = finished(&events);
    assert_eq!(outcome, Outcome::RolledBack, "{message}");
    assert_eq!(activator.profile_target(), world.base.as_path());
    assert_eq!(
        world.switch_log_lines(),
        [
            format!("test {}", world.target),
            format!("test {}", world.base)
        ]
    );
}

#[test]
fn boot_action_skips_checks() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(
        &world,
        "confirm_timeout_secs = 600\n\
         [[health.commands]]\ncommand = [\"/bin/false\"]\ntimeout_secs = 1\n",
    );
    let mut statement = world.statement(&policy_text(), 1);
    statement.action = Action::Boot;
    let events = activator.activate(&approved(&statement));
    let (outcome, _, message) = finished(&events);
    assert_eq!(outcome, Outcome::Activated, "{message}");
    assert!(message.contains("after the next reboot"), "{message}");
    assert!(!steps(&events).contains(&Step::HealthCheck), "{events:?}");
    assert_eq!(activator.profile_target(), world.target.as_path());
    assert_eq!(world.switch_log_lines(), [format!("boot {}", world.target)]);
}

#[test]
fn rollback_keeps_approved_boot_default() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start_with_running_system(
        &world,
        "[[health.commands]]\ncommand = [\"/bin/false\"]\ntimeout_secs = 1\n",
    );
    // The target is approved for the next boot; the base keeps running.
    let mut boot = world.statement(&policy_text(), 1);
    boot.action = Action::Boot;
    let (outcome, _, message) =
        finished(&activator.activate(&approved(&boot)));
    assert_eq!(outcome, Outcome::Activated, "{message}");
    assert_eq!(activator.profile_link(), "profile-2-link");

    // Switching to it now fails its health check.
    let switch = world.statement(&policy_text(), 2);
    let events = activator.activate(&approved(&switch));
    let (outcome, _, message) = finished(&events);
    assert_eq!(outcome, Outcome::RolledBack, "{message}");
    assert!(
        message.contains(&format!("rolled back to {}", world.base)),
        "{message}"
    );
    // The profile returns to the generation approved for `boot`, the
    // base runs again without becoming the boot default, and the
    // approved system installs the boot loader again.
    assert_eq!(activator.profile_link(), "profile-2-link");
    assert_eq!(activator.profile_target(), world.target.as_path());
    assert_eq!(
        world.switch_log_lines(),
        [
            format!("boot {}", world.target),
            format!("switch {}", world.target),
            format!("test {}", world.base),
            format!("boot {}", world.target),
        ]
    );
}

#[test]
fn failing_pre_switch_aborts() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(
        &world,
        "[[pre_switch]]\n\
         command = [\"/bin/sh\", \"-c\", \"echo no snapshot >&2; exit 1\"]\n",
    );
    let certificate = approved(&world.statement(&policy_text(), 1));
    let events = activator.activate(&certificate);

    let (outcome, proposal, message) = finished(&events);
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert_eq!(proposal, Some(1));
    assert!(message.contains("pre-switch command"), "{message}");
    assert!(message.contains("aborted before the profile"), "{message}");
    assert!(!steps(&events).contains(&Step::SetProfile), "{events:?}");
    assert!(
        support::log_lines(&events).contains(&"no snapshot".to_owned()),
        "{events:?}"
    );
    assert_eq!(activator.profile_target(), world.base.as_path());
    assert!(world.switch_log_lines().is_empty());
    assert_eq!(
        activator.record_kinds(),
        ["accepted 1", "finished 1 Refused"]
    );

    // The proposal number is used, as for every accepted certificate.
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Refused);
    assert!(message.contains("not above the last accepted"), "{message}");
}

#[test]
fn pre_switch_runs_before_profile_changes() {
    let world = World::build(WorldOptions::default());
    let seen = world.dir.path().join("pre-switch");
    let activator = Activator::start_with_tables(&world, |activator| {
        format!(
            "[[pre_switch]]\n\
             command = [\"/bin/sh\", \"-c\", \"readlink -f {profile} > {seen}; \
             echo $COUNTERSIGN_PROPOSAL $COUNTERSIGN_BASE >> {seen}\"]\n",
            profile = activator.profile.display(),
            seen = seen.display(),
        )
    });
    let events =
        activator.activate(&approved(&world.statement(&policy_text(), 1)));

    let (outcome, _, message) = finished(&events);
    assert_eq!(outcome, Outcome::Activated, "{message}");
    assert_eq!(steps(&events)[3], Step::PreSwitch, "{events:?}");
    assert_eq!(
        fs::read_to_string(&seen).unwrap(),
        format!("{}\n1 {}\n", world.base, world.base)
    );
    assert_eq!(activator.profile_target(), world.target.as_path());
}

#[test]
fn confirmation_keeps_activation() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(&world, "confirm_timeout_secs = 600");
    let certificate = approved(&world.statement(&policy_text(), 1));
    let request = Request::Activate {
        commit_evidence: support::commit_evidence(&certificate),
        certificate,
        audit_head: None,
    };
    let mut replies = Vec::new();
    let mut statuses = Vec::new();
    let events = activator.request_streaming(&request, &mut |event| {
        if let Event::AwaitingConfirmation { proposal, deadline } = event {
            assert_eq!(*proposal, 1);
            assert!(*deadline > support::unix_now() + 500, "{deadline}");
            statuses.push(activator.request(b"{\"request\":\"status\"}\n"));
            replies.push(activator.confirm(*proposal));
        }
    });

    let (outcome, _, message) = finished(&events);
    assert_eq!(
        outcome,
        Outcome::Activated,
        "{message}\n{}",
        activator.log()
    );
    assert_eq!(replies, [vec![Event::Confirmed { proposal: 1 }]]);
    assert!(
        matches!(
            statuses[0].last(),
            Some(Event::Status {
                awaiting_confirmation: Some(1),
                ..
            })
        ),
        "{statuses:?}"
    );
    assert_eq!(steps(&events).last(), Some(&Step::AwaitConfirmation));
    assert_eq!(activator.profile_target(), world.target.as_path());
    assert_eq!(
        world.switch_log_lines(),
        [format!("switch {}", world.target)]
    );
    assert_eq!(
        activator.record_kinds(),
        ["accepted 1", "finished 1 Activated"]
    );
    let status = activator.request(b"{\"request\":\"status\"}\n");
    assert!(
        matches!(
            status.last(),
            Some(Event::Status {
                awaiting_confirmation: None,
                ..
            })
        ),
        "{status:?}"
    );
}

#[test]
fn expired_window_rolls_back() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(&world, "confirm_timeout_secs = 2");
    let certificate = approved(&world.statement(&policy_text(), 1));
    let request = Request::Activate {
        commit_evidence: support::commit_evidence(&certificate),
        certificate,
        audit_head: None,
    };
    let mut wrong = Vec::new();
    let events = activator.request_streaming(&request, &mut |event| {
        if let Event::AwaitingConfirmation { .. } = event {
            // A confirmation of another proposal does not count.
            wrong.push(activator.confirm(2));
        }
    });
    let (outcome, _, message) = finished(&wrong[0]);
    assert_eq!(outcome, Outcome::Refused);
    assert!(message.contains("proposal 1 does"), "{message}");
    assert_rolled_back(
        &activator,
        &world,
        &events,
        "did not confirm proposal 1 within 2 s",
    );

    // After the window, a late confirmation is refused.
    let (outcome, _, _) = finished(&activator.confirm(1));
    assert_eq!(outcome, Outcome::Refused);
}
