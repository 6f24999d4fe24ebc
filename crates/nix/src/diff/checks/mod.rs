//! The checks behind the alerts: each one reads the files that carry
//! one kind of security setting, from both systems, and compares their
//! meaning rather than their bytes.
//!
//! Every text is compared with its store paths reduced to package names
//! ([`reduce_store_paths`]), so a package update alone raises no alert.
//! What a store path's content means is compared where it matters:
//! generated, version-less files such as `users-groups.json`, the
//! wrappers' script or `firewall-start` are opened on both sides.

mod access;
mod boot;
mod drop_ins;
mod initrd;
mod services;
mod units;
mod users;

use std::collections::BTreeMap;

use countersign_core::{ApproverKey, Policy, StorePath};
use sha2::Digest as _;

use super::alerts::{Alert, AlertKind, Severity};
use super::reduce::reduce_store_paths;
use super::references::store_references;
use super::system::{
    ChangeStatus, EntryChange, Node, SystemDiff, SystemFiles, node_text,
    sidecar_base,
};
use crate::error::Result;

/// Runs every check on the two systems and returns the alerts, most
/// severe first.
pub(super) fn run(
    old: &SystemFiles,
    new: &SystemFiles,
    diff: &SystemDiff,
    initrd: &InitrdDetails,
) -> Result<Vec<Alert>> {
    let mut ctx = Ctx {
        old,
        new,
        diff,
        initrd,
        alerts: Vec::new(),
    };
    policy(&mut ctx)?;
    users::check(&mut ctx)?;
    access::ssh_keys(&mut ctx)?;
    access::sshd(&mut ctx)?;
    access::sudo(&mut ctx)?;
    access::pam(&mut ctx)?;
    access::polkit(&mut ctx)?;
    access::nix_conf(&mut ctx)?;
    services::wrappers(&mut ctx)?;
    services::firewall(&mut ctx)?;
    services::activation(&mut ctx)?;
    services::dry_activation(&mut ctx)?;
    services::tmpfiles(&mut ctx)?;
    services::udev(&mut ctx)?;
    boot::toplevel(&mut ctx)?;
    boot::bootspec(&mut ctx)?;
    boot::initrd_secrets(&mut ctx)?;
    initrd::check(&mut ctx);
    boot::modules(&mut ctx)?;
    boot::modprobe(&mut ctx)?;
    boot::sysctl(&mut ctx)?;
    sidecars(&mut ctx)?;
    other_etc(&mut ctx);
    services::system_path(&mut ctx)?;
    units::check(&mut ctx)?;
    outside_links(&mut ctx);
    let mut alerts = ctx.alerts;
    super::alerts::sort_alerts(&mut alerts);
    alerts.dedup();
    Ok(alerts)
}

/// What the initrd checks read besides the diff.
#[derive(Debug, Default)]
pub(super) struct InitrdDetails {
    /// Old and new texts of the changed small text files, by path in the
    /// initrd.
    pub texts: BTreeMap<String, (Option<String>, Option<String>)>,
    /// The targets of the old and new `init` links, store paths reduced.
    pub init_targets: Vec<String>,
}

/// The two systems and the alerts found so far.
pub(super) struct Ctx<'a> {
    pub old: &'a SystemFiles,
    pub new: &'a SystemFiles,
    pub diff: &'a SystemDiff,
    pub initrd: &'a InitrdDetails,
    pub alerts: Vec<Alert>,
}

impl Ctx<'_> {
    pub fn push(
        &mut self,
        kind: AlertKind,
        severity: Severity,
        subject: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.alerts
            .push(Alert::new(kind, severity, subject, detail));
    }

    /// Lists the `/etc` paths under `prefix` that changed in meaning:
    /// added, removed, or changed in more than store paths.
    pub fn etc_changed_under(&self, prefix: &str) -> Vec<String> {
        self.diff
            .etc
            .iter()
            .filter(|change| {
                change.path.starts_with(prefix)
                    && sidecar_base(&change.path).is_none()
                    && !change.only_store_paths_changed
            })
            .map(|change| change.path.clone())
            .collect()
    }

    /// Both texts of the `/etc` file `path`, empty where absent.
    pub fn etc_texts(&self, path: &str) -> Result<(String, String)> {
        Ok((
            self.old.etc_text(path)?.unwrap_or_default(),
            self.new.etc_text(path)?.unwrap_or_default(),
        ))
    }
}

