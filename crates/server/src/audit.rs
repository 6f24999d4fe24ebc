//! Verification of the audit log stored in the server's database.

use std::path::Path;

use countersign_core::Sha256Digest;
use countersign_core::audit::{Anchor, AuditError, StoredEntry, verify_chain};
use rusqlite::{Connection, OpenFlags};

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    /// The number of entries in the log.
    pub entries: u64,
    /// The newest entry's position, or `None` for an empty log.
    pub head: Option<Anchor>,
}

/// Why the audit log does not verify, or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuditVerifyError {
    #[error("cannot read the audit log in {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("audit entry {seq} has an invalid {column} {value:?}")]
    InvalidHash {
        seq: u64,
        column: &'static str,
        value: String,
    },
    #[error("the audit log in {path} does not verify: {error}")]
    Broken { path: String, error: AuditError },
}

/// Reads the audit log of the database at `db_path` and verifies its
/// hash chain from the first entry, and that it contains `anchor` (the
/// head the activator recorded) when one is given.
///
/// The database is opened read-only, so a running server is not
/// disturbed.
pub fn verify_audit(
    db_path: &Path,
    anchor: Option<Anchor>,
) -> Result<AuditSummary, AuditVerifyError> {
    let path = db_path.display().to_string();
    let read_error = |source| AuditVerifyError::Read {
        path: path.clone(),
        source,
    };
    let connection =
        Connection::open_with_flags(db_path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(read_error)?;
    let mut statement = connection
        .prepare("SELECT seq, prev, body, hash FROM audit ORDER BY seq")
        .map_err(read_error)?;
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, u64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, String>(3)?,
            ))
        })
        .map_err(read_error)?;
    let mut entries = Vec::new();
    for row in rows {
        let (seq, prev, body, hash) = row.map_err(read_error)?;
        entries.push(StoredEntry {
            seq,
            prev: parse_hash(seq, "prev", &prev)?,
            body,
            hash: parse_hash(seq, "hash", &hash)?,
        });
    }
    let count = entries.len() as u64;
    let head = verify_chain(entries, anchor)
        .map_err(|error| AuditVerifyError::Broken { path, error })?;
    Ok(AuditSummary {
        entries: count,
        head,
    })
}

fn parse_hash(
    seq: u64,
    column: &'static str,
    value: &str,
) -> Result<Sha256Digest, AuditVerifyError> {
    value.parse().map_err(|_| AuditVerifyError::InvalidHash {
        seq,
        column,
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{self, AuditEvent, Context, Db};

    #[test]
    fn closed_database_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.run_blocking(|connection| {
            let tx = connection.transaction().context("begin")?;
            db::insert_proposal(&tx, 1, None, "trigger")?;
            for kind in ["proposal-created", "proposal-failed"] {
                db::append_audit(
                    &tx,
                    AuditEvent {
                        kind,
                        proposal: 1,
                        approver: None,
                        detail: serde_json::json!({}),
                    },
                )?;
            }
            tx.commit().context("commit")
        })
        .unwrap();
        drop(db);
        let path = dir.path().join(db::DB_FILE);
        assert!(!dir.path().join("countersign.db-wal").exists());

        let summary = verify_audit(&path, None).unwrap();
        assert_eq!(summary.entries, 2);
        assert_eq!(summary.head.unwrap().seq, 2);
    }

    #[test]
    fn missing_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let error =
            verify_audit(&dir.path().join("absent.db"), None).unwrap_err();
        assert!(matches!(error, AuditVerifyError::Read { .. }), "{error}");
    }
}
