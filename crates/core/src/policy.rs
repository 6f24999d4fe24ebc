//! The approval policy: who may approve, how many must, and for how long
//! a proposal stays open.
//!
//! The policy is read from a root-owned TOML file. Its SHA-256 over the
//! exact file bytes goes into every statement, so an approval made under
//! one policy never counts under another.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use ssh_key::PublicKey;

use crate::Sha256Digest;
use crate::webauthn::{
    ExpectedAssertion, ExpectedRegistration, WebAuthnCredential, WebAuthnError,
};

/// Default time a proposal stays open for approval: one day.
pub const DEFAULT_PROPOSAL_LIFETIME_SECS: u64 = 24 * 60 * 60;

/// A validated approver name: 1 to 64 characters of `a-z`, `0-9`, `-`
/// and `_`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApproverName(String);

impl ApproverName {
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let valid = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && text.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'_'
            });
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(PolicyError::InvalidApproverName(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApproverName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key with which one approver signs.
#[derive(Debug, Clone)]
pub enum ApproverKey {
    /// An OpenSSH public key; its signatures are SSHSIG made with
    /// `ssh-keygen -Y sign`.
    Ssh(PublicKey),
    /// A WebAuthn credential (passkey or security key); its signatures
    /// are assertions made in the browser over
    /// [`approval_challenge`](crate::webauthn::approval_challenge).
    WebAuthn(WebAuthnCredential),
}

impl ApproverKey {
    /// Names the kind of key as votes do: `ssh` or `webauthn`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApproverKey::Ssh(_) => "ssh",
            ApproverKey::WebAuthn(_) => "webauthn",
        }
    }
}

/// The relying party that WebAuthn assertions must be made for: the
/// policy's `[webauthn]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebAuthnSettings {
    /// The relying party id, a domain such as `countersign.example.org`.
    pub rp_id: String,
    /// The origins of the approval pages, each `scheme://host[:port]`
    /// exactly as browsers write it.
    pub origins: Vec<String>,
}

impl WebAuthnSettings {
    /// Returns the values an assertion over `challenge` must contain.
    pub fn expected_assertion(
        &self,
        challenge: [u8; 32],
        require_user_verification: bool,
    ) -> ExpectedAssertion<'_> {
        ExpectedAssertion {
            rp_id: &self.rp_id,
            origins: &self.origins,
            challenge,
            require_user_verification,
        }
    }

    /// Returns the values a registration response over `challenge` must
    /// contain.
    pub fn expected_registration(
        &self,
        challenge: [u8; 32],
    ) -> ExpectedRegistration<'_> {
        ExpectedRegistration {
            rp_id: &self.rp_id,
            origins: &self.origins,
            challenge,
        }
    }
}