/// Checks the countersign policy: approvers, threshold and the other
/// rules of quorum. Every change is critical, since it changes who can
/// change the system.
fn policy(ctx: &mut Ctx<'_>) -> Result<()> {
    for path in ctx.etc_changed_under("countersign/") {
        let subject = format!("/etc/{path}");
        let (old, new) = ctx.etc_texts(&path)?;
        if !path.ends_with(".toml") || old.is_empty() || new.is_empty() {
            let detail = match (old.is_empty(), new.is_empty()) {
                (true, false) => "added",
                (false, true) => "removed",
                _ => "changed",
            };
            ctx.push(
                AlertKind::PolicyChanged,
                Severity::Critical,
                &subject,
                format!("{detail}: this decides who approves changes"),
            );
            continue;
        }
        let details = match (
            Policy::from_toml(old.as_bytes()),
            Policy::from_toml(new.as_bytes()),
        ) {
            (Ok(before), Ok(after)) => policy_differences(&before, &after),
            (_, Err(error)) => {
                vec![format!("the new policy does not load: {error}")]
            }
            (Err(_), Ok(_)) => {
                vec!["the old policy did not load; the new one does".into()]
            }
        };
        let details = if details.is_empty() {
            vec!["the text changed; approvers and rules stay the same".into()]
        } else {
            details
        };
        for detail in details {
            ctx.push(
                AlertKind::PolicyChanged,
                Severity::Critical,
                &subject,
                detail,
            );
        }
    }
    Ok(())
}

