//! Two systems' closures over one list of store paths.
//!
//! The package diff needs, for every store path in either closure, its
//! name, its NAR size, which closure it is in and what it references.
//! Both closures of a system update share almost every path, so they are
//! kept as one list with a side per path rather than as two lists.

use std::collections::HashMap;

use crate::nix::PathInfo;

/// The closure that a path is in, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Old,
    New,
    Both,
}

impl Side {
    pub fn in_old(self) -> bool {
        matches!(self, Self::Old | Self::Both)
    }

    pub fn in_new(self) -> bool {
        matches!(self, Self::New | Self::Both)
    }
}

/// The union of two closures.
#[derive(Debug, Clone, Default)]
pub struct ClosurePair {
    /// Full store paths, each once.
    pub paths: Vec<String>,
    /// NAR size of each path, in bytes.
    pub sizes: Vec<u64>,
    /// Indices of the paths each path references.
    pub references: Vec<Vec<u32>>,
    pub sides: Vec<Side>,
}

impl ClosurePair {
    /// Builds the pair from two closures that `nix path-info` listed.
    pub fn from_path_infos(old: &[PathInfo], new: &[PathInfo]) -> Self {
        let mut pair = Self::default();
        let mut index: HashMap<&str, u32> = HashMap::new();
        for (closure, side) in [(old, Side::Old), (new, Side::New)] {
            for info in closure {
                match index.get(info.path.as_str()) {
                    Some(&at) => {
                        let at = at as usize;
                        if pair.sides[at] != side {
                            pair.sides[at] = Side::Both;
                        }
                    }
                    None => {
                        index.insert(
                            info.path.as_str(),
                            pair.paths.len() as u32,
                        );
                        pair.paths.push(info.path.as_str().to_owned());
                        pair.sizes.push(info.nar_size);
                        pair.references.push(Vec::new());
                        pair.sides.push(side);
                    }
                }
            }
        }
        for info in old.iter().chain(new) {
            let at = index[info.path.as_str()] as usize;
            if pair.references[at].is_empty() {
                pair.references[at] = info
                    .references
                    .iter()
                    .filter_map(|r| index.get(r.as_str()).copied())
                    .collect();
            }
        }
        pair
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Returns the store name of path `at`: the part after the hash.
    pub fn name(&self, at: usize) -> &str {
        store_name(&self.paths[at])
    }
}

/// Returns the part of a store path after `/nix/store/<hash>-`, or the
/// whole text if it is shorter.
pub fn store_name(path: &str) -> &str {
    const PREFIX: usize = "/nix/store/".len() + 32 + 1;
    path.get(PREFIX..).unwrap_or(path)
}

/// Tells whether `text` has the form of a store path: `/nix/store/`, 32
/// characters of Nix base32, `-`, and a name of the allowed characters.
/// The package diff checks paths read from the Nix database with this
/// instead of a full parse, since it reads thousands of them.
pub fn is_store_path(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("/nix/store/") else {
        return false;
    };
    let bytes = rest.as_bytes();
    if bytes.len() < 34 || bytes[32] != b'-' {
        return false;
    }
    let base32 = |b: u8| {
        matches!(b, b'0'..=b'9' | b'a'..=b'z')
            && !matches!(b, b'e' | b'o' | b'u' | b't')
    };
    let name_char = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'+' | b'-' | b'.' | b'_' | b'?' | b'=')
    };
    bytes[..32].iter().all(|&b| base32(b))
        && bytes[33..].iter().all(|&b| name_char(b))
        && bytes[33] != b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_path_forms() {
        assert!(is_store_path(
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12.1"
        ));
        for text in [
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxye-hello",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a/b",
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-.hidden",
            "/etc/passwd",
        ] {
            assert!(!is_store_path(text), "{text}");
        }
    }
}
