//! Alerts: the security-relevant changes, shown above everything else.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};

use super::system::{ChangeStatus, EntryChange, Node, SystemDiff};

/// How much attention a change needs, from least to most.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// The subject area of an alert.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The countersign policy (approvers, threshold) changes.
    PolicyChanged,
    /// SSH daemon settings or authorized keys change.
    SshChanged,
    /// sudo or doas rules change.
    SudoChanged,
    /// PAM configuration changes.
    PamChanged,
    /// Nix daemon settings (trusted users, substituters, keys) change.
    NixConfigChanged,
    /// The kernel, its modules, its parameters or the initrd change;
    /// they take effect at the next boot.
    KernelChanged,
    UnitAdded,
    UnitRemoved,
    UnitChanged,
    /// An `/etc` entry is a link that leaves the store.
    OutsideLink,
    SpecialisationChanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub severity: Severity,
    /// The path or name the alert is about, such as `/etc/sudoers`.
    pub subject: String,
    pub detail: String,
}

/// `/etc` paths (without the leading `/etc/`) and the alert each one
/// raises, matched by exact name or, for a name ending in `/`, by prefix.
/// A mode, owner or group sidecar (`<name>.mode`, `.uid`, `.gid`) counts
/// as its file.
const ETC_RULES: &[(&str, AlertKind, Severity)] = &[
    ("countersign/", AlertKind::PolicyChanged, Severity::Critical),
    ("ssh/sshd_config", AlertKind::SshChanged, Severity::High),
    (
        "ssh/authorized_keys.d/",
        AlertKind::SshChanged,
        Severity::High,
    ),
    (
        "ssh/authorized_principals.d/",
        AlertKind::SshChanged,
        Severity::High,
    ),
    ("ssh/", AlertKind::SshChanged, Severity::Medium),
    ("sudoers", AlertKind::SudoChanged, Severity::High),
    ("sudoers.d/", AlertKind::SudoChanged, Severity::High),
    ("doas.conf", AlertKind::SudoChanged, Severity::High),
    ("pam.d/", AlertKind::PamChanged, Severity::High),
    ("pam/", AlertKind::PamChanged, Severity::High),
    ("security/", AlertKind::PamChanged, Severity::Medium),
    ("nix/nix.conf", AlertKind::NixConfigChanged, Severity::High),
    ("nix/machines", AlertKind::NixConfigChanged, Severity::High),
    (
        "nix/registry.json",
        AlertKind::NixConfigChanged,
        Severity::Medium,
    ),
];

/// Toplevel entries that change the boot chain.
const KERNEL_ENTRIES: &[&str] =
    &["kernel", "kernel-modules", "kernel-params", "initrd"];

/// Derives the alerts of a system diff, most severe first.
///
/// NOTE: users and groups, setuid wrappers, firewall rules and the
/// snippets of `activate` raise no alert of their own yet. Their changes
/// appear only as text diffs of the files that carry them.
pub fn system_alerts(system: &SystemDiff) -> Vec<Alert> {
    let mut alerts = Vec::new();
    collect(system, "", &mut alerts);
    sort_alerts(&mut alerts);
    alerts
}

/// Sorts most severe first, then by kind and subject, so the order does
/// not depend on how the alerts were found.
pub fn sort_alerts(alerts: &mut [Alert]) {
    alerts.sort_by(|a, b| {
        (Reverse(a.severity), a.kind, &a.subject, &a.detail).cmp(&(
            Reverse(b.severity),
            b.kind,
            &b.subject,
            &b.detail,
        ))
    });
}

