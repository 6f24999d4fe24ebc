//! The statement: the exact bytes that approvers sign.
//!
//! A statement names everything that a deployment would change, so a
//! signature over its bytes cannot be moved to another proposal, host,
//! target, base or policy. Verifiers check signatures over the raw bytes
//! first and parse them only afterwards, strictly: unknown fields,
//! duplicate fields and any encoding other than the canonical one are
//! errors, so two parties can never read one signed text differently.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Sha256Digest, StorePath};

/// The value of the `format` field of every statement this version writes.
pub const STATEMENT_FORMAT: &str = "countersign-statement-v1";

/// What `switch-to-configuration` does with the target, as NixOS defines
/// it: `switch` activates now and makes it the boot default, `boot` only
/// makes it the boot default, `test` activates without touching the boot
/// menu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Switch,
    Boot,
    Test,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Switch => "switch",
            Action::Boot => "boot",
            Action::Test => "test",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "switch" => Ok(Action::Switch),
            "boot" => Ok(Action::Boot),
            "test" => Ok(Action::Test),
            other => Err(format!(
                "invalid action {other:?}: expected switch, boot or test"
            )),
        }
    }
}

/// The configuration source that was fetched and built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The repository address from the server's configuration.
    pub repository: String,
    pub branch: String,
    /// The full commit id (40 hex digits for SHA-1 repositories).
    pub commit: String,
    /// The store path into which Nix fetched the commit.
    pub store_path: StorePath,
    /// The NAR hash of `store_path` in SRI form (`sha256-…`).
    pub nar_hash: String,
}

/// One candidate deployment, as signed by approvers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub format: String,
    pub host: String,
    /// Increases with every proposal of a host; the activator accepts each
    /// number at most once.
    pub proposal: u64,
    pub action: Action,
    /// The fetched and built configuration; `None` exactly when the
    /// statement is a rollback, whose target was built before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// For a rollback, the generation of the host's system profile
    /// (`<profile>-<N>-link`) whose system is the target. The activator
    /// checks that its own profile has this generation pointing at the
    /// target, in place of checking and evaluating a source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_generation: Option<u64>,
    /// The flake attribute of the toplevel, for example
    /// `nixosConfigurations.web1.config.system.build.toplevel`. A rollback
    /// is not evaluated, so there it only names the attribute that the
    /// server builds.
    pub attribute: String,
    /// The system that runs when the proposal is made.
    pub base: StorePath,
    /// The built toplevel that would run after activation.
    pub target: StorePath,
    pub policy_sha256: Sha256Digest,
    pub diff_sha256: Sha256Digest,
    /// Random hex from the server, so that two statements never coincide.
    pub nonce: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Seconds since the Unix epoch; no approval counts after it.
    pub expires: u64,
}

/// Why bytes are not a valid statement.
#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    #[error("the statement is not valid JSON of the expected shape: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "unsupported statement format {0:?} (expected {STATEMENT_FORMAT:?})"
    )]
    UnsupportedFormat(String),
    #[error(
        "the statement is not in canonical form (re-encoding changed its bytes)"
    )]
    NotCanonical,
    #[error("invalid statement: {0}")]
    Invalid(String),
}

