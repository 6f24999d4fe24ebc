//! The package part of the diff: the two systems' closures grouped by
//! package name.

use std::collections::{BTreeMap, BTreeSet};

use countersign_core::StorePath;
use serde::{Deserialize, Serialize};

use crate::drv_name::parse_drv_name;
use crate::error::Result;
use crate::nix::{Nix, PathInfo, path_info};

/// Output names that Nix packages commonly split into, stripped from a
/// store name before it is parsed, so that `openssl-3.0.15-bin` and
/// `openssl-3.0.15` count as one package. Other trailing words are kept,
/// because in names such as `firewall-start` they are part of the name.
const OUTPUT_NAMES: &[&str] = &[
    "bin", "dev", "devdoc", "doc", "info", "lib", "lib32", "lib64", "man",
    "out", "debug", "static", "dist",
];

/// The changes to the package set between two closures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageDiff {
    /// Sum of the NAR sizes of every path in the old closure, in bytes.
    pub old_closure_size: u64,
    pub new_closure_size: u64,
    /// `new_closure_size - old_closure_size`.
    pub closure_size_delta: i64,
    pub old_path_count: usize,
    pub new_path_count: usize,
    /// Packages only in the new closure.
    pub added: Vec<PackageVersions>,
    /// Packages only in the old closure.
    pub removed: Vec<PackageVersions>,
    /// Packages whose set of versions changed.
    pub version_changes: Vec<VersionChange>,
    /// Packages with the same versions but different store paths: built
    /// from different inputs, such as a patch or a changed dependency.
    pub rebuilt: Vec<Rebuild>,
    /// Names without a version (generated files such as units or
    /// `etc-*` entries) whose store paths changed. Their contents are
    /// compared in the system part of the diff.
    pub regenerated: Vec<String>,
}

/// A package and the versions of it in one closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageVersions {
    pub name: String,
    /// Sorted; an empty string stands for a name without a version.
    pub versions: Vec<String>,
    /// Sum of the NAR sizes of its paths, in bytes.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionChange {
    pub name: String,
    pub old_versions: Vec<String>,
    pub new_versions: Vec<String>,
    pub size_delta: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuild {
    pub name: String,
    pub versions: Vec<String>,
    pub size_delta: i64,
}

/// Compares the closures of two systems, asking Nix for both with
/// `nix path-info --recursive`.
pub fn package_diff(
    nix: &Nix,
    old: &StorePath,
    new: &StorePath,
) -> Result<PackageDiff> {
    let old_closure = path_info(nix, &[old], true)?;
    let new_closure = path_info(nix, &[new], true)?;
    Ok(diff_closures(&old_closure, &new_closure))
}

/// Compares two closures that were already queried. An empty `old`
/// makes every package added.
pub fn diff_closures(old: &[PathInfo], new: &[PathInfo]) -> PackageDiff {
    let old_groups = group(old);
    let new_groups = group(new);
    let old_closure_size: u64 = old.iter().map(|info| info.nar_size).sum();
    let new_closure_size: u64 = new.iter().map(|info| info.nar_size).sum();
    let mut diff = PackageDiff {
        old_closure_size,
        new_closure_size,
        closure_size_delta: delta(old_closure_size, new_closure_size),
        old_path_count: old.len(),
        new_path_count: new.len(),
        added: Vec::new(),
        removed: Vec::new(),
        version_changes: Vec::new(),
        rebuilt: Vec::new(),
        regenerated: Vec::new(),
    };
    let names: BTreeSet<&String> =
        old_groups.keys().chain(new_groups.keys()).collect();
    for name in names {
        match (old_groups.get(name), new_groups.get(name)) {
            (None, Some(group)) => diff.added.push(group.versions(name)),
            (Some(group), None) => diff.removed.push(group.versions(name)),
            (Some(before), Some(after)) => {
                let size_delta = delta(before.size, after.size);
                if before.versions != after.versions {
                    diff.version_changes.push(VersionChange {
                        name: name.clone(),
                        old_versions: before.sorted_versions(),
                        new_versions: after.sorted_versions(),
                        size_delta,
                    });
                } else if before.paths != after.paths {
                    if before.versions.iter().all(String::is_empty) {
                        diff.regenerated.push(name.clone());
                    } else {
                        diff.rebuilt.push(Rebuild {
                            name: name.clone(),
                            versions: after.sorted_versions(),
                            size_delta,
                        });
                    }
                }
            }
            (None, None) => {}
        }
    }
    diff
}

