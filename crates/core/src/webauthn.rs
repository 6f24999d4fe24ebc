//! WebAuthn (passkey and security-key) approvals, verified offline.
//!
//! # How a WebAuthn approval works
//!
//! An approver enrols once: the browser requests that an authenticator
//! (a phone's passkey store, a YubiKey, a laptop's platform
//! authenticator) create a key pair for this relying party. The public key and the credential
//! id come back in an attestation object; [`parse_registration`] checks
//! it and [`RegisteredCredential::to_policy_toml`] prints the policy
//! entry that an administrator pastes into the root-owned policy file.
//!
//! To approve a statement, the web page calls
//! `navigator.credentials.get()` with a challenge that the page does not
//! choose: it is [`approval_challenge`], a SHA-256 over a domain tag and
//! the exact statement bytes. The authenticator returns three byte
//! strings and the credential id:
//!
//! - `clientDataJSON`, written by the browser: the ceremony type, the
//!   challenge (base64url), the origin of the page, and whether the page
//!   was embedded in another site's frame;
//! - `authenticatorData`, written by the authenticator: SHA-256 of the
//!   relying party id (`rpIdHash`), flag bits (user present, user
//!   verified, backup eligible, backed up, attested data, extensions), a
//!   signature counter, and optional extension outputs;
//! - a signature over `authenticatorData || SHA-256(clientDataJSON)`.
//!
//! The signature alone proves little: it covers whatever the browser and
//! the authenticator wrote, and most WebAuthn vulnerabilities were
//! verifiers that checked the signature but not the content.
//! [`verify_assertion`] therefore checks, in this order:
//!
//! 1. Sizes: each input is bounded before parsing.
//! 2. The credential id is the approver's own (the spec's
//!    `allowCredentials` check).
//! 3. `clientDataJSON` is UTF-8 JSON, an object whose known members
//!    appear once; other members are allowed because browsers add some.
//! 4. `type` is exactly `webauthn.get`, so a registration response
//!    (`webauthn.create`) is never an approval.
//! 5. `challenge` is exactly the base64url (no padding) form of the
//!    expected 32 bytes. The expected value is recomputed from the
//!    statement, never read from the request, so an assertion for one
//!    statement, or an approval used as a rejection, fails here.
//! 6. `origin` equals one of the configured origins as a whole string:
//!    scheme, host and port. Matching the host alone would admit
//!    `http://` or another port; suffix or pattern matching would admit
//!    `https://evil-example.org` for `example.org`.
//! 7. `topOrigin` is absent and `crossOrigin` is absent or `false`: the
//!    approval page is never embedded in another site's frame, so an
//!    assertion made inside one is rejected.
//! 8. `authenticatorData` is at least 37 bytes and its `rpIdHash` is
//!    SHA-256 of the configured relying party id. This binds the
//!    signature to our relying party even if a browser mislabels the
//!    origin.
//! 9. User present (UP) is set. Without it nobody touched the device.
//! 10. User verified (UV) is set when the approver's policy asks for it.
//!     Asking the browser for `userVerification: "required"` is not
//!     enough, because the server cannot trust the page that asked.
//! 11. Backed up (BS) is not set without backup eligible (BE), which no
//!     real authenticator reports. When the policy records the
//!     credential's backup eligibility, BE must equal it, because BE is
//!     fixed when a credential is created.
//! 12. Attested credential data (AT) is absent, as it always is in an
//!     assertion. When extension data (ED) is set, exactly one CBOR map
//!     with text keys follows the counter; otherwise nothing follows.
//!     Trailing bytes are rejected, so the data parses one way only.
//!     Extension outputs are ignored after parsing because countersign
//!     requests no extensions.
//! 13. The signature verifies over `authenticatorData ||
//!     SHA-256(clientDataJSON)` with the key and the algorithm stored in
//!     the policy. The algorithm is never taken from the message. ES256
//!     signatures must be strict ASN.1 DER that re-encodes to the same
//!     bytes. Ed25519 uses the strict verification, which rejects
//!     small-order keys and non-canonical signatures.
//!
//! The signature counter is returned, not judged: only the caller has
//! the stored value. [`check_counter`] implements the rule. When the
//! stored or the new counter is non-zero, the new one must be greater.
//! A counter that does not grow means that two copies of the private key
//! may exist. Authenticators that do not count (most synced passkeys)
//! always report zero and pass.
//!
//! Replay of a whole assertion is prevented above this module: the
//! challenge names one statement, a statement carries one proposal
//! number, and the activator accepts each proposal number once.

