//! The boot chain and the kernel's settings: kernel, initrd, kernel
//! parameters, modules loaded at boot, modprobe configuration and
//! sysctl.

use std::collections::{BTreeMap, BTreeSet};

use countersign_core::StorePath;

use super::{Ctx, added_removed, config_line, line_changes};
use crate::diff::alerts::{AlertKind, Severity};
use crate::diff::packages::split_name;
use crate::diff::system::{ChangeStatus, EntryChange, Node, SystemFiles};
use crate::error::Result;

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
    "append-initrd-secrets",
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
                let detail = format!(
                    "{} -> {}; {REBOOT}",
                    describe_link(change.old.as_ref()),
                    describe_link(change.new.as_ref())
                );
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
    let risky = added.iter().chain(&removed).any(|param| {
        let key = param.split('=').next().unwrap_or(param);
        RISKY_PARAMS.contains(&key)
    });
    ctx.push(
        AlertKind::KernelParamsChanged,
        if risky {
            Severity::High
        } else {
            Severity::Medium
        },
        "kernel-params",
        format!("{}; {REBOOT}", added_removed(&added, &removed)),
    );
    Ok(())
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
        let severity = if RISKY_SYSCTL.contains(&key.as_str())
            || new.is_some_and(|v| {
                key == "kernel.core_pattern" && v.starts_with('|')
            }) {
            Severity::High
        } else {
            Severity::Medium
        };
        ctx.push(
            AlertKind::SysctlChanged,
            severity,
            "/etc/sysctl.d",
            format!("{key} {} -> {}", show(old), show(new)),
        );
    }
    Ok(())
}
