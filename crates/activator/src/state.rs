//! The activator's durable state: the last accepted proposal number, the
//! server's audit head recorded with it, the head of the activator's own
//! history, the intent of an activation in progress, and the signature
//! counter of each WebAuthn credential.
//!
//! The file is replaced atomically (write a temporary file, fsync it,
//! rename it over the old one, fsync the directory), so a crash leaves
//! either the old or the new state, never a mix.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use countersign_core::protocol::AuditHead;
use serde::{Deserialize, Serialize};

use crate::history::HISTORY_FILE;
use crate::intent::Intent;

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// The activator's memory between requests and restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivatorState {
    /// The highest proposal number ever accepted, whatever the outcome of
    /// its activation; 0 before the first.
    pub last_proposal: u64,
    /// The server's audit head sent with the last accepted proposal.
    pub audit_head: Option<AuditHead>,
    /// The number and hash of the newest entry of the activator's own
    /// history, so that a history whose tail was cut fails verification.
    pub history_head: Option<AuditHead>,
    /// The activation in progress and the step it has begun; `None`
    /// between activations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    /// The signature counter of the last accepted approval of each
    /// WebAuthn credential, by credential id in base64url without
    /// padding. A later approval must report a greater counter unless
    /// both are zero, so a cloned authenticator shows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub webauthn_counters: BTreeMap<String, u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the activator state {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the activator state {path} is corrupt ({source}); restore it from \
         a backup, because deleting it would allow old certificates again"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the activator state {path} is missing, but the history {history} \
         has entries, so the state was lost; restore it from a backup, \
         because starting without it would allow old certificates again"
    )]
    Lost { path: PathBuf, history: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reads the state from `state_dir`. A missing file is the initial
/// state while the history is empty too. Every history entry is written
/// after the state that records it, so a history with entries means that
/// the state was lost.
pub fn read_state(state_dir: &Path) -> Result<ActivatorState, StateError> {
    let path = state_dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let history = state_dir.join(HISTORY_FILE);
            return match fs::metadata(&history) {
                Ok(metadata) if metadata.len() > 0 => {
                    Err(StateError::Lost { path, history })
                }
                _ => Ok(ActivatorState::default()),
            };
        }
        Err(source) => return Err(StateError::Read { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map_err(|source| StateError::Corrupt { path, source })
}

/// Replaces the state in `state_dir` durably.
pub fn write_state(
    state_dir: &Path,
    state: &ActivatorState,
) -> Result<(), StateError> {
    let mut bytes =
        serde_json::to_vec_pretty(state).expect("the state serializes");
    bytes.push(b'\n');
    write_atomically(&state_dir.join(STATE_FILE), &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same
/// directory, so that readers see the old or the new content only.
pub(crate) fn write_atomically(
    path: &Path,
    bytes: &[u8],
) -> Result<(), StateError> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Write { path, source }
    };
    let directory = path.parent().expect("state files have a parent");
    let file_name = path
        .file_name()
        .expect("state files have a name")
        .to_string_lossy();
    let temporary = directory.join(format!(".{file_name}.tmp"));
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(write_error(&temporary))?;
        file.write_all(bytes).map_err(write_error(&temporary))?;
        file.sync_all().map_err(write_error(&temporary))?;
    }
    fs::rename(&temporary, path).map_err(write_error(path))?;
    sync_directory(directory).map_err(write_error(directory))
}

/// Makes a rename or a new file in `directory` durable.
pub(crate) fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use countersign_core::Sha256Digest;

    use super::*;

    #[test]
    fn missing_state_is_initial() {
        let directory = tempfile::tempdir().unwrap();
        let state = read_state(directory.path()).unwrap();
        assert_eq!(state, ActivatorState::default());
    }

    #[test]
    fn state_round_trips() {
        let directory = tempfile::tempdir().unwrap();
        let state = ActivatorState {
            last_proposal: 12,
            audit_head: Some(AuditHead {
                seq: 40,
                hash: Sha256Digest::of(b"server"),
            }),
            history_head: Some(AuditHead {
                seq: 3,
                hash: Sha256Digest::of(b"history"),
            }),
            intent: None,
            webauthn_counters: BTreeMap::from([("AAEC".to_owned(), 17)]),
        };
        write_state(directory.path(), &state).unwrap();
        assert_eq!(read_state(directory.path()).unwrap(), state);
        let names: Vec<_> = fs::read_dir(directory.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATE_FILE]);
    }

    #[test]
    fn state_without_counters_reads() {
        // A state file written before WebAuthn counters existed.
        let directory = tempfile::tempdir().unwrap();
        fs::write(
            directory.path().join(STATE_FILE),
            b"{\"last_proposal\": 4, \"audit_head\": null, \
              \"history_head\": null}",
        )
        .unwrap();
        let state = read_state(directory.path()).unwrap();
        assert_eq!(state.last_proposal, 4);
        assert!(state.webauthn_counters.is_empty());
    }

    #[test]
    fn missing_state_with_history_is_lost() {
        let directory = tempfile::tempdir().unwrap();
        let history = directory.path().join(HISTORY_FILE);
        fs::write(&history, b"").unwrap();
        assert_eq!(
            read_state(directory.path()).unwrap(),
            ActivatorState::default()
        );
        fs::write(&history, b"{}\n").unwrap();
        let error = read_state(directory.path()).unwrap_err();
        assert!(matches!(error, StateError::Lost { .. }), "{error}");
    }

    #[test]
    fn corrupt_state_is_an_error() {
        let directory = tempfile::tempdir().unwrap();
        fs::write(directory.path().join(STATE_FILE), b"{\"last\": 1}")
            .unwrap();
        let error = read_state(directory.path()).unwrap_err();
        assert!(matches!(error, StateError::Corrupt { .. }), "{error}");
    }
}
