//! Source alerts on real repositories: a branch moved back to an older
//! commit is a rollback, a branch on another line of history is a
//! rewrite, and an ordinary update raises neither.

mod common;

use common::{TestEnv, git_in};
use countersign_nix::diff::{AlertKind, Severity, source_alerts, source_diff};

fn kinds(env: &TestEnv, old: &str, new: &str) -> Vec<AlertKind> {
    let diff = source_diff(&env.mirror(), Some(old), new).unwrap();
    source_alerts(&diff)
        .iter()
        .map(|alert| alert.kind)
        .collect()
}

#[test]
fn branch_moved_to_ancestor_is_rollback() {
    let env = TestEnv::new();
    let repo = env.repo();
    let older = env.commit(&env.demo(), "Demo");
    let deployed = env.commit(&env.demo().demo_update(), "Update");

    // A force push of the branch back to the older commit.
    git_in(&repo, &["reset", "--quiet", "--hard", &older]);
    let fetched = countersign_nix::git::fetch_branch(
        repo.to_str().unwrap(),
        "main",
        &env.mirror(),
    )
    .unwrap();
    assert_eq!(fetched, older);

    let diff = source_diff(&env.mirror(), Some(&deployed), &older).unwrap();
    assert_eq!(diff.fast_forward, Some(false));
    let alerts = source_alerts(&diff);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].kind, AlertKind::SourceRolledBack);
    assert_eq!(alerts[0].severity, Severity::High);
    assert_eq!(
        alerts[0].detail,
        format!(
            "the branch moved back from {deployed} to {older}: this \
             proposal rolls the configuration back"
        )
    );
    let json = serde_json::to_string(&alerts[0].kind).unwrap();
    assert_eq!(json, "\"source_rolled_back\"");
}

#[test]
fn diverged_branch_is_history_rewrite() {
    let env = TestEnv::new();
    let repo = env.repo();
    let base = env.commit(&env.demo(), "Demo");
    let deployed = env.commit(&env.demo().demo_update(), "Update");
    git_in(&repo, &["reset", "--quiet", "--hard", &base]);
    git_in(
        &repo,
        &["commit", "--quiet", "--allow-empty", "-m", "Other"],
    );
    let rewritten = countersign_nix::git::fetch_branch(
        repo.to_str().unwrap(),
        "main",
        &env.mirror(),
    )
    .unwrap();

    assert_eq!(
        kinds(&env, &deployed, &rewritten),
        [AlertKind::SourceHistoryRewritten]
    );
    let diff =
        source_diff(&env.mirror(), Some(&deployed), &rewritten).unwrap();
    assert_eq!(source_alerts(&diff)[0].severity, Severity::High);
}

#[test]
fn forward_update_raises_no_source_alert() {
    let env = TestEnv::new();
    let deployed = env.commit(&env.demo(), "Demo");
    let next = env.commit(&env.demo().demo_update(), "Update");
    assert_eq!(kinds(&env, &deployed, &next), []);
    // The same commit again is no rollback either.
    assert_eq!(kinds(&env, &deployed, &deployed), []);
    // Without a deployed commit there is nothing to compare with.
    let diff = source_diff(&env.mirror(), None, &next).unwrap();
    assert!(source_alerts(&diff).is_empty());
}
