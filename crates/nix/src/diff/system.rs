//! The system part of the diff: what changes on the machine, read from
//! the two toplevels' files.
//!
//! Nothing of the candidate is executed. Files are reached through
//! [`crate::store_read::resolve`], so a symbolic link that leaves the
//! store is reported with its target text and never opened.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use countersign_core::{Sha256Digest, StorePath};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::alerts::Alert;
use super::bootspec::{BootspecDiff, bootspec_diff};
use super::checks;
use super::initrd::{InitrdComparison, InitrdDiff, compare_initrds};
use super::redact::redact_secrets;
use super::reduce::{VersionBump, reduce_store_paths, version_bumps};
use super::references::{newly_named, regenerated_pairs};
use super::text::{Hunk, as_text, diff_lines};
use super::unit_file::{DirectiveChange, UnitFile, directive_changes};
use crate::error::{Error, Result};
use crate::store_read::{Resolved, read_dir_sorted, read_limited, resolve};

/// Files up to this size get a text diff.
pub const MAX_DIFF_BYTES: u64 = 64 * 1024;

/// Files up to this size are compared by content; larger ones by their
/// location in the store.
pub const MAX_HASH_BYTES: u64 = 64 * 1024 * 1024;

/// Maximum entries read from one tree, and maximum directory depth.
pub const MAX_TREE_ENTRIES: usize = 20_000;
pub const MAX_TREE_DEPTH: usize = 16;

/// Maximum entries read from one store path that a text names.
pub const MAX_REFERENCED_ENTRIES: usize = 200;

/// How many levels of named store paths are followed: a unit's script
/// is level 1, a script that the script names is level 2, and so on.
pub const MAX_REFERENCE_DEPTH: usize = 3;

/// The directory of systemd system units below `etc`.
const UNIT_DIR: &str = "systemd/system/";

/// The changes to the files of the machine's system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemDiff {
    /// The running system, when there is one.
    pub old_system: Option<StorePath>,
    pub new_system: StorePath,
    /// Entries of the toplevel itself, such as `kernel`, `initrd`,
    /// `kernel-params`, `activate` and `bin/switch-to-configuration`.
    pub toplevel: Vec<EntryChange>,
    /// systemd units and their `.wants` links, named relative to
    /// `/etc/systemd/system`.
    pub units: Vec<EntryChange>,
    /// Every other `/etc` entry, named relative to `/etc`.
    pub etc: Vec<EntryChange>,
    pub specialisations: Vec<SpecialisationChange>,
    /// The changes of `boot.json` and where the new one disagrees with
    /// the system's files; absent when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootspec: Option<BootspecDiff>,
    /// The files of the initrd, read when the `initrd` link changed and
    /// there is an old system; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<InitrdDiff>,
    /// Alerts about this system's own files, most severe first; those
    /// of specialisations are in their own diffs.
    pub alerts: Vec<Alert>,
    /// Whether a tree had more than [`MAX_TREE_ENTRIES`] entries or was
    /// deeper than [`MAX_TREE_DEPTH`], so some changes may be missing.
    pub truncated: bool,
}

/// One added, removed or changed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryChange {
    pub path: String,
    pub status: ChangeStatus,
    pub old: Option<Node>,
    pub new: Option<Node>,
    /// Text diff, for files of at most [`MAX_DIFF_BYTES`] that are text
    /// on both sides (an added or removed file diffs against nothing).
    pub hunks: Option<Vec<Hunk>>,
    pub lines_added: Option<u64>,
    pub lines_removed: Option<u64>,
    /// Whether the texts are the same once every store path is reduced
    /// to its package name (see [`reduce_store_paths`]), and no generated
    /// file they name changed either: a package update or rebuild, which
    /// raises no alert.
    pub only_store_paths_changed: bool,
    /// Packages named in both texts with another version.
    pub version_bumps: Vec<VersionBump>,
    /// For a systemd unit file or drop-in that is a file on both sides
    /// or on one, the directives that differ, with store paths reduced.
    /// Empty for other entries, and absent from the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directives: Vec<DirectiveChange>,
    /// Changes inside generated, version-less store paths that the text
    /// names, such as a unit's `unit-script-*`, and the content of such
    /// paths that only the new text names. Their paths start with the
    /// store name, as in `unit-script-sshd-start/bin/sshd-start`.
    pub referenced: Vec<EntryChange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeStatus {
    Added,
    Removed,
    Changed,
}

