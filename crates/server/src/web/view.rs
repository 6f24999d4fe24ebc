//! What the pages show, prepared from the stored rows and the diff
//! document: plain strings and numbers, so that the templates only lay
//! them out. Every string that comes from the repository or the built
//! system passes through `escape_control_chars`, so control and
//! bidirectional characters show as visible escapes; the templates then
//! escape HTML.

use countersign_nix::diff::{
    Alert, ChangeStatus, DiffDocument, EntryChange, FileContent, FileDiff,
    FileStatus, Hunk, Node, PackageDiff, Severity, SourceDiff, SystemDiff,
};
use countersign_nix::escape_control_chars;

use super::boot_view::{BootspecView, InitrdView};

pub(super) fn clean(text: &str) -> String {
    escape_control_chars(text).into_owned()
}

/// One alert.
pub struct AlertView {
    /// `critical`, `high`, `medium`, `low` or `info`; also the CSS class.
    pub severity: &'static str,
    pub kind: String,
    pub subject: String,
    pub detail: String,
}

fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::High => "high",
        Severity::Medium => "medium",
        Severity::Low => "low",
        Severity::Info => "info",
    }
}

/// One line of a diff hunk; `tag` is the element it is shown in.
pub struct LineView {
    /// `ins` for an added line, `del` for a removed one, `span` for
    /// context.
    pub tag: &'static str,
    pub text: String,
}

pub struct HunkView {
    pub header: String,
    pub lines: Vec<LineView>,
}

/// One changed file of the source or the system.
pub struct FileView {
    pub path: String,
    /// The former path of a renamed file.
    pub old_path: Option<String>,
    /// `added`, `removed`, `modified`, `renamed` or `changed`.
    pub status: &'static str,
    pub added: u64,
    pub removed: u64,
    /// What is shown instead of lines: binary, too large, a link.
    pub notes: Vec<String>,
    /// For a systemd unit file or drop-in, each directive that differs,
    /// as `[Service] User: backup -> root`.
    pub directives: Vec<String>,
    pub hunks: Vec<HunkView>,
}

/// One row of a package group.
pub struct PackageRow {
    pub name: String,
    pub detail: String,
    /// Marks downgrades and unexplained rebuilds.
    pub warn: bool,
}

pub struct PackageGroup {
    pub title: &'static str,
    pub rows: Vec<PackageRow>,
}

/// One part of a system's diff: entries of one tree, `boot.json` or
/// the initrd's files.
pub struct SystemSection {
    pub title: String,
    /// The number of changes, for the heading.
    pub count: usize,
    pub files: Vec<FileView>,
    pub bootspec: Option<BootspecView>,
    pub initrd: Option<InitrdView>,
}

impl SystemSection {
    fn of_files(title: String, files: Vec<FileView>) -> Self {
        Self {
            title,
            count: files.len(),
            files,
            bootspec: None,
            initrd: None,
        }
    }
}

/// The whole diff, ready for the proposal page.
pub struct DiffView {
    pub alerts: Vec<AlertView>,
    pub package_summary: String,
    pub packages: Vec<PackageGroup>,
    pub package_changes: usize,
    pub system: Vec<SystemSection>,
    pub system_changes: usize,
    pub system_truncated: bool,
    pub source: Option<SourceView>,
}

pub struct CommitView {
    pub id: String,
    pub short: String,
    pub subject: String,
    pub author: String,
    pub date: String,
}

pub struct SourceView {
    pub old_commit: Option<String>,
    pub new_commit: String,
    pub rewritten: bool,
    pub commits: Vec<CommitView>,
    pub commits_truncated: bool,
    pub files: Vec<FileView>,
    pub files_not_listed: usize,
    pub lines_added: u64,
    pub lines_removed: u64,
}

impl DiffView {
    pub fn new(document: &DiffDocument) -> Self {
        let alerts = document.alerts.iter().map(alert_view).collect();
        let packages = package_groups(&document.packages);
        let package_changes =
            packages.iter().map(|group| group.rows.len()).sum();
        let mut system = Vec::new();
        system_sections(&document.system, "", &mut system);
        let system_changes = system.iter().map(|section| section.count).sum();
        Self {
            alerts,
            package_summary: package_summary(&document.packages),
            packages,
            package_changes,
            system,
            system_changes,
            system_truncated: document.system.truncated,
            source: document.source.as_ref().map(source_view),
        }
    }
}