#[derive(Default)]
struct Group {
    versions: BTreeSet<String>,
    paths: BTreeSet<StorePath>,
    size: u64,
}

impl Group {
    fn sorted_versions(&self) -> Vec<String> {
        self.versions.iter().cloned().collect()
    }

    fn versions(&self, name: &str) -> PackageVersions {
        PackageVersions {
            name: name.to_owned(),
            versions: self.sorted_versions(),
            size: self.size,
        }
    }
}

fn group(closure: &[PathInfo]) -> BTreeMap<String, Group> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for info in closure {
        let (name, version) = package_name(info.path.name());
        let group = groups.entry(name.to_owned()).or_default();
        group.versions.insert(version.to_owned());
        group.paths.insert(info.path.clone());
        group.size += info.nar_size;
    }
    groups
}

/// The package name and version of a store name, with a known output
/// suffix such as `-bin` or `-dev` removed first.
pub fn package_name(store_name: &str) -> (&str, &str) {
    let base = match store_name.rsplit_once('-') {
        Some((base, output))
            if OUTPUT_NAMES.contains(&output) && !base.is_empty() =>
        {
            base
        }
        _ => store_name,
    };
    parse_drv_name(base)
}

fn delta(old: u64, new: u64) -> i64 {
    (i128::from(new) - i128::from(old))
        .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, hash_letter: char, size: u64) -> PathInfo {
        let hash: String = std::iter::repeat_n(hash_letter, 32).collect();
        PathInfo {
            path: StorePath::parse(&format!("/nix/store/{hash}-{name}"))
                .unwrap(),
            nar_hash: String::new(),
            nar_size: size,
            references: Vec::new(),
        }
    }

    #[test]
    fn output_suffixes_are_grouped() {
        assert_eq!(package_name("openssl-3.0.15-bin"), ("openssl", "3.0.15"));
        assert_eq!(package_name("openssl-3.0.15"), ("openssl", "3.0.15"));
        assert_eq!(package_name("firewall-start"), ("firewall-start", ""));
        assert_eq!(
            package_name("linux-6.6.63-modules"),
            ("linux", "6.6.63-modules")
        );
    }

    #[test]
    fn closures_compared_by_name() {
        let old = [
            info("hello-2.12.1", 'a', 100),
            info("gone-1.0", 'b', 50),
            info("same-1.0", 'c', 10),
            info("patched-2.0", 'd', 20),
            info("unit-sshd.service", 'f', 1),
        ];
        let new = [
            info("hello-2.12.2", 'g', 120),
            info("fresh-0.1", 'h', 30),
            info("same-1.0", 'c', 10),
            info("patched-2.0", 'i', 25),
            info("unit-sshd.service", 'j', 1),
        ];
        let diff = diff_closures(&old, &new);
        assert_eq!(diff.old_closure_size, 181);
        assert_eq!(diff.new_closure_size, 186);
        assert_eq!(diff.closure_size_delta, 5);
        assert_eq!(diff.added.len(), 1);
        assert_eq!(diff.added[0].name, "fresh");
        assert_eq!(diff.removed.len(), 1);
        assert_eq!(diff.removed[0].name, "gone");
        assert_eq!(
            diff.version_changes,
            [VersionChange {
                name: "hello".into(),
                old_versions: vec!["2.12.1".into()],
                new_versions: vec!["2.12.2".into()],
                size_delta: 20,
            }]
        );
        assert_eq!(diff.rebuilt.len(), 1);
        assert_eq!(diff.rebuilt[0].name, "patched");
        assert_eq!(diff.rebuilt[0].size_delta, 5);
        assert_eq!(diff.regenerated, ["unit-sshd.service"]);
    }

    #[test]
    fn empty_old_closure_adds_everything() {
        let new = [info("hello-2.12.1", 'a', 100)];
        let diff = diff_closures(&[], &new);
        assert_eq!(diff.added.len(), 1);
        assert_eq!(diff.closure_size_delta, 100);
    }
}
