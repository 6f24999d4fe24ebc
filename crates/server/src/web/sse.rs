//! The live view of one proposal as server-sent events: new build log
//! lines, activation events, and the proposal's state and votes when
//! they change.
//!
//! Each stream reads the database and the log file twice a second, so
//! their number is capped. Every event carries the position reached
//! (`<log offset>.<last activation event>`) as its id; a browser that
//! reconnects sends it back as `Last-Event-ID` and continues from there
//! without repeating lines.

use std::convert::Infallible;
use std::io::SeekFrom;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::OwnedSemaphorePermit;

use super::pages::{Viewer, activation_text, is_live, quorum, vote_views};
use super::view::utc_text;
use crate::api_error::ApiError;
use crate::db::{self, Context as _, ProposalState};
use crate::state::AppState;

/// How often a stream looks for news.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Most log bytes sent per poll.
const LOG_CHUNK_BYTES: u64 = 64 * 1024;

/// How long one stream stays open; the browser then reconnects.
const STREAM_LIFETIME: Duration = Duration::from_secs(30 * 60);

#[derive(Deserialize)]
pub struct Position {
    /// The build log offset the page already shows.
    #[serde(default)]
    log: u64,
    /// The id of the last activation event the page already shows.
    #[serde(default)]
    activation: i64,
}

pub async fn events(
    State(state): State<AppState>,
    Viewer(viewer): Viewer,
    Path(n): Path<String>,
    Query(position): Query<Position>,
    headers: HeaderMap,
) -> Response {
    let Some(number) = n.parse::<u64>().ok().filter(|number| *number > 0)
    else {
        return ApiError::bad_request("invalid proposal number")
            .into_response();
    };
    let Some(enabled) = state.web.enabled() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(permit) = Arc::clone(&enabled.streams).try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live views are open; reload the page later",
        )
        .into_response();
    };
    let (log_offset, activation) = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_position)
        .unwrap_or((position.log, position.activation));
    tracing::debug!(proposal = number, approver = viewer, "live view opened");
    let follower = Follower {
        state,
        number,
        log_offset,
        activation,
        last_summary: None,
        started: Instant::now(),
        first: true,
        done: false,
        _permit: permit,
    };
    Sse::new(stream_of(follower))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn parse_position(text: &str) -> Option<(u64, i64)> {
    let (log, activation) = text.split_once('.')?;
    Some((log.parse().ok()?, activation.parse().ok()?))
}

struct Follower {
    state: AppState,
    number: u64,
    log_offset: u64,
    activation: i64,
    last_summary: Option<Value>,
    started: Instant,
    first: bool,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

fn stream_of(
    follower: Follower,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(follower, |mut follower| async move {
        if follower.done {
            return None;
        }
        if !follower.first {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        follower.first = false;
        let events = follower.poll().await;
        Some((events, follower))
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)))
}

impl Follower {
    fn id(&self) -> String {
        format!("{}.{}", self.log_offset, self.activation)
    }

    /// Collects what changed since the last poll.
    async fn poll(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let number = self.number;
        let after = self.activation;
        let read = self
            .state
            .db
            .run(move |connection| status(connection, number, after))
            .await;
        let status = match read {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.done = true;
                return vec![Event::default().event("end").data("gone")];
            }
            Err(error) => {
                tracing::error!(proposal = number, %error, "reading for a live view failed");
                self.done = true;
                return vec![Event::default().event("end").data("error")];
            }
        };
        let proposal_state = status.state;
        let summary = self.summary(&status);
        let mut news = false;

        if let Some(text) = self.read_log().await {
            news = true;
            out.push(Event::default().event("log").id(self.id()).data(text));
        }
        for (id, at, event) in status.events {
            news = true;
            self.activation = id;
            let line = json!({ "at_utc": utc_text(at), "text": activation_text(&event) });
            out.push(
                Event::default()
                    .event("activation")
                    .id(self.id())
                    .data(line.to_string()),
            );
        }
        if self.last_summary.as_ref() != Some(&summary) {
            out.push(
                Event::default()
                    .event("summary")
                    .id(self.id())
                    .data(summary.to_string()),
            );
            self.last_summary = Some(summary);
        }
        if (!is_live(proposal_state) && !news)
            || self.started.elapsed() > STREAM_LIFETIME
        {
            self.done = true;
            let reason = if is_live(proposal_state) {
                "reconnect"
            } else {
                "final"
            };
            out.push(Event::default().event("end").data(reason));
        }
        out
    }

    /// The state, error, votes and quorum as the page shows them.
    fn summary(&self, status: &Status) -> Value {
        let (have, threshold, missing) = match self.state.policy.current() {
            Ok(policy) => quorum(&policy, &status.votes),
            Err(_) => (0, 0, Vec::new()),
        };
        let votes: Vec<Value> = vote_views(&status.votes)
            .into_iter()
            .map(|vote| {
                json!({
                    "approver": vote.approver,
                    "verdict": vote.verdict,
                    "at_utc": vote.at_utc,
                    "reason": vote.reason,
                })
            })
            .collect();
        json!({
            "state": status.state.as_str(),
            "live": is_live(status.state),
            "error": countersign_nix::escape_control_chars(&status.error),
            "have": have,
            "threshold": threshold,
            "missing_required": missing.join(", "),
            "votes": votes,
        })
    }

    /// Reads new complete lines of the build log.
    async fn read_log(&mut self) -> Option<String> {
        let path = self.state.log_path(self.number);
        let mut file = tokio::fs::File::open(&path).await.ok()?;
        let length = file.metadata().await.ok()?.len();
        if length < self.log_offset {
            // A shorter log is a new one; start over.
            self.log_offset = 0;
        }
        if length == self.log_offset {
            return None;
        }
        file.seek(SeekFrom::Start(self.log_offset)).await.ok()?;
        let mut buffer = Vec::new();
        file.take(LOG_CHUNK_BYTES)
            .read_to_end(&mut buffer)
            .await
            .ok()?;
        let end = buffer.iter().rposition(|byte| *byte == b'\n')? + 1;
        buffer.truncate(end);
        self.log_offset += end as u64;
        let text = String::from_utf8_lossy(&buffer);
        Some(
            countersign_nix::escape_control_chars(text.trim_end_matches('\n'))
                .replace("\\x0a", "\n"),
        )
    }
}

/// What a live view reads on each poll.
struct Status {
    state: ProposalState,
    error: String,
    votes: Vec<db::VoteRow>,
    events: Vec<(i64, u64, Value)>,
}

/// The proposal's state, error and votes, without its large columns,
/// and the activation events after `after`.
fn status(
    connection: &rusqlite::Connection,
    number: u64,
    after: i64,
) -> Result<Option<Status>, db::DbError> {
    use rusqlite::OptionalExtension as _;
    let row: Option<(String, Option<String>)> = connection
        .query_row(
            "SELECT state, error FROM proposals WHERE number = ?1",
            [number],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .context("reading a proposal's state")?;
    let Some((state, error)) = row else {
        return Ok(None);
    };
    Ok(Some(Status {
        state: state.parse().unwrap_or(ProposalState::Failed),
        error: error.unwrap_or_default(),
        votes: db::votes(connection, number)?,
        events: super::pages::activation_events_after(
            connection, number, after,
        )?,
    }))
}
