//! Sending a certificate to the activator and recording what happens,
//! and finding the outcome of activations whose report was lost.

use countersign_core::audit::Anchor;
use countersign_core::protocol::{AuditHead, Event, Outcome, Request};
use countersign_core::{Certificate, Vote};
use serde_json::json;

use crate::activator::{self, ActivatorError, Finished};
use crate::db::{self, AuditEvent, Context, ProposalState};
use crate::state::AppState;

/// How long after an activation request an activator that has not
/// accepted the proposal may still be verifying or evaluating it, in
/// seconds. Only an activation whose report was lost waits this long.
pub const ACCEPT_GRACE_SECS: u64 = 10 * 60;

/// Everything an activation request needs, gathered in the transaction
/// that found the quorum met, so that sending it reads nothing again.
pub struct ActivationJob {
    pub number: u64,
    pub statement: Vec<u8>,
    pub approvals: Vec<Vote>,
    pub audit_head: Anchor,
}

/// Starts the activation of a proposal that just moved to `activating`.
pub fn spawn(state: &AppState, job: ActivationJob) {
    let number = job.number;
    lock_activations(state).insert(number);
    let state = state.clone();
    tokio::spawn(async move {
        run(&state, job).await;
        lock_activations(&state).remove(&number);
    });
}

fn lock_activations(
    state: &AppState,
) -> std::sync::MutexGuard<'_, std::collections::HashSet<u64>> {
    state
        .activations
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether an activation of `number` is in flight in this process.
pub fn in_flight(state: &AppState, number: u64) -> bool {
    lock_activations(state).contains(&number)
}

async fn run(state: &AppState, job: ActivationJob) {
    let number = job.number;
    let request = Request::Activate {
        certificate: Certificate::new(&job.statement, job.approvals),
        audit_head: Some(AuditHead {
            seq: job.audit_head.seq,
            hash: job.audit_head.hash,
        }),
    };
    tracing::info!(
        proposal = number,
        "sending the certificate to the activator"
    );
    let socket = state.config.activator_socket.clone();
    let result = activator::activate(&socket, &request, |event| {
        store_event(state, number, event)
    })
    .await;
    match result {
        Ok(finished) => record_outcome(state, number, finished).await,
        Err(error) if error.nothing_sent() => {
            let message = format!(
                "{error}; nothing was activated. Start the activator and \
                 propose again"
            );
            finish(
                state,
                number,
                ProposalState::Failed,
                Some(&message),
                json!({
                    "outcome": "failed",
                    "error": message,
                }),
            )
            .await;
        }
        Err(error) => {
            tracing::warn!(
                proposal = number,
                %error,
                "the activation report was cut off; asking the activator"
            );
            record_lost_report(state, number, &error).await;
            resolve(state, number).await;
        }
    }
}

async fn store_event(state: &AppState, number: u64, event: Event) {
    if let Event::Log { line } = &event {
        tracing::debug!(proposal = number, line, "activator");
    } else {
        tracing::info!(proposal = number, event = ?event, "activator");
    }
    let value = serde_json::to_value(&event)
        .expect("a protocol event always serialises");
    let result = state
        .db
        .run(move |connection| {
            db::insert_activation_event(connection, number, &value)
        })
        .await;
    if let Err(error) = result {
        tracing::error!(proposal = number, %error, "storing an activation event failed");
    }
}

async fn record_lost_report(
    state: &AppState,
    number: u64,
    error: &ActivatorError,
) {
    let value = json!({
        "event": "connection-lost",
        "message": error.to_string(),
    });
    let result = state
        .db
        .run(move |connection| {
            db::insert_activation_event(connection, number, &value)
        })
        .await;
    if let Err(error) = result {
        tracing::error!(proposal = number, %error, "storing an activation event failed");
    }
}

async fn record_outcome(state: &AppState, number: u64, finished: Finished) {
    let (to, error) = match finished.outcome {
        Outcome::Activated => (ProposalState::Deployed, None),
        Outcome::Refused => {
            (ProposalState::Refused, Some(finished.message.clone()))
        }
        Outcome::RolledBack => {
            (ProposalState::RolledBack, Some(finished.message.clone()))
        }
        Outcome::Failed => {
            (ProposalState::Failed, Some(finished.message.clone()))
        }
    };
    let mut detail = json!({
        "outcome": serde_json::to_value(finished.outcome)
            .expect("an outcome always serialises"),
        "message": finished.message,
    });
    if finished.proposal.is_some_and(|reported| reported != number) {
        detail["reported_proposal"] = json!(finished.proposal);
    }
    finish(state, number, to, error.as_deref(), detail).await;
}

