//! The CI gate: with a `[ci]` section, the commit of a proposal must have
//! a successful status for each required check before it can be approved
//! and before its certificate goes to the activator.
//!
//! The forge reports statuses through the webhook endpoints: GitHub's
//! `status` and `check_run` events, the `status` event of Gitea and
//! Forgejo, and GitLab's `Pipeline Hook` (the pipeline as the check
//! `pipeline`, and each of its jobs under the job's name). They are
//! stored per commit and check name in the `commit_checks` table.
//!
//! A failed required check rejects approvals with 409. A pending or
//! missing one does too, unless `accept_votes_while_pending` is set;
//! rejections are always accepted. When the quorum is met while a
//! required check is not successful, the proposal stays awaiting
//! approval, the audit log records `activation-held`, and the
//! certificate is sent as soon as the last required check succeeds.
//!
//! A status can only hold back an activation, never cause one that a
//! quorum did not approve.
//!
//! NOTE: statuses are only received, never polled from the forge's API,
//! so a delivery the forge loses leaves the proposal waiting until the
//! forge delivers the status again.

use axum::http::StatusCode;
use countersign_core::{ApproverName, Policy, Statement};
use rusqlite::{Connection, Transaction, params};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::activation::{self, ActivationJob};
use crate::api_error::ApiError;
use crate::db::{self, AuditEvent, Context, DbResult, ProposalState};
use crate::state::AppState;
use crate::votes;
use crate::webhooks::printable;

/// Statuses older than this are deleted, in seconds (90 days).
const KEEP_SECS: u64 = 90 * 24 * 3600;

/// The maximum number of checks read from one delivery, since GitLab
/// lists every job.
const MAX_REPORTS: usize = 200;

const MAX_NAME_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 500;
const MAX_URL_CHARS: usize = 2000;

/// The check name of a GitLab pipeline as a whole.
pub const GITLAB_PIPELINE_CHECK: &str = "pipeline";

/// The table of reported statuses, created on start when missing.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS commit_checks (
    commit_id TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'success', 'failure')),
    description TEXT,
    url TEXT,
    forge TEXT NOT NULL,
    source_id INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    PRIMARY KEY (commit_id, name)
);
"#;

/// The `[ci]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CiConfig {
    /// The names of the checks that must succeed: a GitHub status context
    /// or check run name, a Gitea or Forgejo status context, or a GitLab
    /// job name or `pipeline`.
    pub required: Vec<String>,
    /// Accept approvals while a required check is pending or has not
    /// reported yet; the certificate still waits until every required
    /// check succeeded. Default: false, so approvals wait for the checks.
    #[serde(default)]
    pub accept_votes_while_pending: bool,
}

impl CiConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.required.is_empty() {
            return Err("ci.required is empty; name the checks that must \
                        succeed, or remove the [ci] section"
                .into());
        }
        for (index, name) in self.required.iter().enumerate() {
            if name.trim().is_empty()
                || name.chars().any(char::is_control)
                || name.chars().count() > MAX_NAME_CHARS
            {
                return Err(format!(
                    "ci.required[{index}] = {name:?} is empty, too long or \
                     contains control characters; write the check's name \
                     as the forge shows it"
                ));
            }
            if self.required[..index].contains(name) {
                return Err(format!(
                    "ci.required names {name:?} twice; remove one"
                ));
            }
        }
        Ok(())
    }
}

/// The state of one check, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckState {
    Pending,
    Success,
    Failure,
}

impl CheckState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "success" => Self::Success,
            "failure" => Self::Failure,
            _ => Self::Pending,
        }
    }
}

/// One status a forge reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub commit: String,
    pub name: String,
    pub state: CheckState,
    pub description: Option<String>,
    pub url: Option<String>,
    /// The forge's id of the status, check run, pipeline or job. A report
    /// with a lower id than the stored one is older and is ignored.
    pub source_id: i64,
}

/// The verdict of a commit's required checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Passed,
    /// A required check is pending or has not reported.
    Waiting(String),
    /// A required check failed.
    Failed(String),
}

