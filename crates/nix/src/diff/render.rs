//! The diff document as plain text for a terminal.
//!
//! Every string that comes from the repository or the candidate system
//! (file names, diff lines, commit subjects, link targets) passes through
//! [`escape_control_chars`], so a malicious repository cannot move the
//! cursor, hide lines or retitle the terminal of the person approving.

use std::fmt::Write as _;

use super::bootspec::BootspecDiff;
use super::initrd::{InitrdDiff, InitrdSummary};
use super::packages::PackageDiff;
use super::source::{FileContent, FileDiff, FileStatus, SourceDiff};
use super::system::{ChangeStatus, EntryChange, Node, SystemDiff};
use super::text::Hunk;
use super::{Alert, DiffDocument, Severity};
use crate::escape::escape_control_chars as escape;

/// Renders the whole document: alerts first, then source, packages and
/// system.
pub fn render_text(document: &DiffDocument) -> String {
    let mut out = String::new();
    render_alerts(&mut out, &document.alerts);
    if let Some(source) = &document.source {
        render_source(&mut out, source);
    }
    render_packages(&mut out, &document.packages);
    render_system(&mut out, &document.system, "");
    out
}

fn render_alerts(out: &mut String, alerts: &[Alert]) {
    let _ = writeln!(out, "== Alerts ({})", alerts.len());
    if alerts.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for alert in alerts {
        let _ = writeln!(
            out,
            "  [{}] {}: {}",
            severity_label(alert.severity),
            escape(&alert.subject),
            escape(&alert.detail)
        );
    }
    out.push('\n');
}

fn severity_label(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "CRITICAL",
        Severity::High => "HIGH",
        Severity::Medium => "medium",
        Severity::Low => "low",
        Severity::Info => "info",
    }
}

fn render_source(out: &mut String, source: &SourceDiff) {
    let _ = writeln!(out, "== Source");
    match &source.old_commit {
        Some(old) => {
            let _ = writeln!(
                out,
                "  {} -> {}",
                short(&old.id),
                short(&source.new_commit.id)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  {} (no deployed commit to compare with; all files listed)",
                short(&source.new_commit.id)
            );
        }
    }
    if source.fast_forward == Some(false) {
        let _ = writeln!(
            out,
            "  WARNING: the new commit does not descend from the deployed \
             one (history was rewritten)"
        );
    }
    let _ = writeln!(out, "  commits ({}):", source.commits.len());
    for commit in &source.commits {
        let _ = writeln!(
            out,
            "    {} {} {}: {}",
            short(&commit.id),
            escape(&commit.date),
            escape(&commit.author),
            escape(&commit.subject)
        );
    }
    if source.commits_truncated {
        let _ = writeln!(out, "    (older commits not listed)");
    }
    let _ = writeln!(out, "  files ({}):", source.files.len());
    for file in &source.files {
        render_file(out, file);
    }
    if source.files_not_listed > 0 {
        let _ = writeln!(
            out,
            "    ({} more files not listed)",
            source.files_not_listed
        );
    }
    out.push('\n');
}

