//! The whole flow across separate processes: the `countersign` server and
//! activator binaries, real git, real Nix builds of NixOS-shaped systems,
//! real ssh-keygen keys, and `countersign approve` and `reject` run as
//! commands, as an approver would run them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use countersign::client::Client;
use countersign::commands::demo::Environment;
use countersign::sign;
use countersign_core::sshsig::Namespace;
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_countersign");
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

fn started_environment(dir: &Path) -> Environment {
    let activator = Path::new(BINARY).with_file_name("countersign-activator");
    assert!(
        activator.exists(),
        "{} is missing; run `cargo build --workspace` first",
        activator.display()
    );
    let mut environment =
        Environment::create(&dir.join("demo"), Path::new(BINARY), None)
            .expect("the demo environment is created");
    environment.start().expect("server and activator start");
    environment
}

/// Commits the demo change, proposes it and waits for the build.
fn propose_change(environment: &mut Environment) -> (u64, Value) {
    environment
        .commit_change("Update hello", |spec| spec.apply_demo_change())
        .unwrap();
    let number = environment.propose().unwrap();
    let detail = environment
        .wait_for_state(number, &["building"], BUILD_TIMEOUT)
        .unwrap();
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    (number, detail)
}

fn state(environment: &Environment, number: u64) -> Value {
    environment
        .client("phone")
        .unwrap()
        .get_json(&format!("/api/v1/proposals/{number}"))
        .unwrap()
}

fn wait_final(environment: &Environment, number: u64) -> Value {
    environment
        .wait_for_state(
            number,
            &["awaiting-approval", "activating"],
            Duration::from_secs(120),
        )
        .unwrap()
}