impl Gate {
    fn name(&self) -> &'static str {
        match self {
            Gate::Passed => "passed",
            Gate::Waiting(_) => "waiting",
            Gate::Failed(_) => "failed",
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Gate::Passed => None,
            Gate::Waiting(reason) | Gate::Failed(reason) => Some(reason),
        }
    }
}

/// Creates the table of statuses when it is missing.
pub fn create_table(connection: &Connection) -> DbResult<()> {
    connection
        .execute_batch(SCHEMA)
        .context("creating the commit_checks table")
}

/// One stored status.
struct StoredCheck {
    name: String,
    state: CheckState,
    description: Option<String>,
    url: Option<String>,
    forge: String,
    updated: u64,
}

fn checks_of(
    connection: &Connection,
    commit: &str,
) -> DbResult<Vec<StoredCheck>> {
    let mut statement = connection
        .prepare(
            "SELECT name, state, description, url, forge, updated FROM \
             commit_checks WHERE commit_id = ?1 ORDER BY name",
        )
        .context("reading commit checks")?;
    statement
        .query_map([commit], |row| {
            let state: String = row.get(1)?;
            Ok(StoredCheck {
                name: row.get(0)?,
                state: CheckState::parse(&state),
                description: row.get(2)?,
                url: row.get(3)?,
                forge: row.get(4)?,
                updated: row.get(5)?,
            })
        })
        .context("reading commit checks")?
        .collect::<rusqlite::Result<_>>()
        .context("reading commit checks")
}

/// Decides the gate for `commit` from its stored statuses.
pub fn evaluate(
    connection: &Connection,
    config: &CiConfig,
    commit: &str,
) -> DbResult<Gate> {
    let checks = checks_of(connection, commit)?;
    let short = &commit[..commit.len().min(12)];
    let mut failed = Vec::new();
    let mut waiting = Vec::new();
    for name in &config.required {
        match checks.iter().find(|check| &check.name == name) {
            None => waiting.push(format!("{name:?} has not reported")),
            Some(check) => match check.state {
                CheckState::Success => {}
                CheckState::Pending => {
                    waiting.push(format!("{name:?} is pending"))
                }
                CheckState::Failure => failed.push(match &check.description {
                    Some(text) if !text.is_empty() => {
                        format!("{name:?} failed ({text})")
                    }
                    _ => format!("{name:?} failed"),
                }),
            },
        }
    }
    Ok(if !failed.is_empty() {
        Gate::Failed(format!(
            "required check {} on commit {short}",
            failed.join(", ")
        ))
    } else if !waiting.is_empty() {
        Gate::Waiting(format!(
            "required check {} on commit {short}",
            waiting.join(", ")
        ))
    } else {
        Gate::Passed
    })
}

/// Rejects an approval of proposal `number` while its required checks
/// do not allow one.
pub async fn check_approval(
    state: &AppState,
    number: u64,
    commit: Option<&str>,
) -> Result<(), ApiError> {
    let (Some(config), Some(commit)) = (state.integrations.ci.clone(), commit)
    else {
        return Ok(());
    };
    let commit = commit.to_owned();
    let gate = {
        let config = config.clone();
        state
            .db
            .run(move |connection| evaluate(connection, &config, &commit))
            .await?
    };
    match gate {
        Gate::Passed => Ok(()),
        Gate::Failed(reason) => Err(ApiError::conflict(format!(
            "proposal {number} cannot be approved: {reason}; fix the \
             commit and push again, or run the check again"
        ))),
        Gate::Waiting(_) if config.accept_votes_while_pending => Ok(()),
        Gate::Waiting(reason) => Err(ApiError::conflict(format!(
            "proposal {number} cannot be approved yet: {reason}; approve \
             once the check succeeded"
        ))),
    }
}

/// Decides, in the transaction that found the quorum met, whether the
/// activation must wait for the required checks. When it must, records
/// `activation-held` and returns true; the proposal stays awaiting
/// approval.
pub fn hold(
    tx: &Transaction<'_>,
    config: Option<&CiConfig>,
    number: u64,
    commit: Option<&str>,
) -> DbResult<bool> {
    let (Some(config), Some(commit)) = (config, commit) else {
        return Ok(false);
    };
    let gate = evaluate(tx, config, commit)?;
    let Some(reason) = gate.reason() else {
        return Ok(false);
    };
    db::append_audit(
        tx,
        AuditEvent {
            kind: "activation-held",
            proposal: number,
            approver: None,
            detail: json!({ "gate": gate.name(), "reason": reason }),
        },
    )?;
    Ok(true)
}

