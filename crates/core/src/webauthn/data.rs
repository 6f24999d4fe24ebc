//! The authenticator's `authenticatorData`: relying party hash, flags,
//! signature counter, attested credential data and extension outputs.

use std::collections::BTreeSet;
use std::fmt;

use ciborium::Value;
use sha2::{Digest, Sha256};

use super::{WebAuthnError, check_credential_id_length};

/// The flag byte of `authenticatorData`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuthenticatorFlags(pub u8);

impl AuthenticatorFlags {
    /// UP: a user touched or confirmed on the device.
    pub const USER_PRESENT: u8 = 0x01;
    /// UV: the device verified the user (PIN, biometric).
    pub const USER_VERIFIED: u8 = 0x04;
    /// BE: the credential may be synced to other devices.
    pub const BACKUP_ELIGIBLE: u8 = 0x08;
    /// BS: the credential is currently synced or backed up.
    pub const BACKUP_STATE: u8 = 0x10;
    /// AT: attested credential data follows the counter.
    pub const ATTESTED_CREDENTIAL_DATA: u8 = 0x40;
    /// ED: an extension output map ends the data.
    pub const EXTENSION_DATA: u8 = 0x80;

    pub fn user_present(self) -> bool {
        self.0 & Self::USER_PRESENT != 0
    }

    pub fn user_verified(self) -> bool {
        self.0 & Self::USER_VERIFIED != 0
    }

    pub fn backup_eligible(self) -> bool {
        self.0 & Self::BACKUP_ELIGIBLE != 0
    }

    pub fn backup_state(self) -> bool {
        self.0 & Self::BACKUP_STATE != 0
    }

    pub fn attested_credential_data(self) -> bool {
        self.0 & Self::ATTESTED_CREDENTIAL_DATA != 0
    }

    pub fn extension_data(self) -> bool {
        self.0 & Self::EXTENSION_DATA != 0
    }
}

impl fmt::Debug for AuthenticatorFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (self.user_present(), "UP"),
            (self.user_verified(), "UV"),
            (self.backup_eligible(), "BE"),
            (self.backup_state(), "BS"),
            (self.attested_credential_data(), "AT"),
            (self.extension_data(), "ED"),
        ];
        let set: Vec<_> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect();
        write!(f, "AuthenticatorFlags({:#04x}: {})", self.0, set.join("|"))
    }
}

/// The credential that a registration's `authenticatorData` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AttestedCredentialData<'a> {
    pub(super) aaguid: [u8; 16],
    pub(super) credential_id: &'a [u8],
    /// The COSE_Key bytes exactly as the authenticator wrote them.
    pub(super) public_key: &'a [u8],
}

/// Parsed `authenticatorData`. Parsing consumes every byte: whatever the
/// flags do not announce is an error.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AuthenticatorData<'a> {
    pub(super) rp_id_hash: [u8; 32],
    pub(super) flags: AuthenticatorFlags,
    pub(super) sign_count: u32,
    pub(super) attested: Option<AttestedCredentialData<'a>>,
    /// The extension output map, present exactly when ED is set.
    pub(super) extensions: Option<Value>,
}

/// Length of the fixed part: rpIdHash, flags and counter.
const FIXED_LENGTH: usize = 37;

fn invalid(reason: impl Into<String>) -> WebAuthnError {
    WebAuthnError::AuthenticatorData(reason.into())
}

impl<'a> AuthenticatorData<'a> {
    pub(super) fn parse(bytes: &'a [u8]) -> Result<Self, WebAuthnError> {
        if bytes.len() < FIXED_LENGTH {
            return Err(invalid(format!(
                "it is {} bytes, shorter than the minimum of {FIXED_LENGTH}",
                bytes.len()
            )));
        }
        let (fixed, mut rest) = bytes.split_at(FIXED_LENGTH);
        let rp_id_hash: [u8; 32] = fixed[..32].try_into().expect("32 bytes");
        let flags = AuthenticatorFlags(fixed[32]);
        let sign_count =
            u32::from_be_bytes(fixed[33..37].try_into().expect("4 bytes"));
        let attested = if flags.attested_credential_data() {
            Some(parse_attested(&mut rest)?)
        } else {
            None
        };
        let extensions = if flags.extension_data() {
            Some(parse_extensions(&mut rest)?)
        } else {
            None
        };
        if !rest.is_empty() {
            return Err(invalid(format!(
                "{} bytes follow the data that the flags announce",
                rest.len()
            )));
        }
        Ok(Self {
            rp_id_hash,
            flags,
            sign_count,
            attested,
            extensions,
        })
    }

