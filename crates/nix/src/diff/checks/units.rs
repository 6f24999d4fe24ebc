//! systemd units, compared by their directives.
//!
//! A unit is read as systemd reads it: the unit file with its drop-ins
//! (`<unit>.d/*.conf`) applied in name order, so a single-valued setting
//! such as `User=` has its last value and the checks see the value
//! systemd uses. Two versions that set the
//! same directives raise nothing, however their lines are ordered or
//! formatted, and a change is described per directive as
//! `[Section] Key: old -> new`.

use std::collections::BTreeSet;

use super::{Ctx, status_text};
use crate::diff::alerts::{Alert, AlertKind, Severity};
use crate::diff::system::{ChangeStatus, EntryChange, Node, SystemFiles};
use crate::diff::unit_file::{DirectiveChange, UnitFile, directive_changes};
use crate::error::Result;

/// Maximum number of directive changes described in one alert.
const MAX_DIRECTIVES_LISTED: usize = 5;

/// Directives that decide who a service runs as, what it runs, what it
/// may reach or which secrets it gets. A change of one is named in the
/// alert. Keys starting with `Exec`, `Protect`, `Private` or `Restrict`
/// count too, see [`security_relevant`].
const SECURITY_KEYS: &[&str] = &[
    "User",
    "Group",
    "DynamicUser",
    "SupplementaryGroups",
    "PermissionsStartOnly",
    "RootDirectory",
    "RootImage",
    "AmbientCapabilities",
    "CapabilityBoundingSet",
    "NoNewPrivileges",
    "SecureBits",
    "SystemCallFilter",
    "SystemCallArchitectures",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "NoExecPaths",
    "BindPaths",
    "BindReadOnlyPaths",
    "TemporaryFileSystem",
    "DeviceAllow",
    "DevicePolicy",
    "IPAddressAllow",
    "IPAddressDeny",
    "LoadCredential",
    "LoadCredentialEncrypted",
    "SetCredential",
    "SetCredentialEncrypted",
    "ImportCredential",
    "Environment",
    "EnvironmentFile",
    "PassEnvironment",
    "UMask",
    "KeyringMode",
    "SELinuxContext",
    "AppArmorProfile",
    "SmackProcessLabel",
    "PAMName",
    "Delegate",
    "SocketUser",
    "SocketGroup",
    "SocketMode",
    "ListenStream",
    "ListenDatagram",
    "ListenSequentialPacket",
];

/// Directives that confine a service. Removing or changing one can widen
/// what it may do. Keys starting with `Protect`, `Private` or `Restrict`
/// count too, see [`confines`].
const SANDBOXING: &[&str] = &[
    "DynamicUser",
    "NoNewPrivileges",
    "CapabilityBoundingSet",
    "SystemCallFilter",
    "SystemCallArchitectures",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "NoExecPaths",
    "DevicePolicy",
    "IPAddressDeny",
    "RootDirectory",
    "UMask",
];

fn security_relevant(key: &str) -> bool {
    SECURITY_KEYS.contains(&key)
        || ["Exec", "Protect", "Private", "Restrict"]
            .iter()
            .any(|prefix| key.starts_with(prefix))
}

fn confines(key: &str) -> bool {
    SANDBOXING.contains(&key)
        || ["Protect", "Private", "Restrict"]
            .iter()
            .any(|prefix| key.starts_with(prefix))
}

/// Tells whether a path below `/etc/systemd/system` is a link that
/// enables a unit, such as `multi-user.target.wants/sshd.service`.
fn enabling_link(path: &str) -> bool {
    path.contains(".wants/")
        || path.contains(".requires/")
        || path.contains(".upholds/")
}

/// The unit a path belongs to: the path itself for a unit file, the
/// unit for a drop-in such as `sshd.service.d/overrides.conf`.
fn unit_of(path: &str) -> &str {
    match path.split_once(".d/") {
        Some((unit, _)) => unit,
        None => path,
    }
}

/// One unit of one system, with its drop-ins applied.
struct Merged {
    directives: UnitFile,
    /// Describes why the unit file itself could not be parsed, such as
    /// `links to /dev/null outside the Nix store (masked)`.
    unreadable: Option<String>,
}