impl Statement {
    /// Encodes the statement in its canonical form: compact JSON with the
    /// fields in declaration order and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes =
            serde_json::to_vec(self).expect("a statement always serialises");
        bytes.push(b'\n');
        bytes
    }

    /// Parses signed bytes strictly; see the module documentation.
    pub fn parse(bytes: &[u8]) -> Result<Self, StatementError> {
        let statement: Statement = serde_json::from_slice(bytes)?;
        if statement.format != STATEMENT_FORMAT {
            return Err(StatementError::UnsupportedFormat(statement.format));
        }
        if statement.to_bytes() != bytes {
            return Err(StatementError::NotCanonical);
        }
        statement.validate()?;
        Ok(statement)
    }

    fn validate(&self) -> Result<(), StatementError> {
        let invalid = |message: String| Err(StatementError::Invalid(message));
        if self.host.is_empty() {
            return invalid("the host name is empty".into());
        }
        if self.expires <= self.created {
            return invalid(format!(
                "expiry {} is not after creation {}",
                self.expires, self.created
            ));
        }
        let source = match (&self.source, self.rollback_generation) {
            (Some(source), None) => source,
            (None, Some(0)) => {
                return invalid(
                    "rollback generation 0 does not exist; profile \
                     generations start at 1"
                        .into(),
                );
            }
            (None, Some(_)) => return Ok(()),
            (Some(_), Some(_)) | (None, None) => {
                return invalid(
                    "a statement names either a source or a rollback \
                     generation, and exactly one of them"
                        .into(),
                );
            }
        };
        let commit = &source.commit;
        if !(commit.len() == 40 || commit.len() == 64)
            || !commit
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return invalid(format!("invalid commit id {commit:?}"));
        }
        if !source.nar_hash.starts_with("sha256-") {
            return invalid(format!(
                "invalid NAR hash {:?} (expected sha256-…)",
                source.nar_hash
            ));
        }
        Ok(())
    }

    /// The SHA-256 of the canonical bytes: the WebAuthn challenge and the
    /// short identifier shown to approvers.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of(&self.to_bytes())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Statement {
        Statement {
            format: STATEMENT_FORMAT.into(),
            host: "web1".into(),
            proposal: 7,
            action: Action::Switch,
            source: Some(Source {
                repository: "https://git.example/infra.git".into(),
                branch: "main".into(),
                commit: "a".repeat(40),
                store_path: StorePath::parse(
                    "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-source",
                )
                .unwrap(),
                nar_hash: "sha256-AAAA".into(),
            }),
            rollback_generation: None,
            attribute: "nixosConfigurations.web1.config.system.build.toplevel"
                .into(),
            base: StorePath::parse(
                "/nix/store/1123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1-1",
            )
            .unwrap(),
            target: StorePath::parse(
                "/nix/store/2123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1-2",
            )
            .unwrap(),
            policy_sha256: Sha256Digest::of(b"policy"),
            diff_sha256: Sha256Digest::of(b"diff"),
            nonce: "00112233445566778899aabbccddeeff".into(),
            created: 1_000,
            expires: 2_000,
        }
    }

    #[test]
    fn statement_round_trips() {
        let statement = sample();
        let parsed = Statement::parse(&statement.to_bytes()).unwrap();
        assert_eq!(parsed, statement);
    }

    #[test]
    fn parse_rejects_unknown_field() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let text = text.replacen("{", "{\"extra\":1,", 1);
        let error = Statement::parse(text.as_bytes()).unwrap_err();
        assert!(matches!(error, StatementError::Malformed(_)), "{error}");
    }

    #[test]
    fn parse_rejects_duplicate_field() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let text = text.replacen("{", "{\"proposal\":8,", 1);
        assert!(Statement::parse(text.as_bytes()).is_err());
    }

    #[test]
    fn parse_rejects_non_canonical_whitespace() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let text = text.replacen(",", ", ", 1);
        let error = Statement::parse(text.as_bytes()).unwrap_err();
        assert!(matches!(error, StatementError::NotCanonical), "{error}");
    }

    #[test]
    fn parse_rejects_other_format() {
        let mut statement = sample();
        statement.format = "countersign-statement-v0".into();
        let error = Statement::parse(&statement.to_bytes()).unwrap_err();
        assert!(matches!(error, StatementError::UnsupportedFormat(_)));
    }

    #[test]
    fn rollback_statement_round_trips() {
        let mut statement = sample();
        statement.source = None;
        statement.rollback_generation = Some(3);
        let bytes = statement.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("\"source\""), "{text}");
        assert!(
            text.contains("\"action\":\"switch\",\"rollback_generation\":3,"),
            "{text}"
        );
        assert_eq!(Statement::parse(&bytes).unwrap(), statement);
    }

    #[test]
    fn deployment_bytes_name_no_rollback() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        assert!(!text.contains("rollback"), "{text}");
        assert!(text.contains("\"source\":{"), "{text}");
    }

    #[test]
    fn source_and_rollback_are_exclusive() {
        let mut both = sample();
        both.rollback_generation = Some(2);
        let error = Statement::parse(&both.to_bytes()).unwrap_err();
        assert!(matches!(error, StatementError::Invalid(_)), "{error}");

        let mut neither = sample();
        neither.source = None;
        let error = Statement::parse(&neither.to_bytes()).unwrap_err();
        assert!(matches!(error, StatementError::Invalid(_)), "{error}");

        let mut zero = sample();
        zero.source = None;
        zero.rollback_generation = Some(0);
        let error = Statement::parse(&zero.to_bytes()).unwrap_err();
        assert!(error.to_string().contains("generation 0"), "{error}");
    }

    #[test]
    fn null_source_is_not_canonical() {
        let mut statement = sample();
        statement.source = None;
        statement.rollback_generation = Some(3);
        let text = String::from_utf8(statement.to_bytes()).unwrap();
        let text = text.replacen(
            "\"rollback_generation\"",
            "\"source\":null,\"rollback_generation\"",
            1,
        );
        let error = Statement::parse(text.as_bytes()).unwrap_err();
        assert!(matches!(error, StatementError::NotCanonical), "{error}");
    }

    #[test]
    fn parse_rejects_expiry_before_creation() {
        let mut statement = sample();
        statement.expires = statement.created;
        assert!(Statement::parse(&statement.to_bytes()).is_err());
    }
}
