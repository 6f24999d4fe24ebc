//! Requests the activator must refuse without changing anything.
//!
//! Every test here starts its own activator on the systems of one shared
//! world, whose switch log must stay empty: a refused request never sets
//! the profile or runs a switch script.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use countersign_activator::{
    EVALUATION_CACHE_DIR, HISTORY_FILE, HistoryError, HistoryRecord,
    VERIFIED_SOURCES_DIR, read_history, read_state, verify_history,
};
use countersign_core::audit::AuditError;
use countersign_core::protocol::{Event, MAX_REQUEST_BYTES, Outcome, Step};
use countersign_core::{Certificate, StorePath, VoteSignature};
use countersign_nix::fixture::{self, Package, SystemSpec};
use support::{
    Activator, ESCAPE_ATTRIBUTE, HOST, OUTSIDE_STORE, approved, certificate,
    finished, keys, policy_text, shared_world, steps,
};

/// Checks that `events` end in a refusal naming `expected`, and that the
/// profile, the switch log, the state and the history show no change
/// besides the recorded refusal.
fn assert_refused(activator: &Activator, events: &[Event], expected: &str) {
    let (outcome, _, message) = finished(events);
    assert_eq!(outcome, Outcome::Refused, "{message}\n{}", activator.log());
    assert!(
        message.contains(expected),
        "the refusal {message:?} does not contain {expected:?}"
    );
    let changing = [Step::SetProfile, Step::Switch, Step::RollBack];
    for step in steps(events) {
        assert!(!changing.contains(&step), "a refusal reached {step:?}");
    }
    let shared = shared_world();
    assert_eq!(
        activator.profile_target(),
        shared.world.base.as_path(),
        "the profile moved"
    );
    assert_eq!(
        shared.world.switch_log_lines(),
        Vec::<String>::new(),
        "a switch script ran"
    );
    let state = read_state(&activator.state_dir).unwrap();
    assert_eq!(state.last_proposal, 0, "a refused proposal was used");
    let history = read_history(&activator.state_dir).unwrap();
    match history.last().map(|entry| &entry.record) {
        Some(HistoryRecord::Refused { reason, .. }) => {
            assert_eq!(reason, &message);
        }
        other => panic!("the last history entry is not a refusal: {other:?}"),
    }
    verify_history(&activator.state_dir).unwrap();
}

fn start() -> Activator {
    Activator::start(&shared_world().world, "")
}

#[test]
fn signature_by_unknown_key_is_refused() {
    let activator = start();
    let keys = keys();
    let statement = shared_world().world.statement(&policy_text(), 1);
    let forged = certificate(
        &statement,
        &[(&keys.phone, "phone"), (&keys.stranger, "laptop")],
    );
    let events = activator.activate(&forged);
    assert_refused(&activator, &events, "approver laptop is invalid");

    let stranger = certificate(
        &statement,
        &[(&keys.phone, "phone"), (&keys.stranger, "stranger")],
    );
    let events = activator.activate(&stranger);
    assert_refused(&activator, &events, "\"stranger\" is not in the policy");
}

#[test]
fn changed_statement_bytes_are_refused() {
    let activator = start();
    let world = &shared_world().world;
    let statement = world.statement(&policy_text(), 1);
    let signed = approved(&statement);
    let text = String::from_utf8(statement.to_bytes()).unwrap();
    let changed = text.replacen("\"proposal\":1,", "\"proposal\":2,", 1);
    assert_ne!(changed, text);
    let forged = Certificate::new(changed.as_bytes(), signed.approvals);
    let events = activator.activate(&forged);
    assert_refused(&activator, &events, "the certificate is invalid");
    assert_refused(&activator, &events, "does not verify");
}

#[test]
fn flipped_signature_byte_is_refused() {
    let activator = start();
    let world = &shared_world().world;
    let statement = world.statement(&policy_text(), 1);
    let mut forged = approved(&statement);
    let VoteSignature::Ssh { signature } = &mut forged.approvals[0].signature
    else {
        panic!("the phone's approval is an SSH signature");
    };
    let mut lines: Vec<String> =
        signature.lines().map(str::to_owned).collect();
    // The last line of the armored body ends with the signature bytes.
    let last_body = lines.len() - 2;
    let mut bytes = lines[last_body].clone().into_bytes();
    let index = bytes.len() - 8;
    bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
    lines[last_body] = String::from_utf8(bytes).unwrap();
    *signature = lines.join("\n") + "\n";
    let events = activator.activate(&forged);
    assert_refused(&activator, &events, "approver phone is invalid");
}

