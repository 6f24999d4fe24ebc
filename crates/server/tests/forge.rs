//! The forge integration against a real server on 127.0.0.1, real git,
//! Nix and `ssh-keygen`: the CI gate fed by status webhooks, commit
//! statuses posted back, signed commits, and notifications. A recording
//! HTTP server on 127.0.0.1 stands in for the forge's API and for the
//! notification receivers.

mod common;
#[path = "support/recorder.rs"]
mod recorder;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::activator::StubActivator;
use common::{Harness, Key, Options};
use countersign_core::protocol::Request;
use countersign_server::{
    CiConfig, CommitStatusConfig, ForgeApi, NotifyConfig, NotifyEvent,
    NotifyWebhookConfig, NtfyConfig, SignedCommitsConfig, WebhookConfig,
};
use hmac::{Hmac, KeyInit, Mac};
use recorder::{Received, Recorder};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "webhook-secret-for-forge-tests-81f2";
const FORGE_TOKEN: &str = "forge-token-3c9d0e7a51";
const NTFY_TOKEN: &str = "tk_ntfy_6a2b94e1";
const NOTIFY_SECRET: &str = "notify-secret-0b7e55";

/// How long the tests wait for a request that the server sends in the
/// background; the retries of a failed one take a few seconds.
const WAIT: Duration = Duration::from_secs(60);

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn write_secret(
    harness: &Harness,
    name: &str,
    value: &str,
) -> std::path::PathBuf {
    let path = harness.path(name);
    fs::write(&path, format!("{value}\n")).unwrap();
    path
}

/// Enables webhooks for `ops/infra` with the test secret.
fn enable_webhooks(harness: &mut Harness) {
    let secret_file = write_secret(harness, "webhook-secret", SECRET);
    harness.config.webhook = Some(WebhookConfig {
        secret_file,
        repository: Some("ops/infra".to_owned()),
    });
}

/// Sends notifications of `events` to the ntfy and webhook recorders.
fn enable_notifications(
    harness: &mut Harness,
    ntfy: &Recorder,
    webhook: &Recorder,
    events: Vec<NotifyEvent>,
) {
    let token_file = write_secret(harness, "ntfy-token", NTFY_TOKEN);
    let secret_file = write_secret(harness, "notify-secret", NOTIFY_SECRET);
    harness.config.notify = Some(NotifyConfig {
        events,
        ntfy: Some(NtfyConfig {
            url: format!("{}/countersign-topic", ntfy.url),
            token_file: Some(token_file),
        }),
        webhook: Some(NotifyWebhookConfig {
            url: format!("{}/hooks/countersign", webhook.url),
            secret_file: Some(secret_file),
        }),
    });
}

/// Posts commit statuses of `forge` kind to the forge recorder.
fn enable_commit_status(
    harness: &mut Harness,
    forge: ForgeApi,
    api: &Recorder,
) {
    let token_file = write_secret(harness, "forge-token", FORGE_TOKEN);
    harness.config.commit_status = Some(CommitStatusConfig {
        forge,
        api_url: format!("{}/api", api.url),
        repository: "ops/infra".to_owned(),
        token_file,
        context: None,
    });
}

/// Posts a signed webhook delivery and returns the status and the JSON
/// response.
async fn deliver(
    harness: &Harness,
    forge: &str,
    event: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let body = body.to_string();
    let mac = hmac_hex(SECRET, body.as_bytes());
    let headers: Vec<(&str, String)> = match forge {
        "github" => vec![
            ("X-GitHub-Event", event.into()),
            ("X-GitHub-Delivery", "d-1".into()),
            ("X-Hub-Signature-256", format!("sha256={mac}")),
        ],
        "gitea" => {
            vec![("X-Gitea-Event", event.into()), ("X-Gitea-Signature", mac)]
        }
        "gitlab" => vec![
            ("X-Gitlab-Event", event.into()),
            ("X-Gitlab-Token", SECRET.into()),
        ],
        other => panic!("unknown forge {other}"),
    };
    let mut request = harness
        .client
        .post(format!("{}/webhooks/{forge}", harness.url))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("the delivery is sent");
    let status = response.status();
    (status, response.json().await.expect("a JSON response"))
}

