//! Alerts: the security-relevant changes, shown above everything else.
//!
//! Each alert has a `kind` (its JSON value is the snake_case name, as
//! documented in `docs/alerts.md`), a severity, a subject (a path, user,
//! wrapper or port) and a one-line detail. The checks that find them are
//! in [`super::checks`].

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};

use super::source::SourceDiff;
use super::system::SystemDiff;

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
    UserAdded,
    UserRemoved,
    UserUidChanged,
    UserShellChanged,
    /// A password, password hash or password file of a user changes; the
    /// values are never shown.
    UserPasswordChanged,
    /// Home, primary group, description or kind of a user changes.
    UserChanged,
    GroupMemberAdded,
    GroupMemberRemoved,
    /// A group is added or removed, or its gid changes.
    GroupChanged,
    MutableUsersChanged,
    SshKeyAdded,
    SshKeyRemoved,
    /// An effective `sshd_config` setting changes.
    SshdSettingChanged,
    /// Another file under `/etc/ssh` changes.
    SshConfigChanged,
    SudoRuleAdded,
    SudoRuleRemoved,
    /// `Defaults`, includes or other settings of sudo or doas change.
    SudoConfigChanged,
    WrapperAdded,
    WrapperRemoved,
    WrapperChanged,
    FirewallPortOpened,
    FirewallPortClosed,
    FirewallRuleChanged,
    FirewallDisabled,
    /// The kernel changes; takes effect after a reboot.
    KernelChanged,
    /// The initrd changes; takes effect after a reboot.
    InitrdChanged,
    KernelParamsChanged,
    /// Another part of the boot chain changes (kernel modules, `init`,
    /// systemd, firmware); takes effect after a reboot.
    BootChanged,
    /// The program that copies secrets into the initrd at boot loader
    /// installation (`append-initrd-secrets`, `initrdSecrets` in
    /// `boot.json`) changes.
    InitrdSecretsChanged,
    /// A file of the initrd changes in a way that decides what runs at
    /// boot or who may log in: the init program or stage-1 script, SSH
    /// keys, or files under `etc/`.
    InitrdContentChanged,
    /// `boot.json` (bootspec) disappears, or its `init` changes.
    BootspecChanged,
    /// The new system's `boot.json` disagrees with its own files, so the
    /// boot loader may start something other than what was reviewed.
    BootspecMismatch,
    /// `bin/switch-to-configuration`, or a generated script it runs such
    /// as the boot loader installer or the pre-switch checks, changes.
    /// It runs as root on every switch.
    SwitchScriptChanged,
    /// Modules loaded at boot (`/etc/modules-load.d`) change.
    KernelModuleChanged,
    /// An `install` or `remove` line of modprobe, which runs a command
    /// as root when a module loads, changes.
    ModprobeInstallChanged,
    /// Other modprobe configuration (blacklists, options) changes.
    ModprobeChanged,
    SysctlChanged,
    ActivationSnippetAdded,
    ActivationSnippetRemoved,
    ActivationSnippetChanged,
    /// A snippet of `dry-activate` is added, removed or changed other
    /// than the same snippet of `activate`.
    DryActivationChanged,
    PamChanged,
    /// An effective `nix.conf` setting changes.
    NixSettingChanged,
    /// Another file under `/etc/nix` changes.
    NixConfigChanged,
    /// The `store` setting of `nix.conf` changes: Nix on this machine
    /// reads and writes another store.
    NixStoreChanged,
    TmpfilesChanged,
    UdevRuleChanged,
    PolkitRuleChanged,
    /// The `.mode`, `.uid` or `.gid` sidecar of an `/etc` entry changes.
    EtcModeChanged,
    /// `/etc/ld-nix.so.preload` changes.
    PreloadChanged,
    /// A file that decides where accounts come from or who may log in
    /// or call root's services changes: `nsswitch.conf`, the D-Bus
    /// system bus policy, `login.defs` or `securetty`.
    AccessConfigChanged,
    /// Code that every login shell runs (`/etc/profile`, `bashrc`,
    /// `set-environment`, ...) or a systemd generator changes.
    ShellInitChanged,
    /// Commands on `PATH` from the system path (`sw/bin`) appear,
    /// disappear, or come from another package (shadowing).
    SystemPathChanged,
    UnitAdded,
    UnitRemoved,
    UnitChanged,
    /// An `/etc` entry is a link that leaves the store.
    OutsideLink,
    SpecialisationChanged,
    /// A package's newest version is older than before.
    PackageDowngraded,
    /// A package was rebuilt with the same version while its runtime
    /// dependencies stayed the same.
    PackageRebuilt,
    /// The branch moved back to an ancestor of the deployed commit, so
    /// the proposal rolls the configuration back.
    SourceRolledBack,
    /// The new commit and the deployed commit are on different lines of
    /// history: the branch was rewritten, for example by a force push.
    SourceHistoryRewritten,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub severity: Severity,
    /// The path or name the alert is about, such as `/etc/sudoers`.
    pub subject: String,
    pub detail: String,
}

