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
}

/// One device with one key.
#[derive(Debug, Clone)]
pub struct Approver {
    pub name: ApproverName,
    pub key: ApproverKey,
    /// Whether a security-key signature must carry the user-verified flag
    /// (PIN or biometric) in addition to user presence.
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
    #[error("approver {0}: no key given (set `ssh = \"ssh-ed25519 AAAA…\"`)")]
    MissingKey(String),
    #[error(
        "approvers {first} and {second} have the same key; each device must have its own"
    )]
    DuplicateKey { first: String, second: String },
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproverEntry {
    ssh: Option<String>,
    #[serde(default)]
    user_verification: bool,
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
        let approvers = parse_approvers(file.approvers)?;
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
            sha256,
        })
    }

    /// Finds the approver whose SSH key is `key`, ignoring comments.
    pub fn approver_by_ssh_key(&self, key: &PublicKey) -> Option<&Approver> {
        self.approvers
            .values()
            .find(|approver| match &approver.key {
                ApproverKey::Ssh(own) => own.key_data() == key.key_data(),
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
        let text = entry
            .ssh
            .ok_or_else(|| PolicyError::MissingKey(name.0.clone()))?;
        let key = PublicKey::from_openssh(text.trim()).map_err(|error| {
            PolicyError::InvalidKey {
                name: name.0.clone(),
                error: error.to_string(),
            }
        })?;
        for other in approvers.values() {
            let ApproverKey::Ssh(other_key) = &other.key;
            if other_key.key_data() == key.key_data() {
                return Err(PolicyError::DuplicateKey {
                    first: other.name.0.clone(),
                    second: name.0,
                });
            }
        }
        approvers.insert(
            name.clone(),
            Approver {
                name,
                key: ApproverKey::Ssh(key),
                user_verification: entry.user_verification,
            },
        );
    }
    Ok(approvers)
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
