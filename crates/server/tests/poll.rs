//! Polling of the configured branch against a real server on 127.0.0.1,
//! a real git repository and real Nix builds.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, Options, git_in};
use reqwest::StatusCode;
use serde_json::json;

/// The test interval; configuration files cannot go below ten seconds.
const INTERVAL: Duration = Duration::from_millis(200);

async fn start() -> Harness {
    let mut harness = Harness::prepare(Options::default());
    harness.config.repository.poll_interval_for_tests = Some(INTERVAL);
    harness.start_server().await;
    harness
}

/// Waits until the database has `expected` proposals.
async fn wait_for_count(harness: &Harness, expected: u64) {
    let start = Instant::now();
    while harness.count("proposals") < expected {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the poll made {} proposals, expected {expected}",
            harness.count("proposals")
        );
        tokio::time::sleep(INTERVAL).await;
    }
}

/// Waits for several intervals and checks that no proposal was added.
async fn assert_count_stays(harness: &Harness, expected: u64) {
    tokio::time::sleep(INTERVAL * 8).await;
    assert_eq!(harness.count("proposals"), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_proposes_each_new_head_once() {
    let harness = start().await;
    let token = harness.login(&harness.phone).await;

    // The first poll proposes the current head.
    wait_for_count(&harness, 1).await;
    let detail = harness.wait_built(&token, 1).await;
    assert_eq!(detail["commit"], harness.head().as_str());
    assert_eq!(detail["requested_by"], "poll");
    // The same head at the next polls makes no second proposal.
    assert_count_stays(&harness, 1).await;

    git_in(&harness.repo(), &["commit", "--allow-empty", "-m", "Next"]);
    let next = harness.head();
    wait_for_count(&harness, 2).await;
    let detail = harness.wait_built(&token, 2).await;
    assert_eq!(detail["commit"], next.as_str());
    assert_eq!(detail["requested_by"], "poll");
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    assert_count_stays(&harness, 2).await;

    // A rejected head is not live any more, but polling must not propose
    // it again while the branch stays there.
    let statement = harness.statement(&token, 2).await;
    let rejection = harness.phone.sign("countersign-reject", &statement);
    let (status, detail) = harness
        .post(
            "/proposals/2/rejections",
            Some(&token),
            json!({ "signature": rejection }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["state"], "rejected");
    assert_count_stays(&harness, 2).await;
}
