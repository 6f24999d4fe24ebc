//! Closures read from the Nix database, with `nix path-info` as the
//! fallback.
//!
//! `nix path-info --json --recursive` starts Nix, opens the store and
//! serialises every path of the closure as JSON, which takes about as
//! long as the rest of the diff together. The same facts are in Nix's
//! SQLite database, and one recursive query reads a closure of
//! thousands of paths in milliseconds. The database is opened read-only
//! with `query_only` set, so this process can never change it. Whenever
//! it cannot be used (another store is configured, the file cannot be
//! opened, a system is not in it, the schema differs), the closures come
//! from `nix path-info` instead, which gives the same answer.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use countersign_core::StorePath;
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::nix::{Nix, PathInfo, path_info};

/// Where Nix keeps its database for the default store.
pub const DEFAULT_DB: &str = "/nix/var/nix/db/db.sqlite";

/// Returns the closure of each root, from the database when possible.
pub fn closures(
    nix: &Nix,
    roots: &[&StorePath],
) -> Result<Vec<Vec<PathInfo>>> {
    if nix.uses_default_store() && Path::new(DEFAULT_DB).exists() {
        match read_closures(Path::new(DEFAULT_DB), roots) {
            Ok(Some(closures)) => return Ok(closures),
            Ok(None) => tracing::debug!(
                "a system is not in the Nix database; asking nix path-info"
            ),
            Err(error) => tracing::info!(
                %error,
                "the Nix database cannot be read; asking nix path-info"
            ),
        }
    }
    roots
        .iter()
        .map(|root| path_info(nix, &[root], true))
        .collect()
}

/// Reads the closure of each root from the Nix database at `db`.
/// Returns `None` when a root is not a valid path there.
pub fn read_closures(
    db: &Path,
    roots: &[&StorePath],
) -> Result<Option<Vec<Vec<PathInfo>>>> {
    let sql_error = |error: rusqlite::Error| {
        Error::invalid(
            "Nix database",
            db.display().to_string(),
            format!("{error}; the diff asks nix path-info instead"),
        )
    };
    let connection = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_error)?;
    connection
        .busy_timeout(Duration::from_secs(2))
        .map_err(sql_error)?;
    connection
        .pragma_update(None, "query_only", true)
        .map_err(sql_error)?;
    let mut closures = Vec::with_capacity(roots.len());
    for root in roots {
        match read_closure(&connection, root).map_err(sql_error)? {
            Some(closure) => closures.push(closure),
            None => return Ok(None),
        }
    }
    Ok(Some(closures))
}

const CLOSURE_CTE: &str = "WITH RECURSIVE closure(id) AS ( \
       SELECT id FROM ValidPaths WHERE path = ?1 \
       UNION SELECT Refs.reference FROM Refs \
       JOIN closure ON Refs.referrer = closure.id)";

fn read_closure(
    connection: &Connection,
    root: &StorePath,
) -> rusqlite::Result<Option<Vec<PathInfo>>> {
    // One read transaction, so that both queries see the same state.
    let transaction = connection.unchecked_transaction()?;
    let mut rows: BTreeMap<i64, (String, String, Option<i64>)> =
        BTreeMap::new();
    {
        let mut statement = transaction.prepare_cached(&format!(
            "{CLOSURE_CTE} SELECT ValidPaths.id, path, hash, narSize \
             FROM ValidPaths JOIN closure ON ValidPaths.id = closure.id"
        ))?;
        let mut query = statement.query([root.as_str()])?;
        while let Some(row) = query.next()? {
            rows.insert(row.get(0)?, (row.get(1)?, row.get(2)?, row.get(3)?));
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let mut references: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    {
        let mut statement = transaction.prepare_cached(&format!(
            "{CLOSURE_CTE} SELECT referrer, reference FROM Refs \
             JOIN closure ON Refs.referrer = closure.id"
        ))?;
        let mut query = statement.query([root.as_str()])?;
        while let Some(row) = query.next()? {
            references.entry(row.get(0)?).or_default().push(row.get(1)?);
        }
    }
    transaction.finish()?;
    let mut infos = Vec::with_capacity(rows.len());
    for (id, (path, hash, size)) in &rows {
        let invalid = |reason: &str| {
            rusqlite::Error::InvalidColumnType(
                0,
                format!("{path}: {reason}"),
                rusqlite::types::Type::Text,
            )
        };
        let path =
            StorePath::parse(path).map_err(|_| invalid("not a store path"))?;
        let nar_hash =
            sri_from_db(hash).ok_or_else(|| invalid("unknown hash format"))?;
        let mut refs = Vec::new();
        for reference in references.get(id).map_or(&[][..], |r| &r[..]) {
            let (text, _, _) = rows
                .get(reference)
                .ok_or_else(|| invalid("dangling reference"))?;
            refs.push(
                StorePath::parse(text)
                    .map_err(|_| invalid("reference is not a store path"))?,
            );
        }
        refs.sort();
        infos.push(PathInfo {
            path,
            nar_hash,
            nar_size: size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
            references: refs,
        });
    }
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Some(infos))
}

/// Converts the database's `sha256:<64 hex digits>` to SRI form.
fn sri_from_db(hash: &str) -> Option<String> {
    let hex = hash.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_hash_becomes_sri() {
        // The same hash as in the nix module's base32 test.
        assert_eq!(
            sri_from_db(
                "sha256:cd26130236a34e3dc39d3283f2bb1b40b2824bac3f2385f3d84c718856\
                 2633ec"
            )
            .as_deref(),
            Some("sha256-zSYTAjajTj3DnTKD8rsbQLKCS6w/I4Xz2ExxiFYmM+w=")
        );
        assert_eq!(sri_from_db("sha256:abc"), None);
        assert_eq!(sri_from_db("md5:00"), None);
    }
}
