//! The routes of the web pages and their handlers.

use std::time::Duration;

use askama::Template;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use countersign_core::{Policy, Verdict};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use super::passkey::{self, AssertionBody};
use super::security::{ClientAddr, same_origin, too_many};
use super::session::{Purpose, TooManyChallenges};
use super::templates::{
    ActivationLine, EnrolPage, ErrorPage, HistoryPage, HistoryRow, Layout,
    ListPage, ListRow, ProposalPage, ProposalView, SignInPage, VoteView,
};
use super::view::{DiffView, age_text, short_id, utc_text};
use super::{assets, sse};
use crate::api_error::{ApiError, JsonBody};
use crate::db::{self, ProposalRow, ProposalState, StoredVerdict, VoteRow};
use crate::state::AppState;
use crate::votes;

/// Largest request body of the pages' own endpoints, in bytes. A
/// WebAuthn response is a few kilobytes.
const MAX_WEB_BODY_BYTES: usize = 64 * 1024;

/// Maximum time one page request may take.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most proposals the list shows.
const LIST_LIMIT: u64 = 200;

/// Most audit entries the history reads.
const HISTORY_LIMIT: u64 = 2000;

/// The build log's tail shown on a page, in bytes; the rest is in the
/// API's log endpoint.
pub const LOG_TAIL_BYTES: u64 = 256 * 1024;

pub fn router(state: AppState) -> Router {
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/proposals") }))
        .route("/proposals", get(list))
        .route("/proposals/{n}", get(proposal))
        .route("/proposals/{n}/events", get(sse::events))
        .route("/proposals/{n}/passkey", get(vote_challenge))
        .route("/history", get(history))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-in/challenge", post(sign_in_challenge))
        .route("/sign-out", post(sign_out))
        .route("/enrol", get(enrol_page).post(enrol))
        .route("/enrol/challenge", post(enrol_challenge))
        .route("/static/countersign.js", get(assets::script))
        .route("/static/countersign.css", get(assets::style));
    pages
        .layer(from_fn_with_state(state.clone(), require_same_origin))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_WEB_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(MAX_WEB_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            PAGE_TIMEOUT,
        ))
        // Pages hold no secret (no token, no cookie value), so compressing
        // them next to repository text gives a BREACH attacker nothing to
        // recover.
        .layer(
            CompressionLayer::new()
                .gzip(true)
                .no_br()
                .no_deflate()
                .no_zstd(),
        )
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .with_state(state)
}

/// Rejects state-changing requests to the pages' endpoints unless the
/// browser's `Origin` (or `Sec-Fetch-Site`) header shows that they come
/// from the configured public origin.
async fn require_same_origin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let origin = match state.web.enabled() {
        Some(enabled) => enabled.origin.origin.as_str(),
        None => return StatusCode::NOT_FOUND.into_response(),
    };
    if !same_origin(request.method(), request.headers(), origin) {
        tracing::warn!(
            path = request.uri().path(),
            "cross-origin request to the pages refused"
        );
        return ApiError::forbidden(format!(
            "this request must come from the pages at {origin}"
        ))
        .into_response();
    }
    next.run(request).await
}

/// The signed-in approver of a page request. Without a session the
/// browser is sent to the sign-in page, which comes back here.
pub struct Viewer(pub String);

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match viewer(state, &parts.headers) {
            Some(name) => Ok(Viewer(name)),
            None => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|path| path.as_str())
                    .unwrap_or("/proposals");
                let target = format!("/sign-in?next={}", query_escape(next));
                Err(Redirect::to(&target).into_response())
            }
        }
    }
}

/// The signed-in approver, if any, that the policy still lists.
fn viewer(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let enabled = state.web.enabled()?;
    let name = enabled
        .sessions
        .approver(headers, db::now())
        .ok()
        .flatten()?;
    let listed = state.policy.current().ok().is_some_and(|policy| {
        policy
            .approvers
            .keys()
            .any(|listed| listed.as_str() == name)
    });
    if listed {
        Some(name)
    } else {
        // The policy changed and no longer lists this approver.
        enabled.sessions.close_all_of(&name);
        None
    }
}

fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn layout(
    state: &AppState,
    title: impl Into<String>,
    approver: Option<String>,
) -> Layout {
    Layout {
        title: title.into(),
        host: state.config.host.clone(),
        approver,
    }
}

/// A rendered page, or an error page with its status.
fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => {
            let mut response = Html(html).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(error) => {
            tracing::error!(%error, "rendering a page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering the page failed; see the server log",
            )
                .into_response()
        }
    }
}