/// The kind and identity of one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Node {
    /// A regular file; `location` is its path in the store after links
    /// were resolved. `sha256` is absent above [`MAX_HASH_BYTES`].
    File {
        location: String,
        size: u64,
        executable: bool,
        sha256: Option<String>,
    },
    /// A link into the store, compared by target. Used for toplevel
    /// entries such as `kernel` and `sw`.
    StoreLink { target: String },
    /// A relative link within the same tree, such as a unit's `.wants`
    /// entry, compared by its text.
    RelativeLink { target: String },
    /// A link whose target leaves the store. The target was not opened.
    OutsideLink { target: String },
    /// A link that dangles.
    Missing,
    /// A chain of more links than [`crate::store_read::MAX_HOPS`].
    TooManyHops,
    /// A socket, device or pipe.
    Special,
}

/// A specialisation (`specialisation/<name>`, a complete system of its
/// own) that was added, removed or changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialisationChange {
    pub name: String,
    pub status: ChangeStatus,
    /// For a changed specialisation, the diff between its two versions.
    /// For an added one, the diff from the new main system to it.
    pub diff: Option<Box<SystemDiff>>,
}

/// Compares the system `old` (the running one) with `new` (the
/// candidate) by reading their files.
pub fn system_diff(old: &StorePath, new: &StorePath) -> Result<SystemDiff> {
    diff_systems(Some(old), new, true)
}

/// Like [`system_diff`], with no running system to compare with: every
/// entry of `new` is added.
pub fn system_diff_from_nothing(new: &StorePath) -> Result<SystemDiff> {
    diff_systems(None, new, true)
}

fn diff_systems(
    old: Option<&StorePath>,
    new: &StorePath,
    with_specialisations: bool,
) -> Result<SystemDiff> {
    let before = match old {
        Some(system) => SystemFiles::read(system)?,
        None => SystemFiles::default(),
    };
    let after = SystemFiles::read(new)?;

    let specialisations = if with_specialisations {
        diff_specialisations(
            &before.specialisations,
            &after.specialisations,
            new,
        )?
    } else {
        Vec::new()
    };
    let toplevel = compare(&before.toplevel, &after.toplevel, 0)?;
    let initrd =
        if old.is_some() && toplevel.iter().any(|c| c.path == "initrd") {
            compare_initrds(
                before.toplevel.get("initrd"),
                after.toplevel.get("initrd"),
            )?
        } else {
            InitrdComparison::default()
        };
    let mut diff = SystemDiff {
        old_system: old.cloned(),
        new_system: new.clone(),
        toplevel,
        units: unit_changes(&before.units, &after.units)?,
        etc: compare(&before.etc, &after.etc, 0)?,
        specialisations,
        bootspec: bootspec_diff(&before, &after, new)?.filter(|diff| {
            !diff.changes.is_empty()
                || !diff.mismatches.is_empty()
                || diff.old_present != diff.new_present
        }),
        initrd: initrd.diff,
        alerts: Vec::new(),
        truncated: before.truncated || after.truncated,
    };
    diff.alerts = checks::run(&before, &after, &diff, &initrd.details)?;
    Ok(diff)
}

/// The entries of one system, keyed by path. An absent system (a first
/// deployment) has no entries.
#[derive(Default)]
pub(super) struct SystemFiles {
    /// Entries of the toplevel itself, such as `kernel` or `activate`.
    pub toplevel: BTreeMap<String, Node>,
    /// Entries below `/etc/systemd/system`, by name relative to it.
    pub units: BTreeMap<String, Node>,
    /// Every other `/etc` entry, relative to `/etc`.
    pub etc: BTreeMap<String, Node>,
    pub specialisations: BTreeMap<String, Node>,
    pub truncated: bool,
}

