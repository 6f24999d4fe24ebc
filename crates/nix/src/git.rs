//! The bare mirror of the deployed repository, and the git queries the
//! diff needs.
//!
//! The server keeps one bare repository per host in its state folder and
//! fetches the configured branch into it. Every value passed to git is
//! validated first and placed after `--` or `--end-of-options`, so that a
//! branch, revision or URL that starts with `-` can never become an
//! option. Transports that run commands (`ext::`, `fd::`) are disabled
//! through `GIT_ALLOW_PROTOCOL`.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::process::{self, unexpected};

/// The transports git may use for a fetch.
const ALLOWED_PROTOCOLS: &str = "file:https:ssh";

/// The ref namespace where [`pin_commit`] keeps commits that were
/// fetched into the store, so that git garbage collection keeps them and
/// Nix can fetch them by ref after the branch has moved on.
pub const PIN_REF_PREFIX: &str = "refs/countersign/";

/// One commit, as shown to approvers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// The full 40-character hexadecimal id.
    pub id: String,
    pub subject: String,
    /// `Name <email>` of the author.
    pub author: String,
    /// The author date in strict ISO 8601, as git prints it.
    pub date: String,
}

/// Fetches `branch` from `url` into the bare repository `mirror`,
/// creating the mirror on first use, and returns the commit id the
/// branch now points to. The branch is updated even when the remote was
/// force-pushed, because what gets deployed is the branch's current commit.
///
/// `url` may be a local path, `file://`, `https://`, `ssh://` or the
/// `user@host:path` form of SSH.
pub fn fetch_branch(url: &str, branch: &str, mirror: &Path) -> Result<String> {
    validate_url(url)?;
    validate_branch(branch)?;
    ensure_mirror(mirror)?;
    let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
    tracing::info!(url, branch, mirror = %mirror.display(), "fetching");
    process::run(git(mirror).args([
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-recurse-submodules",
        "--",
        url,
        &refspec,
    ]))?;
    let commit = rev_parse(mirror, &format!("refs/heads/{branch}"))?;
    tracing::info!(branch, commit, "fetched");
    Ok(commit)
}

/// Resolves `rev` (a commit id, an abbreviation, a branch name or any
/// revision expression git accepts) to a full commit id, and checks that
/// the commit is reachable from a ref of the mirror. An object that only
/// lingers in the object database, for example after a force-push, is
/// rejected.
pub fn resolve_rev(mirror: &Path, rev: &str) -> Result<String> {
    validate_rev(rev)?;
    let commit = rev_parse(mirror, rev)?;
    let reachable = process::run(git(mirror).args([
        "for-each-ref",
        "--count=1",
        "--format=%(refname)",
        "--contains",
        &commit,
    ]))?;
    if reachable.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::Unreachable {
            commit,
            mirror: mirror.to_owned(),
        });
    }
    Ok(commit)
}

/// Id, subject, author and date of `commit`.
pub fn commit_info(mirror: &Path, commit: &str) -> Result<CommitInfo> {
    validate_commit_id(commit)?;
    let mut infos = log(mirror, &["-1", commit])?;
    infos.pop().ok_or_else(|| {
        Error::invalid("commit", commit, "not found in the mirror")
    })
}

/// Reads the commit object of `commit` and the submodules of its tree
/// from the mirror, for the activator to tie the commit to its fetched
/// source.
pub fn commit_evidence(
    mirror: &Path,
    commit: &str,
) -> Result<countersign_core::protocol::CommitEvidence> {
    use base64::Engine as _;

    validate_commit_id(commit)?;
    let mut command = git_read(mirror);
    command.args(["cat-file", "commit", commit]);
    let object = process::run(&mut command)?;

    let mut command = git_read(mirror);
    command.args(["ls-tree", "-r", "-z", "--full-tree", commit]);
    let listing = process::run(&mut command)?;
    let mut submodules = std::collections::BTreeMap::new();
    for entry in listing.split(|&byte| byte == 0) {
        // `<mode> <type> <id>\t<path>`; a submodule has mode 160000.
        let Some(rest) = entry.strip_prefix(b"160000 commit ") else {
            continue;
        };
        let text = String::from_utf8_lossy(rest);
        let Some((id, path)) = text.split_once('\t') else {
            return Err(unexpected(&command, "a malformed entry", &listing));
        };
        submodules.insert(path.to_owned(), id.to_owned());
    }
    Ok(countersign_core::protocol::CommitEvidence {
        commit: base64::engine::general_purpose::STANDARD.encode(object),
        submodules,
    })
}

/// Lists the commits reachable from `new` but not from `old`, newest
/// first, at most `max` of them.
pub fn commits_between(
    mirror: &Path,
    old: &str,
    new: &str,
    max: usize,
) -> Result<Vec<CommitInfo>> {
    validate_commit_id(old)?;
    validate_commit_id(new)?;
    let max = format!("--max-count={max}");
    log(mirror, &[&max, &format!("{old}..{new}")])
}

