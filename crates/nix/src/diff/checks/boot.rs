//! The boot chain and the kernel's settings: kernel, initrd, kernel
//! parameters, modules loaded at boot, modprobe configuration and
//! sysctl.

use std::collections::{BTreeMap, BTreeSet};

use countersign_core::StorePath;

use super::{Ctx, added_removed, config_line, glob_match, line_changes};
use crate::diff::alerts::{AlertKind, Severity};
use crate::diff::bootspec::{self, Bootspec};
use crate::diff::initrd::InitrdDiff;
use crate::diff::packages::split_name;
use crate::diff::reduce::reduce_store_paths;
use crate::diff::system::{
    ChangeStatus, EntryChange, MAX_READ_BYTES, Node, SystemFiles,
    referenced_changes,
};
use crate::error::Result;
use crate::store_read::{Resolved, read_limited, resolve};

const REBOOT: &str = "takes effect after a reboot";

/// Toplevel entries of the boot chain other than kernel and initrd.
const BOOT_ENTRIES: &[&str] = &[
    "kernel-modules",
    "init",
    "prepare-root",
    "systemd",
    "init-interface-version",
    "firmware",
    "dtbs",
];

/// Kernel parameters that switch off a protection or change what runs
/// first; matched by the part before `=`.
const RISKY_PARAMS: &[&str] = &[
    "init",
    "rdinit",
    "mitigations",
    "nosmap",
    "nosmep",
    "nokaslr",
    "nopti",
    "pti",
    "kpti",
    "spectre_v2",
    "selinux",
    "enforcing",
    "apparmor",
    "security",
    "lsm",
    "lockdown",
    "module.sig_enforce",
    "systemd.debug-shell",
    "rd.shell",
    "rd.systemd.debug-shell",
    "boot.shell_on_fail",
    "single",
    "emergency",
    "rescue",
    "systemd.unit",
    "systemd.setenv",
    "systemd.run",
    "systemd.mask",
    "systemd.wants",
    "iommu",
    "intel_iommu",
    "amd_iommu",
    "init_on_alloc",
    "init_on_free",
    "vsyscall",
    "debugfs",
    "slub_debug",
];

/// sysctl keys that guard the kernel or the network.
const RISKY_SYSCTL: &[&str] = &[
    "kernel.kptr_restrict",
    "kernel.dmesg_restrict",
    "kernel.yama.ptrace_scope",
    "kernel.unprivileged_bpf_disabled",
    "kernel.unprivileged_userns_clone",
    "user.max_user_namespaces",
    "kernel.kexec_load_disabled",
    "kernel.modules_disabled",
    "kernel.sysrq",
    "kernel.core_pattern",
    "kernel.modprobe",
    "kernel.perf_event_paranoid",
    "kernel.randomize_va_space",
    "fs.suid_dumpable",
    "fs.protected_symlinks",
    "fs.protected_hardlinks",
    "fs.protected_fifos",
    "fs.protected_regular",
    "vm.mmap_min_addr",
    "net.core.bpf_jit_harden",
    "dev.tty.ldisc_autoload",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv6.conf.all.forwarding",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
    "net.ipv4.conf.all.accept_redirects",
    "net.ipv6.conf.all.accept_redirects",
    "net.ipv4.conf.all.accept_source_route",
];