/// Moves an `activating` proposal to its final state with an audit
/// entry.
async fn finish(
    state: &AppState,
    number: u64,
    to: ProposalState,
    error: Option<&str>,
    detail: serde_json::Value,
) {
    let error = error.map(str::to_owned);
    let result = state
        .db
        .run(move |connection| {
            let tx = connection.transaction().context("begin")?;
            let moved = db::set_state(
                &tx,
                number,
                ProposalState::Activating,
                to,
                error.as_deref(),
            )?;
            if moved {
                db::append_audit(
                    &tx,
                    AuditEvent {
                        kind: "activation-finished",
                        proposal: number,
                        approver: None,
                        detail,
                    },
                )?;
            }
            tx.commit().context("commit")?;
            Ok(moved)
        })
        .await;
    match result {
        Ok(true) => {
            tracing::info!(proposal = number, state = %to, "activation finished")
        }
        Ok(false) => tracing::warn!(
            proposal = number,
            state = %to,
            "the proposal was no longer activating; outcome not recorded"
        ),
        Err(error) => tracing::error!(
            proposal = number,
            %error,
            "recording the activation outcome failed"
        ),
    }
}

/// Decides the outcome of an `activating` proposal whose report was not
/// received, from the activator's status. Returns false when the
/// activator could not be asked, so the proposal stays `activating` and
/// a later call tries again.
///
/// If the activator's last accepted proposal is below `number`, it has
/// not accepted this certificate. It may still be verifying it, so the
/// proposal stays `activating` for [`ACCEPT_GRACE_SECS`] after the
/// request and fails after that, with nothing activated. If it accepted it and the running system is the proposal's
/// target, the proposal is deployed. Otherwise the activator accepted it
/// but the system does not run it. It was rolled back, failed, or was
/// replaced by a newer proposal since. The server cannot tell which, so
/// the proposal failed with a message that points to the activator's log.
///
/// NOTE: an activator that takes longer than the grace time to accept
/// a certificate makes the proposal fail here although it may still be
/// activated; its activation then shows only in the activator's log.
pub async fn resolve(state: &AppState, number: u64) -> bool {
    let status = match activator::status(&state.config.activator_socket).await
    {
        Ok(status) => status,
        Err(error) => {
            tracing::warn!(
                proposal = number,
                %error,
                "cannot ask the activator about an interrupted activation; \
                 trying again later"
            );
            return false;
        }
    };
    let row = match state
        .db
        .run(move |connection| db::proposal(connection, number))
        .await
    {
        Ok(Some(row)) => row,
        Ok(None) => return true,
        Err(error) => {
            tracing::error!(proposal = number, %error, "reading a proposal failed");
            return false;
        }
    };
    if row.state != ProposalState::Activating {
        return true;
    }
    if status.last_proposal < number
        && db::now() < row.updated + ACCEPT_GRACE_SECS
    {
        tracing::info!(
            proposal = number,
            last_proposal = status.last_proposal,
            "the activator has not accepted the proposal yet; asking again \
             later"
        );
        return false;
    }
    let current = status.current_system.as_ref().map(|path| path.as_str());
    let runs_target = current.is_some() && current == row.target.as_deref();
    let (to, error) = if status.last_proposal < number {
        (
            ProposalState::Failed,
            Some(format!(
                "the activator did not accept proposal {number} (its last \
                 accepted proposal is {}) and no outcome was received; \
                 nothing was activated. Propose again",
                status.last_proposal
            )),
        )
    } else if runs_target {
        (ProposalState::Deployed, None)
    } else {
        (
            ProposalState::Failed,
            Some(format!(
                "the activator accepted proposal {number} but its outcome \
                 was not received, and the running system is {}, not the \
                 proposal's target; see the activator's log",
                current.unwrap_or("unknown")
            )),
        )
    };
    let detail = json!({
        "outcome": to.as_str(),
        "resolved_from_status": {
            "last_proposal": status.last_proposal,
            "current_system": current,
        },
        "error": error,
    });
    finish(state, number, to, error.as_deref(), detail).await;
    true
}