fn collect(system: &SystemDiff, prefix: &str, alerts: &mut Vec<Alert>) {
    for change in &system.etc {
        if let Some((kind, severity)) = etc_rule(&change.path) {
            alerts.push(Alert {
                kind,
                severity,
                subject: format!("{prefix}/etc/{}", change.path),
                detail: status_text(change),
            });
        }
        if let Some(Node::OutsideLink { target }) = &change.new {
            let unchanged_link = matches!(
                &change.old,
                Some(Node::OutsideLink { target: old }) if old == target
            );
            if !unchanged_link {
                alerts.push(Alert {
                    kind: AlertKind::OutsideLink,
                    severity: Severity::Low,
                    subject: format!("{prefix}/etc/{}", change.path),
                    detail: format!(
                        "links to {target} outside the Nix store \
                         (not followed)"
                    ),
                });
            }
        }
    }
    for change in &system.units {
        let (kind, severity, detail) = match change.status {
            ChangeStatus::Added => {
                (AlertKind::UnitAdded, Severity::Medium, "added".to_owned())
            }
            ChangeStatus::Removed => (
                AlertKind::UnitRemoved,
                Severity::Medium,
                "removed".to_owned(),
            ),
            ChangeStatus::Changed if change.only_store_hashes_changed => (
                AlertKind::UnitChanged,
                Severity::Low,
                "changed, only in store path hashes".to_owned(),
            ),
            ChangeStatus::Changed => (
                AlertKind::UnitChanged,
                Severity::Medium,
                status_text(change),
            ),
        };
        alerts.push(Alert {
            kind,
            severity,
            subject: format!("{prefix}/etc/systemd/system/{}", change.path),
            detail,
        });
    }
    for change in &system.toplevel {
        if KERNEL_ENTRIES.contains(&change.path.as_str()) {
            alerts.push(Alert {
                kind: AlertKind::KernelChanged,
                severity: Severity::Medium,
                subject: format!("{prefix}{}", change.path),
                detail: format!(
                    "{}; takes effect at the next boot",
                    status_text(change)
                ),
            });
        }
    }
    for specialisation in &system.specialisations {
        let label = format!("specialisation {}", specialisation.name);
        alerts.push(Alert {
            kind: AlertKind::SpecialisationChanged,
            severity: Severity::Info,
            subject: label.clone(),
            detail: status_word(specialisation.status).to_owned(),
        });
        if let Some(diff) = &specialisation.diff {
            collect(diff, &format!("{label}: "), alerts);
        }
    }
}

fn etc_rule(path: &str) -> Option<(AlertKind, Severity)> {
    let base = [".mode", ".uid", ".gid"]
        .iter()
        .find_map(|suffix| path.strip_suffix(suffix))
        .unwrap_or(path);
    ETC_RULES
        .iter()
        .find(|(pattern, _, _)| match pattern.strip_suffix('/') {
            Some(_) => base.starts_with(pattern),
            None => base == *pattern,
        })
        .map(|(_, kind, severity)| (*kind, *severity))
}

fn status_word(status: ChangeStatus) -> &'static str {
    match status {
        ChangeStatus::Added => "added",
        ChangeStatus::Removed => "removed",
        ChangeStatus::Changed => "changed",
    }
}

fn status_text(change: &EntryChange) -> String {
    let mut text = match (change.lines_added, change.lines_removed) {
        (Some(added), Some(removed))
            if change.status == ChangeStatus::Changed =>
        {
            format!("changed (+{added} -{removed} lines)")
        }
        _ => status_word(change.status).to_owned(),
    };
    if !change.referenced.is_empty() {
        let names: Vec<&str> = change
            .referenced
            .iter()
            .map(|referenced| referenced.path.as_str())
            .collect();
        text.push_str(&format!(
            "; files it names changed: {}",
            names.join(", ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_rules_match() {
        let cases = [
            ("countersign/policy.toml", Some(AlertKind::PolicyChanged)),
            ("ssh/sshd_config", Some(AlertKind::SshChanged)),
            ("ssh/authorized_keys.d/root", Some(AlertKind::SshChanged)),
            ("sudoers", Some(AlertKind::SudoChanged)),
            ("sudoers.mode", Some(AlertKind::SudoChanged)),
            ("sudoers.d/extra", Some(AlertKind::SudoChanged)),
            ("pam.d/sshd", Some(AlertKind::PamChanged)),
            ("nix/nix.conf", Some(AlertKind::NixConfigChanged)),
            ("hostname", None),
            ("sudoersx", None),
        ];
        for (path, kind) in cases {
            assert_eq!(etc_rule(path).map(|(k, _)| k), kind, "{path}");
        }
    }

    #[test]
    fn policy_outranks_everything() {
        assert_eq!(
            etc_rule("countersign/policy.toml").map(|(_, s)| s),
            Some(Severity::Critical)
        );
    }

    #[test]
    fn sort_puts_most_severe_first() {
        let alert = |severity, subject: &str| Alert {
            kind: AlertKind::UnitChanged,
            severity,
            subject: subject.into(),
            detail: String::new(),
        };
        let mut alerts = vec![
            alert(Severity::Low, "a"),
            alert(Severity::Critical, "b"),
            alert(Severity::Medium, "c"),
        ];
        sort_alerts(&mut alerts);
        let order: Vec<_> = alerts.iter().map(|a| a.severity).collect();
        assert_eq!(
            order,
            [Severity::Critical, Severity::Medium, Severity::Low]
        );
    }
}