/// Tells whether `old` is an ancestor of `new`, that is whether `new`
/// extends the history of `old` rather than replacing it.
pub fn is_ancestor(mirror: &Path, old: &str, new: &str) -> Result<bool> {
    validate_commit_id(old)?;
    validate_commit_id(new)?;
    let mut command = git(mirror);
    command.args(["merge-base", "--is-ancestor", old, new]);
    let description = process::describe(&command);
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: description.clone(),
            source,
        })?;
    match output.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(process::failed(description, output.status, &output.stderr)),
    }
}

/// Keeps `commit` reachable under [`PIN_REF_PREFIX`] and returns the ref
/// name.
pub fn pin_commit(mirror: &Path, commit: &str) -> Result<String> {
    validate_commit_id(commit)?;
    let name = format!("{PIN_REF_PREFIX}{commit}");
    process::run(git(mirror).args(["update-ref", &name, commit]))?;
    Ok(name)
}

/// Checks `branch` against git's rules for ref names
/// (`git check-ref-format`), and in addition rejects a leading `-`.
pub fn validate_branch(branch: &str) -> Result<()> {
    let reject = |reason: &str| Err(Error::invalid("branch", branch, reason));
    if branch.is_empty() || branch.len() > 255 {
        return reject("expected 1 to 255 characters");
    }
    if branch.starts_with('-') {
        return reject("must not start with '-'");
    }
    if branch == "@" || branch.contains("@{") {
        return reject("must not be '@' or contain '@{'");
    }
    if branch.contains("..") || branch.contains("//") {
        return reject("must not contain '..' or '//'");
    }
    if branch.ends_with('/') || branch.ends_with('.') {
        return reject("must not end with '/' or '.'");
    }
    let forbidden =
        |c: char| c.is_ascii_control() || " ~^:?*[\\\u{7f}".contains(c);
    if branch.chars().any(forbidden) {
        return reject(
            "must not contain spaces, control characters or ~^:?*[\\",
        );
    }
    for component in branch.split('/') {
        if component.starts_with('.') || component.ends_with(".lock") {
            return reject(
                "no component may start with '.' or end with '.lock'",
            );
        }
    }
    Ok(())
}

/// Checks that `commit` is a full 40-character hexadecimal commit id in
/// lower case.
pub fn validate_commit_id(commit: &str) -> Result<()> {
    let valid = commit.len() == 40
        && commit
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            "commit id",
            commit,
            "expected 40 lower-case hexadecimal characters",
        ))
    }
}

fn validate_rev(rev: &str) -> Result<()> {
    if rev.is_empty() || rev.len() > 255 {
        return Err(Error::invalid(
            "revision",
            rev,
            "expected 1 to 255 characters",
        ));
    }
    if rev.starts_with('-') {
        return Err(Error::invalid(
            "revision",
            rev,
            "must not start with '-'",
        ));
    }
    if rev.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::invalid(
            "revision",
            rev,
            "must not contain spaces or control characters",
        ));
    }
    Ok(())
}

fn validate_url(url: &str) -> Result<()> {
    let reject =
        |reason: &str| Err(Error::invalid("repository URL", url, reason));
    if url.is_empty() {
        return reject("must not be empty");
    }
    if url.starts_with('-') {
        return reject("must not start with '-'");
    }
    if url.chars().any(char::is_control) {
        return reject("must not contain control characters");
    }
    if let Some((scheme, _)) = url.split_once("://") {
        if !["file", "https", "ssh"].contains(&scheme) {
            return reject("the scheme must be file, https or ssh");
        }
    } else if url.contains("::") {
        return reject("git remote helpers (<transport>::) are not allowed");
    }
    Ok(())
}

/// Creates the bare mirror unless it exists. An existing folder that is
/// neither empty nor a git repository is an error, so that a wrong path
/// in the configuration cannot turn some other folder into a mirror.
fn ensure_mirror(mirror: &Path) -> Result<()> {
    if mirror.join("HEAD").is_file() && mirror.join("objects").is_dir() {
        return Ok(());
    }
    if mirror.exists() {
        let mut entries =
            fs::read_dir(mirror).map_err(|e| Error::io(mirror, e))?;
        if entries.next().is_some() {
            return Err(Error::invalid(
                "mirror folder",
                mirror.display().to_string(),
                "exists, is not empty and is not a bare git repository",
            ));
        }
    }
    fs::create_dir_all(mirror).map_err(|e| Error::io(mirror, e))?;
    tracing::info!(mirror = %mirror.display(), "creating the mirror");
    let mut command = Command::new("git");
    configure(&mut command);
    command
        .args(["init", "--bare", "--quiet", "--"])
        .arg(mirror);
    process::run(&mut command)?;
    Ok(())
}

