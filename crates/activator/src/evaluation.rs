//! Evaluating the approved source, with a cache of results.
//!
//! The cache lives in the activator's own state directory, which only
//! root writes. It is keyed by the source's NAR hash and the attribute,
//! because the flake at a given NAR hash always evaluates to the same
//! path, so a repeated check costs a file read. Evaluations run one at a
//! time, whether a prepare request or an activation asks for them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use countersign_core::{Sha256Digest, StorePath};
use serde::{Deserialize, Serialize};

use crate::nix::NixTools;
use crate::state;

/// Directory of cached evaluation results inside the state directory.
pub const EVALUATION_CACHE_DIR: &str = "evaluations";

/// The origin of an evaluation result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provenance {
    Evaluated,
    Cached,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CachedEvaluation {
    nar_hash: String,
    attribute: String,
    out_path: StorePath,
}

/// Returns the output path of `attribute` in the flake at `source`,
/// from the cache in `state_dir` when it has the result. An evaluation
/// holds `lock` while it runs, and a caller that waited for the lock
/// reads the cache again, so a result that another request was computing
/// meanwhile is not evaluated twice.
pub(crate) fn evaluate(
    nix: &NixTools,
    state_dir: &Path,
    lock: &Mutex<()>,
    source: &StorePath,
    nar_hash: &str,
    attribute: &str,
) -> Result<(StorePath, Provenance), String> {
    countersign_nix::validate_attribute(attribute)
        .map_err(|error| error.to_string())?;
    let path = cache_path(state_dir, nar_hash, attribute);
    if let Some(out_path) = read_cached(&path, nar_hash, attribute) {
        return Ok((out_path, Provenance::Cached));
    }
    // A panic during another evaluation leaves nothing behind that this
    // one depends on, so a poisoned lock is used as it is.
    let _running =
        lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(out_path) = read_cached(&path, nar_hash, attribute) {
        return Ok((out_path, Provenance::Cached));
    }
    let out_path = nix
        .evaluate_out_path(source, nar_hash, attribute)
        .map_err(|error| error.to_string())?;
    let entry = CachedEvaluation {
        nar_hash: nar_hash.to_owned(),
        attribute: attribute.to_owned(),
        out_path: out_path.clone(),
    };
    let bytes = serde_json::to_vec(&entry).expect("a cache entry serializes");
    let written = std::fs::create_dir_all(path.parent().expect("has parent"))
        .map_err(|error| error.to_string())
        .and_then(|()| {
            state::write_atomically(&path, &bytes)
                .map_err(|error| error.to_string())
        });
    if let Err(error) = written {
        tracing::warn!(
            path = %path.display(),
            %error,
            "cannot cache the evaluation result; the next check evaluates again"
        );
    }
    Ok((out_path, Provenance::Evaluated))
}

fn cache_path(state_dir: &Path, nar_hash: &str, attribute: &str) -> PathBuf {
    let key = Sha256Digest::of_parts(&[
        nar_hash.as_bytes(),
        b"\0",
        attribute.as_bytes(),
    ]);
    state_dir
        .join(EVALUATION_CACHE_DIR)
        .join(format!("{key}.json"))
}

fn read_cached(
    path: &Path,
    nar_hash: &str,
    attribute: &str,
) -> Option<StorePath> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return None;
        }
        Err(error) => {
            tracing::warn!(
                path = %path.display(),
                %error,
                "cannot read a cached evaluation; evaluating again"
            );
            return None;
        }
    };
    match serde_json::from_slice::<CachedEvaluation>(&bytes) {
        Ok(entry)
            if entry.nar_hash == nar_hash && entry.attribute == attribute =>
        {
            Some(entry.out_path)
        }
        Ok(_) => {
            tracing::warn!(
                path = %path.display(),
                "a cached evaluation belongs to another source; evaluating again"
            );
            None
        }
        Err(error) => {
            tracing::warn!(
                path = %path.display(),
                %error,
                "a cached evaluation is corrupt; evaluating again"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_entry_must_match_key() {
        let directory = tempfile::tempdir().unwrap();
        let path = cache_path(directory.path(), "sha256-a", "x");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let entry = CachedEvaluation {
            nar_hash: "sha256-b".into(),
            attribute: "x".into(),
            out_path: StorePath::parse(
                "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-system",
            )
            .unwrap(),
        };
        std::fs::write(&path, serde_json::to_vec(&entry).unwrap()).unwrap();
        assert_eq!(read_cached(&path, "sha256-a", "x"), None);
        assert_eq!(
            read_cached(&path, "sha256-b", "x"),
            Some(entry.out_path.clone())
        );
    }
}