fn audit_verify(environment: &Environment) -> (bool, String) {
    let output = Command::new(BINARY)
        .arg("audit")
        .arg("verify")
        .arg("--config")
        .arg(environment.layout.path("server.toml"))
        .arg("--activator-config")
        .arg(environment.layout.path("activator.toml"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Runs `countersign status` as the phone approver.
fn status_output(environment: &Environment) -> (bool, String) {
    let output = Command::new(BINARY)
        .arg("status")
        .arg("--server")
        .arg(&environment.server_url)
        .arg("--key")
        .arg(environment.layout.key("phone"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn two_of_two_switches_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut environment = started_environment(dir.path());
    let base = environment.profile_target().unwrap();
    let (number, _) = propose_change(&mut environment);
    let statement: Value = serde_json::from_slice(
        &environment
            .client("phone")
            .unwrap()
            .get_bytes(&format!("/api/v1/proposals/{number}/statement"))
            .unwrap(),
    )
    .unwrap();
    let target = statement["target"].as_str().unwrap().to_owned();

    let (ok, output) = environment.vote("approve", number, "phone").unwrap();
    assert!(ok, "{output}");
    let (ok, output) = environment.vote("approve", number, "phone").unwrap();
    assert!(ok, "a repeated approval is accepted: {output}");
    let detail = state(&environment, number);
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    assert_eq!(detail["quorum"]["have"], 1, "the phone counts once");
    let (ok, output) = status_output(&environment);
    assert!(ok, "{output}");
    let row = output
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("{number} ")))
        .unwrap_or_else(|| panic!("no row for proposal {number}: {output}"));
    assert!(
        row.starts_with(&format!("{number:>5}  awaiting-approval ")),
        "{row}"
    );
    assert!(row.contains(" 1 of 2 "), "{row}");
    assert!(!output.contains("null"), "{output}");
    assert_eq!(environment.profile_target().unwrap(), base);
    assert!(environment.switch_log().is_empty());

    let (ok, output) = environment.vote("approve", number, "laptop").unwrap();
    assert!(ok, "{output}");
    let detail = wait_final(&environment, number);
    assert_eq!(detail["state"], "deployed", "{detail}");
    assert_eq!(
        environment.profile_target().unwrap().to_str().unwrap(),
        target
    );
    assert_eq!(environment.switch_log(), vec![format!("switch {target}")]);

    let (ok, output) = audit_verify(&environment);
    assert!(ok, "{output}");
}

#[test]
fn rejection_vetoes_proposal() {
    let dir = tempfile::tempdir().unwrap();
    let mut environment = started_environment(dir.path());
    let base = environment.profile_target().unwrap();
    let (number, _) = propose_change(&mut environment);

    let (ok, output) = environment.vote("approve", number, "phone").unwrap();
    assert!(ok, "{output}");
    let (ok, output) = environment.vote("reject", number, "laptop").unwrap();
    assert!(ok, "{output}");
    assert_eq!(state(&environment, number)["state"], "rejected");

    let (ok, output) = environment.vote("approve", number, "laptop").unwrap();
    assert!(!ok, "an approval after the veto is refused: {output}");
    assert_eq!(environment.profile_target().unwrap(), base);
    assert!(environment.switch_log().is_empty());
}

#[test]
fn failed_build_keeps_log_and_activates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut environment = started_environment(dir.path());
    let base = environment.profile_target().unwrap();
    environment
        .commit_change("Break the build", |spec| spec.fail_build = true)
        .unwrap();
    let number = environment.propose().unwrap();
    let detail = environment
        .wait_for_state(number, &["building"], BUILD_TIMEOUT)
        .unwrap();
    assert_eq!(detail["state"], "failed", "{detail}");

    let client = environment.client("phone").unwrap();
    let log = client
        .get_bytes(&format!("/api/v1/proposals/{number}/log"))
        .unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("build fails as the spec requests"), "{log}");
    let statement =
        client.get_bytes(&format!("/api/v1/proposals/{number}/statement"));
    assert!(statement.is_err(), "a failed proposal has no statement");
    assert_eq!(environment.profile_target().unwrap(), base);
    assert!(environment.switch_log().is_empty());
}

#[test]
fn approval_does_not_count_for_next_proposal() {
    let dir = tempfile::tempdir().unwrap();
    let mut environment = started_environment(dir.path());
    let (first, _) = propose_change(&mut environment);
    let client = environment.client("phone").unwrap();
    let first_statement = client
        .get_bytes(&format!("/api/v1/proposals/{first}/statement"))
        .unwrap();

    environment
        .commit_change("Another change", |spec| {
            spec.kernel_params.push("quiet".into())
        })
        .unwrap();
    let second = environment.propose().unwrap();
    let detail = environment
        .wait_for_state(second, &["building"], BUILD_TIMEOUT)
        .unwrap();
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    assert_eq!(state(&environment, first)["state"], "superseded");

    let moved = sign::sign(
        &environment.layout.key("phone"),
        Namespace::Approve,
        &first_statement,
    )
    .unwrap();
    let error = client
        .post_json::<Value>(
            &format!("/api/v1/proposals/{second}/approvals"),
            &json!({ "signature": moved }),
        )
        .unwrap_err();
    assert!(error.to_string().contains("HTTP 4"), "{error:#}");
    assert_eq!(state(&environment, second)["quorum"]["have"], 0);

    let git_signature = sign::sign(
        &environment.layout.key("phone"),
        Namespace::Login,
        b"not a statement",
    )
    .unwrap();
    let error = client
        .post_json::<Value>(
            &format!("/api/v1/proposals/{second}/approvals"),
            &json!({ "signature": git_signature }),
        )
        .unwrap_err();
    assert!(error.to_string().contains("HTTP 4"), "{error:#}");
    assert_eq!(state(&environment, second)["quorum"]["have"], 0);
}

#[test]
fn server_killed_keeps_proposals_and_approvals() {
    let dir = tempfile::tempdir().unwrap();
    let mut environment = started_environment(dir.path());

    environment
        .commit_change("Slow build", |spec| spec.build_delay_secs = 30)
        .unwrap();
    let interrupted = environment.propose().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state(&environment, interrupted)["state"], "building");
    environment.kill("server").unwrap();
    environment.start_server().unwrap();
    let detail = state(&environment, interrupted);
    assert_eq!(detail["state"], "failed", "{detail}");
    assert!(
        detail["error"].as_str().unwrap_or("").contains("restart"),
        "{detail}"
    );

    let (number, _) = {
        environment
            .commit_change("Fast build", |spec| {
                spec.build_delay_secs = 0;
                spec.apply_demo_change();
            })
            .unwrap();
        let number = environment.propose().unwrap();
        let detail = environment
            .wait_for_state(number, &["building"], BUILD_TIMEOUT)
            .unwrap();
        assert_eq!(detail["state"], "awaiting-approval", "{detail}");
        (number, detail)
    };
    assert!(number > interrupted);
    let (ok, output) = environment.vote("approve", number, "phone").unwrap();
    assert!(ok, "{output}");
    environment.kill("server").unwrap();
    environment.start_server().unwrap();
    let detail = state(&environment, number);
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    assert_eq!(detail["quorum"]["have"], 1, "the approval was kept");

    let (ok, output) = environment.vote("approve", number, "laptop").unwrap();
    assert!(ok, "{output}");
    assert_eq!(wait_final(&environment, number)["state"], "deployed");
    let (ok, output) = audit_verify(&environment);
    assert!(ok, "{output}");
}