/// Builds the `checks` part of a proposal's detail.
pub fn detail(
    connection: &Connection,
    config: Option<&CiConfig>,
    commit: Option<&str>,
) -> DbResult<Value> {
    let Some(config) = config else {
        return Ok(Value::Null);
    };
    let Some(commit) = commit else {
        return Ok(json!({
            "required": config.required,
            "gate": "waiting",
            "reason": "the commit is not known yet",
            "statuses": [],
        }));
    };
    let gate = evaluate(connection, config, commit)?;
    let statuses: Vec<Value> = checks_of(connection, commit)?
        .into_iter()
        .map(|check| {
            json!({
                "name": check.name,
                "state": check.state.as_str(),
                "description": check.description,
                "url": check.url,
                "forge": check.forge,
                "required": config.required.contains(&check.name),
                "updated": check.updated,
            })
        })
        .collect();
    Ok(json!({
        "required": config.required,
        "gate": gate.name(),
        "reason": gate.reason(),
        "statuses": statuses,
    }))
}

/// Returns whether a webhook event of `forge` reports a status.
pub fn is_status_event(forge: &str, event: &str) -> bool {
    match forge {
        "github" => event == "status" || event == "check_run",
        "gitea" | "forgejo" => event == "status",
        "gitlab" => event == "Pipeline Hook",
        _ => false,
    }
}

/// Handles a status event whose signature the webhook handler checked:
/// stores the reported statuses and releases the activations they were
/// holding back.
pub async fn receive(
    state: &AppState,
    forge: &'static str,
    event: &str,
    body: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    let Some(config) = state.integrations.ci.clone() else {
        return Ok(ignored(
            "no [ci] section is configured, so statuses \
                           are not recorded"
                .into(),
        ));
    };
    let (repository, reports) = parse_event(forge, event, body)?;
    let expected = state
        .config
        .webhook
        .as_ref()
        .and_then(|webhook| webhook.repository.as_deref());
    if let Some(expected) = expected
        && repository.as_deref() != Some(expected)
    {
        return Ok(ignored(format!(
            "repository {} is not the configured repository {expected}",
            printable(repository.as_deref().unwrap_or("(none)"), 200)
        )));
    }
    if reports.is_empty() {
        return Ok(ignored("the event reports no status".into()));
    }
    let count = reports.len();
    let stored = reports.clone();
    let commits = state
        .db
        .run(move |connection| store(connection, forge, &stored))
        .await?;
    for report in &reports {
        tracing::info!(
            forge,
            commit = report.commit,
            check = report.name,
            state = report.state.as_str(),
            required = config.required.contains(&report.name),
            "check status recorded"
        );
    }
    for commit in &commits {
        release(state, commit).await;
    }
    Ok((
        StatusCode::OK,
        json!({
            "status": format!("recorded {count} check status(es)"),
            "checks": count,
        }),
    ))
}

fn ignored(reason: String) -> (StatusCode, Value) {
    (
        StatusCode::ACCEPTED,
        json!({ "status": format!("ignored: {reason}") }),
    )
}

/// Stores `reports` and deletes old statuses. Returns the commits whose
/// statuses changed.
fn store(
    connection: &mut Connection,
    forge: &str,
    reports: &[CheckReport],
) -> DbResult<Vec<String>> {
    let now = db::now();
    let tx = connection.transaction().context("begin")?;
    let mut commits: Vec<String> = Vec::new();
    for report in reports {
        let changed = tx
            .execute(
                "INSERT INTO commit_checks (commit_id, name, state, \
                 description, url, forge, source_id, updated) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (commit_id, name) DO UPDATE SET \
                 state = excluded.state, description = excluded.description, \
                 url = excluded.url, forge = excluded.forge, \
                 source_id = excluded.source_id, updated = excluded.updated \
                 WHERE excluded.source_id >= commit_checks.source_id",
                params![
                    report.commit,
                    report.name,
                    report.state.as_str(),
                    report.description,
                    report.url,
                    forge,
                    report.source_id,
                    now
                ],
            )
            .context("storing a commit check")?;
        if changed > 0 && !commits.contains(&report.commit) {
            commits.push(report.commit.clone());
        }
    }
    tx.execute(
        "DELETE FROM commit_checks WHERE updated < ?1",
        [now.saturating_sub(KEEP_SECS)],
    )
    .context("deleting old commit checks")?;
    tx.commit().context("commit")?;
    Ok(commits)
}