fn policy_differences(old: &Policy, new: &Policy) -> Vec<String> {
    let mut details = Vec::new();
    if old.threshold != new.threshold {
        details
            .push(format!("threshold {} -> {}", old.threshold, new.threshold));
    }
    if old.host != new.host {
        details.push(format!("host {} -> {}", old.host, new.host));
    }
    if old.veto != new.veto {
        details.push(format!("veto {} -> {}", old.veto, new.veto));
    }
    if old.proposal_lifetime_secs != new.proposal_lifetime_secs {
        details.push(format!(
            "proposal lifetime {} s -> {} s",
            old.proposal_lifetime_secs, new.proposal_lifetime_secs
        ));
    }
    let names = |policy: &Policy| {
        policy
            .required
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if old.required != new.required {
        details.push(format!(
            "required approvers [{}] -> [{}]",
            names(old),
            names(new)
        ));
    }
    let key_text = |policy: &Policy, name| {
        policy.approvers.get(name).map(|approver| {
            let key = match &approver.key {
                ApproverKey::Ssh(key) => {
                    access::key_summary(&key.to_openssh().unwrap_or_default())
                }
                ApproverKey::WebAuthn(credential) => {
                    let digest =
                        sha2::Sha256::digest(&credential.credential_id);
                    let id: String = digest[..8]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    format!("webauthn credential {id}…")
                }
            };
            (key, approver.user_verification)
        })
    };
    let all: std::collections::BTreeSet<_> =
        old.approvers.keys().chain(new.approvers.keys()).collect();
    for name in all {
        match (key_text(old, name), key_text(new, name)) {
            (None, Some((key, _))) => {
                details.push(format!("approver {name} added with key {key}"));
            }
            (Some(_), None) => {
                details.push(format!("approver {name} removed"))
            }
            (Some(a), Some(b)) if a.0 != b.0 => {
                details.push(format!("approver {name} key {} -> {}", a.0, b.0))
            }
            (Some(a), Some(b)) if a.1 != b.1 => details.push(format!(
                "approver {name} user verification {} -> {}",
                a.1, b.1
            )),
            _ => {}
        }
    }
    details
}

/// Checks the `.mode`, `.uid` and `.gid` sidecars of `/etc` entries.
fn sidecars(ctx: &mut Ctx<'_>) -> Result<()> {
    let changes: Vec<EntryChange> = ctx
        .diff
        .etc
        .iter()
        .filter(|change| sidecar_base(&change.path).is_some())
        .cloned()
        .collect();
    for change in changes {
        let Some((base, kind)) = sidecar_base(&change.path) else {
            continue;
        };
        let read = |node: &Option<Node>| -> Result<Option<String>> {
            Ok(match node {
                Some(node) => node_text(node)?.map(|t| t.trim().to_owned()),
                None => None,
            })
        };
        let old = read(&change.old)?;
        let new = read(&change.new)?;
        let risky_mode = new
            .as_deref()
            .is_some_and(|mode| kind == "mode" && mode_is_risky(mode));
        let severity = match (&old, &new) {
            // A sidecar that comes with a new file: only its mode can
            // be worth an alert of its own.
            (None, Some(_)) if !risky_mode => continue,
            (Some(_), None) => continue,
            _ if risky_mode => Severity::High,
            _ if kind != "mode" => Severity::High,
            _ => Severity::Medium,
        };
        let show = |value: &Option<String>| {
            value.clone().unwrap_or_else(|| "(none)".to_owned())
        };
        let what = match kind {
            "mode" => "mode",
            "uid" => "owner",
            _ => "group",
        };
        ctx.push(
            AlertKind::EtcModeChanged,
            severity,
            format!("/etc/{base}"),
            format!("{what} {} -> {}", show(&old), show(&new)),
        );
    }
    Ok(())
}

/// Tells whether an octal mode sets setuid, setgid or write access for
/// group or others.
fn mode_is_risky(mode: &str) -> bool {
    match u32::from_str_radix(mode, 8) {
        Ok(bits) => bits & 0o6000 != 0 || bits & 0o022 != 0,
        Err(_) => false,
    }
}

/// `/etc` files without a check of their own, matched by exact path or,
/// for a pattern ending in `/`, by prefix; the first match counts.
const OTHER_ETC: &[(&str, AlertKind, Severity)] = &[
    (
        "ld-nix.so.preload",
        AlertKind::PreloadChanged,
        Severity::High,
    ),
    // NSS modules listed here supply users, groups and their uids to
    // every program, so a new module can add a uid 0 account.
    (
        "nsswitch.conf",
        AlertKind::AccessConfigChanged,
        Severity::High,
    ),
    // The system bus policy decides which users may call the methods of
    // services that run as root.
    (
        "dbus-1/system.conf",
        AlertKind::AccessConfigChanged,
        Severity::High,
    ),
    (
        "dbus-1/system.d/",
        AlertKind::AccessConfigChanged,
        Severity::High,
    ),
    (
        "login.defs",
        AlertKind::AccessConfigChanged,
        Severity::Medium,
    ),
    (
        "securetty",
        AlertKind::AccessConfigChanged,
        Severity::Medium,
    ),
    // sudo loads the policy plugin that sudo.conf names, as root, and
    // takes other programs and settings from it.
    ("sudo.conf", AlertKind::SudoConfigChanged, Severity::High),
    (
        "ssh/authorized_principals.d/",
        AlertKind::SshConfigChanged,
        Severity::High,
    ),
    (
        "ssh/authorized_keys.d/",
        AlertKind::SshKeyAdded,
        Severity::Info,
    ),
    (
        "ssh/sshd_config",
        AlertKind::SshdSettingChanged,
        Severity::Info,
    ),
    ("ssh/", AlertKind::SshConfigChanged, Severity::Medium),
    ("pam.d/", AlertKind::PamChanged, Severity::Info),
    ("pam/", AlertKind::PamChanged, Severity::High),
    ("security/", AlertKind::PamChanged, Severity::Medium),
    ("nix/nix.conf", AlertKind::NixSettingChanged, Severity::Info),
    ("nix/machines", AlertKind::NixConfigChanged, Severity::High),
    ("nix/", AlertKind::NixConfigChanged, Severity::Medium),
    ("profile", AlertKind::ShellInitChanged, Severity::Medium),
    ("bashrc", AlertKind::ShellInitChanged, Severity::Medium),
    ("zshenv", AlertKind::ShellInitChanged, Severity::Medium),
    ("zshrc", AlertKind::ShellInitChanged, Severity::Medium),
    ("zprofile", AlertKind::ShellInitChanged, Severity::Medium),
    (
        "set-environment",
        AlertKind::ShellInitChanged,
        Severity::Medium,
    ),
    ("profile.d/", AlertKind::ShellInitChanged, Severity::Medium),
    (
        "systemd/system-generators/",
        AlertKind::ShellInitChanged,
        Severity::High,
    ),
    (
        "systemd/system-shutdown/",
        AlertKind::ShellInitChanged,
        Severity::High,
    ),
    (
        "systemd/system-environment-generators/",
        AlertKind::ShellInitChanged,
        Severity::High,
    ),
    // The service manager's own settings apply to every unit, such as
    // `DefaultEnvironment=` or the default capability bounding set.
    (
        "systemd/system.conf",
        AlertKind::UnitChanged,
        Severity::High,
    ),
    (
        "systemd/system.conf.d/",
        AlertKind::UnitChanged,
        Severity::High,
    ),
    // User units, the user manager's settings and generators run in
    // every user's manager, root's included when root logs in.
    ("systemd/user/", AlertKind::UnitChanged, Severity::Medium),
    (
        "systemd/user.conf",
        AlertKind::UnitChanged,
        Severity::Medium,
    ),
    (
        "systemd/user.conf.d/",
        AlertKind::UnitChanged,
        Severity::Medium,
    ),
    (
        "systemd/user-generators/",
        AlertKind::ShellInitChanged,
        Severity::Medium,
    ),
    (
        "systemd/user-environment-generators/",
        AlertKind::ShellInitChanged,
        Severity::Medium,
    ),
];

/// Files under `/etc` that no other check reads; severity `Info` in
/// [`OTHER_ETC`] marks paths that a check of their own covers.
// NOTE: files outside OTHER_ETC raise nothing, such as
// `hosts.allow` or a program's own configuration under `/etc`.
fn other_etc(ctx: &mut Ctx<'_>) {
    let mut found = Vec::new();
    for change in &ctx.diff.etc {
        if change.only_store_paths_changed
            || sidecar_base(&change.path).is_some()
        {
            continue;
        }
        let rule = OTHER_ETC.iter().find(|(pattern, _, _)| {
            if pattern.ends_with('/') {
                change.path.starts_with(pattern)
            } else {
                change.path == *pattern
            }
        });
        if let Some((_, kind, severity)) = rule
            && *severity != Severity::Info
        {
            // A user unit that appears or disappears is reported as
            // units are.
            let user_unit = change.path.starts_with("systemd/user/");
            let (kind, severity) = match change.status {
                ChangeStatus::Added if user_unit => {
                    (AlertKind::UnitAdded, *severity)
                }
                ChangeStatus::Removed if user_unit => {
                    (AlertKind::UnitRemoved, Severity::Medium)
                }
                _ => (*kind, *severity),
            };
            found.push(Alert::new(
                kind,
                severity,
                format!("/etc/{}", change.path),
                status_text(change),
            ));
        }
    }
    ctx.alerts.extend(found);
}

/// `/etc` paths whose content decides who gets in or what runs as
/// root. When one of them becomes a link out of the store, its content
/// is no longer part of what approvers review.
const REVIEWED_ETC: &[&str] = &[
    "countersign/",
    "sudoers",
    "sudo.conf",
    "doas.conf",
    "pam.d/",
    "pam/",
    "security/",
    "ssh/",
    "nix/",
    "polkit-1/",
    "sysctl.d/",
    "modprobe.d/",
    "modules-load.d/",
    "tmpfiles.d/",
    "udev/",
    "systemd/",
    "ld-nix.so.preload",
    "profile",
    "bashrc",
    "set-environment",
];

/// `/etc` entries that are links leaving the store: high for files in
/// [`REVIEWED_ETC`], low for others (NixOS links `mtab` or `resolv.conf`
/// out of the store on purpose).
fn outside_links(ctx: &mut Ctx<'_>) {
    let mut found = Vec::new();
    for change in &ctx.diff.etc {
        if let Some(Node::OutsideLink { target }) = &change.new {
            let unchanged = matches!(
                &change.old,
                Some(Node::OutsideLink { target: old }) if old == target
            );
            if unchanged {
                continue;
            }
            let reviewed = REVIEWED_ETC
                .iter()
                .any(|prefix| change.path.starts_with(prefix));
            let (severity, note) = if reviewed {
                (Severity::High, "; its content is no longer reviewed")
            } else {
                (Severity::Low, "")
            };
            found.push(Alert::new(
                AlertKind::OutsideLink,
                severity,
                format!("/etc/{}", change.path),
                format!(
                    "links to {target} outside the Nix store (not \
                     followed){note}"
                ),
            ));
        }
    }
    ctx.alerts.extend(found);
}

/// Describes an entry's change in one line.
pub(super) fn status_text(change: &EntryChange) -> String {
    let mut text = match (change.lines_added, change.lines_removed) {
        (Some(added), Some(removed))
            if change.status == ChangeStatus::Changed =>
        {
            format!("changed (+{added} -{removed} lines)")
        }
        _ => match change.status {
            ChangeStatus::Added => "added".to_owned(),
            ChangeStatus::Removed => "removed".to_owned(),
            ChangeStatus::Changed => "changed".to_owned(),
        },
    };
    let named: Vec<&str> = change
        .referenced
        .iter()
        .filter(|r| !r.only_store_paths_changed)
        .map(|r| r.path.as_str())
        .collect();
    if !named.is_empty() {
        text.push_str(&format!(
            "; files it names changed: {}",
            named.join(", ")
        ));
    }
    text
}

/// Lines that are in one text and not the other, counted as multisets,
/// after `keep` turned each line into its comparable form (or dropped
/// it). Returns the added and the removed lines, in text order.
pub(super) fn line_changes(
    old: &str,
    new: &str,
    keep: impl Fn(&str) -> Option<String>,
) -> (Vec<String>, Vec<String>) {
    let lines = |text: &str| -> Vec<String> {
        text.lines().filter_map(&keep).collect()
    };
    let old_lines = lines(old);
    let new_lines = lines(new);
    let count = |lines: &[String]| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for line in lines {
            *counts.entry(line.clone()).or_default() += 1;
        }
        counts
    };
    let mut old_counts = count(&old_lines);
    let mut new_counts = count(&new_lines);
    let mut added = Vec::new();
    for line in &new_lines {
        match old_counts.get_mut(line) {
            Some(n) if *n > 0 => *n -= 1,
            _ => added.push(line.clone()),
        }
    }
    let mut removed = Vec::new();
    for line in &old_lines {
        match new_counts.get_mut(line) {
            Some(n) if *n > 0 => *n -= 1,
            _ => removed.push(line.clone()),
        }
    }
    (added, removed)
}

