//! Certificates: a statement together with the approvals that should
//! meet the policy, and the one function that turns them into a
//! [`VerifiedCertificate`].
//!
//! The activator calls [`verify_certificate`] with its own policy and
//! clock; the server uses [`verify_vote`] to give early feedback on each
//! upload. Neither trusts the other's conclusions.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::policy::{ApproverKey, ApproverName, Policy, QuorumShortfall};
use crate::sshsig::{self, Namespace, SshSignatureError};
use crate::statement::{Statement, StatementError};

/// One approver's signature over a statement, as carried on the wire.
///
/// Unknown fields are rejected by [`VoteSignature`], which receives
/// every field but `approver`: serde cannot combine `flatten` with
/// `deny_unknown_fields` on the outer struct (it would reject `kind`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub approver: String,
    #[serde(flatten)]
    pub signature: VoteSignature,
}

/// The signature of a vote, by kind of key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum VoteSignature {
    /// An armored SSHSIG from `ssh-keygen -Y sign`.
    Ssh { signature: String },
}

/// Whether a vote approves or rejects; each has its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Reject,
}

impl Verdict {
    fn namespace(self) -> Namespace {
        match self {
            Verdict::Approve => Namespace::Approve,
            Verdict::Reject => Namespace::Reject,
        }
    }
}

/// A statement and its approvals, as sent to the activator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// The exact statement bytes, base64-encoded so that no JSON layer can
    /// alter them.
    pub statement: String,
    pub approvals: Vec<Vote>,
}

impl Certificate {
    pub fn new(statement_bytes: &[u8], approvals: Vec<Vote>) -> Self {
        Self {
            statement: STANDARD.encode(statement_bytes),
            approvals,
        }
    }

    pub fn statement_bytes(&self) -> Result<Vec<u8>, CertificateError> {
        STANDARD
            .decode(&self.statement)
            .map_err(|_| CertificateError::StatementEncoding)
    }
}

/// A certificate that met the policy at the time of verification. Only
/// [`verify_certificate`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedCertificate {
    statement: Statement,
    statement_bytes: Vec<u8>,
    approvers: BTreeSet<ApproverName>,
}

impl VerifiedCertificate {
    pub fn statement(&self) -> &Statement {
        &self.statement
    }

    pub fn statement_bytes(&self) -> &[u8] {
        &self.statement_bytes
    }

    pub fn approvers(&self) -> &BTreeSet<ApproverName> {
        &self.approvers
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("the statement field is not valid base64")]
    StatementEncoding,
    #[error("approver {0:?} is not in the policy")]
    UnknownApprover(String),
    #[error("approver {0} appears more than once in the certificate")]
    DuplicateApprover(ApproverName),
    #[error("the signature of approver {approver} is invalid: {error}")]
    BadSignature {
        approver: ApproverName,
        error: SshSignatureError,
    },
    #[error(transparent)]
    Statement(#[from] StatementError),
    #[error("the statement is for host {found:?}, but this is {expected:?}")]
    WrongHost { found: String, expected: String },
    #[error(
        "the statement was made under policy {found}, but the policy in force is {expected}"
    )]
    WrongPolicy { found: String, expected: String },
    #[error("the statement expired at {expires} (now {now})")]
    Expired { expires: u64, now: u64 },
    #[error(
        "the statement lives {lifetime} s, longer than the policy's {allowed} s"
    )]
    LifetimeTooLong { lifetime: u64, allowed: u64 },
    #[error(
        "the statement was created at {created}, in the future (now {now})"
    )]
    CreatedInFuture { created: u64, now: u64 },
    #[error("the quorum is not met: {0}")]
    QuorumNotMet(QuorumShortfall),
}

/// Tolerated clock difference between the server and the activator.
const CLOCK_SKEW_SECS: u64 = 300;

/// Checks one vote's signature over `statement_bytes` and returns the
/// approver it belongs to.
pub fn verify_vote(
    policy: &Policy,
    statement_bytes: &[u8],
    vote: &Vote,
    verdict: Verdict,
) -> Result<ApproverName, CertificateError> {
    let name = ApproverName::parse(&vote.approver).map_err(|_| {
        CertificateError::UnknownApprover(vote.approver.clone())
    })?;
    let approver = policy.approvers.get(&name).ok_or_else(|| {
        CertificateError::UnknownApprover(vote.approver.clone())
    })?;
    let VoteSignature::Ssh { signature } = &vote.signature;
    let ApproverKey::Ssh(key) = &approver.key;
    sshsig::verify(
        key,
        verdict.namespace(),
        statement_bytes,
        signature,
        approver.user_verification,
    )
    .map_err(|error| CertificateError::BadSignature {
        approver: name.clone(),
        error,
    })?;
    Ok(name)
}