mod client_data;
mod cose;
mod data;
mod registration;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::certificate::Verdict;

pub use cose::{Algorithm, CredentialPublicKey};
pub use data::AuthenticatorFlags;
pub use registration::{
    ExpectedRegistration, RegisteredCredential, parse_registration,
};

use client_data::{CeremonyType, check_client_data};
use data::AuthenticatorData;

/// Maximum size of `clientDataJSON`. Browsers write about 150 to 300
/// bytes; the bound keeps hostile input cheap to reject.
pub const MAX_CLIENT_DATA_JSON_BYTES: usize = 8 * 1024;
/// Maximum size of `authenticatorData` in an assertion or registration.
pub const MAX_AUTHENTICATOR_DATA_BYTES: usize = 8 * 1024;
/// Maximum length of a credential id, from the WebAuthn specification.
pub const MAX_CREDENTIAL_ID_BYTES: usize = 1023;
/// Maximum size of a signature: a DER ES256 signature is at most 72 bytes
/// and an Ed25519 one is 64, so anything longer is malformed.
const MAX_SIGNATURE_BYTES: usize = 256;

/// Domain tag of the challenge of an approval.
const APPROVE_TAG: &[u8] = b"countersign-approve-v1\0";
/// Domain tag of the challenge of a rejection.
const REJECT_TAG: &[u8] = b"countersign-reject-v1\0";

/// One approver's registered WebAuthn credential, from the policy.
#[derive(Debug, Clone)]
pub struct WebAuthnCredential {
    pub credential_id: Vec<u8>,
    pub public_key: CredentialPublicKey,
    pub algorithm: Algorithm,
    /// The backup-eligible (BE) flag recorded at registration, when the
    /// policy states it; assertions must then report the same value.
    pub backup_eligible: Option<bool>,
}

impl WebAuthnCredential {
    /// Builds a credential from the policy's text fields: the credential
    /// id and the COSE_Key bytes, both base64url without padding, and the
    /// COSE algorithm number, which must match the key.
    pub fn from_policy_fields(
        credential_id: &str,
        public_key: &str,
        algorithm: i64,
        backup_eligible: Option<bool>,
    ) -> Result<Self, WebAuthnError> {
        let credential_id = decode_base64url("credential_id", credential_id)?;
        check_credential_id_length(&credential_id)?;
        let algorithm = Algorithm::from_cose(algorithm)?;
        let cose = decode_base64url("public_key", public_key)?;
        let public_key = CredentialPublicKey::from_cose(&cose, algorithm)?;
        Ok(Self {
            credential_id,
            public_key,
            algorithm,
            backup_eligible,
        })
    }

    /// Encodes the credential id as base64url without padding, as the
    /// policy and the browser's `PublicKeyCredential.id` write it.
    pub fn credential_id_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.credential_id)
    }

    /// Describes the credential in one line for people comparing
    /// policies: the algorithm, the start of the credential id and the
    /// SHA-256 fingerprint of the raw public key, written like OpenSSH's.
    pub fn summary(&self) -> String {
        let id = self.credential_id_base64url();
        let shown: String = id.chars().take(16).collect();
        let ellipsis = if shown.len() < id.len() { "…" } else { "" };
        let fingerprint = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(Sha256::digest(self.public_key.key_bytes()));
        format!(
            "webauthn {} credential {shown}{ellipsis} SHA256:{fingerprint}",
            self.algorithm
        )
    }
}

/// The values a valid assertion must contain, all taken from the
/// configuration and the statement, never from the request being judged.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedAssertion<'a> {
    /// The relying party id, a domain such as `countersign.example.org`.
    pub rp_id: &'a str,
    /// Accepted origins, each compared as a whole string
    /// (`https://countersign.example.org`, `http://localhost:8470`).
    pub origins: &'a [String],
    /// The 32 challenge bytes, for votes [`approval_challenge`].
    pub challenge: [u8; 32],
    /// Whether the user-verified flag (PIN or biometric) is required.
    pub require_user_verification: bool,
}

/// The parts of a WebAuthn assertion, decoded to bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub credential_id: Vec<u8>,
    pub authenticator_data: Vec<u8>,
    pub client_data_json: Vec<u8>,
    pub signature: Vec<u8>,
}

