//! The forge integration and notifications: the configured CI gate,
//! commit status poster, signed-commit check and notifier, and the task
//! that turns proposal events into statuses and notifications.
//!
//! That task follows the audit log. Every state change is written
//! together with its audit entry in one transaction, so reading the log
//! in order finds each change after it was committed. The database wakes
//! the task after each write, so nothing is polled. The position reached
//! is stored in the `integration_cursor` table, so a restarted server
//! goes on where the last one stopped: an event whose status or
//! notification was queued but not sent when the server stopped is sent
//! again. The first start with these settings begins at the newest entry.

use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::ci_gate::{self, CiConfig, Gate};
use crate::config::ServerConfig;
use crate::db::{self, Context, DbResult, ProposalRow, ProposalState};
use crate::forge_status::{CommitState, StatusPoster, StatusUpdate};
use crate::notify::{Notification, Notifier, NotifyEvent};
use crate::outbound::{self, Client};
use crate::signed_commits::{BLOCKED_PREFIX, SignedCommitsConfig};
use crate::state::AppState;
use crate::votes;

/// How many audit entries are read at once.
const BATCH: u64 = 100;

/// The placeholder for the proposal number in `proposal_url`.
const NUMBER_PLACEHOLDER: &str = "{number}";

/// The loaded forge and notification settings, with their tokens.
#[derive(Default)]
pub struct Integrations {
    pub ci: Option<Arc<CiConfig>>,
    pub status: Option<Arc<StatusPoster>>,
    pub signed_commits: Option<SignedCommitsConfig>,
    pub notifier: Option<Arc<Notifier>>,
    proposal_url: Option<String>,
}

impl Integrations {
    /// Checks the sections and reads the token and secret files.
    pub fn load(config: &ServerConfig) -> Result<Self, String> {
        if let Some(template) = &config.proposal_url {
            outbound::validate_url("proposal_url", template)?;
            if !template.contains(NUMBER_PLACEHOLDER) {
                return Err(format!(
                    "proposal_url has no {NUMBER_PLACEHOLDER}; write the \
                     address of a proposal's page with {NUMBER_PLACEHOLDER} \
                     where its number goes"
                ));
            }
        }
        let ci = match &config.ci {
            Some(ci) => {
                ci.check()?;
                if config.webhook.is_none() {
                    return Err("[ci] needs a [webhook] section, because \
                                the forge reports check statuses through \
                                the webhook endpoints"
                        .into());
                }
                Some(Arc::new(ci.clone()))
            }
            None => None,
        };
        if let Some(signed) = &config.signed_commits {
            signed.check()?;
        }
        let client = Client::new();
        let status = config
            .commit_status
            .as_ref()
            .map(|section| {
                StatusPoster::load(section, &config.host, client.clone())
            })
            .transpose()?
            .map(Arc::new);
        if let (Some(ci), Some(status)) = (&ci, &status)
            && ci.required.iter().any(|name| name == status.context())
        {
            return Err(format!(
                "ci.required names {:?}, the commit status this server \
                 posts itself; it succeeds only after the deployment, so \
                 remove it from ci.required",
                status.context()
            ));
        }
        let notifier = config
            .notify
            .as_ref()
            .map(|section| Notifier::load(section, client.clone()))
            .transpose()?
            .map(Arc::new);
        Ok(Self {
            ci,
            status,
            signed_commits: config.signed_commits.clone(),
            notifier,
            proposal_url: config.proposal_url.clone(),
        })
    }

    /// Returns the address of proposal `number`'s page, when configured.
    pub fn proposal_link(&self, number: u64) -> Option<String> {
        self.proposal_url.as_ref().map(|template| {
            template.replace(NUMBER_PLACEHOLDER, &number.to_string())
        })
    }
}