fn alert_view(alert: &Alert) -> AlertView {
    let kind = serde_json::to_value(alert.kind)
        .ok()
        .and_then(|value| value.as_str().map(|text| text.replace('_', " ")))
        .unwrap_or_default();
    AlertView {
        severity: severity_name(alert.severity),
        kind,
        subject: clean(&alert.subject),
        detail: clean(&alert.detail),
    }
}

fn hunk_views(hunks: &[Hunk]) -> Vec<HunkView> {
    hunks
        .iter()
        .map(|hunk| HunkView {
            header: hunk.header(),
            lines: hunk
                .lines
                .iter()
                .map(|line| {
                    let tag = match line.as_bytes().first() {
                        Some(b'+') => "ins",
                        Some(b'-') => "del",
                        _ => "span",
                    };
                    let mut text = clean(line);
                    text.push('\n');
                    LineView { tag, text }
                })
                .collect(),
        })
        .collect()
}

fn source_view(source: &SourceDiff) -> SourceView {
    let files: Vec<FileView> = source.files.iter().map(source_file).collect();
    SourceView {
        old_commit: source.old_commit.as_ref().map(|commit| commit.id.clone()),
        new_commit: source.new_commit.id.clone(),
        rewritten: source.fast_forward == Some(false),
        commits: source
            .commits
            .iter()
            .map(|commit| CommitView {
                id: commit.id.clone(),
                short: short_id(&commit.id).to_owned(),
                subject: clean(&commit.subject),
                author: clean(&commit.author),
                date: clean(&commit.date),
            })
            .collect(),
        commits_truncated: source.commits_truncated,
        lines_added: files.iter().map(|file| file.added).sum(),
        lines_removed: files.iter().map(|file| file.removed).sum(),
        files,
        files_not_listed: source.files_not_listed,
    }
}

fn source_file(file: &FileDiff) -> FileView {
    let status = match file.status {
        FileStatus::Added => "added",
        FileStatus::Removed => "removed",
        FileStatus::Modified => "modified",
        FileStatus::Renamed => "renamed",
    };
    let mut notes = Vec::new();
    if file.old_mode.is_some()
        && file.new_mode.is_some()
        && file.old_mode != file.new_mode
    {
        notes.push(format!(
            "mode {} → {}",
            file.old_mode.as_deref().unwrap_or(""),
            file.new_mode.as_deref().unwrap_or("")
        ));
    }
    let hunks = match &file.content {
        FileContent::Text { hunks } => hunk_views(hunks),
        FileContent::Binary => {
            notes.push(format!(
                "binary file, {} → {} bytes",
                size_text(file.old_size),
                size_text(file.new_size)
            ));
            Vec::new()
        }
        FileContent::TooLarge => {
            notes.push(format!(
                "too large to show, {} → {} bytes",
                size_text(file.old_size),
                size_text(file.new_size)
            ));
            Vec::new()
        }
        FileContent::Symlink {
            old_target,
            new_target,
        } => {
            notes.push(format!(
                "symbolic link {} → {}",
                old_target.as_deref().map_or("none".into(), clean),
                new_target.as_deref().map_or("none".into(), clean)
            ));
            Vec::new()
        }
        FileContent::Submodule {
            old_commit,
            new_commit,
        } => {
            notes.push(format!(
                "submodule {} → {}",
                old_commit.as_deref().unwrap_or("none"),
                new_commit.as_deref().unwrap_or("none")
            ));
            Vec::new()
        }
        FileContent::Omitted { reason } => {
            notes.push(format!("content not shown: {}", clean(reason)));
            Vec::new()
        }
    };
    FileView {
        path: clean(&file.path),
        old_path: file.old_path.as_deref().map(clean),
        status,
        added: file.lines_added.unwrap_or(0),
        removed: file.lines_removed.unwrap_or(0),
        notes,
        directives: Vec::new(),
        hunks,
    }
}

fn size_text(size: Option<u64>) -> String {
    size.map_or_else(|| "none".to_owned(), |size| size.to_string())
}

fn package_summary(packages: &PackageDiff) -> String {
    format!(
        "closure {} → {} ({}), {} → {} store paths",
        bytes_text(packages.old_closure_size),
        bytes_text(packages.new_closure_size),
        signed_bytes(packages.closure_size_delta),
        packages.old_path_count,
        packages.new_path_count
    )
}

