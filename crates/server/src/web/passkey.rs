//! The passkey checks of the pages, on top of `countersign_core`'s
//! WebAuthn verifier: the relying party from the policy, sign-in
//! assertions, enrolment, and the challenge of a vote.
//!
//! The relying party ID and the accepted origins come only from the
//! policy's `[webauthn]` table, never from the request being judged.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use countersign_core::{Policy, Verdict};
use serde::Deserialize;

/// The COSE algorithms offered at enrolment, most preferred first:
/// ES256, EdDSA, RS256.
pub const ALGORITHMS: [i64; 3] = [-7, -8, -257];

/// The relying party of the policy.
#[allow(dead_code)] // TODO: used once core verifies WebAuthn.
pub struct RelyingParty {
    pub rp_id: String,
    pub origins: Vec<String>,
}

/// An assertion as the browser's script sends it, every field base64url
/// without padding.
#[allow(dead_code)] // TODO: used once core verifies WebAuthn.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionBody {
    pub credential_id: String,
    pub authenticator_data: String,
    pub client_data_json: String,
    pub signature: String,
}

/// A passkey made at enrolment.
pub struct Registered {
    pub credential_id: String,
    pub public_key: String,
    pub algorithm: i64,
    pub user_verified: bool,
}

impl Registered {
    /// The policy lines that make this passkey an approver's key.
    pub fn snippet(&self, name: &str) -> String {
        format!(
            "[approvers.{name}]\nwebauthn = {{ credential_id = \"{}\", \
             public_key = \"{}\", algorithm = {} }}\nuser_verification = {}\n",
            self.credential_id,
            self.public_key,
            self.algorithm,
            self.user_verified
        )
    }
}

pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a challenge that the server issued: 32 bytes, base64url.
pub fn decode_challenge(text: &str) -> Result<[u8; 32], String> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| {
            "the challenge is not 32 bytes in base64url; reload the page"
                .to_owned()
        })
}

/// The relying party of `policy`, or why passkeys cannot be used.
pub fn relying_party(policy: &Policy) -> Result<RelyingParty, String> {
    // TODO: read the policy's [webauthn] table once core has it.
    let _ = policy;
    Err(
        "the policy has no [webauthn] table; add rp_id and origins to \
         use passkeys"
            .to_owned(),
    )
}

/// The base64url credential id of `approver`'s passkey, if the policy
/// gives it one.
pub fn credential_id(policy: &Policy, approver: &str) -> Option<String> {
    let _ = (policy, approver);
    None
}

/// Whether the policy requires user verification of `approver`.
pub fn requires_user_verification(policy: &Policy, approver: &str) -> bool {
    policy
        .approvers
        .values()
        .find(|listed| listed.name.as_str() == approver)
        .is_some_and(|listed| listed.user_verification)
}

/// The approver whose passkey has the base64url id `credential_id`.
pub fn approver_of(
    policy: &Policy,
    credential_id: &str,
) -> Result<String, String> {
    let _ = (policy, credential_id);
    Err("no approver of the policy has this passkey".to_owned())
}

/// Checks a sign-in assertion of `approver` over `challenge`.
pub fn verify_sign_in(
    policy: &Policy,
    approver: &str,
    challenge: &[u8; 32],
    assertion: &AssertionBody,
) -> Result<(), String> {
    let _ = (policy, approver, challenge, assertion);
    Err("passkeys are not supported yet".to_owned())
}

/// Checks a registration response over `challenge`.
pub fn register(
    policy: &Policy,
    challenge: &[u8; 32],
    attestation_object: &str,
    client_data_json: &str,
) -> Result<Registered, String> {
    let _ = (policy, challenge, attestation_object, client_data_json);
    Err("passkeys are not supported yet".to_owned())
}

/// The challenge a passkey signs to approve or reject `statement`.
pub fn vote_challenge(statement: &[u8], verdict: Verdict) -> [u8; 32] {
    let _ = (statement, verdict);
    [0; 32]
}
