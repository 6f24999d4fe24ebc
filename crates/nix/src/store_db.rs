//! Closures read from the Nix database, with `nix path-info` as the
//! fallback.
//!
//! `nix path-info --json --recursive` starts Nix, opens the store and
//! serialises every path of the closure as JSON, one call per system.
//! The same facts are in Nix's SQLite database. A walk of the references
//! there reads the union of both closures, thousands of paths, in a few
//! milliseconds; each query reads one level of the walk, every path of
//! it with its references. The database is opened read-only with
//! `query_only` set,
//! so this process can never change it. Whenever it cannot be used
//! (another store is configured, the file cannot be opened, a system is
//! not in it, the schema differs), the closures come from `nix
//! path-info` instead, which returns the same closures.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use countersign_core::StorePath;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use rustc_hash::{FxHashMap, FxHashSet};

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

/// The most of the database that is mapped into memory for reading.
/// Reading pages through the map saves a system call per page, and the
/// query touches thousands of pages.
const MMAP_BYTES: i64 = 1 << 30;

/// Reads both closures from the Nix database at `db`. Returns `None`
/// when a system is not a valid path there.
///
/// The two closures are walked on two threads, each with its own
/// connection. A path is claimed by the first walk that reaches it, and
/// only that walk reads it and follows its references, so the union is
/// read once in all while the reading is shared between two cores.
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
    let connection = open(db).map_err(sql_error)?;
    // One read transaction per connection for all of its lookups,
    // rather than one per statement.
    let transaction = connection.unchecked_transaction().map_err(sql_error)?;
    let Some(new_id) = root_id(&transaction, new).map_err(sql_error)? else {
        return Ok(None);
    };
    let old_id = match old {
        Some(old) => match root_id(&transaction, old).map_err(sql_error)? {
            Some(id) => Some(id),
            None => return Ok(None),
        },
        None => None,
    };
    let claimed = Mutex::new(FxHashSet::default());
    let (new_walk, old_walk) = std::thread::scope(|scope| {
        let old_walk = old_id.map(|id| {
            let claimed = &claimed;
            scope.spawn(move || {
                let connection = open(db)?;
                let transaction = connection.unchecked_transaction()?;
                walk(&transaction, id, claimed)
            })
        });
        let new_walk = walk(&transaction, new_id, &claimed);
        let old_walk = old_walk.map(|thread| {
            thread.join().expect("a closure walk does not panic")
        });
        (new_walk, old_walk)
    });
    let mut walks = vec![new_walk.map_err(sql_error)?];
    if let Some(old_walk) = old_walk {
        walks.push(old_walk.map_err(sql_error)?);
    }
    merge(walks, old_id, new_id).map_err(sql_error)
}

/// Opens the database at `db` for reading only.
fn open(db: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(Duration::from_secs(2))?;
    connection.pragma_update(None, "query_only", true)?;
    connection.pragma_update(None, "mmap_size", MMAP_BYTES)?;
    rusqlite::vtab::array::load_module(&connection)?;
    Ok(connection)
}

/// Returns the database id of `path`, or `None` when it is not a valid
/// path.
fn root_id(
    connection: &Connection,
    path: &StorePath,
) -> rusqlite::Result<Option<i64>> {
    connection
        .query_row(
            "SELECT id FROM ValidPaths WHERE path = ?",
            [path.as_str()],
            |row| row.get(0),
        )
        .optional()
}

fn invalid(what: &str, reason: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(
        1,
        format!("{what}: {reason}"),
        rusqlite::types::Type::Text,
    )
}

/// The paths that one walk read: database id, path, NAR size and the
/// ids of its references.
#[derive(Default)]
struct Walk {
    ids: Vec<i64>,
    paths: Vec<String>,
    sizes: Vec<u64>,
    references: Vec<Vec<i64>>,
}

/// Reads the paths reachable from `root` that no other walk claimed,
/// one level at a time: each query reads every path of a level with its
/// references.
fn walk(
    connection: &Connection,
    root: i64,
    claimed: &Mutex<FxHashSet<i64>>,
) -> rusqlite::Result<Walk> {
    let mut lookup = connection.prepare(
        "SELECT ValidPaths.id, path, narSize, reference \
         FROM rarray(?1) AS wanted \
         JOIN ValidPaths ON ValidPaths.id = wanted.value \
         LEFT JOIN Refs ON Refs.referrer = ValidPaths.id",
    )?;
    let mut found = Walk::default();
    let mut level = vec![root];
    while !level.is_empty() {
        {
            let mut claimed = claimed.lock().expect("no walk panics");
            level.retain(|&id| claimed.insert(id));
        }
        if level.is_empty() {
            break;
        }
        let wanted: rusqlite::vtab::array::Array = std::rc::Rc::new(
            level
                .iter()
                .copied()
                .map(rusqlite::types::Value::from)
                .collect(),
        );
        let first = found.ids.len();
        let mut next = Vec::new();
        let mut rows = lookup.query([wanted])?;
        while let Some(row) = rows.next()? {
            // Typed reads through `get_ref` skip the conversion layer of
            // `get`, which shows in a walk of thousands of rows.
            let id = row.get_ref(0)?.as_i64()?;
            if found.ids.last() != Some(&id) || found.ids.len() == first {
                let path = row.get_ref(1)?.as_str()?;
                if !is_store_path(path) {
                    return Err(invalid(path, "not a store path"));
                }
                let size = row.get_ref(2)?.as_i64_or_null()?;
                found.ids.push(id);
                found.paths.push(path.to_owned());
                found.sizes.push(
                    size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                );
                found.references.push(Vec::new());
            }
            if let Some(reference) = row.get_ref(3)?.as_i64_or_null()? {
                found
                    .references
                    .last_mut()
                    .expect("a path was read")
                    .push(reference);
                next.push(reference);
            }
        }
        if found.ids.len() - first != level.len() {
            return Err(invalid(
                "a reference in the database",
                "names no valid path",
            ));
        }
        next.sort_unstable();
        next.dedup();
        level = next;
    }
    Ok(found)
}

/// Puts the walks together into one pair and finds each path's side.
fn merge(
    walks: Vec<Walk>,
    old: Option<i64>,
    new: i64,
) -> rusqlite::Result<Option<ClosurePair>> {
    let mut pair = ClosurePair::default();
    let mut index: FxHashMap<i64, u32> = FxHashMap::default();
    let mut pending = Vec::new();
    for walk in walks {
        for (at, id) in walk.ids.iter().enumerate() {
            index.insert(*id, (pair.paths.len() + at) as u32);
        }
        pair.paths.extend(walk.paths);
        pair.sizes.extend(walk.sizes);
        pending.extend(walk.references);
    }
    for references in &pending {
        let mut resolved = Vec::with_capacity(references.len());
        for reference in references {
            let at = index.get(reference).ok_or_else(|| {
                invalid("a reference in the database", "was not read")
            })?;
            resolved.push(*at);
        }
        pair.references.push(resolved);
    }

    let reachable = |root: i64| -> Option<Vec<bool>> {
        let start = *index.get(&root)? as usize;
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
    let Some(in_new) = reachable(new) else {
        return Ok(None);
    };
    let in_old = match old {
        Some(old) => match reachable(old) {
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
