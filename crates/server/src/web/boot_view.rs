//! The proposal page's view of a system's boot files: the fields of
//! `boot.json` that changed, and the files of the initrd. As in the
//! other views, every string from the systems passes through [`clean`]
//! and the templates escape HTML.

use countersign_nix::diff::{
    BootspecDiff, InitrdDiff, InitrdEntry, InitrdEntryKind, InitrdFileChange,
    InitrdSummary,
};

use super::view::{bytes_text, change_status, clean};

/// Maximum number of initrd files listed on the page. The diff document
/// lists up to 2,000, too many to read on a phone, and the alerts name
/// the security-relevant ones anyway.
pub const MAX_INITRD_ROWS: usize = 200;

/// One field of `boot.json` that differs.
pub struct BootFieldView {
    pub field: String,
    /// The old value, or `(none)` when the field was absent.
    pub old: String,
    pub new: String,
}

/// The changes of `boot.json`.
pub struct BootspecView {
    /// `boot.json added` or `boot.json removed`, when only one system
    /// has it.
    pub presence: Option<&'static str>,
    pub changes: Vec<BootFieldView>,
    /// Disagreements between the new `boot.json` and the new system's
    /// own files.
    pub mismatches: Vec<String>,
}

impl BootspecView {
    pub fn new(bootspec: &BootspecDiff) -> Self {
        let presence = match (bootspec.old_present, bootspec.new_present) {
            (false, true) => Some("boot.json added"),
            (true, false) => Some("boot.json removed"),
            _ => None,
        };
        let value = |value: &Option<String>| {
            value.as_deref().map_or_else(|| "(none)".to_owned(), clean)
        };
        Self {
            presence,
            changes: bootspec
                .changes
                .iter()
                .map(|change| BootFieldView {
                    field: clean(&change.field),
                    old: value(&change.old),
                    new: value(&change.new),
                })
                .collect(),
            mismatches: bootspec.mismatches.iter().map(|m| clean(m)).collect(),
        }
    }

    /// Returns the number of changes shown, for the section's heading.
    pub fn count(&self) -> usize {
        let listed = self.changes.len() + self.mismatches.len();
        if listed == 0 && self.presence.is_some() {
            1
        } else {
            listed
        }
    }
}

/// One initrd file that was added, removed or changed.
pub struct InitrdRow {
    /// `added`, `removed` or `changed`, which is also the CSS class.
    pub status: &'static str,
    pub path: String,
    /// The entry as it is now, or what changed about it, such as
    /// `mode 0755 → 4755`.
    pub detail: String,
}

/// The files of the initrd.
pub struct InitrdView {
    /// One line per side that has an initrd, such as
    /// `new: cpio + zstd, 41 entries`.
    pub sides: Vec<String>,
    /// The reasons a side's files were not read.
    pub not_read: Vec<String>,
    pub rows: Vec<InitrdRow>,
    /// The number of changed files beyond [`MAX_INITRD_ROWS`], which
    /// are not listed.
    pub not_listed: usize,
    /// Whether the diff document itself cut the list of files.
    pub truncated: bool,
}

impl InitrdView {
    pub fn new(initrd: &InitrdDiff) -> Self {
        let mut sides = Vec::new();
        let mut not_read = Vec::new();
        for (side, summary) in [("old", &initrd.old), ("new", &initrd.new)] {
            match summary {
                Some(summary) => {
                    sides.push(side_text(side, summary));
                    if let Some(reason) = &summary.not_read {
                        not_read.push(format!(
                            "The {side} initrd was not read: {}",
                            clean(reason)
                        ));
                    }
                }
                None => sides.push(format!("{side}: no initrd")),
            }
        }
        Self {
            sides,
            not_read,
            rows: initrd
                .files
                .iter()
                .take(MAX_INITRD_ROWS)
                .map(initrd_row)
                .collect(),
            not_listed: initrd.files.len().saturating_sub(MAX_INITRD_ROWS),
            truncated: initrd.truncated,
        }
    }
}

fn side_text(side: &str, summary: &InitrdSummary) -> String {
    let archives = if summary.archives.is_empty() {
        "no archive".to_owned()
    } else {
        clean(&summary.archives.join(" + "))
    };
    format!("{side}: {archives}, {} entries", summary.entries)
}

fn initrd_row(file: &InitrdFileChange) -> InitrdRow {
    let detail = match (&file.old, &file.new) {
        (Some(old), Some(new)) => {
            let mut parts = entry_differences(old, new);
            if file.only_store_paths_changed {
                parts.push("only store paths changed".to_owned());
            }
            parts.join(", ")
        }
        (None, Some(entry)) | (Some(entry), None) => entry_text(entry),
        (None, None) => String::new(),
    };
    InitrdRow {
        status: change_status(file.status),
        path: clean(&file.path),
        detail,
    }
}