/// An error shown as a page.
struct PageError {
    status: StatusCode,
    message: String,
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        Self {
            status: error.status,
            message: error.message,
        }
    }
}

impl From<db::DbError> for PageError {
    fn from(error: db::DbError) -> Self {
        ApiError::from(error).into()
    }
}

fn error_page(
    state: &AppState,
    viewer: Option<String>,
    error: PageError,
) -> Response {
    let heading = match error.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::BAD_REQUEST => "Invalid request",
        _ => "Something went wrong",
    };
    let page = ErrorPage {
        layout: layout(state, heading, viewer),
        heading: heading.to_owned(),
        message: error.message,
    };
    let mut response = render(&page);
    *response.status_mut() = error.status;
    response
}

fn policy(state: &AppState) -> Result<std::sync::Arc<Policy>, ApiError> {
    state.policy.current().map_err(|error| {
        tracing::error!(error, "the policy cannot be loaded");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error)
    })
}

fn parse_number(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|number| *number > 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid proposal number {:?}: expected a positive integer",
                text.chars().take(40).collect::<String>()
            ))
        })
}

/// The quorum of a proposal's votes under `policy`: approvals counted,
/// threshold, and the required approvers still missing.
pub fn quorum(
    policy: &Policy,
    votes: &[VoteRow],
) -> (usize, usize, Vec<String>) {
    let (counted, _) = votes::counted_approvals(policy, votes);
    match policy.check_quorum(&counted) {
        Ok(()) => (counted.len(), policy.threshold, Vec::new()),
        Err(shortfall) => (
            shortfall.have,
            shortfall.threshold,
            shortfall
                .missing_required
                .iter()
                .map(|name| name.as_str().to_owned())
                .collect(),
        ),
    }
}

async fn list(
    State(state): State<AppState>,
    Viewer(viewer): Viewer,
) -> Response {
    match list_rows(&state).await {
        Ok(rows) => render(&ListPage {
            layout: layout(&state, "Proposals", Some(viewer)),
            rows,
        }),
        Err(error) => error_page(&state, Some(viewer), error),
    }
}

async fn list_rows(state: &AppState) -> Result<Vec<ListRow>, PageError> {
    let rows = state
        .db
        .run(|connection| {
            let rows = db::proposals(connection, LIST_LIMIT)?;
            let mut with_votes = Vec::with_capacity(rows.len());
            for row in rows {
                let votes = db::votes(connection, row.number)?;
                with_votes.push((row, votes));
            }
            Ok(with_votes)
        })
        .await?;
    let policy = policy(state)?;
    let now = db::now();
    Ok(rows
        .into_iter()
        .map(|(row, votes)| {
            let (have, threshold, _) = quorum(&policy, &votes);
            ListRow {
                number: row.number,
                state: row.state.to_string(),
                host: state.config.host.clone(),
                commit: row
                    .commit
                    .as_deref()
                    .map(short_id)
                    .unwrap_or("pending")
                    .to_owned(),
                subject: clean(row.subject.as_deref().unwrap_or("")),
                age: age_text(row.created, now),
                created_utc: utc_text(row.created),
                have,
                threshold,
            }
        })
        .collect())
}

fn clean(text: &str) -> String {
    countersign_nix::escape_control_chars(text).into_owned()
}

/// Everything the proposal page and its event stream read about one
/// proposal.
pub struct Snapshot {
    pub row: ProposalRow,
    pub votes: Vec<VoteRow>,
    /// Activation events with their database ids.
    pub events: Vec<(i64, u64, Value)>,
}

/// Reads a proposal, its votes and the activation events after
/// `after_event`.
pub async fn snapshot(
    state: &AppState,
    number: u64,
    after_event: i64,
) -> Result<Option<Snapshot>, db::DbError> {
    state
        .db
        .run(move |connection| {
            let Some(row) = db::proposal(connection, number)? else {
                return Ok(None);
            };
            let votes = db::votes(connection, number)?;
            let events =
                activation_events_after(connection, number, after_event)?;
            Ok(Some(Snapshot { row, votes, events }))
        })
        .await
}