/// Creates the table of check statuses, releases activations whose
/// checks passed while the server was stopped, and starts the status
/// poster and the task that follows the audit log. Returns the tasks to
/// stop on shutdown.
pub async fn start(state: &AppState) -> DbResult<Vec<JoinHandle<()>>> {
    state
        .db
        .run(|connection| ci_gate::create_table(connection))
        .await?;
    let mut tasks = Vec::new();
    if state.integrations.ci.is_some() {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            ci_gate::release_all(&state).await;
        }));
    }
    if let Some(poster) = state.integrations.status.clone() {
        tasks.push(tokio::spawn(async move { poster.run().await }));
    }
    if state.integrations.status.is_some()
        || state.integrations.notifier.is_some()
    {
        let start = state.db.run(start_position).await?;
        tasks.push(tokio::spawn(follow(state.clone(), start)));
    }
    Ok(tasks)
}

/// The table that stores how far the audit log was handled.
const CURSOR_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS integration_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);";

/// Returns the last handled audit entry: the stored position, or the
/// newest entry when there is none.
fn start_position(connection: &mut rusqlite::Connection) -> DbResult<u64> {
    connection
        .execute_batch(CURSOR_SCHEMA)
        .context("creating the integration_cursor table")?;
    let stored: Option<u64> = connection
        .query_row(
            "SELECT seq FROM integration_cursor WHERE id = 1",
            [],
            |row| row.get(0),
        )
        .map(Some)
        .or_else(|error| match error {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })
        .context("reading the integration cursor")?;
    match stored {
        Some(seq) => Ok(seq),
        None => {
            let head =
                db::audit_head(connection)?.map_or(0, |anchor| anchor.seq);
            store_position(connection, head)?;
            Ok(head)
        }
    }
}

fn store_position(
    connection: &rusqlite::Connection,
    seq: u64,
) -> DbResult<()> {
    connection
        .execute(
            "INSERT INTO integration_cursor (id, seq) VALUES (1, ?1) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
            [seq],
        )
        .context("storing the integration cursor")?;
    Ok(())
}

/// Reads the audit log after entry `after` as it grows and reacts to the
/// proposal events in it.
async fn follow(state: AppState, mut after: u64) {
    let mut changes = state.db.subscribe();
    loop {
        // Marking the current change as seen before reading means a
        // write during the read wakes the next wait.
        changes.borrow_and_update();
        let entries = state
            .db
            .run(move |connection| entries_after(connection, after))
            .await;
        let entries = match entries {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, "reading the audit log for notifications failed");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                continue;
            }
        };
        if entries.is_empty() {
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        }
        for (seq, body) in entries {
            after = seq;
            if let Err(error) = react(&state, &body).await {
                tracing::error!(%error, audit_seq = seq, "handling a proposal event failed");
            }
        }
        let stored = state
            .db
            .run(move |connection| store_position(connection, after))
            .await;
        if let Err(error) = stored {
            tracing::error!(%error, audit_seq = after, "storing the integration cursor failed");
        }
    }
}

