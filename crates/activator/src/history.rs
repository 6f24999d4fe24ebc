//! The activator's own hash-chained history of accepted and refused
//! requests and of activation outcomes.
//!
//! Each line of `history.jsonl` is `{"seq":N,"prev":H,"hash":H,"body":{…}}`
//! where `hash` is [`countersign_core::audit::entry_hash`] over the exact
//! bytes of `body` as they appear in the line. The state file records the
//! newest entry's number and hash before the entry is appended, so that
//! a history whose tail was cut fails [`verify_history`].

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use countersign_core::audit::{self, Anchor, AuditError, StoredEntry};
use countersign_core::protocol::{AuditHead, Outcome};
use countersign_core::{Action, Sha256Digest, StorePath};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::intent::IntentStep;
use crate::state::{self, ActivatorState, StateError};

/// Name of the history file inside the state directory.
pub const HISTORY_FILE: &str = "history.jsonl";

/// The body of one history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HistoryRecord {
    /// A certificate passed every check; its proposal number is used.
    Accepted {
        time: u64,
        proposal: u64,
        statement_sha256: Sha256Digest,
        action: Action,
        base: StorePath,
        target: StorePath,
        approvers: Vec<String>,
        audit_head: Option<AuditHead>,
    },
    /// A request was refused before anything changed.
    Refused {
        time: u64,
        /// The proposal number, when the certificate verified far enough
        /// for the number to be trusted.
        proposal: Option<u64>,
        statement_sha256: Option<Sha256Digest>,
        reason: String,
    },
    /// The activation of an accepted proposal ended.
    Finished {
        time: u64,
        proposal: u64,
        outcome: Outcome,
        message: String,
    },
    /// The activator started and found that the activation of
    /// `proposal` had not finished, and restored the base.
    Recovered {
        time: u64,
        proposal: u64,
        /// The step the activation had begun when it stopped.
        step: IntentStep,
        outcome: Outcome,
        message: String,
    },
}

/// One entry as read back from the history file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub seq: u64,
    pub hash: Sha256Digest,
    pub record: HistoryRecord,
}

/// The result of a successful [`verify_history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySummary {
    /// Number of entries in the history.
    pub entries: u64,
    /// The newest entry, which the state file also records.
    pub head: Option<AuditHead>,
    /// The highest proposal number accepted.
    pub last_proposal: u64,
    /// The server's audit head recorded with the last accepted proposal.
    pub audit_head: Option<AuditHead>,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read the history {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot append to the history {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} line {line} is not a valid history entry: {reason}")]
    InvalidLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("the history {path} fails verification: {source}")]
    Chain {
        path: PathBuf,
        #[source]
        source: AuditError,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// The stored form of one line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    seq: u64,
    prev: Sha256Digest,
    hash: Sha256Digest,
    body: Box<RawValue>,
}

/// Checks the whole history chain in `state_dir` and that it still
/// contains the newest entry recorded in the state file.
pub fn verify_history(
    state_dir: &Path,
) -> Result<HistorySummary, HistoryError> {
    let state = state::read_state(state_dir)?;
    let path = state_dir.join(HISTORY_FILE);
    let lines = read_lines(&path)?;
    let entries: Vec<StoredEntry> =
        lines.iter().map(|(_, line)| stored_entry(line)).collect();
    let anchor = state.history_head.map(|head| Anchor {
        seq: head.seq,
        hash: head.hash,
    });
    let last = audit::verify_chain(entries, anchor).map_err(|source| {
        HistoryError::Chain {
            path: path.clone(),
            source,
        }
    })?;
    for (number, line) in &lines {
        parse_record(&path, *number, line)?;
    }
    Ok(HistorySummary {
        entries: lines.len() as u64,
        head: last.map(|last| AuditHead {
            seq: last.seq,
            hash: last.hash,
        }),
        last_proposal: state.last_proposal,
        audit_head: state.audit_head,
    })
}

/// Reads every entry of the history in `state_dir`, without verifying
/// the chain; see [`verify_history`].
pub fn read_history(
    state_dir: &Path,
) -> Result<Vec<HistoryEntry>, HistoryError> {
    let path = state_dir.join(HISTORY_FILE);
    let lines = read_lines(&path)?;
    lines
        .iter()
        .map(|(number, line)| {
            Ok(HistoryEntry {
                seq: line.seq,
                hash: line.hash,
                record: parse_record(&path, *number, line)?,
            })
        })
        .collect()
}

