//! The proposal pipeline: number, fetch, build, diff, statement.
//!
//! A background task takes the proposals from a queue. The git and Nix
//! work runs on a blocking thread, one proposal at a time, and its output
//! goes to the proposal's build log. Any failure leaves the proposal `failed` with
//! the error and the log; nothing is activated.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use countersign_core::{
    STATEMENT_FORMAT, Sha256Digest, Source, Statement, StorePath,
};
use countersign_nix::diff::{DiffDocument, DiffInputs};
use countersign_nix::{FetchedSource, git};
use serde_json::json;

use crate::activation;
use crate::activator;
use crate::api_error::ApiError;
use crate::db::{self, AuditEvent, BuiltProposal, Context, ProposalState};
use crate::state::AppState;

/// Maximum length of a requested revision, in bytes.
const MAX_REV_LEN: usize = 256;

/// Creates proposal N in state `building` and starts its pipeline.
///
/// N is one more than the highest number the database or the activator
/// has seen, so that a fresh database on a machine with a long history
/// does not propose numbers the activator would refuse.
pub async fn propose(
    state: &AppState,
    rev: Option<String>,
    requested_by: String,
) -> Result<u64, ApiError> {
    if let Some(rev) = &rev {
        check_rev(rev)?;
    }
    enqueue(state, rev, None, requested_by).await
}

/// Creates proposal N that rolls the system back to generation
/// `generation` of the configured system profile, and starts its
/// pipeline, which reads the profile and builds nothing.
pub async fn propose_rollback(
    state: &AppState,
    generation: u64,
    requested_by: String,
) -> Result<u64, ApiError> {
    if generation == 0 {
        return Err(ApiError::bad_request(
            "invalid rollback_generation 0: profile generations start at \
             1; list them with `nix-env --list-generations --profile \
             /nix/var/nix/profiles/system`",
        ));
    }
    enqueue(state, None, Some(generation), requested_by).await
}

async fn enqueue(
    state: &AppState,
    rev: Option<String>,
    rollback: Option<u64>,
    requested_by: String,
) -> Result<u64, ApiError> {
    let _numbering = state.numbering.lock().await;
    let activator_last =
        match activator::status(&state.config.activator_socket).await {
            Ok(status) => Some(status.last_proposal),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "the activator's last proposal is unknown; numbering \
                     from the database alone"
                );
                None
            }
        };
    let rev_for_db = rev.clone();
    let number = state
        .db
        .run(move |connection| {
            let tx = connection.transaction().context("begin")?;
            let last = db::last_number(&tx)?.max(activator_last.unwrap_or(0));
            let number = last + 1;
            db::insert_proposal(
                &tx,
                number,
                rev_for_db.as_deref(),
                &requested_by,
            )?;
            let mut detail = json!({
                "rev": rev_for_db,
                "requested_by": requested_by,
                "activator_last_proposal": activator_last,
            });
            if let Some(generation) = rollback {
                detail["rollback_generation"] = json!(generation);
            }
            db::append_audit(
                &tx,
                AuditEvent {
                    kind: "proposal-created",
                    proposal: number,
                    approver: None,
                    detail,
                },
            )?;
            tx.commit().context("commit")?;
            Ok(number)
        })
        .await?;
    // Queueing before the numbering lock is released keeps the queue in
    // the order of the numbers.
    let job = BuildJob {
        number,
        rev,
        rollback,
    };
    if state.builds.send(job).is_err() {
        tracing::error!(proposal = number, "the build queue is closed");
    }
    drop(_numbering);
    Ok(number)
}

fn check_rev(rev: &str) -> Result<(), ApiError> {
    let valid = !rev.is_empty()
        && rev.len() <= MAX_REV_LEN
        && !rev.starts_with('-')
        && !rev.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid rev {:?}: give a commit id, tag or revision of the \
             configured branch, without spaces and not starting with '-'",
            rev.chars().take(MAX_REV_LEN).collect::<String>()
        )))
    }
}

