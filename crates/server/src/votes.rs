//! Approvals and rejections: checked against the policy in force and the
//! stored statement bytes, stored once per approver, and turned into an
//! activation request the moment the quorum is met.

use std::collections::BTreeSet;

use countersign_core::{
    ApproverName, Policy, Statement, Verdict, Vote, VoteSignature, verify_vote,
};
use rusqlite::Transaction;
use serde_json::json;

use crate::activation::{self, ActivationJob};
use crate::api_error::ApiError;
use crate::auth::approver_for_signature;
use crate::db::{
    self, AuditEvent, Context, DbError, ProposalState, StoredVerdict,
};
use crate::state::AppState;

/// Maximum length of a rejection reason, in characters.
pub const MAX_REASON_CHARS: usize = 2000;

/// Checks and stores one vote on proposal `number`.
pub async fn vote(
    state: &AppState,
    number: u64,
    verdict: Verdict,
    armored: String,
    reason: Option<String>,
    uploaded_by: String,
) -> Result<(), ApiError> {
    if let Some(reason) = &reason
        && reason.chars().count() > MAX_REASON_CHARS
    {
        return Err(ApiError::bad_request(format!(
            "the reason is longer than {MAX_REASON_CHARS} characters; \
             shorten it"
        )));
    }
    let row = state
        .db
        .run(move |connection| db::proposal(connection, number))
        .await?
        .ok_or_else(|| ApiError::proposal_not_found(number))?;
    check_open(state, number, row.state, row.expires).await?;
    if verdict == Verdict::Approve {
        crate::ci_gate::check_approval(state, number, row.commit.as_deref())
            .await?;
    }
    let statement_bytes = row.statement.unwrap_or_default();
    let statement = Statement::parse(&statement_bytes).map_err(|error| {
        ApiError::internal("reading the stored statement", &error)
    })?;
    let policy = state.policy.current().map_err(|error| {
        ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, error)
    })?;
    if statement.policy_sha256 != policy.sha256 {
        return Err(ApiError::conflict(format!(
            "proposal {number} was made under policy {}, but the policy in \
             force is now {}; votes on it no longer count. Propose again",
            statement.policy_sha256, policy.sha256
        )));
    }

    let approver = approver_for_signature(&policy, &armored)?;
    let name = approver.name.clone();
    let candidate = Vote {
        approver: name.as_str().to_owned(),
        signature: VoteSignature::Ssh { signature: armored },
    };
    verify_vote(&policy, &statement_bytes, &candidate, verdict).map_err(
        |error| {
            ApiError::bad_request(format!(
                "the {} of proposal {number} is not valid: {error}; sign \
                 the exact statement bytes from GET \
                 /api/v1/proposals/{number}/statement with `ssh-keygen -Y \
                 sign -n {}`",
                verdict_noun(verdict),
                namespace(verdict)
            ))
        },
    )?;

    let ci = state.integrations.ci.clone();
    let job = state
        .db
        .run(move |connection| {
            let tx = connection.transaction().context("begin")?;
            let result = record(
                &tx,
                &policy,
                number,
                verdict,
                &candidate,
                reason.as_deref(),
                &uploaded_by,
                statement_bytes,
                ci.as_deref(),
            )?;
            if result.is_ok() {
                tx.commit().context("commit")?;
            }
            Ok(result)
        })
        .await??;
    if let Some(job) = job {
        activation::spawn(state, job);
    }
    tracing::info!(
        proposal = number,
        approver = %name,
        verdict = verdict_noun(verdict),
        "vote accepted"
    );
    Ok(())
}

/// Rejects votes on proposals that are not open, and marks a proposal
/// whose expiry has passed as expired.
async fn check_open(
    state: &AppState,
    number: u64,
    current: ProposalState,
    expires: Option<u64>,
) -> Result<(), ApiError> {
    if current != ProposalState::AwaitingApproval {
        return Err(ApiError::conflict(format!(
            "proposal {number} is {current}; only proposals awaiting \
             approval take votes"
        )));
    }
    let now = db::now();
    if let Some(expires) = expires
        && now >= expires
    {
        state
            .db
            .run(move |connection| {
                let tx = connection.transaction().context("begin")?;
                expire(&tx, number, expires)?;
                tx.commit().context("commit")
            })
            .await?;
        return Err(ApiError::conflict(format!(
            "proposal {number} expired at {expires} (now {now}); propose \
             again"
        )));
    }
    Ok(())
}

