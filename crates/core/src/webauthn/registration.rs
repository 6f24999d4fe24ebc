//! Enrolment: checking a browser's registration response
//! (`navigator.credentials.create()`) and turning it into a policy entry.
//!
//! Attestation is not a trust input here. The server requests
//! attestation `"none"`, and the credential counts only once an
//! administrator has put its policy entry into the root-owned policy
//! file, a change that itself needs the current quorum. Registration
//! checks therefore catch mistakes and wrong devices; they do not prove
//! which authenticator model made the key.

use ciborium::Value;

use super::client_data::{CeremonyType, check_client_data};
use super::cose::{Algorithm, CredentialPublicKey, cose_algorithm};
use super::data::AuthenticatorData;
use super::{
    MAX_CLIENT_DATA_JSON_BYTES, WebAuthnCredential, WebAuthnError, check_size,
    encode_base64url, signed_message,
};
use crate::policy::ApproverName;

/// Maximum size of an attestation object. One with a certificate chain
/// takes a few kilobytes.
pub const MAX_ATTESTATION_OBJECT_BYTES: usize = 64 * 1024;

/// The values a valid registration response must contain.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedRegistration<'a> {
    pub rp_id: &'a str,
    pub origins: &'a [String],
    /// The random challenge the server sent to the browser.
    pub challenge: [u8; 32],
}

/// A credential taken from a checked registration response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredCredential {
    pub credential_id: Vec<u8>,
    /// The COSE_Key bytes exactly as the authenticator wrote them.
    pub public_key: Vec<u8>,
    pub algorithm: Algorithm,
    /// BE: the credential may be synced to other devices (a synced
    /// passkey rather than a key bound to one device).
    pub backup_eligible: bool,
    /// BS: the credential was already backed up at registration.
    pub backed_up: bool,
    /// UV: the authenticator verified the user (PIN or biometric).
    pub user_verified: bool,
    pub sign_count: u32,
    /// The authenticator model id; all zero under attestation "none".
    pub aaguid: [u8; 16],
    /// The attestation statement format: "none" or "packed".
    pub attestation_format: String,
}

impl RegisteredCredential {
    /// Writes the policy entry of this credential for approver `name`.
    /// User verification is required exactly when the authenticator
    /// performed it at registration.
    pub fn to_policy_toml(&self, name: &ApproverName) -> String {
        let mut text = String::new();
        if self.backup_eligible {
            text.push_str(
                "# A synced passkey: every device that holds a copy can \
                 approve.\n",
            );
        } else {
            text.push_str("# A credential bound to one device.\n");
        }
        text.push_str(&format!("[approvers.{name}]\n"));
        text.push_str(&format!(
            "webauthn = {{ credential_id = \"{}\", public_key = \"{}\", \
             algorithm = {}, backup_eligible = {} }}\n",
            encode_base64url(&self.credential_id),
            encode_base64url(&self.public_key),
            self.algorithm.cose(),
            self.backup_eligible
        ));
        text.push_str(&format!(
            "user_verification = {}\n",
            self.user_verified
        ));
        text
    }

    /// Builds the credential as a policy would contain it.
    pub fn credential(&self) -> Result<WebAuthnCredential, WebAuthnError> {
        Ok(WebAuthnCredential {
            credential_id: self.credential_id.clone(),
            public_key: CredentialPublicKey::from_cose(
                &self.public_key,
                self.algorithm,
            )?,
            algorithm: self.algorithm,
            backup_eligible: Some(self.backup_eligible),
        })
    }
}

/// Checks a registration response against `expected` and returns the
/// new credential.
///
/// The checks mirror those of an assertion: `clientDataJSON` of type
/// `webauthn.create` with the expected challenge and origin and no
/// embedding, `rpIdHash`, user presence, consistent backup flags, and no
/// trailing bytes. In addition the attested credential data must be
/// present, its id 1 to 1023 bytes, and its COSE key of an allowed
/// algorithm (ES256 or EdDSA) with a consistent key type and curve.
///
/// Attestation formats: `"none"` with an empty statement, and
/// `"packed"`. A packed self-attestation (no certificate chain) is
/// verified with the credential's own key.
// NOTE: a packed attestation with a certificate chain (x5c) is accepted
// without verifying the chain or its signature, exactly as if it were
// "none", because countersign does not trust authenticator vendors'
// roots.
pub fn parse_registration(
    attestation_object: &[u8],
    client_data_json: &[u8],
    expected: &ExpectedRegistration<'_>,
) -> Result<RegisteredCredential, WebAuthnError> {
    check_size(
        "client_data_json",
        client_data_json.len(),
        MAX_CLIENT_DATA_JSON_BYTES,
    )?;
    check_size(
        "attestation_object",
        attestation_object.len(),
        MAX_ATTESTATION_OBJECT_BYTES,
    )?;
    check_client_data(
        client_data_json,
        CeremonyType::Create,
        &expected.challenge,
        expected.origins,
    )?;

    let object = AttestationObject::parse(attestation_object)?;
    let data = AuthenticatorData::parse(&object.auth_data)?;
    data.check_rp_id(expected.rp_id)?;
    data.check_user(false)?;
    let attested = data.attested.as_ref().ok_or_else(|| {
        WebAuthnError::AuthenticatorData(
            "a registration must carry attested credential data (AT flag \
             clear)"
                .into(),
        )
    })?;

    let algorithm =
        Algorithm::from_cose(cose_algorithm(attested.public_key)?)?;
    let public_key =
        CredentialPublicKey::from_cose(attested.public_key, algorithm)?;
    check_statement(
        &object,
        &public_key,
        &signed_message(&object.auth_data, client_data_json),
    )?;
    Ok(RegisteredCredential {
        credential_id: attested.credential_id.to_vec(),
        public_key: attested.public_key.to_vec(),
        algorithm,
        backup_eligible: data.flags.backup_eligible(),
        backed_up: data.flags.backup_state(),
        user_verified: data.flags.user_verified(),
        sign_count: data.sign_count,
        aaguid: attested.aaguid,
        attestation_format: object.format,
    })
}

