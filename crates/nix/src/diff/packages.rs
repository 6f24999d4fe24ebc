//! The package part of the diff: the two systems' closures grouped by
//! package name.
//!
//! Names and versions follow Nix's `builtins.parseDrvName`, after an
//! output suffix such as `-bin` or `-dev` is folded away, so the outputs
//! of one package count as one package. Versions are ordered with the
//! rules of `builtins.compareVersions`, which marks downgrades.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use countersign_core::StorePath;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::alerts::{Alert, AlertKind, Severity};
use crate::closure::{ClosurePair, Side};
use crate::drv_name::parse_drv_name;
use crate::error::Result;
use crate::nix::{Nix, PathInfo};
use crate::store_db;

/// Output names that Nix packages split into. A store name ending in
/// `-<one of these>` after a version is folded into its package, so that
/// `openssl-3.3.2-bin` and `openssl-3.3.2` count as one package with
/// the outputs `bin` and `out`. Other trailing words are kept, because
/// in names such as `firewall-start` they are part of the name.
/// `modules` is here for the kernel's `linux-<version>-modules`.
pub const OUTPUT_NAMES: &[&str] = &[
    "bin", "dev", "devdoc", "doc", "info", "lib", "lib32", "lib64", "man",
    "out", "debug", "static", "dist", "modules", "python", "headers",
];

/// How many packages [`PackageDiff::largest_size_changes`] lists.
pub const SIZE_CHANGES_LISTED: usize = 10;

/// How many rebuilds become alerts at most; further ones are counted in
/// one last alert.
pub const MAX_REBUILD_ALERTS: usize = 20;

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
    /// Packages that have one version (and output) at more than one
    /// store path in the new closure: two builds of the same thing.
    pub duplicated: Vec<Duplicate>,
    /// Names without a version (generated files such as units or
    /// `etc-*` entries) whose store paths changed. Their contents are
    /// compared in the system part of the diff.
    pub regenerated: Vec<String>,
    /// The packages whose size changed most, largest change first, so
    /// that the closure's size change is explained.
    pub largest_size_changes: Vec<SizeChange>,
}

/// A package and the versions of it in one closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageVersions {
    pub name: String,
    /// In `builtins.compareVersions` order; an empty string stands for
    /// a name without a version.
    pub versions: Vec<String>,
    /// Output names, `out` for a path without a suffix.
    pub outputs: Vec<String>,
    /// Sum of the NAR sizes of its paths, in bytes.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionChange {
    pub name: String,
    pub old_versions: Vec<String>,
    pub new_versions: Vec<String>,
    /// Whether the newest new version is older than the newest old one.
    pub downgrade: bool,
    pub old_size: u64,
    pub new_size: u64,
    pub size_delta: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuild {
    pub name: String,
    pub versions: Vec<String>,
    pub size_delta: i64,
    /// Whether every path of the package references exactly the same
    /// store paths as before, so that no runtime dependency explains
    /// the rebuild (an overlay patch, `overrideAttrs` or a changed build
    /// tool).
    pub unexplained: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub name: String,
    pub version: String,
    pub output: String,
    pub old_paths: usize,
    pub new_paths: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeChange {
    pub name: String,
    pub size_delta: i64,
}

/// Compares the closures of two systems. The closures come from the Nix
/// database when it can be read directly, otherwise from `nix
/// path-info --recursive`.
pub fn package_diff(
    nix: &Nix,
    old: &StorePath,
    new: &StorePath,
) -> Result<PackageDiff> {
    Ok(diff_pair(&store_db::closure_pair(nix, Some(old), new)?))
}

/// One package's paths in one closure: version, output and index of
/// each path, and their total size.
#[derive(Default)]
struct Group<'a> {
    paths: Vec<(&'a str, &'a str, usize)>,
    size: u64,
}

impl Group<'_> {
    /// The distinct versions, in `builtins.compareVersions` order, with
    /// equal-ranking spellings such as `1.0` and `1.00` kept apart.
    fn version_list(&self) -> Vec<&str> {
        let mut versions: Vec<&str> =
            self.paths.iter().map(|(version, _, _)| *version).collect();
        versions.sort_unstable();
        versions.dedup();
        versions.sort_by(|a, b| compare_versions(a, b));
        versions
    }

    fn versions(&self) -> Vec<String> {
        self.version_list().into_iter().map(str::to_owned).collect()
    }

    fn outputs(&self) -> Vec<String> {
        let unique: BTreeSet<&str> =
            self.paths.iter().map(|(_, output, _)| *output).collect();
        unique.into_iter().map(str::to_owned).collect()
    }

    fn describe(&self, name: &str) -> PackageVersions {
        PackageVersions {
            name: name.to_owned(),
            versions: self.versions(),
            outputs: self.outputs(),
            size: self.size,
        }
    }
}

