//! WebAuthn approvals through the activator: made by the software
//! authenticator of `countersign-core`, verified by the activator, and
//! their signature counters stored only when a certificate is accepted.

mod support;

use std::fs;

use countersign_activator::{read_state, verify_history};
use countersign_core::protocol::Outcome;
use countersign_core::webauthn::testing::TestAuthenticator;
use countersign_core::webauthn::{Algorithm, encode_base64url};
use countersign_core::{Certificate, Statement, Verdict};
use support::{Activator, World, WorldOptions, finished, keys, set_profile};

const RP_ID: &str = "countersign.example.org";
const ORIGIN: &str = "https://countersign.example.org";

/// Creates a security key that counts its signatures (ES256).
fn security_key() -> TestAuthenticator {
    TestAuthenticator::new(Algorithm::Es256, b"security key", RP_ID, ORIGIN)
}

/// Creates a synced passkey whose counter stays zero (EdDSA).
fn passkey() -> TestAuthenticator {
    let mut passkey =
        TestAuthenticator::new(Algorithm::EdDsa, b"passkey", RP_ID, ORIGIN);
    passkey.counting = false;
    passkey
}

/// Writes a policy of two WebAuthn approvers and the SSH laptop, two of
/// which must approve.
fn policy_text(
    key: &TestAuthenticator,
    passkey: &TestAuthenticator,
) -> String {
    format!(
        "host = \"{}\"\nthreshold = 2\nproposal_lifetime_secs = 86400\n\n\
         [webauthn]\nrp_id = \"{RP_ID}\"\norigins = [\"{ORIGIN}\"]\n\n\
         [approvers.laptop]\nssh = \"{}\"\n\n\
         [approvers.key]\nwebauthn = {}\nuser_verification = true\n\n\
         [approvers.passkey]\nwebauthn = {}\n",
        support::HOST,
        keys().laptop.public,
        key.policy_entry(),
        passkey.policy_entry(),
    )
}

/// Makes a certificate approved by both WebAuthn approvers.
fn approved(
    statement: &Statement,
    key: &mut TestAuthenticator,
    passkey: &mut TestAuthenticator,
) -> Certificate {
    let bytes = statement.to_bytes();
    Certificate::new(
        &bytes,
        vec![
            key.vote("key", &bytes, Verdict::Approve),
            passkey.vote("passkey", &bytes, Verdict::Approve),
        ],
    )
}

#[test]
fn webauthn_counters_are_checked_and_stored() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(&world, "");
    let mut key = security_key();
    let mut passkey = passkey();
    let policy = policy_text(&key, &passkey);
    fs::write(&activator.policy_path, &policy).unwrap();
    let key_id = encode_base64url(&key.credential_id);
    let passkey_id = encode_base64url(&passkey.credential_id);
    let counters =
        || read_state(&activator.state_dir).unwrap().webauthn_counters;

    // First approval: the key reports 5, the passkey 0.
    key.sign_count = 4;
    let first = approved(&world.statement(&policy, 1), &mut key, &mut passkey);
    let (outcome, _, message) = finished(&activator.activate(&first));
    assert_eq!(
        outcome,
        Outcome::Activated,
        "{message}\n{}",
        activator.log()
    );
    assert_eq!(counters().get(&key_id), Some(&5));
    assert_eq!(counters().get(&passkey_id), Some(&0));

    // The base runs again, as after a rollback on the console, so only
    // the counters decide the next certificates.
    set_profile(&activator.profile, &world.base);

    // The same counter again: a clone, or the same approval replayed.
    key.sign_count = 4;
    let repeated =
        approved(&world.statement(&policy, 2), &mut key, &mut passkey);
    let (outcome, _, message) = finished(&activator.activate(&repeated));
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert!(message.contains("approver key"), "{message}");
    assert!(message.contains("from 5 to 5"), "{message}");

    // A lower counter.
    key.sign_count = 2;
    let lower = approved(&world.statement(&policy, 3), &mut key, &mut passkey);
    let (outcome, _, message) = finished(&activator.activate(&lower));
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert!(message.contains("from 5 to 3"), "{message}");

    // A growing counter on a certificate that a later check refuses does
    // not move the stored counter.
    key.sign_count = 10;
    let mut wrong_source = world.statement(&policy, 4);
    wrong_source.source.as_mut().unwrap().nar_hash =
        "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
    let refused = approved(&wrong_source, &mut key, &mut passkey);
    let (outcome, _, message) = finished(&activator.activate(&refused));
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert!(message.contains("has NAR hash"), "{message}");
    assert_eq!(counters().get(&key_id), Some(&5));

    // Every refusal left the state as the first activation wrote it.
    let state = read_state(&activator.state_dir).unwrap();
    assert_eq!(state.last_proposal, 1);
    assert_eq!(world.switch_log_lines().len(), 1);

    // A greater counter is accepted and stored; the passkey's zero
    // counter passes again.
    key.sign_count = 6;
    let next = approved(&world.statement(&policy, 5), &mut key, &mut passkey);
    let (outcome, _, message) = finished(&activator.activate(&next));
    assert_eq!(
        outcome,
        Outcome::Activated,
        "{message}\n{}",
        activator.log()
    );
    assert_eq!(counters().get(&key_id), Some(&7));
    assert_eq!(counters().get(&passkey_id), Some(&0));
    assert_eq!(world.switch_log_lines().len(), 2);
    verify_history(&activator.state_dir).unwrap();
}

#[test]
fn webauthn_rejection_is_not_approval() {
    let world = World::build(WorldOptions::default());
    let activator = Activator::start(&world, "");
    let mut key = security_key();
    let mut passkey = passkey();
    let policy = policy_text(&key, &passkey);
    fs::write(&activator.policy_path, &policy).unwrap();
    let statement = world.statement(&policy, 1);
    let bytes = statement.to_bytes();

    // A rejection signed by the key does not count as its approval.
    let certificate = Certificate::new(
        &bytes,
        vec![
            key.vote("key", &bytes, Verdict::Reject),
            passkey.vote("passkey", &bytes, Verdict::Approve),
        ],
    );
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert!(message.contains("approver key is invalid"), "{message}");
    assert!(message.contains("challenge"), "{message}");

    // The key without user verification, which the policy requires.
    key.flags = countersign_core::webauthn::AuthenticatorFlags::USER_PRESENT;
    let certificate = approved(&statement, &mut key, &mut passkey);
    let (outcome, _, message) = finished(&activator.activate(&certificate));
    assert_eq!(outcome, Outcome::Refused, "{message}");
    assert!(message.contains("user verification"), "{message}");

    let state = read_state(&activator.state_dir).unwrap();
    assert_eq!(state.last_proposal, 0);
    assert!(state.webauthn_counters.is_empty());
    assert!(world.switch_log_lines().is_empty());
}