/// One device with one key.
#[derive(Debug, Clone)]
pub struct Approver {
    pub name: ApproverName,
    pub key: ApproverKey,
    /// Whether a security-key signature or a WebAuthn assertion must carry
    /// the user-verified flag (PIN or biometric) in addition to user
    /// presence.
    pub user_verification: bool,
}

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub host: String,
    pub threshold: usize,
    pub required: BTreeSet<ApproverName>,
    /// Whether one signed rejection ends a proposal.
    pub veto: bool,
    pub proposal_lifetime_secs: u64,
    pub approvers: BTreeMap<ApproverName, Approver>,
    /// The WebAuthn relying party; present whenever an approver has a
    /// WebAuthn credential.
    pub webauthn: Option<WebAuthnSettings>,
    /// SHA-256 of the file bytes the policy was loaded from.
    pub sha256: Sha256Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy is not valid TOML of the expected shape: {0}")]
    Malformed(#[from] toml::de::Error),
    #[error(
        "invalid approver name {0:?}: use 1 to 64 characters of a-z, 0-9, - and _"
    )]
    InvalidApproverName(String),
    #[error("approver {name}: invalid SSH public key: {error}")]
    InvalidKey { name: String, error: String },
    #[error(
        "approver {0}: no key given (set `ssh = \"ssh-ed25519 AAAA…\"` or `webauthn = {{ credential_id = …, public_key = …, algorithm = … }}`)"
    )]
    MissingKey(String),
    #[error(
        "approver {0}: both ssh and webauthn are set; give each approver exactly one key and add a second approver for the other device"
    )]
    TwoKeys(String),
    #[error("approver {name}: invalid webauthn credential: {error}")]
    InvalidWebAuthnCredential { name: String, error: WebAuthnError },
    #[error(
        "approvers {first} and {second} have the same WebAuthn credential id; each device must have its own credential"
    )]
    DuplicateCredentialId { first: String, second: String },
    #[error(
        "approver {0} has a webauthn credential, but the policy has no [webauthn] table; add one with rp_id and origins"
    )]
    MissingWebAuthnSettings(String),
    #[error("invalid [webauthn] table: {0}")]
    InvalidWebAuthnSettings(String),
    #[error(
        "approvers {first} and {second} have the same key; each device must have its own"
    )]
    DuplicateKey { first: String, second: String },
    #[error(
        "approver {0}: user_verification = true needs a security key (sk-ssh-ed25519@openssh.com or sk-ecdsa-sha2-nistp256@openssh.com) or a webauthn credential, because a plain SSH key signs without a PIN or fingerprint; remove user_verification or enrol a security key"
    )]
    UserVerificationWithoutSecurityKey(String),
    #[error("the policy lists no approvers")]
    NoApprovers,
    #[error(
        "threshold {threshold} is out of range: it must be between 1 and the number of approvers ({approvers})"
    )]
    ThresholdOutOfRange { threshold: usize, approvers: usize },
    #[error("required approver {0:?} is not listed under [approvers]")]
    UnknownRequired(String),
    #[error(
        "{required} approvers are required but the threshold is only {threshold}; raise the threshold"
    )]
    TooManyRequired { required: usize, threshold: usize },
    #[error("the host name is empty")]
    EmptyHost,
    #[error("proposal_lifetime_secs must be at least 60 (got {0})")]
    LifetimeTooShort(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    host: String,
    threshold: usize,
    #[serde(default)]
    required: Vec<String>,
    #[serde(default = "default_veto")]
    veto: bool,
    #[serde(default = "default_lifetime")]
    proposal_lifetime_secs: u64,
    approvers: BTreeMap<String, ApproverEntry>,
    webauthn: Option<WebAuthnSettingsEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproverEntry {
    ssh: Option<String>,
    webauthn: Option<WebAuthnEntry>,
    #[serde(default)]
    user_verification: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebAuthnEntry {
    credential_id: String,
    public_key: String,
    algorithm: i64,
    backup_eligible: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebAuthnSettingsEntry {
    rp_id: String,
    origins: Vec<String>,
}

fn default_veto() -> bool {
    true
}

fn default_lifetime() -> u64 {
    DEFAULT_PROPOSAL_LIFETIME_SECS
}

impl Policy {
    /// Parses and validates a policy file's bytes.
    pub fn from_toml(bytes: &[u8]) -> Result<Self, PolicyError> {
        let sha256 = Sha256Digest::of(bytes);
        let text = String::from_utf8_lossy(bytes);
        let file: PolicyFile = toml::from_str(&text)?;
        if file.host.is_empty() {
            return Err(PolicyError::EmptyHost);
        }
        if file.proposal_lifetime_secs < 60 {
            return Err(PolicyError::LifetimeTooShort(
                file.proposal_lifetime_secs,
            ));
        }
        let webauthn =
            file.webauthn.map(parse_webauthn_settings).transpose()?;
        let approvers = parse_approvers(file.approvers)?;
        if webauthn.is_none()
            && let Some(approver) = approvers
                .values()
                .find(|approver| approver.key.kind() == "webauthn")
        {
            return Err(PolicyError::MissingWebAuthnSettings(
                approver.name.0.clone(),
            ));
        }
        if approvers.is_empty() {
            return Err(PolicyError::NoApprovers);
        }
        if file.threshold == 0 || file.threshold > approvers.len() {
            return Err(PolicyError::ThresholdOutOfRange {
                threshold: file.threshold,
                approvers: approvers.len(),
            });
        }
        let mut required = BTreeSet::new();
        for name in file.required {
            let name = ApproverName::parse(&name)?;
            if !approvers.contains_key(&name) {
                return Err(PolicyError::UnknownRequired(name.0));
            }
            required.insert(name);
        }
        if required.len() > file.threshold {
            return Err(PolicyError::TooManyRequired {
                required: required.len(),
                threshold: file.threshold,
            });
        }
        Ok(Self {
            host: file.host,
            threshold: file.threshold,
            required,
            veto: file.veto,
            proposal_lifetime_secs: file.proposal_lifetime_secs,
            approvers,
            webauthn,
            sha256,
        })
    }

    /// Finds the approver whose SSH key is `key`, ignoring comments.
    pub fn approver_by_ssh_key(&self, key: &PublicKey) -> Option<&Approver> {
        self.approvers
            .values()
            .find(|approver| match &approver.key {
                ApproverKey::Ssh(own) => own.key_data() == key.key_data(),
                ApproverKey::WebAuthn(_) => false,
            })
    }

    /// Finds the approver whose WebAuthn credential has id
    /// `credential_id`.
    pub fn approver_by_credential_id(
        &self,
        credential_id: &[u8],
    ) -> Option<&Approver> {
        self.approvers
            .values()
            .find(|approver| match &approver.key {
                ApproverKey::WebAuthn(credential) => {
                    credential.credential_id == credential_id
                }
                ApproverKey::Ssh(_) => false,
            })
    }

    /// Checks whether the distinct approvers in `names` meet the policy.
    pub fn check_quorum(
        &self,
        names: &BTreeSet<ApproverName>,
    ) -> Result<(), QuorumShortfall> {
        let missing_required: Vec<_> =
            self.required.difference(names).cloned().collect();
        let counted = names
            .iter()
            .filter(|name| self.approvers.contains_key(*name))
            .count();
        if counted >= self.threshold && missing_required.is_empty() {
            Ok(())
        } else {
            Err(QuorumShortfall {
                have: counted,
                threshold: self.threshold,
                missing_required,
            })
        }
    }
}

/// How far a set of approvals is from the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{have} of {threshold} approvals{}", missing_text(.missing_required))]
pub struct QuorumShortfall {
    pub have: usize,
    pub threshold: usize,
    pub missing_required: Vec<ApproverName>,
}

fn missing_text(missing: &[ApproverName]) -> String {
    if missing.is_empty() {
        return String::new();
    }
    let names: Vec<_> = missing.iter().map(ApproverName::as_str).collect();
    format!("; still required: {}", names.join(", "))
}

fn parse_approvers(
    entries: BTreeMap<String, ApproverEntry>,
) -> Result<BTreeMap<ApproverName, Approver>, PolicyError> {
    let mut approvers: BTreeMap<ApproverName, Approver> = BTreeMap::new();
    for (name, entry) in entries {
        let name = ApproverName::parse(&name)?;
        let key = match (entry.ssh, entry.webauthn) {
            (Some(text), None) => parse_ssh_key(&name, &text)?,
            (None, Some(webauthn)) => parse_webauthn_key(&name, &webauthn)?,
            (Some(_), Some(_)) => return Err(PolicyError::TwoKeys(name.0)),
            (None, None) => return Err(PolicyError::MissingKey(name.0)),
        };
        let plain_ssh = match &key {
            ApproverKey::Ssh(ssh) => !matches!(
                ssh.algorithm(),
                ssh_key::Algorithm::SkEd25519
                    | ssh_key::Algorithm::SkEcdsaSha2NistP256
            ),
            ApproverKey::WebAuthn(_) => false,
        };
        if entry.user_verification && plain_ssh {
            return Err(PolicyError::UserVerificationWithoutSecurityKey(
                name.0,
            ));
        }
        for other in approvers.values() {
            check_distinct(other, &name, &key)?;
        }
        approvers.insert(
            name.clone(),
            Approver {
                name,
                key,
                user_verification: entry.user_verification,
            },
        );
    }
    Ok(approvers)
}

fn parse_ssh_key(
    name: &ApproverName,
    text: &str,
) -> Result<ApproverKey, PolicyError> {
    let key = PublicKey::from_openssh(text.trim()).map_err(|error| {
        PolicyError::InvalidKey {
            name: name.0.clone(),
            error: error.to_string(),
        }
    })?;
    Ok(ApproverKey::Ssh(key))
}

fn parse_webauthn_key(
    name: &ApproverName,
    entry: &WebAuthnEntry,
) -> Result<ApproverKey, PolicyError> {
    let credential = WebAuthnCredential::from_policy_fields(
        &entry.credential_id,
        &entry.public_key,
        entry.algorithm,
        entry.backup_eligible,
    )
    .map_err(|error| PolicyError::InvalidWebAuthnCredential {
        name: name.0.clone(),
        error,
    })?;
    Ok(ApproverKey::WebAuthn(credential))
}

/// Rejects a key that `other` already has: the same SSH key, the same
/// WebAuthn credential id, or the same WebAuthn public key.
fn check_distinct(
    other: &Approver,
    name: &ApproverName,
    key: &ApproverKey,
) -> Result<(), PolicyError> {
    let duplicate_key = || PolicyError::DuplicateKey {
        first: other.name.0.clone(),
        second: name.0.clone(),
    };
    match (&other.key, key) {
        (ApproverKey::Ssh(a), ApproverKey::Ssh(b))
            if a.key_data() == b.key_data() =>
        {
            Err(duplicate_key())
        }
        (ApproverKey::WebAuthn(a), ApproverKey::WebAuthn(b))
            if a.credential_id == b.credential_id =>
        {
            Err(PolicyError::DuplicateCredentialId {
                first: other.name.0.clone(),
                second: name.0.clone(),
            })
        }
        (ApproverKey::WebAuthn(a), ApproverKey::WebAuthn(b))
            if a.public_key.key_bytes() == b.public_key.key_bytes() =>
        {
            Err(duplicate_key())
        }
        _ => Ok(()),
    }
}

fn parse_webauthn_settings(
    entry: WebAuthnSettingsEntry,
) -> Result<WebAuthnSettings, PolicyError> {
    let invalid = PolicyError::InvalidWebAuthnSettings;
    check_rp_id(&entry.rp_id).map_err(invalid)?;
    if entry.origins.is_empty() {
        return Err(invalid(
            "origins is empty; list the address of the approval page, \
             such as \"https://countersign.example.org\""
                .into(),
        ));
    }
    for origin in &entry.origins {
        check_origin(origin, &entry.rp_id).map_err(invalid)?;
    }
    Ok(WebAuthnSettings {
        rp_id: entry.rp_id,
        origins: entry.origins,
    })
}

/// Requires a lower-case domain name, as browsers compare relying party
/// ids: dot-separated labels of a-z, 0-9 and inner hyphens.
fn check_rp_id(rp_id: &str) -> Result<(), String> {
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
            })
    };
    if rp_id.is_empty()
        || rp_id.len() > 253
        || !rp_id.split('.').all(valid_label)
    {
        return Err(format!(
            "rp_id {rp_id:?} is not a lower-case domain name; use the host \
             name of the approval page without scheme or port, such as \
             \"countersign.example.org\""
        ));
    }
    Ok(())
}