/// The results of a successful build, or of reading a rollback's
/// generation, which has no commit and no source.
struct Built {
    commit: Option<String>,
    subject: String,
    base: StorePath,
    target: StorePath,
    source: Option<FetchedSource>,
    statement: Vec<u8>,
    diff: Vec<u8>,
    expires: u64,
}

/// One queued build.
pub struct BuildJob {
    number: u64,
    rev: Option<String>,
    /// The profile generation of a rollback, which replaces the build.
    rollback: Option<u64>,
}

/// Builds the queued proposals one at a time, because they share the git
/// mirror, in the order of their numbers.
pub async fn worker(
    state: AppState,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<BuildJob>,
) {
    while let Some(job) = queue.recv().await {
        run(state.clone(), job).await;
    }
}

async fn run(state: AppState, job: BuildJob) {
    let BuildJob {
        number,
        rev,
        rollback,
    } = job;
    tracing::info!(proposal = number, rev, rollback, "building proposal");
    let work_state = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        build_proposal(&work_state, number, rev.as_deref(), rollback)
    })
    .await
    .unwrap_or_else(|error| Err(format!("the build task panicked: {error}")));
    let outcome = match result {
        Ok(built) => store_built(&state, number, built).await,
        Err(message) => store_failure(&state, number, message).await,
    };
    if let Err(error) = outcome {
        tracing::error!(proposal = number, %error, "recording the build result failed");
    }
}

/// Maximum size of the build output kept in a proposal's log, in bytes.
/// Builders run code from the repository, which can print without end.
/// Output past this size is dropped so that it cannot fill the server's
/// disk, but the pipeline's own step lines are still written.
pub const MAX_BUILD_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// Maximum length of one step line of the pipeline in the build log, in
/// bytes. A step can quote a failed command's standard error, which the
/// builders control.
const MAX_STEP_LINE_BYTES: usize = 64 * 1024;

/// The build log of one proposal. Every line is escaped, because it
/// comes from the repository's builders and is shown in terminals.
struct BuildLog {
    file: Option<File>,
    path: String,
    /// Bytes written so far.
    written: u64,
    /// Whether build output was dropped because the log reached
    /// [`MAX_BUILD_LOG_BYTES`].
    truncated: bool,
}

impl BuildLog {
    fn create(path: &Path) -> Self {
        let file = std::fs::create_dir_all(
            path.parent().expect("a log path has a parent"),
        )
        .and_then(|()| File::create(path));
        match file {
            Ok(file) => Self {
                file: Some(file),
                path: path.display().to_string(),
                written: 0,
                truncated: false,
            },
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot create the build log");
                Self {
                    file: None,
                    path: path.display().to_string(),
                    written: 0,
                    truncated: false,
                }
            }
        }
    }

    /// Appends one line of build output, unless the log has reached
    /// [`MAX_BUILD_LOG_BYTES`]. A line longer than the room left is cut.
    fn line(&mut self, text: &str) {
        if self.truncated {
            return;
        }
        let escaped = countersign_nix::escape_control_chars(text);
        let room = MAX_BUILD_LOG_BYTES.saturating_sub(self.written) as usize;
        if escaped.len() < room {
            self.write(&escaped);
            return;
        }
        let cut = prefix_within(&escaped, room);
        if !cut.is_empty() {
            self.write(cut);
        }
        self.truncated = true;
        self.write(&format!(
            "countersign: the build log reached {} MiB; further build \
             output is not kept",
            MAX_BUILD_LOG_BYTES / (1024 * 1024)
        ));
    }

    /// Appends a step line of the pipeline, whatever the log's size, cut
    /// to [`MAX_STEP_LINE_BYTES`].
    fn step(&mut self, text: &str) {
        let line = format!("countersign: {text}");
        let escaped = countersign_nix::escape_control_chars(&line);
        let cut = prefix_within(&escaped, MAX_STEP_LINE_BYTES);
        if cut.len() < escaped.len() {
            self.write(&format!("{cut} [cut]"));
        } else {
            self.write(cut);
        }
    }

    fn write(&mut self, escaped: &str) {
        let Some(file) = &mut self.file else { return };
        if let Err(error) = writeln!(file, "{escaped}") {
            tracing::error!(path = self.path, %error, "writing the build log failed");
            self.file = None;
            return;
        }
        self.written += escaped.len() as u64 + 1;
    }
}