/// Compares two closures that were already queried. An empty `old`
/// makes every package added.
pub fn diff_closures(old: &[PathInfo], new: &[PathInfo]) -> PackageDiff {
    diff_pair(&ClosurePair::from_path_infos(old, new))
}

/// Compares the two closures of a pair.
///
/// Only packages with a store path in one closure and not the other
/// can have changed, and in a system update those are a small part of
/// the closure, so only their names are grouped and compared.
pub fn diff_pair(pair: &ClosurePair) -> PackageDiff {
    let names: Vec<(&str, &str, Option<&str>)> = (0..pair.len())
        .map(|at| split_name(pair.name(at)))
        .collect();
    let mut changed_names: FxHashSet<&str> = FxHashSet::default();
    let mut old_closure_size = 0u64;
    let mut new_closure_size = 0u64;
    let (mut old_path_count, mut new_path_count) = (0usize, 0usize);
    for (at, side) in pair.sides.iter().enumerate() {
        if side.in_old() {
            old_closure_size += pair.sizes[at];
            old_path_count += 1;
        }
        if side.in_new() {
            new_closure_size += pair.sizes[at];
            new_path_count += 1;
        }
        if *side != Side::Both {
            changed_names.insert(names[at].0);
        }
    }
    let mut old_groups: FxHashMap<&str, Group<'_>> = FxHashMap::default();
    let mut new_groups: FxHashMap<&str, Group<'_>> = FxHashMap::default();
    let mut counts: FxHashMap<(&str, &str, &str), (usize, usize)> =
        FxHashMap::default();
    for (at, side) in pair.sides.iter().enumerate() {
        let (name, version, output) = names[at];
        let output = output.unwrap_or("out");
        let count = counts.entry((name, version, output)).or_default();
        if side.in_old() {
            count.0 += 1;
        }
        if side.in_new() {
            count.1 += 1;
        }
        if !changed_names.contains(name) {
            continue;
        }
        for (present, groups) in [
            (side.in_old(), &mut old_groups),
            (side.in_new(), &mut new_groups),
        ] {
            if present {
                let group = groups.entry(name).or_default();
                group.paths.push((version, output, at));
                group.size += pair.sizes[at];
            }
        }
    }
    let mut duplicated: Vec<Duplicate> = counts
        .into_iter()
        .filter(|(_, (_, new))| *new > 1)
        .map(|((name, version, output), (old, new))| Duplicate {
            name: name.to_owned(),
            version: version.to_owned(),
            output: output.to_owned(),
            old_paths: old,
            new_paths: new,
        })
        .collect();
    duplicated.sort_by(|a, b| {
        (&a.name, &a.version, &a.output).cmp(&(&b.name, &b.version, &b.output))
    });
    let mut diff = PackageDiff {
        old_closure_size,
        new_closure_size,
        closure_size_delta: delta(old_closure_size, new_closure_size),
        old_path_count,
        new_path_count,
        added: Vec::new(),
        removed: Vec::new(),
        version_changes: Vec::new(),
        rebuilt: Vec::new(),
        duplicated,
        regenerated: Vec::new(),
        largest_size_changes: Vec::new(),
    };
    let mut changed_names: Vec<&str> = changed_names.into_iter().collect();
    changed_names.sort_unstable();
    let mut size_changes = Vec::new();
    for name in &changed_names {
        let before = old_groups.get(name);
        let after = new_groups.get(name);
        let size_delta =
            delta(before.map_or(0, |g| g.size), after.map_or(0, |g| g.size));
        if size_delta != 0 {
            size_changes.push(SizeChange {
                name: (*name).to_owned(),
                size_delta,
            });
        }
        let name = (*name).to_owned();
        match (before, after) {
            (None, Some(group)) => diff.added.push(group.describe(&name)),
            (Some(group), None) => diff.removed.push(group.describe(&name)),
            (Some(before), Some(after)) => {
                let (old_list, new_list) =
                    (before.version_list(), after.version_list());
                if old_list != new_list {
                    let owned = |list: Vec<&str>| -> Vec<String> {
                        list.into_iter().map(str::to_owned).collect()
                    };
                    let (old_versions, new_versions) =
                        (owned(old_list), owned(new_list));
                    let downgrade =
                        match (old_versions.last(), new_versions.last()) {
                            (Some(old), Some(new)) => {
                                compare_versions(new, old) == Ordering::Less
                            }
                            _ => false,
                        };
                    diff.version_changes.push(VersionChange {
                        name,
                        old_versions,
                        new_versions,
                        downgrade,
                        old_size: before.size,
                        new_size: after.size,
                        size_delta,
                    });
                } else if new_list.iter().all(|v| v.is_empty()) {
                    diff.regenerated.push(name);
                } else {
                    let unexplained = same_references(pair, before, after);
                    diff.rebuilt.push(Rebuild {
                        name,
                        versions: after.versions(),
                        size_delta,
                        unexplained,
                    });
                }
            }
            (None, None) => {}
        }
    }
    size_changes.sort_by(|a, b| {
        b.size_delta
            .unsigned_abs()
            .cmp(&a.size_delta.unsigned_abs())
            .then_with(|| a.name.cmp(&b.name))
    });
    size_changes.truncate(SIZE_CHANGES_LISTED);
    diff.largest_size_changes = size_changes;
    diff
}

