//! Closures read from the Nix database, with `nix path-info` as the
//! fallback.
//!
//! `nix path-info --json --recursive` starts Nix, opens the store and
//! serialises every path of the closure as JSON, one call per system.
//! The same facts are in Nix's SQLite database, and one recursive query
//! reads the union of both closures, thousands of paths, in a few
//! milliseconds. The database is opened read-only with `query_only` set,
//! so this process can never change it. Whenever it cannot be used
//! (another store is configured, the file cannot be opened, a system is
//! not in it, the schema differs), the closures come from `nix
//! path-info` instead, which returns the same closures.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use countersign_core::StorePath;
use rusqlite::{Connection, OpenFlags};

use crate::closure::{ClosurePair, Side, is_store_path};
use crate::error::{Error, Result};
use crate::nix::{Nix, path_info};

/// Path of Nix's database for the default store.
pub const DEFAULT_DB: &str = "/nix/var/nix/db/db.sqlite";

/// Reads the closures of `old` (none for a first deployment) and `new`,
/// from the database when possible.
pub fn closure_pair(
    nix: &Nix,
    old: Option<&StorePath>,
    new: &StorePath,
) -> Result<ClosurePair> {
    if nix.uses_default_store() && Path::new(DEFAULT_DB).exists() {
        match read_pair(Path::new(DEFAULT_DB), old, new) {
            Ok(Some(pair)) => return Ok(pair),
            Ok(None) => tracing::debug!(
                "a system is not in the Nix database; asking nix path-info"
            ),
            Err(error) => tracing::info!(
                %error,
                "the Nix database cannot be read; asking nix path-info"
            ),
        }
    }
    let old_closure = match old {
        Some(old) => path_info(nix, &[old], true)?,
        None => Vec::new(),
    };
    let new_closure = path_info(nix, &[new], true)?;
    Ok(ClosurePair::from_path_infos(&old_closure, &new_closure))
}

/// Reads both closures from the Nix database at `db`. Returns `None`
/// when a system is not a valid path there.
pub fn read_pair(
    db: &Path,
    old: Option<&StorePath>,
    new: &StorePath,
) -> Result<Option<ClosurePair>> {
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
    read_union(&connection, old, new).map_err(sql_error)
}

/// Reads the union of both closures with one recursive query, since
/// they overlap almost entirely, then walks each system's closure in
/// memory to find its side.
fn read_union(
    connection: &Connection,
    old: Option<&StorePath>,
    new: &StorePath,
) -> rusqlite::Result<Option<ClosurePair>> {
    let roots: Vec<&str> = old
        .into_iter()
        .chain([new])
        .map(StorePath::as_str)
        .collect();
    let placeholders = vec!["?"; roots.len()].join(", ");
    let sql = format!(
        "WITH RECURSIVE closure(id) AS ( \
           SELECT id FROM ValidPaths WHERE path IN ({placeholders}) \
           UNION SELECT Refs.reference FROM Refs \
           JOIN closure ON Refs.referrer = closure.id) \
         SELECT ValidPaths.id, path, narSize, Refs.reference \
         FROM closure JOIN ValidPaths ON ValidPaths.id = closure.id \
         LEFT JOIN Refs ON Refs.referrer = closure.id"
    );
    let invalid = |path: &str, reason: &str| {
        rusqlite::Error::InvalidColumnType(
            1,
            format!("{path}: {reason}"),
            rusqlite::types::Type::Text,
        )
    };
    let mut pair = ClosurePair::default();
    // One row per reference, or one for a path without references;
    // `index` maps database ids to positions in `pair`.
    let mut index: HashMap<i64, u32> = HashMap::new();
    let mut references: Vec<Vec<i64>> = Vec::new();
    {
        let mut statement = connection.prepare(&sql)?;
        let mut rows = statement.query(rusqlite::params_from_iter(&roots))?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let at = match index.get(&id) {
                Some(&at) => at as usize,
                None => {
                    let path: String = row.get(1)?;
                    if !is_store_path(&path) {
                        return Err(invalid(&path, "not a store path"));
                    }
                    let size: Option<i64> = row.get(2)?;
                    index.insert(id, pair.paths.len() as u32);
                    pair.paths.push(path);
                    pair.sizes.push(
                        size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    );
                    references.push(Vec::new());
                    pair.paths.len() - 1
                }
            };
            if let Some(reference) = row.get::<_, Option<i64>>(3)? {
                references[at].push(reference);
            }
        }
    }
    for (at, refs) in references.iter().enumerate() {
        let mut resolved = Vec::with_capacity(refs.len());
        for reference in refs {
            let position = *index.get(reference).ok_or_else(|| {
                invalid(
                    &pair.paths[at],
                    "references a path not in the database",
                )
            })?;
            resolved.push(position);
        }
        pair.references.push(resolved);
    }

    let reachable = |root: &str| -> Option<Vec<bool>> {
        let start = pair.paths.iter().position(|path| path == root)?;
        let mut seen = vec![false; pair.paths.len()];
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(at) = stack.pop() {
            for &next in &pair.references[at] {
                let next = next as usize;
                if !seen[next] {
                    seen[next] = true;
                    stack.push(next);
                }
            }
        }
        Some(seen)
    };
    let Some(in_new) = reachable(new.as_str()) else {
        return Ok(None);
    };
    let in_old = match old {
        Some(old) => match reachable(old.as_str()) {
            Some(seen) => seen,
            None => return Ok(None),
        },
        None => vec![false; pair.paths.len()],
    };
    pair.sides = in_old
        .iter()
        .zip(&in_new)
        .map(|(&a, &b)| match (a, b) {
            (true, true) => Side::Both,
            (true, false) => Side::Old,
            _ => Side::New,
        })
        .collect();
    Ok(Some(pair))
}