#[test]
fn one_of_two_approvals_is_refused() {
    let activator = start();
    let keys = keys();
    let statement = shared_world().world.statement(&policy_text(), 1);
    let short = certificate(&statement, &[(&keys.phone, "phone")]);
    let events = activator.activate(&short);
    assert_refused(&activator, &events, "the quorum is not met: 1 of 2");
}

#[test]
fn same_approver_twice_is_refused() {
    let activator = start();
    let keys = keys();
    let statement = shared_world().world.statement(&policy_text(), 1);
    let doubled = certificate(
        &statement,
        &[(&keys.phone, "phone"), (&keys.phone, "phone")],
    );
    let events = activator.activate(&doubled);
    assert_refused(&activator, &events, "appears more than once");
}

#[test]
fn wrong_base_is_refused() {
    let activator = start();
    let shared = shared_world();
    let mut statement = shared.world.statement(&policy_text(), 1);
    statement.base = shared.other.clone();
    let events = activator.activate(&approved(&statement));
    assert_refused(&activator, &events, "is not the running system");
}

#[test]
fn unevaluated_target_is_refused() {
    let activator = start();
    let shared = shared_world();
    let mut statement = shared.world.statement(&policy_text(), 1);
    statement.target = shared.other.clone();
    let events = activator.activate(&approved(&statement));
    assert_refused(
        &activator,
        &events,
        &format!(
            "yields {}, not the target {}",
            shared.world.target, shared.other
        ),
    );
}

#[test]
fn wrong_nar_hash_is_refused() {
    let activator = start();
    let world = &shared_world().world;
    let mut statement = world.statement(&policy_text(), 1);
    statement.source.as_mut().unwrap().nar_hash =
        world.base_source.nar_hash.clone();
    let events = activator.activate(&approved(&statement));
    assert_refused(
        &activator,
        &events,
        &format!("but the statement names {}", world.base_source.nar_hash),
    );
}

#[test]
fn missing_source_is_refused() {
    let activator = start();
    let world = &shared_world().world;
    let mut statement = world.statement(&policy_text(), 1);
    statement.source.as_mut().unwrap().store_path =
        StorePath::parse("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-source")
            .unwrap();
    let events = activator.activate(&approved(&statement));
    assert_refused(
        &activator,
        &events,
        "is not a valid path in the Nix store",
    );
}

#[test]
fn edited_policy_invalidates_certificate() {
    let activator = start();
    let world = &shared_world().world;
    let statement = world.statement(&policy_text(), 1);
    let certificate = approved(&statement);
    fs::write(&activator.policy_path, policy_text() + "# edited\n").unwrap();
    let events = activator.activate(&certificate);
    assert_refused(&activator, &events, "was made under policy");
}

#[test]
fn unreadable_policy_is_refused() {
    let activator = start();
    let world = &shared_world().world;
    let statement = world.statement(&policy_text(), 1);
    fs::write(&activator.policy_path, "threshold = \"two\"\n").unwrap();
    let events = activator.activate(&approved(&statement));
    assert_refused(&activator, &events, "cannot load the policy");
}

#[test]
fn switch_script_outside_store_is_refused() {
    let activator = start();
    let shared = shared_world();
    let mut statement = shared.world.statement(&policy_text(), 1);
    statement.source.as_mut().unwrap().commit = shared.escape_commit.clone();
    statement.source.as_mut().unwrap().store_path =
        shared.escape_source.store_path.clone();
    statement.source.as_mut().unwrap().nar_hash =
        shared.escape_source.nar_hash.clone();
    statement.attribute = ESCAPE_ATTRIBUTE.to_owned();
    statement.target = shared.escape.clone();
    let events = activator.activate(&approved(&statement));
    assert_refused(
        &activator,
        &events,
        &format!("points to {OUTSIDE_STORE}, outside /nix/store"),
    );
    let from_cache = |events: &[Event]| {
        events.iter().any(|event| {
            matches!(event, Event::Progress { message, .. }
                if message.contains("taken from the cache"))
        })
    };
    assert!(!from_cache(&events), "the first evaluation was cached");

    // A refusal does not use the number, and the second check of the
    // same source and attribute reads the cached evaluation.
    let events = activator.activate(&approved(&statement));
    assert_refused(&activator, &events, "outside /nix/store");
    assert!(from_cache(&events), "the evaluation was not cached");
}