/// Sends the certificate of each proposal of `commit` that has its
/// quorum and now passes the gate.
pub async fn release(state: &AppState, commit: &str) {
    let Some(config) = state.integrations.ci.clone() else {
        return;
    };
    let policy = match state.policy.current() {
        Ok(policy) => policy,
        Err(error) => {
            tracing::error!(
                error,
                "the policy cannot be loaded; held activations stay held"
            );
            return;
        }
    };
    let commit = commit.to_owned();
    let result = state
        .db
        .run(move |connection| {
            let numbers = awaiting_numbers(connection, Some(&commit))?;
            let mut jobs = Vec::new();
            for number in numbers {
                let tx = connection.transaction().context("begin")?;
                if let Some(job) =
                    activate_if_ready(&tx, &config, &policy, number)?
                {
                    tx.commit().context("commit")?;
                    jobs.push(job);
                }
            }
            Ok(jobs)
        })
        .await;
    match result {
        Ok(jobs) => {
            for job in jobs {
                tracing::info!(
                    proposal = job.number,
                    "the required checks succeeded; sending the held certificate"
                );
                activation::spawn(state, job);
            }
        }
        Err(error) => {
            tracing::error!(%error, "releasing held activations failed")
        }
    }
}

/// Releases every held activation whose checks passed meanwhile, for a
/// start after a restart or a changed `[ci]` section.
pub async fn release_all(state: &AppState) {
    let commits = state
        .db
        .run(|connection| {
            let numbers = awaiting_numbers(connection, None)?;
            let mut commits = Vec::new();
            for number in numbers {
                if let Some(commit) = db::proposal(connection, number)?
                    .and_then(|row| row.commit)
                    && !commits.contains(&commit)
                {
                    commits.push(commit);
                }
            }
            Ok(commits)
        })
        .await;
    match commits {
        Ok(commits) => {
            for commit in commits {
                release(state, &commit).await;
            }
        }
        Err(error) => {
            tracing::error!(%error, "finding held activations failed")
        }
    }
}

fn awaiting_numbers(
    connection: &Connection,
    commit: Option<&str>,
) -> DbResult<Vec<u64>> {
    let mut statement = connection
        .prepare(
            "SELECT number FROM proposals WHERE state = ?1 AND \
             (?2 IS NULL OR commit_id = ?2) ORDER BY number",
        )
        .context("finding proposals awaiting approval")?;
    statement
        .query_map(
            params![ProposalState::AwaitingApproval.as_str(), commit],
            |row| row.get(0),
        )
        .context("finding proposals awaiting approval")?
        .collect::<rusqlite::Result<_>>()
        .context("finding proposals awaiting approval")
}

