//! Reading a built system without leaving the Nix store.
//!
//! A candidate system is untrusted data until it is approved. Its
//! symbolic links may point anywhere, for example `/etc/shadow` or
//! `/root/.ssh/id_ed25519`, so the kernel never follows them here.
//! [`resolve`] reads each link itself, one hop at a time. It stops at the
//! first target that leaves `/nix/store` and reports that target as text
//! without opening it. Every path it returns has no symbolic link
//! in it, so opening that path reads store content only.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use countersign_core::StorePath;
use countersign_core::store_path::STORE_DIR;

use crate::error::{Error, Result};

/// Maximum number of symbolic links followed for one path, the same
/// limit Linux applies (`MAXSYMLINKS`).
pub const MAX_HOPS: usize = 40;

/// The destination of a path after its links are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A regular file in the store, at a path without symbolic links.
    File {
        path: PathBuf,
        size: u64,
        executable: bool,
    },
    /// A directory in the store, at a path without symbolic links.
    Directory { path: PathBuf },
    /// A symbolic link whose target leaves the store. `target` is the
    /// text of the link that leaves, which was not opened.
    OutsideLink { target: String },
    /// Nothing exists there, for example because a link dangles.
    Missing,
    /// More than [`MAX_HOPS`] links were followed.
    TooManyHops,
    /// A socket, device or pipe, which a store path cannot hold.
    Special { path: PathBuf },
}

/// Resolves `path`, which must lie inside a store path, following
/// symbolic links by hand while every step stays inside `/nix/store`.
pub fn resolve(path: &Path) -> Result<Resolved> {
    let text = path.to_str().ok_or_else(|| {
        Error::invalid(
            "store path",
            path.display().to_string(),
            "is not valid UTF-8",
        )
    })?;
    StorePath::parse_prefix(text)?;

    // Components still to walk, last component first.
    let mut pending: Vec<PathBuf> = components(path);
    pending.reverse();
    let mut current = PathBuf::from("/");
    let mut hops = 0;
    let mut last_link_target: Option<String> = None;

    while let Some(component) = pending.pop() {
        if component.as_os_str() == ".." {
            current.pop();
            continue;
        }
        let candidate = current.join(&component);
        match store_position(&candidate) {
            Position::Outside => {
                return Ok(outside(last_link_target, &candidate));
            }
            Position::StoreAncestor => {
                current = candidate;
                continue;
            }
            Position::Inside => {}
        }
        let metadata = match fs::symlink_metadata(&candidate) {
            Ok(metadata) => metadata,
            Err(error) if is_missing(&error) => return Ok(Resolved::Missing),
            Err(error) => return Err(Error::io(&candidate, error)),
        };
        if metadata.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_HOPS {
                return Ok(Resolved::TooManyHops);
            }
            let target = fs::read_link(&candidate)
                .map_err(|error| Error::io(&candidate, error))?;
            last_link_target = Some(target.to_string_lossy().into_owned());
            if target.is_absolute() {
                current = PathBuf::from("/");
            }
            let mut parts = components(&target);
            parts.reverse();
            pending.extend(parts);
            continue;
        }
        if !pending.is_empty() && !metadata.is_dir() {
            // A file used as a directory, as in `file/x`.
            return Ok(Resolved::Missing);
        }
        current = candidate;
    }

    if store_position(&current) != Position::Inside {
        return Ok(outside(last_link_target, &current));
    }
    let metadata = fs::symlink_metadata(&current)
        .map_err(|error| Error::io(&current, error))?;
    Ok(if metadata.is_dir() {
        Resolved::Directory { path: current }
    } else if metadata.is_file() {
        Resolved::File {
            path: current,
            size: metadata.len(),
            executable: metadata.permissions().mode() & 0o111 != 0,
        }
    } else {
        Resolved::Special { path: current }
    })
}

/// Reads at most `max_bytes` of a file that [`resolve`] returned. The
/// flag is true when the file was longer than that.
pub fn read_limited(path: &Path, max_bytes: u64) -> Result<(Vec<u8>, bool)> {
    let file = File::open(path).map_err(|error| Error::io(path, error))?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| Error::io(path, error))?;
    let truncated = bytes.len() as u64 > max_bytes;
    bytes.truncate(max_bytes as usize);
    Ok((bytes, truncated))
}

/// Lists the names in a directory that [`resolve`] returned, sorted by
/// bytes.
pub fn read_dir_sorted(path: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(path).map_err(|error| Error::io(path, error))? {
        let entry = entry.map_err(|error| Error::io(path, error))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

#[derive(Debug, PartialEq, Eq)]
enum Position {
    /// `/`, `/nix` or `/nix/store`: passed through, never opened.
    StoreAncestor,
    /// Inside a valid store path.
    Inside,
    Outside,
}

fn store_position(path: &Path) -> Position {
    let Some(text) = path.to_str() else {
        return Position::Outside;
    };
    if text == "/" || text == "/nix" || text == STORE_DIR {
        return Position::StoreAncestor;
    }
    match StorePath::parse_prefix(text) {
        Ok(_) => Position::Inside,
        Err(_) => Position::Outside,
    }
}

fn outside(last_link_target: Option<String>, path: &Path) -> Resolved {
    Resolved::OutsideLink {
        target: last_link_target
            .unwrap_or_else(|| path.to_string_lossy().into_owned()),
    }
}

/// Splits `path` into components, keeping `..` and dropping `.`.
fn components(path: &Path) -> Vec<PathBuf> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(PathBuf::from(name)),
            Component::ParentDir => {
                Some(PathBuf::from(OsStr::from_bytes(b"..")))
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {
                None
            }
        })
        .collect()
}

fn is_missing(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_store_are_rejected() {
        assert!(resolve(Path::new("/etc/passwd")).is_err());
        assert!(resolve(Path::new("/nix/store")).is_err());
    }

    #[test]
    fn store_position_classifies() {
        let inside =
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-etc/etc/passwd";
        assert_eq!(store_position(Path::new(inside)), Position::Inside);
        assert_eq!(
            store_position(Path::new("/nix/store")),
            Position::StoreAncestor
        );
        assert_eq!(
            store_position(Path::new("/nix/store/etc")),
            Position::Outside
        );
        assert_eq!(store_position(Path::new("/etc")), Position::Outside);
    }

    #[test]
    fn components_keep_parent_steps() {
        let parts = components(Path::new("../a/./b/.."));
        let parts: Vec<_> = parts
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(parts, ["..", "a", "b", ".."]);
    }
}