/// A compromised server names a commit that approvers reviewed (the
/// base system's) beside the source of another one. The NAR hash and
/// the evaluation both match, so only the commit check can tell: the
/// files are not that commit's tree.
#[test]
fn source_of_another_commit_is_refused() {
    let world = &shared_world().world;
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(&world.repo)
        .args(["rev-list", "--max-parents=0", "HEAD"])
        .output()
        .unwrap();
    let first_commit = String::from_utf8(output.stdout).unwrap();
    let first_commit = first_commit.trim();
    assert_ne!(first_commit, world.commit);

    let activator = Activator::start(world, "");
    let mut statement = world.statement(&policy_text(), 1);
    statement.source.as_mut().unwrap().commit = first_commit.to_owned();
    let events = activator.activate(&approved(&statement));
    assert_refused(
        &activator,
        &events,
        &format!(
            "are not the tree {} of commit {first_commit}",
            tree_of(&world.repo, first_commit)
        ),
    );
    assert!(
        !steps(&events).contains(&Step::Evaluate),
        "the source was evaluated"
    );
}

/// A request without the commit object is refused when the statement
/// deploys a source.
#[test]
fn missing_commit_object_is_refused() {
    let world = &shared_world().world;
    let activator = Activator::start(world, "");
    let certificate = approved(&world.statement(&policy_text(), 1));
    let request = countersign_core::protocol::Request::Activate {
        certificate,
        audit_head: None,
        commit_evidence: None,
    };
    let mut line = serde_json::to_vec(&request).unwrap();
    line.push(b'\n');
    let events = activator.request(&line);
    assert_refused(&activator, &events, "carries no commit object");
}