impl Assertion {
    /// Decodes the four parts from base64url without padding, the form
    /// in which votes carry them. Padding, the standard alphabet and
    /// whitespace are rejected.
    pub fn from_base64url(
        credential_id: &str,
        authenticator_data: &str,
        client_data_json: &str,
        signature: &str,
    ) -> Result<Self, WebAuthnError> {
        Ok(Self {
            credential_id: decode_base64url("credential_id", credential_id)?,
            authenticator_data: decode_base64url(
                "authenticator_data",
                authenticator_data,
            )?,
            client_data_json: decode_base64url(
                "client_data_json",
                client_data_json,
            )?,
            signature: decode_base64url("signature", signature)?,
        })
    }
}

/// The counter and flags of a verified assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssertionInfo {
    /// The signature counter; pass it to [`check_counter`] with the
    /// stored value, and store it when the approval is used.
    pub sign_count: u32,
    pub flags: AuthenticatorFlags,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebAuthnError {
    #[error(
        "the {field} is not base64url without padding (alphabet A-Z a-z 0-9 - _, no '=')"
    )]
    Encoding { field: &'static str },
    #[error("the {field} is {length} bytes, more than the maximum of {max}")]
    TooLarge {
        field: &'static str,
        length: usize,
        max: usize,
    },
    #[error("the credential id is {0} bytes; it must be 1 to 1023 bytes long")]
    CredentialIdLength(usize),
    #[error(
        "the assertion was made with credential {found}, not with the approver's credential {expected}"
    )]
    WrongCredential { found: String, expected: String },
    #[error("the clientDataJSON is invalid: {0}")]
    ClientData(String),
    #[error("the clientDataJSON type is {found:?}, expected {expected:?}")]
    WrongType {
        found: String,
        expected: &'static str,
    },
    #[error(
        "the clientDataJSON challenge {found:?} is not the challenge of this statement and verdict (expected {expected:?})"
    )]
    WrongChallenge { found: String, expected: String },
    #[error(
        "the origin {found:?} is not one of the configured origins [{}]; add it to `origins` under [webauthn] if it is yours",
        .expected.join(", ")
    )]
    WrongOrigin {
        found: String,
        expected: Vec<String>,
    },
    #[error(
        "the assertion was made in a frame embedded in another site (topOrigin {0:?}); open the approval page directly"
    )]
    TopOrigin(String),
    #[error(
        "the assertion was made in a cross-origin frame (crossOrigin is {0}); open the approval page directly"
    )]
    CrossOrigin(String),
    #[error("the authenticatorData is invalid: {0}")]
    AuthenticatorData(String),
    #[error(
        "the authenticatorData is for another relying party: its rpIdHash is not SHA-256 of {rp_id:?}"
    )]
    WrongRpIdHash { rp_id: String },
    #[error(
        "the authenticator did not report user presence (UP flag clear); touch the key or confirm on the device"
    )]
    UserNotPresent,
    #[error(
        "the authenticator did not report user verification (UV flag clear), which the policy requires; unlock the passkey with a PIN or biometric"
    )]
    UserNotVerified,
    #[error(
        "the authenticator reported the credential as backed up (BS) but not backup eligible (BE), which is invalid"
    )]
    BackupStateWithoutEligibility,
    #[error(
        "the authenticator reported backup eligibility (BE) {found}, but the credential was registered with {registered}; BE never changes for a credential"
    )]
    BackupEligibilityChanged { registered: bool, found: bool },
    #[error("the signature is malformed for {algorithm}: {reason}")]
    MalformedSignature {
        algorithm: &'static str,
        reason: &'static str,
    },
    #[error("the signature does not verify with the approver's {0} key")]
    InvalidSignature(&'static str),
    #[error("the credential public key is invalid: {0}")]
    InvalidKey(String),
    #[error(
        "COSE algorithm {0} is not supported; use ES256 (-7) or EdDSA (-8)"
    )]
    UnsupportedAlgorithm(i64),
    #[error(
        "the signature counter went from {stored} to {new}; it must grow, so the credential may have been cloned"
    )]
    CounterNotIncreased { stored: u32, new: u32 },
    #[error("the attestationObject is invalid: {0}")]
    Attestation(String),
    #[error(
        "attestation format {0:?} is not supported; request attestation \"none\" when creating the credential"
    )]
    UnsupportedAttestationFormat(String),
}