/// Returns the comparable form of a configuration line: store paths reduced,
/// spaces trimmed, comments (from `comment` on) and blank lines dropped.
pub(super) fn config_line(line: &str, comment: char) -> Option<String> {
    let line = match line.find(comment) {
        Some(index) => &line[..index],
        None => line,
    };
    let line = line.trim();
    (!line.is_empty()).then(|| reduce_store_paths(line))
}

/// Returns the comparable form of a line of a format whose comments are
/// whole lines starting with `#`, as in udev rules and tmpfiles.d: a
/// `#` later in the line is part of the rule. Store paths are reduced,
/// spaces trimmed, and comments and blank lines dropped.
pub(super) fn rule_line(line: &str) -> Option<String> {
    let line = line.trim();
    (!line.is_empty() && !line.starts_with('#'))
        .then(|| reduce_store_paths(line))
}

/// Raises a `kind` alert at high severity on `/etc/<path>` when
/// generated store files that the entry names changed in content, such
/// as a `TrustedUserCAKeys` file or a `pam_exec.so` script, whose naming
/// line reads the same once store paths are reduced. Files whose store
/// name `skip` accepts are left out. The detail lists each file as
/// `name (+added -removed)`.
pub(super) fn flag_changed_named_files(
    ctx: &mut Ctx<'_>,
    path: &str,
    kind: AlertKind,
    skip: impl Fn(&str) -> bool,
) {
    let Some(change) = ctx.diff.etc.iter().find(|c| c.path == path) else {
        return;
    };
    let changed = change
        .referenced
        .iter()
        .filter(|file| !file.only_store_paths_changed)
        .filter(|file| !skip(file.path.split('/').next().unwrap_or("")))
        .map(|file| match (file.lines_added, file.lines_removed) {
            (Some(added), Some(removed)) => {
                format!("{} (+{added} -{removed})", file.path)
            }
            _ => file.path.clone(),
        })
        .collect::<Vec<_>>();
    if changed.is_empty() {
        return;
    }
    ctx.push(
        kind,
        Severity::High,
        format!("/etc/{path}"),
        format!("a generated file it names changed: {}", changed.join(", ")),
    );
}