fn kind_name(kind: InitrdEntryKind) -> &'static str {
    match kind {
        InitrdEntryKind::File => "file",
        InitrdEntryKind::Directory => "directory",
        InitrdEntryKind::Symlink => "link",
        InitrdEntryKind::Other => "device, pipe or socket",
    }
}

/// Describes one entry: kind, mode, an owner other than root, and a
/// file's size or a link's target.
fn entry_text(entry: &InitrdEntry) -> String {
    let mut text = format!("{} {}", kind_name(entry.kind), clean(&entry.mode));
    if entry.uid != 0 || entry.gid != 0 {
        text.push_str(&format!(", owner {}:{}", entry.uid, entry.gid));
    }
    match entry.kind {
        InitrdEntryKind::File => {
            text.push_str(&format!(", {}", bytes_text(entry.size)));
        }
        InitrdEntryKind::Symlink => {
            let target =
                entry.target.as_deref().map_or_else(String::new, clean);
            text.push_str(&format!(" → {target}"));
        }
        InitrdEntryKind::Directory | InitrdEntryKind::Other => {}
    }
    text
}

/// Lists what differs between two versions of one entry.
fn entry_differences(old: &InitrdEntry, new: &InitrdEntry) -> Vec<String> {
    let mut parts = Vec::new();
    if old.kind != new.kind {
        parts.push(format!(
            "{} → {}",
            kind_name(old.kind),
            kind_name(new.kind)
        ));
    }
    if old.mode != new.mode {
        parts.push(format!(
            "mode {} → {}",
            clean(&old.mode),
            clean(&new.mode)
        ));
    }
    if (old.uid, old.gid) != (new.uid, new.gid) {
        parts.push(format!(
            "owner {}:{} → {}:{}",
            old.uid, old.gid, new.uid, new.gid
        ));
    }
    if old.target != new.target {
        let target = |entry: &InitrdEntry| {
            entry
                .target
                .as_deref()
                .map_or_else(|| "(none)".to_owned(), clean)
        };
        parts.push(format!("target {} → {}", target(old), target(new)));
    }
    if old.size != new.size {
        parts.push(format!(
            "size {} → {}",
            bytes_text(old.size),
            bytes_text(new.size)
        ));
    } else if old.sha256 != new.sha256 {
        parts.push("content changed".to_owned());
    }
    parts
}

#[cfg(test)]
mod tests {
    use countersign_nix::diff::{BootspecChange, ChangeStatus};

    use super::*;

    fn entry(mode: &str, size: u64, sha256: &str) -> InitrdEntry {
        InitrdEntry {
            kind: InitrdEntryKind::File,
            mode: mode.into(),
            uid: 0,
            gid: 0,
            size,
            sha256: Some(sha256.into()),
            target: None,
        }
    }

    #[test]
    fn initrd_rows_describe_changes() {
        let diff = InitrdDiff {
            old: None,
            new: Some(InitrdSummary {
                path: "/nix/store/…-initrd/initrd".into(),
                archives: vec!["cpio".into(), "zstd".into()],
                entries: 41,
                not_read: None,
            }),
            files: vec![
                InitrdFileChange {
                    path: "bin/mount".into(),
                    status: ChangeStatus::Changed,
                    old: Some(entry("0755", 10, "a")),
                    new: Some(entry("4755", 10, "b")),
                    only_store_paths_changed: false,
                },
                InitrdFileChange {
                    path: "etc/motd\u{202e}".into(),
                    status: ChangeStatus::Added,
                    old: None,
                    new: Some(entry("0644", 2048, "c")),
                    only_store_paths_changed: false,
                },
            ],
            truncated: false,
        };
        let view = InitrdView::new(&diff);
        assert_eq!(
            view.sides,
            ["old: no initrd", "new: cpio + zstd, 41 entries"]
        );
        assert_eq!(view.rows[0].detail, "mode 0755 → 4755, content changed");
        assert_eq!(view.rows[1].status, "added");
        assert_eq!(view.rows[1].path, "etc/motd\\u{202e}");
        assert_eq!(view.rows[1].detail, "file 0644, 2.0 KiB");
        assert_eq!(view.not_listed, 0);
    }

    #[test]
    fn bootspec_fields_and_presence() {
        let view = BootspecView::new(&BootspecDiff {
            old_present: true,
            new_present: true,
            changes: vec![BootspecChange {
                field: "kernelParams".into(),
                old: None,
                new: Some("quiet".into()),
            }],
            mismatches: vec!["kernelParams differs".into()],
        });
        assert_eq!(view.presence, None);
        assert_eq!(view.changes[0].old, "(none)");
        assert_eq!(view.changes[0].new, "quiet");
        assert_eq!(view.count(), 2);
        let added = BootspecView::new(&BootspecDiff {
            old_present: false,
            new_present: true,
            changes: Vec::new(),
            mismatches: Vec::new(),
        });
        assert_eq!(added.presence, Some("boot.json added"));
        assert_eq!(added.count(), 1);
    }
}