fn tree_of(repo: &std::path::Path, commit: &str) -> String {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", &format!("{commit}^{{tree}}")])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Without the check, a compromised server could name another
/// configuration of an approved commit's flake, such as a test machine.
/// The evaluation check passes, because the source does evaluate to that
/// target under that attribute.
#[test]
fn other_attribute_is_refused() {
    let world = &shared_world().world;
    let own = SystemSpec::demo(HOST, &world.switch_log);
    let mut installer = SystemSpec::demo(HOST, &world.switch_log);
    installer.set_package(Package::with_binary("installer", "1.0"));
    let flake_dir = tempfile::tempdir().unwrap();
    let flake = fixture::write_flake_set(
        flake_dir.path(),
        &[(HOST, &own), ("installer", &installer)],
    )
    .unwrap();

    let other_attribute =
        "nixosConfigurations.installer.config.system.build.toplevel";
    let (commit, source, other) = world.commit_raw_flake(
        &fs::read_to_string(flake).unwrap(),
        other_attribute,
        "Two configurations",
    );

    let activator = Activator::start(
        world,
        &format!("attribute = \"{}\"", world.attribute),
    );
    let mut statement = world.statement(&policy_text(), 1);
    let statement_source = statement.source.as_mut().unwrap();
    statement_source.commit = commit;
    statement_source.store_path = source.store_path.clone();
    statement_source.nar_hash = source.nar_hash.clone();
    statement.attribute = other_attribute.to_owned();
    statement.target = other;

    let events = activator.activate(&approved(&statement));
    assert_refused(
        &activator,
        &events,
        &format!(
            "names the attribute {other_attribute:?}, but this host's is {:?}",
            world.attribute
        ),
    );
    assert!(
        !steps(&events).contains(&Step::Evaluate),
        "the other attribute was evaluated"
    );
}

#[test]
fn malformed_requests_are_refused() {
    let activator = start();
    let cases: [(&[u8], &str); 6] = [
        (b"{not json\n", "not a valid JSON request line"),
        (b"[1, 2]\n", "not a valid JSON request line"),
        (b"{\"request\":\"status\",\"extra\":1}\n", "unknown field"),
        (
            b"{\"request\":\"prepare\",\"source\":\"/etc\",\
              \"nar_hash\":\"sha256-x\",\"attribute\":\"a\"}\n",
            "not a valid JSON request line",
        ),
        (
            b"{\"request\":\"prepare\",\"source\":\"/nix/store/\
              0123456789abcdfghijklmnpqrsvwxyz-source\",\"nar_hash\":\
              \"sha256-x\",\"attribute\":\"a\",\"proposal\":7}\n",
            "unknown field",
        ),
        (
            b"{\"request\":\"activate\",\"certificate\":{\"statement\":1}}\n",
            "not a valid JSON request line",
        ),
    ];
    for (line, expected) in cases {
        let events = activator.request(line);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_refused(&activator, &events, expected);
    }
    let entries = read_history(&activator.state_dir).unwrap();
    assert_eq!(entries.len(), 6);
}

#[test]
fn oversized_request_is_refused() {
    let activator = start();
    let mut line = b"{\"request\":\"status\",\"pad\":\"".to_vec();
    line.resize(MAX_REQUEST_BYTES + 100, b'x');
    line.extend_from_slice(b"\"}\n");
    let events = activator.request(&line);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_refused(
        &activator,
        &events,
        &format!("longer than {MAX_REQUEST_BYTES} bytes"),
    );
}

#[test]
fn request_text_is_not_copied_into_history() {
    // Parse errors quote the offending value, so a request just under
    // the size limit would put almost a mebibyte into every refusal.
    let activator = start();
    let history = activator.state_dir.join(HISTORY_FILE);
    let long = "v".repeat(MAX_REQUEST_BYTES - 100);
    for request in [
        format!("{{\"request\":\"{long}\"}}\n"),
        format!("{{\"request\":\"activate\",\"certificate\":\"{long}\"}}\n"),
    ] {
        let events = activator.request(request.as_bytes());
        assert_refused(&activator, &events, "not a valid JSON request line");
        let (_, _, message) = finished(&events);
        assert!(message.len() < 4096, "refusal of {} bytes", message.len());
    }
    // An approver's name is quoted before any signature is checked.
    let statement = shared_world().world.statement(&policy_text(), 1);
    let mut forged = approved(&statement);
    forged.approvals[1].approver = "n".repeat(MAX_REQUEST_BYTES / 2);
    let events = activator.activate(&forged);
    assert_refused(&activator, &events, "is not in the policy");
    let (_, _, message) = finished(&events);
    assert!(message.len() < 4096, "refusal of {} bytes", message.len());
    let size = fs::metadata(&history).unwrap().len();
    assert!(size < 16 * 1024, "the history grew to {size} bytes");
}

#[test]
fn refusal_flood_is_not_all_recorded() {
    // Every refusal gets a reply, but the history, synced to disk for
    // each entry, takes only the first 20 of a minute.
    let activator = start();
    for _ in 0..50 {
        let events = activator.request(b"{not json\n");
        assert_refused(&activator, &events, "not a valid JSON request line");
    }
    let entries = read_history(&activator.state_dir).unwrap();
    assert_eq!(entries.len(), 20);
    verify_history(&activator.state_dir).unwrap();
}

#[test]
fn tampered_history_fails_verification() {
    let activator = start();
    for _ in 0..3 {
        let events = activator.request(b"{broken\n");
        assert_refused(&activator, &events, "not a valid JSON request line");
    }
    let summary = verify_history(&activator.state_dir).unwrap();
    assert_eq!(summary.entries, 3);
    assert_eq!(summary.head.unwrap().seq, 3);

    let path = activator.state_dir.join(HISTORY_FILE);
    let original = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let altered = lines[1].replacen("key must be", "key may be", 1);
    assert_ne!(altered, lines[1]);
    fs::write(&path, format!("{}\n{altered}\n{}\n", lines[0], lines[2]))
        .unwrap();
    let error = verify_history(&activator.state_dir).unwrap_err();
    assert!(
        matches!(
            error,
            HistoryError::Chain {
                source: AuditError::Altered(2),
                ..
            }
        ),
        "{error}"
    );

    fs::write(&path, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
    let error = verify_history(&activator.state_dir).unwrap_err();
    assert!(
        matches!(
            error,
            HistoryError::Chain {
                source: AuditError::Truncated { last: 2, anchor: 3 },
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn socket_has_configured_mode_and_group() {
    let activator = Activator::start(
        &shared_world().world,
        "socket_mode = \"0640\"\nsocket_group = \"daemon\"\n",
    );
    let metadata = fs::metadata(&activator.socket).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o640);
    let daemon_gid = fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields[0] == "daemon").then(|| fields[2].parse::<u32>().unwrap())
        })
        .expect("group daemon exists");
    assert_eq!(metadata.gid(), daemon_gid);
}

#[test]
fn default_socket_mode_and_status() {
    let activator = start();
    let metadata = fs::metadata(&activator.socket).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o660);
    let events = activator.request(b"{\"request\":\"status\"}\n");
    let base = shared_world().world.base.clone();
    assert_eq!(
        events,
        [Event::Status {
            current_system: Some(base),
            last_proposal: 0,
            audit_head: None,
            activating: None,
            awaiting_confirmation: None,
        }]
    );
}

/// Checks that a prepare request was refused with a message containing
/// `expected`, and that it changed nothing: no profile change, no switch,
/// no used number, no history entry and no cached result.
fn assert_prepare_refused(
    activator: &Activator,
    events: &[Event],
    expected: &str,
) {
    let (outcome, proposal, message) = finished(events);
    assert_eq!(outcome, Outcome::Refused, "{message}\n{}", activator.log());
    assert_eq!(proposal, None);
    assert!(
        message.contains(expected),
        "the refusal {message:?} does not contain {expected:?}"
    );
    let shared = shared_world();
    assert_eq!(activator.profile_target(), shared.world.base.as_path());
    assert_eq!(shared.world.switch_log_lines(), Vec::<String>::new());
    let state = read_state(&activator.state_dir).unwrap();
    assert_eq!(state.last_proposal, 0, "a prepare request used a number");
    assert_eq!(read_history(&activator.state_dir).unwrap(), []);
    assert_eq!(
        activator.state_files(VERIFIED_SOURCES_DIR),
        Vec::<String>::new(),
        "a refused source was recorded as verified"
    );
    assert_eq!(
        activator.state_files(EVALUATION_CACHE_DIR),
        Vec::<String>::new(),
        "a refused prepare request cached an evaluation"
    );
}

#[test]
fn prepare_with_wrong_nar_hash_is_refused() {
    let activator = Activator::start_recording_nix(
        &shared_world().world,
        "prepare_as_root = true",
    );
    let world = &shared_world().world;
    let events = activator.prepare(
        &world.source.store_path,
        &world.base_source.nar_hash,
        &world.attribute,
    );
    assert_prepare_refused(
        &activator,
        &events,
        &format!("but the request names {}", world.base_source.nar_hash),
    );
    let calls = activator.nix_calls();
    assert!(
        !calls.iter().any(|call| call.contains(" eval ")),
        "a source with the wrong NAR hash was evaluated: {calls:?}"
    );
}

#[test]
fn prepare_of_missing_source_is_refused() {
    let activator = start();
    let world = &shared_world().world;
    let missing =
        StorePath::parse("/nix/store/0000000000000000000000000000000a-source")
            .unwrap();
    let events =
        activator.prepare(&missing, &world.source.nar_hash, &world.attribute);
    assert_prepare_refused(
        &activator,
        &events,
        "is not a valid path in the Nix store",
    );
}

#[test]
fn prepare_checks_values_before_nix() {
    let activator = Activator::start_recording_nix(
        &shared_world().world,
        "prepare_as_root = true",
    );
    let world = &shared_world().world;
    let source = &world.source;
    let cases = [
        (source.nar_hash.as_str(), "x#y", "flake attribute"),
        ("sha256-short", world.attribute.as_str(), "NAR hash"),
        ("md5-AAAA", world.attribute.as_str(), "NAR hash"),
    ];
    for (nar_hash, attribute, expected) in cases {
        let events =
            activator.prepare(&source.store_path, nar_hash, attribute);
        assert_prepare_refused(&activator, &events, expected);
    }
    assert_eq!(activator.nix_calls(), Vec::<String>::new());
}

#[test]
fn input_addressed_source_is_not_recorded() {
    let activator =
        Activator::start(&shared_world().world, "prepare_as_root = true");
    let world = &shared_world().world;
    // A built system is input-addressed: the store path is valid and has
    // this NAR hash, but its name does not bind its content.
    let nar_hash =
        countersign_nix::nar_hash(&support::nix(), &world.target).unwrap();
    let events = activator.prepare(&world.target, &nar_hash, &world.attribute);
    let checked = events.iter().any(|event| {
        matches!(event, Event::Progress { step: Step::CheckSource, message }
            if message.contains("not content-addressed"))
    });
    assert!(checked, "{events:?}\n{}", activator.log());
    // The system contains no flake, so its evaluation fails.
    assert_prepare_refused(&activator, &events, "cannot evaluate");
}