/// Levels of included files that are read.
const MAX_INCLUDE_DEPTH: usize = 3;

/// The target of an include line of a configuration file.
pub(super) enum Include<'a> {
    /// One file.
    File(&'a str),
    /// Every file of a folder that `keep` accepts by name, in name order.
    Folder(&'a str, fn(&str) -> bool),
    /// The files whose path matches a pattern with `*` and `?` in its
    /// last component, in name order.
    Pattern(&'a str),
}

/// The system and folder that the files named by include lines are read
/// from.
#[derive(Clone, Copy)]
pub(super) struct IncludeSource<'a> {
    /// The system whose `/etc` files are read.
    pub files: &'a SystemFiles,
    /// The folder that a relative name is relative to, such as
    /// `/etc/ssh`.
    pub dir: &'a str,
    /// Tells whether a check reads the `/etc` path on its own (such as
    /// `sudoers.d/` files), so that it is not read again here.
    pub read_elsewhere: fn(&str) -> bool,
}

/// Returns `text` with the content of each file that one of its include
/// lines names (as `include` parses the line) put right after that
/// line, the way the program reads it. Store files are read, and so are
/// `/etc` files of the same system, which a change may replace without
/// touching the including file. Other files are left alone: they are
/// not part of what is reviewed, and an include line that names one is
/// compared as a line. Included files are followed [`MAX_INCLUDE_DEPTH`]
/// levels deep.
///
/// At most [`MAX_INLINED_BYTES`] of included text are put in, since a
/// file that includes itself on many lines would otherwise grow to that
/// number of lines cubed. The second value tells whether includes were
/// left out for that reason.
pub(super) fn inline_includes(
    text: &str,
    include: for<'a> fn(&'a str) -> Option<Include<'a>>,
    source: IncludeSource<'_>,
) -> Result<(String, bool)> {
    let mut budget = MAX_INLINED_BYTES;
    let mut cut = false;
    let mut out = String::with_capacity(text.len());
    inline_includes_at(
        text,
        include,
        source,
        0,
        &mut Inlining {
            out: &mut out,
            budget: &mut budget,
            cut: &mut cut,
        },
    )?;
    Ok((out, cut))
}

