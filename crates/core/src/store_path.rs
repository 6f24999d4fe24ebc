//! Nix store paths as a validated type.
//!
//! A store path names everything countersign deploys, so every path that
//! arrives from outside (a statement, a build result, a link target) is
//! parsed here once, and the rest of the code never rechecks it.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only store directory countersign supports.
pub const STORE_DIR: &str = "/nix/store";

/// Length of the hash part of a store path in Nix's base32.
pub const HASH_LEN: usize = 32;

/// Nix's base32 alphabet: digits and lower-case letters without
/// `e`, `o`, `u` and `t`.
const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// An absolute path of a top-level entry of the Nix store,
/// `/nix/store/<hash>-<name>`, with no trailing components.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath(String);

/// Why a string is not a store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    #[error("{0:?} is not under {STORE_DIR}/")]
    NotInStore(String),
    #[error(
        "{0:?} has an invalid hash part (expected 32 Nix base32 characters)"
    )]
    InvalidHash(String),
    #[error("{0:?} has an invalid name (letters, digits and +-._?= only)")]
    InvalidName(String),
}

impl StorePath {
    /// Parses `/nix/store/<hash>-<name>`; anything after the name, such as
    /// `/bin/sh`, is rejected.
    pub fn parse(text: &str) -> Result<Self, StorePathError> {
        let rest = text
            .strip_prefix(STORE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(text.to_owned()))?;
        let (hash, name) = match rest.split_at_checked(HASH_LEN) {
            Some((hash, name)) => (hash, name),
            None => return Err(StorePathError::InvalidHash(text.to_owned())),
        };
        if !hash.bytes().all(|byte| NIX_BASE32.contains(&byte)) {
            return Err(StorePathError::InvalidHash(text.to_owned()));
        }
        let name = name
            .strip_prefix('-')
            .ok_or_else(|| StorePathError::InvalidHash(text.to_owned()))?;
        if !is_valid_name(name) {
            return Err(StorePathError::InvalidName(text.to_owned()));
        }
        Ok(Self(text.to_owned()))
    }

    /// Parses the store path that `path` starts with, and returns it with
    /// the remaining components (empty when `path` is the store path).
    pub fn parse_prefix(path: &str) -> Result<(Self, &str), StorePathError> {
        let start = STORE_DIR.len() + 1;
        let end = path
            .get(start..)
            .and_then(|rest| rest.find('/'))
            .map_or(path.len(), |slash| start + slash);
        let store_path = Self::parse(&path[..end])?;
        Ok((store_path, &path[end..]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }

    /// The 32-character hash part.
    pub fn hash_part(&self) -> &str {
        let start = STORE_DIR.len() + 1;
        &self.0[start..start + HASH_LEN]
    }

    /// The name after the hash, for example `hello-2.12.1`.
    pub fn name(&self) -> &str {
        &self.0[STORE_DIR.len() + 1 + HASH_LEN + 1..]
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 211
        && !name.starts_with('.')
        && name.bytes().all(|byte| {
            byte.is_ascii_alphanumeric() || b"+-._?=".contains(&byte)
        })
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({})", self.0)
    }
}

impl AsRef<Path> for StorePath {
    fn as_ref(&self) -> &Path {
        self.as_path()
    }
}

impl Serialize for StorePath {
    fn serialize<S: Serializer>(
        &self,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StorePath {
    fn deserialize<D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str =
        "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12.1";

    #[test]
    fn parse_accepts_valid_path() {
        let path = StorePath::parse(HELLO).unwrap();
        assert_eq!(path.name(), "hello-2.12.1");
        assert_eq!(path.hash_part(), "0123456789abcdfghijklmnpqrsvwxyz");
    }

    #[test]
    fn parse_rejects_invalid_paths() {
        for text in [
            "/nix/store",
            "/nix/store/",
            "/nix/stor/0123456789abcdfghijklmnpqrsvwxyz-x",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxye-x",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a/b",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a b",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-.hidden",
            "/nix/store/../etc/0123456789abcdfghijklmnpq-x",
        ] {
            assert!(StorePath::parse(text).is_err(), "{text} was accepted");
        }
    }

    #[test]
    fn parse_prefix_splits_rest() {
        let text = format!("{HELLO}/bin/hello");
        let (path, rest) = StorePath::parse_prefix(&text).unwrap();
        assert_eq!(path.as_str(), HELLO);
        assert_eq!(rest, "/bin/hello");
        let (_, rest) = StorePath::parse_prefix(HELLO).unwrap();
        assert_eq!(rest, "");
    }
}