/// Reads the unit `name` of a system with its drop-ins; `None` when the
/// system has neither.
fn merged(files: &SystemFiles, name: &str) -> Result<Option<Merged>> {
    let mut found = false;
    let mut unit = Merged {
        directives: UnitFile::default(),
        unreadable: None,
    };
    if let Some(node) = files.units.get(name) {
        found = true;
        match files.unit_text(name)? {
            Some(text) => unit.directives.apply(&text),
            None => unit.unreadable = Some(describe_unreadable(node)),
        }
    }
    // The map is sorted, so drop-ins come in file name order.
    // NOTE: only `<name>.d/` is read. systemd also applies the drop-ins
    // of the type (`service.d/`), of a template (`foo@.service.d/` for
    // `foo@bar.service`) and of each dash prefix (`foo-.service.d/`),
    // sorted with these by file name, so a `User=root` there is missed.
    let prefix = format!("{name}.d/");
    for path in files.units.keys() {
        let Some(file) = path.strip_prefix(&prefix) else {
            continue;
        };
        if !file.ends_with(".conf") || file.contains('/') {
            continue;
        }
        found = true;
        match files.unit_text(path)? {
            Some(text) => unit.directives.apply(&text),
            None => {
                // systemd applies a drop-in the diff cannot read, so its
                // settings are unknown here.
                let reason = format!(
                    "drop-in {file} {}",
                    describe_unreadable(&files.units[path])
                );
                unit.unreadable = Some(match unit.unreadable.take() {
                    Some(before) => format!("{before}; {reason}"),
                    None => reason,
                });
            }
        }
    }
    Ok(found.then_some(unit))
}

fn describe_unreadable(node: &Node) -> String {
    match node {
        Node::OutsideLink { target } if target == "/dev/null" => {
            "masked (links to /dev/null)".to_owned()
        }
        Node::OutsideLink { target } => {
            format!("links to {target} outside the Nix store (not followed)")
        }
        Node::File { .. } => "too large or not text".to_owned(),
        Node::Missing => "a dangling link".to_owned(),
        _ => "not a unit file".to_owned(),
    }
}

/// systemd units: added, removed, or changed in their directives or in
/// a generated file they run.
pub(super) fn check(ctx: &mut Ctx<'_>) -> Result<()> {
    let mut found = Vec::new();
    let mut units = BTreeSet::new();
    for change in &ctx.diff.units {
        if !enabling_link(&change.path) {
            units.insert(unit_of(&change.path).to_owned());
            continue;
        }
        // An enabling link's unit is reported on its own; only a link
        // that appears or disappears is worth an alert.
        let subject = format!("/etc/systemd/system/{}", change.path);
        match change.status {
            ChangeStatus::Added => found.push(Alert::new(
                AlertKind::UnitAdded,
                Severity::Medium,
                subject,
                "added",
            )),
            ChangeStatus::Removed => found.push(Alert::new(
                AlertKind::UnitRemoved,
                Severity::Medium,
                subject,
                "removed",
            )),
            ChangeStatus::Changed => {}
        }
    }
    for name in units {
        let changes: Vec<&EntryChange> = ctx
            .diff
            .units
            .iter()
            .filter(|c| !enabling_link(&c.path) && unit_of(&c.path) == name)
            .collect();
        let old = merged(ctx.old, &name)?;
        let new = merged(ctx.new, &name)?;
        let subject = format!("/etc/systemd/system/{name}");
        let alert = match (old, new) {
            (None, Some(new)) => Some(added_unit(&new)),
            (Some(_), None) => Some((
                AlertKind::UnitRemoved,
                Severity::Medium,
                "removed".to_owned(),
            )),
            (Some(old), Some(new)) => {
                changed_unit(&name, &changes, &old, &new)
            }
            (None, None) => None,
        };
        if let Some((kind, severity, detail)) = alert {
            found.push(Alert::new(kind, severity, subject, detail));
        }
    }
    ctx.alerts.extend(found);
    Ok(())
}

/// Tells whether `key` is a setting whose value is a command line, such
/// as `ExecStart` or `ExecStopPost`. `ExecPaths` and `ExecSearchPath`
/// share the prefix but hold folders.
fn is_command_key(key: &str) -> bool {
    key.starts_with("Exec") && !matches!(key, "ExecPaths" | "ExecSearchPath")
}

/// All command assignments of a unit, as `Key=value`.
fn commands(unit: &UnitFile) -> Vec<String> {
    let mut lines = Vec::new();
    for keys in unit.sections.values() {
        for (key, values) in keys {
            if is_command_key(key) {
                lines.extend(values.iter().map(|v| format!("{key}={v}")));
            }
        }
    }
    lines
}