/// Tells whether a rebuilt package's paths reference the same store
/// paths (apart from each other) before and after. Both closures index
/// one list of paths, so equal indices are equal paths.
fn same_references(
    pair: &ClosurePair,
    before: &Group<'_>,
    after: &Group<'_>,
) -> bool {
    let outside = |group: &Group<'_>| -> Vec<u32> {
        let own = || group.paths.iter().map(|p| p.2 as u32);
        let mut references: Vec<u32> = own()
            .flat_map(|at| &pair.references[at as usize])
            .copied()
            .filter(|&r| !own().any(|at| at == r))
            .collect();
        references.sort_unstable();
        references.dedup();
        references
    };
    outside(before) == outside(after)
}

/// Splits a store name into package name, version and output: the
/// output suffix (one of [`OUTPUT_NAMES`], after a version) is removed
/// first, then the rest is split by `builtins.parseDrvName`'s rule.
pub fn split_name(store_name: &str) -> (&str, &str, Option<&str>) {
    if let Some((base, output)) = store_name.rsplit_once('-')
        && OUTPUT_NAMES.contains(&output)
    {
        let (name, version) = parse_drv_name(base);
        if !version.is_empty() {
            return (name, version, Some(output));
        }
    }
    let (name, version) = parse_drv_name(store_name);
    (name, version, None)
}

/// The package name and version of a store name, with a known output
/// suffix such as `-bin` or `-dev` removed first.
pub fn package_name(store_name: &str) -> (&str, &str) {
    let (name, version, _) = split_name(store_name);
    (name, version)
}

/// Orders two versions the way `builtins.compareVersions` does. Both
/// are split into components at `.` and `-` and between runs of digits
/// and of other characters. Two numbers compare as numbers. Otherwise
/// an empty component is lower than a number, `pre` is lower than
/// anything else, a number is higher than a word, and two words compare
/// as strings. A missing component counts as empty.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut left = Components::new(a);
    let mut right = Components::new(b);
    loop {
        if left.done() && right.done() {
            return Ordering::Equal;
        }
        let (x, y) = (left.next_component(), right.next_component());
        if component_less(x, y) {
            return Ordering::Less;
        }
        if component_less(y, x) {
            return Ordering::Greater;
        }
    }
}

struct Components<'a> {
    rest: &'a str,
}

impl<'a> Components<'a> {
    fn new(text: &'a str) -> Self {
        Self { rest: text }
    }

    fn done(&self) -> bool {
        self.rest.is_empty()
    }

    fn next_component(&mut self) -> &'a str {
        self.rest = self.rest.trim_start_matches(['.', '-']);
        let Some(first) = self.rest.chars().next() else {
            return "";
        };
        let end = if first.is_ascii_digit() {
            self.rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(self.rest.len())
        } else {
            self.rest
                .find(|c: char| c.is_ascii_digit() || c == '.' || c == '-')
                .unwrap_or(self.rest.len())
        };
        let (component, rest) = self.rest.split_at(end);
        self.rest = rest;
        component
    }
}

fn component_less(a: &str, b: &str) -> bool {
    let number = |text: &str| {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse::<u64>().ok()
        } else {
            None
        }
    };
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x < y,
        (_, Some(_)) if a.is_empty() => true,
        _ if a == "pre" && b != "pre" => true,
        _ if b == "pre" => false,
        (_, Some(_)) => true,
        (Some(_), _) => false,
        _ => a < b,
    }
}