#[test]
fn audit_verify_detects_cut_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut environment = started_environment(dir.path());
    let (number, _) = propose_change(&mut environment);
    for approver in ["phone", "laptop"] {
        let (ok, output) =
            environment.vote("approve", number, approver).unwrap();
        assert!(ok, "{output}");
    }
    assert_eq!(wait_final(&environment, number)["state"], "deployed");
    environment.kill("server").unwrap();

    let database = environment
        .layout
        .path("server-state")
        .join(countersign_server::DB_FILE);
    let connection = rusqlite::Connection::open(&database).unwrap();
    let error = connection
        .execute(
            "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)",
            [],
        )
        .unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");
    connection
        .execute_batch(
            "DROP TRIGGER audit_no_delete;
             DELETE FROM audit WHERE seq >= (SELECT MAX(seq) - 2 FROM audit);",
        )
        .unwrap();
    drop(connection);

    let (ok, output) = audit_verify(&environment);
    assert!(!ok, "a cut log must fail verification: {output}");
    assert!(
        output.contains("cut") || output.contains("truncat"),
        "{output}"
    );
}

#[test]
fn trigger_token_only_creates_proposals() {
    let dir = tempfile::tempdir().unwrap();
    let mut environment = started_environment(dir.path());
    let (number, _) = propose_change(&mut environment);
    let trigger = Client::with_token_file(
        &environment.server_url,
        &environment.layout.path("secrets/trigger-token"),
    )
    .unwrap();
    let read =
        trigger.get_json::<Value>(&format!("/api/v1/proposals/{number}"));
    assert!(read.is_err(), "the trigger token cannot read proposals");
    let signature = sign::sign(
        &environment.layout.key("phone"),
        Namespace::Approve,
        b"anything",
    )
    .unwrap();
    let vote = trigger.post_json::<Value>(
        &format!("/api/v1/proposals/{number}/approvals"),
        &json!({ "signature": signature }),
    );
    assert!(vote.is_err(), "the trigger token cannot approve");
}

#[test]
fn demo_runs_unattended() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BINARY)
        .args(["demo", "--unattended", "--dir"])
        .arg(dir.path().join("demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Proposal 1 is deployed"), "{stdout}");
    assert!(stdout.contains("chain intact"), "{stdout}");
}

#[test]
fn example_policy_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/policy.toml");
    let policy =
        countersign_core::Policy::from_toml(&std::fs::read(path).unwrap())
            .unwrap();
    assert_eq!(policy.threshold, 2);
}

