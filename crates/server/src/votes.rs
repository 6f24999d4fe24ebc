//! Approvals and rejections: checked against the policy in force and the
//! stored statement bytes, stored once per approver, and turned into an
//! activation request the moment the quorum is met.

use std::collections::BTreeSet;

use countersign_core::webauthn::{self, decode_base64url};
use countersign_core::{
    ApproverName, Policy, SignCounter, Statement, Verdict, Vote,
    VoteSignature, verify_vote_detailed,
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

/// Checks and stores one vote on proposal `number`: an armored SSH
/// signature, whose embedded key names the approver, or a WebAuthn
/// assertion, whose credential id names the approver.
pub async fn vote(
    state: &AppState,
    number: u64,
    verdict: Verdict,
    signature: VoteSignature,
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

    let name = signer(&policy, &signature)?;
    let kind = signature.kind();
    let candidate = Vote {
        approver: name.as_str().to_owned(),
        signature,
    };
    let verified =
        verify_vote_detailed(&policy, &statement_bytes, &candidate, verdict)
            .map_err(|error| {
            ApiError::bad_request(format!(
                "the {} of proposal {number} is not valid: {error}; {}",
                verdict_noun(verdict),
                signing_hint(number, verdict, kind)
            ))
        })?;

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
                verified.counter.as_ref(),
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
        kind,
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
    counter: Option<&SignCounter>,
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
    if verdict == Verdict::Approve
        && let Some(counter) = counter
        && let Err(refused) = check_counter(tx, counter)?
    {
        return Ok(Err(refused));
    }
    let signature = stored_text(&vote.signature);
    let stored_verdict = match verdict {
        Verdict::Approve => StoredVerdict::Approve,
        Verdict::Reject => StoredVerdict::Reject,
    };
    let added = db::insert_vote(
        tx,
        number,
        &vote.approver,
        stored_verdict,
        &signature,
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
        let Some(approver) = policy.approvers.get(&name) else {
            continue;
        };
        let Some(signature) = parse_stored(&vote.signature) else {
            tracing::error!(
                approver = %name,
                "a stored vote's signature cannot be read; it is not counted"
            );
            continue;
        };
        // A vote of another kind than the approver's key was made under
        // an earlier policy and cannot verify under this one.
        if approver.key.kind() != signature.kind() {
            continue;
        }
        if approvers.insert(name) {
            approvals.push(Vote {
                approver: vote.approver.clone(),
                signature,
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

/// What to do about an invalid vote of `kind`.
fn signing_hint(number: u64, verdict: Verdict, kind: &str) -> String {
    match kind {
        "webauthn" => format!(
            "sign again with the approver's passkey on the page of proposal \
             {number}, which asks for the challenge of this statement"
        ),
        _ => format!(
            "sign the exact statement bytes from GET \
             /api/v1/proposals/{number}/statement with `ssh-keygen -Y sign \
             -n {}`",
            namespace(verdict)
        ),
    }
}

fn namespace(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Approve => "countersign-approve",
        Verdict::Reject => "countersign-reject",
    }
}

/// Finds the approver that made `signature`: by the key embedded in an
/// SSH signature, or by the credential id of a WebAuthn assertion. The
/// signature itself is checked afterwards with that approver's key.
fn signer(
    policy: &Policy,
    signature: &VoteSignature,
) -> Result<ApproverName, ApiError> {
    match signature {
        VoteSignature::Ssh { signature } => {
            approver_for_signature(policy, signature)
                .map(|(approver, _)| approver.name.clone())
        }
        VoteSignature::WebAuthn { credential_id, .. } => {
            let id = decode_base64url("credential_id", credential_id)
                .map_err(|error| ApiError::bad_request(error.to_string()))?;
            policy
                .approver_by_credential_id(&id)
                .map(|approver| approver.name.clone())
                .ok_or_else(|| {
                    ApiError::forbidden(format!(
                        "the passkey {} belongs to no approver of the policy \
                         for host {}; a passkey counts only once the policy \
                         lists it",
                        shorten(credential_id),
                        policy.host
                    ))
                })
        }
    }
}

fn shorten(text: &str) -> String {
    let shown: String = text.chars().take(16).collect();
    if shown.len() < text.len() {
        format!("{shown}…")
    } else {
        shown
    }
}

/// The text of a signature in the votes table: the armored SSH
/// signature as it came, or a WebAuthn assertion as the JSON of its
/// vote signature (with `"kind": "webauthn"`).
fn stored_text(signature: &VoteSignature) -> String {
    match signature {
        VoteSignature::Ssh { signature } => signature.clone(),
        VoteSignature::WebAuthn { .. } => serde_json::to_string(signature)
            .expect("a vote signature encodes as JSON"),
    }
}

/// Reads a signature stored by [`stored_text`]. An armored SSH
/// signature never starts with `{`.
fn parse_stored(text: &str) -> Option<VoteSignature> {
    if text.starts_with('{') {
        serde_json::from_str(text).ok()
    } else {
        Some(VoteSignature::Ssh {
            signature: text.to_owned(),
        })
    }
}

/// Refuses an approval whose passkey signature counter did not grow past
/// the counter of an approval by the same credential on a proposal that
/// the activator accepted (deployed or rolled back). The activator
/// stored at least that counter and would refuse the certificate; this
/// says so now rather than after the quorum. The activator remains the
/// one that decides.
fn check_counter(
    tx: &Transaction<'_>,
    counter: &SignCounter,
) -> Result<Result<(), ApiError>, DbError> {
    let mut statement = tx
        .prepare(
            "SELECT votes.signature FROM votes JOIN proposals \
             ON proposals.number = votes.proposal \
             WHERE votes.approver = ?1 AND votes.verdict = 'approve' \
             AND proposals.state IN (?2, ?3)",
        )
        .context("reading earlier passkey approvals")?;
    let texts = statement
        .query_map(
            rusqlite::params![
                counter.approver.as_str(),
                ProposalState::Deployed.as_str(),
                ProposalState::RolledBack.as_str(),
            ],
            |row| row.get::<_, String>(0),
        )
        .context("reading earlier passkey approvals")?
        .collect::<rusqlite::Result<Vec<_>>>()
        .context("reading earlier passkey approvals")?;
    let stored = texts
        .iter()
        .filter_map(|text| stored_sign_count(text, &counter.credential_id))
        .max()
        .unwrap_or(0);
    Ok(
        webauthn::check_counter(stored, counter.sign_count).map_err(|error| {
            ApiError::conflict(format!(
                "the passkey approval of {} is refused because the \
                 activator would refuse it: {error}; approve again with the \
                 same device, and if its counter still does not grow, \
                 replace the passkey in the policy",
                counter.approver
            ))
        }),
    )
}

/// The signature counter of a stored WebAuthn approval by
/// `credential_id`: bytes 33 to 36 of its authenticator data, after the
/// RP ID hash and the flags. Stored approvals were verified, so their
/// authenticator data has these bytes.
fn stored_sign_count(text: &str, credential_id: &[u8]) -> Option<u32> {
    let VoteSignature::WebAuthn {
        credential_id: id,
        authenticator_data,
        ..
    } = parse_stored(text)?
    else {
        return None;
    };
    if decode_base64url("credential_id", &id).ok()? != credential_id {
        return None;
    }
    let data =
        decode_base64url("authenticator_data", &authenticator_data).ok()?;
    let bytes: [u8; 4] = data.get(33..37)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}