impl Alert {
    pub fn new(
        kind: AlertKind,
        severity: Severity,
        subject: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            severity,
            subject: subject.into(),
            detail: detail.into(),
        }
    }
}

/// Collects the alerts of a system diff and of its specialisations, most
/// severe first. A specialisation's alerts get its name in front of
/// their subject.
pub fn system_alerts(system: &SystemDiff) -> Vec<Alert> {
    let mut alerts = Vec::new();
    collect(system, "", &mut alerts);
    sort_alerts(&mut alerts);
    alerts
}

/// Returns the alerts of the source part: a branch that moved back to an
/// older commit, or whose history was rewritten. Without a deployed
/// commit there is nothing to compare with and no alert.
pub fn source_alerts(source: &SourceDiff) -> Vec<Alert> {
    let Some(old) = &source.old_commit else {
        return Vec::new();
    };
    if source.fast_forward != Some(false) {
        return Vec::new();
    }
    let new = &source.new_commit.id;
    // `commits` lists `old..new`, the commits reachable from the new
    // commit but not from the deployed one. When the new commit does not
    // descend from the deployed one and that list is empty, every commit
    // of the new one is in the deployed history: the new commit is an
    // ancestor of the deployed commit.
    let alert = if source.commits.is_empty() {
        Alert::new(
            AlertKind::SourceRolledBack,
            Severity::High,
            new.clone(),
            format!(
                "the branch moved back from {} to {new}: this proposal \
                 rolls the configuration back",
                old.id
            ),
        )
    } else {
        Alert::new(
            AlertKind::SourceHistoryRewritten,
            Severity::High,
            new.clone(),
            format!(
                "{new} does not descend from the deployed commit {} and \
                 is not its ancestor: the branch history was rewritten",
                old.id
            ),
        )
    };
    vec![alert]
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
    for alert in &system.alerts {
        let mut alert = alert.clone();
        alert.subject = format!("{prefix}{}", alert.subject);
        alerts.push(alert);
    }
    for specialisation in &system.specialisations {
        let label = format!("specialisation {}", specialisation.name);
        let status = match specialisation.status {
            super::ChangeStatus::Added => "added",
            super::ChangeStatus::Removed => "removed",
            super::ChangeStatus::Changed => "changed",
        };
        let mut nested = Vec::new();
        if let Some(diff) = &specialisation.diff {
            collect(diff, &format!("{label}: "), &mut nested);
        }
        // A changed specialisation whose own diff raises nothing (a
        // package update) is not worth an alert either.
        if specialisation.status != super::ChangeStatus::Changed
            || !nested.is_empty()
        {
            alerts.push(Alert::new(
                AlertKind::SpecialisationChanged,
                Severity::Info,
                label,
                format!(
                    "{status}; a complete system that can be booted or \
                     switched to"
                ),
            ));
        }
        alerts.extend(nested);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_puts_most_severe_first() {
        let alert = |severity, subject: &str| {
            Alert::new(AlertKind::UnitChanged, severity, subject, "")
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

    #[test]
    fn kinds_serialize_in_snake_case() {
        let json =
            serde_json::to_string(&AlertKind::ModprobeInstallChanged).unwrap();
        assert_eq!(json, "\"modprobe_install_changed\"");
    }
}
