//! Checking that a source store path has the NAR hash a request names,
//! with a cache of the content-addressed sources already checked.
//!
//! `nix flake prefetch` adds a source with the content address
//! `fixed:r:sha256:<hash>`: its store path is computed from the SHA-256
//! of its NAR serialisation, so Nix registers no other content under
//! that path, not even after garbage collection and a new fetch. Once `nix
//! path-info` has shown such a path with the expected NAR hash, the pair
//! is recorded in the activator's state directory, which only root
//! writes, and a later check of the same pair only confirms that the
//! path still exists. Input-addressed paths are queried every time,
//! because their content is not bound to their name.

use std::path::{Path, PathBuf};

use countersign_core::{Sha256Digest, StorePath};
use serde::{Deserialize, Serialize};

use crate::nix::NixTools;
use crate::state;

/// Directory of verified sources inside the state directory.
pub const VERIFIED_SOURCES_DIR: &str = "verified-sources";

/// The content address prefix of a path added by its recursive
/// (NAR) SHA-256 hash, as `nix flake prefetch` adds sources.
pub(crate) const NAR_SHA256_CONTENT_ADDRESS: &str = "fixed:r:sha256:";

/// The way a source check passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceCheck {
    /// The pair was verified before and the path still exists.
    Cached,
    /// `nix path-info` confirmed the NAR hash, and the pair was recorded
    /// because the path is content-addressed.
    QueriedAndRecorded,
    /// `nix path-info` confirmed the NAR hash of an input-addressed
    /// path, which is queried again next time.
    Queried,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifiedSource {
    store_path: StorePath,
    nar_hash: String,
}

/// Checks that `source` is a valid store path whose NAR hash is
/// `nar_hash`, from the cache in `state_dir` when it has the pair.
/// The error message quotes `named_by`, such as "the statement", as the
/// origin of the expected hash.
pub(crate) fn check(
    nix: &NixTools,
    state_dir: &Path,
    source: &StorePath,
    nar_hash: &str,
    named_by: &str,
) -> Result<SourceCheck, String> {
    countersign_nix::validate_nar_hash(nar_hash)
        .map_err(|error| error.to_string())?;
    let path = cache_path(state_dir, source, nar_hash);
    if is_cached(&path, source, nar_hash) {
        match std::fs::symlink_metadata(source.as_path()) {
            Ok(_) => return Ok(SourceCheck::Cached),
            Err(error) => tracing::info!(
                source = %source,
                %error,
                "a verified source is gone from the store; asking Nix"
            ),
        }
    }

    let info = nix
        .query_valid_path(source)
        .map_err(|error| format!("cannot query the source {source}: {error}"))?
        .ok_or_else(|| {
            format!("the source {source} is not a valid path in the Nix store")
        })?;
    if info.nar_hash != nar_hash {
        return Err(format!(
            "the source {source} has NAR hash {}, but {named_by} names \
             {nar_hash}",
            info.nar_hash
        ));
    }
    let content_addressed = info
        .content_address
        .as_deref()
        .is_some_and(|ca| ca.starts_with(NAR_SHA256_CONTENT_ADDRESS));
    if !content_addressed {
        return Ok(SourceCheck::Queried);
    }
    record(&path, source, nar_hash);
    Ok(SourceCheck::QueriedAndRecorded)
}

fn cache_path(
    state_dir: &Path,
    source: &StorePath,
    nar_hash: &str,
) -> PathBuf {
    let key = Sha256Digest::of_parts(&[
        source.as_str().as_bytes(),
        b"\0",
        nar_hash.as_bytes(),
    ]);
    state_dir
        .join(VERIFIED_SOURCES_DIR)
        .join(format!("{key}.json"))
}

/// Tells whether the file at `path` records exactly this pair. A missing,
/// unreadable or corrupt file counts as absent.
fn is_cached(path: &Path, source: &StorePath, nar_hash: &str) -> bool {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return false;
        }
        Err(error) => {
            tracing::warn!(
                path = %path.display(),
                %error,
                "cannot read a verified source; asking Nix"
            );
            return false;
        }
    };
    match serde_json::from_slice::<VerifiedSource>(&bytes) {
        Ok(entry) => &entry.store_path == source && entry.nar_hash == nar_hash,
        Err(error) => {
            tracing::warn!(
                path = %path.display(),
                %error,
                "a verified source entry is corrupt; asking Nix"
            );
            false
        }
    }
}

fn record(path: &Path, source: &StorePath, nar_hash: &str) {
    let entry = VerifiedSource {
        store_path: source.clone(),
        nar_hash: nar_hash.to_owned(),
    };
    let bytes = serde_json::to_vec(&entry).expect("a cache entry serializes");
    let written = std::fs::create_dir_all(path.parent().expect("has parent"))
        .map_err(|error| error.to_string())
        .and_then(|()| {
            state::write_atomically(path, &bytes)
                .map_err(|error| error.to_string())
        });
    if let Err(error) = written {
        tracing::warn!(
            path = %path.display(),
            %error,
            "cannot record a verified source; the next check asks Nix again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-source";
    const HASH_A: &str = "sha256-cUoEaiXLylLEMes7C/Ozu2tNn1zx72qREiHO8BM4s2I=";
    const HASH_B: &str = "sha256-zSYTAjajTj3DnTKD8rsbQLKCS6w/I4Xz2ExxiFYmM+w=";

    #[test]
    fn entry_must_match_pair() {
        let directory = tempfile::tempdir().unwrap();
        let source = StorePath::parse(SOURCE).unwrap();
        let path = cache_path(directory.path(), &source, HASH_A);
        assert!(!is_cached(&path, &source, HASH_A));
        record(&path, &source, HASH_A);
        assert!(is_cached(&path, &source, HASH_A));
        assert!(!is_cached(&path, &source, HASH_B));
        let other = StorePath::parse(
            "/nix/store/zyxwvsrqpnmlkjihgfdcba9876543210-source",
        )
        .unwrap();
        assert!(!is_cached(&path, &other, HASH_A));
    }

    #[test]
    fn corrupt_entry_is_a_miss() {
        let directory = tempfile::tempdir().unwrap();
        let source = StorePath::parse(SOURCE).unwrap();
        let path = cache_path(directory.path(), &source, HASH_A);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{\"store_path\":").unwrap();
        assert!(!is_cached(&path, &source, HASH_A));
    }
}
