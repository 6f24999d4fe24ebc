//! `GET /metrics` in the Prometheus text exposition format.
//!
//! The endpoint is off unless the configuration sets `metrics = true`,
//! and it needs no token, as scrapers on the same machine expect. It
//! therefore shows only counts, times and the deployed commit: no
//! approver names, no statements, no repository address.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::response::Response;
use rusqlite::{Connection, OptionalExtension as _};
use serde_json::Value;

use crate::api_error::{ApiError, bytes_response};
use crate::db::{self, Context as _, ProposalState};
use crate::state::AppState;

/// The content type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The outcomes an activation can end with, as the audit log names them.
const OUTCOMES: [&str; 4] = ["activated", "refused", "rolled-back", "failed"];

/// The counts and times the metrics are computed from, read in one
/// database call.
struct Snapshot {
    states: BTreeMap<String, u64>,
    approvals: u64,
    outcomes: BTreeMap<String, u64>,
    last_deployment: Option<u64>,
    deployed_commit: Option<String>,
    last_built: Option<u64>,
}

pub async fn handler(
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let snapshot = state.db.run(read_snapshot).await?;
    let build_seconds = match snapshot.last_built {
        Some(number) => {
            let path = state.log_path(number);
            tokio::fs::read_to_string(&path)
                .await
                .ok()
                .and_then(|log| build_seconds(&log))
        }
        None => None,
    };
    let text = render(&snapshot, build_seconds);
    Ok(bytes_response(CONTENT_TYPE, text.into_bytes()))
}

fn read_snapshot(connection: &mut Connection) -> db::DbResult<Snapshot> {
    let states = db::state_counts(connection)?;
    let approvals = connection
        .query_row(
            "SELECT COUNT(*) FROM votes WHERE verdict = 'approve'",
            [],
            |row| row.get(0),
        )
        .context("counting approvals")?;
    let mut outcomes = BTreeMap::new();
    let mut last_deployment = None;
    let mut statement = connection
        .prepare(
            "SELECT body FROM audit WHERE CAST(body AS TEXT) LIKE \
             '%\"kind\":\"activation-finished\"%' ORDER BY seq",
        )
        .context("reading activation outcomes")?;
    let bodies: Vec<Vec<u8>> = statement
        .query_map([], |row| row.get(0))
        .context("reading activation outcomes")?
        .collect::<rusqlite::Result<_>>()
        .context("reading activation outcomes")?;
    for body in bodies {
        let Ok(entry) = serde_json::from_slice::<Value>(&body) else {
            continue;
        };
        if entry["kind"] != "activation-finished" {
            continue;
        }
        // An outcome resolved from the activator's status is recorded
        // as the state it led to; `deployed` means the same as
        // `activated`.
        let outcome = match entry["detail"]["outcome"].as_str() {
            Some("deployed") | Some("activated") => "activated",
            Some(other) if OUTCOMES.contains(&other) => other,
            _ => "unknown",
        };
        if outcome == "activated" {
            last_deployment = entry["at"].as_u64().or(last_deployment);
        }
        *outcomes.entry(outcome.to_owned()).or_insert(0) += 1;
    }
    let last_built = connection
        .query_row(
            "SELECT MAX(number) FROM proposals \
             WHERE statement_sha256 IS NOT NULL",
            [],
            |row| row.get(0),
        )
        .optional()
        .context("finding the last built proposal")?
        .flatten();
    Ok(Snapshot {
        states,
        approvals,
        outcomes,
        last_deployment,
        deployed_commit: db::deployed_commit(connection)?,
        last_built,
    })
}

/// Parses the total build time in seconds from the timings line of a
/// build log.
fn build_seconds(log: &str) -> Option<f64> {
    let line = log
        .lines()
        .rev()
        .find(|line| line.starts_with("countersign: timings (ms):"))?;
    let total = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("total="))?;
    total.parse::<u64>().ok().map(|ms| ms as f64 / 1000.0)
}

/// Writes the `# HELP` and `# TYPE` lines of one metric.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and line feed.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render(snapshot: &Snapshot, build_seconds: Option<f64>) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "countersign_proposals",
        "gauge",
        "Proposals in each state.",
    );
    for state in ProposalState::ALL {
        let count = snapshot.states.get(state.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "countersign_proposals{{state=\"{}\"}} {count}",
            state.as_str()
        );
    }
    header(
        &mut out,
        "countersign_approvals_total",
        "counter",
        "Approvals recorded, over all proposals.",
    );
    let _ =
        writeln!(out, "countersign_approvals_total {}", snapshot.approvals);
    header(
        &mut out,
        "countersign_activations_total",
        "counter",
        "Finished activations by outcome.",
    );
    let mut outcomes: BTreeMap<&str, u64> =
        OUTCOMES.iter().map(|outcome| (*outcome, 0)).collect();
    for (outcome, count) in &snapshot.outcomes {
        *outcomes.entry(outcome.as_str()).or_insert(0) += count;
    }
    for (outcome, count) in outcomes {
        let _ = writeln!(
            out,
            "countersign_activations_total{{outcome=\"{outcome}\"}} {count}"
        );
    }
    if let Some(seconds) = build_seconds {
        header(
            &mut out,
            "countersign_last_build_duration_seconds",
            "gauge",
            "Fetch, build and diff time of the newest built proposal.",
        );
        let _ = writeln!(
            out,
            "countersign_last_build_duration_seconds {seconds:.3}"
        );
    }
    if let Some(at) = snapshot.last_deployment {
        header(
            &mut out,
            "countersign_last_deployment_timestamp_seconds",
            "gauge",
            "When the last activation succeeded, in Unix seconds.",
        );
        let _ = writeln!(
            out,
            "countersign_last_deployment_timestamp_seconds {at}"
        );
    }
    header(
        &mut out,
        "countersign_deployed_info",
        "gauge",
        "The commit of the deployed proposal, as a label; absent before \
         the first deployment.",
    );
    if let Some(commit) = &snapshot.deployed_commit {
        let _ = writeln!(
            out,
            "countersign_deployed_info{{commit=\"{}\"}} 1",
            label(commit)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_time_comes_from_the_timings_line() {
        let log = "countersign: fetching\n\
                   countersign: timings (ms): git=5 nix_fetch=10 \
                   nix_build=900 diff=85 total=1000\n";
        assert_eq!(build_seconds(log), Some(1.0));
        assert_eq!(build_seconds("countersign: failed: x\n"), None);
    }

    #[test]
    fn render_lists_every_state_and_outcome() {
        let snapshot = Snapshot {
            states: BTreeMap::from([("deployed".to_owned(), 2)]),
            approvals: 3,
            outcomes: BTreeMap::from([("activated".to_owned(), 2)]),
            last_deployment: Some(1_700_000_000),
            deployed_commit: Some("ab\"c".to_owned()),
            last_built: Some(2),
        };
        let text = render(&snapshot, Some(1.5));
        assert!(text.contains("countersign_proposals{state=\"deployed\"} 2"));
        assert!(text.contains("countersign_proposals{state=\"building\"} 0"));
        assert!(text.contains("countersign_approvals_total 3\n"));
        assert!(text.contains(
            "countersign_activations_total{outcome=\"activated\"} 2"
        ));
        assert!(
            text.contains(
                "countersign_activations_total{outcome=\"refused\"} 0"
            )
        );
        assert!(
            text.contains("countersign_last_build_duration_seconds 1.500")
        );
        assert!(text.contains(
            "countersign_last_deployment_timestamp_seconds 1700000000"
        ));
        assert!(
            text.contains("countersign_deployed_info{commit=\"ab\\\"c\"} 1")
        );
    }
}