fn invalid(reason: impl Into<String>) -> WebAuthnError {
    WebAuthnError::Attestation(reason.into())
}

/// The three members of an attestation object.
struct AttestationObject {
    format: String,
    statement: Vec<(String, Value)>,
    auth_data: Vec<u8>,
}

impl AttestationObject {
    fn parse(bytes: &[u8]) -> Result<Self, WebAuthnError> {
        let mut reader = bytes;
        let value: Value = ciborium::de::from_reader(&mut reader)
            .map_err(|error| invalid(format!("not CBOR: {error}")))?;
        if !reader.is_empty() {
            return Err(invalid(format!(
                "{} bytes follow the CBOR map",
                reader.len()
            )));
        }
        let entries = text_map(value, "the attestation object")?;
        let mut format = None;
        let mut statement = None;
        let mut auth_data = None;
        for (key, value) in entries {
            match (key.as_str(), value) {
                ("fmt", Value::Text(text)) => format = Some(text),
                ("attStmt", value) => {
                    statement = Some(text_map(value, "attStmt")?);
                }
                ("authData", Value::Bytes(bytes)) => auth_data = Some(bytes),
                (key, _) => {
                    return Err(invalid(format!(
                        "unexpected member {key:?} or member of the wrong \
                         type"
                    )));
                }
            }
        }
        Ok(Self {
            format: format.ok_or_else(|| invalid("fmt is missing"))?,
            statement: statement
                .ok_or_else(|| invalid("attStmt is missing"))?,
            auth_data: auth_data
                .ok_or_else(|| invalid("authData is missing"))?,
        })
    }
}

/// Takes a CBOR map whose keys are distinct text strings.
fn text_map(
    value: Value,
    what: &str,
) -> Result<Vec<(String, Value)>, WebAuthnError> {
    let Value::Map(entries) = value else {
        return Err(invalid(format!("{what} is not a CBOR map")));
    };
    let mut map: Vec<(String, Value)> = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let Value::Text(key) = key else {
            return Err(invalid(format!("{what} has a key that is not text")));
        };
        if map.iter().any(|(seen, _)| *seen == key) {
            return Err(invalid(format!("{what} repeats the key {key:?}")));
        }
        map.push((key, value));
    }
    Ok(map)
}

/// Checks the attestation statement for its format.
fn check_statement(
    object: &AttestationObject,
    public_key: &CredentialPublicKey,
    signed: &[u8],
) -> Result<(), WebAuthnError> {
    match object.format.as_str() {
        "none" => {
            if !object.statement.is_empty() {
                return Err(invalid(
                    "attestation \"none\" must have an empty attStmt",
                ));
            }
            Ok(())
        }
        "packed" => check_packed(&object.statement, public_key, signed),
        other => Err(WebAuthnError::UnsupportedAttestationFormat(
            other.to_owned(),
        )),
    }
}

fn check_packed(
    statement: &[(String, Value)],
    public_key: &CredentialPublicKey,
    signed: &[u8],
) -> Result<(), WebAuthnError> {
    let mut alg = None;
    let mut sig = None;
    let mut chain = false;
    for (key, value) in statement {
        match (key.as_str(), value) {
            ("alg", Value::Integer(number)) => {
                alg = i64::try_from(*number).ok();
            }
            ("sig", Value::Bytes(bytes)) => sig = Some(bytes.as_slice()),
            ("x5c", Value::Array(certificates))
                if !certificates.is_empty()
                    && certificates
                        .iter()
                        .all(|c| matches!(c, Value::Bytes(_))) =>
            {
                chain = true;
            }
            (key, _) => {
                return Err(invalid(format!(
                    "packed attStmt has an unexpected member {key:?} or a \
                     member of the wrong type"
                )));
            }
        }
    }
    let alg = alg.ok_or_else(|| invalid("packed attStmt has no alg"))?;
    let sig = sig.ok_or_else(|| invalid("packed attStmt has no sig"))?;
    if chain {
        return Ok(());
    }
    if alg != public_key.algorithm().cose() {
        return Err(invalid(format!(
            "packed self-attestation uses alg {alg}, but the credential key \
             is {}",
            public_key.algorithm()
        )));
    }
    public_key
        .verify(signed, sig)
        .map_err(|error| invalid(format!("packed self-attestation: {error}")))
}