fn added_unit(unit: &Merged) -> (AlertKind, Severity, String) {
    let commands = commands(&unit.directives);
    let mut detail = if commands.is_empty() {
        "added".to_owned()
    } else {
        format!("added, runs {}", super::quote_lines(&commands))
    };
    if let Some(reason) = &unit.unreadable {
        detail.push_str(&format!("; {reason}"));
    }
    let capabilities = unit
        .directives
        .sections
        .values()
        .any(|keys| keys.contains_key("AmbientCapabilities"));
    let severity = if capabilities
        || unit.unreadable.is_some()
        || commands.iter().any(|c| privileged(c))
    {
        Severity::High
    } else {
        Severity::Medium
    };
    (AlertKind::UnitAdded, severity, detail)
}

/// Tells whether an `Exec*=` assignment runs with full privileges: a `+`
/// prefix, or `!`/`!!`, which skip the user and sandboxing settings.
fn privileged(assignment: &str) -> bool {
    let Some((_, value)) = assignment.split_once('=') else {
        return false;
    };
    let prefix: String = value
        .chars()
        .take_while(|c| matches!(c, '@' | '-' | ':' | '+' | '!' | '|'))
        .collect();
    prefix.contains(['+', '!'])
}

/// Tells whether an `Exec*=` value runs a program outside the Nix store
/// and outside the system profile, whose content nobody reviewed.
fn runs_outside_store(value: &str) -> bool {
    let command = value
        .trim_start_matches(['@', '-', ':', '+', '!', '|'])
        .split_whitespace()
        .next()
        .unwrap_or_default();
    command.starts_with('/')
        && !["/nix/store/", "/run/current-system/", "/run/wrappers/"]
            .iter()
            .any(|prefix| command.starts_with(prefix))
}

/// Tells whether a unit names the user it runs as; without `User=` or
/// `DynamicUser=`, systemd runs a system service as root.
fn runs_as_user(unit: &UnitFile) -> bool {
    let user = unit.last("Service", "User");
    let dynamic = unit.last("Service", "DynamicUser");
    user.is_some_and(|user| user != "root" && user != "0")
        || dynamic
            .is_some_and(|value| matches!(value, "yes" | "true" | "1" | "on"))
}

fn changed_unit(
    name: &str,
    changes: &[&EntryChange],
    old: &Merged,
    new: &Merged,
) -> Option<(AlertKind, Severity, String)> {
    let directives = directive_changes(&old.directives, &new.directives);
    let named: Vec<String> = changes
        .iter()
        .flat_map(|change| &change.referenced)
        .filter(|r| !r.only_store_paths_changed)
        .map(|r| r.path.clone())
        .collect();
    let readable_change = old.unreadable != new.unreadable;
    if directives.is_empty() && named.is_empty() && !readable_change {
        // Reordered, reformatted, or only store paths changed.
        return None;
    }
    if directives.is_empty()
        && !readable_change
        && covered_elsewhere(name, changes)
    {
        return None;
    }
    let mut parts = Vec::new();
    if !directives.is_empty() {
        parts.push(format!("changed: {}", list_directives(&directives)));
    } else if readable_change {
        let status = changes
            .iter()
            .find(|c| c.path == name)
            .map_or_else(|| "changed".to_owned(), |c| status_text(c));
        parts.push(status);
    } else {
        parts.push("changed".to_owned());
    }
    if let Some(reason) = &new.unreadable {
        parts.push(format!("now {reason}"));
    }
    if !named.is_empty() {
        parts.push(format!("files it names changed: {}", named.join(", ")));
    }
    let keys: BTreeSet<&str> = directives
        .iter()
        .map(|change| change.key.as_str())
        .filter(|key| security_relevant(key))
        .collect();
    if !keys.is_empty() {
        let keys: Vec<&str> = keys.into_iter().collect();
        parts.push(format!("security-relevant: {}", keys.join(", ")));
    }
    let mut severity = directive_severity(&directives);
    if readable_change && new.unreadable.is_some() {
        severity = Severity::High;
    }
    if runs_as_user(&old.directives) && !runs_as_user(&new.directives) {
        severity = Severity::High;
        parts.push("now runs as root".to_owned());
    }
    Some((AlertKind::UnitChanged, severity, parts.join("; ")))
}

/// Describes up to [`MAX_DIRECTIVES_LISTED`] directive changes.
fn list_directives(directives: &[DirectiveChange]) -> String {
    let mut parts: Vec<String> = directives
        .iter()
        .take(MAX_DIRECTIVES_LISTED)
        .map(|change| {
            let text = change.describe();
            let mut cut: String = text.chars().take(200).collect();
            if text.chars().count() > 200 {
                cut.push('…');
            }
            cut
        })
        .collect();
    if directives.len() > MAX_DIRECTIVES_LISTED {
        parts.push(format!(
            "and {} more",
            directives.len() - MAX_DIRECTIVES_LISTED
        ));
    }
    parts.join("; ")
}