/// Most bytes of included text that [`inline_includes`] puts in.
pub(super) const MAX_INLINED_BYTES: usize = 4 * 1024 * 1024;

/// The output of [`inline_includes`] and what is left of its budget.
struct Inlining<'a> {
    out: &'a mut String,
    budget: &'a mut usize,
    cut: &'a mut bool,
}

fn inline_includes_at(
    text: &str,
    include: for<'a> fn(&'a str) -> Option<Include<'a>>,
    source: IncludeSource<'_>,
    depth: usize,
    inlining: &mut Inlining<'_>,
) -> Result<()> {
    for line in text.lines() {
        inlining.out.push_str(line);
        inlining.out.push('\n');
        if depth >= MAX_INCLUDE_DEPTH || *inlining.cut {
            continue;
        }
        let included = match include(line.trim()) {
            Some(target) => included_texts(&target, source)?,
            None => Vec::new(),
        };
        for text in included {
            if text.len() > *inlining.budget {
                *inlining.cut = true;
                break;
            }
            *inlining.budget -= text.len();
            inline_includes_at(&text, include, source, depth + 1, inlining)?;
        }
    }
    Ok(())
}

/// A test that a file name passes when an include line names the file.
type NameTest = Box<dyn Fn(&str) -> bool>;

/// Reads the texts of the files that an include line names, in the
/// order the program reads them.
fn included_texts(
    target: &Include<'_>,
    source: IncludeSource<'_>,
) -> Result<Vec<String>> {
    use crate::store_read::{Resolved, read_dir_sorted, resolve};
    let absolute = |path: &str| {
        if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("{}/{path}", source.dir)
        }
    };
    let read_store_file = |path: &std::path::Path| -> Result<Option<String>> {
        Ok(match resolve(path)? {
            Resolved::File { path, size, .. }
                if size <= super::system::MAX_READ_BYTES =>
            {
                let (bytes, _) = crate::store_read::read_limited(
                    &path,
                    super::system::MAX_READ_BYTES,
                )?;
                super::text::as_text(&bytes).map(str::to_owned)
            }
            _ => None,
        })
    };
    let read_etc_file = |path: &str| -> Result<Option<String>> {
        if (source.read_elsewhere)(path) {
            return Ok(None);
        }
        source.files.etc_text(path)
    };
    // The folder and the test for names in it.
    let (folder, keep): (String, NameTest) = match target {
        Include::File(path) => {
            let path = absolute(path);
            let text = if path.starts_with("/nix/store/") {
                read_store_file(std::path::Path::new(&path))?
            } else if let Some(etc_path) = path.strip_prefix("/etc/") {
                read_etc_file(etc_path)?
            } else {
                None
            };
            return Ok(text.into_iter().collect());
        }
        Include::Folder(path, keep) => (absolute(path), Box::new(*keep)),
        Include::Pattern(pattern) => {
            let pattern = absolute(pattern);
            let Some((folder, name)) = pattern.rsplit_once('/') else {
                return Ok(Vec::new());
            };
            let name = name.to_owned();
            (
                folder.to_owned(),
                Box::new(move |candidate: &str| glob_match(&name, candidate)),
            )
        }
    };
    let folder = folder.trim_end_matches('/');
    let mut texts = Vec::new();
    if folder.starts_with("/nix/store/") {
        if let Resolved::Directory { path } =
            resolve(std::path::Path::new(folder))?
        {
            for name in read_dir_sorted(&path)? {
                if keep(&name)
                    && let Some(text) = read_store_file(&path.join(&name))?
                {
                    texts.push(text);
                }
            }
        }
    } else if let Some(etc_folder) = folder.strip_prefix("/etc/") {
        let prefix = format!("{etc_folder}/");
        let paths: Vec<&String> = source
            .files
            .etc_paths_under(&prefix)
            .filter(|path| {
                let name = &path[prefix.len()..];
                !name.contains('/') && keep(name)
            })
            .collect();
        for path in paths {
            if let Some(text) = read_etc_file(path)? {
                texts.push(text);
            }
        }
    }
    Ok(texts)
}