pub fn activation_events_after(
    connection: &rusqlite::Connection,
    number: u64,
    after: i64,
) -> Result<Vec<(i64, u64, Value)>, db::DbError> {
    use crate::db::Context as _;
    let mut statement = connection
        .prepare(
            "SELECT id, at, event FROM activation_events \
             WHERE proposal = ?1 AND id > ?2 ORDER BY id",
        )
        .context("reading activation events")?;
    let rows = statement
        .query_map(rusqlite::params![number, after], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, u64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .context("reading activation events")?
        .collect::<rusqlite::Result<Vec<_>>>()
        .context("reading activation events")?;
    Ok(rows
        .into_iter()
        .map(|(id, at, text)| {
            let value =
                serde_json::from_str(&text).unwrap_or(Value::String(text));
            (id, at, value)
        })
        .collect())
}

/// One activation event as a line of text.
pub fn activation_text(event: &Value) -> String {
    let text = |key: &str| event[key].as_str().unwrap_or("").to_owned();
    let line = match event["event"].as_str() {
        Some("progress") => format!("{}: {}", text("step"), text("message")),
        Some("log") => text("line"),
        Some("finished") => {
            format!("finished, {}: {}", text("outcome"), text("message"))
        }
        Some("connection-lost") => {
            format!("connection lost: {}", text("message"))
        }
        Some(other) => format!("{other}: {event}"),
        None => event.to_string(),
    };
    clean(&line)
}

pub fn vote_views(votes: &[VoteRow]) -> Vec<VoteView> {
    votes
        .iter()
        .map(|vote| VoteView {
            approver: vote.approver.clone(),
            verdict: match vote.verdict {
                StoredVerdict::Approve => "approve",
                StoredVerdict::Reject => "reject",
            },
            at_utc: utc_text(vote.at),
            reason: clean(vote.reason.as_deref().unwrap_or("")),
        })
        .collect()
}

/// Whether a proposal in `state` can still change.
pub fn is_live(state: ProposalState) -> bool {
    matches!(
        state,
        ProposalState::Building
            | ProposalState::AwaitingApproval
            | ProposalState::Activating
    )
}

/// Reads the last [`LOG_TAIL_BYTES`] of a build log, from a line start,
/// and the file's length.
pub async fn log_tail(state: &AppState, number: u64) -> (String, u64) {
    read_tail(&state.log_path(number))
        .await
        .unwrap_or((String::new(), 0))
}

/// Reads the last [`LOG_TAIL_BYTES`] of the file at `path`, from a line
/// start, with each line escaped for display, and the file's length. Only
/// the tail is read, however long the file is.
async fn read_tail(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let mut file = tokio::fs::File::open(path).await?;
    let length = file.metadata().await?.len();
    let start = length.saturating_sub(LOG_TAIL_BYTES);
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut bytes = Vec::new();
    file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes).await?;
    let mut tail = bytes.as_slice();
    if start > 0
        && let Some(newline) = tail.iter().position(|byte| *byte == b'\n')
    {
        tail = &tail[newline + 1..];
    }
    let text = String::from_utf8_lossy(tail);
    let lines: Vec<String> = text.lines().map(clean).collect();
    Ok((lines.join("\n"), length))
}

async fn proposal(
    State(state): State<AppState>,
    Viewer(viewer): Viewer,
    Path(n): Path<String>,
) -> Response {
    match proposal_page(&state, &viewer, &n).await {
        Ok(page) => render(&page),
        Err(error) => error_page(&state, Some(viewer), error),
    }
}

async fn proposal_page(
    state: &AppState,
    viewer: &str,
    n: &str,
) -> Result<ProposalPage, PageError> {
    let number = parse_number(n)?;
    let snapshot = snapshot(state, number, 0)
        .await?
        .ok_or_else(|| ApiError::proposal_not_found(number))?;
    let policy = policy(state)?;
    let Snapshot { row, votes, events } = snapshot;
    let (have, threshold, missing) = quorum(&policy, &votes);
    let diff = match &row.diff {
        Some(bytes) => {
            let bytes = bytes.clone();
            let document = tokio::task::spawn_blocking(move || {
                countersign_nix::diff::DiffDocument::from_json(&bytes)
                    .map(|document| DiffView::new(&document))
            })
            .await
            .map_err(|error| ApiError::internal("reading the diff", &error))?
            .map_err(|error| ApiError::internal("reading the diff", &error))?;
            Some(document)
        }
        None => None,
    };
    let (log, log_offset) = log_tail(state, number).await;
    let passkey = passkey::credential_id(&policy, viewer);
    let awaiting = row.state == ProposalState::AwaitingApproval;
    let can_vote = awaiting && passkey.is_some();
    let vote_after_build =
        row.state == ProposalState::Building && passkey.is_some();
    let vote_note = if vote_after_build {
        format!(
            "Proposal #{number} is building. Once it is built, reload the \
             page to review the diffs and vote."
        )
    } else if !awaiting {
        format!("Proposal #{number} is {} and takes no votes.", row.state)
    } else if passkey.is_none() {
        format!(
            "The policy lists no passkey for {viewer}; approve with \
             `countersign approve {number}` and your SSH key."
        )
    } else {
        String::new()
    };
    let now = db::now();
    let view = ProposalView {
        number,
        state: row.state.to_string(),
        live: is_live(row.state),
        host: state.config.host.clone(),
        commit: row
            .commit
            .clone()
            .unwrap_or_else(|| "not fetched yet".into()),
        subject: clean(row.subject.as_deref().unwrap_or("")),
        requested_by: clean(&row.requested_by),
        created_utc: utc_text(row.created),
        created_age: age_text(row.created, now),
        expires_utc: row.expires.map(utc_text),
        base: row.base.clone(),
        target: row.target.clone(),
        statement_sha256: row.statement_sha256.clone(),
        error: clean(row.error.as_deref().unwrap_or("")),
        have,
        threshold,
        missing_required: missing.join(", "),
        votes: vote_views(&votes),
        can_vote,
        vote_after_build,
        viewer: viewer.to_owned(),
        vote_note,
        activation: events
            .iter()
            .map(|(_, at, event)| ActivationLine {
                at_utc: utc_text(*at),
                text: activation_text(event),
            })
            .collect(),
        activation_after: events.last().map_or(0, |(id, _, _)| *id),
        log_lines: log.lines().count(),
        log,
        log_offset,
    };
    Ok(ProposalPage {
        layout: layout(
            state,
            format!("Proposal #{number}"),
            Some(viewer.to_owned()),
        ),
        p: view,
        diff,
    })
}