fn package_groups(packages: &PackageDiff) -> Vec<PackageGroup> {
    let versions = |list: &[String]| clean(&list.join(", "));
    let mut groups = vec![
        PackageGroup {
            title: "Version changes",
            rows: packages
                .version_changes
                .iter()
                .map(|change| PackageRow {
                    name: clean(&change.name),
                    detail: format!(
                        "{} → {} ({}){}",
                        versions(&change.old_versions),
                        versions(&change.new_versions),
                        signed_bytes(change.size_delta),
                        if change.downgrade { ", downgrade" } else { "" }
                    ),
                    warn: change.downgrade,
                })
                .collect(),
        },
        PackageGroup {
            title: "Added",
            rows: packages
                .added
                .iter()
                .map(|package| PackageRow {
                    name: clean(&package.name),
                    detail: format!(
                        "{} ({})",
                        versions(&package.versions),
                        bytes_text(package.size)
                    ),
                    warn: false,
                })
                .collect(),
        },
        PackageGroup {
            title: "Removed",
            rows: packages
                .removed
                .iter()
                .map(|package| PackageRow {
                    name: clean(&package.name),
                    detail: format!(
                        "{} ({})",
                        versions(&package.versions),
                        bytes_text(package.size)
                    ),
                    warn: false,
                })
                .collect(),
        },
        PackageGroup {
            title: "Rebuilt with the same version",
            rows: packages
                .rebuilt
                .iter()
                .map(|rebuild| PackageRow {
                    name: clean(&rebuild.name),
                    detail: format!(
                        "{} ({}){}",
                        versions(&rebuild.versions),
                        signed_bytes(rebuild.size_delta),
                        if rebuild.unexplained {
                            ", no dependency changed"
                        } else {
                            ""
                        }
                    ),
                    warn: rebuild.unexplained,
                })
                .collect(),
        },
        PackageGroup {
            title: "Several copies",
            rows: packages
                .duplicated
                .iter()
                .map(|duplicate| PackageRow {
                    name: clean(&duplicate.name),
                    detail: format!(
                        "{} {}: {} → {} store paths",
                        clean(&duplicate.version),
                        clean(&duplicate.output),
                        duplicate.old_paths,
                        duplicate.new_paths
                    ),
                    warn: false,
                })
                .collect(),
        },
        PackageGroup {
            title: "Regenerated",
            rows: packages
                .regenerated
                .iter()
                .map(|name| PackageRow {
                    name: clean(name),
                    detail: String::new(),
                    warn: false,
                })
                .collect(),
        },
    ];
    groups.retain(|group| !group.rows.is_empty());
    groups
}

fn system_sections(
    system: &SystemDiff,
    prefix: &str,
    out: &mut Vec<SystemSection>,
) {
    entry_section(&system.toplevel, &format!("{prefix}toplevel"), out);
    if let Some(bootspec) = &system.bootspec {
        let bootspec = BootspecView::new(bootspec);
        out.push(SystemSection {
            title: format!("{prefix}boot.json"),
            count: bootspec.count(),
            files: Vec::new(),
            bootspec: Some(bootspec),
            initrd: None,
        });
    }
    if let Some(initrd) = &system.initrd {
        out.push(SystemSection {
            title: format!("{prefix}initrd files"),
            count: initrd.files.len(),
            files: Vec::new(),
            bootspec: None,
            initrd: Some(InitrdView::new(initrd)),
        });
    }
    entry_section(&system.units, &format!("{prefix}systemd units"), out);
    entry_section(&system.etc, &format!("{prefix}/etc"), out);
    let mut specialisations = Vec::new();
    for change in &system.specialisations {
        specialisations.push(FileView {
            path: clean(&change.name),
            old_path: None,
            status: change_status(change.status),
            added: 0,
            removed: 0,
            notes: Vec::new(),
            directives: Vec::new(),
            hunks: Vec::new(),
        });
    }
    if !specialisations.is_empty() {
        out.push(SystemSection::of_files(
            format!("{prefix}specialisations"),
            specialisations,
        ));
    }
    for change in &system.specialisations {
        if let Some(diff) = &change.diff {
            let nested =
                format!("{prefix}specialisation {}: ", clean(&change.name));
            system_sections(diff, &nested, out);
        }
    }
}

pub(super) fn change_status(status: ChangeStatus) -> &'static str {
    match status {
        ChangeStatus::Added => "added",
        ChangeStatus::Removed => "removed",
        ChangeStatus::Changed => "changed",
    }
}

