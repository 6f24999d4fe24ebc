//! One activation request: the checks and the durable acceptance; the
//! steps that follow are in `deploy`.

use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use countersign_core::protocol::{
    AuditHead, CommitEvidence, Event, Outcome, Step,
};
use countersign_core::webauthn::{self, encode_base64url};
use countersign_core::{
    Certificate, Policy, Sha256Digest, SignCounter, Source, Statement,
    StorePath, verify_certificate,
};

use crate::config::Config;
use crate::confirm::Confirmations;
use crate::evaluation::{self, Provenance};
use crate::history::{History, HistoryRecord};
use crate::intent::{self, Intent, IntentStep};
use crate::nix::NixTools;
use crate::refusal_budget::{self, RefusalBudget};
use crate::source_check::{self, SourceCheck};
use crate::state::{self, ActivatorState};
use crate::system::{self, SWITCH_SCRIPT};

/// Where the events of one request go. Sending never fails: a client
/// that goes away does not stop an activation that has begun.
pub(crate) trait EventSink {
    fn send(&mut self, event: &Event);
}

/// Why a request was refused, with what is known about it.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) proposal: Option<u64>,
    pub(crate) statement_sha256: Option<Sha256Digest>,
    pub(crate) reason: String,
}

impl Refusal {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self {
            proposal: None,
            statement_sha256: None,
            reason: reason.into(),
        }
    }
}

/// A certificate that passed every check.
struct Accepted {
    statement: Statement,
    statement_sha256: Sha256Digest,
    approvers: Vec<String>,
    /// The signature counters of the WebAuthn approvals, stored with the
    /// acceptance.
    counters: Vec<SignCounter>,
}

/// The privileged side of the socket: its configuration, the history
/// whose lock serializes every activation, the lock that serializes
/// every evaluation, and the confirmation window.
pub(crate) struct Activator {
    pub(crate) config: Config,
    pub(crate) nix: NixTools,
    history: Mutex<History>,
    /// The highest proposal that the history recorded as accepted at
    /// start. Every later acceptance records a higher number in the
    /// state, so the higher of the two is the last accepted proposal.
    history_last_accepted: u64,
    pub(crate) evaluation_lock: Mutex<()>,
    /// Prepare requests running or waiting for the evaluation lock.
    pub(crate) prepares: AtomicUsize,
    pub(crate) confirmations: Confirmations,
    /// The refusals the history still takes in this minute. It is
    /// locked only while the history's lock is held.
    refusal_budget: Mutex<RefusalBudget>,
}

