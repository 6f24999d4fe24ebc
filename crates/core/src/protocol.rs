//! The messages between the server and the activator on the activator's
//! Unix socket: one JSON request per connection, on one line, answered by
//! a stream of JSON events, one per line. The last event is `finished`,
//! or `status` for a status request, `prepared` for a successful prepare
//! request and `confirmed` for a confirm request that arrived in time.
//!
//! The activator treats every request as untrusted input: it re-derives
//! every decision from its own policy file, state and the Nix store.

use std::collections::BTreeMap;

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
        /// The git objects that tie the statement's commit to its source.
        /// Required when the statement deploys a source.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit_evidence: Option<CommitEvidence>,
    },
    /// Report the running system, the last accepted proposal and the
    /// recorded audit head.
    Status,
    /// Check that `source` has the NAR hash `nar_hash` and evaluate
    /// `attribute` of the flake it contains, so that a later activation
    /// of a statement naming the same source finds both results in the
    /// activator's caches. Nothing is activated, the profile stays as it
    /// is and no proposal number is used.
    Prepare {
        source: StorePath,
        /// NAR hash of `source` in SRI form, `sha256-<base64>`.
        nar_hash: String,
        /// The flake output attribute of the host's toplevel.
        attribute: String,
    },
    /// Confirm that the system activated for `proposal` runs well enough
    /// for its server to reach the activator. When the activator has a
    /// confirmation window, it rolls back an activation that is not
    /// confirmed in time.
    Confirm { proposal: u64 },
}

/// The git data that ties a statement's commit to the files of its
/// source. The server reads it from its mirror, and the activator trusts
/// none of it: the commit id in the signed statement is the hash of
/// `commit`, whose first line names the tree that the source's files
/// must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitEvidence {
    /// The commit object without git's `commit <size>` header, in
    /// standard base64.
    pub commit: String,
    /// The submodules of the commit's tree, by `/`-separated path, with
    /// the commit id each one records. Nix fetches the source without
    /// submodules, so each is an empty folder there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub submodules: BTreeMap<String, String>,
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
    /// The administrator's commands that run before the switch.
    PreSwitch,
    /// The checks that run after the switch.
    HealthCheck,
    /// The wait for the server of the new system to confirm.
    AwaitConfirmation,
    /// The check that a rollback's generation of the profile is its
    /// target, which takes the place of the source and evaluation checks.
    CheckGeneration,
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
        /// The proposal whose activation has begun and not finished.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        activating: Option<u64>,
        /// The proposal whose activation waits for a `confirm` request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        awaiting_confirmation: Option<u64>,
    },
    Finished {
        outcome: Outcome,
        proposal: Option<u64>,
        message: String,
    },
    /// The reply to a prepare request whose source check passed.
    Prepared {
        /// The store path that the attribute evaluates to, or `None`
        /// when the activator's configuration turns evaluation off.
        target: Option<StorePath>,
    },
    /// The activation of `proposal` has switched and passed its health
    /// checks, and is rolled back unless a `confirm` request for it
    /// arrives before `deadline` (Unix time, seconds).
    AwaitingConfirmation {
        proposal: u64,
        deadline: u64,
    },
    /// The reply to a `confirm` request that arrived in time: the
    /// activation of `proposal` is kept.
    Confirmed {
        proposal: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-source";
    const TARGET: &str =
        "/nix/store/zyxwvsrqpnmlkjihgfdcba9876543210-nixos-system";

    #[test]
    fn prepare_request_round_trips() {
        let request = Request::Prepare {
            source: StorePath::parse(SOURCE).unwrap(),
            nar_hash: "sha256-cUoEaiXLylLEMes7C/Ozu2tNn1zx72qREiHO8BM4s2I="
                .to_owned(),
            attribute: "nixosConfigurations.demo.config.system.build.toplevel"
                .to_owned(),
        };
        let line = serde_json::to_string(&request).unwrap();
        assert!(line.starts_with("{\"request\":\"prepare\""), "{line}");
        let parsed: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, request);
    }

    #[test]
    fn prepare_request_rejects_unknown_fields() {
        let line = format!(
            "{{\"request\":\"prepare\",\"source\":\"{SOURCE}\",\
             \"nar_hash\":\"sha256-x\",\"attribute\":\"a\",\"proposal\":3}}"
        );
        let error = serde_json::from_str::<Request>(&line).unwrap_err();
        assert!(error.to_string().contains("unknown field"), "{error}");
    }

    #[test]
    fn prepare_request_needs_store_path() {
        let line = "{\"request\":\"prepare\",\"source\":\"/etc\",\
                    \"nar_hash\":\"sha256-x\",\"attribute\":\"a\"}";
        assert!(serde_json::from_str::<Request>(line).is_err());
    }

    #[test]
    fn confirmation_messages_round_trip() {
        let request = Request::Confirm { proposal: 4 };
        let line = serde_json::to_string(&request).unwrap();
        assert_eq!(line, "{\"request\":\"confirm\",\"proposal\":4}");
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), request);

        let waiting = Event::AwaitingConfirmation {
            proposal: 4,
            deadline: 1_700_000_000,
        };
        let line = serde_json::to_string(&waiting).unwrap();
        assert_eq!(
            line,
            "{\"event\":\"awaiting-confirmation\",\"proposal\":4,\
             \"deadline\":1700000000}"
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), waiting);
    }

    #[test]
    fn status_without_confirmation_keeps_its_form() {
        let line = "{\"event\":\"status\",\"current_system\":null,\
                    \"last_proposal\":2,\"audit_head\":null}";
        let status: Event = serde_json::from_str(line).unwrap();
        assert_eq!(
            status,
            Event::Status {
                current_system: None,
                last_proposal: 2,
                audit_head: None,
                activating: None,
                awaiting_confirmation: None,
            }
        );
        assert_eq!(serde_json::to_string(&status).unwrap(), line);
    }

    #[test]
    fn prepared_event_round_trips() {
        let event = Event::Prepared {
            target: Some(StorePath::parse(TARGET).unwrap()),
        };
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(
            line,
            format!("{{\"event\":\"prepared\",\"target\":\"{TARGET}\"}}")
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
        let off: Event =
            serde_json::from_str("{\"event\":\"prepared\",\"target\":null}")
                .unwrap();
        assert_eq!(off, Event::Prepared { target: None });
    }
}