fn render_file(out: &mut String, file: &FileDiff) {
    let status = match file.status {
        FileStatus::Added => "added",
        FileStatus::Removed => "removed",
        FileStatus::Modified => "modified",
        FileStatus::Renamed => "renamed",
    };
    let name = match &file.old_path {
        Some(old) => format!("{} -> {}", escape(old), escape(&file.path)),
        None => escape(&file.path).into_owned(),
    };
    let mut facts = Vec::new();
    if let (Some(added), Some(removed)) =
        (file.lines_added, file.lines_removed)
    {
        facts.push(format!("+{added} -{removed}"));
    }
    if file.old_mode.is_some()
        && file.new_mode.is_some()
        && file.old_mode != file.new_mode
    {
        facts.push(format!(
            "mode {} -> {}",
            file.old_mode.as_deref().unwrap_or(""),
            file.new_mode.as_deref().unwrap_or("")
        ));
    }
    match &file.content {
        FileContent::Text { .. } => {}
        FileContent::Binary => facts.push(format!(
            "binary, {}",
            size_change(file.old_size, file.new_size)
        )),
        FileContent::TooLarge => facts.push(format!(
            "too large to show, {}",
            size_change(file.old_size, file.new_size)
        )),
        FileContent::Symlink {
            old_target,
            new_target,
        } => facts.push(format!(
            "symbolic link {} -> {}",
            old_target.as_deref().map_or("none".into(), escape),
            new_target.as_deref().map_or("none".into(), escape)
        )),
        FileContent::Submodule {
            old_commit,
            new_commit,
        } => facts.push(format!(
            "submodule {} -> {}",
            old_commit.as_deref().map_or("none", short),
            new_commit.as_deref().map_or("none", short)
        )),
        FileContent::Omitted { reason } => facts.push(escape(reason).into()),
    }
    let facts = if facts.is_empty() {
        String::new()
    } else {
        format!(" ({})", facts.join(", "))
    };
    let _ = writeln!(out, "    {status} {name}{facts}");
    if let FileContent::Text { hunks } = &file.content {
        render_hunks(out, hunks, "      ");
    }
}

fn render_hunks(out: &mut String, hunks: &[Hunk], indent: &str) {
    for hunk in hunks {
        let _ = writeln!(out, "{indent}{}", hunk.header());
        for line in &hunk.lines {
            let _ = writeln!(out, "{indent}{}", escape(line));
        }
    }
}

fn render_packages(out: &mut String, packages: &PackageDiff) {
    let _ = writeln!(out, "== Packages");
    let _ = writeln!(
        out,
        "  closure: {} paths, {} -> {} paths, {} ({})",
        packages.old_path_count,
        size(packages.old_closure_size),
        packages.new_path_count,
        size(packages.new_closure_size),
        signed_size(packages.closure_size_delta)
    );
    for change in &packages.version_changes {
        let _ = writeln!(
            out,
            "  {} {} {} -> {} ({}){}",
            if change.downgrade {
                "DOWNGRADE"
            } else {
                "changed "
            },
            escape(&change.name),
            versions(&change.old_versions),
            versions(&change.new_versions),
            signed_size(change.size_delta),
            if change.downgrade {
                " older version"
            } else {
                ""
            }
        );
    }
    for package in &packages.added {
        let _ = writeln!(
            out,
            "  added    {} {}{} ({})",
            escape(&package.name),
            versions(&package.versions),
            outputs(&package.outputs),
            size(package.size)
        );
    }
    for package in &packages.removed {
        let _ = writeln!(
            out,
            "  removed  {} {}{} ({})",
            escape(&package.name),
            versions(&package.versions),
            outputs(&package.outputs),
            size(package.size)
        );
    }
    for rebuild in &packages.rebuilt {
        let reason = if rebuild.unexplained {
            "with the same runtime dependencies (build inputs changed)"
        } else {
            "because a dependency changed"
        };
        let _ = writeln!(
            out,
            "  rebuilt  {} {} {reason} ({})",
            escape(&rebuild.name),
            versions(&rebuild.versions),
            signed_size(rebuild.size_delta)
        );
    }
    for duplicate in &packages.duplicated {
        let _ = writeln!(
            out,
            "  twice    {} {} ({}): {} store paths, before {}",
            escape(&duplicate.name),
            escape(&duplicate.version),
            escape(&duplicate.output),
            duplicate.new_paths,
            duplicate.old_paths
        );
    }
    if !packages.regenerated.is_empty() {
        let _ = writeln!(
            out,
            "  regenerated without a version: {}",
            escape(&packages.regenerated.join(", "))
        );
    }
    if !packages.largest_size_changes.is_empty() {
        let parts: Vec<String> = packages
            .largest_size_changes
            .iter()
            .map(|change| {
                format!(
                    "{} {}",
                    escape(&change.name),
                    signed_size(change.size_delta)
                )
            })
            .collect();
        let _ = writeln!(out, "  largest size changes: {}", parts.join(", "));
    }
    out.push('\n');
}