/// Returns the longest prefix of `text` that has at most `max` bytes and
/// ends on a character boundary.
fn prefix_within(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Runs the blocking part of the pipeline.
fn build_proposal(
    state: &AppState,
    number: u64,
    rev: Option<&str>,
    rollback: Option<u64>,
) -> Result<Built, String> {
    let mut log = BuildLog::create(&state.log_path(number));
    let result = match rollback {
        Some(generation) => {
            rollback_steps(state, number, generation, &mut log)
        }
        None => build_steps(state, number, rev, &mut log),
    };
    if let Err(message) = &result {
        log.step(&format!("failed: {message}"));
    }
    result
}

fn build_steps(
    state: &AppState,
    number: u64,
    rev: Option<&str>,
    log: &mut BuildLog,
) -> Result<Built, String> {
    let config = &state.config;
    let repository = &config.repository;
    let policy = state.policy.current()?;
    let mirror = state.mirror_dir();
    let started = Instant::now();

    log.step(&format!(
        "fetching branch {} of {}",
        repository.branch,
        without_userinfo(&repository.url)
    ));
    let branch_commit =
        git::fetch_branch(&repository.url, &repository.branch, &mirror)
            .map_err(|error| {
                format!("fetching branch {}: {error}", repository.branch)
            })?;
    let commit = match rev {
        None => branch_commit,
        Some(rev) => resolve_on_branch(
            &mirror,
            rev,
            &branch_commit,
            &repository.branch,
        )?,
    };
    let info = git::commit_info(&mirror, &commit)
        .map_err(|error| format!("reading commit {commit}: {error}"))?;
    log.step(&format!("commit {commit}: {}", info.subject));
    {
        let (commit, subject) = (commit.clone(), info.subject.clone());
        state
            .db
            .run_blocking(|connection| {
                db::store_commit(connection, number, &commit, &subject)
            })
            .map_err(|error| error.to_string())?;
    }

    if let Some(signer) =
        crate::signed_commits::check_proposal(state, number, &mirror, &commit)?
    {
        log.step(&format!("commit {commit} is signed by {signer}"));
    }

    let git_done = Instant::now();
    log.step("copying the commit into the Nix store");
    let source = countersign_nix::fetch_source(&state.nix, &mirror, &commit)
        .map_err(|error| {
        format!("fetching commit {commit} into the store: {error}")
    })?;
    log.step(&format!(
        "source {} ({})",
        source.store_path, source.nar_hash
    ));

    let fetched = Instant::now();
    let base = current_system(&config.current_system)?;
    log.step(&format!("running system {base}"));

    log.step(&format!("building {}", state.attribute));
    let gc_root = state.gc_root(number);
    std::fs::create_dir_all(gc_root.parent().expect("a GC root has a parent"))
        .map_err(|error| format!("creating {}: {error}", gc_root.display()))?;
    let target = countersign_nix::build(
        &state.nix,
        &source,
        &state.attribute,
        &gc_root,
        &mut |line| log.line(line),
    )
    .map_err(|error| match error {
        countersign_nix::Error::TimedOut { seconds, .. } => format!(
            "building {} was stopped after {seconds} seconds, the build \
             time limit; raise [nix] build_timeout_secs \
             (services.countersign.buildTimeout) if the build needs longer",
            state.attribute
        ),
        error => format!("building {}: {error}", state.attribute),
    })?;
    log.step(&format!("built {target}"));
    let built = Instant::now();

    log.step("computing the diff");
    let deployed = state
        .db
        .run_blocking(|connection| db::deployed_commit(connection))
        .map_err(|error| error.to_string())?;
    // A deployed commit that the mirror lacks (the repository address
    // changed, say) is left out; the source part then lists the files.
    let deployed = deployed.filter(|old| {
        let known = git::commit_info(&mirror, old).is_ok();
        if !known {
            log.step(&format!(
                "the deployed commit {old} is not in the mirror; the \
                 source diff lists the whole tree"
            ));
        }
        known
    });
    let inputs = DiffInputs {
        mirror: &mirror,
        old_commit: deployed.as_deref(),
        new_commit: &commit,
        old_system: Some(&base),
        new_system: &target,
    };
    let diff = DiffDocument::compute(&state.nix, &inputs)
        .map_err(|error| format!("computing the diff: {error}"))?
        .to_json();
    let diffed = Instant::now();

    let created = db::now();
    let expires = created + policy.proposal_lifetime_secs;
    let statement = Statement {
        format: STATEMENT_FORMAT.to_owned(),
        host: config.host.clone(),
        proposal: number,
        action: repository.action,
        source: Some(Source {
            repository: repository.url.clone(),
            branch: repository.branch.clone(),
            commit: commit.clone(),
            store_path: source.store_path.clone(),
            nar_hash: source.nar_hash.clone(),
        }),
        rollback_generation: None,
        attribute: state.attribute.clone(),
        base: base.clone(),
        target: target.clone(),
        policy_sha256: policy.sha256,
        diff_sha256: Sha256Digest::of(&diff),
        nonce: random_nonce(),
        created,
        expires,
    };
    let statement = statement.to_bytes();
    // Benchmarks read this line to separate Nix's own time from
    // countersign's; `diff` includes the closure queries to Nix.
    log.step(&format!(
        "timings (ms): git={} nix_fetch={} nix_build={} diff={} total={}",
        (git_done - started).as_millis(),
        (fetched - git_done).as_millis(),
        (built - fetched).as_millis(),
        (diffed - built).as_millis(),
        started.elapsed().as_millis(),
    ));
    log.step(&format!(
        "statement {} written; waiting for approvals",
        Sha256Digest::of(&statement)
    ));
    Ok(Built {
        commit: Some(commit),
        subject: info.subject,
        base,
        target,
        source: Some(source),
        statement,
        diff,
        expires,
    })
}

/// Prepares a rollback to generation `generation` of the configured
/// system profile: reads `<profile>-<N>-link`, compares its system with
/// the running one, and writes a statement that names the generation in
/// place of a source. Nothing is fetched or built, because the profile
/// keeps the generation's closure alive.
fn rollback_steps(
    state: &AppState,
    number: u64,
    generation: u64,
    log: &mut BuildLog,
) -> Result<Built, String> {
    let config = &state.config;
    let policy = state.policy.current()?;
    let profile = &config.profile;
    let name = profile.file_name().ok_or_else(|| {
        format!(
            "the profile {} (key `profile`) names no file",
            profile.display()
        )
    })?;
    let link = profile.with_file_name(format!(
        "{}-{generation}-link",
        name.to_string_lossy()
    ));
    log.step(&format!(
        "rolling back to generation {generation} of {}",
        profile.display()
    ));
    let target = current_system(&link).map_err(|error| {
        format!(
            "generation {generation} of the profile {} cannot be used: \
             {error}; list the generations with `nix-env \
             --list-generations --profile {}`",
            profile.display(),
            profile.display()
        )
    })?;
    let base = current_system(&config.current_system)?;
    log.step(&format!(
        "running system {base}, generation's system {target}"
    ));
    if target == base {
        return Err(format!(
            "generation {generation} of the profile {} is the running \
             system {base}; there is nothing to roll back",
            profile.display()
        ));
    }

    log.step("computing the diff of the two systems");
    let diff = DiffDocument::of_systems(&state.nix, &base, &target)
        .map_err(|error| format!("computing the diff: {error}"))?
        .to_json();
    let created = db::now();
    let expires = created + policy.proposal_lifetime_secs;
    let statement = Statement {
        format: STATEMENT_FORMAT.to_owned(),
        host: config.host.clone(),
        proposal: number,
        action: config.repository.action,
        source: None,
        rollback_generation: Some(generation),
        attribute: state.attribute.clone(),
        base: base.clone(),
        target: target.clone(),
        policy_sha256: policy.sha256,
        diff_sha256: Sha256Digest::of(&diff),
        nonce: random_nonce(),
        created,
        expires,
    }
    .to_bytes();
    log.step(&format!(
        "statement {} written; waiting for approvals",
        Sha256Digest::of(&statement)
    ));
    Ok(Built {
        commit: None,
        subject: format!("Roll back to generation {generation}"),
        base,
        target,
        source: None,
        statement,
        diff,
        expires,
    })
}

/// Returns `url` with any user name and password replaced by `***`, for
/// the build log that approvers read.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// Resolves `rev` in the mirror and checks that it is on the branch.
fn resolve_on_branch(
    mirror: &Path,
    rev: &str,
    branch_commit: &str,
    branch: &str,
) -> Result<String, String> {
    let commit = git::resolve_rev(mirror, rev)
        .map_err(|error| format!("resolving rev {rev:?}: {error}"))?;
    let on_branch = git::is_ancestor(mirror, &commit, branch_commit)
        .map_err(|error| format!("checking rev {rev:?}: {error}"))?;
    if !on_branch {
        return Err(format!(
            "rev {rev:?} (commit {commit}) is not on branch {branch}; only \
             commits of the configured branch can be proposed"
        ));
    }
    Ok(commit)
}

/// The store path the running system's link points to.
fn current_system(link: &Path) -> Result<StorePath, String> {
    let resolved = std::fs::canonicalize(link).map_err(|error| {
        format!(
            "cannot resolve the running system {} (key `current_system`): \
             {error}",
            link.display()
        )
    })?;
    let text = resolved.to_string_lossy();
    StorePath::parse(&text).map_err(|error| {
        format!(
            "the running system {} resolves to {text}, which is not a \
             store path: {error}",
            link.display()
        )
    })
}

fn random_nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes[..]);
    hex::encode(bytes)
}

