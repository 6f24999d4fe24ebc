//! Rollback statements: no source, a generation of the activator's own
//! profile as the target.

mod support;

use std::fs;

use countersign_core::Statement;
use countersign_core::protocol::{Outcome, Step};
use support::{
    Activator, World, WorldOptions, approved, finished, policy_text, steps,
};

/// Activates the world's target as proposal 1, which makes it
/// generation 2 of the profile, after the base's generation 1.
fn deployed(world: &World) -> Activator {
    let activator =
        Activator::start_recording_nix(world, "prepare_as_root = true");
    let certificate = approved(&world.statement(&policy_text(), 1));
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Activated, "{message}");
    assert_eq!(activator.profile_link(), "profile-2-link");
    activator.clear_nix_calls();
    activator
}

/// Returns a rollback statement from the world's target back to its
/// base.
fn rollback(world: &World, proposal: u64, generation: u64) -> Statement {
    let mut statement = world.statement(&policy_text(), proposal);
    statement.source = None;
    statement.rollback_generation = Some(generation);
    statement.base = world.target.clone();
    statement.target = world.base.clone();
    statement
}

#[test]
fn rollback_switches_to_generation() {
    let world = World::build(WorldOptions::default());
    let activator = deployed(&world);

    let events = activator.activate(&approved(&rollback(&world, 2, 1)));
    let (outcome, proposal, message) = finished(&events);
    assert_eq!(
        outcome,
        Outcome::Activated,
        "{message}\n{}",
        activator.log()
    );
    assert_eq!(proposal, Some(2));
    assert_eq!(
        steps(&events),
        [
            Step::Verify,
            Step::CheckGeneration,
            Step::SetProfile,
            Step::Switch
        ]
    );
    // The profile returns to its generation 1 instead of gaining a third.
    assert_eq!(activator.profile_link(), "profile-1-link");
    assert_eq!(activator.profile_target(), world.base.as_path());
    assert_eq!(
        world.switch_log_lines(),
        [
            format!("switch {}", world.target),
            format!("switch {}", world.base)
        ]
    );
    let calls = activator.nix_calls();
    assert!(
        !calls.iter().any(|call| call.contains(" eval ")),
        "a rollback is not evaluated: {calls:?}"
    );
    assert_eq!(
        activator.record_kinds(),
        [
            "accepted 1",
            "finished 1 Activated",
            "accepted 2",
            "finished 2 Activated"
        ]
    );
}

#[test]
fn rollback_to_other_generation_is_refused() {
    let world = World::build(WorldOptions::default());
    let activator = deployed(&world);

    // Generation 2 is the target that runs now, not the base.
    let events = activator.activate(&approved(&rollback(&world, 2, 2)));
    let (outcome, _, message) = finished(&events);
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert!(
        message.contains(&format!(
            "generation 2 of the profile {} is {}, not the rollback target {}",
            activator.profile.display(),
            world.target,
            world.base
        )),
        "{message}"
    );

    let events = activator.activate(&approved(&rollback(&world, 3, 9)));
    let (outcome, _, message) = finished(&events);
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert!(message.contains("has no generation 9"), "{message}");

    assert_eq!(activator.profile_link(), "profile-2-link");
    assert_eq!(world.switch_log_lines().len(), 1);
    assert_eq!(
        activator.record_kinds(),
        [
            "accepted 1",
            "finished 1 Activated",
            "refused Some(2)",
            "refused Some(3)"
        ]
    );
}

#[test]
fn failed_rollback_restores_base_generation() {
    let world = World::build(WorldOptions::default());
    // The check fails for the rollback only, because it looks for a file
    // that the test removes after the first activation.
    let marker = world.dir.path().join("healthy");
    fs::write(&marker, "").unwrap();
    let activator = Activator::start_with_tables(&world, |_| {
        format!(
            "[[health.commands]]\ncommand = [\"/bin/test\", \"-e\", \"{}\"]\n\
             timeout_secs = 1\n",
            marker.display()
        )
    });
    let certificate = approved(&world.statement(&policy_text(), 1));
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Activated, "{message}");
    fs::remove_file(&marker).unwrap();

    let events = activator.activate(&approved(&rollback(&world, 2, 1)));
    let (outcome, _, message) = finished(&events);
    assert_eq!(outcome, Outcome::RolledBack, "{message}");
    // The rollback's base is the target at generation 2, and the failed
    // rollback returns there.
    assert_eq!(activator.profile_link(), "profile-2-link");
    assert_eq!(activator.profile_target(), world.target.as_path());
    assert_eq!(
        world.switch_log_lines(),
        [
            format!("switch {}", world.target),
            format!("switch {}", world.base),
            format!("switch {}", world.target)
        ]
    );
}