async fn history(
    State(state): State<AppState>,
    Viewer(viewer): Viewer,
) -> Response {
    match history_rows(&state).await {
        Ok(rows) => render(&HistoryPage {
            layout: layout(&state, "History", Some(viewer)),
            rows,
        }),
        Err(error) => error_page(&state, Some(viewer), error),
    }
}

/// The activations of the audit log, newest first: each
/// `activation-finished` entry with the approvers of the request before
/// it.
async fn history_rows(state: &AppState) -> Result<Vec<HistoryRow>, PageError> {
    let entries = state
        .db
        .run(|connection| {
            use crate::db::Context as _;
            let mut statement = connection
                .prepare("SELECT seq, hash, body FROM audit ORDER BY seq DESC LIMIT ?1")
                .context("reading the audit log")?;
            let entries = statement
                .query_map([HISTORY_LIMIT], |row| {
                    Ok((row.get::<_, u64>(0)?, row.get::<_, String>(1)?, row.get::<_, Vec<u8>>(2)?))
                })
                .context("reading the audit log")?
                .collect::<rusqlite::Result<Vec<_>>>()
                .context("reading the audit log")?;
            let proposals = db::proposals(connection, HISTORY_LIMIT)?;
            Ok((entries, proposals))
        })
        .await?;
    let (entries, proposals) = entries;
    let bodies: Vec<(u64, String, Value)> = entries
        .into_iter()
        .filter_map(|(seq, hash, body)| {
            serde_json::from_slice(&body)
                .ok()
                .map(|body| (seq, hash, body))
        })
        .collect();
    let mut rows = Vec::new();
    for (seq, hash, body) in &bodies {
        if body["kind"] != "activation-finished" {
            continue;
        }
        let proposal = body["proposal"].as_u64().unwrap_or(0);
        let approvers = bodies
            .iter()
            .find(|(other, _, entry)| {
                other < seq
                    && entry["kind"] == "activation-requested"
                    && entry["proposal"] == proposal
            })
            .map(|(_, _, entry)| {
                entry["detail"]["approvers"]
                    .as_array()
                    .map(|names| {
                        names
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let outcome = body["detail"]["outcome"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        let outcome_class = match outcome.as_str() {
            "activated" | "deployed" => "deployed",
            "refused" => "refused",
            "rolled-back" => "rolled-back",
            _ => "failed",
        }
        .to_owned();
        let row = proposals.iter().find(|row| row.number == proposal);
        rows.push(HistoryRow {
            seq: *seq,
            hash: short_id(hash).to_owned(),
            at_utc: utc_text(body["at"].as_u64().unwrap_or(0)),
            proposal,
            outcome,
            outcome_class,
            commit: row
                .and_then(|row| row.commit.as_deref())
                .map(short_id)
                .unwrap_or("")
                .to_owned(),
            subject: clean(
                row.and_then(|row| row.subject.as_deref()).unwrap_or(""),
            ),
            approvers: clean(&approvers),
            message: clean(
                body["detail"]["message"]
                    .as_str()
                    .or(body["detail"]["error"].as_str())
                    .unwrap_or(""),
            ),
        });
    }
    Ok(rows)
}

#[derive(Deserialize)]
struct NextQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Keeps a post-sign-in destination on this server: a path, never a
/// scheme or another host. Only visible ASCII other than a backslash
/// passes, because browsers drop tabs and newlines from a URL and read a
/// backslash as a slash, so `/\t/host` or `/\\host` would name a host.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && path
                    .bytes()
                    .all(|byte| byte.is_ascii_graphic() && byte != b'\\')
                && path.len() <= 512 =>
        {
            path.to_owned()
        }
        _ => "/proposals".to_owned(),
    }
}

async fn sign_in_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<NextQuery>,
) -> Response {
    let approver = viewer(&state, &headers);
    let (available, unavailable) = match policy(&state)
        .map_err(|error| error.message)
        .and_then(|policy| passkey::relying_party(&policy).map(|_| ()))
    {
        Ok(()) => (true, String::new()),
        Err(error) => (false, error),
    };
    render(&SignInPage {
        layout: layout(&state, "Sign in", approver),
        available,
        unavailable,
        next: safe_next(query.next.as_deref()),
    })
}

fn client(request_address: Option<&ClientAddr>) -> ClientAddr {
    request_address
        .copied()
        .unwrap_or(ClientAddr(std::net::IpAddr::V4(
            std::net::Ipv4Addr::UNSPECIFIED,
        )))
}

/// The 429 response when the client address made too many passkey
/// requests.
fn passkey_limit(
    state: &AppState,
    address: Option<&ClientAddr>,
) -> Option<Response> {
    state
        .web
        .limits
        .passkey(client(address))
        .err()
        .map(|wait| too_many(wait, true))
}

fn challenge_error(_: TooManyChallenges) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many passkey challenges are open; try again in a few minutes",
    )
}

