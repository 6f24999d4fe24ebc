//! Latency of the forge path on the demo system, in the optimised build.
//! It runs from sending a signed push webhook to the server until the
//! "awaits approval" notification arrives at an ntfy stand-in on
//! 127.0.0.1. The time the server measured inside Nix (fetching the
//! source into the store and building the toplevel) is subtracted.
//!
//! Each round commits a new kernel parameter, signed with an SSH key, so
//! that Nix builds a new toplevel every time, as after a real push. The
//! server runs in this process with the CI gate, commit statuses, signed
//! commits and notifications on, and the stand-in activator of the
//! server tests on its socket.
//!
//! Run with `scripts/bench-forge`; results go to stdout.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/recorder.rs"]
mod recorder;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::activator::StubActivator;
use common::{Harness, Key, Options};
use countersign_server::{
    CiConfig, CommitStatusConfig, ForgeApi, NotifyConfig, NotifyEvent,
    NtfyConfig, SignedCommitsConfig, WebhookConfig,
};
use hmac::{Hmac, KeyInit, Mac};
use recorder::Recorder;
use serde_json::json;
use sha2::Sha256;

const ROUNDS: usize = 7;
const SECRET: &str = "bench-webhook-secret-7d1e";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(run());
}

struct Round {
    /// Webhook sent until the notification arrived.
    total: Duration,
    /// Webhook sent until its response arrived.
    answered: Duration,
    /// Nix fetch and build, as the server's build log reports them.
    nix: Duration,
    git: Duration,
    diff: Duration,
}

async fn run() {
    let ntfy = Recorder::start(0).await;
    let forge = Recorder::start(0).await;
    let mut harness = Harness::prepare(Options::default());
    let secret_file = harness.path("webhook-secret");
    fs::write(&secret_file, SECRET).unwrap();
    harness.config.webhook = Some(WebhookConfig {
        secret_file,
        repository: Some("ops/infra".to_owned()),
    });
    let token_file = harness.path("token");
    fs::write(&token_file, "bench-token").unwrap();
    harness.config.notify = Some(NotifyConfig {
        events: vec![NotifyEvent::AwaitingApproval],
        ntfy: Some(NtfyConfig {
            url: format!("{}/bench", ntfy.url),
            token_file: Some(token_file.clone()),
        }),
        webhook: None,
    });
    harness.config.commit_status = Some(CommitStatusConfig {
        forge: ForgeApi::GitHub,
        api_url: forge.url.clone(),
        repository: "ops/infra".to_owned(),
        token_file,
        context: None,
    });
    harness.config.ci = Some(CiConfig {
        required: vec!["ci/build".to_owned()],
        accept_votes_while_pending: false,
    });
    let signer = Key::generate(&harness.path("keys"), "signer");
    let allowed = harness.path("allowed_signers");
    fs::write(
        &allowed,
        format!("signer@example.org namespaces=\"git\" {}\n", signer.public),
    )
    .unwrap();
    harness.config.signed_commits = Some(SignedCommitsConfig {
        allowed_signers: Some(allowed),
        revoked_keys: None,
        gpg_keyring: None,
    });
    harness.start_server().await;
    let _activator = StubActivator::start(
        &harness.socket_path(),
        harness.policy_path(),
        harness.base.clone(),
    );
    let phone = harness.login(&harness.phone).await;

    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let mut spec = harness.spec.clone();
        spec.kernel_params.push(format!("bench.forge={round}"));
        harness.commit(&spec, &format!("Round {round}"));
        sign_head(&harness.repo(), &signer);

        let body = json!({
            "ref": "refs/heads/main",
            "repository": { "full_name": "ops/infra" },
        })
        .to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(body.as_bytes());
        let signature =
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()));

        let sent = Instant::now();
        let response = harness
            .client
            .post(format!("{}/webhooks/github", harness.url))
            .header("content-type", "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", signature)
            .body(body)
            .send()
            .await
            .expect("the webhook is delivered");
        let answered = sent.elapsed();
        assert_eq!(response.status(), 201, "the push makes a proposal");
        let created: serde_json::Value = response.json().await.unwrap();
        let number = created["proposal"].as_u64().unwrap();
        let title = format!("demo: proposal {number} awaits approval");
        let received = ntfy
            .wait_for("awaiting approval", Duration::from_secs(600), |r| {
                r.header("title") == Some(title.as_str())
            })
            .await;
        let arrived = received
            .iter()
            .find(|request| request.header("title") == Some(title.as_str()))
            .expect("the notification arrived")
            .at;

        let (status, log) = harness
            .get_bytes(&format!("/proposals/{number}/log"), &phone)
            .await;
        assert_eq!(status, 200);
        let timings = Timings::parse(&String::from_utf8_lossy(&log));
        rounds.push(Round {
            total: arrived.duration_since(sent),
            answered,
            nix: Duration::from_millis(timings.nix_fetch + timings.nix_build),
            git: Duration::from_millis(timings.git),
            diff: Duration::from_millis(timings.diff),
        });
    }

    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!("rounds: {ROUNDS}");
    report(
        "webhook -> awaits-approval notification, minus Nix fetch and build",
        rounds
            .iter()
            .map(|round| round.total.saturating_sub(round.nix))
            .collect(),
    );
    report(
        "  of which the diff (with its Nix closure queries)",
        rounds.iter().map(|round| round.diff).collect(),
    );
    report(
        "  of which git (fetch, commit, signature check)",
        rounds.iter().map(|round| round.git).collect(),
    );
    report(
        "  of which the webhook's response (HMAC, git ls-remote, proposal)",
        rounds.iter().map(|round| round.answered).collect(),
    );
    report(
        "webhook -> awaits-approval notification, total",
        rounds.iter().map(|round| round.total).collect(),
    );
    report(
        "Nix fetch and build",
        rounds.iter().map(|round| round.nix).collect(),
    );
}

/// Replaces the head commit by one signed with `key`.
fn sign_head(repo: &Path, key: &Key) {
    let status = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.org",
        ])
        .args(["-c", "gpg.format=ssh", "-c"])
        .arg(format!("user.signingkey={}", key.path.display()))
        .args(["commit", "--amend", "--no-edit", "--quiet", "-S"])
        .status()
        .expect("git runs");
    assert!(status.success(), "signing the commit failed");
}

/// The server's `timings (ms): …` build log line.
struct Timings {
    git: u64,
    nix_fetch: u64,
    nix_build: u64,
    diff: u64,
}

impl Timings {
    fn parse(log: &str) -> Self {
        let line = log
            .lines()
            .find(|line| line.contains("timings (ms):"))
            .expect("the build log has a timings line");
        let value = |key: &str| -> u64 {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(&format!("{key}=")))
                .and_then(|number| number.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        Self {
            git: value("git"),
            nix_fetch: value("nix_fetch"),
            nix_build: value("nix_build"),
            diff: value("diff"),
        }
    }
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    println!(
        "{label}: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    );
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
