//! The SQLite database in the state folder: proposals, votes, activation
//! events and the audit log.
//!
//! The server holds one connection behind a mutex and uses it only from
//! blocking threads. Each state change and its audit entry are written in
//! one transaction, so the log never misses a change that happened and
//! never records one that did not.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use countersign_core::Sha256Digest;
use countersign_core::audit::{Anchor, entry_hash};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use serde_json::Value;

/// The database file's name inside the state folder.
pub const DB_FILE: &str = "countersign.db";

/// The schema version kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE proposals (
    number INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    requested_rev TEXT,
    requested_by TEXT NOT NULL,
    commit_id TEXT,
    subject TEXT,
    base TEXT,
    target TEXT,
    source_path TEXT,
    nar_hash TEXT,
    statement BLOB,
    statement_sha256 TEXT,
    diff BLOB,
    error TEXT,
    created INTEGER NOT NULL,
    expires INTEGER,
    updated INTEGER NOT NULL
);
CREATE INDEX proposals_state ON proposals (state);

CREATE TABLE votes (
    id INTEGER PRIMARY KEY,
    proposal INTEGER NOT NULL REFERENCES proposals (number),
    approver TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('approve', 'reject')),
    signature TEXT NOT NULL,
    reason TEXT,
    at INTEGER NOT NULL,
    UNIQUE (proposal, approver, verdict)
);

CREATE TABLE activation_events (
    id INTEGER PRIMARY KEY,
    proposal INTEGER NOT NULL REFERENCES proposals (number),
    at INTEGER NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX activation_events_proposal ON activation_events (proposal);

CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    prev TEXT NOT NULL,
    body BLOB NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: rows cannot be updated');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: rows cannot be deleted');
END;
"#;

/// A database failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("database {action} failed: {source}")]
pub struct DbError {
    pub action: &'static str,
    #[source]
    pub source: rusqlite::Error,
}

pub type DbResult<T> = Result<T, DbError>;

/// Adds the action to a rusqlite error.
pub(crate) trait Context<T> {
    fn context(self, action: &'static str) -> DbResult<T>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn context(self, action: &'static str) -> DbResult<T> {
        self.map_err(|source| DbError { action, source })
    }
}

/// The stages of a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProposalState {
    Building,
    AwaitingApproval,
    Activating,
    Deployed,
    Failed,
    Rejected,
    Superseded,
    Expired,
    Refused,
    RolledBack,
}

impl ProposalState {
    pub const ALL: [ProposalState; 10] = [
        Self::Building,
        Self::AwaitingApproval,
        Self::Activating,
        Self::Deployed,
        Self::Failed,
        Self::Rejected,
        Self::Superseded,
        Self::Expired,
        Self::Refused,
        Self::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::AwaitingApproval => "awaiting-approval",
            Self::Activating => "activating",
            Self::Deployed => "deployed",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Superseded => "superseded",
            Self::Expired => "expired",
            Self::Refused => "refused",
            Self::RolledBack => "rolled-back",
        }
    }
}

impl fmt::Display for ProposalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProposalState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| format!("unknown proposal state {text:?}"))
    }
}

impl Serialize for ProposalState {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Whether a vote approves or rejects, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredVerdict {
    Approve,
    Reject,
}

impl StoredVerdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
}

/// One proposal row.
#[derive(Debug, Clone)]
pub struct ProposalRow {
    pub number: u64,
    pub state: ProposalState,
    pub requested_rev: Option<String>,
    pub requested_by: String,
    pub commit: Option<String>,
    pub subject: Option<String>,
    pub base: Option<String>,
    pub target: Option<String>,
    pub source_path: Option<String>,
    pub nar_hash: Option<String>,
    pub statement: Option<Vec<u8>>,
    pub statement_sha256: Option<String>,
    pub diff: Option<Vec<u8>>,
    pub error: Option<String>,
    pub created: u64,
    pub expires: Option<u64>,
    /// When the state last changed, in seconds since the Unix epoch.
    pub updated: u64,
}

/// One stored vote.
#[derive(Debug, Clone)]
pub struct VoteRow {
    pub approver: String,
    pub verdict: StoredVerdict,
    pub signature: String,
    pub reason: Option<String>,
    pub at: u64,
}

/// The results of a finished build, written with the statement.
pub struct BuiltProposal<'a> {
    /// `None` for a rollback, which has no commit and no source.
    pub commit: Option<&'a str>,
    pub subject: &'a str,
    pub base: &'a str,
    pub target: &'a str,
    pub source_path: Option<&'a str>,
    pub nar_hash: Option<&'a str>,
    pub statement: &'a [u8],
    pub diff: &'a [u8],
    pub expires: u64,
}