async fn sign_in_challenge(
    State(state): State<AppState>,
    address: Option<axum::Extension<ClientAddr>>,
) -> Result<Json<Value>, Response> {
    if let Some(refused) = passkey_limit(&state, address.as_deref()) {
        return Err(refused);
    }
    let enabled = state
        .web
        .enabled()
        .ok_or_else(|| StatusCode::NOT_FOUND.into_response())?;
    let policy = state
        .policy
        .current_for_visitor()
        .map_err(IntoResponse::into_response)?;
    let party = passkey::relying_party(&policy)
        .map_err(|error| ApiError::conflict(error).into_response())?;
    let challenge = enabled
        .sessions
        .challenge(
            Purpose::SignIn,
            db::now(),
            client(address.as_deref()).limit_key(),
        )
        .map_err(|error| challenge_error(error).into_response())?;
    Ok(Json(json!({
        "challenge": passkey::encode(&challenge),
        "rp_id": party.rp_id,
        "timeout_ms": super::CHALLENGE_LIFETIME_SECS * 1000,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInRequest {
    challenge: String,
    #[serde(flatten)]
    assertion: AssertionBody,
}

async fn sign_in(
    State(state): State<AppState>,
    address: Option<axum::Extension<ClientAddr>>,
    JsonBody(request): JsonBody<SignInRequest>,
) -> Result<Response, Response> {
    if let Some(refused) = passkey_limit(&state, address.as_deref()) {
        return Err(refused);
    }
    let enabled = state
        .web
        .enabled()
        .ok_or_else(|| StatusCode::NOT_FOUND.into_response())?;
    let now = db::now();
    let refused =
        |message: String| ApiError::unauthorized(message).into_response();
    let challenge = passkey::decode_challenge(&request.challenge)
        .map_err(|error| ApiError::bad_request(error).into_response())?;
    // Taken before anything else is checked, so that each challenge
    // allows one attempt.
    match enabled.sessions.take_challenge(&challenge, now) {
        Some(Purpose::SignIn) => {}
        _ => {
            return Err(refused(
                "the sign-in challenge is unknown, expired or already used; \
                 reload the page and try again"
                    .into(),
            ));
        }
    }
    let policy = state
        .policy
        .current_for_visitor()
        .map_err(IntoResponse::into_response)?;
    let approver =
        passkey::approver_of(&policy, &request.assertion.credential_id)
            .map_err(|error| ApiError::forbidden(error).into_response())?;
    if let Err(wait) = state.web.limits.approver(&approver) {
        return Err(too_many(wait, true));
    }
    passkey::verify_sign_in(
        &policy,
        &approver,
        &challenge,
        &request.assertion,
    )
    .map_err(|error| {
        tracing::warn!(approver, %error, "passkey sign-in rejected");
        refused(format!(
            "the passkey sign-in of {approver} was refused: {error}"
        ))
    })?;
    let cookie = enabled.sessions.open(&approver, now);
    tracing::info!(approver, "approver signed in with a passkey");
    let mut response = Json(json!({ "approver": approver })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a cookie is a valid header"),
    );
    Ok(response)
}

async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Response {
    let Some(enabled) = state.web.enabled() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let cookie = enabled.sessions.close(&headers);
    let mut response = Redirect::to("/sign-in").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a cookie is a valid header"),
    );
    response
}

async fn enrol_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Response {
    let approver = viewer(&state, &headers);
    let party =
        policy(&state)
            .map_err(|error| error.message)
            .and_then(|policy| {
                passkey::relying_party(&policy)
                    .map(|party| party.rp_id.clone())
            });
    let (available, unavailable, rp_id) = match party {
        Ok(rp_id) => (true, String::new(), rp_id),
        Err(error) => (false, error, String::new()),
    };
    render(&EnrolPage {
        layout: layout(&state, "Enrol a passkey", approver),
        available,
        unavailable,
        rp_id,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolChallengeRequest {
    name: String,
}

async fn enrol_challenge(
    State(state): State<AppState>,
    address: Option<axum::Extension<ClientAddr>>,
    JsonBody(request): JsonBody<EnrolChallengeRequest>,
) -> Result<Json<Value>, Response> {
    if let Some(refused) = passkey_limit(&state, address.as_deref()) {
        return Err(refused);
    }
    let enabled = state
        .web
        .enabled()
        .ok_or_else(|| StatusCode::NOT_FOUND.into_response())?;
    let name = countersign_core::ApproverName::parse(&request.name).map_err(
        |error| ApiError::bad_request(error.to_string()).into_response(),
    )?;
    let policy = state
        .policy
        .current_for_visitor()
        .map_err(IntoResponse::into_response)?;
    let party = passkey::relying_party(&policy)
        .map_err(|error| ApiError::conflict(error).into_response())?;
    let mut user_id = vec![0u8; 16];
    rand::fill(&mut user_id[..]);
    let challenge = enabled
        .sessions
        .challenge(
            Purpose::Enrol {
                name: name.as_str().to_owned(),
                user_id: user_id.clone(),
            },
            db::now(),
            client(address.as_deref()).limit_key(),
        )
        .map_err(|error| challenge_error(error).into_response())?;
    Ok(Json(json!({
        "challenge": passkey::encode(&challenge),
        "rp_id": party.rp_id,
        "rp_name": format!("countersign {}", state.config.host),
        "user_id": passkey::encode(&user_id),
        "user_name": format!("{}@{}", name.as_str(), state.config.host),
        "display_name": name.as_str(),
        "algorithms": passkey::ALGORITHMS,
        "timeout_ms": super::CHALLENGE_LIFETIME_SECS * 1000,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolRequest {
    challenge: String,
    attestation_object: String,
    client_data_json: String,
}

async fn enrol(
    State(state): State<AppState>,
    address: Option<axum::Extension<ClientAddr>>,
    JsonBody(request): JsonBody<EnrolRequest>,
) -> Result<Json<Value>, Response> {
    if let Some(refused) = passkey_limit(&state, address.as_deref()) {
        return Err(refused);
    }
    let enabled = state
        .web
        .enabled()
        .ok_or_else(|| StatusCode::NOT_FOUND.into_response())?;
    let challenge = passkey::decode_challenge(&request.challenge)
        .map_err(|error| ApiError::bad_request(error).into_response())?;
    let Some(Purpose::Enrol { name, .. }) =
        enabled.sessions.take_challenge(&challenge, db::now())
    else {
        return Err(ApiError::unauthorized(
            "the enrolment challenge is unknown, expired or already used; \
             start again",
        )
        .into_response());
    };
    let policy = state
        .policy
        .current_for_visitor()
        .map_err(IntoResponse::into_response)?;
    let registered = passkey::register(
        &policy,
        &challenge,
        &request.attestation_object,
        &request.client_data_json,
    )
    .map_err(|error| {
        tracing::warn!(approver = name, %error, "passkey enrolment rejected");
        ApiError::bad_request(format!("the new passkey was rejected: {error}"))
            .into_response()
    })?;
    let snippet = registered.snippet(&name);
    tracing::info!(
        approver = name,
        "passkey enrolled; waiting to be added to the policy"
    );
    Ok(Json(json!({
        "name": name,
        "snippet": snippet,
        "note": registered.note(),
    })))
}

#[derive(Deserialize)]
struct VerdictQuery {
    verdict: String,
}

/// What the browser needs to sign a vote on a proposal with the
/// signed-in approver's passkey: the challenge derived from the exact
/// statement bytes and the verdict, and the credential to use.
async fn vote_challenge(
    State(state): State<AppState>,
    Viewer(viewer): Viewer,
    Path(n): Path<String>,
    Query(query): Query<VerdictQuery>,
) -> Result<Json<Value>, ApiError> {
    let number = parse_number(&n)?;
    let verdict = match query.verdict.as_str() {
        "approve" => Verdict::Approve,
        "reject" => Verdict::Reject,
        _ => {
            return Err(ApiError::bad_request(
                "verdict must be approve or reject",
            ));
        }
    };
    let row = state
        .db
        .run(move |connection| db::proposal(connection, number))
        .await?
        .ok_or_else(|| ApiError::proposal_not_found(number))?;
    if row.state != ProposalState::AwaitingApproval {
        return Err(ApiError::conflict(format!(
            "proposal {number} is {}; only proposals awaiting approval take \
             votes",
            row.state
        )));
    }
    let statement = row.statement.unwrap_or_default();
    let policy = policy(&state)?;
    let party = passkey::relying_party(&policy).map_err(ApiError::conflict)?;
    let credential_id =
        passkey::credential_id(&policy, &viewer).ok_or_else(|| {
            ApiError::conflict(format!(
                "the policy lists no passkey for {viewer}; approve with \
             `countersign approve {number}`"
            ))
        })?;
    Ok(Json(json!({
        "challenge": passkey::encode(&passkey::vote_challenge(&statement, verdict)),
        "credential_id": credential_id,
        "rp_id": party.rp_id,
        "user_verification": if passkey::requires_user_verification(&policy, &viewer) {
            "required"
        } else {
            "preferred"
        },
        "statement_sha256": row.statement_sha256,
    })))
}

/// Renders the proposal page of `document` for a made-up proposal,
/// without a database or a session: what a page request costs beyond
/// reading its row.
pub fn render_detached(
    document: &countersign_nix::diff::DiffDocument,
) -> String {
    let view = ProposalView {
        number: 1,
        state: "awaiting-approval".into(),
        live: true,
        host: "bench".into(),
        commit: "0".repeat(40),
        subject: "A large change".into(),
        requested_by: "trigger".into(),
        created_utc: utc_text(0),
        created_age: age_text(0, 0),
        expires_utc: Some(utc_text(3600)),
        base: None,
        target: None,
        statement_sha256: Some("0".repeat(64)),
        error: String::new(),
        have: 0,
        threshold: 2,
        missing_required: String::new(),
        votes: Vec::new(),
        can_vote: true,
        vote_after_build: false,
        viewer: "phone".into(),
        vote_note: String::new(),
        activation: Vec::new(),
        activation_after: 0,
        log: String::new(),
        log_lines: 0,
        log_offset: 0,
    };
    let page = ProposalPage {
        layout: Layout {
            title: "Proposal #1".into(),
            host: "bench".into(),
            approver: Some("phone".into()),
        },
        p: view,
        diff: Some(DiffView::new(document)),
    };
    page.render().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next(Some("/proposals/3")), "/proposals/3");
        assert_eq!(safe_next(Some("//evil.example/x")), "/proposals");
        assert_eq!(safe_next(Some("https://evil.example")), "/proposals");
        assert_eq!(safe_next(Some("/\\evil.example")), "/proposals");
        assert_eq!(safe_next(None), "/proposals");
        // Browsers drop tabs and newlines while parsing a URL, which
        // would turn each of these into `//evil.example`.
        for next in
            ["/\t/evil.example", "/\n/evil.example", "/\r/evil.example"]
        {
            assert_eq!(safe_next(Some(next)), "/proposals", "{next:?}");
        }
        assert_eq!(safe_next(Some("/ /evil.example")), "/proposals");
        assert_eq!(
            safe_next(Some("/proposals?x=%2F%2Fa")),
            "/proposals?x=%2F%2Fa"
        );
    }

    /// Builds a document whose unit directive, boot.json field and
    /// initrd file carry HTML.
    fn boot_document() -> countersign_nix::diff::DiffDocument {
        use countersign_core::StorePath;
        use countersign_nix::diff::{
            BootspecChange, BootspecDiff, ChangeStatus, DiffDocument,
            DirectiveChange, EntryChange, InitrdDiff, InitrdEntry,
            InitrdEntryKind, InitrdFileChange, Node, PackageDiff, SystemDiff,
        };

        let store = |name: &str| {
            StorePath::parse(&format!(
                "/nix/store/0c4x1ix4vd94r4m1ggq1k1hg9dw1dyhp-{name}"
            ))
            .unwrap()
        };
        let unit = EntryChange {
            path: "hello.service.d/greeting.conf".into(),
            status: ChangeStatus::Added,
            old: None,
            new: Some(Node::File {
                location: "/nix/store/…-unit/greeting.conf".into(),
                size: 40,
                executable: false,
                sha256: None,
            }),
            hunks: None,
            lines_added: Some(2),
            lines_removed: Some(0),
            only_store_paths_changed: false,
            version_bumps: Vec::new(),
            directives: vec![DirectiveChange {
                section: "Service".into(),
                key: "Environment".into(),
                old: Vec::new(),
                new: vec!["GREETING=<b>hi</b>".into()],
            }],
            referenced: Vec::new(),
        };
        let system = SystemDiff {
            old_system: Some(store("nixos-system-old")),
            new_system: store("nixos-system-new"),
            toplevel: Vec::new(),
            units: vec![unit],
            etc: Vec::new(),
            specialisations: Vec::new(),
            bootspec: Some(BootspecDiff {
                old_present: true,
                new_present: true,
                changes: vec![BootspecChange {
                    field: "label".into(),
                    old: Some("NixOS <old>".into()),
                    new: Some("NixOS <new>".into()),
                }],
                mismatches: vec!["kernelParams <differ>".into()],
            }),
            initrd: Some(InitrdDiff {
                old: None,
                new: None,
                files: vec![InitrdFileChange {
                    path: "etc/<i>banner</i>".into(),
                    status: ChangeStatus::Added,
                    old: None,
                    new: Some(InitrdEntry {
                        kind: InitrdEntryKind::File,
                        mode: "0644".into(),
                        uid: 0,
                        gid: 0,
                        size: 8,
                        sha256: Some("0".repeat(64)),
                        target: None,
                    }),
                    only_store_paths_changed: false,
                }],
                truncated: false,
            }),
            alerts: Vec::new(),
            truncated: false,
        };
        let packages = PackageDiff {
            old_closure_size: 0,
            new_closure_size: 0,
            closure_size_delta: 0,
            old_path_count: 0,
            new_path_count: 0,
            added: Vec::new(),
            removed: Vec::new(),
            version_changes: Vec::new(),
            rebuilt: Vec::new(),
            duplicated: Vec::new(),
            regenerated: Vec::new(),
            largest_size_changes: Vec::new(),
        };
        DiffDocument::assemble(None, packages, system)
    }

    #[test]
    fn boot_sections_render_escaped() {
        let html = render_detached(&boot_document());
        assert!(html.contains("<h3>boot.json <span class=\"count\">2</span>"));
        assert!(
            html.contains("<h3>initrd files <span class=\"count\">1</span>")
        );
        assert!(html.contains(
            "added [Service] Environment=GREETING=&#60;b&#62;hi&#60;/b&#62;"
        ));
        assert!(html.contains("NixOS &#60;new&#62;"));
        assert!(html.contains("kernelParams &#60;differ&#62;"));
        assert!(html.contains("etc/&#60;i&#62;banner&#60;/i&#62;"));
        assert!(!html.contains("<b>hi"));
        assert!(!html.contains("<i>banner"));
    }

    #[tokio::test]
    async fn log_tail_reads_lines_of_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        let mut text = String::new();
        let mut number = 0;
        while text.len() <= 2 * LOG_TAIL_BYTES as usize {
            text.push_str(&format!("line {number}\n"));
            number += 1;
        }
        text.push_str("last \u{1b}[2J line\n");
        std::fs::write(&path, &text).unwrap();

        let (tail, length) = read_tail(&path).await.unwrap();
        assert_eq!(length, text.len() as u64);
        assert!(tail.len() <= LOG_TAIL_BYTES as usize, "{}", tail.len());
        assert!(tail.starts_with("line "), "{}", &tail[..40]);
        assert!(!tail.contains("line 0\n"));
        assert!(tail.contains(&format!("\nline {}\n", number - 1)));
        assert!(
            tail.ends_with("\nlast \\x1b[2J line"),
            "{}",
            &tail[tail.len() - 40..]
        );
        assert!(tail.lines().count() > 1000);
    }

    #[test]
    fn query_escape_keeps_paths_readable() {
        assert_eq!(
            query_escape("/proposals/3?x=1&y"),
            "/proposals/3%3Fx%3D1%26y"
        );
    }
}