fn outputs(outputs: &[String]) -> String {
    if outputs.len() <= 1 && outputs.iter().all(|o| o == "out") {
        String::new()
    } else {
        format!(" [{}]", escape(&outputs.join(", ")))
    }
}

fn render_system(out: &mut String, system: &SystemDiff, title: &str) {
    let _ = writeln!(out, "== System{title}");
    let _ = writeln!(
        out,
        "  {} -> {}",
        system
            .old_system
            .as_ref()
            .map_or_else(|| "(none)".to_owned(), ToString::to_string),
        system.new_system
    );
    render_entries(out, "toplevel", "", &system.toplevel);
    render_entries(
        out,
        "systemd units",
        "/etc/systemd/system/",
        &system.units,
    );
    render_entries(out, "/etc", "/etc/", &system.etc);
    if let Some(bootspec) = &system.bootspec {
        render_bootspec(out, bootspec);
    }
    if let Some(initrd) = &system.initrd {
        render_initrd(out, initrd);
    }
    if system.truncated {
        let _ = writeln!(
            out,
            "  WARNING: a tree was too large or too deep; changes may be \
             missing"
        );
    }
    for specialisation in &system.specialisations {
        let status = status_word(specialisation.status);
        let name = escape(&specialisation.name);
        let _ = writeln!(out, "  specialisation {name}: {status}");
        if let Some(diff) = &specialisation.diff {
            render_system(out, diff, &format!(" (specialisation {name})"));
        }
    }
    out.push('\n');
}

fn render_bootspec(out: &mut String, bootspec: &BootspecDiff) {
    let _ = writeln!(out, "  boot.json:");
    match (bootspec.old_present, bootspec.new_present) {
        (false, true) => {
            let _ = writeln!(out, "    added");
        }
        (true, false) => {
            let _ = writeln!(out, "    removed");
        }
        _ => {}
    }
    let show = |value: &Option<String>| {
        value
            .as_deref()
            .map_or_else(|| "(none)".to_owned(), |v| escape(v).into_owned())
    };
    for change in &bootspec.changes {
        let _ = writeln!(
            out,
            "    {}: {} -> {}",
            escape(&change.field),
            show(&change.old),
            show(&change.new)
        );
    }
    for mismatch in &bootspec.mismatches {
        let _ = writeln!(out, "    DISAGREES: {}", escape(mismatch));
    }
}

/// Maximum number of initrd files listed in the text form; the JSON lists
/// them all up to [`super::MAX_INITRD_CHANGES`].
const MAX_INITRD_LINES: usize = 200;

fn render_initrd(out: &mut String, initrd: &InitrdDiff) {
    let archives = |summary: &Option<InitrdSummary>| {
        summary.as_ref().map_or_else(
            || "(none)".to_owned(),
            |summary| summary.archives.join(" + "),
        )
    };
    let _ = writeln!(
        out,
        "  initrd files ({} -> {}):",
        archives(&initrd.old),
        archives(&initrd.new)
    );
    for (side, summary) in [("old", &initrd.old), ("new", &initrd.new)] {
        if let Some(reason) =
            summary.as_ref().and_then(|s| s.not_read.as_ref())
        {
            let _ = writeln!(out, "    {side} not read: {}", escape(reason));
        }
    }
    for file in initrd.files.iter().take(MAX_INITRD_LINES) {
        let mut line =
            format!("    {} {}", status_word(file.status), escape(&file.path));
        if file.only_store_paths_changed {
            line.push_str(" (only store paths differ)");
        }
        if let Some(entry) = file.new.as_ref().or(file.old.as_ref()) {
            let _ = write!(line, " [mode {}]", entry.mode);
            if let Some(target) = &entry.target {
                let _ = write!(line, " -> {}", escape(target));
            }
        }
        let _ = writeln!(out, "{line}");
    }
    let left = initrd.files.len().saturating_sub(MAX_INITRD_LINES);
    if left > 0 || initrd.truncated {
        let _ =
            writeln!(out, "    ... and more files ({left} not shown here)");
    }
}