/// Rates a changed unit high when a confining directive is removed or
/// changed, when a command gains full privileges or runs a program
/// outside the store, or when capabilities are granted. Any other
/// change is medium.
fn directive_severity(directives: &[DirectiveChange]) -> Severity {
    let high = directives.iter().any(|change| {
        let key = change.key.as_str();
        let gained: Vec<&String> = change
            .new
            .iter()
            .filter(|value| !change.old.contains(value))
            .collect();
        let loosened = confines(key) && !change.old.is_empty();
        let exec = is_command_key(key)
            && gained.iter().any(|value| {
                privileged(&format!("{key}={value}"))
                    || runs_outside_store(value)
            });
        let capabilities = key == "AmbientCapabilities" && !gained.is_empty();
        loosened || exec || capabilities
    });
    if high {
        Severity::High
    } else {
        Severity::Medium
    }
}

/// Units whose script a check of its own reads line by line: the unit,
/// the store name of its script, and the store names of files that the
/// script names and the check reads too (the wrappers' programs).
const COVERED_UNITS: &[(&str, &str, &str)] = &[
    ("firewall.service", "firewall-start", ""),
    ("nftables.service", "nftables-rules", ""),
    (
        "suid-sgid-wrappers.service",
        "unit-script-suid-sgid-wrappers-start",
        "security-wrapper-",
    ),
];