/// Kernel, initrd, kernel parameters and the other entries of the boot
/// chain in the toplevel.
pub(super) fn toplevel(ctx: &mut Ctx<'_>) -> Result<()> {
    let changes: Vec<EntryChange> = ctx.diff.toplevel.clone();
    for change in &changes {
        let name = change.path.as_str();
        match name {
            "kernel" | "initrd" => {
                let kind = if name == "kernel" {
                    AlertKind::KernelChanged
                } else {
                    AlertKind::InitrdChanged
                };
                let mut detail = format!(
                    "{} -> {}; {REBOOT}",
                    describe_link(change.old.as_ref()),
                    describe_link(change.new.as_ref())
                );
                if name == "initrd"
                    && let Some(initrd) = &ctx.diff.initrd
                {
                    detail.push_str(&initrd_contents(initrd));
                }
                ctx.push(kind, Severity::Medium, name, detail);
            }
            "kernel-params" => kernel_params(ctx, change.status)?,
            "bin/switch-to-configuration"
                if !change.only_store_paths_changed =>
            {
                ctx.push(
                    AlertKind::SwitchScriptChanged,
                    Severity::High,
                    name,
                    format!(
                        "{}; runs as root on every switch",
                        super::status_text(change)
                    ),
                );
            }
            _ if BOOT_ENTRIES.contains(&name) => {
                if change.only_store_paths_changed
                    && !matches!(change.new, Some(Node::StoreLink { .. }))
                {
                    continue;
                }
                let detail = match (&change.old, &change.new) {
                    (Some(Node::StoreLink { .. }), _)
                    | (_, Some(Node::StoreLink { .. })) => format!(
                        "{} -> {}; {REBOOT}",
                        describe_link(change.old.as_ref()),
                        describe_link(change.new.as_ref())
                    ),
                    _ => format!("{}; {REBOOT}", super::status_text(change)),
                };
                ctx.push(
                    AlertKind::BootChanged,
                    Severity::Medium,
                    name,
                    detail,
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Summarizes the changes of the initrd's files for the `initrd` alert.
fn initrd_contents(initrd: &InitrdDiff) -> String {
    let reasons: Vec<String> = [("old", &initrd.old), ("new", &initrd.new)]
        .into_iter()
        .filter_map(|(side, summary)| {
            let reason = summary.as_ref()?.not_read.as_ref()?;
            Some(format!("{side}: {reason}"))
        })
        .collect();
    if !reasons.is_empty() {
        return format!("; files not read ({})", reasons.join("; "));
    }
    let count = |status: ChangeStatus| {
        initrd
            .files
            .iter()
            .filter(|file| file.status == status)
            .count()
    };
    let rebuilt = initrd
        .files
        .iter()
        .filter(|file| file.only_store_paths_changed)
        .count();
    let mut text = format!(
        "; files: {} added, {} removed, {} changed",
        count(ChangeStatus::Added),
        count(ChangeStatus::Removed),
        count(ChangeStatus::Changed) - rebuilt,
    );
    if rebuilt > 0 {
        text.push_str(&format!(", {rebuilt} only in store paths"));
    }
    if initrd.truncated {
        text.push_str(" (list cut)");
    }
    text
}

fn kernel_params(ctx: &mut Ctx<'_>, status: ChangeStatus) -> Result<()> {
    let params = |files: &SystemFiles| -> Result<Vec<String>> {
        Ok(files
            .toplevel_text("kernel-params")?
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    };
    let old = params(ctx.old)?;
    let new = params(ctx.new)?;
    let (added, removed) =
        line_changes(&old.join("\n"), &new.join("\n"), |l| Some(l.to_owned()));
    if added.is_empty()
        && removed.is_empty()
        && status == ChangeStatus::Changed
    {
        return Ok(());
    }
    ctx.push(
        AlertKind::KernelParamsChanged,
        params_severity(&added, &removed),
        "kernel-params",
        format!("{}; {REBOOT}", added_removed(&added, &removed)),
    );
    Ok(())
}

/// Checks `boot.json`: disagreements with the system's own files that
/// the old system did not have, a removed document, and a changed
/// `init`. The kernel, initrd and kernel parameters are left to the
/// checks of the toplevel links, and the initrd secrets to
/// [`initrd_secrets`].
pub(super) fn bootspec(ctx: &mut Ctx<'_>) -> Result<()> {
    let Some(diff) = ctx.diff.bootspec.clone() else {
        return Ok(());
    };
    let old_mismatches = match (&ctx.diff.old_system, bootspec::read(ctx.old)?)
    {
        (Some(system), Some(spec)) => {
            bootspec::mismatches(&spec, ctx.old, system)?
        }
        _ => Vec::new(),
    };
    for mismatch in &diff.mismatches {
        if !old_mismatches.contains(mismatch) {
            ctx.push(
                AlertKind::BootspecMismatch,
                Severity::High,
                "boot.json",
                format!(
                    "{mismatch}; boot loaders that read boot.json start \
                     what it names"
                ),
            );
        }
    }
    if diff.old_present && !diff.new_present {
        ctx.push(
            AlertKind::BootspecChanged,
            Severity::Medium,
            "boot.json",
            "removed: boot loaders that read boot.json make no entry for \
             this system",
        );
    }
    for change in &diff.changes {
        let show = |value: &Option<String>| {
            value.clone().unwrap_or_else(|| "(none)".to_owned())
        };
        match change.field.as_str() {
            "init" if change.old.is_some() && change.new.is_some() => {
                ctx.push(
                    AlertKind::BootspecChanged,
                    Severity::High,
                    "boot.json",
                    format!(
                        "init {} -> {}: the boot loader starts another \
                         program as PID 1; {REBOOT}",
                        show(&change.old),
                        show(&change.new)
                    ),
                );
            }
            // Without a kernel-params file on either side, boot.json is
            // the only record of the kernel parameters.
            "kernelParams"
                if !ctx.old.toplevel.contains_key("kernel-params")
                    && !ctx.new.toplevel.contains_key("kernel-params") =>
            {
                let words = |value: &Option<String>| {
                    value.clone().unwrap_or_default().replace(' ', "\n")
                };
                let (added, removed) = line_changes(
                    &words(&change.old),
                    &words(&change.new),
                    |l| Some(l.to_owned()),
                );
                ctx.push(
                    AlertKind::KernelParamsChanged,
                    params_severity(&added, &removed),
                    "boot.json kernelParams",
                    format!("{}; {REBOOT}", added_removed(&added, &removed)),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Returns the path of a system's initrd secret appender: the target of
/// `append-initrd-secrets`, or else `initrdSecrets` of `boot.json`.
fn secret_appender(files: &SystemFiles) -> Result<Option<String>> {
    if let Some(Node::StoreLink { target }) =
        files.toplevel.get("append-initrd-secrets")
    {
        return Ok(Some(target.clone()));
    }
    Ok(match bootspec::read(files)? {
        Some(Ok(Bootspec { fields, .. })) => {
            fields.get("initrdSecrets").cloned()
        }
        _ => None,
    })
}

/// Reads the text of an appender script at a store path, `None` when it
/// is not a readable text file in the store.
fn appender_text(path: &str) -> Result<Option<String>> {
    if countersign_core::StorePath::parse_prefix(path).is_err() {
        return Ok(None);
    }
    match resolve(std::path::Path::new(path))? {
        Resolved::File { path, size, .. } if size <= MAX_READ_BYTES => {
            let (bytes, _) = read_limited(&path, MAX_READ_BYTES)?;
            Ok(String::from_utf8(bytes).ok())
        }
        _ => Ok(None),
    }
}

/// Checks the initrd secret appender, which the boot loader installer
/// runs as root to copy secrets (such as initrd SSH host keys) from the
/// machine into the initrd. It is compared by its script, so a rebuild
/// alone raises nothing.
pub(super) fn initrd_secrets(ctx: &mut Ctx<'_>) -> Result<()> {
    let old = secret_appender(ctx.old)?;
    let new = secret_appender(ctx.new)?;
    if old == new {
        return Ok(());
    }
    let old_text = match &old {
        Some(path) => appender_text(path)?,
        None => Some(String::new()),
    };
    let new_text = match &new {
        Some(path) => appender_text(path)?,
        None => Some(String::new()),
    };
    let detail = match (&old_text, &new_text) {
        (Some(a), Some(b)) => {
            // The copy lines are described as the secrets they copy.
            let keep = |line: &str| {
                config_line(line, '\u{0}')
                    .filter(|line| secret_copy(line).is_none())
            };
            let (added, removed) = line_changes(a, b, keep);
            let copies = |text: &str| -> Vec<String> {
                text.lines().filter_map(secret_copy).collect()
            };
            let (old_copies, new_copies) = (copies(a), copies(b));
            let copies_added: Vec<String> = new_copies
                .iter()
                .filter(|c| !old_copies.contains(c))
                .cloned()
                .collect();
            let copies_removed: Vec<String> = old_copies
                .iter()
                .filter(|c| !new_copies.contains(c))
                .cloned()
                .collect();
            let named: Vec<String> = referenced_changes(a, b, 1)?
                .into_iter()
                .filter(|c| !c.only_store_paths_changed)
                .map(|c| c.path)
                .collect();
            if added.is_empty()
                && removed.is_empty()
                && named.is_empty()
                && copies_added.is_empty()
                && copies_removed.is_empty()
            {
                return Ok(());
            }
            let mut parts = vec![match (&old, &new) {
                (None, Some(_)) => "added".to_owned(),
                (Some(_), None) => "removed".to_owned(),
                _ => "changed".to_owned(),
            }];
            if !copies_added.is_empty() {
                parts.push(format!("now copies {}", copies_added.join(", ")));
            }
            if !copies_removed.is_empty() {
                parts.push(format!(
                    "no longer copies {}",
                    copies_removed.join(", ")
                ));
            }
            let lines = added_removed(&added, &removed);
            if !lines.is_empty() {
                parts.push(format!("other lines {lines}"));
            }
            let mut detail = parts.join("; ");
            if !named.is_empty() {
                detail.push_str(&format!(
                    "; files it names changed: {}",
                    named.join(", ")
                ));
            }
            detail
        }
        _ => format!(
            "{} -> {} (the script is not readable text)",
            old.as_deref()
                .map_or("(none)".to_owned(), reduce_store_paths),
            new.as_deref()
                .map_or("(none)".to_owned(), reduce_store_paths)
        ),
    };
    ctx.push(
        AlertKind::InitrdSecretsChanged,
        Severity::High,
        "append-initrd-secrets",
        format!(
            "{detail}; runs as root when the boot loader is installed and \
             puts secrets into the initrd"
        ),
    );
    Ok(())
}

/// Describes a copy line of an appender script, `cp -a SOURCE
/// "$tmp/.initrd-secrets/DESTINATION"`, as `SOURCE to DESTINATION`.
fn secret_copy(line: &str) -> Option<String> {
    const MARKER: &str = ".initrd-secrets";
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first() != Some(&"cp") || words.len() < 3 {
        return None;
    }
    let last = words[words.len() - 1].trim_matches(['"', '\'']);
    let (_, destination) = last.split_once(MARKER)?;
    let source = words[words.len() - 2].trim_matches(['"', '\'']);
    let destination = format!("/{}", destination.trim_start_matches('/'));
    Some(format!("{source} to {destination}"))
}

/// Rates a change of kernel parameters: high when one that switches off a
/// protection or changes what runs first is involved.
fn params_severity(added: &[String], removed: &[String]) -> Severity {
    let risky = added
        .iter()
        .chain(removed)
        .any(|param| risky_param(param.split('=').next().unwrap_or(param)));
    if risky {
        Severity::High
    } else {
        Severity::Medium
    }
}

/// Tells whether a kernel parameter name is one of [`RISKY_PARAMS`], as
/// the kernel and systemd match names: `-` and `_` are the same
/// character, and systemd in the initrd reads `rd.systemd.*` too. A
/// `sysctl.<key>` parameter (or `sysctl/<key>`) counts when `<key>` is in
/// [`RISKY_SYSCTL`].
fn risky_param(name: &str) -> bool {
    let sysctl = name
        .strip_prefix("sysctl.")
        .or_else(|| name.strip_prefix("sysctl/"));
    if let Some(key) = sysctl {
        return RISKY_SYSCTL.contains(&key.replace('/', ".").as_str());
    }
    let name = name.replace('-', "_");
    let in_initrd = name.strip_prefix("rd.");
    RISKY_PARAMS.iter().any(|risky| {
        let risky = risky.replace('-', "_");
        risky == name || in_initrd == Some(risky.as_str())
    })
}

/// Names a link target by its package and version.
fn describe_link(node: Option<&Node>) -> String {
    match node {
        None => "(none)".to_owned(),
        Some(Node::StoreLink { target }) => {
            match StorePath::parse_prefix(target) {
                Ok((path, _)) => {
                    let (name, version, _) = split_name(path.name());
                    if version.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{name} {version}")
                    }
                }
                Err(_) => target.clone(),
            }
        }
        Some(Node::File { .. }) => "a file".to_owned(),
        Some(Node::OutsideLink { target }) => {
            format!("a link to {target} outside the store")
        }
        Some(_) => "(unreadable)".to_owned(),
    }
}

/// Modules loaded at boot, from every file in `/etc/modules-load.d`.
pub(super) fn modules(ctx: &mut Ctx<'_>) -> Result<()> {
    if ctx.etc_changed_under("modules-load.d/").is_empty() {
        return Ok(());
    }
    let modules = |files: &SystemFiles| -> Result<String> {
        let mut all = String::new();
        for path in files.etc_paths_under("modules-load.d/") {
            all.push_str(&files.etc_text(path)?.unwrap_or_default());
            all.push('\n');
        }
        Ok(all)
    };
    let (added, removed) =
        line_changes(&modules(ctx.old)?, &modules(ctx.new)?, |line| {
            let line = config_line(line, '#')?;
            (!line.starts_with(';')).then_some(line)
        });
    if added.is_empty() && removed.is_empty() {
        return Ok(());
    }
    ctx.push(
        AlertKind::KernelModuleChanged,
        Severity::Medium,
        "/etc/modules-load.d",
        added_removed(&added, &removed),
    );
    Ok(())
}

/// `/etc/modprobe.d`: `install` and `remove` lines run commands as root
/// when a module loads or unloads.
pub(super) fn modprobe(ctx: &mut Ctx<'_>) -> Result<()> {
    for path in ctx.etc_changed_under("modprobe.d/") {
        let (old, new) = ctx.etc_texts(&path)?;
        let (added, removed) = line_changes(&old, &new, |line| {
            config_line(line, '#')
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        });
        let runs = |line: &String| {
            line.starts_with("install ") || line.starts_with("remove ")
        };
        let (command_added, other_added): (Vec<String>, Vec<String>) =
            added.into_iter().partition(runs);
        let (command_removed, other_removed): (Vec<String>, Vec<String>) =
            removed.into_iter().partition(runs);
        let subject = format!("/etc/{path}");
        if !command_added.is_empty() || !command_removed.is_empty() {
            ctx.push(
                AlertKind::ModprobeInstallChanged,
                Severity::High,
                &subject,
                format!(
                    "{} (runs as root when the module loads)",
                    added_removed(&command_added, &command_removed)
                ),
            );
        }
        if !other_added.is_empty() || !other_removed.is_empty() {
            ctx.push(
                AlertKind::ModprobeChanged,
                Severity::Medium,
                &subject,
                added_removed(&other_added, &other_removed),
            );
        }
    }
    Ok(())
}

/// Reads the effective sysctl settings of all files in `/etc/sysctl.d`,
/// in name order so that later files override earlier ones.
fn sysctl_settings(files: &SystemFiles) -> Result<BTreeMap<String, String>> {
    let mut settings = BTreeMap::new();
    let paths: BTreeSet<&String> =
        files.etc_paths_under("sysctl.d/").collect();
    for path in paths {
        let text = files.etc_text(path)?.unwrap_or_default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            if let Some((key, value)) = line.split_once('=') {
                let key = key.trim().trim_start_matches('-').replace('/', ".");
                settings.insert(key, value.trim().to_owned());
            }
        }
    }
    Ok(settings)
}

/// `/etc/sysctl.d`: one alert per setting that changes.
pub(super) fn sysctl(ctx: &mut Ctx<'_>) -> Result<()> {
    if ctx.etc_changed_under("sysctl.d/").is_empty() {
        return Ok(());
    }
    let before = sysctl_settings(ctx.old)?;
    let after = sysctl_settings(ctx.new)?;
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let (old, new) = (before.get(key), after.get(key));
        if old == new {
            continue;
        }
        let show = |value: Option<&String>| {
            value
                .cloned()
                .unwrap_or_else(|| "(kernel default)".to_owned())
        };
        // systemd-sysctl applies a key with `*`, `?` or `[` to every
        // key that it matches.
        let pattern = key.contains(['*', '?', '[']);
        let matched: Vec<&str> = if pattern {
            RISKY_SYSCTL
                .iter()
                .copied()
                .filter(|risky| key.contains('[') || glob_match(key, risky))
                .collect()
        } else {
            Vec::new()
        };
        let severity = if RISKY_SYSCTL.contains(&key.as_str())
            || !matched.is_empty()
            || new.is_some_and(|v| {
                key == "kernel.core_pattern" && v.starts_with('|')
            }) {
            Severity::High
        } else {
            Severity::Medium
        };
        let mut detail = format!("{key} {} -> {}", show(old), show(new));
        if !matched.is_empty() && !key.contains('[') {
            detail.push_str(&format!(
                "; the pattern matches {}",
                matched.join(", ")
            ));
        }
        ctx.push(AlertKind::SysctlChanged, severity, "/etc/sysctl.d", detail);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risky_params_other_spellings() {
        let high = |param: &str| {
            params_severity(&[param.to_owned()], &[]) == Severity::High
        };
        assert!(high("systemd.debug_shell"));
        assert!(high("module.sig-enforce=0"));
        assert!(high("init-on-free=0"));
        assert!(high("rd.systemd.unit=emergency.target"));
        assert!(high("rd.shell"));
        assert!(high("rd.systemd.debug_shell"));
        assert!(high("systemd.setenv=LD_PRELOAD=/var/lib/x.so"));
        assert!(high("systemd.run=/bin/sh"));
        assert!(high("sysctl.kernel.yama.ptrace_scope=0"));
        assert!(high("sysctl.fs/protected_symlinks=0"));
        assert!(high("sysctl/kernel/kptr_restrict=0"));
        assert!(!high("quiet"));
        assert!(!high("sysctl.vm.swappiness=10"));
    }

    #[test]
    fn secret_copies_described() {
        assert_eq!(
            secret_copy(
                "cp -a '/etc/secrets/key' \"$tmp/.initrd-secrets//etc/ssh/key\""
            )
            .as_deref(),
            Some("/etc/secrets/key to /etc/ssh/key")
        );
        assert_eq!(secret_copy("mkdir -p \"$tmp/.initrd-secrets/etc\""), None);
        assert_eq!(secret_copy("cp a b"), None);
    }
}