/// Moves proposal `number` to `activating` when it awaits approval, has
/// not expired, was made under the policy in force, passes the gate and
/// has its quorum, the same decision a vote makes. Returns the
/// activation to start.
fn activate_if_ready(
    tx: &Transaction<'_>,
    config: &CiConfig,
    policy: &Policy,
    number: u64,
) -> DbResult<Option<ActivationJob>> {
    let Some(row) = db::proposal(tx, number)? else {
        return Ok(None);
    };
    if row.state != ProposalState::AwaitingApproval {
        return Ok(None);
    }
    if row.expires.is_some_and(|expires| db::now() >= expires) {
        return Ok(None);
    }
    let (Some(commit), Some(statement)) =
        (row.commit.as_deref(), row.statement)
    else {
        return Ok(None);
    };
    match Statement::parse(&statement) {
        Ok(parsed) if parsed.policy_sha256 == policy.sha256 => {}
        _ => return Ok(None),
    }
    if evaluate(tx, config, commit)? != Gate::Passed {
        return Ok(None);
    }
    let votes = db::votes(tx, number)?;
    let (approvers, approvals) = votes::counted_approvals(policy, &votes);
    if policy.check_quorum(&approvers).is_err() {
        return Ok(None);
    }
    db::set_state(
        tx,
        number,
        ProposalState::AwaitingApproval,
        ProposalState::Activating,
        None,
    )?;
    let names: Vec<&str> =
        approvers.iter().map(ApproverName::as_str).collect();
    let audit_head = db::append_audit(
        tx,
        AuditEvent {
            kind: "activation-requested",
            proposal: number,
            approver: None,
            detail: json!({
                "approvers": names,
                "statement_sha256": row.statement_sha256,
                "released_by": "checks",
            }),
        },
    )?;
    Ok(Some(ActivationJob {
        number,
        statement,
        approvals,
        audit_head,
    }))
}

/// Evaluates the gate of `commit`, or returns `None` without a `[ci]`
/// section or a commit.
pub fn gate_of(
    connection: &Connection,
    config: Option<&CiConfig>,
    commit: Option<&str>,
) -> DbResult<Option<Gate>> {
    match (config, commit) {
        (Some(config), Some(commit)) => {
            evaluate(connection, config, commit).map(Some)
        }
        _ => Ok(None),
    }
}

// Payload parsing. Only the fields below are read; every value is
// checked before it is stored.

#[derive(Deserialize)]
struct RepositoryField {
    full_name: Option<String>,
}

#[derive(Deserialize)]
struct StatusPayload {
    id: Option<i64>,
    sha: Option<String>,
    state: Option<String>,
    context: Option<String>,
    description: Option<String>,
    target_url: Option<String>,
    repository: Option<RepositoryField>,
}

#[derive(Deserialize)]
struct CheckRunPayload {
    check_run: Option<CheckRun>,
    repository: Option<RepositoryField>,
}

#[derive(Deserialize)]
struct CheckRun {
    id: Option<i64>,
    name: Option<String>,
    head_sha: Option<String>,
    status: Option<String>,
    conclusion: Option<String>,
    details_url: Option<String>,
    html_url: Option<String>,
}

#[derive(Deserialize)]
struct PipelinePayload {
    object_attributes: Option<PipelineAttributes>,
    project: Option<GitLabProject>,
    #[serde(default)]
    builds: Vec<GitLabJob>,
}

#[derive(Deserialize)]
struct PipelineAttributes {
    id: Option<i64>,
    sha: Option<String>,
    status: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize)]
struct GitLabProject {
    path_with_namespace: Option<String>,
    web_url: Option<String>,
}

#[derive(Deserialize)]
struct GitLabJob {
    id: Option<i64>,
    name: Option<String>,
    status: Option<String>,
}

