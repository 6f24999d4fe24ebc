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
use crate::webauthn::{self, Assertion, WebAuthnError, encode_base64url};

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
    /// A WebAuthn assertion over
    /// [`approval_challenge`](webauthn::approval_challenge); each field
    /// is base64url without padding.
    WebAuthn {
        credential_id: String,
        authenticator_data: String,
        client_data_json: String,
        signature: String,
    },
}

impl VoteSignature {
    /// Encodes a WebAuthn assertion for the wire.
    pub fn from_assertion(assertion: &Assertion) -> Self {
        VoteSignature::WebAuthn {
            credential_id: encode_base64url(&assertion.credential_id),
            authenticator_data: encode_base64url(
                &assertion.authenticator_data,
            ),
            client_data_json: encode_base64url(&assertion.client_data_json),
            signature: encode_base64url(&assertion.signature),
        }
    }

    /// Names the kind of signature as the `kind` field does.
    pub fn kind(&self) -> &'static str {
        match self {
            VoteSignature::Ssh { .. } => "ssh",
            VoteSignature::WebAuthn { .. } => "webauthn",
        }
    }
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
    counters: Vec<SignCounter>,
}

/// The signature counter that a WebAuthn approval reported. The caller
/// that keeps counters checks it with
/// [`check_counter`](webauthn::check_counter) and stores it once the
/// certificate is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignCounter {
    pub approver: ApproverName,
    pub credential_id: Vec<u8>,
    pub sign_count: u32,
}

/// A vote whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedVote {
    pub approver: ApproverName,
    /// The counter of a WebAuthn vote; `None` for SSH signatures.
    pub counter: Option<SignCounter>,
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

    /// Returns the signature counters of the WebAuthn approvals, one per
    /// approval, in certificate order.
    pub fn webauthn_counters(&self) -> &[SignCounter] {
        &self.counters
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
    #[error(
        "the WebAuthn assertion of approver {approver} is invalid: {error}"
    )]
    BadAssertion {
        approver: ApproverName,
        error: WebAuthnError,
    },
    #[error(
        "approver {approver} has a {key} key, but the vote carries a {vote} signature; sign with the approver's own key"
    )]
    KindMismatch {
        approver: ApproverName,
        key: &'static str,
        vote: &'static str,
    },
    #[error(
        "approver {0} has a WebAuthn credential, but the policy has no [webauthn] table"
    )]
    MissingWebAuthnSettings(ApproverName),
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
    verify_vote_detailed(policy, statement_bytes, vote, verdict)
        .map(|verified| verified.approver)
}