    /// Requires `rpIdHash` to be SHA-256 of `rp_id`.
    pub(super) fn check_rp_id(
        &self,
        rp_id: &str,
    ) -> Result<(), WebAuthnError> {
        let expected: [u8; 32] = Sha256::digest(rp_id.as_bytes()).into();
        if self.rp_id_hash != expected {
            return Err(WebAuthnError::WrongRpIdHash {
                rp_id: rp_id.to_owned(),
            });
        }
        Ok(())
    }

    /// Requires user presence, user verification when asked, and
    /// consistent backup flags.
    pub(super) fn check_user(
        &self,
        require_user_verification: bool,
    ) -> Result<(), WebAuthnError> {
        if !self.flags.user_present() {
            return Err(WebAuthnError::UserNotPresent);
        }
        if require_user_verification && !self.flags.user_verified() {
            return Err(WebAuthnError::UserNotVerified);
        }
        if self.flags.backup_state() && !self.flags.backup_eligible() {
            return Err(WebAuthnError::BackupStateWithoutEligibility);
        }
        Ok(())
    }
}

/// Reads the AAGUID, the length-prefixed credential id and the COSE key
/// from the front of `rest`.
fn parse_attested<'a>(
    rest: &mut &'a [u8],
) -> Result<AttestedCredentialData<'a>, WebAuthnError> {
    if rest.len() < 18 {
        return Err(invalid(
            "the AT flag is set but the attested credential data is \
             truncated",
        ));
    }
    let (head, tail) = rest.split_at(18);
    let aaguid: [u8; 16] = head[..16].try_into().expect("16 bytes");
    let id_length = usize::from(u16::from_be_bytes([head[16], head[17]]));
    if tail.len() < id_length {
        return Err(invalid(format!(
            "the credential id length is {id_length} but only {} bytes \
             follow",
            tail.len()
        )));
    }
    let (credential_id, tail) = tail.split_at(id_length);
    check_credential_id_length(credential_id)?;
    let (public_key, tail) = split_cbor_item(tail).map_err(|reason| {
        invalid(format!("the credential public key is not CBOR: {reason}"))
    })?;
    *rest = tail;
    Ok(AttestedCredentialData {
        aaguid,
        credential_id,
        public_key,
    })
}

/// Reads the extension output map, a CBOR map with distinct text keys,
/// from the front of `rest`.
fn parse_extensions(rest: &mut &[u8]) -> Result<Value, WebAuthnError> {
    let (item, tail) = split_cbor_item(rest).map_err(|reason| {
        invalid(format!(
            "the ED flag is set but no extension map follows: {reason}"
        ))
    })?;
    let value: Value = ciborium::de::from_reader(item)
        .map_err(|error| invalid(format!("extension map: {error}")))?;
    let Value::Map(entries) = &value else {
        return Err(invalid("the extension data is not a CBOR map"));
    };
    let mut keys = BTreeSet::new();
    for (key, _) in entries {
        let Value::Text(key) = key else {
            return Err(invalid("an extension identifier is not text"));
        };
        if !keys.insert(key.as_str()) {
            return Err(invalid(format!(
                "extension {key:?} appears more than once"
            )));
        }
    }
    *rest = tail;
    Ok(value)
}

/// Splits one CBOR data item off the front of `bytes`.
pub(super) fn split_cbor_item(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let mut reader = bytes;
    let _: Value = ciborium::de::from_reader(&mut reader)
        .map_err(|error| error.to_string())?;
    let consumed = bytes.len() - reader.len();
    Ok(bytes.split_at(consumed))
}