/// Reads the repository's name and the reported statuses of a status
/// event.
pub fn parse_event(
    forge: &str,
    event: &str,
    body: &[u8],
) -> Result<(Option<String>, Vec<CheckReport>), ApiError> {
    let invalid = |error: serde_json::Error| {
        ApiError::bad_request(format!(
            "the {event:?} payload is not valid JSON of that event: {error}; \
             set the webhook's content type to application/json"
        ))
    };
    match (forge, event) {
        ("github" | "gitea" | "forgejo", "status") => {
            let payload: StatusPayload =
                serde_json::from_slice(body).map_err(invalid)?;
            let repository = payload.repository.and_then(|r| r.full_name);
            let commit = required_commit(payload.sha, "sha")?;
            let name = required_name(payload.context, "context")?;
            let state = match payload.state.as_deref() {
                Some("success") => CheckState::Success,
                Some("pending") => CheckState::Pending,
                // GitHub: failure, error; Gitea: failure, error, warning.
                Some(_) => CheckState::Failure,
                None => {
                    return Err(ApiError::bad_request(
                        "the status payload has no \"state\"",
                    ));
                }
            };
            let report = CheckReport {
                commit,
                name,
                state,
                description: clean_text(payload.description),
                url: clean_url(payload.target_url),
                source_id: payload.id.unwrap_or(0),
            };
            Ok((repository, vec![report]))
        }
        ("github", "check_run") => {
            let payload: CheckRunPayload =
                serde_json::from_slice(body).map_err(invalid)?;
            let repository = payload.repository.and_then(|r| r.full_name);
            let Some(run) = payload.check_run else {
                return Err(ApiError::bad_request(
                    "the check_run payload has no \"check_run\"",
                ));
            };
            let commit = required_commit(run.head_sha, "check_run.head_sha")?;
            let name = required_name(run.name, "check_run.name")?;
            let (state, description) = match run.status.as_deref() {
                Some("completed") => match run.conclusion.as_deref() {
                    Some("success") => {
                        (CheckState::Success, "success".to_owned())
                    }
                    Some(other) => (CheckState::Failure, other.to_owned()),
                    None => (CheckState::Failure, "no conclusion".to_owned()),
                },
                Some(other) => (CheckState::Pending, other.to_owned()),
                None => (CheckState::Pending, "queued".to_owned()),
            };
            let report = CheckReport {
                commit,
                name,
                state,
                description: clean_text(Some(description)),
                url: clean_url(run.details_url.or(run.html_url)),
                source_id: run.id.unwrap_or(0),
            };
            Ok((repository, vec![report]))
        }
        ("gitlab", "Pipeline Hook") => {
            let payload: PipelinePayload =
                serde_json::from_slice(body).map_err(invalid)?;
            let repository = payload
                .project
                .as_ref()
                .and_then(|project| project.path_with_namespace.clone());
            let Some(pipeline) = payload.object_attributes else {
                return Err(ApiError::bad_request(
                    "the pipeline payload has no \"object_attributes\"",
                ));
            };
            let commit =
                required_commit(pipeline.sha, "object_attributes.sha")?;
            let pipeline_id = pipeline.id.unwrap_or(0);
            let web_url = payload.project.and_then(|project| project.web_url);
            let pipeline_url = pipeline.url.or_else(|| {
                web_url.map(|base| format!("{base}/-/pipelines/{pipeline_id}"))
            });
            let status = pipeline.status.unwrap_or_else(|| "pending".into());
            let mut reports = vec![CheckReport {
                commit: commit.clone(),
                name: GITLAB_PIPELINE_CHECK.to_owned(),
                state: gitlab_state(&status),
                description: clean_text(Some(status)),
                url: clean_url(pipeline_url),
                source_id: pipeline_id,
            }];
            for job in payload.builds.into_iter().take(MAX_REPORTS - 1) {
                let Ok(name) = required_name(job.name, "builds[].name") else {
                    continue;
                };
                let status = job.status.unwrap_or_else(|| "pending".into());
                reports.push(CheckReport {
                    commit: commit.clone(),
                    name,
                    state: gitlab_state(&status),
                    description: clean_text(Some(status)),
                    url: None,
                    source_id: job.id.unwrap_or(0),
                });
            }
            Ok((repository, reports))
        }
        _ => Err(ApiError::bad_request(format!(
            "event {:?} of {forge} is not a status event",
            printable(event, 40)
        ))),
    }
}

/// Maps a GitLab pipeline or job status. Only `success` succeeds;
/// `failed` and `canceled` fail; `skipped` and `manual` fail too, since a
/// required check that did not run has not passed.
fn gitlab_state(status: &str) -> CheckState {
    match status {
        "success" => CheckState::Success,
        "failed" | "canceled" | "skipped" | "manual" => CheckState::Failure,
        _ => CheckState::Pending,
    }
}

fn required_commit(
    value: Option<String>,
    field: &str,
) -> Result<String, ApiError> {
    let commit = value.unwrap_or_default();
    countersign_nix::git::validate_commit_id(&commit).map_err(|_| {
        ApiError::bad_request(format!(
            "the status payload's \"{field}\" is not a 40-character \
             commit id"
        ))
    })?;
    Ok(commit.to_ascii_lowercase())
}