/// Verifies a certificate against `policy` at time `now` (Unix seconds):
/// every signature first, over the raw statement bytes, then the parsed
/// statement, then the quorum. Any invalid or repeated approval makes the
/// whole certificate invalid.
///
/// The checks that need the machine (the running system, the last
/// accepted proposal number, the store) are the caller's.
pub fn verify_certificate(
    policy: &Policy,
    certificate: &Certificate,
    now: u64,
) -> Result<VerifiedCertificate, CertificateError> {
    let statement_bytes = certificate.statement_bytes()?;
    let mut approvers = BTreeSet::new();
    for vote in &certificate.approvals {
        let name =
            verify_vote(policy, &statement_bytes, vote, Verdict::Approve)?;
        if !approvers.insert(name.clone()) {
            return Err(CertificateError::DuplicateApprover(name));
        }
    }
    let statement = Statement::parse(&statement_bytes)?;
    check_statement(policy, &statement, now)?;
    policy
        .check_quorum(&approvers)
        .map_err(CertificateError::QuorumNotMet)?;
    Ok(VerifiedCertificate {
        statement,
        statement_bytes,
        approvers,
    })
}

/// Checks the parts of a statement that the policy and the clock decide.
pub fn check_statement(
    policy: &Policy,
    statement: &Statement,
    now: u64,
) -> Result<(), CertificateError> {
    if statement.host != policy.host {
        return Err(CertificateError::WrongHost {
            found: statement.host.clone(),
            expected: policy.host.clone(),
        });
    }
    if statement.policy_sha256 != policy.sha256 {
        return Err(CertificateError::WrongPolicy {
            found: statement.policy_sha256.to_hex(),
            expected: policy.sha256.to_hex(),
        });
    }
    if now >= statement.expires {
        return Err(CertificateError::Expired {
            expires: statement.expires,
            now,
        });
    }
    if statement.created > now + CLOCK_SKEW_SECS {
        return Err(CertificateError::CreatedInFuture {
            created: statement.created,
            now,
        });
    }
    let lifetime = statement.expires - statement.created;
    if lifetime > policy.proposal_lifetime_secs {
        return Err(CertificateError::LifetimeTooLong {
            lifetime,
            allowed: policy.proposal_lifetime_secs,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::tests::sample;
    use crate::test_keys::TestKey;

    struct Fixture {
        phone: TestKey,
        laptop: TestKey,
        policy: Policy,
        statement: Statement,
    }

    fn fixture(threshold: usize, required: &str) -> Fixture {
        let phone = TestKey::generate("phone");
        let laptop = TestKey::generate("laptop");
        let text = format!(
            "host = \"web1\"\nthreshold = {threshold}\nrequired = [{required}]\n\
             proposal_lifetime_secs = 3600\n\
             [approvers.phone]\nssh = \"{}\"\n\
             [approvers.laptop]\nssh = \"{}\"\n",
            phone.openssh(),
            laptop.openssh()
        );
        let policy = Policy::from_toml(text.as_bytes()).unwrap();
        let mut statement = sample();
        statement.policy_sha256 = policy.sha256;
        Fixture {
            phone,
            laptop,
            policy,
            statement,
        }
    }

    fn vote(key: &TestKey, approver: &str, bytes: &[u8]) -> Vote {
        Vote {
            approver: approver.into(),
            signature: VoteSignature::Ssh {
                signature: key.sign("countersign-approve", bytes),
            },
        }
    }

    #[test]
    fn certificate_round_trips_through_json() {
        let f = fixture(1, "");
        let bytes = f.statement.to_bytes();
        let certificate =
            Certificate::new(&bytes, vec![vote(&f.phone, "phone", &bytes)]);
        let text = serde_json::to_string(&certificate).unwrap();
        let parsed: Certificate = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, certificate);
    }

    #[test]
    fn vote_rejects_unknown_field() {
        let text =
            r#"{"approver":"phone","kind":"ssh","signature":"x","extra":1}"#;
        assert!(serde_json::from_str::<Vote>(text).is_err());
    }

    #[test]
    fn two_of_two_verifies() {
        let f = fixture(2, "");
        let bytes = f.statement.to_bytes();
        let certificate = Certificate::new(
            &bytes,
            vec![
                vote(&f.phone, "phone", &bytes),
                vote(&f.laptop, "laptop", &bytes),
            ],
        );
        let verified =
            verify_certificate(&f.policy, &certificate, 1_500).unwrap();
        assert_eq!(verified.approvers().len(), 2);
        assert_eq!(verified.statement(), &f.statement);
    }

    #[test]
    fn one_of_two_is_short() {
        let f = fixture(2, "");
        let bytes = f.statement.to_bytes();
        let certificate =
            Certificate::new(&bytes, vec![vote(&f.phone, "phone", &bytes)]);
        let error =
            verify_certificate(&f.policy, &certificate, 1_500).unwrap_err();
        assert!(
            matches!(error, CertificateError::QuorumNotMet(_)),
            "{error}"
        );
    }

    #[test]
    fn same_approver_twice_is_rejected() {
        let f = fixture(2, "");
        let bytes = f.statement.to_bytes();
        let certificate = Certificate::new(
            &bytes,
            vec![
                vote(&f.phone, "phone", &bytes),
                vote(&f.phone, "phone", &bytes),
            ],
        );
        let error =
            verify_certificate(&f.policy, &certificate, 1_500).unwrap_err();
        assert!(
            matches!(error, CertificateError::DuplicateApprover(_)),
            "{error}"
        );
    }

    #[test]
    fn signature_under_other_name_fails() {
        let f = fixture(2, "");
        let bytes = f.statement.to_bytes();
        let certificate = Certificate::new(
            &bytes,
            vec![
                vote(&f.phone, "phone", &bytes),
                vote(&f.phone, "laptop", &bytes),
            ],
        );
        let error =
            verify_certificate(&f.policy, &certificate, 1_500).unwrap_err();
        assert!(matches!(error, CertificateError::BadSignature { .. }));
    }

    #[test]
    fn approval_does_not_move_to_other_statement() {
        let f = fixture(1, "");
        let bytes = f.statement.to_bytes();
        let approval = vote(&f.phone, "phone", &bytes);
        let mut changes: Vec<Statement> = Vec::new();
        let mut next = f.statement.clone();
        next.proposal += 1;
        changes.push(next);
        let mut other_host = f.statement.clone();
        other_host.host = "web2".into();
        changes.push(other_host);
        let mut other_target = f.statement.clone();
        other_target.target = other_target.base.clone();
        changes.push(other_target);
        for changed in changes {
            let certificate =
                Certificate::new(&changed.to_bytes(), vec![approval.clone()]);
            let error = verify_certificate(&f.policy, &certificate, 1_500)
                .unwrap_err();
            assert!(
                matches!(error, CertificateError::BadSignature { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn expired_statement_fails() {
        let f = fixture(1, "");
        let bytes = f.statement.to_bytes();
        let certificate =
            Certificate::new(&bytes, vec![vote(&f.phone, "phone", &bytes)]);
        let error =
            verify_certificate(&f.policy, &certificate, 2_000).unwrap_err();
        assert!(matches!(error, CertificateError::Expired { .. }), "{error}");
    }

    #[test]
    fn required_approver_must_sign() {
        let f = fixture(1, "\"laptop\"");
        let bytes = f.statement.to_bytes();
        let certificate =
            Certificate::new(&bytes, vec![vote(&f.phone, "phone", &bytes)]);
        let error =
            verify_certificate(&f.policy, &certificate, 1_500).unwrap_err();
        assert!(
            matches!(error, CertificateError::QuorumNotMet(_)),
            "{error}"
        );
    }

    #[test]
    fn rejection_does_not_count_as_approval() {
        let f = fixture(1, "");
        let bytes = f.statement.to_bytes();
        let rejection = Vote {
            approver: "phone".into(),
            signature: VoteSignature::Ssh {
                signature: f.phone.sign("countersign-reject", &bytes),
            },
        };
        let certificate = Certificate::new(&bytes, vec![rejection]);
        let error =
            verify_certificate(&f.policy, &certificate, 1_500).unwrap_err();
        assert!(matches!(error, CertificateError::BadSignature { .. }));
    }

    #[test]
    fn statement_under_other_policy_fails() {
        let f = fixture(1, "");
        let mut statement = f.statement.clone();
        statement.policy_sha256 = crate::Sha256Digest::of(b"old policy");
        let bytes = statement.to_bytes();
        let certificate =
            Certificate::new(&bytes, vec![vote(&f.phone, "phone", &bytes)]);
        let error =
            verify_certificate(&f.policy, &certificate, 1_500).unwrap_err();
        assert!(matches!(error, CertificateError::WrongPolicy { .. }));
    }
}