impl SystemFiles {
    fn read(system: &StorePath) -> Result<Self> {
        // A store path may itself be a link; a toplevel never is, and
        // reading through one would follow it unchecked.
        match resolve(system.as_path())? {
            Resolved::Directory { path } if path == system.as_path() => {}
            _ => {
                return Err(Error::invalid(
                    "system",
                    system.as_str(),
                    "is not a directory in the store",
                ));
            }
        }
        let mut files = Self::default();
        let mut walk = Walk::default();

        // The toplevel's own entries: links are leaves, compared by
        // target, except `etc` and `specialisation`, read below.
        for name in read_dir_sorted(system.as_path())? {
            if name == "etc" || name == "specialisation" {
                continue;
            }
            let path = system.as_path().join(&name);
            walk.leaf_or_dir(&path, &name, 0, &mut files.toplevel)?;
        }

        // Only the unit tree's relative links (aliases and enabling
        // links) are compared as links. Elsewhere in `/etc` a program
        // reads what the link points to, which may be another store
        // path, so that is what the checks must read.
        walk.keeps_relative_link = |key| key.starts_with(UNIT_DIR);
        let mut etc = BTreeMap::new();
        match resolve(&system.as_path().join("etc"))? {
            Resolved::Directory { path } => {
                walk.followed(&path, "", 0, &mut etc)?;
            }
            Resolved::Missing => {}
            other => {
                files.toplevel.insert("etc".to_owned(), node_of(other)?);
            }
        }
        for (path, node) in etc {
            match path.strip_prefix(UNIT_DIR) {
                Some(unit) => {
                    files.units.insert(unit.to_owned(), node);
                }
                None => {
                    files.etc.insert(path, node);
                }
            }
        }

        let specialisation_dir = system.as_path().join("specialisation");
        if let Resolved::Directory { path } = resolve(&specialisation_dir)? {
            for name in read_dir_sorted(&path)? {
                let node = leaf(&path.join(&name))?;
                files.specialisations.insert(name, node);
            }
        }
        files.truncated = walk.truncated;
        Ok(files)
    }

    /// Reads the text of the `/etc` file `path`, if it is a text file of at
    /// most [`MAX_READ_BYTES`].
    pub fn etc_text(&self, path: &str) -> Result<Option<String>> {
        self.etc.get(path).map_or(Ok(None), node_text)
    }

    /// Reads the text of the unit `name` below `/etc/systemd/system`, see
    /// [`unit_node_text`].
    pub fn unit_text(&self, name: &str) -> Result<Option<String>> {
        self.units.get(name).map_or(Ok(None), unit_node_text)
    }

    /// Reads the text of the toplevel entry `name`, such as `activate`.
    pub fn toplevel_text(&self, name: &str) -> Result<Option<String>> {
        self.toplevel.get(name).map_or(Ok(None), node_text)
    }

    /// Lists the `/etc` paths that start with `prefix`, sidecars left out.
    pub fn etc_paths_under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a String> + 'a {
        self.etc.keys().filter(move |path| {
            path.starts_with(prefix) && sidecar_base(path).is_none()
        })
    }
}

/// For a sidecar path such as `sudoers.mode`, the file it describes and
/// the sidecar's kind.
pub(super) fn sidecar_base(path: &str) -> Option<(&str, &str)> {
    ["mode", "uid", "gid"].iter().find_map(|suffix| {
        path.strip_suffix(suffix)
            .and_then(|rest| rest.strip_suffix('.'))
            .map(|base| (base, *suffix))
    })
}

/// Files up to this size are read for the checks behind the alerts.
pub const MAX_READ_BYTES: u64 = 1024 * 1024;

/// Reads the text of a file node of at most [`MAX_READ_BYTES`]; `None` for
/// other nodes, larger files and binary files.
pub(super) fn node_text(node: &Node) -> Result<Option<String>> {
    let Node::File { location, size, .. } = node else {
        return Ok(None);
    };
    if *size > MAX_READ_BYTES {
        return Ok(None);
    }
    let (bytes, _) = read_limited(Path::new(location), MAX_READ_BYTES)?;
    Ok(as_text(&bytes).map(str::to_owned))
}

