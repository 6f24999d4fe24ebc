//! The running system, the switch script of a toplevel and running it.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use countersign_core::store_path::STORE_DIR;
use countersign_core::{Action, StorePath};

use crate::nix::CLEAN_PATH;

/// Path of the switch script inside a NixOS toplevel.
pub const SWITCH_SCRIPT: &str = "bin/switch-to-configuration";

/// Symlinks followed before a path is treated as a loop.
const MAX_SYMLINK_HOPS: usize = 40;

/// Returns the store path that `link` (such as `/run/current-system`)
/// resolves to.
pub fn resolve_current_system(link: &Path) -> Result<StorePath, String> {
    let resolved = std::fs::canonicalize(link).map_err(|error| {
        format!(
            "cannot resolve the running system {}: {error}",
            link.display()
        )
    })?;
    let text = resolved.to_str().ok_or_else(|| {
        format!(
            "the running system {} resolves to {}, which is not UTF-8",
            link.display(),
            resolved.display()
        )
    })?;
    StorePath::parse(text).map_err(|error| {
        format!(
            "the running system {} does not resolve to a store path: {error}",
            link.display()
        )
    })
}

/// Resolves `relative` inside the store path `root`, following symlinks
/// only while they stay in the Nix store, and requires an executable
/// regular file at the end.
pub fn resolve_in_store(
    root: &StorePath,
    relative: &str,
) -> Result<PathBuf, String> {
    let store = Path::new(STORE_DIR);
    let shown = format!("{root}/{relative}");
    let root_metadata = std::fs::symlink_metadata(root.as_path())
        .map_err(|error| format!("cannot read {root}: {error}"))?;
    if !root_metadata.is_dir() {
        return Err(format!("{root} is not a directory"));
    }

    // `current` never contains a symlink or `..`: each link's target is
    // pushed back onto `pending` and resolved component by component.
    let mut current = root.as_path().to_owned();
    let mut pending: Vec<OsString> = components(Path::new(relative))?;
    pending.reverse();
    let mut hops = 0;
    while let Some(component) = pending.pop() {
        if component == ".." {
            if current == store {
                return Err(format!("{shown} leads out of {STORE_DIR}"));
            }
            current.pop();
            continue;
        }

        let next = current.join(&component);
        let metadata = std::fs::symlink_metadata(&next).map_err(|error| {
            format!("{shown}: {}: {error}", next.display())
        })?;
        if !metadata.file_type().is_symlink() {
            current = next;
            continue;
        }

        hops += 1;
        if hops > MAX_SYMLINK_HOPS {
            return Err(format!("{shown}: too many levels of symlinks"));
        }
        let target = std::fs::read_link(&next).map_err(|error| {
            format!("{shown}: {}: {error}", next.display())
        })?;
        let rest = if target.is_absolute() {
            let inside = target.strip_prefix(store).map_err(|_| {
                format!(
                    "{shown}: {} points to {}, outside {STORE_DIR}",
                    next.display(),
                    target.display()
                )
            })?;
            current = store.to_owned();
            inside.to_owned()
        } else {
            target
        };
        let mut added = components(&rest)?;
        added.reverse();
        pending.extend(added);
    }

    if !current.starts_with(store) || current == store {
        return Err(format!("{shown} leads out of {STORE_DIR}"));
    }
    let metadata = std::fs::symlink_metadata(&current)
        .map_err(|error| format!("{shown}: {error}"))?;
    if !metadata.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if metadata.permissions().mode() & 0o111 == 0 {
        return Err(format!("{shown} is not executable"));
    }
    Ok(current)
}

/// Splits a relative path into its names; `.` is dropped and `..` kept.
fn components(path: &Path) -> Result<Vec<OsString>, String> {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => names.push(name.to_owned()),
            Component::ParentDir => names.push("..".into()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{} is not a relative path",
                    path.display()
                ));
            }
        }
    }
    Ok(names)
}

/// Returns the command `TOPLEVEL/bin/switch-to-configuration ACTION`
/// with a cleared environment, run in `/` with no input. The runner of
/// [`crate::switch`] runs it; the caller chooses where its output goes.
pub fn switch_command(toplevel: &StorePath, action: Action) -> Command {
    let script = toplevel.as_path().join(SWITCH_SCRIPT);
    let mut command = Command::new(&script);
    command
        .arg(action.as_str())
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .current_dir("/")
        .stdin(Stdio::null());
    // The locale archive is passed on unchanged, so that programs the
    // script starts print messages as before. Every other variable is
    // dropped, NIXOS_INSTALL_BOOTLOADER included.
    if let Some(archive) = std::env::var_os("LOCALE_ARCHIVE") {
        command.env("LOCALE_ARCHIVE", archive);
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_keep_parent_references() {
        let names = components(Path::new("./bin/../bin/x")).unwrap();
        assert_eq!(names, ["bin", "..", "bin", "x"]);
        assert!(components(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn current_system_must_be_in_store() {
        let directory = tempfile::tempdir().unwrap();
        let link = directory.path().join("current-system");
        std::os::unix::fs::symlink("/tmp", &link).unwrap();
        let error = resolve_current_system(&link).unwrap_err();
        assert!(error.contains("not resolve to a store path"), "{error}");
        let missing = directory.path().join("missing");
        let error = resolve_current_system(&missing).unwrap_err();
        assert!(error.contains("cannot resolve"), "{error}");
    }
}