/// Checks one vote's signature over `statement_bytes` with the key the
/// policy gives its approver, and returns the approver and, for
/// WebAuthn, the signature counter. A vote whose kind differs from the
/// approver's key is invalid.
pub fn verify_vote_detailed(
    policy: &Policy,
    statement_bytes: &[u8],
    vote: &Vote,
    verdict: Verdict,
) -> Result<VerifiedVote, CertificateError> {
    let name = ApproverName::parse(&vote.approver).map_err(|_| {
        CertificateError::UnknownApprover(vote.approver.clone())
    })?;
    let approver = policy.approvers.get(&name).ok_or_else(|| {
        CertificateError::UnknownApprover(vote.approver.clone())
    })?;
    match (&approver.key, &vote.signature) {
        (ApproverKey::Ssh(key), VoteSignature::Ssh { signature }) => {
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
            Ok(VerifiedVote {
                approver: name,
                counter: None,
            })
        }
        (
            ApproverKey::WebAuthn(credential),
            VoteSignature::WebAuthn {
                credential_id,
                authenticator_data,
                client_data_json,
                signature,
            },
        ) => {
            let settings = policy.webauthn.as_ref().ok_or_else(|| {
                CertificateError::MissingWebAuthnSettings(name.clone())
            })?;
            let bad = |error| CertificateError::BadAssertion {
                approver: name.clone(),
                error,
            };
            let assertion = Assertion::from_base64url(
                credential_id,
                authenticator_data,
                client_data_json,
                signature,
            )
            .map_err(bad)?;
            let expected = settings.expected_assertion(
                webauthn::approval_challenge(statement_bytes, verdict),
                approver.user_verification,
            );
            let info =
                webauthn::verify_assertion(credential, &expected, &assertion)
                    .map_err(bad)?;
            Ok(VerifiedVote {
                counter: Some(SignCounter {
                    approver: name.clone(),
                    credential_id: assertion.credential_id,
                    sign_count: info.sign_count,
                }),
                approver: name,
            })
        }
        (key, signature) => Err(CertificateError::KindMismatch {
            approver: name,
            key: key.kind(),
            vote: signature.kind(),
        }),
    }
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
    let mut counters = Vec::new();
    for vote in &certificate.approvals {
        let verified = verify_vote_detailed(
            policy,
            &statement_bytes,
            vote,
            Verdict::Approve,
        )?;
        if !approvers.insert(verified.approver.clone()) {
            return Err(CertificateError::DuplicateApprover(
                verified.approver,
            ));
        }
        counters.extend(verified.counter);
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
        counters,
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
    mod webauthn_votes {
        use super::*;
        use crate::webauthn::testing::TestAuthenticator;
        use crate::webauthn::{Algorithm, WebAuthnError};

        struct Fixture {
            laptop: TestKey,
            passkey: TestAuthenticator,
            key: TestAuthenticator,
            policy: Policy,
            statement: Statement,
        }

        fn device(algorithm: Algorithm, seed: &[u8]) -> TestAuthenticator {
            TestAuthenticator::new(
                algorithm,
                seed,
                "countersign.example.org",
                "https://countersign.example.org",
            )
        }

        /// Builds a policy of one SSH approver (laptop) and two WebAuthn
        /// approvers: a passkey and a security key that must verify the
        /// user.
        fn fixture(threshold: usize) -> Fixture {
            let laptop = TestKey::generate("laptop");
            let passkey = device(Algorithm::Es256, b"passkey");
            let key = device(Algorithm::EdDsa, b"key");
            let text = format!(
                "host = \"web1\"\nthreshold = {threshold}\n\
                 proposal_lifetime_secs = 3600\n\
                 [webauthn]\nrp_id = \"countersign.example.org\"\n\
                 origins = [\"https://countersign.example.org\"]\n\
                 [approvers.laptop]\nssh = \"{}\"\n\
                 [approvers.passkey]\nwebauthn = {}\n\
                 [approvers.key]\nwebauthn = {}\nuser_verification = true\n",
                laptop.openssh(),
                passkey.policy_entry(),
                key.policy_entry(),
            );
            let policy = Policy::from_toml(text.as_bytes()).unwrap();
            let mut statement = sample();
            statement.policy_sha256 = policy.sha256;
            Fixture {
                laptop,
                passkey,
                key,
                policy,
                statement,
            }
        }

        fn assertion_error(error: CertificateError) -> WebAuthnError {
            match error {
                CertificateError::BadAssertion { error, .. } => error,
                other => panic!("expected an invalid assertion: {other}"),
            }
        }

        #[test]
        fn mixed_certificate_verifies_with_counters() {
            let mut f = fixture(3);
            let bytes = f.statement.to_bytes();
            f.passkey.sign_count = 9;
            let certificate = Certificate::new(
                &bytes,
                vec![
                    vote(&f.laptop, "laptop", &bytes),
                    f.passkey.vote("passkey", &bytes, Verdict::Approve),
                    f.key.vote("key", &bytes, Verdict::Approve),
                ],
            );
            let verified =
                verify_certificate(&f.policy, &certificate, 1_500).unwrap();
            assert_eq!(verified.approvers().len(), 3);
            let counters = verified.webauthn_counters();
            assert_eq!(counters.len(), 2);
            assert_eq!(counters[0].approver.as_str(), "passkey");
            assert_eq!(counters[0].credential_id, f.passkey.credential_id);
            assert_eq!(counters[0].sign_count, 10);
            assert_eq!(counters[1].approver.as_str(), "key");
            assert_eq!(counters[1].sign_count, 1);
        }

        #[test]
        fn webauthn_vote_round_trips_through_json() {
            let mut f = fixture(1);
            let bytes = f.statement.to_bytes();
            let vote = f.passkey.vote("passkey", &bytes, Verdict::Approve);
            let text = serde_json::to_value(&vote).unwrap();
            assert_eq!(text["kind"], "webauthn");
            for field in [
                "credential_id",
                "authenticator_data",
                "client_data_json",
                "signature",
            ] {
                assert!(text[field].is_string(), "{field}");
            }
            let parsed: Vote = serde_json::from_value(text).unwrap();
            assert_eq!(parsed, vote);
        }

        #[test]
        fn vote_of_other_kind_fails() {
            let mut f = fixture(1);
            let bytes = f.statement.to_bytes();
            let ssh_for_passkey = vote(&f.laptop, "passkey", &bytes);
            let webauthn_for_laptop =
                f.passkey.vote("laptop", &bytes, Verdict::Approve);
            for (vote, key, kind) in [
                (ssh_for_passkey, "webauthn", "ssh"),
                (webauthn_for_laptop, "ssh", "webauthn"),
            ] {
                let error =
                    verify_vote(&f.policy, &bytes, &vote, Verdict::Approve)
                        .unwrap_err();
                assert!(
                    matches!(
                        error,
                        CertificateError::KindMismatch { key: k, vote: v, .. }
                            if k == key && v == kind
                    ),
                    "{error}"
                );
            }
        }

        #[test]
        fn approval_is_not_rejection() {
            let mut f = fixture(1);
            let bytes = f.statement.to_bytes();
            let approval = f.passkey.vote("passkey", &bytes, Verdict::Approve);
            let error =
                verify_vote(&f.policy, &bytes, &approval, Verdict::Reject)
                    .unwrap_err();
            assert!(matches!(
                assertion_error(error),
                WebAuthnError::WrongChallenge { .. }
            ));
            let rejection = f.passkey.vote("passkey", &bytes, Verdict::Reject);
            verify_vote(&f.policy, &bytes, &rejection, Verdict::Reject)
                .unwrap();
            let certificate = Certificate::new(&bytes, vec![rejection]);
            let error = verify_certificate(&f.policy, &certificate, 1_500)
                .unwrap_err();
            assert!(matches!(
                assertion_error(error),
                WebAuthnError::WrongChallenge { .. }
            ));
        }

        #[test]
        fn approval_does_not_move_to_next_statement() {
            let mut f = fixture(1);
            let bytes = f.statement.to_bytes();
            let approval = f.passkey.vote("passkey", &bytes, Verdict::Approve);
            let mut next = f.statement.clone();
            next.proposal += 1;
            let certificate =
                Certificate::new(&next.to_bytes(), vec![approval]);
            let error = verify_certificate(&f.policy, &certificate, 1_500)
                .unwrap_err();
            assert!(matches!(
                assertion_error(error),
                WebAuthnError::WrongChallenge { .. }
            ));
        }

        #[test]
        fn policy_user_verification_applies() {
            let mut f = fixture(1);
            let bytes = f.statement.to_bytes();
            f.key.flags = crate::webauthn::AuthenticatorFlags::USER_PRESENT;
            f.passkey.flags = f.key.flags;
            let key_vote = f.key.vote("key", &bytes, Verdict::Approve);
            let error =
                verify_vote(&f.policy, &bytes, &key_vote, Verdict::Approve)
                    .unwrap_err();
            assert_eq!(assertion_error(error), WebAuthnError::UserNotVerified);
            let passkey_vote =
                f.passkey.vote("passkey", &bytes, Verdict::Approve);
            verify_vote(&f.policy, &bytes, &passkey_vote, Verdict::Approve)
                .unwrap();
        }

        #[test]
        fn padded_vote_field_fails() {
            let mut f = fixture(1);
            let bytes = f.statement.to_bytes();
            let mut vote = f.passkey.vote("passkey", &bytes, Verdict::Approve);
            let VoteSignature::WebAuthn { signature, .. } =
                &mut vote.signature
            else {
                panic!("a WebAuthn vote");
            };
            signature.push('=');
            let error =
                verify_vote(&f.policy, &bytes, &vote, Verdict::Approve)
                    .unwrap_err();
            assert_eq!(
                assertion_error(error),
                WebAuthnError::Encoding { field: "signature" }
            );
        }

        #[test]
        fn same_webauthn_approver_twice_fails() {
            let mut f = fixture(2);
            let bytes = f.statement.to_bytes();
            let certificate = Certificate::new(
                &bytes,
                vec![
                    f.passkey.vote("passkey", &bytes, Verdict::Approve),
                    f.passkey.vote("passkey", &bytes, Verdict::Approve),
                ],
            );
            let error = verify_certificate(&f.policy, &certificate, 1_500)
                .unwrap_err();
            assert!(
                matches!(error, CertificateError::DuplicateApprover(_)),
                "{error}"
            );
        }
    }
}