/// Reads a unit file or drop-in the way systemd reads one, which is
/// never as binary: a NUL byte stays in the text because it ends a line
/// there, and bytes that are not UTF-8 become U+FFFD. `None` when the
/// node is not a file or is larger than [`MAX_READ_BYTES`].
pub(super) fn unit_node_text(node: &Node) -> Result<Option<String>> {
    let Node::File { location, size, .. } = node else {
        return Ok(None);
    };
    if *size > MAX_READ_BYTES {
        return Ok(None);
    }
    let (bytes, _) = read_limited(Path::new(location), MAX_READ_BYTES)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Reads the text of a file inside a store path, such as
/// `<path>/bin/firewall-start`, without following links out of the
/// store. `None` when it is missing, not a file, too large or binary.
pub(super) fn store_file_text(
    path: &StorePath,
    inside: &str,
) -> Result<Option<String>> {
    let full = if inside.is_empty() {
        path.as_path().to_owned()
    } else {
        path.as_path().join(inside)
    };
    match resolve(&full)? {
        Resolved::File { path, size, .. } if size <= MAX_READ_BYTES => {
            let (bytes, _) = read_limited(&path, MAX_READ_BYTES)?;
            Ok(as_text(&bytes).map(str::to_owned))
        }
        _ => Ok(None),
    }
}

/// Reads up to [`MAX_READ_BYTES`] of a file inside a store path as
/// bytes, for files that may be binary such as a wrapper.
pub(super) fn store_file_bytes(
    path: &StorePath,
    inside: &str,
) -> Result<Option<Vec<u8>>> {
    match resolve(&path.as_path().join(inside))? {
        Resolved::File { path, .. } => {
            Ok(Some(read_limited(&path, MAX_READ_BYTES)?.0))
        }
        _ => Ok(None),
    }
}

struct Walk {
    entries: usize,
    limit: usize,
    truncated: bool,
    /// Tells, by key, where a relative link is compared by its text.
    /// Elsewhere the link is read as what it points to.
    keeps_relative_link: fn(&str) -> bool,
}

impl Default for Walk {
    fn default() -> Self {
        Self::with_limit(MAX_TREE_ENTRIES)
    }
}

impl Walk {
    fn with_limit(limit: usize) -> Self {
        Self {
            entries: 0,
            limit,
            truncated: false,
            keeps_relative_link: |_| true,
        }
    }

    /// Reads a tree whose links are followed (the `etc` tree): a link to
    /// a store directory is read as that directory.
    fn followed(
        &mut self,
        dir: &Path,
        prefix: &str,
        depth: usize,
        out: &mut BTreeMap<String, Node>,
    ) -> Result<()> {
        if depth > MAX_TREE_DEPTH {
            self.truncated = true;
            return Ok(());
        }
        for name in read_dir_sorted(dir)? {
            if !self.count() {
                return Ok(());
            }
            let key = format!("{prefix}{name}");
            let entry = dir.join(&name);
            let resolved = resolve(&entry)?;
            if (self.keeps_relative_link)(&key)
                && let Some(target) = relative_link(&entry, &resolved)?
            {
                out.insert(key, Node::RelativeLink { target });
                continue;
            }
            match resolved {
                Resolved::Directory { path } => {
                    self.followed(&path, &format!("{key}/"), depth + 1, out)?;
                }
                other => {
                    out.insert(key, node_of(other)?);
                }
            }
        }
        Ok(())
    }

    /// Reads a toplevel entry: a real directory is read entry by entry,
    /// anything else is one leaf.
    fn leaf_or_dir(
        &mut self,
        path: &Path,
        key: &str,
        depth: usize,
        out: &mut BTreeMap<String, Node>,
    ) -> Result<()> {
        if !self.count() {
            return Ok(());
        }
        let metadata = std::fs::symlink_metadata(path)
            .map_err(|error| Error::io(path, error))?;
        if metadata.is_dir() {
            if depth >= MAX_TREE_DEPTH {
                self.truncated = true;
                return Ok(());
            }
            for name in read_dir_sorted(path)? {
                let child_key = format!("{key}/{name}");
                self.leaf_or_dir(
                    &path.join(&name),
                    &child_key,
                    depth + 1,
                    out,
                )?;
            }
            return Ok(());
        }
        out.insert(key.to_owned(), leaf(path)?);
        Ok(())
    }

    fn count(&mut self) -> bool {
        if self.entries >= self.limit {
            self.truncated = true;
            return false;
        }
        self.entries += 1;
        true
    }
}

/// Returns the target text of `entry` when it is a relative link that resolves
/// inside the store, such as `multi-user.target.wants/sshd.service ->
/// ../sshd.service`. Such a link enables or aliases a file that is
/// compared on its own, so the link is compared by its text only.
fn relative_link(entry: &Path, resolved: &Resolved) -> Result<Option<String>> {
    if !matches!(resolved, Resolved::File { .. } | Resolved::Directory { .. })
    {
        return Ok(None);
    }
    let metadata = std::fs::symlink_metadata(entry)
        .map_err(|error| Error::io(entry, error))?;
    if !metadata.file_type().is_symlink() {
        return Ok(None);
    }
    let target =
        std::fs::read_link(entry).map_err(|error| Error::io(entry, error))?;
    if target.is_absolute() {
        return Ok(None);
    }
    Ok(Some(target.to_string_lossy().into_owned()))
}

/// Describes a toplevel entry: a link into the store by its resolved
/// target, anything else by its kind.
fn leaf(path: &Path) -> Result<Node> {
    let metadata = std::fs::symlink_metadata(path)
        .map_err(|error| Error::io(path, error))?;
    let resolved = resolve(path)?;
    match &resolved {
        Resolved::File { path, .. } | Resolved::Directory { path }
            if metadata.file_type().is_symlink() =>
        {
            Ok(Node::StoreLink {
                target: path.to_string_lossy().into_owned(),
            })
        }
        _ => node_of(resolved),
    }
}

fn node_of(resolved: Resolved) -> Result<Node> {
    Ok(match resolved {
        Resolved::File {
            path,
            size,
            executable,
        } => Node::File {
            sha256: if size <= MAX_HASH_BYTES {
                Some(hash_file(&path)?)
            } else {
                None
            },
            location: path.to_string_lossy().into_owned(),
            size,
            executable,
        },
        Resolved::Directory { path } => Node::StoreLink {
            target: path.to_string_lossy().into_owned(),
        },
        Resolved::OutsideLink { target } => Node::OutsideLink { target },
        Resolved::Missing => Node::Missing,
        Resolved::TooManyHops => Node::TooManyHops,
        Resolved::Special { .. } => Node::Special,
    })
}

fn hash_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|error| Error::io(path, error))?;
    let mut hasher = Sha256::new();
    // A small buffer: most files hashed are small, and the buffer is
    // zeroed for each of the hundreds of them.
    let mut buffer = [0u8; 8 * 1024];
    loop {
        let count = file
            .read(&mut buffer)
            .map_err(|error| Error::io(path, error))?;
        if count == 0 {
            break;
        }
        hasher.update(&buffer[..count]);
    }
    Ok(Sha256Digest::from_bytes(hasher.finalize().into()).to_hex())
}