/// Builds a GitHub `status` event for `commit`.
fn github_status(id: u64, commit: &str, state: &str, context: &str) -> Value {
    json!({
        "id": id,
        "sha": commit,
        "name": "ops/infra",
        "state": state,
        "context": context,
        "description": format!("the build is {state}"),
        "target_url": format!("https://ci.invalid/builds/{id}"),
        "repository": { "full_name": "ops/infra" },
        "branches": [],
    })
}

/// Builds a GitLab `Pipeline Hook` for `commit` with one job, `build`.
fn gitlab_pipeline(id: u64, commit: &str, status: &str) -> Value {
    json!({
        "object_kind": "pipeline",
        "object_attributes": {
            "id": id, "sha": commit, "ref": "main", "status": status,
        },
        "project": {
            "path_with_namespace": "ops/infra",
            "web_url": "https://gitlab.invalid/ops/infra",
        },
        "builds": [
            { "id": id * 10, "name": "build", "stage": "test", "status": status },
        ],
    })
}

fn error_text(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text: {body}"))
}

/// Signs and uploads `key`'s approval of proposal `number`.
async fn approve(
    harness: &Harness,
    key: &Key,
    token: &str,
    number: u64,
) -> (StatusCode, Value) {
    let statement = harness.statement(token, number).await;
    let signature = key.sign("countersign-approve", &statement);
    harness
        .post(
            &format!("/proposals/{number}/approvals"),
            Some(token),
            json!({ "signature": signature }),
        )
        .await
}

fn activations(stub: &StubActivator) -> usize {
    stub.requests()
        .iter()
        .filter(|request| matches!(request, Request::Activate { .. }))
        .count()
}