/// Tells whether a unit whose directives are unchanged changed only in
/// the script that a check of its own compares: no changed file other
/// than that script and the files the check reads with it.
fn covered_elsewhere(unit: &str, changes: &[&EntryChange]) -> bool {
    let Some((_, script, nested)) =
        COVERED_UNITS.iter().find(|(name, _, _)| *name == unit)
    else {
        return false;
    };
    let within = |path: &str, name: &str| {
        !name.is_empty() && (path == name || path.starts_with(name))
    };
    changes
        .iter()
        .flat_map(|change| &change.referenced)
        .all(|c| {
            within(&c.path, script)
                && c.referenced.iter().all(|r| {
                    r.only_store_paths_changed
                        || (within(&r.path, nested) && r.referenced.is_empty())
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(old: &str, new: &str) -> Vec<DirectiveChange> {
        directive_changes(&UnitFile::parse(old), &UnitFile::parse(new))
    }

    #[test]
    fn drop_in_paths_belong_to_their_unit() {
        assert_eq!(unit_of("sshd.service.d/overrides.conf"), "sshd.service");
        assert_eq!(unit_of("sshd.service"), "sshd.service");
        assert!(enabling_link("multi-user.target.wants/sshd.service"));
        assert!(!enabling_link("sshd.service.d/overrides.conf"));
    }

    #[test]
    fn removed_sandboxing_is_high() {
        let removed =
            change("[Service]\nProtectSystem=strict\n", "[Service]\n");
        assert_eq!(directive_severity(&removed), Severity::High);
        let added = change("[Service]\n", "[Service]\nProtectSystem=strict\n");
        assert_eq!(directive_severity(&added), Severity::Medium);
    }

    #[test]
    fn privileged_and_outside_commands_are_high() {
        let plus = change(
            "[Service]\nExecStart=/nix/store/…-x/bin/x\n",
            "[Service]\nExecStart=+/nix/store/…-x/bin/x\n",
        );
        assert_eq!(directive_severity(&plus), Severity::High);
        let outside = change(
            "[Service]\nExecStart=/nix/store/…-x/bin/x\n",
            "[Service]\nExecStart=/tmp/x\n",
        );
        assert_eq!(directive_severity(&outside), Severity::High);
        let profile = change(
            "[Service]\nExecStart=/nix/store/…-x/bin/x\n",
            "[Service]\nExecStart=/run/current-system/sw/bin/x --flag\n",
        );
        assert_eq!(directive_severity(&profile), Severity::Medium);
    }

    #[test]
    fn exec_paths_are_folders_not_commands() {
        // A folder outside the store in `ExecPaths` is not a command that
        // runs outside the store.
        let paths = change("[Service]\n", "[Service]\nExecPaths=/srv/app\n");
        assert_eq!(directive_severity(&paths), Severity::Medium);
        let unit = UnitFile::parse(
            "[Service]\nExecSearchPath=/srv/bin\nExecStart=/tmp/x\n",
        );
        assert_eq!(commands(&unit), ["ExecStart=/tmp/x"]);
    }

    fn merged_unit(unit: &str, drop_ins: &[&str]) -> Merged {
        let mut directives = UnitFile::parse(unit);
        for drop_in in drop_ins {
            directives.apply(drop_in);
        }
        Merged {
            directives,
            unreadable: None,
        }
    }

    #[test]
    fn drop_in_user_root_runs_as_root() {
        let unit = "[Service]\nUser=backup\nExecStart=/nix/store/…-x/bin/x\n";
        let old = merged_unit(unit, &[]);
        let new = merged_unit(unit, &["[Service]\nUser=root\n"]);
        let (kind, severity, detail) =
            changed_unit("backup.service", &[], &old, &new).unwrap();
        assert_eq!(kind, AlertKind::UnitChanged);
        assert_eq!(severity, Severity::High);
        assert!(
            detail.contains("[Service] User: backup -> root"),
            "{detail}"
        );
        assert!(detail.contains("now runs as root"), "{detail}");
    }

    #[test]
    fn drop_in_user_override_keeps_user() {
        let unit = "[Service]\nUser=root\nExecStart=/nix/store/…-x/bin/x\n";
        let old = merged_unit(unit, &[]);
        let new = merged_unit(unit, &["[Service]\nUser=backup\n"]);
        let (_, severity, detail) =
            changed_unit("backup.service", &[], &old, &new).unwrap();
        assert_eq!(severity, Severity::Medium);
        assert!(
            detail.contains("[Service] User: root -> backup"),
            "{detail}"
        );
        assert!(!detail.contains("now runs as root"), "{detail}");
    }

    /// Returns the files of a system whose units are `units`, each
    /// written to a file in `dir`.
    fn system_with_units(
        dir: &std::path::Path,
        units: &[(&str, &[u8])],
    ) -> SystemFiles {
        let mut map = std::collections::BTreeMap::new();
        for (index, (name, bytes)) in units.iter().enumerate() {
            let location = dir.join(index.to_string());
            std::fs::write(&location, bytes).unwrap();
            let node = Node::File {
                location: location.to_string_lossy().into_owned(),
                size: bytes.len() as u64,
                executable: false,
                sha256: None,
            };
            map.insert((*name).to_owned(), node);
        }
        SystemFiles {
            toplevel: Default::default(),
            units: map,
            etc: Default::default(),
            specialisations: Default::default(),
            truncated: false,
        }
    }

    #[test]
    fn binary_drop_in_still_applies() {
        // systemd ends a line at NUL and reads bytes that are not UTF-8,
        // so this drop-in sets User=root.
        let dir = tempfile::tempdir().unwrap();
        let unit: &[u8] = b"[Service]\nUser=backup\nExecStart=/bin/x\n";
        for drop_in in [
            &b"[Service]\nUser=root\n\0"[..],
            &b"[Service]\nUser=root\n\xff\n"[..],
        ] {
            let files = system_with_units(
                dir.path(),
                &[
                    ("backup.service", unit),
                    ("backup.service.d/overrides.conf", drop_in),
                ],
            );
            let merged = merged(&files, "backup.service").unwrap().unwrap();
            assert_eq!(merged.directives.get("Service", "User"), ["root"]);
            assert_eq!(merged.unreadable, None);
        }
    }

    #[test]
    fn unreadable_drop_in_is_high() {
        let dir = tempfile::tempdir().unwrap();
        let unit: &[u8] = b"[Service]\nUser=backup\nExecStart=/bin/x\n";
        let old = system_with_units(dir.path(), &[("backup.service", unit)]);
        let mut new =
            system_with_units(dir.path(), &[("backup.service", unit)]);
        new.units.insert(
            "backup.service.d/overrides.conf".to_owned(),
            Node::Missing,
        );
        let old = merged(&old, "backup.service").unwrap().unwrap();
        let new = merged(&new, "backup.service").unwrap().unwrap();
        let (_, severity, detail) =
            changed_unit("backup.service", &[], &old, &new).unwrap();
        assert_eq!(severity, Severity::High);
        assert!(
            detail.contains("drop-in overrides.conf a dangling link"),
            "{detail}"
        );
    }

    #[test]
    fn root_is_the_default_user() {
        assert!(runs_as_user(&UnitFile::parse("[Service]\nUser=backup\n")));
        assert!(!runs_as_user(&UnitFile::parse("[Service]\nUser=root\n")));
        assert!(runs_as_user(&UnitFile::parse(
            "[Service]\nDynamicUser=yes\n"
        )));
        assert!(!runs_as_user(&UnitFile::parse("[Service]\nType=simple\n")));
    }
}