/// Moves an expired proposal to `expired` with an audit entry.
pub fn expire(
    tx: &Transaction<'_>,
    number: u64,
    expires: u64,
) -> Result<bool, DbError> {
    let message = format!("expired at {expires} without a quorum");
    let moved = db::set_state(
        tx,
        number,
        ProposalState::AwaitingApproval,
        ProposalState::Expired,
        Some(&message),
    )?;
    if moved {
        db::append_audit(
            tx,
            AuditEvent {
                kind: "proposal-expired",
                proposal: number,
                approver: None,
                detail: json!({ "expires": expires }),
            },
        )?;
    }
    Ok(moved)
}

/// Stores a verified vote and applies its effect, inside one
/// transaction. Returns the activation to start when the quorum is now
/// met.
#[allow(clippy::too_many_arguments)]
fn record(
    tx: &Transaction<'_>,
    policy: &Policy,
    number: u64,
    verdict: Verdict,
    vote: &Vote,
    reason: Option<&str>,
    uploaded_by: &str,
    statement: Vec<u8>,
    ci: Option<&crate::ci_gate::CiConfig>,
) -> Result<Result<Option<ActivationJob>, ApiError>, DbError> {
    // The state may have changed while the signature was checked.
    let Some(row) = db::proposal(tx, number)? else {
        return Ok(Err(ApiError::proposal_not_found(number)));
    };
    if row.state != ProposalState::AwaitingApproval {
        return Ok(Err(ApiError::conflict(format!(
            "proposal {number} is {}; only proposals awaiting approval \
             take votes",
            row.state
        ))));
    }
    // TODO: store WebAuthn votes once the approvals API accepts them; the
    // API only builds SSH votes today, so this branch is not reached.
    let VoteSignature::Ssh { signature } = &vote.signature else {
        return Ok(Err(ApiError::bad_request(
            "only SSH signatures are stored by this version of the server",
        )));
    };
    let stored_verdict = match verdict {
        Verdict::Approve => StoredVerdict::Approve,
        Verdict::Reject => StoredVerdict::Reject,
    };
    let added = db::insert_vote(
        tx,
        number,
        &vote.approver,
        stored_verdict,
        signature,
        reason,
    )?;
    if added {
        db::append_audit(
            tx,
            AuditEvent {
                kind: verdict_noun(verdict),
                proposal: number,
                approver: Some(&vote.approver),
                detail: json!({
                    "statement_sha256": row.statement_sha256,
                    "uploaded_by": uploaded_by,
                    "reason": reason,
                }),
            },
        )?;
    }

    if verdict == Verdict::Reject {
        if policy.veto {
            let message = match reason {
                Some(reason) => {
                    format!("rejected by {}: {reason}", vote.approver)
                }
                None => format!("rejected by {}", vote.approver),
            };
            db::set_state(
                tx,
                number,
                ProposalState::AwaitingApproval,
                ProposalState::Rejected,
                Some(&message),
            )?;
            db::append_audit(
                tx,
                AuditEvent {
                    kind: "proposal-rejected",
                    proposal: number,
                    approver: Some(&vote.approver),
                    detail: json!({ "veto": true }),
                },
            )?;
        }
        return Ok(Ok(None));
    }

    let votes = db::votes(tx, number)?;
    let (approvers, approvals) = counted_approvals(policy, &votes);
    if policy.check_quorum(&approvers).is_err() {
        return Ok(Ok(None));
    }
    // A required check that has not succeeded holds the certificate back.
    if crate::ci_gate::hold(tx, ci, number, row.commit.as_deref())? {
        return Ok(Ok(None));
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
            }),
        },
    )?;
    Ok(Ok(Some(ActivationJob {
        number,
        statement,
        approvals,
        audit_head,
    })))
}

/// The approvers whose approvals count, and one approval from each: an
/// approver of the policy who approved and did not also reject.
pub fn counted_approvals(
    policy: &Policy,
    votes: &[db::VoteRow],
) -> (BTreeSet<ApproverName>, Vec<Vote>) {
    let rejecters: BTreeSet<&str> = votes
        .iter()
        .filter(|vote| vote.verdict == StoredVerdict::Reject)
        .map(|vote| vote.approver.as_str())
        .collect();
    let mut approvers = BTreeSet::new();
    let mut approvals = Vec::new();
    for vote in votes {
        if vote.verdict != StoredVerdict::Approve
            || rejecters.contains(vote.approver.as_str())
        {
            continue;
        }
        let Ok(name) = ApproverName::parse(&vote.approver) else {
            continue;
        };
        if !policy.approvers.contains_key(&name) {
            continue;
        }
        if approvers.insert(name) {
            approvals.push(Vote {
                approver: vote.approver.clone(),
                signature: VoteSignature::Ssh {
                    signature: vote.signature.clone(),
                },
            });
        }
    }
    (approvers, approvals)
}

fn verdict_noun(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Approve => "approval",
        Verdict::Reject => "rejection",
    }
}

fn namespace(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Approve => "countersign-approve",
        Verdict::Reject => "countersign-reject",
    }
}
