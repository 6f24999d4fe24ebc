//! The browser's `clientDataJSON`: ceremony type, challenge, origin and
//! the embedding members.

use serde::{Deserialize, Deserializer};

use super::{WebAuthnError, encode_base64url};

/// The ceremony a `clientDataJSON` claims to belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CeremonyType {
    /// `navigator.credentials.get()`: an assertion.
    Get,
    /// `navigator.credentials.create()`: a registration.
    Create,
}

impl CeremonyType {
    fn as_str(self) -> &'static str {
        match self {
            CeremonyType::Get => "webauthn.get",
            CeremonyType::Create => "webauthn.create",
        }
    }
}

/// The members countersign reads. Serde rejects a repeated member among
/// these; other members are ignored because browsers add their own (for
/// example Chrome's `other_keys_can_be_added_here`).
#[derive(Deserialize)]
struct CollectedClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
    #[serde(rename = "crossOrigin", default)]
    cross_origin: Member,
    #[serde(rename = "topOrigin", default)]
    top_origin: Member,
}

/// A member that may be absent. Unlike `Option`, it distinguishes an
/// absent member from one whose value is `null`.
#[derive(Default)]
struct Member(Option<serde_json::Value>);

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(|v| Member(Some(v)))
    }
}

/// Parses `bytes` as `clientDataJSON` and checks the type, challenge,
/// origin and embedding members.
pub(super) fn check_client_data(
    bytes: &[u8],
    ceremony: CeremonyType,
    challenge: &[u8],
    origins: &[String],
) -> Result<(), WebAuthnError> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        WebAuthnError::ClientData("it is not valid UTF-8".into())
    })?;
    let data: CollectedClientData = serde_json::from_str(text)
        .map_err(|error| WebAuthnError::ClientData(error.to_string()))?;
    if data.kind != ceremony.as_str() {
        return Err(WebAuthnError::WrongType {
            found: data.kind,
            expected: ceremony.as_str(),
        });
    }
    let expected_challenge = encode_base64url(challenge);
    if data.challenge != expected_challenge {
        return Err(WebAuthnError::WrongChallenge {
            found: data.challenge,
            expected: expected_challenge,
        });
    }
    if !origins.contains(&data.origin) {
        return Err(WebAuthnError::WrongOrigin {
            found: data.origin,
            expected: origins.to_vec(),
        });
    }
    if let Some(top_origin) = data.top_origin.0 {
        return Err(WebAuthnError::TopOrigin(top_origin.to_string()));
    }
    match data.cross_origin.0 {
        None | Some(serde_json::Value::Bool(false)) => Ok(()),
        Some(other) => Err(WebAuthnError::CrossOrigin(other.to_string())),
    }
}
