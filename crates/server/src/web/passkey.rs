//! The passkey checks of the pages, on top of `countersign_core`'s
//! WebAuthn verifier: the relying party from the policy, sign-in
//! assertions, enrolment, and the challenge of a vote.
//!
//! The relying party ID and the accepted origins come only from the
//! policy's `[webauthn]` table, never from the request being judged.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use countersign_core::webauthn::{self, Assertion, RegisteredCredential};
use countersign_core::{
    Approver, ApproverKey, Policy, Verdict, WebAuthnSettings,
};
use serde::Deserialize;

/// The COSE algorithms offered at enrolment, most preferred first:
/// ES256 and EdDSA, the two that the verifier supports. RS256 is not
/// offered, so an authenticator never makes a key that could not sign.
pub const ALGORITHMS: [i64; 2] = [-7, -8];

/// An assertion as the browser's script sends it, every field base64url
/// without padding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionBody {
    pub credential_id: String,
    pub authenticator_data: String,
    pub client_data_json: String,
    pub signature: String,
}

impl AssertionBody {
    fn decode(&self) -> Result<Assertion, String> {
        Assertion::from_base64url(
            &self.credential_id,
            &self.authenticator_data,
            &self.client_data_json,
            &self.signature,
        )
        .map_err(|error| error.to_string())
    }
}

/// A passkey made at enrolment.
pub struct Registered(RegisteredCredential);

impl Registered {
    /// Writes the policy lines that make this passkey an approver's key.
    /// User verification is suggested exactly when the device verified
    /// its user while making the passkey. The backup eligibility is
    /// recorded because it never changes for a credential.
    pub fn snippet(&self, name: &str) -> String {
        let credential = &self.0;
        format!(
            "[approvers.{name}]\nwebauthn = {{ credential_id = \"{}\", \
             public_key = \"{}\", algorithm = {}, backup_eligible = {} }}\n\
             user_verification = {}\n",
            encode(&credential.credential_id),
            encode(&credential.public_key),
            credential.algorithm.cose(),
            credential.backup_eligible,
            credential.user_verified
        )
    }

    /// One sentence about where copies of the passkey may live.
    pub fn note(&self) -> &'static str {
        if self.0.backup_eligible {
            "This is a synced passkey: every device that holds a copy of \
             it can approve."
        } else {
            "This passkey is bound to this device."
        }
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
pub fn relying_party(policy: &Policy) -> Result<&WebAuthnSettings, String> {
    policy.webauthn.as_ref().ok_or_else(|| {
        "the policy has no [webauthn] table; add rp_id and origins to use \
         passkeys"
            .to_owned()
    })
}

/// The approver named `name`, if the policy lists it.
fn listed<'p>(policy: &'p Policy, name: &str) -> Option<&'p Approver> {
    policy
        .approvers
        .values()
        .find(|listed| listed.name.as_str() == name)
}

/// The base64url credential id of `approver`'s passkey, if the policy
/// gives it one.
pub fn credential_id(policy: &Policy, approver: &str) -> Option<String> {
    match &listed(policy, approver)?.key {
        ApproverKey::WebAuthn(credential) => {
            Some(credential.credential_id_base64url())
        }
        ApproverKey::Ssh(_) => None,
    }
}

/// Whether the policy requires user verification of `approver`.
pub fn requires_user_verification(policy: &Policy, approver: &str) -> bool {
    listed(policy, approver).is_some_and(|listed| listed.user_verification)
}

/// The approver whose passkey has the base64url id `credential_id`.
pub fn approver_of(
    policy: &Policy,
    credential_id: &str,
) -> Result<String, String> {
    let id = webauthn::decode_base64url("credential_id", credential_id)
        .map_err(|error| error.to_string())?;
    policy
        .approver_by_credential_id(&id)
        .map(|approver| approver.name.as_str().to_owned())
        .ok_or_else(|| {
            format!(
                "no approver of the policy for host {} has this passkey; a \
                 new passkey counts only once the policy lists it",
                policy.host
            )
        })
}

/// Checks a sign-in assertion of `approver` over `challenge` with the
/// policy's relying party, and user verification when the policy
/// requires it of the approver.
pub fn verify_sign_in(
    policy: &Policy,
    approver: &str,
    challenge: &[u8; 32],
    assertion: &AssertionBody,
) -> Result<(), String> {
    let party = relying_party(policy)?;
    let listed = listed(policy, approver)
        .ok_or_else(|| format!("approver {approver} is not in the policy"))?;
    let ApproverKey::WebAuthn(credential) = &listed.key else {
        return Err(format!(
            "approver {approver} has an SSH key, not a passkey; log in with \
             the command line"
        ));
    };
    let expected =
        party.expected_assertion(*challenge, listed.user_verification);
    webauthn::verify_assertion(credential, &expected, &assertion.decode()?)
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// Checks a registration response over `challenge` against the policy's
/// relying party.
pub fn register(
    policy: &Policy,
    challenge: &[u8; 32],
    attestation_object: &str,
    client_data_json: &str,
) -> Result<Registered, String> {
    let party = relying_party(policy)?;
    let text = |error: webauthn::WebAuthnError| error.to_string();
    let attestation_object =
        webauthn::decode_base64url("attestation_object", attestation_object)
            .map_err(text)?;
    let client_data_json =
        webauthn::decode_base64url("client_data_json", client_data_json)
            .map_err(text)?;
    let registered = webauthn::parse_registration(
        &attestation_object,
        &client_data_json,
        &party.expected_registration(*challenge),
    )
    .map_err(text)?;
    Ok(Registered(registered))
}

/// The challenge a passkey signs to approve or reject `statement`.
pub fn vote_challenge(statement: &[u8], verdict: Verdict) -> [u8; 32] {
    webauthn::approval_challenge(statement, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offered_algorithm_is_verified() {
        for number in ALGORITHMS {
            assert!(
                webauthn::Algorithm::from_cose(number).is_ok(),
                "COSE algorithm {number} is offered but not verified"
            );
        }
    }
}