fn render_entries(
    out: &mut String,
    title: &str,
    prefix: &str,
    entries: &[EntryChange],
) {
    if entries.is_empty() {
        return;
    }
    let _ = writeln!(out, "  {title} ({}):", entries.len());
    render_entry_list(out, prefix, entries, "    ");
}

fn render_entry_list(
    out: &mut String,
    prefix: &str,
    entries: &[EntryChange],
    indent: &str,
) {
    for entry in entries {
        let mut line = format!(
            "{indent}{} {prefix}{}",
            status_word(entry.status),
            escape(&entry.path)
        );
        if let (Some(added), Some(removed)) =
            (entry.lines_added, entry.lines_removed)
        {
            let _ = write!(line, " (+{added} -{removed})");
        }
        if entry.only_store_paths_changed {
            line.push_str(" (only store paths differ)");
        }
        let _ = writeln!(out, "{line}");
        let inner = format!("{indent}  ");
        for (label, node) in [("old", &entry.old), ("new", &entry.new)] {
            if let Some(text) = node.as_ref().and_then(node_summary) {
                let _ = writeln!(out, "{inner}{label}: {text}");
            }
        }
        for bump in &entry.version_bumps {
            let _ = writeln!(
                out,
                "{inner}version: {} {} -> {}",
                escape(&bump.name),
                escape(&bump.old_version),
                escape(&bump.new_version)
            );
        }
        for directive in &entry.directives {
            let _ = writeln!(out, "{inner}{}", escape(&directive.describe()));
        }
        if let Some(hunks) = &entry.hunks
            && !entry.only_store_paths_changed
        {
            render_hunks(out, hunks, &inner);
        }
        if !entry.referenced.is_empty() {
            let _ = writeln!(out, "{inner}files it names that changed:");
            render_entry_list(
                out,
                "/nix/store/<hash>-",
                &entry.referenced,
                &format!("{inner}  "),
            );
        }
    }
}

/// Describes in one line a node that has no text diff to show.
fn node_summary(node: &Node) -> Option<String> {
    match node {
        Node::File { .. } => None,
        Node::StoreLink { target } | Node::RelativeLink { target } => {
            Some(format!("-> {}", escape(target)))
        }
        Node::OutsideLink { target } => Some(format!(
            "link to {} outside the Nix store (not followed)",
            escape(target)
        )),
        Node::Missing => Some("dangling link".to_owned()),
        Node::TooManyHops => Some("too many levels of links".to_owned()),
        Node::Special => Some("socket, device or pipe".to_owned()),
    }
}

fn status_word(status: ChangeStatus) -> &'static str {
    match status {
        ChangeStatus::Added => "added",
        ChangeStatus::Removed => "removed",
        ChangeStatus::Changed => "changed",
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn versions(versions: &[String]) -> String {
    let shown: Vec<String> = versions
        .iter()
        .map(|version| {
            if version.is_empty() {
                "(no version)".to_owned()
            } else {
                escape(version).into_owned()
            }
        })
        .collect();
    shown.join(", ")
}

fn size_change(old: Option<u64>, new: Option<u64>) -> String {
    let show = |value: Option<u64>| value.map_or("none".to_owned(), size);
    format!("{} -> {}", show(old), show(new))
}

/// Formats a byte count in binary units with one decimal.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024 * 1024 && unit + 2 < UNITS.len() {
        value /= 1024;
        unit += 1;
    }
    if value < 1024 {
        return format!("{value} {}", UNITS[unit]);
    }
    let tenths = value * 10 / 1024;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit + 1])
}

fn signed_size(delta: i64) -> String {
    let sign = if delta < 0 { "-" } else { "+" };
    format!("{sign}{}", size(delta.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(signed_size(-2048), "-2.0 KiB");
    }
}