fn entries_after(
    connection: &rusqlite::Connection,
    after: u64,
) -> DbResult<Vec<(u64, Value)>> {
    let mut statement = connection
        .prepare(
            "SELECT seq, body FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .context("reading the audit log")?;
    let rows: Vec<(u64, Vec<u8>)> = statement
        .query_map([after, BATCH], |row| Ok((row.get(0)?, row.get(1)?)))
        .context("reading the audit log")?
        .collect::<rusqlite::Result<_>>()
        .context("reading the audit log")?;
    // An entry that does not parse (which the audit verification would
    // report) counts as handled, so that the task moves past it.
    Ok(rows
        .into_iter()
        .map(|(seq, body)| {
            (seq, serde_json::from_slice(&body).unwrap_or(Value::Null))
        })
        .collect())
}

/// The commit status and the notification one audit event leads to.
struct Reaction {
    status: Option<(CommitState, bool, String)>,
    notify: Option<NotifyEvent>,
}

/// The proposal and what the statuses describe, read together.
struct Snapshot {
    row: ProposalRow,
    approvals: usize,
    threshold: usize,
    gate: Option<Gate>,
}

async fn react(state: &AppState, entry: &Value) -> DbResult<()> {
    let kind = entry["kind"].as_str().unwrap_or("").to_owned();
    let Some(number) = entry["proposal"].as_u64() else {
        return Ok(());
    };
    let relevant = matches!(
        kind.as_str(),
        "proposal-built"
            | "approval"
            | "rejection"
            | "activation-held"
            | "activation-requested"
            | "activation-finished"
            | "proposal-failed"
            | "proposal-rejected"
            | "proposal-expired"
            | "proposal-superseded"
    );
    if !relevant {
        return Ok(());
    }
    let Some(snapshot) = snapshot(state, number).await? else {
        return Ok(());
    };
    let reaction = reaction(&kind, &entry["detail"], &snapshot);
    let row = &snapshot.row;
    let link = state.integrations.proposal_link(number);
    if let (
        Some(poster),
        Some((commit_state, started, description)),
        Some(commit),
    ) = (&state.integrations.status, reaction.status, &row.commit)
    {
        poster.post(StatusUpdate {
            proposal: number,
            event: event_name(&kind),
            commit: commit.clone(),
            state: commit_state,
            started,
            description,
            target_url: link.clone(),
        });
    }
    if let (Some(notifier), Some(event)) =
        (&state.integrations.notifier, reaction.notify)
    {
        notifier.send(Notification {
            event,
            host: state.config.host.clone(),
            proposal: number,
            state: state_after(event, row.state).to_owned(),
            commit: row.commit.clone(),
            url: link,
        });
    }
    Ok(())
}

/// Returns the proposal state that the notification reports: the state the event
/// led to, even when the proposal moved on since.
fn state_after(event: NotifyEvent, current: ProposalState) -> &'static str {
    match event {
        NotifyEvent::AwaitingApproval => {
            ProposalState::AwaitingApproval.as_str()
        }
        NotifyEvent::Deployed => ProposalState::Deployed.as_str(),
        NotifyEvent::RolledBack => ProposalState::RolledBack.as_str(),
        NotifyEvent::Rejected => ProposalState::Rejected.as_str(),
        NotifyEvent::Expired => ProposalState::Expired.as_str(),
        NotifyEvent::Superseded => ProposalState::Superseded.as_str(),
        NotifyEvent::Failed => match current {
            ProposalState::Refused => ProposalState::Refused.as_str(),
            _ => ProposalState::Failed.as_str(),
        },
    }
}

/// Returns a static name of the audit kind, for logs.
fn event_name(kind: &str) -> &'static str {
    match kind {
        "proposal-built" => "proposal-built",
        "approval" => "approval",
        "rejection" => "rejection",
        "activation-held" => "activation-held",
        "activation-requested" => "activation-requested",
        "activation-finished" => "activation-finished",
        "proposal-failed" => "proposal-failed",
        "proposal-rejected" => "proposal-rejected",
        "proposal-expired" => "proposal-expired",
        "proposal-superseded" => "proposal-superseded",
        _ => "other",
    }
}

async fn snapshot(
    state: &AppState,
    number: u64,
) -> DbResult<Option<Snapshot>> {
    let policy = state.policy.current().ok();
    let ci = state.integrations.ci.clone();
    state
        .db
        .run(move |connection| {
            let Some(row) = db::proposal(connection, number)? else {
                return Ok(None);
            };
            let votes = db::votes(connection, number)?;
            let (approvals, threshold) = match &policy {
                Some(policy) => (
                    votes::counted_approvals(policy, &votes).0.len(),
                    policy.threshold,
                ),
                None => (0, 0),
            };
            let gate = ci_gate::gate_of(
                connection,
                ci.as_deref(),
                row.commit.as_deref(),
            )?;
            Ok(Some(Snapshot {
                row,
                approvals,
                threshold,
                gate,
            }))
        })
        .await
}