/// Reads and parses every line, numbered from 1; a missing file is an
/// empty history.
fn read_lines(path: &Path) -> Result<Vec<(usize, Line)>, HistoryError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(HistoryError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut lines = Vec::new();
    for (index, text) in text.lines().enumerate() {
        let line: Line = serde_json::from_str(text).map_err(|error| {
            HistoryError::InvalidLine {
                path: path.to_owned(),
                line: index + 1,
                reason: error.to_string(),
            }
        })?;
        lines.push((index + 1, line));
    }
    Ok(lines)
}

fn stored_entry(line: &Line) -> StoredEntry {
    StoredEntry {
        seq: line.seq,
        prev: line.prev,
        body: line.body.get().as_bytes().to_vec(),
        hash: line.hash,
    }
}

fn parse_record(
    path: &Path,
    number: usize,
    line: &Line,
) -> Result<HistoryRecord, HistoryError> {
    serde_json::from_str(line.body.get()).map_err(|error| {
        HistoryError::InvalidLine {
            path: path.to_owned(),
            line: number,
            reason: format!("unknown body: {error}"),
        }
    })
}

/// The writer of the history, which the activation lock owns.
pub(crate) struct History {
    state_dir: PathBuf,
    head: Option<Anchor>,
    /// Whether the file ends without a line break after a torn write, so
    /// that the next entry must start on a new line.
    needs_line_break: bool,
    /// The highest proposal number of an `accepted` entry when the
    /// history was opened.
    last_accepted: u64,
}