/// Alerts from the package part: downgrades, and rebuilds that no
/// changed runtime dependency explains.
pub fn package_alerts(diff: &PackageDiff) -> Vec<Alert> {
    let mut alerts = Vec::new();
    for change in diff.version_changes.iter().filter(|c| c.downgrade) {
        alerts.push(Alert {
            kind: AlertKind::PackageDowngraded,
            severity: Severity::Medium,
            subject: format!("package {}", change.name),
            detail: format!(
                "version goes back from {} to {}",
                change.old_versions.join(", "),
                change.new_versions.join(", ")
            ),
        });
    }
    let unexplained: Vec<&Rebuild> =
        diff.rebuilt.iter().filter(|r| r.unexplained).collect();
    for rebuild in unexplained.iter().take(MAX_REBUILD_ALERTS) {
        alerts.push(Alert {
            kind: AlertKind::PackageRebuilt,
            severity: Severity::Low,
            subject: format!("package {}", rebuild.name),
            detail: format!(
                "{} rebuilt with the same version and the same runtime \
                 dependencies: its build inputs changed (a patch, an \
                 override or a build tool)",
                rebuild.versions.join(", ")
            ),
        });
    }
    if unexplained.len() > MAX_REBUILD_ALERTS {
        alerts.push(Alert {
            kind: AlertKind::PackageRebuilt,
            severity: Severity::Low,
            subject: "packages".to_owned(),
            detail: format!(
                "{} more packages rebuilt without a changed runtime \
                 dependency",
                unexplained.len() - MAX_REBUILD_ALERTS
            ),
        });
    }
    alerts
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
    fn names_of_real_store_paths() {
        // Store names from NixOS closures: name, version, output.
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            ("hello-2.12.1", "hello", "2.12.1", None),
            ("openssl-3.0.15-bin", "openssl", "3.0.15", Some("bin")),
            ("openssl-3.0.15", "openssl", "3.0.15", None),
            ("openssl-3.0.15-dev", "openssl", "3.0.15", Some("dev")),
            ("gcc-13.3.0-lib", "gcc", "13.3.0", Some("lib")),
            ("glibc-2.40-66", "glibc", "2.40-66", None),
            ("glibc-2.40-66-bin", "glibc", "2.40-66", Some("bin")),
            ("linux-6.6.63-modules", "linux", "6.6.63", Some("modules")),
            (
                "python3.12-requests-2.32.3",
                "python3.12-requests",
                "2.32.3",
                None,
            ),
            ("python3-3.12.8-env", "python3", "3.12.8-env", None),
            ("perl5.40.0-JSON-4.10", "perl5.40.0-JSON", "4.10", None),
            ("apache-httpd-2.0.48", "apache-httpd", "2.0.48", None),
            ("firewall-start", "firewall-start", "", None),
            (
                "unit-script-sshd-keygen-start",
                "unit-script-sshd-keygen-start",
                "",
                None,
            ),
            ("users-groups.json", "users-groups.json", "", None),
            ("etc-man_db.conf", "etc-man_db.conf", "", None),
            ("system-path", "system-path", "", None),
            ("foo-bin", "foo-bin", "", None),
            (
                "nixos-system-web-25.05.20250101.abcdef0",
                "nixos-system-web",
                "25.05.20250101.abcdef0",
                None,
            ),
            ("bash-5.2p37", "bash", "5.2p37", None),
            (
                "bash-interactive-5.2p37-man",
                "bash-interactive",
                "5.2p37",
                Some("man"),
            ),
            ("libedit-20240808-3.1", "libedit", "20240808-3.1", None),
            ("source", "source", "", None),
            ("xz-5.6.3-doc", "xz", "5.6.3", Some("doc")),
            (
                "util-linux-minimal-2.40.2-lib",
                "util-linux-minimal",
                "2.40.2",
                Some("lib"),
            ),
        ];
        for (store_name, name, version, output) in cases {
            assert_eq!(
                split_name(store_name),
                (*name, *version, *output),
                "{store_name}"
            );
        }
    }

    #[test]
    fn compare_versions_table() {
        use Ordering::{Equal, Greater, Less};
        // Pairs as `builtins.compareVersions a b` orders them.
        let cases = [
            ("1.0", "2.3", Less),
            ("2.1", "2.3", Less),
            ("2.3", "2.3", Equal),
            ("2.5", "2.3", Greater),
            ("3.1", "2.3", Greater),
            ("2.3.1", "2.3", Greater),
            ("2.3.1", "2.3a", Greater),
            ("2.3pre1", "2.3", Less),
            ("2.3pre3", "2.3pre12", Less),
            ("2.3a", "2.3c", Less),
            ("2.3pre1", "2.3c", Less),
            ("2.3pre1", "2.3q", Less),
            ("9.9p1", "9.9p2", Less),
            ("9.9p1", "10.0p1", Less),
            ("6.6.63", "6.6.9", Greater),
            ("1.2.3", "1.2.3-rc1", Less),
            ("2.40-66", "2.40-65", Greater),
            ("20240905", "20240906", Less),
            ("1.0", "1.0.0", Less),
            ("", "1", Less),
            ("a", "1", Less),
            ("1.10", "1.9", Greater),
            ("25.05.20250601", "24.11.20241231", Greater),
        ];
        for (a, b, expected) in cases {
            assert_eq!(compare_versions(a, b), expected, "{a} vs {b}");
            assert_eq!(
                compare_versions(b, a),
                expected.reverse(),
                "{b} vs {a}"
            );
        }
    }

    #[test]
    fn closures_compared_by_name() {
        let old = [
            info("hello-2.12.1", 'a', 100),
            info("gone-1.0", 'b', 50),
            info("same-1.0", 'c', 10),
            info("patched-2.0", 'd', 20),
            info("unit-sshd.service", 'f', 1),
            info("openssl-3.0.15", 'k', 5),
            info("openssl-3.0.15-bin", 'l', 5),
            info("zlib-1.3.1", 'm', 7),
        ];
        let new = [
            info("hello-2.12.2", 'g', 120),
            info("fresh-0.1", 'h', 30),
            info("same-1.0", 'c', 10),
            info("patched-2.0", 'i', 25),
            info("unit-sshd.service", 'j', 1),
            info("openssl-3.0.14", 'n', 5),
            info("openssl-3.0.14-bin", 'p', 5),
            info("zlib-1.3.1", 'm', 7),
            info("zlib-1.3.1", 'q', 8),
        ];
        let diff = diff_closures(&old, &new);
        assert_eq!(diff.old_closure_size, 198);
        assert_eq!(diff.closure_size_delta, 13);
        assert_eq!(diff.added.len(), 1);
        assert_eq!(diff.added[0].name, "fresh");
        assert_eq!(diff.removed[0].name, "gone");
        let hello = &diff.version_changes[0];
        assert_eq!(hello.name, "hello");
        assert!(!hello.downgrade);
        assert_eq!(hello.size_delta, 20);
        let openssl = diff
            .version_changes
            .iter()
            .find(|c| c.name == "openssl")
            .unwrap();
        assert!(openssl.downgrade);
        assert_eq!(openssl.old_versions, ["3.0.15"]);
        let rebuilt: Vec<&str> =
            diff.rebuilt.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(rebuilt, ["patched", "zlib"]);
        assert!(diff.rebuilt[0].unexplained);
        assert_eq!(diff.regenerated, ["unit-sshd.service"]);
        assert_eq!(
            diff.duplicated,
            [Duplicate {
                name: "zlib".into(),
                version: "1.3.1".into(),
                output: "out".into(),
                old_paths: 1,
                new_paths: 2,
            }]
        );
        assert_eq!(diff.largest_size_changes[0].name, "gone");
        let alerts = package_alerts(&diff);
        assert!(alerts.iter().any(|a| a.kind == AlertKind::PackageDowngraded
            && a.subject == "package openssl"));
        assert!(alerts.iter().any(|a| a.kind == AlertKind::PackageRebuilt
            && a.subject == "package patched"));
    }

    #[test]
    fn rebuild_explained_by_a_changed_dependency() {
        let dependency_old = info("libfoo-1.0", 'a', 1);
        let dependency_new = info("libfoo-1.1", 'b', 1);
        let mut user_old = info("tool-2.0", 'c', 1);
        user_old.references = vec![dependency_old.path.clone()];
        let mut user_new = info("tool-2.0", 'd', 1);
        user_new.references = vec![dependency_new.path.clone()];
        let diff = diff_closures(
            &[dependency_old, user_old],
            &[dependency_new, user_new],
        );
        assert_eq!(diff.rebuilt.len(), 1);
        assert!(!diff.rebuilt[0].unexplained);
        assert!(package_alerts(&diff).is_empty());
    }

    #[test]
    fn empty_old_closure_adds_everything() {
        let new = [info("hello-2.12.1", 'a', 100)];
        let diff = diff_closures(&[], &new);
        assert_eq!(diff.added.len(), 1);
        assert_eq!(diff.closure_size_delta, 100);
    }
}