/// Adds a section for the changed entries of one tree, unless there are
/// none.
fn entry_section(
    entries: &[EntryChange],
    title: &str,
    out: &mut Vec<SystemSection>,
) {
    if entries.is_empty() {
        return;
    }
    let mut files = Vec::new();
    for entry in entries {
        entry_views(entry, "", &mut files);
    }
    out.push(SystemSection::of_files(title.to_owned(), files));
}

fn entry_views(entry: &EntryChange, via: &str, out: &mut Vec<FileView>) {
    let mut notes = Vec::new();
    if !via.is_empty() {
        notes.push(format!("referenced by {via}"));
    }
    match (&entry.old, &entry.new) {
        (Some(old), Some(new)) if old != new => {
            notes.push(format!("{} → {}", node_text(old), node_text(new)));
        }
        (None, Some(new)) => notes.push(node_text(new)),
        (Some(old), None) => notes.push(format!("was {}", node_text(old))),
        _ => {}
    }
    if entry.only_store_paths_changed {
        notes.push("only store paths changed".to_owned());
    }
    for bump in &entry.version_bumps {
        notes.push(format!(
            "{} {} → {}",
            clean(&bump.name),
            clean(&bump.old_version),
            clean(&bump.new_version)
        ));
    }
    let path = clean(&entry.path);
    out.push(FileView {
        path: path.clone(),
        old_path: None,
        status: change_status(entry.status),
        added: entry.lines_added.unwrap_or(0),
        removed: entry.lines_removed.unwrap_or(0),
        notes,
        directives: entry
            .directives
            .iter()
            .map(|directive| clean(&directive.describe()))
            .collect(),
        hunks: entry.hunks.as_deref().map(hunk_views).unwrap_or_default(),
    });
    for referenced in &entry.referenced {
        entry_views(referenced, &path, out);
    }
}

fn node_text(node: &Node) -> String {
    match node {
        Node::File {
            size, executable, ..
        } => {
            let kind = if *executable { "executable" } else { "file" };
            format!("{kind}, {size} bytes")
        }
        Node::StoreLink { target } => format!("link to {}", clean(target)),
        Node::RelativeLink { target } => format!("link to {}", clean(target)),
        Node::OutsideLink { target } => {
            format!("link outside the store to {}", clean(target))
        }
        Node::Missing => "dangling link".to_owned(),
        Node::TooManyHops => "link chain too long".to_owned(),
        Node::Special => "socket, device or pipe".to_owned(),
    }
}

/// The first 12 characters of a commit id.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A size in bytes as text with a binary unit.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn signed_bytes(delta: i64) -> String {
    let sign = if delta < 0 { "−" } else { "+" };
    format!("{sign}{}", bytes_text(delta.unsigned_abs()))
}

/// A Unix time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_text(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// How long ago `then` was, relative to `now`, in the largest whole
/// unit.
pub fn age_text(then: u64, now: u64) -> String {
    let seconds = now.saturating_sub(then);
    match seconds {
        0..60 => "just now".to_owned(),
        60..3600 => format!("{} min ago", seconds / 60),
        3600..86_400 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// Converts days since 1970-01-01 into a proleptic Gregorian date.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524
        - day_of_era / 146_096)
        / 365;
    let day_of_year =
        day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_sizes_read_well() {
        assert_eq!(utc_text(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_text(1_798_761_599), "2026-12-31 23:59 UTC");
        assert_eq!(age_text(100, 100), "just now");
        assert_eq!(age_text(100, 400), "5 min ago");
        assert_eq!(age_text(0, 7200), "2 h ago");
        assert_eq!(bytes_text(512), "512 B");
        assert_eq!(bytes_text(1536), "1.5 KiB");
        assert_eq!(signed_bytes(-2048), "−2.0 KiB");
    }

    #[test]
    fn repository_text_is_escaped_for_display() {
        let hunks = hunk_views(&[Hunk {
            old_start: 1,
            old_lines: 1,
            new_start: 1,
            new_lines: 1,
            lines: vec!["-a".into(), "+b\u{202e}c".into(), " d".into()],
        }]);
        let tags: Vec<_> =
            hunks[0].lines.iter().map(|line| line.tag).collect();
        assert_eq!(tags, ["del", "ins", "span"]);
        assert_eq!(hunks[0].lines[1].text, "+b\\u{202e}c\n");
    }
}