/// Stores a successful build and, when the proposal now awaits approval,
/// asks the activator to prepare it.
async fn store_built(
    state: &AppState,
    number: u64,
    built: Built,
) -> Result<(), db::DbError> {
    let source = built.source.clone();
    let target = built.target.clone();
    let stored = state
        .db
        .run(move |connection| {
            let tx = connection.transaction().context("begin")?;
            let source = built.source.as_ref();
            let record = BuiltProposal {
                commit: built.commit.as_deref(),
                subject: &built.subject,
                base: built.base.as_str(),
                target: built.target.as_str(),
                source_path: source.map(|source| source.store_path.as_str()),
                nar_hash: source.map(|source| source.nar_hash.as_str()),
                statement: &built.statement,
                diff: &built.diff,
                expires: built.expires,
            };
            if !db::store_built(&tx, number, &record)? {
                // The proposal left `building` meanwhile, which only a
                // restart's recovery does; its result is dropped.
                return Ok(None);
            }
            db::append_audit(&tx, AuditEvent {
                kind: "proposal-built",
                proposal: number,
                approver: None,
                detail: json!({
                    "commit": built.commit,
                    "source": source.map(|source| source.store_path.as_str()),
                    "nar_hash": source.map(|source| source.nar_hash.as_str()),
                    "base": built.base.as_str(),
                    "target": built.target.as_str(),
                    "statement_sha256": Sha256Digest::of(&built.statement).to_hex(),
                    "diff_sha256": Sha256Digest::of(&built.diff).to_hex(),
                    "expires": built.expires,
                }),
            })?;
            let mut superseded = Vec::new();
            if let Some(newer) = db::newer_with_statement(&tx, number)? {
                supersede(&tx, number, newer)?;
                superseded.push(number);
            } else {
                for older in db::older_pending(&tx, number)? {
                    supersede(&tx, older, number)?;
                    superseded.push(older);
                }
            }
            tx.commit().context("commit")?;
            Ok(Some(superseded))
        })
        .await?;
    let Some(superseded) = stored else {
        return Ok(());
    };
    if superseded.contains(&number) {
        tracing::info!(
            proposal = number,
            "proposal built, but a newer proposal supersedes it"
        );
        return Ok(());
    }
    tracing::info!(proposal = number, ?superseded, "proposal awaits approval");
    // A rollback has no source to check or evaluate ahead of approval.
    if let Some(source) = source {
        activation::spawn_prepare(state, number, source, target);
    }
    Ok(())
}

