//! Store paths named inside text files, such as the `unit-script-*`
//! paths in a unit's `ExecStart=`.
//!
//! When a generated file changes, every store path it names gets a new
//! hash, so comparing texts with the hashes masked hides nothing only if
//! the generated files those paths point to are compared too. A unit
//! whose script gained a line differs from the old unit only in the
//! script's hash.

use std::collections::{BTreeMap, BTreeSet};

use countersign_core::StorePath;
use countersign_core::store_path::{HASH_LEN, STORE_DIR};

use crate::drv_name::parse_drv_name;

/// Finds every store path named in `text`.
pub(crate) fn store_references(text: &str) -> BTreeSet<StorePath> {
    let prefix = format!("{STORE_DIR}/");
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(index) = rest.find(&prefix) {
        let candidate = &rest[index..];
        let end = candidate[prefix.len()..]
            .find(|c: char| {
                !(c.is_ascii_alphanumeric() || "+-._?=".contains(c))
            })
            .map_or(candidate.len(), |offset| prefix.len() + offset);
        if end > prefix.len() + HASH_LEN
            && let Ok(path) = StorePath::parse(&candidate[..end])
        {
            found.insert(path);
        }
        rest = &candidate[prefix.len()..];
    }
    found
}

/// Generated store paths that the system diff reads in full on its own,
/// so following them from a text would only repeat those changes.
const READ_ELSEWHERE: &[&str] =
    &["etc", "system-units", "user-units", "system-path"];

/// Groups by name the generated, version-less store paths that only
/// one of two texts names: for each name, the old text's paths and the
/// new text's paths. Paths that both texts name are left out.
fn regenerated_by_name(
    old_text: &str,
    new_text: &str,
) -> BTreeMap<String, (Vec<StorePath>, Vec<StorePath>)> {
    let old = store_references(old_text);
    let new = store_references(new_text);
    // NOTE: a generated file named like a package (`backup-1.0`) is not
    // opened; its change shows only as a version bump or a rebuild.
    let generated = |path: &StorePath| {
        let name = path.name();
        parse_drv_name(name).1.is_empty() && !READ_ELSEWHERE.contains(&name)
    };
    let mut names: BTreeMap<String, (Vec<StorePath>, Vec<StorePath>)> =
        BTreeMap::new();
    for path in old.difference(&new).filter(|path| generated(path)) {
        let entry = names.entry(path.name().to_owned()).or_default();
        entry.0.push(path.clone());
    }
    for path in new.difference(&old).filter(|path| generated(path)) {
        let entry = names.entry(path.name().to_owned()).or_default();
        entry.1.push(path.clone());
    }
    names
}

/// Pairs the store paths of two texts that have the same name, no
/// version and different hashes: generated files such as
/// `unit-script-sshd-start` that were regenerated with other content.
/// Paths with a version are packages, which the package part of the
/// diff covers. Paths that both texts name are set aside first. A name
/// with more than one remaining path on a side does not pair, because
/// its pairing would be a guess: [`newly_named`] returns its new paths.
pub(crate) fn regenerated_pairs(
    old_text: &str,
    new_text: &str,
) -> Vec<(StorePath, StorePath)> {
    regenerated_by_name(old_text, new_text)
        .into_values()
        .filter_map(|(old_paths, new_paths)| {
            match (&old_paths[..], &new_paths[..]) {
                ([old_path], [new_path]) => {
                    Some((old_path.clone(), new_path.clone()))
                }
                _ => None,
            }
        })
        .collect()
}

/// At most this many store paths that only the new text names are read.
pub(crate) const MAX_NEWLY_NAMED: usize = 20;

/// The generated, version-less store paths that `new_text` names and
/// `old_text` does not, and that [`regenerated_pairs`] does not pair:
/// the script of a unit that was added or pointed at another script,
/// or a regenerated script whose name the new text also gives to
/// another path.
pub(crate) fn newly_named(old_text: &str, new_text: &str) -> Vec<StorePath> {
    regenerated_by_name(old_text, new_text)
        .into_values()
        .filter(|(old_paths, new_paths)| {
            old_paths.len() != 1 || new_paths.len() != 1
        })
        .flat_map(|(_, new_paths)| new_paths)
        .take(MAX_NEWLY_NAMED)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "ExecStart=/nix/store/0123456789abcdfghijklmnpqrsvwxyz\
                       -unit-script-sshd-start/bin/sshd-start\n\
                       Environment=PATH=/nix/store/\
                       0123456789abcdfghijklmnpqrsvwxyz-coreutils-9.5/bin\n";
    const NEW: &str = "ExecStart=/nix/store/zyxwvsrqpnmlkjihgfdcba9876543210\
                       -unit-script-sshd-start/bin/sshd-start\n\
                       Environment=PATH=/nix/store/\
                       zyxwvsrqpnmlkjihgfdcba9876543210-coreutils-9.5/bin\n";

    #[test]
    fn references_found_in_text() {
        let found = store_references(OLD);
        let names: Vec<&str> = found.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["coreutils-9.5", "unit-script-sshd-start"]);
    }

    #[test]
    fn malformed_references_ignored() {
        assert!(store_references("/nix/store/short-x").is_empty());
        assert!(store_references("/nix/store/").is_empty());
    }

    #[test]
    fn only_versionless_paths_pair() {
        let pairs = regenerated_pairs(OLD, NEW);
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].0.name(), "unit-script-sshd-start");
        assert_eq!(pairs[0].1.hash_part(), "zyxwvsrqpnmlkjihgfdcba9876543210");
    }

    #[test]
    fn newly_named_paths_found() {
        let new = format!(
            "{NEW}ExecStartPre=/nix/store/\
             zyxwvsrqpnmlkjihgfdcba9876543210-unit-script-x-pre-start/bin/x\n"
        );
        let found = newly_named(OLD, &new);
        let names: Vec<&str> = found.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["unit-script-x-pre-start"]);
    }

    #[test]
    fn ambiguous_names_show_new_paths() {
        // The new text names the regenerated script and, in a comment,
        // a second path of the same name.
        let decoy = "# /nix/store/00000000000000000000000000000000\
                     -unit-script-sshd-start\n";
        let new = format!("{NEW}{decoy}");
        assert!(regenerated_pairs(OLD, &new).is_empty());
        let found = newly_named(OLD, &new);
        let hashes: Vec<&str> = found.iter().map(|p| p.hash_part()).collect();
        assert_eq!(
            hashes,
            [
                "00000000000000000000000000000000",
                "zyxwvsrqpnmlkjihgfdcba9876543210"
            ]
        );
        // A path that both texts name is set aside, and the other new
        // one is shown in full.
        let both = format!("{OLD}{NEW}");
        assert!(regenerated_pairs(OLD, &both).is_empty());
        let found = newly_named(OLD, &both);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].hash_part(), "zyxwvsrqpnmlkjihgfdcba9876543210");
        let pairs = regenerated_pairs(&format!("{OLD}{decoy}"), &new);
        assert_eq!(pairs.len(), 1);
    }

    #[test]
    fn identical_references_do_not_pair() {
        assert!(regenerated_pairs(OLD, OLD).is_empty());
    }
}