impl History {
    /// Opens the history in `state_dir` for appending. Entries continue
    /// after the last readable line, or after the head that the state
    /// file records when that is newer, even when the chain is broken:
    /// the break stays visible to [`verify_history`].
    pub(crate) fn open(state_dir: &Path) -> Result<Self, HistoryError> {
        let path = state_dir.join(HISTORY_FILE);
        let text = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Vec::new()
            }
            Err(source) => return Err(HistoryError::Read { path, source }),
        };
        let needs_line_break = text.last().is_some_and(|byte| *byte != b'\n');
        let lines: Vec<Line> = text
            .split(|byte| *byte == b'\n')
            .filter_map(|line| serde_json::from_slice::<Line>(line).ok())
            .collect();
        let last_accepted = lines
            .iter()
            .filter_map(|line| match serde_json::from_str(line.body.get()) {
                Ok(HistoryRecord::Accepted { proposal, .. }) => Some(proposal),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let file_head = lines.last().map(|line| Anchor {
            seq: line.seq,
            hash: line.hash,
        });
        // A crash after the state recorded a new head and before its
        // entry was appended leaves the state ahead of the file. Entries
        // then continue after the recorded head, so that the missing
        // entry stays a gap. Continuing after the file's last entry
        // would let the next state update hide it.
        let state_head = state::read_state(state_dir)
            .ok()
            .and_then(|state| state.history_head)
            .map(|head| Anchor {
                seq: head.seq,
                hash: head.hash,
            });
        let head = match (file_head, state_head) {
            (Some(file), Some(recorded)) if recorded.seq > file.seq => {
                Some(recorded)
            }
            (None, Some(recorded)) => Some(recorded),
            (file, _) => file,
        };
        match verify_history(state_dir) {
            Ok(summary) => tracing::info!(
                path = %path.display(),
                entries = summary.entries,
                "history verified"
            ),
            Err(error) => tracing::error!(
                path = %path.display(),
                %error,
                "the history fails verification; new entries are appended \
                 after its last readable entry"
            ),
        }
        Ok(Self {
            state_dir: state_dir.to_owned(),
            head,
            needs_line_break,
            last_accepted,
        })
    }

    /// Returns the highest proposal number that the history recorded as
    /// accepted when it was opened. It can be above the state's number
    /// when the state was restored from an older backup.
    pub(crate) fn last_accepted(&self) -> u64 {
        self.last_accepted
    }

    /// Records `record` durably: first the state file, updated by
    /// `update` and with the new entry as its history head, then the
    /// entry itself. A crash between the two leaves a history that fails
    /// verification rather than a silently missing entry.
    pub(crate) fn record(
        &mut self,
        record: &HistoryRecord,
        update: impl FnOnce(&mut ActivatorState),
    ) -> Result<(), HistoryError> {
        let body = serde_json::to_string(record)
            .expect("a history record serializes");
        let (seq, prev) = match self.head {
            Some(head) => (head.seq + 1, head.hash),
            None => (1, Sha256Digest::ZERO),
        };
        let hash = audit::entry_hash(seq, &prev, body.as_bytes());

        let mut state = state::read_state(&self.state_dir)?;
        update(&mut state);
        state.history_head = Some(AuditHead { seq, hash });
        state::write_state(&self.state_dir, &state)?;

        let line = Line {
            seq,
            prev,
            hash,
            body: RawValue::from_string(body)
                .expect("serde_json output is valid JSON"),
        };
        let mut bytes = Vec::new();
        if self.needs_line_break {
            bytes.push(b'\n');
        }
        serde_json::to_writer(&mut bytes, &line)
            .expect("a history line serializes");
        bytes.push(b'\n');
        self.append(&bytes)?;
        self.needs_line_break = false;
        self.head = Some(Anchor { seq, hash });
        Ok(())
    }

    fn append(&self, bytes: &[u8]) -> Result<(), HistoryError> {
        let path = self.state_dir.join(HISTORY_FILE);
        let write_error = |source| HistoryError::Write {
            path: path.clone(),
            source,
        };
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(write_error)?;
        file.write_all(bytes).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        if created {
            state::sync_directory(&self.state_dir).map_err(write_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: &str) -> HistoryRecord {
        HistoryRecord::Refused {
            time: 1,
            proposal: None,
            statement_sha256: None,
            reason: reason.into(),
        }
    }

    fn history_with(bodies: &[&str]) -> tempfile::TempDir {
        let directory = tempfile::tempdir().unwrap();
        let mut history = History::open(directory.path()).unwrap();
        for reason in bodies {
            history.record(&refused(reason), |_| {}).unwrap();
        }
        directory
    }

    #[test]
    fn recorded_entries_verify() {
        let directory = history_with(&["a", "b", "c"]);
        let summary = verify_history(directory.path()).unwrap();
        assert_eq!(summary.entries, 3);
        assert_eq!(summary.head.unwrap().seq, 3);
        let entries = read_history(directory.path()).unwrap();
        assert_eq!(entries[1].record, refused("b"));
    }

    #[test]
    fn reopened_history_continues_chain() {
        let directory = history_with(&["a"]);
        let mut history = History::open(directory.path()).unwrap();
        history.record(&refused("b"), |_| {}).unwrap();
        let summary = verify_history(directory.path()).unwrap();
        assert_eq!(summary.entries, 2);
    }

    #[test]
    fn state_update_is_applied() {
        let directory = history_with(&[]);
        let mut history = History::open(directory.path()).unwrap();
        history
            .record(&refused("a"), |state| state.last_proposal = 9)
            .unwrap();
        let summary = verify_history(directory.path()).unwrap();
        assert_eq!(summary.last_proposal, 9);
    }

    #[test]
    fn altered_entry_fails() {
        let directory = history_with(&["first", "second"]);
        let path = directory.path().join(HISTORY_FILE);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("second", "sekond")).unwrap();
        let error = verify_history(directory.path()).unwrap_err();
        assert!(
            matches!(
                error,
                HistoryError::Chain {
                    source: AuditError::Altered(2),
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn cut_tail_fails() {
        let directory = history_with(&["first", "second"]);
        let path = directory.path().join(HISTORY_FILE);
        let text = fs::read_to_string(&path).unwrap();
        let first_line = text.lines().next().unwrap();
        fs::write(&path, format!("{first_line}\n")).unwrap();
        let error = verify_history(directory.path()).unwrap_err();
        assert!(
            matches!(
                error,
                HistoryError::Chain {
                    source: AuditError::Truncated { last: 1, anchor: 2 },
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn torn_line_stays_visible() {
        let directory = history_with(&["first"]);
        let path = directory.path().join(HISTORY_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":2,\"pr").unwrap();
        drop(file);
        let mut history = History::open(directory.path()).unwrap();
        history.record(&refused("second"), |_| {}).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        let error = verify_history(directory.path()).unwrap_err();
        assert!(
            matches!(error, HistoryError::InvalidLine { line: 2, .. }),
            "{error}"
        );
    }
}