impl Activator {
    pub(crate) fn new(
        config: Config,
        nix: NixTools,
        history: History,
    ) -> Self {
        Self {
            config,
            nix,
            history_last_accepted: history.last_accepted(),
            history: Mutex::new(history),
            evaluation_lock: Mutex::new(()),
            prepares: AtomicUsize::new(0),
            confirmations: Confirmations::default(),
            refusal_budget: Mutex::new(RefusalBudget::new(Instant::now())),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, History> {
        // A panic in another request leaves the history as consistent as
        // the file on disk, which every record re-reads.
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Verifies `certificate` and activates its target if every check
    /// passes; the last event sent is always `finished`.
    pub(crate) fn activate(
        &self,
        certificate: &Certificate,
        audit_head: Option<AuditHead>,
        commit_evidence: Option<&CommitEvidence>,
        events: &mut dyn EventSink,
    ) {
        let mut history = self.lock();
        let accepted = match self.check(certificate, commit_evidence, events) {
            Ok(accepted) => accepted,
            Err(refusal) => {
                self.refuse_locked(&mut history, refusal, events);
                return;
            }
        };
        let statement = &accepted.statement;
        let proposal = statement.proposal;

        if let Err(reason) = self.check_audit_head(audit_head) {
            let refusal = Refusal {
                proposal: Some(proposal),
                statement_sha256: Some(accepted.statement_sha256),
                reason,
            };
            self.refuse_locked(&mut history, refusal, events);
            return;
        }
        let mut intent = Intent {
            proposal,
            action: statement.action,
            base: statement.base.clone(),
            target: statement.target.clone(),
            base_generation: self.base_generation(&statement.base),
            profile_generation: intent::profile_generation(
                &self.config.profile,
            ),
            rollback_generation: statement.rollback_generation,
            step: IntentStep::PreSwitch,
            switch_started: false,
            since: now(),
        };
        let record = HistoryRecord::Accepted {
            time: now(),
            proposal,
            statement_sha256: accepted.statement_sha256,
            action: statement.action,
            base: statement.base.clone(),
            target: statement.target.clone(),
            approvers: accepted.approvers.clone(),
            audit_head,
        };
        // The number, the audit head and the first intent are written in
        // one state update, so a crash after it always finds the intent.
        let recorded = history.record(&record, |state| {
            state.last_proposal = proposal;
            state.audit_head = audit_head;
            state.intent = Some(intent.clone());
            store_counters(state, &accepted.counters);
        });
        if let Err(error) = recorded {
            let refusal = Refusal {
                proposal: Some(proposal),
                statement_sha256: Some(accepted.statement_sha256),
                reason: format!(
                    "cannot record proposal {proposal} as used, so nothing \
                     was changed: {error}"
                ),
            };
            self.refuse_locked(&mut history, refusal, events);
            return;
        }
        tracing::info!(
            proposal,
            action = %statement.action,
            base = %statement.base,
            target = %statement.target,
            base_generation = intent.base_generation,
            profile_generation = intent.profile_generation,
            approvers = ?accepted.approvers,
            "certificate accepted"
        );

        let (outcome, message) = self.run_steps(&mut intent, events);
        let record = HistoryRecord::Finished {
            time: now(),
            proposal,
            outcome,
            message: message.clone(),
        };
        let message = match history.record(&record, |state| {
            state.intent = None;
        }) {
            Ok(()) => message,
            Err(error) => {
                tracing::error!(
                    proposal,
                    %error,
                    "cannot record the outcome of an activation"
                );
                format!(
                    "{message} (the outcome could not be recorded: {error})"
                )
            }
        };
        match outcome {
            Outcome::Activated => {
                tracing::info!(proposal, %message, "activation finished");
            }
            _ => tracing::error!(
                proposal,
                outcome = ?outcome,
                %message,
                "activation failed"
            ),
        }
        events.send(&Event::Finished {
            outcome,
            proposal: Some(proposal),
            message,
        });
    }

    /// Refuses a request that was not an activation of a valid
    /// certificate, such as malformed input, and records the refusal.
    pub(crate) fn refuse(&self, refusal: Refusal, events: &mut dyn EventSink) {
        let mut history = self.lock();
        self.refuse_locked(&mut history, refusal, events);
    }

    fn refuse_locked(
        &self,
        history: &mut History,
        mut refusal: Refusal,
        events: &mut dyn EventSink,
    ) {
        // Without a verified certificate the reason may quote the
        // request's own bytes, up to a mebibyte per request, which would
        // go into the history and the log of every refusal.
        if refusal.proposal.is_none() {
            refusal.reason =
                shorten(refusal.reason, MAX_UNVERIFIED_REASON_BYTES);
        }
        let admitted = self
            .refusal_budget
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .admit(Instant::now());
        tracing::warn!(
            proposal = refusal.proposal,
            reason = %refusal.reason,
            recorded = admitted.is_some(),
            "request refused"
        );
        if let Some(left_out) = admitted {
            let mut reason = refusal.reason.clone();
            if left_out > 0 {
                reason.push_str(&format!(
                    " ({left_out} earlier refusals were logged but not \
                     recorded here, because more than {} came within {} s)",
                    refusal_budget::MAX_RECORDED,
                    refusal_budget::WINDOW.as_secs()
                ));
            }
            let record = HistoryRecord::Refused {
                time: now(),
                proposal: refusal.proposal,
                statement_sha256: refusal.statement_sha256,
                reason,
            };
            if let Err(error) = history.record(&record, |_| {}) {
                tracing::error!(
                    %error,
                    "cannot record a refusal in the history"
                );
            }
        }
        events.send(&Event::Finished {
            outcome: Outcome::Refused,
            proposal: refusal.proposal,
            message: refusal.reason,
        });
    }

    /// Runs every check, in the order of the crate documentation.
    fn check(
        &self,
        certificate: &Certificate,
        commit_evidence: Option<&CommitEvidence>,
        events: &mut dyn EventSink,
    ) -> Result<Accepted, Refusal> {
        let policy_path = &self.config.policy;
        progress(
            events,
            Step::Verify,
            format!(
                "verifying the certificate against the policy {}",
                policy_path.display()
            ),
        );
        let policy = std::fs::read(policy_path)
            .map_err(|error| error.to_string())
            .and_then(|bytes| {
                Policy::from_toml(&bytes).map_err(|error| error.to_string())
            })
            .map_err(|error| {
                Refusal::new(format!(
                    "cannot load the policy {}: {error}; fix the policy file",
                    policy_path.display()
                ))
            })?;
        let verified = verify_certificate(&policy, certificate, now())
            .map_err(|error| {
                Refusal::new(format!("the certificate is invalid: {error}"))
            })?;
        let statement = verified.statement().clone();
        let statement_sha256 = Sha256Digest::of(verified.statement_bytes());
        let approvers: Vec<String> = verified
            .approvers()
            .iter()
            .map(|name| name.as_str().to_owned())
            .collect();
        let refuse = |reason: String| Refusal {
            proposal: Some(statement.proposal),
            statement_sha256: Some(statement_sha256),
            reason,
        };
        tracing::info!(
            proposal = statement.proposal,
            approvers = ?approvers,
            "certificate signatures and quorum verified"
        );

        let running =
            system::resolve_current_system(&self.config.current_system)
                .map_err(refuse)?;
        if running != statement.base {
            return Err(refuse(format!(
                "the statement's base {} is not the running system {running}; \
                 the proposal was made for another system state",
                statement.base
            )));
        }

        let state = state::read_state(&self.config.state_dir)
            .map_err(|error| refuse(error.to_string()))?;
        // An intent left in the state means that recovery did not finish
        // its activation. A new activation would overwrite the intent, so
        // the pending proposal would never get an outcome.
        if let Some(pending) = &state.intent {
            return Err(refuse(format!(
                "proposal {} is refused because the activation of proposal \
                 {} did not finish (step {}) and its recovery did not \
                 complete; see the activator's log for the cause, fix it \
                 (for example make the state directory {} readable), and \
                 restart the activator so that it recovers proposal {}",
                statement.proposal,
                pending.proposal,
                pending.step,
                self.config.state_dir.display(),
                pending.proposal
            )));
        }
        // The history is checked too, because a state restored from an
        // older backup records a lower number.
        let last_proposal = self.last_proposal(&state);
        if statement.proposal <= last_proposal {
            return Err(refuse(format!(
                "proposal {} is not above the last accepted proposal {}; \
                 a certificate is used only once",
                statement.proposal, last_proposal
            )));
        }
        let counters = verified.webauthn_counters().to_vec();
        check_counters(&state, &counters).map_err(refuse)?;

        match (&statement.source, statement.rollback_generation) {
            (Some(source), _) => {
                self.check_attribute(&statement.attribute).map_err(refuse)?;
                self.check_source(
                    &source.store_path,
                    &source.nar_hash,
                    "the statement",
                    events,
                )
                .map_err(refuse)?;
                check_commit(source, commit_evidence, events)
                    .map_err(refuse)?;
                self.check_evaluation(&statement, source, events)
                    .map_err(refuse)?;
            }
            (None, Some(generation)) => {
                self.check_generation(generation, &statement.target, events)
                    .map_err(refuse)?;
            }
            (None, None) => {
                return Err(refuse(
                    "the statement names neither a source nor a rollback \
                     generation"
                        .to_owned(),
                ));
            }
        }
        self.check_target(&statement.target).map_err(refuse)?;

        Ok(Accepted {
            statement,
            statement_sha256,
            approvers,
            counters,
        })
    }

    /// Requires a deployment's attribute to be the configured one, when
    /// the configuration names one. A rollback is not evaluated, so its
    /// attribute decides nothing and is not checked.
    fn check_attribute(&self, attribute: &str) -> Result<(), String> {
        match &self.config.attribute {
            Some(configured) if configured != attribute => Err(format!(
                "the statement names the attribute {attribute:?}, but this \
                 host's is {configured:?} (`attribute` in the activator \
                 config); propose the host's own configuration"
            )),
            _ => Ok(()),
        }
    }

    /// Checks that `source` has the NAR hash `nar_hash`, which `named_by`
    /// (such as "the statement") names.
    pub(crate) fn check_source(
        &self,
        source: &StorePath,
        nar_hash: &str,
        named_by: &str,
        events: &mut dyn EventSink,
    ) -> Result<(), String> {
        progress(
            events,
            Step::CheckSource,
            format!("checking the NAR hash of {source}"),
        );
        let checked = source_check::check(
            &self.nix,
            &self.config.state_dir,
            source,
            nar_hash,
            named_by,
        )?;
        let message = match checked {
            SourceCheck::Cached => format!(
                "NAR hash of the content-addressed {source} taken from the \
                 cache of verified sources"
            ),
            SourceCheck::QueriedAndRecorded => format!(
                "NAR hash of {source} confirmed by the Nix store and \
                 recorded, because the path is content-addressed"
            ),
            SourceCheck::Queried => format!(
                "NAR hash of {source} confirmed by the Nix store; the path \
                 is not content-addressed, so it is not recorded"
            ),
        };
        progress(events, Step::CheckSource, message);
        Ok(())
    }

    fn check_evaluation(
        &self,
        statement: &Statement,
        source: &Source,
        events: &mut dyn EventSink,
    ) -> Result<(), String> {
        if !self.config.verify_evaluation {
            progress(
                events,
                Step::Evaluate,
                "skipped: verify_evaluation is off in the activator config"
                    .to_owned(),
            );
            return Ok(());
        }
        let out_path = self.evaluate(
            &source.store_path,
            &source.nar_hash,
            &statement.attribute,
            events,
        )?;
        if out_path != statement.target {
            return Err(format!(
                "evaluating {} of the approved source yields {out_path}, \
                 not the target {}",
                statement.attribute, statement.target
            ));
        }
        Ok(())
    }

    /// Evaluates `attribute` of the flake at `source`, whose NAR hash was
    /// checked, through the evaluation cache.
    pub(crate) fn evaluate(
        &self,
        source: &StorePath,
        nar_hash: &str,
        attribute: &str,
        events: &mut dyn EventSink,
    ) -> Result<StorePath, String> {
        progress(
            events,
            Step::Evaluate,
            format!("evaluating {attribute} of {source}"),
        );
        let (out_path, provenance) = evaluation::evaluate(
            &self.nix,
            &self.config.state_dir,
            &self.evaluation_lock,
            source,
            nar_hash,
            attribute,
        )
        .map_err(|error| {
            format!(
                "cannot evaluate {attribute} of the source {source}: \
                 {error}"
            )
        })?;
        if provenance == Provenance::Cached {
            progress(
                events,
                Step::Evaluate,
                format!("evaluation result taken from the cache: {out_path}"),
            );
        }
        Ok(out_path)
    }

    /// Checks, for a rollback, that generation `generation` of the
    /// activator's own profile points at `target`. The target was
    /// activated from that profile before, so no source is evaluated.
    fn check_generation(
        &self,
        generation: u64,
        target: &StorePath,
        events: &mut dyn EventSink,
    ) -> Result<(), String> {
        let profile = &self.config.profile;
        let link = intent::generation_link(profile, generation);
        progress(
            events,
            Step::CheckGeneration,
            format!(
                "checking that generation {generation} of the profile {} \
                 is {target}",
                profile.display()
            ),
        );
        match intent::resolve_link(&link) {
            Some(path) if &path == target => Ok(()),
            Some(path) => Err(format!(
                "generation {generation} of the profile {} is {path}, not \
                 the rollback target {target}; propose the rollback again",
                profile.display()
            )),
            None => Err(format!(
                "the profile {} has no generation {generation} ({} does not \
                 resolve to a store path); list the generations with \
                 `nix-env --list-generations --profile {}`",
                profile.display(),
                link.display(),
                profile.display()
            )),
        }
    }

    fn check_target(&self, target: &StorePath) -> Result<(), String> {
        let valid = self.nix.query_valid_path(target).map_err(|error| {
            format!("cannot query the target {target}: {error}")
        })?;
        if valid.is_none() {
            return Err(format!(
                "the target {target} is not a valid path in the Nix store"
            ));
        }
        system::resolve_in_store(target, SWITCH_SCRIPT).map_err(|error| {
            format!(
                "the target {target} is not a switchable NixOS system: {error}"
            )
        })?;
        Ok(())
    }

    /// Requires the server's audit head to be at or after the one
    /// recorded at the last accepted proposal. A missing, older or
    /// different head means the server's log was cut or rewritten, and
    /// accepting it would let `audit verify` pass on the shorter log.
    fn check_audit_head(
        &self,
        audit_head: Option<AuditHead>,
    ) -> Result<(), String> {
        let state = state::read_state(&self.config.state_dir)
            .map_err(|error| error.to_string())?;
        let Some(recorded) = state.audit_head else {
            return Ok(());
        };
        let went_back = match audit_head {
            None => true,
            Some(head) => {
                head.seq < recorded.seq
                    || (head.seq == recorded.seq && head.hash != recorded.hash)
            }
        };
        if went_back {
            return Err(format!(
                "the server's audit log (entry {}) is behind or differs from \
                 entry {} recorded at the last accepted proposal, so it was \
                 cut or rewritten; restore the log, or, to accept the \
                 shorter log on purpose, remove audit_head from {} as root",
                audit_head.map_or_else(
                    || "none".to_owned(),
                    |head| { head.seq.to_string() }
                ),
                recorded.seq,
                self.config.state_dir.join(state::STATE_FILE).display()
            ));
        }
        Ok(())
    }

    /// Returns the last accepted proposal: the higher of the numbers in
    /// `state` and in the history.
    fn last_proposal(&self, state: &ActivatorState) -> u64 {
        state.last_proposal.max(self.history_last_accepted)
    }

    /// Builds the reply to a status request.
    pub(crate) fn status(&self) -> Result<Event, String> {
        let state = state::read_state(&self.config.state_dir)
            .map_err(|error| error.to_string())?;
        let current_system = match system::resolve_current_system(
            &self.config.current_system,
        ) {
            Ok(path) => Some(path),
            Err(error) => {
                tracing::warn!(%error, "status without a running system");
                None
            }
        };
        Ok(Event::Status {
            current_system,
            last_proposal: self.last_proposal(&state),
            audit_head: state.audit_head,
            activating: state.intent.map(|intent| intent.proposal),
            awaiting_confirmation: self.confirmations.awaiting(),
        })
    }

    /// Answers a `confirm` request: keeps the activation of `proposal`
    /// if it is in its confirmation window.
    pub(crate) fn confirm(&self, proposal: u64, events: &mut dyn EventSink) {
        match self.confirmations.confirm(proposal) {
            Ok(()) => {
                tracing::info!(proposal, "activation confirmed");
                events.send(&Event::Confirmed { proposal });
            }
            Err(reason) => {
                tracing::warn!(proposal, %reason, "confirmation refused");
                events.send(&Event::Finished {
                    outcome: Outcome::Refused,
                    proposal: Some(proposal),
                    message: reason,
                });
            }
        }
    }
}

/// Rejects a WebAuthn approval whose signature counter did not grow past
/// the one stored for its credential, which suggests a cloned
/// authenticator.
// NOTE: an approval made before a later-numbered one that was accepted
// first carries a smaller counter and is rejected here, so its approver
// must approve again.
fn check_counters(
    state: &ActivatorState,
    counters: &[SignCounter],
) -> Result<(), String> {
    for counter in counters {
        let id = encode_base64url(&counter.credential_id);
        let stored = state.webauthn_counters.get(&id).copied().unwrap_or(0);
        if let Err(error) = webauthn::check_counter(stored, counter.sign_count)
        {
            return Err(format!(
                "the WebAuthn approval of approver {} (credential {id}) is \
                 rejected: {error}; approve again with the same device, and \
                 if its counter still does not grow, replace the credential \
                 in the policy",
                counter.approver
            ));
        }
    }
    Ok(())
}

/// Stores the counters of an accepted certificate. A stored counter only
/// grows, even if a caller passes a smaller one.
fn store_counters(state: &mut ActivatorState, counters: &[SignCounter]) {
    for counter in counters {
        let id = encode_base64url(&counter.credential_id);
        let stored = state.webauthn_counters.entry(id).or_insert(0);
        *stored = (*stored).max(counter.sign_count);
    }
}

/// The maximum length in bytes of the reason kept for the refusal of a
/// request whose certificate did not verify.
const MAX_UNVERIFIED_REASON_BYTES: usize = 1024;

/// Cuts the middle out of `text` when it is longer than `limit` bytes,
/// keeping about `limit / 2` bytes at each end, so that the start and
/// the end of a message that quotes a long value stay readable.
fn shorten(text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let mut head = limit / 2;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - limit / 2;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} [{} bytes cut] {}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
}

pub(crate) fn progress(
    events: &mut dyn EventSink,
    step: Step,
    message: String,
) {
    tracing::info!(step = ?step, %message, "progress");
    events.send(&Event::Progress { step, message });
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |duration| duration.as_secs())
}

/// Checks that the statement's source is the tree of its commit, so
/// that approvers who reviewed the commit elsewhere reviewed what is
/// deployed.
fn check_commit(
    source: &Source,
    evidence: Option<&CommitEvidence>,
    events: &mut dyn EventSink,
) -> Result<(), String> {
    let evidence = evidence.ok_or_else(|| {
        format!(
            "the request carries no commit object for commit {}, so the \
             source cannot be tied to it; the server reads it from its \
             git mirror, whose log tells why it could not",
            source.commit
        )
    })?;
    progress(
        events,
        Step::CheckSource,
        format!(
            "checking that {} holds the tree of commit {}",
            source.store_path, source.commit
        ),
    );
    crate::commit_check::check(
        source.store_path.as_ref(),
        &source.commit,
        evidence,
    )?;
    progress(
        events,
        Step::CheckSource,
        format!(
            "{} is the tree of commit {}",
            source.store_path, source.commit
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_keeps_both_ends() {
        assert_eq!(shorten("short".to_owned(), 10), "short");
        assert_eq!(shorten("abcdefgh".to_owned(), 4), "ab [4 bytes cut] gh");
        // "é" takes two bytes, and a cut inside one drops it whole.
        assert_eq!(shorten("aébcdéf".to_owned(), 4), "a [7 bytes cut] f");
    }
}
