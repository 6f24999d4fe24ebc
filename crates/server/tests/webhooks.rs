//! Forge webhooks and the metrics endpoint against a real server on
//! 127.0.0.1, a real git repository and real Nix builds.

mod common;

use std::fs;

use common::activator::StubActivator;
use common::{Harness, Options, git_in};
use countersign_server::WebhookConfig;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "webhook-secret-5f0c1a7e9b2d4c68";

/// A commit id the payloads claim, which the server must not use.
const CLAIMED: &str = "1111111111111111111111111111111111111111";

#[derive(Clone, Copy, Debug)]
enum Forge {
    GitHub,
    Gitea,
    Forgejo,
    GitLab,
}

impl Forge {
    const ALL: [Forge; 4] =
        [Forge::GitHub, Forge::Gitea, Forge::Forgejo, Forge::GitLab];

    fn path(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::Gitea => "gitea",
            Forge::Forgejo => "forgejo",
            Forge::GitLab => "gitlab",
        }
    }

    /// Builds a push payload with the field names the forge itself sends.
    fn payload(self, git_ref: &str, repository: &str) -> Value {
        let name = repository.rsplit('/').next().unwrap();
        match self {
            Forge::GitHub | Forge::Gitea | Forge::Forgejo => json!({
                "ref": git_ref,
                "before": "2222222222222222222222222222222222222222",
                "after": CLAIMED,
                "commits": [],
                "repository": {
                    "id": 17,
                    "name": name,
                    "full_name": repository,
                    "clone_url": "https://forge.invalid/elsewhere.git",
                },
                "pusher": { "name": "alice" },
                "sender": { "login": "alice" },
            }),
            Forge::GitLab => json!({
                "object_kind": "push",
                "event_name": "push",
                "ref": git_ref,
                "before": "2222222222222222222222222222222222222222",
                "after": CLAIMED,
                "checkout_sha": CLAIMED,
                "user_username": "alice",
                "project": {
                    "id": 17,
                    "name": name,
                    "path_with_namespace": repository,
                    "git_http_url": "https://forge.invalid/elsewhere.git",
                },
                "repository": {
                    "name": name,
                    "url": "https://forge.invalid/elsewhere.git",
                },
                "commits": [],
                "total_commits_count": 0,
            }),
        }
    }

    /// Builds the event, delivery and signature headers for `body`.
    fn headers(
        self,
        body: &[u8],
        secret: &str,
        delivery: &str,
    ) -> Vec<(&'static str, String)> {
        let mac = hmac_hex(secret, body);
        match self {
            Forge::GitHub => vec![
                ("X-GitHub-Event", "push".into()),
                ("X-GitHub-Delivery", delivery.into()),
                ("X-Hub-Signature-256", format!("sha256={mac}")),
            ],
            Forge::Gitea => vec![
                ("X-Gitea-Event", "push".into()),
                ("X-Gitea-Delivery", delivery.into()),
                ("X-Gitea-Signature", mac),
            ],
            // Forgejo sends its own headers and Gitea's.
            Forge::Forgejo => vec![
                ("X-Forgejo-Event", "push".into()),
                ("X-Forgejo-Delivery", delivery.into()),
                ("X-Forgejo-Signature", mac.clone()),
                ("X-Gitea-Event", "push".into()),
                ("X-Gitea-Delivery", delivery.into()),
                ("X-Gitea-Signature", mac),
            ],
            Forge::GitLab => vec![
                ("X-Gitlab-Event", "Push Hook".into()),
                ("X-Gitlab-Event-UUID", delivery.into()),
                ("X-Gitlab-Token", secret.into()),
            ],
        }
    }
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Adds the webhook section (and optionally metrics) to the harness's
/// configuration, with the secret in a file.
fn enable(harness: &mut Harness, metrics: bool) {
    let secret_file = harness.path("webhook-secret");
    fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    harness.config.webhook = Some(WebhookConfig {
        secret_file,
        repository: Some("ops/infra".to_owned()),
    });
    harness.config.metrics = metrics;
}

async fn start(metrics: bool) -> Harness {
    let mut harness = Harness::prepare(Options::default());
    enable(&mut harness, metrics);
    harness.start_server().await;
    harness
}

/// Posts `body` with `headers` to the forge's webhook and returns the
/// status and the JSON response.
async fn deliver(
    harness: &Harness,
    forge: &str,
    body: &[u8],
    headers: &[(&str, String)],
) -> (StatusCode, Value) {
    let mut request = harness
        .client
        .post(format!("{}/webhooks/{forge}", harness.url))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("the delivery is sent");
    let status = response.status();
    let body = response.json::<Value>().await.expect("a JSON response");
    (status, body)
}