fn descriptions(statuses: &[Received]) -> Vec<String> {
    statuses
        .iter()
        .filter(|request| request.answered < 300)
        .map(|request| {
            let body = request.json();
            format!(
                "{}: {}",
                body["state"].as_str().unwrap_or("?"),
                body["description"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_gate_rejects_approvals_until_checks_pass() {
    let forge = Recorder::start(0).await;
    let ntfy = Recorder::start(1).await;
    let hooks = Recorder::start(0).await;
    let mut harness = Harness::prepare(Options::default());
    enable_webhooks(&mut harness);
    enable_commit_status(&mut harness, ForgeApi::GitHub, &forge);
    enable_notifications(
        &mut harness,
        &ntfy,
        &hooks,
        vec![NotifyEvent::AwaitingApproval, NotifyEvent::Deployed],
    );
    harness.config.ci = Some(CiConfig {
        required: vec!["ci/build".to_owned()],
        accept_votes_while_pending: false,
    });
    harness.config.proposal_url =
        Some("https://deploy.invalid/proposals/{number}".to_owned());
    harness.start_server().await;
    let stub = StubActivator::start(
        &harness.socket_path(),
        harness.policy_path(),
        harness.base.clone(),
    );
    let phone = harness.login(&harness.phone).await;
    let laptop = harness.login(&harness.laptop).await;

    let push = json!({
        "ref": "refs/heads/main",
        "after": "1111111111111111111111111111111111111111",
        "repository": { "full_name": "ops/infra" },
    });
    let (status, body) = deliver(&harness, "github", "push", &push).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let number = body["proposal"].as_u64().unwrap();
    let detail = harness.wait_built(&phone, number).await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    let commit = harness.head();
    assert_eq!(detail["checks"]["gate"], "waiting", "{detail}");
    assert_eq!(detail["checks"]["required"], json!(["ci/build"]));
    assert_eq!(
        detail["url"],
        format!("https://deploy.invalid/proposals/{number}")
    );

    // No status yet: approvals wait.
    let (status, body) =
        approve(&harness, &harness.phone, &phone, number).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        error_text(&body).contains("\"ci/build\" has not reported"),
        "{body}"
    );

    // A status of another repository is ignored.
    let mut foreign = github_status(1, &commit, "success", "ci/build");
    foreign["repository"]["full_name"] = json!("someone/else");
    let (status, body) = deliver(&harness, "github", "status", &foreign).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let pending = github_status(2, &commit, "pending", "ci/build");
    let (status, body) = deliver(&harness, "github", "status", &pending).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        approve(&harness, &harness.phone, &phone, number).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        error_text(&body).contains("\"ci/build\" is pending"),
        "{body}"
    );

    let failed = github_status(3, &commit, "failure", "ci/build");
    let (status, body) = deliver(&harness, "github", "status", &failed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        approve(&harness, &harness.phone, &phone, number).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        error_text(&body)
            .contains("\"ci/build\" failed (the build is failure)"),
        "{body}"
    );
    let (_, detail) =
        harness.get(&format!("/proposals/{number}"), &phone).await;
    assert_eq!(detail["checks"]["gate"], "failed", "{detail}");
    let shown = &detail["checks"]["statuses"][0];
    assert_eq!(shown["name"], "ci/build");
    assert_eq!(shown["state"], "failure");
    assert_eq!(shown["url"], "https://ci.invalid/builds/3");
    assert_eq!(detail["approvals"], json!([]));

    // A green check lets the approvals in; the quorum then activates.
    let green = github_status(4, &commit, "success", "ci/build");
    let (status, body) = deliver(&harness, "github", "status", &green).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        approve(&harness, &harness.phone, &phone, number).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["gate"], "passed", "{body}");
    assert_eq!(body["quorum"]["have"], 1);
    forge
        .wait_for("with one approval", WAIT, |request| {
            request.json()["description"]
                == "awaiting approval: 1 of 2 approvals"
        })
        .await;
    let (status, body) =
        approve(&harness, &harness.laptop, &laptop, number).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let detail = harness
        .wait_for(&phone, number, |detail| detail["state"] != "activating")
        .await;
    assert_eq!(detail["state"], "deployed", "{detail}");
    assert_eq!(activations(&stub), 1);

    // Commit statuses: pending with the count of approvals, then success.
    let statuses = forge
        .wait_for("with state success", WAIT, |request| {
            request.body.windows(9).any(|w| w == b"\"success\"")
        })
        .await;
    for request in &statuses {
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.path,
            format!("/api/repos/ops/infra/statuses/{commit}")
        );
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {FORGE_TOKEN}").as_str())
        );
        let body = request.json();
        assert_eq!(body["context"], "countersign/demo");
        assert_eq!(
            body["target_url"],
            format!("https://deploy.invalid/proposals/{number}")
        );
    }
    let posted = descriptions(&statuses);
    assert!(
        posted.iter().any(|text| text.starts_with("pending: ")
            && text.contains("0 of 2 approvals")),
        "{posted:#?}"
    );
    assert!(
        posted.iter().any(|text| text == "pending: awaiting approval: 1 of 2 approvals"),
        "{posted:#?}"
    );
    assert_eq!(
        posted.last().unwrap(),
        &format!("success: deployed (proposal {number})"),
        "{posted:#?}"
    );

    // ntfy answered the first request with 500; the server retried.
    let deployed = format!("demo: proposal {number} is deployed");
    let retried = format!("demo: proposal {number} awaits approval");
    let received = ntfy
        .wait_for("for the deployment and the retry", WAIT, |_| {
            let received = ntfy.received();
            let has = |title: &str| {
                received.iter().any(|request| {
                    request.header("title") == Some(title)
                        && request.answered == 201
                })
            };
            has(&deployed) && has(&retried)
        })
        .await;
    let awaiting: Vec<&Received> = received
        .iter()
        .filter(|request| {
            request.header("title")
                == Some(
                    format!("demo: proposal {number} awaits approval")
                        .as_str(),
                )
        })
        .collect();
    assert_eq!(awaiting.len(), 2, "{received:#?}");
    assert_eq!(awaiting[0].answered, 500);
    assert_eq!(awaiting[1].answered, 201);
    for request in &received {
        assert_eq!(request.path, "/countersign-topic");
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {NTFY_TOKEN}").as_str())
        );
        assert_eq!(
            request.header("click"),
            Some(
                format!("https://deploy.invalid/proposals/{number}").as_str()
            )
        );
    }
    let short = &commit[..12];
    assert_eq!(
        awaiting[1].text(),
        format!(
            "Proposal {number} on demo awaits approval (commit {short}). \
             https://deploy.invalid/proposals/{number}"
        )
    );

    // The JSON webhook: signed, and only the summary.
    let received = hooks
        .wait_for("for the deployment", WAIT, |request| {
            request.header("x-countersign-event") == Some("deployed")
        })
        .await;
    let events: Vec<String> = received
        .iter()
        .map(|request| request.json()["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["awaiting-approval", "deployed"]);
    for request in &received {
        let signature = request.header("x-countersign-signature").unwrap();
        assert_eq!(
            signature,
            format!("sha256={}", hmac_hex(NOTIFY_SECRET, &request.body))
        );
        let body = request.json();
        assert_eq!(body["host"], "demo");
        assert_eq!(body["proposal"], number);
        assert_eq!(body["commit"], short);
        // Sorted, because serde_json keeps insertion order when another
        // crate of the workspace turns on its `preserve_order` feature.
        let mut keys: Vec<&String> =
            body.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "at", "commit", "event", "host", "proposal", "state", "title",
                "url"
            ],
            "the notification carries only the summary"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_check_holds_certificate_until_green() {
    let forge = Recorder::start(0).await;
    let mut harness = Harness::prepare(Options::default());
    enable_webhooks(&mut harness);
    enable_commit_status(&mut harness, ForgeApi::Gitea, &forge);
    harness.config.ci = Some(CiConfig {
        required: vec!["build".to_owned()],
        accept_votes_while_pending: true,
    });
    harness.start_server().await;
    let stub = StubActivator::start(
        &harness.socket_path(),
        harness.policy_path(),
        harness.base.clone(),
    );
    let phone = harness.login(&harness.phone).await;
    let laptop = harness.login(&harness.laptop).await;
    let number = harness.propose(&harness.trigger_token, None).await;
    harness.wait_built(&phone, number).await;
    let commit = harness.head();

    let (status, body) = deliver(
        &harness,
        "gitlab",
        "Pipeline Hook",
        &gitlab_pipeline(40, &commit, "running"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"], 2, "the pipeline and its job: {body}");

    for (key, token) in [(&harness.phone, &phone), (&harness.laptop, &laptop)]
    {
        let (status, body) = approve(&harness, key, token, number).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The quorum is met, but the certificate waits for the check.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, detail) =
        harness.get(&format!("/proposals/{number}"), &phone).await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    assert_eq!(detail["quorum"]["have"], 2);
    assert_eq!(detail["checks"]["gate"], "waiting");
    assert_eq!(activations(&stub), 0);
    assert!(
        harness
            .audit_kinds(number)
            .contains(&"activation-held".to_owned()),
        "{:?}",
        harness.audit_kinds(number)
    );

    forge
        .wait_for("of the held activation", WAIT, |request| {
            request.json()["description"].as_str().is_some_and(|text| {
                text.starts_with("2 of 2 approvals; waiting: ")
            })
        })
        .await;

    // A status for another commit releases nothing.
    let other = "2222222222222222222222222222222222222222";
    let (status, body) = deliver(
        &harness,
        "gitlab",
        "Pipeline Hook",
        &gitlab_pipeline(41, other, "success"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(activations(&stub), 0);

    let (status, body) = deliver(
        &harness,
        "gitlab",
        "Pipeline Hook",
        &gitlab_pipeline(40, &commit, "success"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let detail = harness
        .wait_for(&phone, number, |detail| {
            detail["state"] != "awaiting-approval"
                && detail["state"] != "activating"
        })
        .await;
    assert_eq!(detail["state"], "deployed", "{detail}");
    assert_eq!(activations(&stub), 1);
    let kinds = harness.audit_kinds(number);
    let held = kinds.iter().position(|kind| kind == "activation-held");
    let requested =
        kinds.iter().position(|kind| kind == "activation-requested");
    assert!(held < requested, "{kinds:?}");
    assert_eq!(kinds.last().unwrap(), "activation-finished");

    let statuses = forge
        .wait_for("with state success", WAIT, |request| {
            request.json()["state"] == "success"
        })
        .await;
    for request in &statuses {
        assert_eq!(
            request.header("authorization"),
            Some(format!("token {FORGE_TOKEN}").as_str())
        );
        assert_eq!(
            request.path,
            format!("/api/repos/ops/infra/statuses/{commit}")
        );
    }
    let posted = descriptions(&statuses);
    assert!(
        posted.iter().any(|text| text
            .starts_with("pending: 2 of 2 approvals; waiting: ")
            && text.contains("\"build\" is pending")),
        "{posted:#?}"
    );
    assert_eq!(
        posted.last().unwrap(),
        &format!("success: deployed (proposal {number})")
    );
}

/// Runs git in the test repository with a fixed identity.
fn git(
    repo: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut command = Command::new("git");
    command.arg("-C").arg(repo).args([
        "-c",
        "user.name=test",
        "-c",
        "user.email=test@countersign.invalid",
    ]);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("git runs")
}

/// Replaces the head commit by one signed with the SSH key `key`, made
/// at `date` when given.
fn sign_head_ssh(repo: &Path, key: &Key, date: Option<&str>) -> String {
    let signing_key = format!("user.signingkey={}", key.path.display());
    let mut env = Vec::new();
    if let Some(date) = date {
        env.push(("GIT_COMMITTER_DATE", date));
        env.push(("GIT_AUTHOR_DATE", date));
    }
    let output = git(
        repo,
        &[
            "-c",
            "gpg.format=ssh",
            "-c",
            &signing_key,
            "commit",
            "--amend",
            "--no-edit",
            "--allow-empty",
            "-S",
        ],
        &env,
    );
    assert!(
        output.status.success(),
        "signing the commit failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    common::git_in(repo, &["rev-parse", "HEAD"])
}

/// Proposes the branch head, waits for the build and returns the detail.
async fn propose_head(harness: &Harness, token: &str) -> Value {
    let number = harness.propose(&harness.trigger_token, None).await;
    harness.wait_built(token, number).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_commits_block_unsigned_and_expired_keys() {
    let ntfy = Recorder::start(0).await;
    let hooks = Recorder::start(0).await;
    let mut harness = Harness::prepare(Options::default());
    let keys = harness.path("signers");
    fs::create_dir(&keys).unwrap();
    let alice = Key::generate(&keys, "alice");
    let old = Key::generate(&keys, "old");
    let revoked = Key::generate(&keys, "revoked");
    let stranger = Key::generate(&keys, "mallory");
    let allowed = keys.join("allowed_signers");
    fs::write(
        &allowed,
        format!(
            "alice@example.org namespaces=\"git\" {}\n\
             old@example.org namespaces=\"git\",valid-after=\"20190101\",\
             valid-before=\"20200101\" {}\n\
             revoked@example.org namespaces=\"git\" {}\n",
            alice.public, old.public, revoked.public
        ),
    )
    .unwrap();
    let revoked_file = keys.join("revoked_keys");
    fs::write(&revoked_file, format!("{}\n", revoked.public)).unwrap();
    harness.config.signed_commits = Some(SignedCommitsConfig {
        allowed_signers: Some(allowed.clone()),
        revoked_keys: Some(revoked_file),
        gpg_keyring: None,
    });
    enable_notifications(
        &mut harness,
        &ntfy,
        &hooks,
        vec![NotifyEvent::Failed],
    );
    harness.start_server().await;
    let phone = harness.login(&harness.phone).await;
    let repo = harness.repo();

    // The fixture's head commit is unsigned.
    let unsigned = harness.head();
    let detail = propose_head(&harness, &phone).await;
    let number = detail["number"].as_u64().unwrap();
    assert_eq!(detail["state"], "failed", "{detail}");
    let blocked = detail["blocked"].as_str().unwrap_or_default();
    assert!(
        blocked.starts_with(&format!("commit {unsigned} is not signed")),
        "{detail}"
    );
    assert_eq!(detail["statement_sha256"], Value::Null);
    let (status, _) = harness
        .get_bytes(&format!("/proposals/{number}/statement"), &phone)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let received = ntfy
        .wait_for("for the blocked proposal", WAIT, |request| {
            request.header("title")
                == Some(format!("demo: proposal {number} failed").as_str())
        })
        .await;
    assert!(
        !received
            .iter()
            .any(|request| request.text().contains("signed")),
        "notifications carry no error text: {received:#?}"
    );

    // Signed by an allowed key: built and awaiting approval.
    let signed = sign_head_ssh(&repo, &alice, None);
    let detail = propose_head(&harness, &phone).await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    assert_eq!(detail["commit"], signed.as_str());
    assert_eq!(detail["blocked"], Value::Null);
    let number = detail["number"].as_u64().unwrap();
    assert!(
        harness
            .audit_kinds(number)
            .contains(&"commit-signature-verified".to_owned()),
        "{:?}",
        harness.audit_kinds(number)
    );
    let (_, log) = harness
        .get_bytes(&format!("/proposals/{number}/log"), &phone)
        .await;
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains("is signed by alice@example.org (ssh key SHA256:"),
        "{log}"
    );

    // The same signature on a changed message does not verify.
    let raw = git(&repo, &["cat-file", "commit", &signed], &[]).stdout;
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.contains("\ngpgsig -----BEGIN SSH SIGNATURE-----\n"));
    let changed = raw.replacen("\n\n", "\n\nChanged after signing. ", 1);
    let mut hash_object = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["hash-object", "-t", "commit", "-w", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut hash_object.stdin.take().unwrap(),
        changed.as_bytes(),
    )
    .unwrap();
    let output = hash_object.wait_with_output().unwrap();
    let tampered = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    common::git_in(&repo, &["update-ref", "refs/heads/main", &tampered]);
    let detail = propose_head(&harness, &phone).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    assert_eq!(detail["commit"], tampered.as_str());
    let blocked = detail["blocked"].as_str().unwrap_or_default();
    assert!(blocked.contains("does not match the commit"), "{detail}");

    // A key whose entry expired in 2020, on a commit dated inside its
    // validity: git itself accepts it, because it checks the key at the
    // commit's date; the server checks it now and blocks the proposal.
    let backdated = sign_head_ssh(&repo, &old, Some("2019-06-01T12:00:00Z"));
    let allowed_file =
        format!("gpg.ssh.allowedSignersFile={}", allowed.display());
    let git_check = git(
        &repo,
        &["-c", &allowed_file, "verify-commit", &backdated],
        &[],
    );
    assert!(
        git_check.status.success(),
        "git verify-commit judges the key at the commit date: {}",
        String::from_utf8_lossy(&git_check.stderr)
    );
    let detail = propose_head(&harness, &phone).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    let blocked = detail["blocked"].as_str().unwrap_or_default();
    assert!(blocked.contains(&format!("commit {backdated}")), "{detail}");
    assert!(blocked.contains("key has expired"), "{detail}");

    // A key that is not listed.
    let foreign = sign_head_ssh(&repo, &stranger, None);
    let detail = propose_head(&harness, &phone).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    let blocked = detail["blocked"].as_str().unwrap_or_default();
    assert!(blocked.contains(&format!("commit {foreign}")), "{detail}");
    assert!(blocked.contains("no entry of"), "{detail}");
    assert!(blocked.contains("No principal matched"), "{detail}");
    assert!(!blocked.contains("key has expired"), "{detail}");

    // A listed key that is also revoked.
    let revoked_commit = sign_head_ssh(&repo, &revoked, None);
    let detail = propose_head(&harness, &phone).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    let blocked = detail["blocked"].as_str().unwrap_or_default();
    assert!(
        blocked.contains(&format!("commit {revoked_commit}")),
        "{detail}"
    );
    assert!(blocked.contains("which is revoked in"), "{detail}");
}

/// Runs gpg with `home` as its home folder.
fn gpg(home: &Path, args: &[&str]) -> String {
    let output = Command::new("gpg")
        .env("GNUPGHOME", home)
        .args(["--batch", "--yes", "--passphrase", ""])
        .args(args)
        .output()
        .expect("gpg runs");
    assert!(
        output.status.success(),
        "gpg {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Returns the fingerprint of the first key `gpg --list-keys` shows for `user`.
fn gpg_fingerprint(home: &Path, user: &str) -> String {
    let listing = gpg(home, &["--with-colons", "--list-keys", user]);
    listing
        .lines()
        .find_map(|line| line.strip_prefix("fpr:"))
        .and_then(|rest| rest.split(':').find(|field| !field.is_empty()))
        .expect("a fingerprint")
        .to_owned()
}

/// Replaces the head commit by one signed with the OpenPGP key
/// `fingerprint` of `home`; `program` runs gpg.
fn sign_head_openpgp(
    repo: &Path,
    home: &Path,
    program: &Path,
    fingerprint: &str,
) -> String {
    let signing_key = format!("user.signingkey={fingerprint}");
    let gpg_program = format!("gpg.program={}", program.display());
    let home = home.display().to_string();
    let output = git(
        repo,
        &[
            "-c",
            "gpg.format=openpgp",
            "-c",
            &gpg_program,
            "-c",
            &signing_key,
            "commit",
            "--amend",
            "--no-edit",
            "--allow-empty",
            "-S",
        ],
        &[("GNUPGHOME", home.as_str())],
    );
    assert!(
        output.status.success(),
        "signing the commit with gpg failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    common::git_in(repo, &["rev-parse", "HEAD"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openpgp_signatures_use_the_keyring() {
    let mut harness = Harness::prepare(Options::default());
    let home = harness.path("gnupg");
    fs::create_dir(&home).unwrap();
    fs::set_permissions(
        &home,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    gpg(
        &home,
        &[
            "--quick-gen-key",
            "Bob <bob@example.org>",
            "ed25519",
            "sign",
            "1y",
        ],
    );
    // A key that was valid for one day in 2019.
    gpg(
        &home,
        &[
            "--faked-system-time",
            "20190101T000000",
            "--quick-gen-key",
            "Old <old@example.org>",
            "ed25519",
            "sign",
            "1d",
        ],
    );
    let bob = gpg_fingerprint(&home, "bob@example.org");
    let old = gpg_fingerprint(&home, "old@example.org");
    let keyring = harness.path("signers.gpg");
    let exported = Command::new("gpg")
        .env("GNUPGHOME", &home)
        .args(["--batch", "--export", &bob, &old])
        .output()
        .unwrap();
    assert!(exported.status.success());
    fs::write(&keyring, &exported.stdout).unwrap();
    // gpg with the time of 2019-01-01 noon, when the old key was valid.
    let in_2019 = harness.path("gpg-2019");
    fs::write(
        &in_2019,
        "#!/bin/sh\nexec gpg --faked-system-time 20190101T120000 \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(
        &in_2019,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    harness.config.signed_commits = Some(SignedCommitsConfig {
        allowed_signers: None,
        revoked_keys: None,
        gpg_keyring: Some(keyring),
    });
    harness.start_server().await;
    let phone = harness.login(&harness.phone).await;
    let repo = harness.repo();

    let signed = sign_head_openpgp(&repo, &home, Path::new("gpg"), &bob);
    let detail = propose_head(&harness, &phone).await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    assert_eq!(detail["commit"], signed.as_str());

    let expired = sign_head_openpgp(&repo, &home, &in_2019, &old);
    let detail = propose_head(&harness, &phone).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    let blocked = detail["blocked"].as_str().unwrap_or_default();
    assert!(blocked.contains(&format!("commit {expired}")), "{detail}");
    assert!(blocked.contains("expired"), "{detail}");

    // An SSH signature with no allowed signers configured.
    let keys = harness.path("ssh-signers");
    fs::create_dir(&keys).unwrap();
    let alice = Key::generate(&keys, "alice");
    sign_head_ssh(&repo, &alice, None);
    let detail = propose_head(&harness, &phone).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    let blocked = detail["blocked"].as_str().unwrap_or_default();
    assert!(blocked.contains("no allowed_signers file"), "{detail}");
}
