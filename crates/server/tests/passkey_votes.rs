//! Passkey (WebAuthn) votes through the approvals and rejections API,
//! made by core's software authenticator, against the server, real git,
//! Nix builds, `ssh-keygen` signatures, and the stand-in activator that
//! verifies each certificate with core.
//!
//! The browser scenario (`tests/browser.rs`) makes passkey votes in
//! Chromium. This test also covers cases that Chromium's virtual
//! authenticator cannot produce, such as a rejection's assertion sent
//! as an approval or a counter that went back, and needs no browser.

mod common;

use std::fs;

use common::activator::StubActivator;
use common::{HOST, Harness, Key, Options};
use countersign_core::protocol::Request;
use countersign_core::webauthn::testing::TestAuthenticator;
use countersign_core::webauthn::{
    Algorithm, AuthenticatorFlags, decode_base64url, encode_base64url,
};
use countersign_core::{
    Policy, Verdict, VoteSignature, verify_certificate, verify_vote,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ORIGIN: &str = "http://localhost:8470";

fn policy_text(phone: &Key, tablet: &TestAuthenticator) -> String {
    format!(
        "host = \"{HOST}\"\nthreshold = 2\nveto = true\n\
         proposal_lifetime_secs = 3600\n\n\
         [webauthn]\nrp_id = \"localhost\"\norigins = [\"{ORIGIN}\"]\n\n\
         [approvers.phone]\nssh = \"{}\"\n\n\
         [approvers.tablet]\nwebauthn = {}\nuser_verification = true\n",
        phone.public,
        tablet.policy_entry()
    )
}

fn error_text(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_owned()
}

/// The JSON of a passkey vote, as the pages send it.
fn passkey_vote(
    authenticator: &mut TestAuthenticator,
    statement: &[u8],
    verdict: Verdict,
) -> Value {
    let vote = authenticator.vote("ignored", statement, verdict);
    serde_json::to_value(&vote.signature).unwrap()
}

/// The stored signature text of `approver`'s vote on `number`.
fn stored_signature(harness: &Harness, number: u64, approver: &str) -> String {
    let connection = rusqlite::Connection::open(harness.db_path()).unwrap();
    connection
        .query_row(
            "SELECT signature FROM votes WHERE proposal = ?1 AND approver = ?2",
            rusqlite::params![number, approver],
            |row| row.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkey_votes_count_and_reach_the_activator() {
    let mut harness = Harness::prepare(Options::default());
    let mut tablet = TestAuthenticator::new(
        Algorithm::Es256,
        b"tablet",
        "localhost",
        ORIGIN,
    );
    fs::write(harness.policy_path(), policy_text(&harness.phone, &tablet))
        .unwrap();
    harness.start_server().await;
    let policy =
        Policy::from_toml(&fs::read(harness.policy_path()).unwrap()).unwrap();
    let stub = StubActivator::start(
        &harness.socket_path(),
        harness.policy_path(),
        harness.base.clone(),
    );
    let phone = harness.login(&harness.phone).await;
    let number = harness.propose(&phone, None).await;
    let detail = harness.wait_built(&phone, number).await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    let statement = harness.statement(&phone, number).await;
    let approvals = format!("/proposals/{number}/approvals");

    // Refused, each for its own reason, and none of them stored.
    let as_rejection = passkey_vote(&mut tablet, &statement, Verdict::Reject);
    let mut elsewhere = TestAuthenticator::new(
        Algorithm::Es256,
        b"tablet",
        "localhost",
        "http://localhost:9999",
    );
    let other_origin =
        passkey_vote(&mut elsewhere, &statement, Verdict::Approve);
    let mut other_rp = TestAuthenticator::new(
        Algorithm::Es256,
        b"tablet",
        "evil.localhost",
        ORIGIN,
    );
    let other_rp_id =
        passkey_vote(&mut other_rp, &statement, Verdict::Approve);
    tablet.flags = AuthenticatorFlags::USER_PRESENT;
    let without_uv = passkey_vote(&mut tablet, &statement, Verdict::Approve);
    tablet.flags =
        AuthenticatorFlags::USER_PRESENT | AuthenticatorFlags::USER_VERIFIED;
    // The authenticator data of a valid assertion with another counter:
    // the signature no longer covers it.
    let mut forged = passkey_vote(&mut tablet, &statement, Verdict::Approve);
    let mut data = decode_base64url(
        "authenticator_data",
        forged["authenticator_data"].as_str().unwrap(),
    )
    .unwrap();
    data[36] ^= 0x40;
    forged["authenticator_data"] = json!(encode_base64url(&data));
    for (what, signature, status, words) in [
        (
            "a rejection's assertion",
            as_rejection,
            StatusCode::BAD_REQUEST,
            "challenge",
        ),
        (
            "an assertion made on another origin",
            other_origin,
            StatusCode::BAD_REQUEST,
            "origin",
        ),
        (
            "an assertion for another RP ID",
            other_rp_id,
            StatusCode::BAD_REQUEST,
            "relying party",
        ),
        (
            "an assertion without user verification",
            without_uv,
            StatusCode::BAD_REQUEST,
            "user verification",
        ),
        (
            "an assertion whose authenticator data was changed",
            forged,
            StatusCode::BAD_REQUEST,
            "does not verify",
        ),
    ] {
        let (got, body) = harness
            .post(&approvals, Some(&phone), json!({ "signature": signature }))
            .await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(error_text(&body).contains(words), "{what}: {body}");
    }
    let mut stranger = TestAuthenticator::new(
        Algorithm::EdDsa,
        b"stranger",
        "localhost",
        ORIGIN,
    );
    let (got, body) = harness
        .post(
            &approvals,
            Some(&phone),
            json!({ "signature": passkey_vote(
                &mut stranger,
                &statement,
                Verdict::Approve
            ) }),
        )
        .await;
    assert_eq!(got, StatusCode::FORBIDDEN, "{body}");
    assert!(error_text(&body).contains("no approver"), "{body}");
    for malformed in [
        json!({ "kind": "webauthn", "credential_id": "AA" }),
        json!({ "kind": "webauthn", "credential_id": "A+/=",
                "authenticator_data": "", "client_data_json": "",
                "signature": "" }),
        json!(7),
        json!(null),
    ] {
        let (got, body) = harness
            .post(&approvals, Some(&phone), json!({ "signature": malformed }))
            .await;
        assert_eq!(got, StatusCode::BAD_REQUEST, "{malformed}: {body}");
        assert!(!error_text(&body).is_empty(), "{body}");
    }
    assert_eq!(harness.count("votes"), 0);

    // A valid passkey approval counts once, and is stored as the JSON of
    // its vote signature.
    let approval = passkey_vote(&mut tablet, &statement, Verdict::Approve);
    let (got, detail) = harness
        .post(&approvals, Some(&phone), json!({ "signature": approval }))
        .await;
    assert_eq!(got, StatusCode::OK, "{detail}");
    assert_eq!(detail["state"], "awaiting-approval");
    assert_eq!(detail["quorum"]["have"], 1);
    assert_eq!(detail["approvals"][0]["approver"], "tablet");
    let stored: Value =
        serde_json::from_str(&stored_signature(&harness, number, "tablet"))
            .unwrap();
    assert_eq!(stored, approval);
    let deployed_counter = tablet.sign_count;

    // The SSH approval completes the quorum; the certificate carries the
    // passkey vote as a WebAuthn signature, which core verifies.
    let signature = harness.phone.sign("countersign-approve", &statement);
    let (got, body) = harness
        .post(&approvals, Some(&phone), json!({ "signature": signature }))
        .await;
    assert_eq!(got, StatusCode::OK, "{body}");
    let detail = harness
        .wait_for(&phone, number, |detail| detail["state"] != "activating")
        .await;
    assert_eq!(detail["state"], "deployed", "{detail}");
    let certificate = stub
        .requests()
        .into_iter()
        .find_map(|request| match request {
            Request::Activate { certificate, .. } => Some(certificate),
            _ => None,
        })
        .expect("the activator received the certificate");
    let passkey_votes: Vec<_> = certificate
        .approvals
        .iter()
        .filter(|vote| vote.approver == "tablet")
        .collect();
    assert_eq!(passkey_votes.len(), 1, "{certificate:?}");
    assert!(
        matches!(passkey_votes[0].signature, VoteSignature::WebAuthn { .. }),
        "{certificate:?}"
    );
    let now = statement_time(&statement);
    let verified = verify_certificate(&policy, &certificate, now).unwrap();
    assert_eq!(verified.webauthn_counters().len(), 1);
    assert_eq!(verified.webauthn_counters()[0].sign_count, deployed_counter);

    // On the next proposal, an approval whose counter did not grow past
    // the deployed one is refused before it reaches the activator. A
    // rejection by the same passkey then vetoes.
    let mut spec = harness.spec.clone();
    spec.kernel_params.push("quiet".into());
    harness.commit(&spec, "Quiet boot");
    let second = harness.propose(&phone, None).await;
    let detail = harness.wait_built(&phone, second).await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    let statement = harness.statement(&phone, second).await;
    tablet.sign_count = deployed_counter - 1;
    let stale = passkey_vote(&mut tablet, &statement, Verdict::Approve);
    assert_eq!(tablet.sign_count, deployed_counter);
    let (got, body) = harness
        .post(
            &format!("/proposals/{second}/approvals"),
            Some(&phone),
            json!({ "signature": stale }),
        )
        .await;
    assert_eq!(got, StatusCode::CONFLICT, "{body}");
    assert!(error_text(&body).contains("counter"), "{body}");
    // The refused assertion is itself valid: only the counter refused it.
    let stale_vote = countersign_core::Vote {
        approver: "tablet".into(),
        signature: serde_json::from_value(stale).unwrap(),
    };
    verify_vote(&policy, &statement, &stale_vote, Verdict::Approve).unwrap();

    let rejection = passkey_vote(&mut tablet, &statement, Verdict::Reject);
    let (got, detail) = harness
        .post(
            &format!("/proposals/{second}/rejections"),
            Some(&phone),
            json!({ "signature": rejection, "reason": "not tonight" }),
        )
        .await;
    assert_eq!(got, StatusCode::OK, "{detail}");
    assert_eq!(detail["state"], "rejected", "{detail}");
    assert_eq!(detail["rejections"][0]["approver"], "tablet");
    assert_eq!(detail["rejections"][0]["reason"], "not tonight");
}

/// A time inside the statement's validity.
fn statement_time(bytes: &[u8]) -> u64 {
    let statement = countersign_core::Statement::parse(bytes).unwrap();
    statement.created + 1
}

/// Signs `authenticator` in to the pages over HTTP, as the pages' script
/// does, and returns the session cookie (`name=value`).
async fn sign_in(
    harness: &Harness,
    root: &str,
    authenticator: &mut TestAuthenticator,
) -> String {
    let client = &harness.client;
    let response = client
        .post(format!("{root}/sign-in/challenge"))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let options: Value = response.json().await.unwrap();
    let text = options["challenge"].as_str().unwrap().to_owned();
    let challenge: [u8; 32] = decode_base64url("challenge", &text)
        .unwrap()
        .try_into()
        .unwrap();
    let assertion = authenticator.assert(challenge);
    let response = client
        .post(format!("{root}/sign-in"))
        .header("origin", ORIGIN)
        .header("content-type", "application/json")
        .body(
            json!({
                "challenge": text,
                "credential_id": encode_base64url(&assertion.credential_id),
                "authenticator_data":
                    encode_base64url(&assertion.authenticator_data),
                "client_data_json":
                    encode_base64url(&assertion.client_data_json),
                "signature": encode_base64url(&assertion.signature),
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response
        .headers()
        .get("set-cookie")
        .expect("the sign-in sets a cookie")
        .to_str()
        .unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

/// An approver that the policy no longer lists loses its browser
/// session for the API too, as it does for the pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_approver_cookie_ends_for_the_api() {
    let mut harness = Harness::prepare(Options::default());
    let mut tablet = TestAuthenticator::new(
        Algorithm::Es256,
        b"tablet",
        "localhost",
        ORIGIN,
    );
    fs::write(harness.policy_path(), policy_text(&harness.phone, &tablet))
        .unwrap();
    harness.config.web = Some(countersign_server::WebConfig {
        enabled: true,
        public_origin: ORIGIN.to_owned(),
        trusted_proxies: Vec::new(),
    });
    harness.start_server().await;
    let root = harness.url.trim_end_matches("/api/v1").to_owned();
    let cookie = sign_in(&harness, &root, &mut tablet).await;

    let list = format!("{}/proposals", harness.url);
    let with_cookie = || harness.client.get(&list).header("cookie", &cookie);
    assert_eq!(with_cookie().send().await.unwrap().status(), StatusCode::OK);

    // A new policy that does not list tablet.
    fs::write(
        harness.policy_path(),
        format!(
            "host = \"{HOST}\"\nthreshold = 2\n\
             [approvers.phone]\nssh = \"{}\"\n\
             [approvers.laptop]\nssh = \"{}\"\n",
            harness.phone.public, harness.laptop.public
        ),
    )
    .unwrap();
    let response = with_cookie().send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(error_text(&body).contains("no longer"), "{body}");

    // Listing tablet again does not bring the ended session back.
    fs::write(harness.policy_path(), policy_text(&harness.phone, &tablet))
        .unwrap();
    assert_eq!(
        with_cookie().send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

/// A policy that cannot be loaded is reported to visitors who are not
/// signed in without its file name or content, which name the
/// approvers and their keys. The sign-in page, the enrolment page and
/// the API's login all return 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_policy_hidden_from_visitors() {
    let mut harness = Harness::prepare(Options::default());
    harness.config.web = Some(countersign_server::WebConfig {
        enabled: true,
        public_origin: ORIGIN.to_owned(),
        trusted_proxies: Vec::new(),
    });
    harness.start_server().await;
    let secret_line = "approvers-of-the-night = \"secret\"";
    fs::write(harness.policy_path(), format!("host = \n{secret_line}\n"))
        .unwrap();
    let root = harness.url.trim_end_matches("/api/v1").to_owned();
    let policy_file = harness.policy_path().display().to_string();

    let requests = [
        (format!("{root}/sign-in/challenge"), "{}".to_owned()),
        (
            format!("{root}/enrol/challenge"),
            json!({"name": "tablet"}).to_string(),
        ),
        (
            format!("{}/auth/login", harness.url),
            json!({"challenge": "x", "signature": "y"}).to_string(),
        ),
    ];
    for (url, body) in requests {
        let response = harness
            .client
            .post(&url)
            .header("origin", ORIGIN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{url}: {text}");
        assert!(text.contains("server log"), "{url}: {text}");
        assert!(!text.contains(&policy_file), "{url}: {text}");
        assert!(!text.contains("approvers-of-the-night"), "{url}: {text}");
    }
}