/// Tells whether `name` matches a file name pattern in which `*` stands
/// for any run of characters and `?` for one character. As in glob(3), a leading `.` matches only a `.` of the pattern.
pub(super) fn glob_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Positions to go back to after the last `*`, as in the usual
    // backtracking match that takes linear space.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(c) if *c == '?' || *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Longest quoted line in a detail, in characters.
const QUOTE_CHARS: usize = 160;
/// Most lines quoted in one detail.
const QUOTE_LINES: usize = 3;

/// Quotes up to three lines for a detail, each cut to a readable
/// length, with the number left out.
pub(super) fn quote_lines(lines: &[String]) -> String {
    let mut parts: Vec<String> = lines
        .iter()
        .take(QUOTE_LINES)
        .map(|line| {
            let mut text: String = line.chars().take(QUOTE_CHARS).collect();
            if line.chars().count() > QUOTE_CHARS {
                text.push('…');
            }
            format!("`{text}`")
        })
        .collect();
    if lines.len() > QUOTE_LINES {
        parts.push(format!("and {} more", lines.len() - QUOTE_LINES));
    }
    parts.join("; ")
}

/// "+`a`; -`b`" for added and removed lines.
pub(super) fn added_removed(added: &[String], removed: &[String]) -> String {
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("added {}", quote_lines(added)));
    }
    if !removed.is_empty() {
        parts.push(format!("removed {}", quote_lines(removed)));
    }
    parts.join("; ")
}

/// Finds the first store path in `text` whose name satisfies `wanted`.
pub(super) fn find_reference(
    text: &str,
    wanted: impl Fn(&str) -> bool,
) -> Option<StorePath> {
    store_references(text)
        .into_iter()
        .find(|path| wanted(path.name()))
}

/// The text that stands for a snippet in `dry-activate` when the snippet
/// does not support dry activation.
pub(super) const NO_DRY_ACTIVATION: &str = "(does not support dry activation)";

/// Splits an `activate` or `dry-activate` script into its snippets, by
/// name, on the `#### Activation script snippet <name>:` headers. Text
/// before the first header is under the name `(frame)`. The line
/// `#### Activation script snippet <name> does not support dry
/// activation.` of `dry-activate` becomes the snippet `<name>` with the
/// text [`NO_DRY_ACTIVATION`].
pub(super) fn activation_snippets(text: &str) -> BTreeMap<String, String> {
    const HEADER: &str = "#### Activation script snippet ";
    const NO_DRY: &str = " does not support dry activation.";
    let mut snippets = BTreeMap::new();
    let mut name = "(frame)".to_owned();
    let mut body = String::new();
    for line in text.split_inclusive('\n') {
        let Some(rest) = line.strip_prefix(HEADER) else {
            body.push_str(line);
            continue;
        };
        if let Some(found) = rest.trim_end().strip_suffix(':') {
            append_snippet(&mut snippets, &name, &body);
            name = found.to_owned();
            body.clear();
            continue;
        }
        if let Some(found) = rest.trim_end().strip_suffix(NO_DRY) {
            append_snippet(&mut snippets, &name, &body);
            snippets.insert(found.to_owned(), NO_DRY_ACTIVATION.to_owned());
            // What follows up to the next header belongs to the frame.
            name = "(frame)".to_owned();
            body.clear();
            continue;
        }
        body.push_str(line);
    }
    append_snippet(&mut snippets, &name, &body);
    snippets
}

