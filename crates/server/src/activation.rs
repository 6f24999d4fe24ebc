//! Sending a certificate to the activator and recording what happens,
//! finding the outcome of activations whose report was lost, and asking
//! the activator to prepare a proposal that awaits approval.

use countersign_core::audit::Anchor;
use countersign_core::protocol::{
    AuditHead, CommitEvidence, Event, Outcome, Request,
};
use countersign_core::{Certificate, StorePath, Vote};
use countersign_nix::FetchedSource;
use serde_json::json;

use crate::activator::{
    self, ActivatorError, ActivatorStatus, Confirmation, Finished, Prepared,
};
use crate::db::{self, AuditEvent, Context, ProposalState};
use crate::state::AppState;

/// How long after an activation request an activator that has not
/// accepted the proposal may still be verifying or evaluating it, in
/// seconds. Only an activation whose report was lost waits this long.
pub const ACCEPT_GRACE_SECS: u64 = 10 * 60;

/// How long the server waits, after confirming an activation found by
/// its status, for the activator to finish it.
const CONFIRMED_FINISH_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(10);

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

/// Reads the git objects of the statement's commit from the mirror, so
/// that the activator can tie that commit to the source. A statement
/// without a source (a rollback) needs none. A failure is logged and the
/// request goes without, so that the activator rejects it with its
/// reason.
async fn commit_evidence(
    state: &AppState,
    number: u64,
    statement: &[u8],
) -> Option<CommitEvidence> {
    let commit = match countersign_core::Statement::parse(statement) {
        Ok(statement) => statement.source?.commit,
        Err(error) => {
            tracing::error!(
                proposal = number,
                %error,
                "cannot read the stored statement"
            );
            return None;
        }
    };
    let mirror = state.mirror_dir();
    let read = tokio::task::spawn_blocking(move || {
        countersign_nix::git::commit_evidence(&mirror, &commit)
    })
    .await;
    match read {
        Ok(Ok(evidence)) => Some(evidence),
        Ok(Err(error)) => {
            tracing::error!(
                proposal = number,
                %error,
                "cannot read the commit from the mirror; the activator \
                 will reject the certificate"
            );
            None
        }
        Err(error) => {
            tracing::error!(proposal = number, %error, "reading the commit");
            None
        }
    }
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
    let commit_evidence = commit_evidence(state, number, &job.statement).await;
    let request = Request::Activate {
        certificate: Certificate::new(&job.statement, job.approvals),
        audit_head: Some(AuditHead {
            seq: job.audit_head.seq,
            hash: job.audit_head.hash,
        }),
        commit_evidence,
    };
    tracing::info!(
        proposal = number,
        "sending the certificate to the activator"
    );
    let socket = state.config.activator_socket.clone();
    let result = activator::activate(&socket, &request, |event| async {
        let awaiting = matches!(
            event,
            Event::AwaitingConfirmation { proposal, .. } if proposal == number
        );
        store_event(state, number, event).await;
        // The activation runs the new system now, and this server can
        // reach the activator, which is what a confirmation states.
        if awaiting {
            confirm(state, number).await;
        }
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

/// Sends the confirmation of `number` and records the reply as an
/// activation event; returns whether the activator keeps the activation.
async fn confirm(state: &AppState, number: u64) -> bool {
    let answer =
        activator::confirm(&state.config.activator_socket, number).await;
    let (confirmed, value) = match answer {
        Ok(Confirmation::Confirmed) => {
            tracing::info!(proposal = number, "activation confirmed");
            (true, json!({ "event": "confirmed", "proposal": number }))
        }
        Ok(Confirmation::Refused { message }) => {
            tracing::warn!(
                proposal = number,
                %message,
                "the activator refused the confirmation"
            );
            (
                false,
                json!({
                    "event": "confirmation-refused",
                    "message": message,
                }),
            )
        }
        Err(error) => {
            tracing::warn!(
                proposal = number,
                %error,
                "cannot confirm the activation"
            );
            (
                false,
                json!({
                    "event": "confirmation-failed",
                    "message": error.to_string(),
                }),
            )
        }
    };
    let result = state
        .db
        .run(move |connection| {
            db::insert_activation_event(connection, number, &value)
        })
        .await;
    if let Err(error) = result {
        tracing::error!(proposal = number, %error, "storing an activation event failed");
    }
    confirmed
}

/// Confirms the activation of `number` that `status` shows in its
/// confirmation window, as this server does after its own restart, and
/// returns the activator's status once the activation has finished.
async fn confirm_found(
    state: &AppState,
    number: u64,
    status: ActivatorStatus,
) -> ActivatorStatus {
    if !confirm(state, number).await {
        return status;
    }
    let socket = &state.config.activator_socket;
    let deadline = tokio::time::Instant::now() + CONFIRMED_FINISH_TIMEOUT;
    let mut latest = status;
    while tokio::time::Instant::now() < deadline {
        match activator::status(socket).await {
            Ok(status) if status.activating != Some(number) => return status,
            Ok(status) => latest = status,
            Err(error) => {
                tracing::warn!(proposal = number, %error, "cannot ask the activator for its status");
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    latest
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
/// request and fails after that, with nothing activated. An activation
/// in its confirmation window is confirmed first, and one that the
/// activator has not finished stays `activating`. If it accepted it and
/// the running system is the proposal's target, the proposal is
/// deployed. Otherwise the activator accepted it
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
    let status = if status.awaiting_confirmation == Some(number) {
        confirm_found(state, number, status).await
    } else {
        status
    };
    if status.activating == Some(number) {
        // The running system may be the target already, but health
        // checks or the confirmation window can still roll it back.
        tracing::info!(
            proposal = number,
            "the activator is still activating the proposal; asking again \
             later"
        );
        return false;
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

/// Asks the activator, in the background, to check the source of a
/// proposal that awaits approval and to evaluate its toplevel, so that
/// the final approval does not wait for either. Failures are only
/// logged, because the activation runs every check again. A target that
/// differs from the built one is recorded as the proposal's error and in
/// the audit log, since the activator will refuse the certificate.
pub fn spawn_prepare(
    state: &AppState,
    number: u64,
    source: FetchedSource,
    target: StorePath,
) {
    let state = state.clone();
    tokio::spawn(async move {
        prepare(&state, number, &source, &target).await;
    });
}

async fn prepare(
    state: &AppState,
    number: u64,
    source: &FetchedSource,
    target: &StorePath,
) {
    tracing::info!(
        proposal = number,
        source = %source.store_path,
        "asking the activator to prepare the proposal"
    );
    let result = activator::prepare(
        &state.config.activator_socket,
        &source.store_path,
        &source.nar_hash,
        &state.attribute,
    )
    .await;
    match result {
        Ok(Prepared::Evaluated {
            target: Some(evaluated),
        }) if &evaluated == target => {
            tracing::info!(
                proposal = number,
                %target,
                "the activator evaluates the source to the built target"
            );
        }
        Ok(Prepared::Evaluated {
            target: Some(evaluated),
        }) => record_mismatch(state, number, target, &evaluated).await,
        Ok(Prepared::Evaluated { target: None }) => tracing::info!(
            proposal = number,
            "the activator checked the source; its evaluation is off"
        ),
        Ok(Prepared::Refused { message }) => tracing::warn!(
            proposal = number,
            %message,
            "the activator refused to prepare the proposal"
        ),
        Err(error) => tracing::warn!(
            proposal = number,
            %error,
            "cannot ask the activator to prepare the proposal"
        ),
    }
}

async fn record_mismatch(
    state: &AppState,
    number: u64,
    target: &StorePath,
    evaluated: &StorePath,
) {
    tracing::warn!(
        proposal = number,
        %target,
        %evaluated,
        "the activator evaluates the source to another target"
    );
    let message = format!(
        "the activator evaluates {} of the source to {evaluated}, not to \
         the built target {target}, so it will refuse this proposal's \
         certificate; give the server and the activator the same Nix \
         settings, then propose again",
        state.attribute
    );
    let detail = json!({
        "target": target.as_str(),
        "evaluated": evaluated.as_str(),
    });
    let result = state
        .db
        .run(move |connection| {
            let tx = connection.transaction().context("begin")?;
            // The state stays as it is; only a proposal that still awaits
            // approval gets the warning as its error.
            db::set_state(
                &tx,
                number,
                ProposalState::AwaitingApproval,
                ProposalState::AwaitingApproval,
                Some(&message),
            )?;
            db::append_audit(
                &tx,
                AuditEvent {
                    kind: "evaluation-mismatch",
                    proposal: number,
                    approver: None,
                    detail,
                },
            )?;
            tx.commit().context("commit")
        })
        .await;
    if let Err(error) = result {
        tracing::error!(
            proposal = number,
            %error,
            "recording the activator's evaluation mismatch failed"
        );
    }
}