fn rev_parse(mirror: &Path, rev: &str) -> Result<String> {
    let mut command = git(mirror);
    command.args([
        "rev-parse",
        "--verify",
        "--quiet",
        "--end-of-options",
        &format!("{rev}^{{commit}}"),
    ]);
    let stdout = process::run(&mut command).map_err(|error| match error {
        Error::CommandFailed { .. } => Error::invalid(
            "revision",
            rev,
            format!("not a commit in {}", mirror.display()),
        ),
        other => other,
    })?;
    let commit = String::from_utf8_lossy(&stdout).trim().to_owned();
    validate_commit_id(&commit)
        .map_err(|_| unexpected(&command, "expected a commit id", &stdout))?;
    Ok(commit)
}

/// Runs `git log` with `args` and parses one [`CommitInfo`] per commit.
fn log(mirror: &Path, args: &[&str]) -> Result<Vec<CommitInfo>> {
    let mut command = git_read(mirror);
    command
        .args(["log", "--no-show-signature", "--no-color", "--no-mailmap"])
        .arg("--format=%H%x00%s%x00%an <%ae>%x00%aI%x00")
        .args(args)
        .arg("--");
    let stdout = process::run(&mut command)?;
    let text = String::from_utf8_lossy(&stdout);
    let fields: Vec<&str> = text.split('\0').collect();
    let mut infos = Vec::new();
    // Each record is four NUL-terminated fields; git separates records
    // with a newline, which ends up at the start of the next id field.
    for record in fields.chunks_exact(4) {
        infos.push(CommitInfo {
            id: record[0].trim().to_owned(),
            subject: record[1].to_owned(),
            author: record[2].to_owned(),
            date: record[3].to_owned(),
        });
    }
    Ok(infos)
}

/// Starts a git command on the mirror.
pub(crate) fn git(mirror: &Path) -> Command {
    let mut command = Command::new("git");
    configure(&mut command);
    command.arg("--git-dir").arg(mirror);
    command
}

/// Starts a git command that only reads the mirror, for the source
/// diff and commit details. Besides [`git`]'s settings, it ignores the
/// system and global configuration and any configuration passed in the
/// environment. It also switches off what configuration could make git
/// run or rewrite while reading: hooks, external diff drivers, text
/// conversion, the file system monitor, attribute files and mail maps.
/// Reading never checks files out, so no filter runs either.
pub(crate) fn git_read(mirror: &Path) -> Command {
    let mut command = Command::new("git");
    configure(&mut command);
    command
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ATTR_NOSYSTEM", "1")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env_remove("GIT_CONFIG_PARAMETERS")
        .env_remove("GIT_CONFIG_COUNT")
        .env_remove("GIT_EXTERNAL_DIFF")
        .env_remove("GIT_DIFF_OPTS")
        .args([
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.attributesFile=/dev/null",
            "-c",
            "diff.external=",
            "-c",
            "log.mailmap=false",
            "-c",
            "log.showSignature=false",
            "-c",
            "core.pager=cat",
        ])
        .arg("--git-dir")
        .arg(mirror);
    command
}

fn configure(command: &mut Command) {
    command
        .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .args(["-c", "core.hooksPath=/dev/null"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_accepted() {
        for name in ["main", "release/25.05", "feature-x", "a.b", "v1_2"] {
            assert!(validate_branch(name).is_ok(), "{name} was rejected");
        }
    }

    #[test]
    fn branch_names_rejected() {
        for name in [
            "",
            "-main",
            "--upload-pack=x",
            "a..b",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "a/",
            "a.",
            ".hidden",
            "a/.b",
            "x.lock",
            "a//b",
            "@",
            "a@{1}",
            "a\x1b",
        ] {
            assert!(validate_branch(name).is_err(), "{name:?} was accepted");
        }
    }

    #[test]
    fn urls_checked() {
        for url in [
            "/srv/repo",
            "relative/repo",
            "file:///srv/repo",
            "https://git.example/repo.git",
            "ssh://git@git.example/repo.git",
            "git@git.example:repo.git",
        ] {
            assert!(validate_url(url).is_ok(), "{url} was rejected");
        }
        for url in [
            "",
            "-oProxyCommand=x",
            "--upload-pack=touch /tmp/x",
            "ext::sh -c touch% /tmp/x",
            "fd::0",
            "http://git.example/repo",
            "ftp://git.example/repo",
            "https://git.example/\nrepo",
        ] {
            assert!(validate_url(url).is_err(), "{url:?} was accepted");
        }
    }

    #[test]
    fn commit_ids_checked() {
        assert!(validate_commit_id(&"a".repeat(40)).is_ok());
        assert!(validate_commit_id(&"A".repeat(40)).is_err());
        assert!(validate_commit_id(&"a".repeat(39)).is_err());
        assert!(validate_commit_id("main").is_err());
    }

    #[test]
    fn revisions_checked() {
        assert!(validate_rev("main~1").is_ok());
        assert!(validate_rev("-n").is_err());
        assert!(validate_rev("a b").is_err());
        assert!(validate_rev("").is_err());
    }
}
