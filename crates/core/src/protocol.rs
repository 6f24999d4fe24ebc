//! The messages between the server and the activator on the activator's
//! Unix socket: one JSON request per connection, on one line, answered by
//! a stream of JSON events, one per line, that ends with `finished`.
//!
//! The activator treats every request as untrusted input: it re-derives
//! every decision from its own policy file, state and the Nix store.

use serde::{Deserialize, Serialize};

use crate::{Certificate, Sha256Digest, StorePath};

/// Largest request line the activator reads, in bytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Verify the certificate and, if it holds, activate its target.
    Activate {
        certificate: Certificate,
        /// The newest entry of the server's audit log, which the activator
        /// records so that a later cut of the log's tail is detected.
        audit_head: Option<AuditHead>,
    },
    /// Report the running system, the last accepted proposal and the
    /// recorded audit head.
    Status,
}

/// The number and hash of an audit log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: Sha256Digest,
}

/// A named step of an activation, reported as it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Verify,
    CheckSource,
    Evaluate,
    SetProfile,
    Switch,
    RollBack,
}

/// How an activation request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The target runs now.
    Activated,
    /// The certificate was not accepted; nothing changed.
    Refused,
    /// Activation failed and the base system was restored.
    RolledBack,
    /// Activation failed and restoring the base system failed too; the
    /// machine needs an administrator.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Event {
    Progress {
        step: Step,
        message: String,
    },
    /// One line of output from `switch-to-configuration` or Nix.
    Log {
        line: String,
    },
    Status {
        current_system: Option<StorePath>,
        last_proposal: u64,
        audit_head: Option<AuditHead>,
    },
    Finished {
        outcome: Outcome,
        proposal: Option<u64>,
        message: String,
    },
}
