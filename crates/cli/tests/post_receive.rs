//! A push to a bare repository on the server's own machine starts a
//! proposal: the repository's post-receive hook runs the real
//! `countersign propose` with the trigger token, as docs/forge.md
//! describes, against the real server process.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use countersign::commands::demo::Environment;
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_countersign");

/// Runs git with a fixed identity and returns its standard output and
/// error, failing the test when git fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test"])
        .args(["-c", "user.email=test@countersign.invalid"])
        .args(args)
        .output()
        .expect("run git");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "git {args:?} failed: {text}");
    text
}

/// Writes the post-receive hook of the documentation, with the binary,
/// the server and the token file filled in.
fn install_hook(bare: &Path, server: &str, token_file: &Path) {
    let hook = bare.join("hooks/post-receive");
    let script = format!(
        "#!/bin/sh\n\
         # Propose the configured branch when a push moved it. The push\n\
         # has already succeeded, so a failure here only gets reported.\n\
         branch=refs/heads/main\n\
         while read -r old new ref; do\n\
         \x20   if [ \"$ref\" = \"$branch\" ]; then\n\
         \x20       '{binary}' propose --server '{server}' \\\n\
         \x20           --token-file '{token}' \\\n\
         \x20           || echo \"countersign propose failed\" >&2\n\
         \x20   fi\n\
         done\n",
        binary = BINARY,
        token = token_file.display(),
    );
    fs::write(&hook, script).unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Waits until the server lists `count` proposals and returns them.
fn wait_for_proposals(environment: &Environment, count: usize) -> Vec<Value> {
    let client = environment.client("phone").unwrap();
    let start = Instant::now();
    loop {
        let list: Value = client.get_json("/api/v1/proposals").unwrap();
        let proposals = list["proposals"].as_array().unwrap().clone();
        if proposals.len() >= count {
            return proposals;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the server lists {} proposals, expected {count}",
            proposals.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn push_to_bare_repository_proposes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut environment =
        Environment::create(&dir.path().join("demo"), Path::new(BINARY), None)
            .expect("the demo environment is created");

    // The server's repository becomes a bare copy of the demo repository,
    // as a repository that is pushed to on the server would be.
    let bare = dir.path().join("config.git");
    let work = environment.layout.repo();
    git(
        dir.path(),
        &[
            "clone",
            "--quiet",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let config_path = environment.layout.path("server.toml");
    let config = fs::read_to_string(&config_path).unwrap();
    let old_url = format!("url = \"{}\"", work.display());
    assert!(config.contains(&old_url), "{config}");
    let new_url = format!("url = \"{}\"", bare.display());
    fs::write(&config_path, config.replace(&old_url, &new_url)).unwrap();

    let token_file = environment.layout.path("secrets/trigger-token");
    install_hook(&bare, &environment.server_url, &token_file);
    environment.start().expect("server and activator start");
    assert!(wait_for_proposals(&environment, 0).is_empty());

    // An operator's clone pushes a new commit to the bare repository.
    let clone = dir.path().join("clone");
    git(
        dir.path(),
        &["clone", "--quiet", bare.to_str().unwrap(), "clone"],
    );
    git(&clone, &["commit", "--allow-empty", "-m", "Pushed change"]);
    let pushed = git(&clone, &["rev-parse", "HEAD"]).trim().to_owned();
    let output = git(&clone, &["push", "origin", "main"]);
    assert!(
        !output.contains("countersign propose failed"),
        "the hook failed: {output}"
    );

    let proposals = wait_for_proposals(&environment, 1);
    assert_eq!(proposals.len(), 1, "{proposals:?}");
    let number = proposals[0]["number"].as_u64().unwrap();
    // The hook printed the number, which git shows as remote output.
    assert!(
        output.contains(&format!("remote: {number}")),
        "the hook's output is missing: {output}"
    );
    let detail = environment
        .wait_for_state(number, &["building"], Duration::from_secs(300))
        .unwrap();
    assert_eq!(detail["commit"], pushed.as_str(), "{detail}");
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");

    // A push to another branch leaves the configured one alone.
    git(
        &clone,
        &["push", "--quiet", "origin", "main:refs/heads/other"],
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(wait_for_proposals(&environment, 1).len(), 1);
}