/// Decides the commit status and the notification of one audit event.
fn reaction(kind: &str, detail: &Value, snapshot: &Snapshot) -> Reaction {
    let row = &snapshot.row;
    let count =
        format!("{} of {} approvals", snapshot.approvals, snapshot.threshold);
    let waiting = match &snapshot.gate {
        Some(Gate::Waiting(reason)) | Some(Gate::Failed(reason)) => {
            format!("; {reason}")
        }
        _ => String::new(),
    };
    let pending = |started: bool, text: String| Reaction {
        status: Some((CommitState::Pending, started, text)),
        notify: None,
    };
    let ended =
        |state: CommitState, text: String, event: NotifyEvent| Reaction {
            status: Some((state, true, text)),
            notify: Some(event),
        };
    let error_text =
        || first_line(row.error.as_deref().unwrap_or("no reason recorded"));
    match kind {
        "proposal-built" => {
            if row.state == ProposalState::Superseded {
                return Reaction {
                    status: None,
                    notify: None,
                };
            }
            Reaction {
                status: Some((
                    CommitState::Pending,
                    false,
                    format!("awaiting approval: {count}{waiting}"),
                )),
                notify: Some(NotifyEvent::AwaitingApproval),
            }
        }
        "approval" | "rejection"
            if row.state == ProposalState::AwaitingApproval =>
        {
            pending(
                snapshot.approvals > 0,
                format!("awaiting approval: {count}{waiting}"),
            )
        }
        "activation-held" => pending(
            true,
            format!(
                "{count}; waiting: {}",
                detail["reason"].as_str().unwrap_or("required checks")
            ),
        ),
        "activation-requested" => {
            pending(true, format!("approved ({count}); activating"))
        }
        "activation-finished" => {
            let outcome = detail["outcome"].as_str().unwrap_or("");
            let message = first_line(
                detail["message"]
                    .as_str()
                    .or(detail["error"].as_str())
                    .or(row.error.as_deref())
                    .unwrap_or(""),
            );
            match outcome {
                "activated" | "deployed" => ended(
                    CommitState::Success,
                    format!("deployed (proposal {})", row.number),
                    NotifyEvent::Deployed,
                ),
                "rolled-back" => ended(
                    CommitState::Failure,
                    format!("rolled back: {message}"),
                    NotifyEvent::RolledBack,
                ),
                "refused" => ended(
                    CommitState::Failure,
                    format!("refused by the activator: {message}"),
                    NotifyEvent::Failed,
                ),
                _ => ended(
                    CommitState::Failure,
                    format!("activation failed: {message}"),
                    NotifyEvent::Failed,
                ),
            }
        }
        "proposal-failed" => {
            let error = error_text();
            let text = if let Some(reason) = error.strip_prefix(BLOCKED_PREFIX)
            {
                format!("blocked: {reason}")
            } else {
                format!("failed: {error}")
            };
            ended(CommitState::Failure, text, NotifyEvent::Failed)
        }
        "proposal-rejected" => {
            ended(CommitState::Failure, error_text(), NotifyEvent::Rejected)
        }
        "proposal-expired" => ended(
            CommitState::Error,
            "expired without a quorum".to_owned(),
            NotifyEvent::Expired,
        ),
        "proposal-superseded" => {
            ended(CommitState::Error, error_text(), NotifyEvent::Superseded)
        }
        _ => Reaction {
            status: None,
            notify: None,
        },
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_owned()
}

/// Returns the forge-related fields of a proposal's detail: the checks of its
/// commit and why it is blocked.
pub async fn detail_fields(
    state: &AppState,
    row: &ProposalRow,
) -> Result<serde_json::Map<String, Value>, db::DbError> {
    let mut fields = serde_json::Map::new();
    let blocked = match (row.state, row.error.as_deref()) {
        (ProposalState::Failed, Some(error)) => {
            error.strip_prefix(BLOCKED_PREFIX)
        }
        _ => None,
    };
    fields.insert("blocked".into(), blocked.into());
    if let Some(config) = state.integrations.ci.clone() {
        let commit = row.commit.clone();
        let checks = state
            .db
            .run(move |connection| {
                ci_gate::detail(connection, Some(&config), commit.as_deref())
            })
            .await?;
        fields.insert("checks".into(), checks);
    }
    if let Some(link) = state.integrations.proposal_link(row.number) {
        fields.insert("url".into(), link.into());
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: ProposalState, error: Option<&str>) -> ProposalRow {
        ProposalRow {
            number: 5,
            state,
            requested_rev: None,
            requested_by: "trigger".into(),
            commit: Some("c".repeat(40)),
            subject: None,
            base: None,
            target: None,
            source_path: None,
            nar_hash: None,
            statement: None,
            statement_sha256: None,
            diff: None,
            error: error.map(str::to_owned),
            created: 0,
            expires: None,
            updated: 0,
        }
    }

    fn snapshot(
        state: ProposalState,
        error: Option<&str>,
        gate: Option<Gate>,
    ) -> Snapshot {
        Snapshot {
            row: row(state, error),
            approvals: 1,
            threshold: 2,
            gate,
        }
    }

    #[test]
    fn approvals_post_pending_with_count() {
        let reaction = reaction(
            "approval",
            &Value::Null,
            &snapshot(ProposalState::AwaitingApproval, None, None),
        );
        let (state, started, text) = reaction.status.unwrap();
        assert_eq!(state, CommitState::Pending);
        assert!(started);
        assert_eq!(text, "awaiting approval: 1 of 2 approvals");
        assert!(reaction.notify.is_none());
    }

    #[test]
    fn built_proposal_notifies_and_names_waiting_checks() {
        let gate = Gate::Waiting(
            "required check \"build\" is pending on commit c".into(),
        );
        let reaction = reaction(
            "proposal-built",
            &Value::Null,
            &snapshot(ProposalState::AwaitingApproval, None, Some(gate)),
        );
        assert_eq!(reaction.notify, Some(NotifyEvent::AwaitingApproval));
        let (_, _, text) = reaction.status.unwrap();
        assert!(text.contains("\"build\" is pending"), "{text}");
        let superseded = super::reaction(
            "proposal-built",
            &Value::Null,
            &snapshot(ProposalState::Superseded, None, None),
        );
        assert!(superseded.notify.is_none());
    }

    #[test]
    fn outcomes_map_to_states_and_events() {
        let cases = [
            ("activated", CommitState::Success, NotifyEvent::Deployed),
            ("rolled-back", CommitState::Failure, NotifyEvent::RolledBack),
            ("refused", CommitState::Failure, NotifyEvent::Failed),
            ("failed", CommitState::Failure, NotifyEvent::Failed),
        ];
        for (outcome, state, event) in cases {
            let detail = serde_json::json!({ "outcome": outcome, "message": "m\nmore" });
            let reaction = reaction(
                "activation-finished",
                &detail,
                &snapshot(ProposalState::Deployed, None, None),
            );
            assert_eq!(
                reaction.status.as_ref().unwrap().0,
                state,
                "{outcome}"
            );
            assert_eq!(reaction.notify, Some(event), "{outcome}");
        }
    }

    /// Uncomments the forge sections of the example configuration and
    /// the `proposal_url` line.
    fn example_with_forge_sections() -> String {
        let example = include_str!("../../../examples/server.toml");
        let mut inside = false;
        let mut lines = Vec::new();
        for line in example.lines() {
            if line.starts_with("# [ci]") {
                inside = true;
            }
            if line.starts_with("[nix]") {
                inside = false;
            }
            let setting = line.strip_prefix("# ").filter(|rest| {
                rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(key, _)| {
                        key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
            });
            match setting {
                Some(rest) if inside || rest.starts_with("proposal_url") => {
                    lines.push(rest)
                }
                _ => lines.push(line),
            }
        }
        lines.join("\n")
    }

    #[test]
    fn example_forge_sections_parse() {
        let config = ServerConfig::parse(&example_with_forge_sections())
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.ci.unwrap().required, ["ci/build"]);
        let status = config.commit_status.unwrap();
        assert_eq!(status.forge, crate::forge_status::ForgeApi::GitHub);
        assert!(
            config.signed_commits.unwrap().check().is_err(),
            "the files do not exist here"
        );
        let notify = config.notify.unwrap();
        assert!(notify.ntfy.is_some());
        assert!(notify.webhook.is_some());
        assert!(config.proposal_url.unwrap().contains(NUMBER_PLACEHOLDER));
    }

    #[test]
    fn load_rejects_inconsistent_sections() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        let base = format!(
            "host = \"demo\"\nlisten = \"127.0.0.1:0\"\n\
             state_dir = \"/tmp/x\"\npolicy = \"/tmp/p\"\n\
             activator_socket = \"/tmp/s\"\n\
             [repository]\nurl = \"/srv/infra.git\"\n\
             [commit_status]\nforge = \"gitea\"\n\
             api_url = \"https://git.invalid/api/v1\"\n\
             repository = \"ops/infra\"\ntoken_file = \"{}\"\n",
            token.display()
        );
        let load = |extra: &str| {
            let config =
                ServerConfig::parse(&format!("{base}{extra}")).unwrap();
            Integrations::load(&config).map(|_| ())
        };
        assert!(load("").is_ok());

        let error = load("[ci]\nrequired = [\"build\"]\n").unwrap_err();
        assert!(error.contains("needs a [webhook] section"), "{error}");

        let webhook = "[webhook]\nsecret_file = \"/run/keys/hook\"\n";
        assert!(
            load(&format!("{webhook}[ci]\nrequired = [\"build\"]\n")).is_ok()
        );
        let error = load(&format!(
            "{webhook}[ci]\nrequired = [\"countersign/demo\"]\n"
        ))
        .unwrap_err();
        assert!(error.contains("posts itself"), "{error}");

        let error = load("[notify]\nevents = [\"deployed\"]\n").unwrap_err();
        assert!(error.contains("neither [notify.ntfy]"), "{error}");

        std::fs::write(&token, "\n").unwrap();
        let error = load("").unwrap_err();
        assert!(error.contains("commit_status.token_file"), "{error}");
    }

    #[test]
    fn proposal_url_needs_the_number() {
        let config = |url: &str| {
            ServerConfig::parse(&format!(
                "host = \"demo\"\nlisten = \"127.0.0.1:0\"\n\
                 state_dir = \"/tmp/x\"\npolicy = \"/tmp/p\"\n\
                 activator_socket = \"/tmp/s\"\nproposal_url = \"{url}\"\n\
                 [repository]\nurl = \"/srv/infra.git\"\n"
            ))
            .unwrap()
        };
        let loaded =
            Integrations::load(&config("https://d.invalid/p/{number}"))
                .unwrap();
        assert_eq!(
            loaded.proposal_link(12).as_deref(),
            Some("https://d.invalid/p/12")
        );
        let error = Integrations::load(&config("https://d.invalid/p/"))
            .err()
            .unwrap();
        assert!(error.contains("{number}"), "{error}");
        assert!(Integrations::load(&config("d.invalid/{number}")).is_err());
    }

    #[test]
    fn blocked_failure_keeps_its_reason() {
        let reaction = reaction(
            "proposal-failed",
            &Value::Null,
            &snapshot(
                ProposalState::Failed,
                Some("blocked: commit c is not signed\nsecond line"),
                None,
            ),
        );
        let (state, _, text) = reaction.status.unwrap();
        assert_eq!(state, CommitState::Failure);
        assert_eq!(text, "blocked: commit c is not signed");
        assert_eq!(reaction.notify, Some(NotifyEvent::Failed));
    }
}