/// Sends a correctly signed push delivery of `git_ref`.
async fn push(
    harness: &Harness,
    forge: Forge,
    git_ref: &str,
    delivery: &str,
) -> (StatusCode, Value) {
    let body = forge.payload(git_ref, "ops/infra").to_string();
    let headers = forge.headers(body.as_bytes(), SECRET, delivery);
    deliver(harness, forge.path(), body.as_bytes(), &headers).await
}

async fn metrics(harness: &Harness) -> (StatusCode, String) {
    let root = harness.url.trim_end_matches("/api/v1");
    let response = harness
        .client
        .get(format!("{root}/metrics"))
        .send()
        .await
        .expect("the request is sent");
    let status = response.status();
    (status, response.text().await.unwrap())
}

fn status_text(body: &Value) -> &str {
    body["status"]
        .as_str()
        .unwrap_or_else(|| panic!("no status text: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_forge_proposes_the_branch_head_once() {
    let harness = start(true).await;
    let phone = harness.login(&harness.phone).await;
    let mut numbers = Vec::new();
    for (index, forge) in Forge::ALL.into_iter().enumerate() {
        if index > 0 {
            git_in(
                &harness.repo(),
                &["commit", "--allow-empty", "-m", &format!("Push {index}")],
            );
        }
        let head = harness.head();
        let delivery = format!("delivery-{index}");
        let (status, body) =
            push(&harness, forge, "refs/heads/main", &delivery).await;
        assert_eq!(status, StatusCode::CREATED, "{forge:?}: {body}");
        let number = body["proposal"].as_u64().unwrap();
        assert_eq!(body["commit"], head.as_str(), "{forge:?}: {body}");
        assert_eq!(harness.count("proposals"), index as u64 + 1);

        // The same delivery again, and a second delivery of the same
        // push, make no second proposal.
        for again in [delivery.as_str(), "another-delivery"] {
            let (status, body) =
                push(&harness, forge, "refs/heads/main", again).await;
            assert_eq!(status, StatusCode::OK, "{forge:?}: {body}");
            assert_eq!(
                status_text(&body),
                format!("already proposed as {number}")
            );
        }
        assert_eq!(harness.count("proposals"), index as u64 + 1);
        numbers.push(number);
    }
    assert_eq!(numbers, [1, 2, 3, 4]);

    let last = *numbers.last().unwrap();
    let detail = harness.wait_built(&phone, last).await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    assert_eq!(detail["commit"], harness.head().as_str());
    assert_ne!(detail["commit"], CLAIMED);
    assert_eq!(detail["requested_by"], "webhook:gitlab");
    // Built and waiting, it still counts as proposed.
    let (status, body) =
        push(&harness, Forge::GitHub, "refs/heads/main", "late").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(status_text(&body), format!("already proposed as {last}"));

    let (status, text) = metrics(&harness).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        text.contains(
            "countersign_proposals{state=\"awaiting-approval\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("# TYPE countersign_proposals gauge\n"),
        "{text}"
    );
    assert!(text.contains("countersign_approvals_total 0\n"), "{text}");
    assert!(
        text.contains(
            "countersign_activations_total{outcome=\"activated\"} 0"
        ),
        "{text}"
    );
    let duration = text
        .lines()
        .find_map(|line| {
            line.strip_prefix("countersign_last_build_duration_seconds ")
        })
        .unwrap_or_else(|| panic!("no build duration: {text}"));
    assert!(duration.parse::<f64>().unwrap() > 0.0, "{text}");
    assert!(!text.contains("countersign_deployed_info{"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_commit_is_not_proposed_again() {
    let harness = start(true).await;
    let stub = StubActivator::start(
        &harness.socket_path(),
        harness.policy_path(),
        harness.base.clone(),
    );
    let phone = harness.login(&harness.phone).await;
    let laptop = harness.login(&harness.laptop).await;
    let (status, body) =
        push(&harness, Forge::Gitea, "refs/heads/main", "first").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let number = body["proposal"].as_u64().unwrap();
    harness.wait_built(&phone, number).await;
    let statement = harness.statement(&phone, number).await;
    let path = format!("/proposals/{number}/approvals");
    for (key, token) in [(&harness.phone, &phone), (&harness.laptop, &laptop)]
    {
        let signature = key.sign("countersign-approve", &statement);
        let (status, detail) = harness
            .post(&path, Some(token), json!({ "signature": signature }))
            .await;
        assert_eq!(status, StatusCode::OK, "{detail}");
    }
    let detail = harness
        .wait_for(&phone, number, |detail| detail["state"] != "activating")
        .await;
    assert_eq!(detail["state"], "deployed", "{detail}");
    drop(stub);

    let (status, body) =
        push(&harness, Forge::Forgejo, "refs/heads/main", "again").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(status_text(&body), format!("already proposed as {number}"));
    assert_eq!(harness.count("proposals"), 1);

    let (status, text) = metrics(&harness).await;
    assert_eq!(status, StatusCode::OK);
    let head = harness.head();
    assert!(
        text.contains(&format!(
            "countersign_deployed_info{{commit=\"{head}\"}} 1\n"
        )),
        "{text}"
    );
    assert!(text.contains("countersign_approvals_total 2\n"), "{text}");
    assert!(
        text.contains(
            "countersign_activations_total{outcome=\"activated\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("countersign_proposals{state=\"deployed\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("countersign_last_deployment_timestamp_seconds "),
        "{text}"
    );

    // A new commit on the branch is proposed.
    git_in(&harness.repo(), &["commit", "--allow-empty", "-m", "Next"]);
    let (status, body) =
        push(&harness, Forge::GitHub, "refs/heads/main", "next").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["commit"], harness.head().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_ignored_deliveries_record_nothing() {
    let mut harness = Harness::prepare(Options::default());
    enable(&mut harness, false);

    // An empty secret file keeps the server from starting.
    let secret_file = harness.path("webhook-secret");
    fs::write(&secret_file, "\n").unwrap();
    let error = match countersign_server::start(harness.config.clone()).await {
        Ok(_) => panic!("the server started with an empty webhook secret"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("webhook secret file"), "{error}");
    assert!(error.contains("is empty"), "{error}");
    fs::write(&secret_file, SECRET).unwrap();
    harness.start_server().await;

    for forge in Forge::ALL {
        let body = forge.payload("refs/heads/main", "ops/infra").to_string();
        let body = body.as_bytes();
        let good = forge.headers(body, SECRET, "d");
        let events: Vec<_> = good
            .iter()
            .filter(|(name, _)| name.ends_with("Event"))
            .cloned()
            .collect();

        // No signature at all.
        let (status, answer) =
            deliver(&harness, forge.path(), body, &events).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{forge:?}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("no signature"),
            "{answer}"
        );

        // Signed with another secret.
        let wrong = forge.headers(body, "some-other-secret", "d");
        let (status, answer) =
            deliver(&harness, forge.path(), body, &wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{forge:?}: {answer}");
        assert!(!answer.to_string().contains(SECRET), "{answer}");

        // Signed correctly, but the body was changed on the way. GitLab
        // sends the secret itself instead of signing the body, so only
        // the other forges can detect this.
        if !matches!(forge, Forge::GitLab) {
            let tampered =
                forge.payload("refs/heads/main", "ops/other").to_string();
            let (status, answer) =
                deliver(&harness, forge.path(), tampered.as_bytes(), &good)
                    .await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{forge:?}: {answer}"
            );
        }

        // An empty and a malformed signature.
        for bad in ["", "sha256=", "not-hex", "sha256=abcd"] {
            let mut headers = events.clone();
            let name = match forge {
                Forge::GitHub => "X-Hub-Signature-256",
                Forge::Gitea => "X-Gitea-Signature",
                Forge::Forgejo => "X-Forgejo-Signature",
                Forge::GitLab => "X-Gitlab-Token",
            };
            headers.push((name, bad.to_owned()));
            let (status, answer) =
                deliver(&harness, forge.path(), body, &headers).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{forge:?} {bad:?}: {answer}"
            );
        }

        // Another branch, a tag and another repository are ignored.
        let (status, answer) =
            push(&harness, forge, "refs/heads/dev", "d").await;
        assert_eq!(status, StatusCode::ACCEPTED, "{forge:?}: {answer}");
        assert_eq!(
            status_text(&answer),
            "ignored: branch dev is not the configured branch main"
        );
        let (status, answer) =
            push(&harness, forge, "refs/tags/v1", "d").await;
        assert_eq!(status, StatusCode::ACCEPTED, "{forge:?}: {answer}");
        assert!(status_text(&answer).starts_with("ignored"), "{answer}");
        let other = forge.payload("refs/heads/main", "ops/other").to_string();
        let headers = forge.headers(other.as_bytes(), SECRET, "d");
        let (status, answer) =
            deliver(&harness, forge.path(), other.as_bytes(), &headers).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{forge:?}: {answer}");
        assert!(
            status_text(&answer).contains("not the configured repository"),
            "{answer}"
        );
    }

    // A signed event that is not a push, and GitHub's ping.
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let mut headers = Forge::GitHub.headers(body, SECRET, "p");
    headers[0].1 = "ping".into();
    let (status, answer) = deliver(&harness, "github", body, &headers).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    headers[0].1 = "issues".into();
    let (status, answer) = deliver(&harness, "github", body, &headers).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");

    let (status, answer) =
        deliver(&harness, "bitbucket", b"{}", &Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

    assert_eq!(harness.count("proposals"), 0);
    assert_eq!(harness.count("audit"), 0);

    // Metrics are off unless configured.
    let (status, _) = metrics(&harness).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
