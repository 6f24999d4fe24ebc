//! Files inside the initrd that decide what runs at boot or who may log
//! in there: the init program and stage-1 script, SSH keys (initrd SSH
//! is how an administrator unlocks disks remotely, as root), and the
//! files under `etc/`.

use super::{Ctx, access, added_removed, config_line, line_changes};
use crate::diff::alerts::{Alert, AlertKind, Severity};
use crate::diff::initrd::{InitrdEntry, InitrdEntryKind, InitrdFileChange};
use crate::diff::system::ChangeStatus;

/// Maximum number of initrd alerts; the rest are counted in one more.
const MAX_INITRD_ALERTS: usize = 20;

/// Returns what a security-relevant initrd file is, and the severity of
/// its addition or change; `None` for other files.
fn classify(
    path: &str,
    init_targets: &[String],
) -> Option<(&'static str, Severity)> {
    let file_name = path.rsplit('/').next().unwrap_or(path);
    if path == "init" {
        return Some((
            "the init program, the first the kernel runs",
            Severity::High,
        ));
    }
    if init_targets.iter().any(|target| target == path) {
        return Some(("the stage-1 script", Severity::High));
    }
    if file_name == "authorized_keys"
        || path.contains("authorized_keys.d/")
        || path.contains("authorized_principals")
    {
        return Some((
            "SSH keys that may log in to the initrd as root",
            Severity::Critical,
        ));
    }
    if file_name.starts_with("ssh_host_") {
        return Some(("an SSH host key of the initrd", Severity::High));
    }
    if path.starts_with("etc/") {
        return Some(("a file under etc/ of the initrd", Severity::High));
    }
    None
}

/// Checks the files of the initrd that decide what runs at boot or who
/// may log in.
pub(super) fn check(ctx: &mut Ctx<'_>) {
    let Some(diff) = &ctx.diff.initrd else {
        return;
    };
    // The stage-1 script is what `init` links to, on either side.
    let init_targets: Vec<String> = ctx
        .initrd
        .init_targets
        .iter()
        .map(|target| target.trim_start_matches('/').to_owned())
        .collect();
    let mut found = Vec::new();
    let mut more = 0;
    for change in &diff.files {
        if change.only_store_paths_changed {
            continue;
        }
        let Some((what, severity)) = classify(&change.path, &init_targets)
        else {
            continue;
        };
        if found.len() >= MAX_INITRD_ALERTS {
            more += 1;
            continue;
        }
        let severity = match change.status {
            ChangeStatus::Removed if severity != Severity::High => {
                Severity::Low
            }
            _ => severity,
        };
        let detail = format!("{}: {what}", describe(ctx, change));
        found.push(Alert::new(
            AlertKind::InitrdContentChanged,
            severity,
            format!("initrd /{}", change.path),
            detail,
        ));
    }
    if more > 0 {
        found.push(Alert::new(
            AlertKind::InitrdContentChanged,
            Severity::High,
            "initrd",
            format!(
                "{more} more security-relevant files of the initrd changed"
            ),
        ));
    }
    ctx.alerts.extend(found);
}

/// Describes how an initrd file changed: its lines for text, otherwise
/// its kind, mode, owner, link target or content hash.
fn describe(ctx: &Ctx<'_>, change: &InitrdFileChange) -> String {
    let texts = ctx.initrd.texts.get(&change.path);
    let is_keys = change.path.contains("authorized_keys");
    if let Some((old, new)) = texts {
        let old_text = old.clone().unwrap_or_default();
        let new_text = new.clone().unwrap_or_default();
        let keep = |line: &str| {
            config_line(line, '\u{0}').map(|line| {
                if is_keys {
                    access::key_summary(&line)
                } else {
                    line
                }
            })
        };
        let (added, removed) = line_changes(&old_text, &new_text, keep);
        let status = status_word(change.status);
        let lines = added_removed(&added, &removed);
        let mut parts = vec![status.to_owned()];
        if !lines.is_empty() {
            parts.push(lines);
        }
        if let (Some(a), Some(b)) = (&change.old, &change.new) {
            parts.extend(metadata_changes(a, b));
        }
        return parts.join("; ");
    }
    match (&change.old, &change.new) {
        (Some(a), Some(b)) => {
            let mut parts = vec!["changed".to_owned()];
            parts.extend(metadata_changes(a, b));
            if a.sha256 != b.sha256 && a.kind == InitrdEntryKind::File {
                parts.push("content differs".to_owned());
            }
            parts.join("; ")
        }
        (None, Some(entry)) => format!("added {}", summary(entry)),
        (Some(entry), None) => format!("removed {}", summary(entry)),
        (None, None) => "unchanged".to_owned(),
    }
}

fn metadata_changes(old: &InitrdEntry, new: &InitrdEntry) -> Vec<String> {
    let mut parts = Vec::new();
    if old.kind != new.kind {
        parts.push(format!(
            "{} -> {}",
            kind_word(old.kind),
            kind_word(new.kind)
        ));
    }
    if old.mode != new.mode {
        parts.push(format!("mode {} -> {}", old.mode, new.mode));
    }
    if (old.uid, old.gid) != (new.uid, new.gid) {
        parts.push(format!(
            "owner {}:{} -> {}:{}",
            old.uid, old.gid, new.uid, new.gid
        ));
    }
    if old.target != new.target {
        let show = |target: &Option<String>| {
            target.clone().unwrap_or_else(|| "(none)".to_owned())
        };
        parts.push(format!(
            "links to {} -> {}",
            show(&old.target),
            show(&new.target)
        ));
    }
    parts
}

fn summary(entry: &InitrdEntry) -> String {
    match &entry.target {
        Some(target) => format!("link to {target}"),
        None => format!("{} mode {}", kind_word(entry.kind), entry.mode),
    }
}

fn kind_word(kind: InitrdEntryKind) -> &'static str {
    match kind {
        InitrdEntryKind::File => "file",
        InitrdEntryKind::Directory => "directory",
        InitrdEntryKind::Symlink => "link",
        InitrdEntryKind::Other => "device or pipe",
    }
}

fn status_word(status: ChangeStatus) -> &'static str {
    match status {
        ChangeStatus::Added => "added",
        ChangeStatus::Removed => "removed",
        ChangeStatus::Changed => "changed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_relevant_initrd_files() {
        let none: &[String] = &[];
        let stage_1 = &["nix/store/…-stage".to_owned()];
        assert_eq!(classify("init", none).unwrap().1, Severity::High);
        assert_eq!(
            classify("nix/store/…-stage", stage_1).unwrap().1,
            Severity::High
        );
        assert!(classify("nix/store/…-stage", none).is_none());
        assert_eq!(
            classify("etc/ssh/authorized_keys.d/root", none).unwrap().1,
            Severity::Critical
        );
        assert_eq!(
            classify("root/.ssh/authorized_keys", none).unwrap().1,
            Severity::Critical
        );
        assert_eq!(
            classify("etc/ssh/ssh_host_ed25519_key", none).unwrap().1,
            Severity::High
        );
        assert_eq!(classify("etc/fstab", none).unwrap().1, Severity::High);
        assert!(
            classify("nix/store/…-extra-utils/bin/ash", stage_1).is_none()
        );
    }
}