/// Adds a snippet's text. What follows its failure report (the `fi`
/// after `Activation script snippet '%s' failed`), or the frame's
/// closing part, belongs to the frame, so that adding a snippet after
/// the last one does not move that text between snippets.
fn append_snippet(
    snippets: &mut BTreeMap<String, String>,
    name: &str,
    body: &str,
) {
    let (own, rest) = if name == "(frame)" {
        (body, "")
    } else {
        split_snippet_end(body)
    };
    for (key, text) in [(name, own), ("(frame)", rest)] {
        if !text.trim().is_empty() {
            snippets.entry(key.to_owned()).or_default().push_str(text);
        }
    }
}

fn split_snippet_end(body: &str) -> (&str, &str) {
    const REPORT: &str = "Activation script snippet '%s' failed";
    const CLOSING: &str =
        "# Make this configuration the current configuration.";
    if let Some(report) = body.find(REPORT)
        && let Some(fi) = body[report..].find("\nfi\n")
    {
        let end = report + fi + "\nfi\n".len();
        return body.split_at(end);
    }
    match body.find(CLOSING) {
        Some(index) => body.split_at(index),
        None => (body, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_split_on_headers() {
        let text = "#!/bin/sh\nsystemConfig=x\n\
                    #### Activation script snippet users:\n_localstatus=0\n\
                    add users\n\
                    #### Activation script snippet etc:\n_localstatus=0\n\
                    setup etc\nexit $_status\n";
        let snippets = activation_snippets(text);
        let names: Vec<&String> = snippets.keys().collect();
        assert_eq!(names, ["(frame)", "etc", "users"]);
        assert!(snippets["users"].contains("add users"));
        assert!(!snippets["users"].contains("setup etc"));
        let with_report = "#### Activation script snippet a:\nrun a\n\
            if (( _localstatus > 0 )); then\n  printf \"Activation script \
            snippet '%s' failed (%s)\\n\" \"a\" \"$_localstatus\"\nfi\n\n\
            exit $_status\n";
        let snippets = activation_snippets(with_report);
        assert!(!snippets["a"].contains("exit"));
        assert!(snippets["(frame)"].contains("exit $_status"));
    }

    #[test]
    fn dry_activation_placeholders_are_snippets() {
        let text = "#!/bin/sh\n\
            #### Activation script snippet specialfs does not support dry \
            activation.\n\
            #### Activation script snippet users:\n_localstatus=0\nadd users\n\
            #### Activation script snippet etc does not support dry \
            activation.\nexit $_status\n";
        let snippets = activation_snippets(text);
        assert_eq!(snippets["specialfs"], NO_DRY_ACTIVATION);
        assert_eq!(snippets["etc"], NO_DRY_ACTIVATION);
        assert!(snippets["users"].contains("add users"));
        assert!(!snippets["users"].contains("does not support"));
        assert!(snippets["(frame)"].contains("exit $_status"));
    }

    #[test]
    fn line_changes_count_duplicates() {
        let (added, removed) =
            line_changes("a\nb\nb\n", "b\nc\n", |l| Some(l.to_owned()));
        assert_eq!(added, ["c"]);
        assert_eq!(removed, ["a", "b"]);
    }

    #[test]
    fn risky_modes() {
        assert!(mode_is_risky("4755"));
        assert!(mode_is_risky("0666"));
        assert!(!mode_is_risky("0440"));
        assert!(!mode_is_risky("direct-symlink"));
    }

    #[test]
    fn rule_lines_keep_hash_signs() {
        assert_eq!(
            rule_line("  KERNEL==\"x#1\", RUN+=\"/bin/sh\"  ").as_deref(),
            Some("KERNEL==\"x#1\", RUN+=\"/bin/sh\"")
        );
        assert_eq!(rule_line("# RUN+=\"/bin/sh\""), None);
        assert_eq!(rule_line("   "), None);
    }

    #[test]
    fn glob_patterns_match_names() {
        assert!(glob_match("*.conf", "10-local.conf"));
        assert!(!glob_match("*.conf", ".hidden.conf"));
        assert!(glob_match(".*.conf", ".hidden.conf"));
        assert!(!glob_match("*.conf", "10-local.conf~"));
        assert!(glob_match("1?-*", "10-local"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn quotes_are_cut() {
        let lines: Vec<String> = (0..5).map(|i| format!("line {i}")).collect();
        assert_eq!(
            quote_lines(&lines),
            "`line 0`; `line 1`; `line 2`; and 2 more"
        );
    }
}