/// Creates the demo environment with `top` added before the tables of
/// the activator's configuration and `tables` after them, then starts it.
fn started_with_activator_config(
    dir: &Path,
    top: &str,
    tables: &str,
) -> Environment {
    let mut environment =
        Environment::create(&dir.join("demo"), Path::new(BINARY), None)
            .expect("the demo environment is created");
    let path = environment.layout.path("activator.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{top}\n{config}\n{tables}")).unwrap();
    environment.start().expect("server and activator start");
    environment
}

/// Asks the activator for its status over its socket.
fn activator_status(environment: &Environment) -> Value {
    use std::io::{BufRead, BufReader, Write};
    let socket = environment.layout.path("run/activator.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.write_all(b"{\"request\":\"status\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// Waits up to a minute for `condition`.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Returns the `event` names of a proposal's activation events.
fn activation_events(detail: &Value) -> Vec<String> {
    detail["activation"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["event"].as_str().map(str::to_owned))
        .collect()
}

/// Approves `number` with both keys and waits until the target's
/// switch-to-configuration has run.
fn approve_until_switched(environment: &Environment, number: u64) {
    for approver in ["phone", "laptop"] {
        let (ok, output) =
            environment.vote("approve", number, approver).unwrap();
        assert!(ok, "{output}");
    }
    wait_until("the switch", || !environment.switch_log().is_empty());
}

#[test]
fn confirmation_keeps_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let mut environment = started_with_activator_config(
        dir.path(),
        "confirm_timeout_secs = 60",
        "",
    );
    let (number, _) = propose_change(&mut environment);
    approve_until_switched(&environment, number);

    let detail = wait_final(&environment, number);
    assert_eq!(detail["state"], "deployed", "{detail}");
    let events = activation_events(&detail);
    assert!(
        events.contains(&"awaiting-confirmation".to_owned()),
        "{events:?}"
    );
    assert!(events.contains(&"confirmed".to_owned()), "{events:?}");
    assert_eq!(environment.switch_log().len(), 1);
    let (ok, output) = audit_verify(&environment);
    assert!(ok, "{output}");
}

#[test]
fn restarted_server_confirms_activation() {
    let dir = tempfile::tempdir().unwrap();
    // The health check gives the test time to stop the server before
    // the confirmation window opens.
    let mut environment = started_with_activator_config(
        dir.path(),
        "confirm_timeout_secs = 120",
        "[[health.commands]]\ncommand = [\"/bin/sleep\", \"3\"]\n",
    );
    let (number, _) = propose_change(&mut environment);
    approve_until_switched(&environment, number);
    environment.kill("server").unwrap();
    wait_until("the confirmation window", || {
        activator_status(&environment)["awaiting_confirmation"] == number
    });

    environment.start_server().unwrap();
    let detail = wait_final(&environment, number);
    assert_eq!(detail["state"], "deployed", "{detail}");
    assert!(
        activation_events(&detail).contains(&"confirmed".to_owned()),
        "{detail}"
    );
    assert_eq!(activator_status(&environment)["activating"], Value::Null);
    assert_eq!(environment.switch_log().len(), 1);
}

#[test]
fn unconfirmed_activation_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut environment = started_with_activator_config(
        dir.path(),
        "confirm_timeout_secs = 2",
        "[[health.commands]]\ncommand = [\"/bin/sleep\", \"3\"]\n",
    );
    let base = environment.profile_target().unwrap();
    let (number, _) = propose_change(&mut environment);
    approve_until_switched(&environment, number);
    // No server runs while the window is open, so nobody confirms.
    environment.kill("server").unwrap();
    wait_until("the rollback", || environment.switch_log().len() == 2);
    wait_until("the end of the activation", || {
        activator_status(&environment)["activating"] == Value::Null
    });

    environment.start_server().unwrap();
    let detail = wait_final(&environment, number);
    assert_eq!(detail["state"], "failed", "{detail}");
    assert_eq!(environment.profile_target().unwrap(), base);
    let log = environment.switch_log();
    assert_eq!(
        log[1],
        format!("switch {}", base.display()),
        "the base's switch-to-configuration ran: {log:?}"
    );
}

#[test]
fn rollback_returns_to_earlier_generation() {
    let dir = tempfile::tempdir().unwrap();
    let mut environment =
        Environment::create(&dir.path().join("demo"), Path::new(BINARY), None)
            .expect("the demo environment is created");
    // The server reads the generations of the demo's own profile.
    let server_config = environment.layout.path("server.toml");
    let config = std::fs::read_to_string(&server_config).unwrap();
    std::fs::write(
        &server_config,
        format!(
            "profile = \"{}\"\n{config}",
            environment.layout.profile().display()
        ),
    )
    .unwrap();
    environment.start().expect("server and activator start");
    let base = environment.profile_target().unwrap();
    let (number, _) = propose_change(&mut environment);
    approve_until_switched(&environment, number);
    assert_eq!(wait_final(&environment, number)["state"], "deployed");
    let target = environment.profile_target().unwrap();
    assert_ne!(target, base);

    let phone = environment.client("phone").unwrap();
    let error = phone
        .post_json::<Value>(
            "/api/v1/proposals",
            &json!({ "rev": "main", "rollback_generation": 1 }),
        )
        .unwrap_err();
    assert!(error.to_string().contains("not both"), "{error}");
    let missing: Value = phone
        .post_json("/api/v1/proposals", &json!({ "rollback_generation": 9 }))
        .unwrap();
    let missing = missing["proposal"].as_u64().unwrap();
    let detail = environment
        .wait_for_state(missing, &["building"], BUILD_TIMEOUT)
        .unwrap();
    assert_eq!(detail["state"], "failed", "{detail}");
    assert!(
        detail["error"]
            .as_str()
            .unwrap_or("")
            .contains("generation 9 of the profile"),
        "{detail}"
    );

    let output = Command::new(BINARY)
        .args(["propose", "--rollback", "1", "--wait", "--server"])
        .arg(&environment.server_url)
        .arg("--key")
        .arg(environment.layout.key("phone"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rollback: u64 = stdout.trim().parse().unwrap();
    let detail = state(&environment, rollback);
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    assert_eq!(detail["subject"], "Roll back to generation 1", "{detail}");
    assert_eq!(detail["commit"], Value::Null, "{detail}");
    let statement: Value = serde_json::from_slice(
        &environment
            .client("phone")
            .unwrap()
            .get_bytes(&format!("/api/v1/proposals/{rollback}/statement"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(statement["rollback_generation"], 1, "{statement}");
    assert_eq!(statement.get("source"), None, "{statement}");
    assert_eq!(statement["base"], target.to_str().unwrap());
    assert_eq!(statement["target"], base.to_str().unwrap());

    let (ok, output) = environment.vote("approve", rollback, "phone").unwrap();
    assert!(ok, "{output}");
    assert!(
        output.contains("rollback to generation 1 of the system profile"),
        "{output}"
    );
    let (ok, output) =
        environment.vote("approve", rollback, "laptop").unwrap();
    assert!(ok, "{output}");
    let detail = wait_final(&environment, rollback);
    assert_eq!(detail["state"], "deployed", "{detail}");
    assert_eq!(environment.profile_target().unwrap(), base);
    let link = std::fs::read_link(environment.layout.profile()).unwrap();
    assert!(
        link.to_string_lossy().ends_with("-1-link"),
        "the profile returns to generation 1: {}",
        link.display()
    );
    assert_eq!(
        environment.switch_log(),
        [
            format!("switch {}", target.display()),
            format!("switch {}", base.display())
        ]
    );
    let (ok, output) = audit_verify(&environment);
    assert!(ok, "{output}");
}