/// Requires an origin in the exact form browsers write: `https://` (or
/// `http://` for localhost only), a lower-case host that is the relying
/// party id or a subdomain of it, an optional non-default port, and
/// nothing after it.
fn check_origin(origin: &str, rp_id: &str) -> Result<(), String> {
    let fail = |reason: &str| {
        Err(format!(
            "origin {origin:?} {reason}; write it as the browser does, such \
             as \"https://{rp_id}\" or \"https://{rp_id}:8443\""
        ))
    };
    let (scheme, rest) = match origin.split_once("://") {
        Some(("https", rest)) => ("https", rest),
        Some(("http", rest)) => ("http", rest),
        _ => return fail("does not start with https:// or http://"),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    };
    if host.is_empty() || check_rp_id(host).is_err() {
        return fail("has no lower-case host name or has a path");
    }
    if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
        return fail(&format!(
            "has host {host:?}, which is neither the rp_id nor a subdomain \
             of it"
        ));
    }
    if let Some(port) = port {
        let number = port
            .parse::<u16>()
            .ok()
            .filter(|n| *n != 0 && port == n.to_string());
        match (scheme, number) {
            (_, None) => return fail("has an invalid port"),
            ("https", Some(443)) | ("http", Some(80)) => {
                return fail("names the default port, which browsers omit");
            }
            _ => {}
        }
    }
    let local = host == "localhost" || host.ends_with(".localhost");
    if scheme == "http" && !local {
        return fail(
            "uses http, which browsers allow for WebAuthn only on \
                     localhost",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMiTUzUf/2BiGAixrGJ759SOZwWVqT/l+KkIJoB2sPJw phone";
    const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID25SjFd7x4IG/P0YSZiVOlykfWonCT389LAONRh+wui laptop";

    fn policy_text(threshold: usize, required: &str, key_b: &str) -> String {
        format!(
            "host = \"web1\"\nthreshold = {threshold}\nrequired = [{required}]\n\
             [approvers.phone]\nssh = \"{KEY_A}\"\n\
             [approvers.laptop]\nssh = \"{key_b}\"\n"
        )
    }

    #[test]
    fn policy_loads_and_hashes_bytes() {
        let text = policy_text(2, "\"laptop\"", KEY_B);
        let policy = Policy::from_toml(text.as_bytes()).unwrap();
        assert_eq!(policy.threshold, 2);
        assert!(policy.veto);
        assert_eq!(policy.sha256, Sha256Digest::of(text.as_bytes()));
    }

    #[test]
    fn policy_rejects_duplicate_key() {
        let text = policy_text(1, "", KEY_A);
        let error = Policy::from_toml(text.as_bytes()).unwrap_err();
        assert!(matches!(error, PolicyError::DuplicateKey { .. }), "{error}");
    }

    #[test]
    fn policy_rejects_threshold_out_of_range() {
        for threshold in [0, 3] {
            let text = policy_text(threshold, "", KEY_B);
            let error = Policy::from_toml(text.as_bytes()).unwrap_err();
            assert!(
                matches!(error, PolicyError::ThresholdOutOfRange { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn policy_rejects_unknown_required() {
        let text = policy_text(1, "\"tablet\"", KEY_B);
        let error = Policy::from_toml(text.as_bytes()).unwrap_err();
        assert!(matches!(error, PolicyError::UnknownRequired(_)), "{error}");
    }

    #[test]
    fn policy_rejects_unknown_field() {
        let text = policy_text(1, "", KEY_B) + "thresold = 2\n";
        assert!(Policy::from_toml(text.as_bytes()).is_err());
    }

    mod webauthn {
        use super::*;
        use crate::webauthn::testing::TestAuthenticator;
        use crate::webauthn::{Algorithm, WebAuthnError, encode_base64url};

        const SETTINGS: &str = "[webauthn]\nrp_id = \"countersign.example.org\"\n\
             origins = [\"https://countersign.example.org\"]\n";

        fn device(seed: &[u8]) -> TestAuthenticator {
            TestAuthenticator::new(
                Algorithm::Es256,
                seed,
                "countersign.example.org",
                "https://countersign.example.org",
            )
        }

        fn policy_with(settings: &str, approvers: &str) -> String {
            format!(
                "host = \"web1\"\nthreshold = 1\n{settings}\
                 [approvers.laptop]\nssh = \"{KEY_B}\"\n{approvers}"
            )
        }

        fn load(text: &str) -> Result<Policy, PolicyError> {
            Policy::from_toml(text.as_bytes())
        }

        #[test]
        fn webauthn_approver_loads() {
            let phone = device(b"phone");
            let text = policy_with(
                SETTINGS,
                &format!(
                    "[approvers.phone]\nwebauthn = {}\n\
                     user_verification = true\n",
                    phone.policy_entry()
                ),
            );
            let policy = load(&text).unwrap();
            let settings = policy.webauthn.as_ref().unwrap();
            assert_eq!(settings.rp_id, "countersign.example.org");
            let approver = policy
                .approver_by_credential_id(&phone.credential_id)
                .unwrap();
            assert_eq!(approver.name.as_str(), "phone");
            assert!(approver.user_verification);
            assert_eq!(approver.key.kind(), "webauthn");
            assert!(policy.approver_by_credential_id(b"other").is_none());
        }

        #[test]
        fn user_verification_needs_security_key() {
            let text = policy_with(
                "",
                &format!(
                    "[approvers.phone]\nssh = \"{KEY_A}\"\n\
                     user_verification = true\n"
                ),
            );
            let error = load(&text).unwrap_err();
            assert!(
                matches!(
                    &error,
                    PolicyError::UserVerificationWithoutSecurityKey(name)
                        if name == "phone"
                ),
                "{error}"
            );
            assert!(error.to_string().contains("security key"), "{error}");
        }

        #[test]
        fn webauthn_needs_settings_table() {
            let phone = device(b"phone");
            let text = policy_with(
                "",
                &format!(
                    "[approvers.phone]\nwebauthn = {}\n",
                    phone.policy_entry()
                ),
            );
            let error = load(&text).unwrap_err();
            assert!(
                matches!(error, PolicyError::MissingWebAuthnSettings(ref name) if name == "phone"),
                "{error}"
            );
        }

        #[test]
        fn approver_with_two_keys_fails() {
            let phone = device(b"phone");
            let text = policy_with(
                SETTINGS,
                &format!(
                    "[approvers.phone]\nssh = \"{KEY_A}\"\nwebauthn = {}\n",
                    phone.policy_entry()
                ),
            );
            let error = load(&text).unwrap_err();
            assert!(matches!(error, PolicyError::TwoKeys(_)), "{error}");
        }

        #[test]
        fn duplicate_credential_id_fails() {
            let phone = device(b"phone");
            let mut tablet = device(b"tablet");
            tablet.credential_id = phone.credential_id.clone();
            let text = policy_with(
                SETTINGS,
                &format!(
                    "[approvers.phone]\nwebauthn = {}\n\
                     [approvers.tablet]\nwebauthn = {}\n",
                    phone.policy_entry(),
                    tablet.policy_entry()
                ),
            );
            let error = load(&text).unwrap_err();
            assert!(
                matches!(error, PolicyError::DuplicateCredentialId { .. }),
                "{error}"
            );
        }

        #[test]
        fn duplicate_webauthn_key_fails() {
            let phone = device(b"phone");
            let mut copy = device(b"phone");
            copy.credential_id = b"another id".to_vec();
            let text = policy_with(
                SETTINGS,
                &format!(
                    "[approvers.phone]\nwebauthn = {}\n\
                     [approvers.tablet]\nwebauthn = {}\n",
                    phone.policy_entry(),
                    copy.policy_entry()
                ),
            );
            let error = load(&text).unwrap_err();
            assert!(
                matches!(error, PolicyError::DuplicateKey { .. }),
                "{error}"
            );
        }

        #[test]
        fn invalid_credential_fields_fail() {
            let phone = device(b"phone");
            let id = encode_base64url(&phone.credential_id);
            let key = encode_base64url(&phone.cose_public_key());
            let entries = [
                (
                    format!(
                        "{{ credential_id = \"{id}=\", public_key = \"{key}\", algorithm = -7 }}"
                    ),
                    WebAuthnError::Encoding {
                        field: "credential_id",
                    },
                ),
                (
                    format!(
                        "{{ credential_id = \"{id}\", public_key = \"{key}\", algorithm = -257 }}"
                    ),
                    WebAuthnError::UnsupportedAlgorithm(-257),
                ),
            ];
            for (entry, expected) in entries {
                let text = policy_with(
                    SETTINGS,
                    &format!("[approvers.phone]\nwebauthn = {entry}\n"),
                );
                let error = load(&text).unwrap_err();
                let PolicyError::InvalidWebAuthnCredential { name, error } =
                    error
                else {
                    panic!("{entry}: {error}");
                };
                assert_eq!(name, "phone");
                assert_eq!(error, expected, "{entry}");
            }
            let mismatch = format!(
                "{{ credential_id = \"{id}\", public_key = \"{key}\", algorithm = -8 }}"
            );
            let text = policy_with(
                SETTINGS,
                &format!("[approvers.phone]\nwebauthn = {mismatch}\n"),
            );
            let error = load(&text).unwrap_err();
            assert!(
                matches!(
                    error,
                    PolicyError::InvalidWebAuthnCredential {
                        error: WebAuthnError::InvalidKey(_),
                        ..
                    }
                ),
                "{error}"
            );
            let unknown = format!(
                "{{ credential_id = \"{id}\", public_key = \"{key}\", algorithm = -7, aaguid = \"x\" }}"
            );
            let text = policy_with(
                SETTINGS,
                &format!("[approvers.phone]\nwebauthn = {unknown}\n"),
            );
            assert!(matches!(
                load(&text).unwrap_err(),
                PolicyError::Malformed(_)
            ));
        }

        fn settings(rp_id: &str, origin: &str) -> String {
            format!(
                "[webauthn]\nrp_id = \"{rp_id}\"\norigins = [\"{origin}\"]\n"
            )
        }

        #[test]
        fn settings_accept_browser_origins() {
            let cases = [
                ("countersign.example.org", "https://countersign.example.org"),
                (
                    "countersign.example.org",
                    "https://countersign.example.org:8443",
                ),
                ("example.org", "https://approve.example.org"),
                ("localhost", "http://localhost:8470"),
                ("localhost", "https://localhost"),
            ];
            for (rp_id, origin) in cases {
                let text = policy_with(&settings(rp_id, origin), "");
                load(&text)
                    .unwrap_or_else(|error| panic!("{origin}: {error}"));
            }
        }

        #[test]
        fn settings_reject_other_origin_forms() {
            let rp_id = "countersign.example.org";
            let origins = [
                "https://countersign.example.org/",
                "https://countersign.example.org/approve",
                "https://countersign.example.org:443",
                "http://countersign.example.org:80",
                "https://countersign.example.org:0",
                "https://countersign.example.org:08443",
                "https://countersign.example.org:99999",
                "http://countersign.example.org",
                "https://Countersign.example.org",
                "https://evil-countersign.example.org",
                "https://countersign.example.org.evil.net",
                "https://example.org",
                "https://user@countersign.example.org",
                "countersign.example.org",
                "ftp://countersign.example.org",
                "",
            ];
            for origin in origins {
                let text = policy_with(&settings(rp_id, origin), "");
                let error = load(&text).unwrap_err();
                assert!(
                    matches!(error, PolicyError::InvalidWebAuthnSettings(_)),
                    "{origin}: {error}"
                );
            }
        }

        #[test]
        fn settings_reject_invalid_rp_id() {
            for rp_id in [
                "",
                "https://countersign.example.org",
                "Example.org",
                "example.org:443",
                "a..b",
                ".example.org",
                "-a.example.org",
            ] {
                let text =
                    policy_with(&settings(rp_id, "https://example.org"), "");
                let error = load(&text).unwrap_err();
                assert!(
                    matches!(error, PolicyError::InvalidWebAuthnSettings(_)),
                    "{rp_id}: {error}"
                );
            }
            let text = policy_with(
                "[webauthn]\nrp_id = \"example.org\"\norigins = []\n",
                "",
            );
            assert!(matches!(
                load(&text).unwrap_err(),
                PolicyError::InvalidWebAuthnSettings(_)
            ));
        }
    }

    #[test]
    fn quorum_needs_required_approver() {
        let text = policy_text(1, "\"laptop\"", KEY_B);
        let policy = Policy::from_toml(text.as_bytes()).unwrap();
        let phone = ApproverName::parse("phone").unwrap();
        let laptop = ApproverName::parse("laptop").unwrap();
        let shortfall =
            policy.check_quorum(&BTreeSet::from([phone])).unwrap_err();
        assert_eq!(shortfall.missing_required, vec![laptop.clone()]);
        assert!(policy.check_quorum(&BTreeSet::from([laptop])).is_ok());
    }
}
