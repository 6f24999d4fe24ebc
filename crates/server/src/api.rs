//! The HTTP API under `/api/v1`.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use countersign_core::{Verdict, VoteSignature};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::api_error::{
    ApiError, JsonBody, MAX_BODY_BYTES, bytes_response, json_errors,
};
use crate::auth::Principal;
use crate::db::{self, ProposalRow, ProposalState, StoredVerdict};
use crate::state::AppState;
use crate::{metrics, pipeline, votes, webhooks};

/// Maximum time one request may take before the server returns 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Maximum number of proposals a list returns.
const LIST_LIMIT: u64 = 200;

/// Builds the router with its limits, timeout and request tracing.
pub fn router(state: AppState, webhook_secret: Option<Vec<u8>>) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/auth/challenge", post(challenge))
        .route("/auth/login", post(login))
        .route("/proposals", post(create_proposal).get(list_proposals))
        .route("/proposals/{n}", get(proposal_detail))
        .route("/proposals/{n}/statement", get(statement))
        .route("/proposals/{n}/diff", get(diff))
        .route("/proposals/{n}/log", get(build_log))
        .route("/proposals/{n}/approvals", post(approve))
        .route("/proposals/{n}/rejections", post(reject))
        .route("/status", get(status))
        .merge(webhooks::routes(state.clone(), webhook_secret));
    // Off unless configured, because it requires no token.
    let root = if state.config.metrics {
        Router::new().route("/metrics", get(metrics::handler))
    } else {
        Router::new()
    };
    // Layers listed later wrap the earlier ones: the trace sees every
    // request and response, and `json_errors` rewrites the plain error
    // bodies of the timeout, the body limit and the router.
    root.nest("/api/v1", api)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn(json_errors))
        // The default span records the method and URI, never headers, so
        // bearer tokens stay out of the log.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn challenge(
    State(state): State<AppState>,
    address: Option<axum::Extension<crate::web::ClientAddr>>,
) -> Result<Json<Value>, ApiError> {
    let client = address.map_or(
        std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        |address| address.limit_key(),
    );
    let (challenge, expires) = state.auth.challenge(db::now(), client)?;
    Ok(Json(json!({ "challenge": challenge, "expires": expires })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    challenge: String,
    signature: String,
}

async fn login(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Json<Value>, ApiError> {
    let policy = state.policy.current_for_visitor()?;
    let (approver, issued) = state.auth.login(
        &policy,
        &request.challenge,
        &request.signature,
        db::now(),
    )?;
    tracing::info!(approver, "approver logged in");
    Ok(Json(json!({
        "token": issued.token,
        "approver": approver,
        "expires": issued.expires,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposeRequest {
    #[serde(default)]
    rev: Option<String>,
    /// A generation of the system profile to roll back to, in place of
    /// a revision to build.
    #[serde(default)]
    rollback_generation: Option<u64>,
}

async fn create_proposal(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(request): JsonBody<ProposeRequest>,
) -> Result<Response, ApiError> {
    let requested_by = principal.audit_name();
    let number = match (request.rev, request.rollback_generation) {
        (None, Some(generation)) => {
            pipeline::propose_rollback(&state, generation, requested_by)
                .await?
        }
        (rev, None) => pipeline::propose(&state, rev, requested_by).await?,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either rev or rollback_generation, not both: a \
                 rollback builds no revision",
            ));
        }
    };
    Ok((StatusCode::CREATED, Json(json!({ "proposal": number })))
        .into_response())
}

async fn list_proposals(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    principal.require_approver()?;
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
    let policy = current_policy(&state)?;
    let summaries: Vec<Value> = rows
        .iter()
        .map(|(row, votes)| summary(row, quorum(&policy, votes)))
        .collect();
    Ok(Json(json!({ "proposals": summaries })))
}

fn summary(row: &ProposalRow, quorum: Value) -> Value {
    json!({
        "number": row.number,
        "state": row.state,
        "commit": row.commit,
        "subject": row.subject,
        "target": row.target,
        "statement_sha256": row.statement_sha256,
        "created": row.created,
        "expires": row.expires,
        "quorum": quorum,
        "error": row.error,
    })
}

/// Counts the approvals in `votes` that `policy` accepts and returns the
/// result as `{ have, threshold, missing_required }`.
fn quorum(policy: &countersign_core::Policy, votes: &[db::VoteRow]) -> Value {
    let (counted, _) = votes::counted_approvals(policy, votes);
    match policy.check_quorum(&counted) {
        Ok(()) => json!({
            "have": counted.len(),
            "threshold": policy.threshold,
            "missing_required": [],
        }),
        Err(shortfall) => json!({
            "have": shortfall.have,
            "threshold": shortfall.threshold,
            "missing_required": shortfall
                .missing_required
                .iter()
                .map(|name| name.as_str())
                .collect::<Vec<_>>(),
        }),
    }
}

/// Parses the `{n}` path segment.
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

async fn proposal_detail(
    State(state): State<AppState>,
    principal: Principal,
    Path(n): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_approver()?;
    let number = parse_number(&n)?;
    Ok(Json(detail(&state, number).await?))
}

/// The detail document of one proposal.
pub async fn detail(state: &AppState, number: u64) -> Result<Value, ApiError> {
    let (row, votes, events) = state
        .db
        .run(move |connection| {
            let Some(row) = db::proposal(connection, number)? else {
                return Ok(None);
            };
            let votes = db::votes(connection, number)?;
            let events = db::activation_events(connection, number)?;
            Ok(Some((row, votes, events)))
        })
        .await?
        .ok_or_else(|| ApiError::proposal_not_found(number))?;
    let policy = current_policy(state)?;
    let quorum = quorum(&policy, &votes);
    let approvals: Vec<Value> = votes
        .iter()
        .filter(|vote| vote.verdict == StoredVerdict::Approve)
        .map(|vote| json!({ "approver": vote.approver, "at": vote.at }))
        .collect();
    let rejections: Vec<Value> = votes
        .iter()
        .filter(|vote| vote.verdict == StoredVerdict::Reject)
        .map(|vote| {
            json!({
                "approver": vote.approver,
                "at": vote.at,
                "reason": vote.reason,
            })
        })
        .collect();
    let forge_fields = crate::integrations::detail_fields(state, &row).await?;
    let mut detail = json!({
        "number": row.number,
        "state": row.state,
        "host": state.config.host,
        "rev": row.requested_rev,
        "requested_by": row.requested_by,
        "commit": row.commit,
        "subject": row.subject,
        "base": row.base,
        "target": row.target,
        "source": row.source_path,
        "nar_hash": row.nar_hash,
        "statement_sha256": row.statement_sha256,
        "created": row.created,
        "expires": row.expires,
        "approvals": approvals,
        "rejections": rejections,
        "quorum": quorum,
        "error": row.error,
        "activation": events,
    });
    if let Value::Object(map) = &mut detail {
        map.extend(forge_fields);
    }
    Ok(detail)
}

/// Reads one column of a proposal that exists only once it was built.
async fn built_column(
    state: &AppState,
    principal: &Principal,
    n: &str,
    column_name: &'static str,
    pick: fn(ProposalRow) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, ApiError> {
    principal.require_approver()?;
    let number = parse_number(n)?;
    let row = state
        .db
        .run(move |connection| db::proposal(connection, number))
        .await?
        .ok_or_else(|| ApiError::proposal_not_found(number))?;
    let current = row.state;
    pick(row).ok_or_else(|| {
        let hint = if current == ProposalState::Building {
            "; wait until it awaits approval"
        } else {
            ""
        };
        ApiError::conflict(format!(
            "proposal {number} is {current} and has no {column_name}{hint}"
        ))
    })
}

async fn statement(
    State(state): State<AppState>,
    principal: Principal,
    Path(n): Path<String>,
) -> Result<Response, ApiError> {
    let bytes =
        built_column(&state, &principal, &n, "statement", |row| row.statement)
            .await?;
    Ok(bytes_response("application/json", bytes))
}

async fn diff(
    State(state): State<AppState>,
    principal: Principal,
    Path(n): Path<String>,
) -> Result<Response, ApiError> {
    let bytes =
        built_column(&state, &principal, &n, "diff", |row| row.diff).await?;
    Ok(bytes_response("application/json", bytes))
}

async fn build_log(
    State(state): State<AppState>,
    principal: Principal,
    Path(n): Path<String>,
) -> Result<Response, ApiError> {
    principal.require_approver()?;
    let number = parse_number(&n)?;
    let exists = state
        .db
        .run(move |connection| db::proposal(connection, number))
        .await?
        .is_some();
    if !exists {
        return Err(ApiError::proposal_not_found(number));
    }
    let path = state.log_path(number);
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok(bytes_response("text/plain; charset=utf-8", bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Ok(bytes_response("text/plain; charset=utf-8", Vec::new()))
        }
        Err(error) => Err(ApiError::internal("reading the build log", &error)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalRequest {
    signature: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectionRequest {
    signature: Value,
    #[serde(default)]
    reason: Option<String>,
}

/// Reads the `signature` of a vote: a string is an armored SSH
/// signature; an object is a vote signature with its `kind`, such as a
/// WebAuthn assertion `{"kind": "webauthn", "credential_id": …,
/// "authenticator_data": …, "client_data_json": …, "signature": …}`.
fn vote_signature(value: Value) -> Result<VoteSignature, ApiError> {
    match value {
        Value::String(armored) => {
            Ok(VoteSignature::Ssh { signature: armored })
        }
        Value::Object(_) => serde_json::from_value(value).map_err(|error| {
            ApiError::bad_request(format!(
                "the signature object is invalid: {error}; send \
                 {{\"kind\": \"webauthn\", \"credential_id\", \
                 \"authenticator_data\", \"client_data_json\", \
                 \"signature\"}} with each value base64url without padding"
            ))
        }),
        _ => Err(ApiError::bad_request(
            "the signature must be a string (the armored output of \
             `ssh-keygen -Y sign`) or an object (a WebAuthn assertion with \
             \"kind\": \"webauthn\")",
        )),
    }
}

async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    Path(n): Path<String>,
    JsonBody(request): JsonBody<ApprovalRequest>,
) -> Result<Json<Value>, ApiError> {
    let uploader = principal.require_approver()?.to_owned();
    let number = parse_number(&n)?;
    votes::vote(
        &state,
        number,
        Verdict::Approve,
        vote_signature(request.signature)?,
        None,
        uploader,
    )
    .await?;
    Ok(Json(detail(&state, number).await?))
}

async fn reject(
    State(state): State<AppState>,
    principal: Principal,
    Path(n): Path<String>,
    JsonBody(request): JsonBody<RejectionRequest>,
) -> Result<Json<Value>, ApiError> {
    let uploader = principal.require_approver()?.to_owned();
    let number = parse_number(&n)?;
    votes::vote(
        &state,
        number,
        Verdict::Reject,
        vote_signature(request.signature)?,
        request.reason,
        uploader,
    )
    .await?;
    Ok(Json(detail(&state, number).await?))
}

async fn status(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    principal.require_approver()?;
    let (deployed_commit, last_proposal, counts) = state
        .db
        .run(|connection| {
            Ok((
                db::deployed_commit(connection)?,
                db::last_number(connection)?,
                db::state_counts(connection)?,
            ))
        })
        .await?;
    let current_system = std::fs::canonicalize(&state.config.current_system)
        .ok()
        .map(|path| path.to_string_lossy().into_owned());
    Ok(Json(json!({
        "host": state.config.host,
        "current_system": current_system,
        "deployed_commit": deployed_commit,
        "last_proposal": last_proposal,
        "proposals": counts,
    })))
}

fn current_policy(
    state: &AppState,
) -> Result<std::sync::Arc<countersign_core::Policy>, ApiError> {
    state.policy.current().map_err(|error| {
        tracing::error!(error, "the policy cannot be loaded");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error)
    })
}