fn compare(
    old: &BTreeMap<String, Node>,
    new: &BTreeMap<String, Node>,
    depth: usize,
) -> Result<Vec<EntryChange>> {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut changes = Vec::new();
    for key in keys {
        let before = old.get(key);
        let after = new.get(key);
        let status = match (before, after) {
            (None, Some(_)) => ChangeStatus::Added,
            (Some(_), None) => ChangeStatus::Removed,
            (Some(a), Some(b)) if same(a, b) => continue,
            _ => ChangeStatus::Changed,
        };
        let mut change = EntryChange {
            path: key.clone(),
            status,
            old: before.cloned(),
            new: after.cloned(),
            hunks: None,
            lines_added: None,
            lines_removed: None,
            only_store_paths_changed: false,
            version_bumps: Vec::new(),
            directives: Vec::new(),
            referenced: Vec::new(),
        };
        add_text_diff(&mut change, depth)?;
        changes.push(change);
    }
    Ok(changes)
}

fn add_text_diff(change: &mut EntryChange, depth: usize) -> Result<()> {
    let old_text = match &change.old {
        Some(node) => match small_text(node)? {
            Some(text) => text,
            None if matches!(node, Node::File { .. }) => return Ok(()),
            None => String::new(),
        },
        None => String::new(),
    };
    let new_text = match &change.new {
        Some(node) => match small_text(node)? {
            Some(text) => text,
            None if matches!(node, Node::File { .. }) => return Ok(()),
            None => String::new(),
        },
        None => String::new(),
    };
    if old_text.is_empty() && new_text.is_empty() {
        return Ok(());
    }
    let old_text = redact_secrets(&old_text);
    let new_text = redact_secrets(&new_text);
    let text = diff_lines(&old_text, &new_text);
    if depth < MAX_REFERENCE_DEPTH {
        change.referenced.extend(referenced_changes(
            &old_text,
            &new_text,
            depth + 1,
        )?);
    }
    change.version_bumps = version_bumps(&old_text, &new_text);
    change.only_store_paths_changed = change.status == ChangeStatus::Changed
        && reduce_store_paths(&old_text) == reduce_store_paths(&new_text)
        && change.referenced.iter().all(|r| r.only_store_paths_changed);
    change.lines_added = Some(text.added);
    change.lines_removed = Some(text.removed);
    change.hunks = Some(text.hunks);
    Ok(())
}

