//! The bare mirror against real git repositories.

mod common;

use std::fs;

use common::{TestEnv, git_in};
use countersign_nix::{Error, git};

fn work_tree(env: &TestEnv) -> std::path::PathBuf {
    let repo = env.repo();
    fs::create_dir_all(&repo).unwrap();
    git_in(&repo, &["init", "--quiet", "--initial-branch=main"]);
    repo
}

fn commit_file(
    repo: &std::path::Path,
    name: &str,
    text: &str,
    msg: &str,
) -> String {
    fs::write(repo.join(name), text).unwrap();
    git_in(repo, &["add", "--", name]);
    git_in(repo, &["commit", "--quiet", "-m", msg]);
    git_in(repo, &["rev-parse", "HEAD"])
}

#[test]
fn fetch_creates_mirror_and_follows_branch() {
    let env = TestEnv::new();
    let repo = work_tree(&env);
    let first = commit_file(&repo, "a.txt", "one\n", "First commit");
    let url = repo.to_str().unwrap();

    let fetched = git::fetch_branch(url, "main", &env.mirror()).unwrap();
    assert_eq!(fetched, first);
    assert!(env.mirror().join("HEAD").is_file());

    let second = commit_file(&repo, "a.txt", "two\n", "Second commit");
    let fetched = git::fetch_branch(url, "main", &env.mirror()).unwrap();
    assert_eq!(fetched, second);
}

#[test]
fn fetch_accepts_file_url() {
    let env = TestEnv::new();
    let repo = work_tree(&env);
    let commit = commit_file(&repo, "a.txt", "one\n", "Only commit");
    let url = format!("file://{}", repo.display());
    assert_eq!(
        git::fetch_branch(&url, "main", &env.mirror()).unwrap(),
        commit
    );
}

#[test]
fn fetch_follows_force_push() {
    let env = TestEnv::new();
    let repo = work_tree(&env);
    let url = repo.to_str().unwrap().to_owned();
    commit_file(&repo, "a.txt", "one\n", "Base");
    let dropped = commit_file(&repo, "a.txt", "two\n", "Dropped later");
    git::fetch_branch(&url, "main", &env.mirror()).unwrap();

    git_in(&repo, &["reset", "--quiet", "--hard", "HEAD~1"]);
    let replacement = commit_file(&repo, "b.txt", "x\n", "Replacement");
    let fetched = git::fetch_branch(&url, "main", &env.mirror()).unwrap();
    assert_eq!(fetched, replacement);

    // The dropped commit is still an object in the mirror, but no ref
    // reaches it any more.
    let error = git::resolve_rev(&env.mirror(), &dropped).unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error}");
}

#[test]
fn fetch_rejects_option_like_values() {
    let env = TestEnv::new();
    let repo = work_tree(&env);
    commit_file(&repo, "a.txt", "one\n", "First");
    let url = repo.to_str().unwrap();
    for branch in ["-main", "--upload-pack=touch /tmp/x", "a..b"] {
        let error = git::fetch_branch(url, branch, &env.mirror()).unwrap_err();
        assert!(matches!(error, Error::InvalidValue { .. }), "{error}");
    }
    let error = git::fetch_branch("--upload-pack=x", "main", &env.mirror())
        .unwrap_err();
    assert!(matches!(error, Error::InvalidValue { .. }), "{error}");
    // Nothing was created for the rejected requests.
    assert!(!env.mirror().exists());
}

#[test]
fn fetch_of_missing_branch_names_it() {
    let env = TestEnv::new();
    let repo = work_tree(&env);
    commit_file(&repo, "a.txt", "one\n", "First");
    let error =
        git::fetch_branch(repo.to_str().unwrap(), "nope", &env.mirror())
            .unwrap_err()
            .to_string();
    assert!(error.contains("git"), "{error}");
    assert!(error.contains("nope"), "{error}");
}

#[test]
fn mirror_path_must_be_empty_or_bare() {
    let env = TestEnv::new();
    let repo = work_tree(&env);
    commit_file(&repo, "a.txt", "one\n", "First");
    let occupied = env.path("occupied");
    fs::create_dir(&occupied).unwrap();
    fs::write(occupied.join("data"), "keep me").unwrap();
    let error = git::fetch_branch(repo.to_str().unwrap(), "main", &occupied)
        .unwrap_err();
    assert!(matches!(error, Error::InvalidValue { .. }), "{error}");
    assert_eq!(
        fs::read_to_string(occupied.join("data")).unwrap(),
        "keep me"
    );
}

#[test]
fn resolve_rev_and_commit_info() {
    let env = TestEnv::new();
    let repo = work_tree(&env);
    let first = commit_file(&repo, "a.txt", "one\n", "First commit");
    let second = commit_file(&repo, "a.txt", "two\n", "Second commit");
    git::fetch_branch(repo.to_str().unwrap(), "main", &env.mirror()).unwrap();

    assert_eq!(git::resolve_rev(&env.mirror(), "main").unwrap(), second);
    assert_eq!(git::resolve_rev(&env.mirror(), "main~1").unwrap(), first);
    assert_eq!(
        git::resolve_rev(&env.mirror(), &first[..10]).unwrap(),
        first
    );
    assert!(git::resolve_rev(&env.mirror(), "--all").is_err());
    assert!(git::resolve_rev(&env.mirror(), &"0".repeat(40)).is_err());

    let info = git::commit_info(&env.mirror(), &first).unwrap();
    assert_eq!(info.id, first);
    assert_eq!(info.subject, "First commit");
    assert_eq!(info.author, "test <test@countersign.invalid>");
    assert!(info.date.contains('T'), "{}", info.date);
}