/// Verifies one assertion by `credential` against `expected`; see the
/// module documentation for each check. The signature counter is
/// returned for the caller to judge with [`check_counter`].
pub fn verify_assertion(
    credential: &WebAuthnCredential,
    expected: &ExpectedAssertion<'_>,
    assertion: &Assertion,
) -> Result<AssertionInfo, WebAuthnError> {
    check_size(
        "client_data_json",
        assertion.client_data_json.len(),
        MAX_CLIENT_DATA_JSON_BYTES,
    )?;
    check_size(
        "authenticator_data",
        assertion.authenticator_data.len(),
        MAX_AUTHENTICATOR_DATA_BYTES,
    )?;
    check_size("signature", assertion.signature.len(), MAX_SIGNATURE_BYTES)?;

    if assertion.credential_id != credential.credential_id {
        return Err(WebAuthnError::WrongCredential {
            found: URL_SAFE_NO_PAD.encode(&assertion.credential_id),
            expected: credential.credential_id_base64url(),
        });
    }
    check_client_data(
        &assertion.client_data_json,
        CeremonyType::Get,
        &expected.challenge,
        expected.origins,
    )?;

    let data = AuthenticatorData::parse(&assertion.authenticator_data)?;
    data.check_rp_id(expected.rp_id)?;
    data.check_user(expected.require_user_verification)?;
    if let Some(registered) = credential.backup_eligible {
        let found = data.flags.backup_eligible();
        if found != registered {
            return Err(WebAuthnError::BackupEligibilityChanged {
                registered,
                found,
            });
        }
    }
    if data.attested.is_some() {
        return Err(WebAuthnError::AuthenticatorData(
            "an assertion must not carry attested credential data (AT flag \
             set)"
                .into(),
        ));
    }

    let message = signed_message(
        &assertion.authenticator_data,
        &assertion.client_data_json,
    );
    credential
        .public_key
        .verify(&message, &assertion.signature)?;
    Ok(AssertionInfo {
        sign_count: data.sign_count,
        flags: data.flags,
    })
}

/// Checks a new signature counter against the stored one. Both zero
/// means that the authenticator does not count, which passes. Otherwise
/// the new value must be greater, so it never goes back, even to zero.
pub fn check_counter(stored: u32, new: u32) -> Result<(), WebAuthnError> {
    if (stored == 0 && new == 0) || new > stored {
        Ok(())
    } else {
        Err(WebAuthnError::CounterNotIncreased { stored, new })
    }
}

/// Computes the WebAuthn challenge for a vote on a statement: SHA-256 of
/// a domain tag per verdict followed by the exact statement bytes. The
/// tags keep an approval from counting as a rejection and the reverse.
pub fn approval_challenge(
    statement_bytes: &[u8],
    verdict: Verdict,
) -> [u8; 32] {
    let tag = match verdict {
        Verdict::Approve => APPROVE_TAG,
        Verdict::Reject => REJECT_TAG,
    };
    let mut hasher = Sha256::new();
    hasher.update(tag);
    hasher.update(statement_bytes);
    hasher.finalize().into()
}

/// Encodes bytes as base64url without padding.
pub fn encode_base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; `field` names the value in the
/// error.
pub fn decode_base64url(
    field: &'static str,
    text: &str,
) -> Result<Vec<u8>, WebAuthnError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| WebAuthnError::Encoding { field })
}

/// Concatenates the bytes a WebAuthn signature covers:
/// `authenticatorData || SHA-256(clientDataJSON)`.
fn signed_message(
    authenticator_data: &[u8],
    client_data_json: &[u8],
) -> Vec<u8> {
    let mut message = authenticator_data.to_vec();
    message.extend_from_slice(&Sha256::digest(client_data_json));
    message
}

fn check_size(
    field: &'static str,
    length: usize,
    max: usize,
) -> Result<(), WebAuthnError> {
    if length > max {
        return Err(WebAuthnError::TooLarge { field, length, max });
    }
    Ok(())
}

fn check_credential_id_length(id: &[u8]) -> Result<(), WebAuthnError> {
    if id.is_empty() || id.len() > MAX_CREDENTIAL_ID_BYTES {
        return Err(WebAuthnError::CredentialIdLength(id.len()));
    }
    Ok(())
}