fn supersede(
    tx: &rusqlite::Transaction<'_>,
    number: u64,
    by: u64,
) -> Result<(), db::DbError> {
    let message = format!("superseded by proposal {by}");
    if db::set_state(
        tx,
        number,
        ProposalState::AwaitingApproval,
        ProposalState::Superseded,
        Some(&message),
    )? {
        db::append_audit(
            tx,
            AuditEvent {
                kind: "proposal-superseded",
                proposal: number,
                approver: None,
                detail: json!({ "by": by }),
            },
        )?;
    }
    Ok(())
}

async fn store_failure(
    state: &AppState,
    number: u64,
    message: String,
) -> Result<(), db::DbError> {
    tracing::warn!(proposal = number, error = message, "proposal failed");
    state
        .db
        .run(move |connection| {
            let tx = connection.transaction().context("begin")?;
            if db::set_state(
                &tx,
                number,
                ProposalState::Building,
                ProposalState::Failed,
                Some(&message),
            )? {
                db::append_audit(
                    &tx,
                    AuditEvent {
                        kind: "proposal-failed",
                        proposal: number,
                        approver: None,
                        detail: json!({ "error": message }),
                    },
                )?;
            }
            tx.commit().context("commit")
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_hidden() {
        assert_eq!(
            without_userinfo("https://user:secret@git.example/infra.git"),
            "https://***@git.example/infra.git"
        );
        assert_eq!(
            without_userinfo("ssh://git@git.example/infra.git"),
            "ssh://***@git.example/infra.git"
        );
        assert_eq!(
            without_userinfo("https://git.example/a@b.git"),
            "https://git.example/a@b.git"
        );
        assert_eq!(without_userinfo("/srv/infra.git"), "/srv/infra.git");
    }

    #[test]
    fn rev_checks_reject_options_and_spaces() {
        for rev in ["", "-x", "--upload-pack=x", "a b", "a\nb"] {
            assert!(check_rev(rev).is_err(), "{rev:?} was accepted");
        }
        assert!(check_rev(&"a".repeat(MAX_REV_LEN + 1)).is_err());
        for rev in ["main~1", "v1.2", "0123abcd"] {
            assert!(check_rev(rev).is_ok(), "{rev:?} was rejected");
        }
    }

    #[test]
    fn build_log_stops_at_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/1.log");
        let mut log = BuildLog::create(&path);
        log.step("building");
        let chunk = "x".repeat(64 * 1024);
        let chunks = MAX_BUILD_LOG_BYTES as usize / chunk.len() + 16;
        for _ in 0..chunks {
            log.line(&chunk);
        }
        // One line alone larger than what is left.
        log.line(&"y".repeat(2 * MAX_BUILD_LOG_BYTES as usize));
        log.step(&format!("failed: {}", "z".repeat(1024 * 1024)));
        log.step("failed: the builder printed too much");
        drop(log);

        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            size <= MAX_BUILD_LOG_BYTES + 3 * MAX_STEP_LINE_BYTES as u64,
            "the log has {size} bytes"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("countersign: building\n"));
        assert_eq!(
            text.matches("further build output is not kept").count(),
            1
        );
        assert!(!text.contains('y'));
        let failed = text.lines().find(|line| line.contains("zzz")).unwrap();
        assert!(failed.len() <= MAX_STEP_LINE_BYTES + 16, "{}", failed.len());
        assert!(failed.ends_with(" [cut]"));
        assert!(
            text.ends_with(
                "countersign: failed: the builder printed too much\n"
            )
        );
    }
}
