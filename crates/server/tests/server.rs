//! The server against real git, Nix, `ssh-keygen` signatures, SQLite and
//! HTTP on 127.0.0.1.

mod common;

use std::fs;
use std::time::Duration;

use common::activator::StubActivator;
use common::{Harness, Options, git_in, policy_text};
use countersign_core::audit::{Anchor, AuditError};
use countersign_core::protocol::Request;
use countersign_core::{Sha256Digest, Statement, verify_certificate};
use countersign_server::{AuditVerifyError, verify_audit};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn error_text(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_real_signature() {
    let harness = Harness::start(Options::default()).await;
    let (status, body) =
        harness.request(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "status": "ok" }));

    let (status, challenge) =
        harness.post("/auth/challenge", None, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let text = challenge["challenge"].as_str().unwrap().to_owned();
    assert_eq!(text.len(), 64);
    assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
    let signature = harness.phone.sign("countersign-login", text.as_bytes());
    let (status, body) = harness
        .post(
            "/auth/login",
            None,
            json!({ "challenge": text, "signature": signature }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["approver"], "phone");
    let token = body["token"].as_str().unwrap();
    let (status, body) = harness.get("/status", token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["host"], "demo");
    assert_eq!(body["current_system"], harness.base.as_str());

    // A challenge is single-use.
    let (status, body) = harness
        .post(
            "/auth/login",
            None,
            json!({ "challenge": text, "signature": signature }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_text(&body).contains("already used"), "{body}");

    let (status, body) = harness.get("/status", "not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_text(&body).contains("log in"), "{body}");
    let (status, _) =
        harness.request(Method::GET, "/status", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rejects_wrong_namespace_and_stranger() {
    let harness = Harness::start(Options::default()).await;
    for namespace in ["countersign-approve", "git", "file"] {
        let (_, challenge) =
            harness.post("/auth/challenge", None, json!({})).await;
        let text = challenge["challenge"].as_str().unwrap();
        let signature = harness.phone.sign(namespace, text.as_bytes());
        let (status, body) = harness
            .post(
                "/auth/login",
                None,
                json!({ "challenge": text, "signature": signature }),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{namespace}: {body}");
        assert!(error_text(&body).contains("namespace"), "{body}");
    }

    let (_, challenge) =
        harness.post("/auth/challenge", None, json!({})).await;
    let text = challenge["challenge"].as_str().unwrap();
    let signature =
        harness.stranger.sign("countersign-login", text.as_bytes());
    let (status, body) = harness
        .post(
            "/auth/login",
            None,
            json!({ "challenge": text, "signature": signature }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        error_text(&body).contains("belongs to no approver"),
        "{body}"
    );
}

/// A client that requests login challenges without end cannot use up
/// the server's room for them, so an approver at another address still
/// logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_use_up_login_challenges() {
    let harness = Harness::start(Options::default()).await;
    let flooder = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let challenge_url = format!("{}/auth/challenge", harness.url);
    let started = std::time::Instant::now();
    let mut issued = 0;
    // More challenges than the server keeps open, paced by its rate
    // limit, and bounded in time.
    while issued < 1100 && started.elapsed().as_secs() < 90 {
        let response = flooder
            .post(&challenge_url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("the request is sent");
        match response.status() {
            StatusCode::OK => issued += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            // The server now rejects every client's challenge request.
            StatusCode::SERVICE_UNAVAILABLE => break,
            other => panic!("challenge request {issued} returned {other}"),
        }
    }
    assert!(issued >= 1024, "only {issued} challenges were asked for");

    // The approver at 127.0.0.1 still gets a challenge and logs in.
    let token = harness.login(&harness.phone).await;
    let (status, body) = harness.get("/status", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_token_only_proposes() {
    let harness = Harness::start(Options::default()).await;
    let trigger = harness.trigger_token.clone();
    let number = harness.propose(&trigger, None).await;
    assert_eq!(number, 1);

    for path in ["/proposals", "/proposals/1", "/proposals/1/log", "/status"] {
        let (status, body) = harness.get(path, &trigger).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(error_text(&body).contains("only create proposals"));
    }

    let phone = harness.login(&harness.phone).await;
    let detail = harness.wait_built(&phone, number).await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    assert_eq!(detail["requested_by"], "trigger");
    let statement = harness.statement(&phone, number).await;
    let signature = harness.phone.sign("countersign-approve", &statement);
    let votes_before = harness.count("votes");
    let (status, body) = harness
        .post(
            "/proposals/1/approvals",
            Some(&trigger),
            json!({ "signature": signature }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(harness.count("votes"), votes_before);

    let (status, _) = harness
        .post("/proposals", Some("wrong-trigger-token"), json!({}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposal_awaits_approval_with_statement_and_diff() {
    let harness = Harness::start(Options::default()).await;
    let token = harness.login(&harness.phone).await;
    let number = harness.propose(&token, None).await;
    let detail = harness.wait_built(&token, number).await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");

    let bytes = harness.statement(&token, number).await;
    let statement =
        Statement::parse(&bytes).expect("the statement is canonical");
    let head = harness.head();
    assert_eq!(statement.host, "demo");
    assert_eq!(statement.proposal, number);
    assert_eq!(statement.action.as_str(), "switch");
    assert_eq!(statement.source.as_ref().unwrap().commit, head);
    assert_eq!(statement.source.as_ref().unwrap().branch, "main");
    assert_eq!(
        statement.source.as_ref().unwrap().repository,
        harness.repo().display().to_string()
    );
    assert!(
        statement
            .source
            .as_ref()
            .unwrap()
            .nar_hash
            .starts_with("sha256-")
    );
    assert_eq!(statement.base, harness.base);
    assert_ne!(statement.target, harness.base);
    assert_eq!(
        statement.attribute,
        "nixosConfigurations.demo.config.system.build.toplevel"
    );
    assert_eq!(statement.policy_sha256, harness.policy_sha256());
    assert_eq!(statement.expires - statement.created, 3600);
    assert_eq!(statement.nonce.len(), 32);
    assert_eq!(
        detail["statement_sha256"],
        Sha256Digest::of(&bytes).to_hex()
    );
    assert_eq!(detail["commit"], head.as_str());
    assert_eq!(detail["subject"], "Update hello, add jq");
    assert_eq!(detail["target"], statement.target.as_str());
    assert_eq!(detail["quorum"]["have"], 0);
    assert_eq!(detail["quorum"]["threshold"], 2);

    let (status, diff) = harness
        .get_bytes(&format!("/proposals/{number}/diff"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Sha256Digest::of(&diff), statement.diff_sha256);
    let document: Value = serde_json::from_slice(&diff).unwrap();
    assert!(document["packages"].is_object(), "{document}");
    assert!(document.to_string().contains("jq"), "the diff names jq");

    // The target stays alive through the GC root in the state folder.
    let root = harness
        .config
        .state_dir
        .join("gcroots")
        .join(number.to_string());
    assert_eq!(
        fs::read_link(root).unwrap().to_str().unwrap(),
        statement.target.as_str()
    );

    let (status, log) = harness
        .get_bytes(&format!("/proposals/{number}/log"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("countersign: built"), "{log}");

    let (status, list) = harness.get("/proposals", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["proposals"][0]["number"], number);
    assert_eq!(
        harness.audit_kinds(number),
        ["proposal-created", "proposal-built"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_build_keeps_log_without_statement() {
    let harness = Harness::start(Options::default()).await;
    let mut broken = harness.spec.clone();
    broken.fail_build = true;
    harness.commit(&broken, "Break the build");
    let token = harness.login(&harness.laptop).await;
    let number = harness.propose(&token, None).await;
    let detail = harness.wait_built(&token, number).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    let error = detail["error"].as_str().unwrap();
    assert!(error.contains("building"), "{error}");
    assert!(detail["statement_sha256"].is_null());
    assert_eq!(detail["commit"], harness.head().as_str());

    let (status, body) = harness
        .request(
            Method::GET,
            &format!("/proposals/{number}/statement"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_text(&body).contains("failed"), "{body}");
    let (status, _) = harness
        .get_bytes(&format!("/proposals/{number}/diff"), &token)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, log) = harness
        .get_bytes(&format!("/proposals/{number}/log"), &token)
        .await;
    assert_eq!(status, StatusCode::OK);
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("countersign: building"), "{log}");
    assert!(log.contains("countersign: failed"), "{log}");
    assert_eq!(
        harness.audit_kinds(number),
        ["proposal-created", "proposal-failed"]
    );
}

/// A build that outlives `[nix] build_timeout_secs` is stopped and its
/// proposal fails with a reason that names the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_build_stops_at_time_limit() {
    let mut harness = Harness::prepare(Options::default());
    harness.config.nix.build_timeout_secs = 3;
    harness.start_server().await;
    let mut slow = harness.spec.clone();
    slow.build_delay_secs = 600;
    harness.commit(&slow, "Build for ten minutes");
    let token = harness.login(&harness.laptop).await;
    let number = harness.propose(&token, None).await;
    let detail = harness.wait_built(&token, number).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    let error = detail["error"].as_str().unwrap();
    assert!(error.contains("stopped after 3 seconds"), "{error}");
    assert!(error.contains("build_timeout_secs"), "{error}");
    assert_eq!(
        harness.audit_kinds(number),
        ["proposal-created", "proposal-failed"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_change_nothing() {
    let harness = Harness::start(Options::default()).await;
    let token = harness.login(&harness.phone).await;
    let number = harness.propose(&token, None).await;
    harness.wait_built(&token, number).await;
    let statement = harness.statement(&token, number).await;
    let approvals = format!("{}/proposals/{number}/approvals", harness.url);
    let audit_before = harness.count("audit");
    let votes_before = harness.count("votes");

    let send = |body: Vec<u8>, content_type: &'static str| {
        harness
            .client
            .post(&approvals)
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let json_of = |response: reqwest::Response| async move {
        let status = response.status();
        let body: Value = response.json().await.expect("errors are JSON");
        (status, body)
    };

    let (status, body) = json_of(
        send(b"{\"signature\": ".to_vec(), "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_text(&body).contains("not valid JSON"), "{body}");

    let (status, body) = json_of(
        send(b"{\"signature\": 1}".to_vec(), "text/plain")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(error_text(&body).contains("Content-Type"), "{body}");

    let (status, body) = json_of(
        send(b"{\"sig\": \"x\"}".to_vec(), "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(error_text(&body).contains("sig"), "{body}");

    let mut oversized = b"{\"signature\": \"".to_vec();
    oversized.extend(std::iter::repeat_n(b'a', 300 * 1024));
    oversized.extend(b"\"}");
    let (status, body) =
        json_of(send(oversized, "application/json").await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(error_text(&body).contains("262144"), "{body}");

    let (status, body) = harness.get("/proposals/99", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({ "error": "proposal 99 not found" }));
    let signature = harness.phone.sign("countersign-approve", &statement);
    let (status, body) = harness
        .post(
            "/proposals/99/approvals",
            Some(&token),
            json!({ "signature": signature }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({ "error": "proposal 99 not found" }));
    let (status, body) = harness.get("/proposals/abc", &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_text(&body).contains("invalid proposal number"),
        "{body}"
    );
    let (status, body) = harness.get("/nothing-here", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_text(&body).contains("no endpoint"), "{body}");

    // A signature over other bytes, a signature in the rejection
    // namespace, and text that is no signature at all.
    let mut other = statement.clone();
    other.insert(0, b' ');
    let cases = [
        (
            harness.phone.sign("countersign-approve", &other),
            "does not verify",
        ),
        (
            harness.phone.sign("countersign-reject", &statement),
            "namespace",
        ),
        ("not a signature".to_owned(), "not an armored SSH signature"),
    ];
    for (signature, expected) in cases {
        let (status, body) = harness
            .post(
                &format!("/proposals/{number}/approvals"),
                Some(&token),
                json!({ "signature": signature }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(error_text(&body).contains(expected), "{expected}: {body}");
    }

    // An approval made with a key outside the policy.
    let signature = harness.stranger.sign("countersign-approve", &statement);
    let (status, body) = harness
        .post(
            &format!("/proposals/{number}/approvals"),
            Some(&token),
            json!({ "signature": signature }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        error_text(&body).contains("belongs to no approver"),
        "{body}"
    );

    assert_eq!(harness.count("audit"), audit_before);
    assert_eq!(harness.count("votes"), votes_before);
    let (_, detail) =
        harness.get(&format!("/proposals/{number}"), &token).await;
    assert_eq!(detail["state"], "awaiting-approval");
    verify_audit(&harness.db_path(), None).expect("the audit log verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_vetoes_proposal() {
    let harness = Harness::start(Options::default()).await;
    let token = harness.login(&harness.phone).await;
    let number = harness.propose(&token, None).await;
    harness.wait_built(&token, number).await;
    let statement = harness.statement(&token, number).await;

    let approval = harness.phone.sign("countersign-approve", &statement);
    let (status, detail) = harness
        .post(
            &format!("/proposals/{number}/approvals"),
            Some(&token),
            json!({ "signature": approval }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["quorum"]["have"], 1);

    let rejection = harness.laptop.sign("countersign-reject", &statement);
    let (status, detail) = harness
        .post(
            &format!("/proposals/{number}/rejections"),
            Some(&token),
            json!({ "signature": rejection, "reason": "jq is not needed" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["state"], "rejected");
    assert_eq!(detail["rejections"][0]["approver"], "laptop");
    assert_eq!(detail["rejections"][0]["reason"], "jq is not needed");

    let approval = harness.laptop.sign("countersign-approve", &statement);
    let (status, body) = harness
        .post(
            &format!("/proposals/{number}/approvals"),
            Some(&token),
            json!({ "signature": approval }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_text(&body).contains("is rejected"), "{body}");
    assert_eq!(
        harness.audit_kinds(number),
        [
            "proposal-created",
            "proposal-built",
            "approval",
            "rejection",
            "proposal-rejected"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_proposal_supersedes_older() {
    let harness = Harness::start(Options::default()).await;
    let token = harness.login(&harness.phone).await;
    let first = harness.propose(&token, None).await;
    harness.wait_built(&token, first).await;
    let mut next = harness.spec.clone();
    next.set_etc("motd", "welcome\n");
    harness.commit(&next, "Add a message of the day");
    let second = harness.propose(&token, None).await;
    assert_eq!(second, first + 1);
    let detail = harness.wait_built(&token, second).await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");

    let (_, old) = harness.get(&format!("/proposals/{first}"), &token).await;
    assert_eq!(old["state"], "superseded", "{old}");
    assert_eq!(old["error"], format!("superseded by proposal {second}"));
    assert_eq!(
        harness.audit_kinds(first),
        ["proposal-created", "proposal-built", "proposal-superseded"]
    );

    let statement = harness.statement(&token, first).await;
    let signature = harness.phone.sign("countersign-approve", &statement);
    let (status, body) = harness
        .post(
            &format!("/proposals/{first}/approvals"),
            Some(&token),
            json!({ "signature": signature }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_text(&body).contains("superseded"), "{body}");

    // The superseded system's GC root is released within a few seconds,
    // and the root of the proposal awaiting approval stays.
    let roots = harness.config.state_dir.join("gcroots");
    let first_root = roots.join(first.to_string());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while first_root.symlink_metadata().is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the GC root {} of the superseded proposal stays",
            first_root.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        roots.join(second.to_string()).symlink_metadata().is_ok(),
        "the GC root of the proposal awaiting approval stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_sends_certificate_to_activator() {
    let harness = Harness::start(Options::default()).await;
    let stub = StubActivator::start(
        &harness.socket_path(),
        harness.policy_path(),
        harness.base.clone(),
    );
    stub.state.lock().unwrap().last_proposal = 6;
    let phone = harness.login(&harness.phone).await;
    let laptop = harness.login(&harness.laptop).await;
    let number = harness.propose(&phone, None).await;
    assert_eq!(number, 7, "numbering continues after the activator's last");
    harness.wait_built(&phone, number).await;
    let statement = harness.statement(&phone, number).await;
    let path = format!("/proposals/{number}/approvals");

    // The same approval twice counts once.
    let approval = harness.phone.sign("countersign-approve", &statement);
    for _ in 0..2 {
        let (status, detail) = harness
            .post(&path, Some(&phone), json!({ "signature": approval }))
            .await;
        assert_eq!(status, StatusCode::OK, "{detail}");
        assert_eq!(detail["state"], "awaiting-approval");
        assert_eq!(detail["quorum"]["have"], 1);
        assert_eq!(detail["approvals"].as_array().unwrap().len(), 1);
    }

    let approval = harness.laptop.sign("countersign-approve", &statement);
    let (status, detail) = harness
        .post(&path, Some(&laptop), json!({ "signature": approval }))
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    let detail = harness
        .wait_for(&phone, number, |detail| detail["state"] != "activating")
        .await;
    assert_eq!(detail["state"], "deployed", "{detail}");
    let events = detail["activation"].as_array().unwrap();
    assert_eq!(events.last().unwrap()["event"], "finished", "{detail}");
    assert_eq!(events.last().unwrap()["outcome"], "activated");

    let requests = stub.requests();
    let certificate = requests
        .iter()
        .find_map(|request| match request {
            Request::Activate {
                certificate,
                audit_head,
                ..
            } => Some((certificate.clone(), *audit_head)),
            Request::Status
            | Request::Prepare { .. }
            | Request::Confirm { .. } => None,
        })
        .expect("the stub received an activation request");
    let parsed = Statement::parse(&statement).unwrap();
    let prepares: Vec<&Request> = requests
        .iter()
        .filter(|request| matches!(request, Request::Prepare { .. }))
        .collect();
    assert_eq!(
        prepares,
        [&Request::Prepare {
            source: parsed.source.as_ref().unwrap().store_path.clone(),
            nar_hash: parsed.source.as_ref().unwrap().nar_hash.clone(),
            attribute: parsed.attribute.clone(),
        }],
        "the built proposal is prepared once, with its statement's source"
    );
    let policy = countersign_core::Policy::from_toml(
        &fs::read(harness.policy_path()).unwrap(),
    )
    .unwrap();
    let now = statement_now(&statement);
    let verified = verify_certificate(&policy, &certificate.0, now).unwrap();
    assert_eq!(verified.statement_bytes(), statement.as_slice());
    assert_eq!(verified.approvers().len(), 2);

    // The audit head sent along is the activation-requested entry, and
    // the log verifies against it.
    let head = certificate.1.expect("an audit head is sent");
    let summary = verify_audit(
        &harness.db_path(),
        Some(Anchor {
            seq: head.seq,
            hash: head.hash,
        }),
    )
    .unwrap();
    assert!(summary.entries > head.seq);
    assert_eq!(
        harness.audit_kinds(number),
        [
            "proposal-created",
            "proposal-built",
            "approval",
            "approval",
            "activation-requested",
            "activation-finished"
        ]
    );
    let (_, status) = harness.get("/status", &phone).await;
    assert_eq!(status["deployed_commit"], harness.head().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_target_mismatch_is_recorded() {
    let harness = Harness::start(Options::default()).await;
    let stub = StubActivator::start(
        &harness.socket_path(),
        harness.policy_path(),
        harness.base.clone(),
    );
    // The stand-in answers every prepare request with the base, which is
    // never the target of a proposal.
    stub.state.lock().unwrap().prepare_target = Some(harness.base.clone());
    let phone = harness.login(&harness.phone).await;
    let number = harness.propose(&phone, None).await;
    let detail = harness
        .wait_for(&phone, number, |detail| !detail["error"].is_null())
        .await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    let error = detail["error"].as_str().unwrap();
    assert!(error.contains(harness.base.as_str()), "{error}");
    assert!(error.contains("will refuse"), "{error}");

    let statement =
        Statement::parse(&harness.statement(&phone, number).await).unwrap();
    let requests = stub.requests();
    assert!(
        requests.contains(&Request::Prepare {
            source: statement.source.as_ref().unwrap().store_path.clone(),
            nar_hash: statement.source.as_ref().unwrap().nar_hash.clone(),
            attribute: statement.attribute.clone(),
        }),
        "{requests:?}"
    );
    assert_eq!(
        harness.audit_kinds(number),
        ["proposal-created", "proposal-built", "evaluation-mismatch"]
    );
    verify_audit(&harness.db_path(), None).expect("the audit log verifies");
}

/// A time inside the statement's validity.
fn statement_now(bytes: &[u8]) -> u64 {
    let statement = Statement::parse(bytes).unwrap();
    statement.created + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_chain_verifies_and_detects_tampering() {
    let harness = Harness::start(Options::default()).await;
    let token = harness.login(&harness.phone).await;
    let number = harness.propose(&token, None).await;
    harness.wait_built(&token, number).await;
    let statement = harness.statement(&token, number).await;
    let approval = harness.phone.sign("countersign-approve", &statement);
    harness
        .post(
            &format!("/proposals/{number}/approvals"),
            Some(&token),
            json!({ "signature": approval }),
        )
        .await;

    let summary = verify_audit(&harness.db_path(), None).unwrap();
    assert_eq!(summary.entries, 3);
    let head = summary.head.unwrap();
    assert_eq!(head.seq, 3);
    verify_audit(&harness.db_path(), Some(head)).unwrap();

    // The live database rejects changes to the log.
    let live = rusqlite::Connection::open(harness.db_path()).unwrap();
    let update =
        live.execute("UPDATE audit SET body = x'00' WHERE seq = 2", []);
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = live.execute("DELETE FROM audit WHERE seq = 3", []);
    assert!(delete.unwrap_err().to_string().contains("append-only"));

    // A copy without the triggers can be altered, and verification
    // finds the altered entry.
    let copy = harness.path("tampered.db");
    live.execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    let tampered = rusqlite::Connection::open(&copy).unwrap();
    tampered
        .execute_batch(
            "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;",
        )
        .unwrap();
    let body: Vec<u8> = tampered
        .query_row("SELECT body FROM audit WHERE seq = 2", [], |row| {
            row.get(0)
        })
        .unwrap();
    let altered = String::from_utf8(body)
        .unwrap()
        .replace("proposal-built", "proposal-built!");
    tampered
        .execute(
            "UPDATE audit SET body = ?1 WHERE seq = 2",
            [altered.as_bytes()],
        )
        .unwrap();
    let error = verify_audit(&copy, None).unwrap_err();
    assert!(
        matches!(
            error,
            AuditVerifyError::Broken {
                error: AuditError::Altered(2),
                ..
            }
        ),
        "{error}"
    );

    // A cut tail verifies on its own but not against the recorded head.
    let cut = harness.path("cut.db");
    live.execute("VACUUM INTO ?1", [cut.to_str().unwrap()])
        .unwrap();
    let cut_connection = rusqlite::Connection::open(&cut).unwrap();
    cut_connection
        .execute_batch(
            "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = 3;",
        )
        .unwrap();
    verify_audit(&cut, None).expect("a shorter chain is consistent");
    let error = verify_audit(&cut, Some(head)).unwrap_err();
    assert!(
        matches!(
            error,
            AuditVerifyError::Broken {
                error: AuditError::Truncated { .. },
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_fails_interrupted_build_and_resolves_activation() {
    let mut harness = Harness::start(Options::default()).await;
    harness.stop_server().await;
    // A stopped server's log can be verified too.
    let summary = verify_audit(&harness.db_path(), None).unwrap();
    assert_eq!(summary.entries, 0);
    let target =
        "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-demo-2";
    {
        // What a kill -9 leaves: a proposal building; one activating that
        // the activator accepted; one it has not accepted, sent just now
        // (it may still be verifying); one it has not accepted, sent long
        // ago.
        let connection =
            rusqlite::Connection::open(harness.db_path()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        connection
            .execute_batch(&format!(
                "INSERT INTO proposals (number, state, requested_by, created, updated) \
                 VALUES (1, 'building', 'trigger', 1, 1);
                 INSERT INTO proposals (number, state, requested_by, commit_id, target, created, updated) \
                 VALUES (2, 'activating', 'trigger', '{head}', '{target}', 1, 1);
                 INSERT INTO proposals (number, state, requested_by, target, created, updated) \
                 VALUES (3, 'activating', 'trigger', '{target}', 1, {now});
                 INSERT INTO proposals (number, state, requested_by, target, created, updated) \
                 VALUES (4, 'activating', 'trigger', '{target}', 1, 1);",
                head = harness.head()
            ))
            .unwrap();
    }
    let stub = StubActivator::start(
        &harness.socket_path(),
        harness.policy_path(),
        countersign_core::StorePath::parse(target).unwrap(),
    );
    stub.state.lock().unwrap().last_proposal = 2;
    harness.start_server().await;

    let token = harness.login(&harness.phone).await;
    let (_, detail) = harness.get("/proposals/1", &token).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    assert_eq!(
        detail["error"],
        "interrupted by a server restart; propose again"
    );
    assert_eq!(harness.audit_kinds(1), ["proposal-failed"]);
    let (_, detail) = harness.get("/proposals/2", &token).await;
    assert_eq!(detail["state"], "deployed", "{detail}");
    assert_eq!(harness.audit_kinds(2), ["activation-finished"]);
    let (_, detail) = harness.get("/proposals/3", &token).await;
    assert_eq!(detail["state"], "activating", "{detail}");
    assert!(harness.audit_kinds(3).is_empty());
    let (_, detail) = harness.get("/proposals/4", &token).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    let error = detail["error"].as_str().unwrap();
    assert!(error.contains("did not accept proposal 4"), "{error}");
    assert_eq!(harness.audit_kinds(4), ["activation-finished"]);

    // New proposals continue after the recovered ones.
    let number = harness.propose(&token, None).await;
    assert_eq!(number, 5);
    verify_audit(&harness.db_path(), None).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_policy_invalidates_votes() {
    let harness = Harness::start(Options::default()).await;
    let token = harness.login(&harness.phone).await;
    let number = harness.propose(&token, None).await;
    harness.wait_built(&token, number).await;
    let statement = harness.statement(&token, number).await;

    let options = Options {
        threshold: 1,
        ..Options::default()
    };
    fs::write(
        harness.policy_path(),
        policy_text(&options, &harness.phone, &harness.laptop),
    )
    .unwrap();
    let votes_before = harness.count("votes");
    let approval = harness.phone.sign("countersign-approve", &statement);
    let (status, body) = harness
        .post(
            &format!("/proposals/{number}/approvals"),
            Some(&token),
            json!({ "signature": approval }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_text(&body).contains("policy in force"), "{body}");
    assert_eq!(harness.count("votes"), votes_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_proposal_takes_no_votes() {
    let harness = Harness::start(Options::default()).await;
    let token = harness.login(&harness.phone).await;
    let first = harness.propose(&token, None).await;
    harness.wait_built(&token, first).await;
    let statement = harness.statement(&token, first).await;

    let connection = rusqlite::Connection::open(harness.db_path()).unwrap();
    connection
        .execute(
            "UPDATE proposals SET expires = 1 WHERE number = ?1",
            [first],
        )
        .unwrap();
    let approval = harness.phone.sign("countersign-approve", &statement);
    let (status, body) = harness
        .post(
            &format!("/proposals/{first}/approvals"),
            Some(&token),
            json!({ "signature": approval }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_text(&body).contains("expired"), "{body}");
    let (_, detail) =
        harness.get(&format!("/proposals/{first}"), &token).await;
    assert_eq!(detail["state"], "expired");
    assert_eq!(detail["approvals"].as_array().unwrap().len(), 0);

    // The periodic task marks expiry without any vote.
    let second = harness.propose(&token, None).await;
    harness.wait_built(&token, second).await;
    connection
        .execute(
            "UPDATE proposals SET expires = 1 WHERE number = ?1",
            [second],
        )
        .unwrap();
    let detail = harness
        .wait_for(&token, second, |detail| {
            detail["state"] != "awaiting-approval"
        })
        .await;
    assert_eq!(detail["state"], "expired", "{detail}");
    assert_eq!(
        harness.audit_kinds(second),
        ["proposal-created", "proposal-built", "proposal-expired"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rev_must_be_on_branch() {
    let harness = Harness::start(Options::default()).await;
    let token = harness.login(&harness.phone).await;

    // An older commit of the branch can be proposed.
    let number = harness.propose(&token, Some(&harness.base_commit)).await;
    let detail = harness.wait_built(&token, number).await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    assert_eq!(detail["commit"], harness.base_commit.as_str());
    assert_eq!(detail["target"], harness.base.as_str());

    // A commit of another branch cannot.
    let repo = harness.repo();
    git_in(&repo, &["checkout", "--quiet", "-b", "side"]);
    let mut side = harness.spec.clone();
    side.set_etc("motd", "side branch\n");
    let side_commit = harness.commit(&side, "Side change");
    git_in(&repo, &["checkout", "--quiet", "main"]);
    let number = harness.propose(&token, Some(&side_commit)).await;
    let detail = harness.wait_built(&token, number).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    // The mirror fetches only the configured branch, so the commit is
    // either unknown to it or found off the branch.
    let error = detail["error"].as_str().unwrap();
    assert!(error.contains(&side_commit), "{error}");
    assert!(error.contains("not a commit"), "{error}");

    // A commit the mirror still holds (pinned when it was fetched into
    // the store) but that the rewritten branch no longer contains.
    git_in(&repo, &["checkout", "--quiet", "--orphan", "rewritten"]);
    let rewritten = harness.commit(&harness.spec, "Start over");
    git_in(&repo, &["branch", "--quiet", "-M", "rewritten", "main"]);
    assert_eq!(harness.head(), rewritten);
    let number = harness.propose(&token, Some(&harness.base_commit)).await;
    let detail = harness.wait_built(&token, number).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    let error = detail["error"].as_str().unwrap();
    assert!(error.contains("is not on branch main"), "{error}");

    let (status, body) = harness
        .post(
            "/proposals",
            Some(&token),
            json!({ "rev": "--upload-pack=x" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_text(&body).contains("invalid rev"), "{body}");
}