/// The shared database connection.
pub struct Db {
    connection: Mutex<Connection>,
    /// Counts the calls that changed rows, so that tasks following the
    /// audit log wake without polling.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Db {
    /// Opens or creates the database in `state_dir` with write-ahead
    /// logging and full synchronisation, so that a committed change
    /// survives a crash or power loss.
    pub fn open(state_dir: &Path) -> DbResult<Arc<Self>> {
        let path = state_dir.join(DB_FILE);
        let mut connection = Connection::open(path).context("open")?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .context("setting journal_mode")?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .context("setting synchronous")?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .context("setting foreign_keys")?;
        // Another process (`countersign audit verify`, an administrator's
        // sqlite3) may hold a lock for a moment.
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .context("setting the busy timeout")?;
        migrate(&mut connection)?;
        Ok(Arc::new(Self {
            connection: Mutex::new(connection),
            changes: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// Runs `work` with the connection on a blocking thread.
    pub async fn run<T, F>(self: &Arc<Self>, work: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> DbResult<T> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || db.run_blocking(work))
            .await
            .expect("a database task does not panic")
    }

    /// Runs `work` with the connection on the current thread.
    pub fn run_blocking<T, F>(&self, work: F) -> DbResult<T>
    where
        F: FnOnce(&mut Connection) -> DbResult<T>,
    {
        // A panic while the lock was held leaves no half-written
        // transaction behind (rusqlite rolls back on drop), so the
        // connection stays usable.
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = connection.total_changes();
        let result = work(&mut connection);
        let changed = connection.total_changes() != before;
        drop(connection);
        if changed {
            self.changes
                .send_modify(|count| *count = count.wrapping_add(1));
        }
        result
    }

    /// Returns a receiver that sees a new value after each call that
    /// changed rows, committed or not.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

fn migrate(connection: &mut Connection) -> DbResult<()> {
    let version: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .context("reading the schema version")?;
    match version {
        0 => {
            let tx = connection.transaction().context("begin")?;
            tx.execute_batch(SCHEMA).context("creating the schema")?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .context("setting the schema version")?;
            tx.commit().context("commit")
        }
        SCHEMA_VERSION => Ok(()),
        other => Err(DbError {
            action: "opening",
            source: rusqlite::Error::InvalidParameterName(format!(
                "the database has schema version {other}, but this server \
                 knows only version {SCHEMA_VERSION}; run a newer server"
            )),
        }),
    }
}

/// The current time in seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// One audit log event, before it is encoded.
pub struct AuditEvent<'a> {
    pub kind: &'a str,
    pub proposal: u64,
    pub approver: Option<&'a str>,
    pub detail: Value,
}

/// Encodes an audit body as canonical JSON: compact, with the keys of
/// every object sorted, so the same event always has the same bytes.
pub fn audit_body(event: &AuditEvent<'_>, at: u64) -> Vec<u8> {
    let mut body = BTreeMap::new();
    body.insert("kind", Value::from(event.kind));
    body.insert("proposal", Value::from(event.proposal));
    if let Some(approver) = event.approver {
        body.insert("approver", Value::from(approver));
    }
    body.insert("detail", event.detail.clone());
    body.insert("at", Value::from(at));
    let mut text = String::new();
    write_canonical(
        &Value::Object(
            body.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ),
        &mut text,
    );
    text.into_bytes()
}

/// Writes `value` as compact JSON with sorted object keys, independent of
/// how `serde_json` orders its maps.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Appends one entry to the audit log inside `tx` and returns its
/// position. Also logs the event, without secrets, since the audit body
/// contains none.
pub fn append_audit(
    tx: &Transaction<'_>,
    event: AuditEvent<'_>,
) -> DbResult<Anchor> {
    let at = now();
    let last = audit_head(tx)?;
    let (seq, prev) = match last {
        Some(anchor) => (anchor.seq + 1, anchor.hash),
        None => (1, Sha256Digest::ZERO),
    };
    let body = audit_body(&event, at);
    let hash = entry_hash(seq, &prev, &body);
    tx.execute(
        "INSERT INTO audit (seq, prev, body, hash) VALUES (?1, ?2, ?3, ?4)",
        params![seq, prev.to_hex(), body, hash.to_hex()],
    )
    .context("appending to the audit log")?;
    tracing::info!(
        audit_seq = seq,
        kind = event.kind,
        proposal = event.proposal,
        approver = event.approver,
        detail = %event.detail,
        "audit"
    );
    Ok(Anchor { seq, hash })
}

/// The newest audit entry's position, if the log has any.
pub fn audit_head(connection: &Connection) -> DbResult<Option<Anchor>> {
    let row: Option<(u64, String)> = connection
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .context("reading the audit head")?;
    row.map(|(seq, hash)| {
        let hash = hash.parse().map_err(|_| DbError {
            action: "reading the audit head",
            source: rusqlite::Error::InvalidColumnType(
                0,
                format!("hash of entry {seq}"),
                rusqlite::types::Type::Text,
            ),
        })?;
        Ok(Anchor { seq, hash })
    })
    .transpose()
}

const PROPOSAL_COLUMNS: &str = "number, state, requested_rev, requested_by, \
    commit_id, subject, base, target, source_path, nar_hash, statement, \
    statement_sha256, diff, error, created, expires, updated";

fn proposal_from_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<ProposalRow> {
    let state: String = row.get(1)?;
    let state = state.parse().map_err(|error: String| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Text,
            error.into(),
        )
    })?;
    Ok(ProposalRow {
        number: row.get(0)?,
        state,
        requested_rev: row.get(2)?,
        requested_by: row.get(3)?,
        commit: row.get(4)?,
        subject: row.get(5)?,
        base: row.get(6)?,
        target: row.get(7)?,
        source_path: row.get(8)?,
        nar_hash: row.get(9)?,
        statement: row.get(10)?,
        statement_sha256: row.get(11)?,
        diff: row.get(12)?,
        error: row.get(13)?,
        created: row.get(14)?,
        expires: row.get(15)?,
        updated: row.get(16)?,
    })
}

/// One proposal, or `None` when there is no proposal `number`.
pub fn proposal(
    connection: &Connection,
    number: u64,
) -> DbResult<Option<ProposalRow>> {
    connection
        .query_row(
            &format!(
                "SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE number = ?1"
            ),
            [number],
            proposal_from_row,
        )
        .optional()
        .context("reading a proposal")
}

/// Returns the newest `limit` proposals, newest first, without their
/// statements and diffs, which can be large.
pub fn proposals(
    connection: &Connection,
    limit: u64,
) -> DbResult<Vec<ProposalRow>> {
    let mut statement = connection
        .prepare(
            "SELECT number, state, requested_rev, requested_by, commit_id, \
             subject, base, target, source_path, nar_hash, NULL, \
             statement_sha256, NULL, error, created, expires, updated \
             FROM proposals \
             ORDER BY number DESC LIMIT ?1",
        )
        .context("listing proposals")?;
    statement
        .query_map([limit], proposal_from_row)
        .context("listing proposals")?
        .collect::<rusqlite::Result<_>>()
        .context("listing proposals")
}

/// The numbers of the proposals in `state`, oldest first.
pub fn numbers_in_state(
    connection: &Connection,
    state: ProposalState,
) -> DbResult<Vec<u64>> {
    let mut statement = connection
        .prepare(
            "SELECT number FROM proposals WHERE state = ?1 ORDER BY number",
        )
        .context("finding proposals by state")?;
    statement
        .query_map([state.as_str()], |row| row.get(0))
        .context("finding proposals by state")?
        .collect::<rusqlite::Result<_>>()
        .context("finding proposals by state")
}

/// The number of proposals in each state.
pub fn state_counts(
    connection: &Connection,
) -> DbResult<BTreeMap<String, u64>> {
    let mut statement = connection
        .prepare("SELECT state, COUNT(*) FROM proposals GROUP BY state")
        .context("counting proposals")?;
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .context("counting proposals")?
        .collect::<rusqlite::Result<_>>()
        .context("counting proposals")
}

/// The highest proposal number in the database, or 0.
pub fn last_number(connection: &Connection) -> DbResult<u64> {
    connection
        .query_row(
            "SELECT COALESCE(MAX(number), 0) FROM proposals",
            [],
            |row| row.get(0),
        )
        .context("reading the last proposal number")
}

/// The commit of the newest deployed proposal, if any.
pub fn deployed_commit(connection: &Connection) -> DbResult<Option<String>> {
    connection
        .query_row(
            "SELECT commit_id FROM proposals WHERE state = 'deployed' \
             ORDER BY number DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()
        .context("reading the deployed commit")
        .map(Option::flatten)
}

/// Inserts a new proposal in state `building`.
pub fn insert_proposal(
    tx: &Transaction<'_>,
    number: u64,
    requested_rev: Option<&str>,
    requested_by: &str,
) -> DbResult<()> {
    let at = now();
    tx.execute(
        "INSERT INTO proposals (number, state, requested_rev, requested_by, \
         created, updated) VALUES (?1, 'building', ?2, ?3, ?4, ?4)",
        params![number, requested_rev, requested_by, at],
    )
    .context("inserting a proposal")?;
    Ok(())
}

/// Moves proposal `number` from `from` to `to`, with an optional error
/// text. Returns false, changing nothing, when it was not in `from`.
pub fn set_state(
    tx: &Transaction<'_>,
    number: u64,
    from: ProposalState,
    to: ProposalState,
    error: Option<&str>,
) -> DbResult<bool> {
    let changed = tx
        .execute(
            "UPDATE proposals SET state = ?1, error = COALESCE(?2, error), \
             updated = ?3 WHERE number = ?4 AND state = ?5",
            params![to.as_str(), error, now(), number, from.as_str()],
        )
        .context("changing a proposal's state")?;
    Ok(changed == 1)
}

/// Stores the build results and the statement of a `building` proposal
/// and moves it to `awaiting-approval`. Returns false when the proposal
/// was no longer building.
pub fn store_built(
    tx: &Transaction<'_>,
    number: u64,
    built: &BuiltProposal<'_>,
) -> DbResult<bool> {
    let statement_sha256 = Sha256Digest::of(built.statement).to_hex();
    let changed = tx
        .execute(
            "UPDATE proposals SET state = 'awaiting-approval', \
             commit_id = ?1, subject = ?2, base = ?3, target = ?4, \
             source_path = ?5, nar_hash = ?6, statement = ?7, \
             statement_sha256 = ?8, diff = ?9, expires = ?10, updated = ?11 \
             WHERE number = ?12 AND state = 'building'",
            params![
                built.commit,
                built.subject,
                built.base,
                built.target,
                built.source_path,
                built.nar_hash,
                built.statement,
                statement_sha256,
                built.diff,
                built.expires,
                now(),
                number
            ],
        )
        .context("storing a built proposal")?;
    Ok(changed == 1)
}

/// Records what the build found before it failed, so the detail shows
/// which commit failed.
pub fn store_commit(
    connection: &Connection,
    number: u64,
    commit: &str,
    subject: &str,
) -> DbResult<()> {
    connection
        .execute(
            "UPDATE proposals SET commit_id = ?1, subject = ?2 \
             WHERE number = ?3",
            params![commit, subject, number],
        )
        .context("storing a proposal's commit")?;
    Ok(())
}

/// The votes on a proposal, oldest first.
pub fn votes(connection: &Connection, number: u64) -> DbResult<Vec<VoteRow>> {
    let mut statement = connection
        .prepare(
            "SELECT approver, verdict, signature, reason, at FROM votes \
             WHERE proposal = ?1 ORDER BY id",
        )
        .context("reading votes")?;
    statement
        .query_map([number], |row| {
            let verdict: String = row.get(1)?;
            Ok(VoteRow {
                approver: row.get(0)?,
                verdict: if verdict == "reject" {
                    StoredVerdict::Reject
                } else {
                    StoredVerdict::Approve
                },
                signature: row.get(2)?,
                reason: row.get(3)?,
                at: row.get(4)?,
            })
        })
        .context("reading votes")?
        .collect::<rusqlite::Result<_>>()
        .context("reading votes")
}

/// Inserts a vote unless the approver already cast the same verdict on
/// the proposal. Returns whether a row was added.
pub fn insert_vote(
    tx: &Transaction<'_>,
    number: u64,
    approver: &str,
    verdict: StoredVerdict,
    signature: &str,
    reason: Option<&str>,
) -> DbResult<bool> {
    let added = tx
        .execute(
            "INSERT INTO votes (proposal, approver, verdict, signature, \
             reason, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (proposal, approver, verdict) DO NOTHING",
            params![
                number,
                approver,
                verdict.as_str(),
                signature,
                reason,
                now()
            ],
        )
        .context("storing a vote")?;
    Ok(added == 1)
}

/// Appends one event that the activator sent about a proposal.
pub fn insert_activation_event(
    connection: &Connection,
    number: u64,
    event: &Value,
) -> DbResult<()> {
    connection
        .execute(
            "INSERT INTO activation_events (proposal, at, event) \
             VALUES (?1, ?2, ?3)",
            params![number, now(), event.to_string()],
        )
        .context("storing an activation event")?;
    Ok(())
}

/// The activation events of a proposal, oldest first, each with its time
/// added as `at`.
pub fn activation_events(
    connection: &Connection,
    number: u64,
) -> DbResult<Vec<Value>> {
    let mut statement = connection
        .prepare(
            "SELECT at, event FROM activation_events WHERE proposal = ?1 \
             ORDER BY id",
        )
        .context("reading activation events")?;
    let rows: Vec<(u64, String)> = statement
        .query_map([number], |row| Ok((row.get(0)?, row.get(1)?)))
        .context("reading activation events")?
        .collect::<rusqlite::Result<_>>()
        .context("reading activation events")?;
    Ok(rows
        .into_iter()
        .map(|(at, text)| {
            let mut event: Value =
                serde_json::from_str(&text).unwrap_or(Value::String(text));
            if let Value::Object(map) = &mut event {
                map.insert("at".into(), Value::from(at));
            }
            event
        })
        .collect())
}

/// The proposals in `awaiting-approval` whose expiry has passed.
pub fn expired_numbers(
    connection: &Connection,
    now: u64,
) -> DbResult<Vec<u64>> {
    let mut statement = connection
        .prepare(
            "SELECT number FROM proposals WHERE state = 'awaiting-approval' \
             AND expires IS NOT NULL AND expires <= ?1 ORDER BY number",
        )
        .context("finding expired proposals")?;
    statement
        .query_map([now], |row| row.get(0))
        .context("finding expired proposals")?
        .collect::<rusqlite::Result<_>>()
        .context("finding expired proposals")
}

/// Pending proposals older than `number`: those a newer proposal
/// supersedes.
pub fn older_pending(tx: &Transaction<'_>, number: u64) -> DbResult<Vec<u64>> {
    let mut statement = tx
        .prepare(
            "SELECT number FROM proposals WHERE state = 'awaiting-approval' \
             AND number < ?1 ORDER BY number",
        )
        .context("finding superseded proposals")?;
    statement
        .query_map([number], |row| row.get(0))
        .context("finding superseded proposals")?
        .collect::<rusqlite::Result<_>>()
        .context("finding superseded proposals")
}

/// The newest proposal above `number` that already has a statement and
/// is still pending or further, which makes `number` obsolete.
pub fn newer_with_statement(
    tx: &Transaction<'_>,
    number: u64,
) -> DbResult<Option<u64>> {
    tx.query_row(
        "SELECT MAX(number) FROM proposals WHERE number > ?1 AND state IN \
         ('awaiting-approval', 'activating', 'deployed')",
        [number],
        |row| row.get(0),
    )
    .context("finding newer proposals")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn audit_body_is_canonical() {
        let event = AuditEvent {
            kind: "approval",
            proposal: 3,
            approver: Some("phone"),
            detail: json!({ "z": 1, "a": { "y": [2, 1], "b": null } }),
        };
        assert_eq!(
            String::from_utf8(audit_body(&event, 99)).unwrap(),
            r#"{"approver":"phone","at":99,"detail":{"a":{"b":null,"y":[2,1]},"z":1},"kind":"approval","proposal":3}"#
        );
    }

    #[test]
    fn audit_body_omits_missing_approver() {
        let event = AuditEvent {
            kind: "proposal-created",
            proposal: 1,
            approver: None,
            detail: json!("x\"y"),
        };
        assert_eq!(
            String::from_utf8(audit_body(&event, 5)).unwrap(),
            r#"{"at":5,"detail":"x\"y","kind":"proposal-created","proposal":1}"#
        );
    }

    #[test]
    fn audit_log_rejects_changes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.run_blocking(|connection| {
            let tx = connection.transaction().context("begin")?;
            insert_proposal(&tx, 1, None, "trigger")?;
            append_audit(
                &tx,
                AuditEvent {
                    kind: "proposal-created",
                    proposal: 1,
                    approver: None,
                    detail: json!({}),
                },
            )?;
            tx.commit().context("commit")
        })
        .unwrap();
        db.run_blocking(|connection| {
            let update =
                connection.execute("UPDATE audit SET body = x'00'", []);
            assert!(update.unwrap_err().to_string().contains("append-only"));
            let delete = connection.execute("DELETE FROM audit", []);
            assert!(delete.unwrap_err().to_string().contains("append-only"));
            assert_eq!(audit_head(connection)?.unwrap().seq, 1);
            Ok(())
        })
        .unwrap();
    }
}