fn required_name(
    value: Option<String>,
    field: &str,
) -> Result<String, ApiError> {
    match value {
        Some(name)
            if !name.trim().is_empty()
                && name.chars().count() <= MAX_NAME_CHARS
                && !name.chars().any(char::is_control) =>
        {
            Ok(name)
        }
        _ => Err(ApiError::bad_request(format!(
            "the status payload's \"{field}\" is missing, empty, longer than \
             {MAX_NAME_CHARS} characters or contains control characters"
        ))),
    }
}

fn clean_text(value: Option<String>) -> Option<String> {
    value
        .map(|text| printable(&text, MAX_DESCRIPTION_CHARS))
        .filter(|text| !text.is_empty())
}

/// Keeps only `http` and `https` addresses, since pages show them as
/// links.
fn clean_url(value: Option<String>) -> Option<String> {
    value.filter(|url| {
        (url.starts_with("https://") || url.starts_with("http://"))
            && url.chars().count() <= MAX_URL_CHARS
            && !url.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

/// Reads the stored state of `name` on `commit`.
#[cfg(test)]
fn stored_state(
    connection: &Connection,
    commit: &str,
    name: &str,
) -> DbResult<Option<CheckState>> {
    connection
        .query_row(
            "SELECT state FROM commit_checks WHERE commit_id = ?1 AND name = ?2",
            [commit, name],
            |row| row.get::<_, String>(0),
        )
        .map(Some)
        .or_else(|error| match error {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })
        .context("reading a commit check")
        .map(|state| state.map(|state| CheckState::parse(&state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn config(required: &[&str]) -> CiConfig {
        CiConfig {
            required: required.iter().map(|name| (*name).to_owned()).collect(),
            accept_votes_while_pending: false,
        }
    }

    fn report(name: &str, state: CheckState, id: i64) -> CheckReport {
        CheckReport {
            commit: COMMIT.into(),
            name: name.into(),
            state,
            description: Some(format!("{name} {}", state.as_str())),
            url: None,
            source_id: id,
        }
    }

    fn connection() -> Connection {
        let connection = Connection::open_in_memory().unwrap();
        create_table(&connection).unwrap();
        connection
    }

    #[test]
    fn gate_follows_required_checks() {
        let mut connection = connection();
        let config = config(&["build", "test"]);
        let gate = evaluate(&connection, &config, COMMIT).unwrap();
        assert!(
            matches!(&gate, Gate::Waiting(reason) if reason.contains("\"build\" has not reported")),
            "{gate:?}"
        );

        store(
            &mut connection,
            "github",
            &[report("build", CheckState::Success, 1)],
        )
        .unwrap();
        store(
            &mut connection,
            "github",
            &[report("test", CheckState::Pending, 2)],
        )
        .unwrap();
        let gate = evaluate(&connection, &config, COMMIT).unwrap();
        assert!(
            matches!(&gate, Gate::Waiting(reason) if reason.contains("\"test\" is pending")),
            "{gate:?}"
        );

        store(
            &mut connection,
            "github",
            &[report("test", CheckState::Failure, 3)],
        )
        .unwrap();
        let gate = evaluate(&connection, &config, COMMIT).unwrap();
        assert!(
            matches!(&gate, Gate::Failed(reason) if reason.contains("\"test\" failed (test failure)")),
            "{gate:?}"
        );

        // An older report arriving late changes nothing.
        store(
            &mut connection,
            "github",
            &[report("test", CheckState::Success, 2)],
        )
        .unwrap();
        assert_eq!(
            stored_state(&connection, COMMIT, "test").unwrap(),
            Some(CheckState::Failure)
        );

        store(
            &mut connection,
            "github",
            &[report("test", CheckState::Success, 4)],
        )
        .unwrap();
        assert_eq!(
            evaluate(&connection, &config, COMMIT).unwrap(),
            Gate::Passed
        );
        // Checks that are not required do not matter.
        store(
            &mut connection,
            "github",
            &[report("lint", CheckState::Failure, 5)],
        )
        .unwrap();
        assert_eq!(
            evaluate(&connection, &config, COMMIT).unwrap(),
            Gate::Passed
        );
    }

    #[test]
    fn github_status_and_check_run_parse() {
        let body = json!({
            "id": 7, "sha": COMMIT, "state": "error", "context": "ci/build",
            "description": "boom", "target_url": "javascript:alert(1)",
            "repository": { "full_name": "ops/infra" },
        });
        let (repository, reports) =
            parse_event("github", "status", body.to_string().as_bytes())
                .unwrap();
        assert_eq!(repository.as_deref(), Some("ops/infra"));
        assert_eq!(reports[0].state, CheckState::Failure);
        assert_eq!(reports[0].name, "ci/build");
        assert_eq!(reports[0].url, None, "only http(s) links are kept");

        let body = json!({
            "action": "completed",
            "check_run": {
                "id": 9, "name": "nix flake check", "head_sha": COMMIT,
                "status": "completed", "conclusion": "success",
                "details_url": "https://ci.invalid/9",
            },
            "repository": { "full_name": "ops/infra" },
        });
        let (_, reports) =
            parse_event("github", "check_run", body.to_string().as_bytes())
                .unwrap();
        assert_eq!(reports[0].state, CheckState::Success);
        assert_eq!(reports[0].source_id, 9);
        assert_eq!(reports[0].url.as_deref(), Some("https://ci.invalid/9"));

        let body = json!({
            "check_run": { "id": 9, "name": "x", "head_sha": COMMIT,
                           "status": "completed", "conclusion": "skipped" },
        });
        let (_, reports) =
            parse_event("github", "check_run", body.to_string().as_bytes())
                .unwrap();
        assert_eq!(reports[0].state, CheckState::Failure);
    }

    #[test]
    fn gitlab_pipeline_reports_pipeline_and_jobs() {
        let body = json!({
            "object_kind": "pipeline",
            "object_attributes": { "id": 31, "sha": COMMIT, "status": "running" },
            "project": { "path_with_namespace": "ops/infra",
                         "web_url": "https://gitlab.invalid/ops/infra" },
            "builds": [
                { "id": 100, "name": "build", "status": "success" },
                { "id": 101, "name": "deploy", "status": "manual" },
            ],
        });
        let (repository, reports) = parse_event(
            "gitlab",
            "Pipeline Hook",
            body.to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(repository.as_deref(), Some("ops/infra"));
        assert_eq!(reports.len(), 3);
        assert_eq!(reports[0].name, GITLAB_PIPELINE_CHECK);
        assert_eq!(reports[0].state, CheckState::Pending);
        assert_eq!(
            reports[0].url.as_deref(),
            Some("https://gitlab.invalid/ops/infra/-/pipelines/31")
        );
        assert_eq!(reports[1].state, CheckState::Success);
        assert_eq!(reports[2].state, CheckState::Failure);
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        for (forge, event, body) in [
            (
                "gitea",
                "status",
                json!({ "sha": "abc", "state": "success", "context": "x" }),
            ),
            (
                "gitea",
                "status",
                json!({ "sha": COMMIT, "state": "success" }),
            ),
            (
                "forgejo",
                "status",
                json!({ "sha": COMMIT, "context": "x" }),
            ),
            ("github", "check_run", json!({ "repository": {} })),
            ("gitlab", "Pipeline Hook", json!({ "builds": [] })),
        ] {
            let error = parse_event(forge, event, body.to_string().as_bytes())
                .unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
        }
        assert!(parse_event("github", "status", b"not json").is_err());
    }

    #[test]
    fn status_events_are_recognised_per_forge() {
        assert!(is_status_event("github", "status"));
        assert!(is_status_event("github", "check_run"));
        assert!(is_status_event("gitea", "status"));
        assert!(is_status_event("forgejo", "status"));
        assert!(is_status_event("gitlab", "Pipeline Hook"));
        assert!(!is_status_event("gitlab", "status"));
        assert!(!is_status_event("github", "push"));
    }

    #[test]
    fn config_rejects_empty_and_duplicate_names() {
        assert!(config(&[]).check().is_err());
        assert!(config(&["a", "a"]).check().is_err());
        assert!(config(&[" "]).check().is_err());
        assert!(config(&["ci/build", "pipeline"]).check().is_ok());
    }
}