/// Compares the unit trees and adds to each unit file or drop-in that
/// is a file the directives that differ.
fn unit_changes(
    old: &BTreeMap<String, Node>,
    new: &BTreeMap<String, Node>,
) -> Result<Vec<EntryChange>> {
    let mut changes = compare(old, new, 0)?;
    for change in &mut changes {
        let parse = |node: &Option<Node>| -> Result<Option<UnitFile>> {
            Ok(match node {
                Some(node) => {
                    unit_node_text(node)?.map(|text| UnitFile::parse(&text))
                }
                None => Some(UnitFile::default()),
            })
        };
        if let (Some(before), Some(after)) =
            (parse(&change.old)?, parse(&change.new)?)
        {
            change.directives = directive_changes(&before, &after);
        }
    }
    Ok(changes)
}

/// Compares the generated, version-less store paths that two texts
/// name: those regenerated with another hash, and those that only the
/// new text names (compared with nothing). `depth` is the level of the
/// paths found, counted from 1.
pub(super) fn referenced_changes(
    old_text: &str,
    new_text: &str,
    depth: usize,
) -> Result<Vec<EntryChange>> {
    let mut changes = Vec::new();
    for (old_path, new_path) in regenerated_pairs(old_text, new_text) {
        let before = read_referenced(&old_path)?;
        let after = read_referenced(&new_path)?;
        changes.extend(compare(&before, &after, depth)?);
    }
    for new_path in newly_named(old_text, new_text) {
        let after = read_referenced(&new_path)?;
        changes.extend(compare(&BTreeMap::new(), &after, depth)?);
    }
    Ok(changes)
}

/// Reads a store path that a text names, keyed by its store name and
/// the path inside it, with at most [`MAX_REFERENCED_ENTRIES`] entries.
fn read_referenced(path: &StorePath) -> Result<BTreeMap<String, Node>> {
    let mut entries = BTreeMap::new();
    match resolve(path.as_path())? {
        Resolved::Directory { path: dir } => {
            let mut walk = Walk::with_limit(MAX_REFERENCED_ENTRIES);
            let prefix = format!("{}/", path.name());
            walk.followed(&dir, &prefix, 0, &mut entries)?;
        }
        other => {
            entries.insert(path.name().to_owned(), node_of(other)?);
        }
    }
    Ok(entries)
}

/// Tells whether two nodes are the same for review: files by content and
/// executable bit (their location changes with every rebuild), other
/// nodes by value.
fn same(a: &Node, b: &Node) -> bool {
    match (a, b) {
        (
            Node::File {
                sha256: Some(hash_a),
                executable: exec_a,
                ..
            },
            Node::File {
                sha256: Some(hash_b),
                executable: exec_b,
                ..
            },
        ) => hash_a == hash_b && exec_a == exec_b,
        _ => a == b,
    }
}

/// Reads the text of a small text file. Returns `None` for other nodes,
/// binary files and files above [`MAX_DIFF_BYTES`].
fn small_text(node: &Node) -> Result<Option<String>> {
    let Node::File { location, size, .. } = node else {
        return Ok(None);
    };
    if *size > MAX_DIFF_BYTES {
        return Ok(None);
    }
    let (bytes, _) = read_limited(&PathBuf::from(location), MAX_DIFF_BYTES)?;
    Ok(as_text(&bytes).map(str::to_owned))
}

/// Replaces the hash part of every store path in `text` with a fixed
/// placeholder, so that two texts that differ only in rebuilt
/// dependencies compare equal.
pub fn mask_store_hashes(text: &str) -> String {
    const PREFIX: &str = "/nix/store/";
    const BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find(PREFIX) {
        let after = &rest[index + PREFIX.len()..];
        let bytes = after.as_bytes();
        let is_hash = bytes.len() > 32
            && bytes[..32].iter().all(|b| BASE32.contains(b))
            && bytes[32] == b'-';
        out.push_str(&rest[..index + PREFIX.len()]);
        if is_hash {
            out.push_str("<hash>");
            rest = &after[32..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Compares the specialisations of two systems. A changed one is
/// compared with its old version. An added one is compared with the new
/// main system `parent`, which it is derived from, so that its own
/// differences show rather than every file as added.
fn diff_specialisations(
    old: &BTreeMap<String, Node>,
    new: &BTreeMap<String, Node>,
    parent: &StorePath,
) -> Result<Vec<SpecialisationChange>> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut changes = Vec::new();
    for name in names {
        let (before, after) = (old.get(name), new.get(name));
        let status = match (before, after) {
            (None, Some(_)) => ChangeStatus::Added,
            (Some(_), None) => ChangeStatus::Removed,
            (Some(a), Some(b)) if a == b => continue,
            _ => ChangeStatus::Changed,
        };
        let system_of = |node: Option<&Node>| match node {
            Some(Node::StoreLink { target }) => StorePath::parse(target).ok(),
            _ => None,
        };
        // Specialisations of a specialisation are not read, because
        // NixOS does not nest them.
        let diff = match (system_of(before), system_of(after)) {
            (Some(a), Some(b)) => {
                Some(Box::new(diff_systems(Some(&a), &b, false)?))
            }
            (None, Some(b)) => {
                Some(Box::new(diff_systems(Some(parent), &b, false)?))
            }
            _ => None,
        };
        changes.push(SpecialisationChange {
            name: name.clone(),
            status,
            diff,
        });
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_hashes_are_masked() {
        let a = "ExecStart=/nix/store/0123456789abcdfghijklmnpqrsvwxyz-sshd/bin/sshd";
        let b = "ExecStart=/nix/store/zyxwvsrqpnmlkjihgfdcba9876543210-sshd/bin/sshd";
        assert_eq!(mask_store_hashes(a), mask_store_hashes(b));
        assert_eq!(
            mask_store_hashes(a),
            "ExecStart=/nix/store/<hash>-sshd/bin/sshd"
        );
        assert_eq!(mask_store_hashes("/nix/store/short"), "/nix/store/short");
    }

    #[test]
    fn files_compare_by_content() {
        let file = |location: &str, hash: &str| Node::File {
            location: location.into(),
            size: 1,
            executable: false,
            sha256: Some(hash.into()),
        };
        assert!(same(&file("/a", "h"), &file("/b", "h")));
        assert!(!same(&file("/a", "h"), &file("/a", "g")));
        assert!(!same(
            &Node::OutsideLink {
                target: "/etc/a".into()
            },
            &Node::OutsideLink {
                target: "/etc/b".into()
            }
        ));
    }
}
