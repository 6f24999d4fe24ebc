//! systemd units, compared by their directives.
//!
//! A unit is read as systemd reads it: the unit file with its drop-ins
//! applied in name order, those of `<unit>.d/` and of the shared folders
//! of its template, name prefixes and type (see [`super::drop_ins`]). So
//! a single-valued setting such as `User=` has its last value and the
//! checks see the value systemd uses. Two versions that set the
//! same directives raise nothing, however their lines are ordered or
//! formatted, and a change is described per directive as
//! `[Section] Key: old -> new`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::drop_ins::{drop_in_folders, is_unit_name, shared_folder_kind};
use super::{Ctx, status_text};
use crate::diff::alerts::{Alert, AlertKind, Severity};
use crate::diff::system::{ChangeStatus, EntryChange, Node, unit_node_text};
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
    /// The same directives with their store paths whole.
    raw: UnitFile,
    /// Describes why the unit file itself could not be parsed, such as
    /// `links to /dev/null outside the Nix store (masked)`.
    unreadable: Option<String>,
}

/// Returns the entries of a unit directory whose path starts with
/// `prefix`.
fn entries_under<'a>(
    units: &'a BTreeMap<String, Node>,
    prefix: &str,
) -> impl Iterator<Item = (&'a String, &'a Node)> {
    units
        .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(path, _)| path.starts_with(prefix))
}

/// Reads the unit `name` of a unit directory with its drop-ins.
/// Returns `None` when the directory has neither the unit file nor a
/// drop-in in the unit's own `<name>.d/`. Drop-ins of shared folders
/// apply too (see [`drop_in_folders`]) but do not make a unit exist.
fn merged(
    units: &BTreeMap<String, Node>,
    name: &str,
) -> Result<Option<Merged>> {
    let mut found = false;
    let mut unit = Merged {
        directives: UnitFile::default(),
        raw: UnitFile::default(),
        unreadable: None,
    };
    if let Some(node) = units.get(name) {
        found = true;
        match unit_node_text(node)? {
            Some(text) => {
                unit.directives.apply(&text);
                unit.raw.apply_raw(&text);
            }
            None => unit.unreadable = Some(describe_unreadable(node)),
        }
    }
    // systemd sorts the `.conf` files of all folders by file name, and
    // takes a name found in several folders from the most specific one,
    // which comes first in the list.
    let own = format!("{name}.d");
    let mut folders = drop_in_folders(name);
    // systemd applies the drop-ins of every name of a unit, so the
    // folders of its aliases follow its own folder.
    let alias_folders =
        aliases_of(units, name).map(|alias| format!("{alias}.d"));
    folders.splice(1..1, alias_folders);
    let mut chosen: BTreeMap<&str, &String> = BTreeMap::new();
    for folder in folders {
        let prefix = format!("{folder}/");
        for (path, _) in entries_under(units, &prefix) {
            let file = &path[prefix.len()..];
            if !file.ends_with(".conf") || file.contains('/') {
                continue;
            }
            found |= folder == own;
            chosen.entry(file).or_insert(path);
        }
    }
    let own_prefix = format!("{own}/");
    for (file, path) in chosen {
        let node = &units[path];
        match unit_node_text(node)? {
            Some(text) => {
                unit.directives.apply(&text);
                unit.raw.apply_raw(&text);
            }
            None => {
                // systemd applies a drop-in the diff cannot read, so its
                // settings are unknown here. A drop-in of a shared
                // folder is named with its folder.
                let label = if path.starts_with(&own_prefix) {
                    file
                } else {
                    path.as_str()
                };
                let reason =
                    format!("drop-in {label} {}", describe_unreadable(node));
                unit.unreadable = Some(match unit.unreadable.take() {
                    Some(before) => format!("{before}; {reason}"),
                    None => reason,
                });
            }
        }
    }
    Ok(found.then_some(unit))
}

/// Returns the `ExecStart=` values of the unit `name` of a system with
/// its drop-ins applied, store paths whole: the commands that systemd
/// runs to start it, in order. A drop-in that resets `ExecStart=` and
/// names another script replaces the unit file's command.
pub(super) fn exec_start(
    units: &BTreeMap<String, Node>,
    name: &str,
) -> Result<Vec<String>> {
    Ok(merged(units, name)?
        .map(|unit| unit.raw.get("Service", "ExecStart").to_vec())
        .unwrap_or_default())
}

/// Lists the aliases of the unit `name`: links at the top of the unit
/// directory whose text is `name`, as NixOS writes them for
/// `systemd.units.<name>.aliases`.
fn aliases_of<'a>(
    units: &'a BTreeMap<String, Node>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    units
        .iter()
        .filter(move |(path, node)| {
            !path.contains('/')
                && is_unit_name(path)
                && matches!(node, Node::RelativeLink { target } if target == name)
        })
        .map(|(path, _)| path.as_str())
}

/// Returns the unit that `name` is an alias of in a unit directory, or
/// `None` when `name` is not a link to another unit.
fn alias_target<'a>(
    units: &'a BTreeMap<String, Node>,
    name: &str,
) -> Option<&'a str> {
    match units.get(name)? {
        Node::RelativeLink { target }
            if !target.contains('/')
                && is_unit_name(target)
                && units.contains_key(target) =>
        {
            Some(target)
        }
        _ => None,
    }
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
/// a generated file they run, and shared drop-in folders that changed.
pub(super) fn check(ctx: &mut Ctx<'_>) -> Result<()> {
    let mut found = Vec::new();
    let mut units = BTreeSet::new();
    let mut shared = BTreeSet::new();
    for change in &ctx.diff.units {
        if !enabling_link(&change.path) {
            let unit = unit_of(&change.path);
            // A drop-in of a shared folder changes the units it applies
            // to, which are compared in one alert for the folder.
            if unit != change.path && shared_folder_kind(unit).is_some() {
                shared.insert(unit.to_owned());
            } else {
                units.insert(owner_of_change(ctx, &change.path).to_owned());
            }
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
            .filter(|c| {
                !enabling_link(&c.path)
                    && (unit_of(&c.path) == name
                        || owner_of_change(ctx, &c.path) == name)
            })
            .collect();
        let subject = format!("/etc/systemd/system/{name}");
        if let Some((kind, detail)) = alias_change(ctx, &name) {
            found.push(Alert::new(kind, Severity::Medium, subject, detail));
            continue;
        }
        let old = merged(&ctx.old.units, &name)?;
        let new = merged(&ctx.new.units, &name)?;
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
    for name in shared {
        if let Some((severity, detail)) =
            changed_shared_folder(&ctx.old.units, &ctx.new.units, &name)?
        {
            let subject = format!("/etc/systemd/system/{name}.d/");
            found.push(Alert::new(
                AlertKind::UnitChanged,
                severity,
                subject,
                detail,
            ));
        }
    }
    ctx.alerts.extend(found);
    Ok(())
}

/// Describes the change of `name` when it is an alias, or absent, in
/// each system: an alias added, removed or pointed at another unit.
/// `None` when either system has `name` as something else, such as a
/// unit file, which the unit comparison reports.
fn alias_change(ctx: &Ctx<'_>, name: &str) -> Option<(AlertKind, String)> {
    match (
        alias_or_absent(&ctx.old.units, name)?,
        alias_or_absent(&ctx.new.units, name)?,
    ) {
        (None, Some(unit)) => Some((
            AlertKind::UnitAdded,
            format!("added as an alias of {unit}"),
        )),
        (Some(unit), None) => Some((
            AlertKind::UnitRemoved,
            format!("removed; it was an alias of {unit}"),
        )),
        (Some(old), Some(new)) if old != new => Some((
            AlertKind::UnitChanged,
            format!("now an alias of {new} instead of {old}"),
        )),
        _ => None,
    }
}

/// Returns `Some(None)` when a unit directory has no `name`,
/// `Some(Some(unit))` when `name` is an alias of `unit`, and `None` when
/// it is anything else.
fn alias_or_absent<'a>(
    units: &'a BTreeMap<String, Node>,
    name: &str,
) -> Option<Option<&'a str>> {
    match units.get(name) {
        None => Some(None),
        Some(_) => alias_target(units, name).map(Some),
    }
}

/// Returns the unit that a changed path of the unit directory belongs
/// to. A drop-in of an alias's folder belongs to the unit the alias
/// names in either system. An alias link itself that appears or
/// disappears is reported under the alias's own name.
fn owner_of_change<'a>(ctx: &'a Ctx<'_>, path: &'a str) -> &'a str {
    let unit = unit_of(path);
    if unit == path {
        return unit;
    }
    alias_target(&ctx.new.units, unit)
        .or_else(|| alias_target(&ctx.old.units, unit))
        .unwrap_or(unit)
}

/// Lists the units of a unit directory: entries at its top whose name
/// is a unit name. Aliases (relative links to another unit) and enabling
/// links are left out, since they name a unit listed on its own.
fn unit_names(units: &BTreeMap<String, Node>) -> impl Iterator<Item = &str> {
    units
        .iter()
        .filter(|(path, node)| {
            !path.contains('/')
                && is_unit_name(path)
                && !matches!(node, Node::RelativeLink { .. })
        })
        .map(|(path, _)| path.as_str())
}

/// Copies the unit directory `base`, with the entries under `prefix`
/// taken from `other`.
fn with_entries_of(
    base: &BTreeMap<String, Node>,
    other: &BTreeMap<String, Node>,
    prefix: &str,
) -> BTreeMap<String, Node> {
    let mut units = base.clone();
    units.retain(|path, _| !path.starts_with(prefix));
    units.extend(
        entries_under(other, prefix)
            .map(|(path, node)| (path.clone(), node.clone())),
    );
    units
}

/// Maximum number of unit names listed in one alert.
const MAX_UNITS_LISTED: usize = 5;

/// Names up to [`MAX_UNITS_LISTED`] units, then how many more there are.
fn list_units(units: &[&str]) -> String {
    let mut text = units
        .iter()
        .take(MAX_UNITS_LISTED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if units.len() > MAX_UNITS_LISTED {
        text.push_str(&format!(
            " and {} more",
            units.len() - MAX_UNITS_LISTED
        ));
    }
    text
}

/// Compares the units that the shared drop-in folder `<name>.d/` applies
/// to, in either system, and describes the change of the folder alone.
///
/// Each unit is read twice from one system with only the folder's
/// entries swapped: from the old system with the new folder, or, for a
/// unit that only the new system has, from the new system with the old
/// folder. Returns the highest severity of the units and the detail,
/// or `None` when the change alters no unit.
///
/// NOTE: when two shared folders change at once and a file of one
/// overrides a file of the other, each is still judged against the
/// other's old files, so an alert may list a change the other cancels.
fn changed_shared_folder(
    old: &BTreeMap<String, Node>,
    new: &BTreeMap<String, Node>,
    name: &str,
) -> Result<Option<(Severity, String)>> {
    let folder = format!("{name}.d");
    let prefix = format!("{folder}/");
    let applies: BTreeSet<&str> = unit_names(old)
        .chain(unit_names(new))
        .filter(|unit| drop_in_folders(unit).contains(&folder))
        .collect();
    let old_with_new_folder = with_entries_of(old, new, &prefix);
    let new_with_old_folder = with_entries_of(new, old, &prefix);

    let mut severity = Severity::Info;
    let mut changed = 0;
    // Each change description, with the units it applies to.
    let mut by_change: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut keys = BTreeSet::new();
    let mut now_root = Vec::new();
    for unit in &applies {
        let (before, after) = match merged(old, unit)? {
            Some(before) => {
                (Some(before), merged(&old_with_new_folder, unit)?)
            }
            None => (merged(&new_with_old_folder, unit)?, merged(new, unit)?),
        };
        let (Some(before), Some(after)) = (before, after) else {
            continue;
        };
        let effect = assess(&before, &after);
        if effect.directives.is_empty() && !effect.readable_change {
            continue;
        }
        changed += 1;
        severity = severity.max(effect.severity);
        keys.extend(
            security_keys(&effect.directives)
                .into_iter()
                .map(str::to_owned),
        );
        if effect.now_root {
            now_root.push(*unit);
        }
        let mut descriptions: Vec<String> = effect
            .directives
            .iter()
            .map(|change| cut(&change.describe()))
            .collect();
        if effect.readable_change {
            descriptions.push(match &after.unreadable {
                Some(reason) => format!("now {reason}"),
                None => "readable again".to_owned(),
            });
        }
        for description in descriptions {
            by_change.entry(description).or_default().push(unit);
        }
    }
    if changed == 0 {
        // Reordered, reformatted, overridden by every unit, or no unit
        // of that kind.
        return Ok(None);
    }

    let applies: Vec<&str> = applies.into_iter().collect();
    let kind = shared_folder_kind(name).unwrap_or("shared");
    let mut parts = vec![format!(
        "{kind} drop-in folder for {} units ({}); changes {changed} of them",
        applies.len(),
        list_units(&applies)
    )];
    let mut listed: Vec<String> = by_change
        .iter()
        .take(MAX_DIRECTIVES_LISTED)
        .map(|(description, units)| {
            format!("{description} ({})", list_units(units))
        })
        .collect();
    if by_change.len() > MAX_DIRECTIVES_LISTED {
        listed.push(format!(
            "and {} more",
            by_change.len() - MAX_DIRECTIVES_LISTED
        ));
    }
    parts.push(format!("changed: {}", listed.join("; ")));
    if !keys.is_empty() {
        let keys: Vec<String> = keys.into_iter().collect();
        parts.push(format!("security-relevant: {}", keys.join(", ")));
    }
    if !now_root.is_empty() {
        parts.push(format!("now runs as root: {}", list_units(&now_root)));
    }
    Ok(Some((severity, parts.join("; "))))
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
/// and outside the system profile, whose content the diff does not
/// show. A command without a folder counts, because systemd looks it up in
/// `ExecSearchPath=` or its default search path (`/usr/local/bin`,
/// `/usr/bin`, ...), folders that NixOS leaves alone but for
/// `/usr/bin/env`.
fn runs_outside_store(value: &str) -> bool {
    let command = value
        .trim_start_matches(['@', '-', ':', '+', '!', '|'])
        .split_whitespace()
        .next()
        .unwrap_or_default();
    !command.is_empty()
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

/// The change between two readings of one unit.
struct Effect {
    directives: Vec<DirectiveChange>,
    severity: Severity,
    /// Whether the unit named a user other than root before and now
    /// runs as root.
    now_root: bool,
    /// Whether the unit file or a drop-in became unreadable, or
    /// readable again.
    readable_change: bool,
}

fn assess(old: &Merged, new: &Merged) -> Effect {
    let directives = directive_changes(&old.directives, &new.directives);
    let readable_change = old.unreadable != new.unreadable;
    let now_root =
        runs_as_user(&old.directives) && !runs_as_user(&new.directives);
    let mut severity = directive_severity(&directives);
    if now_root || (readable_change && new.unreadable.is_some()) {
        severity = Severity::High;
    }
    Effect {
        directives,
        severity,
        now_root,
        readable_change,
    }
}

/// Returns the keys among the changed directives that
/// [`security_relevant`] accepts, sorted.
fn security_keys(directives: &[DirectiveChange]) -> BTreeSet<&str> {
    directives
        .iter()
        .map(|change| change.key.as_str())
        .filter(|key| security_relevant(key))
        .collect()
}

fn changed_unit(
    name: &str,
    changes: &[&EntryChange],
    old: &Merged,
    new: &Merged,
) -> Option<(AlertKind, Severity, String)> {
    let effect = assess(old, new);
    let directives = &effect.directives;
    let named: Vec<String> = changes
        .iter()
        .flat_map(|change| &change.referenced)
        .filter(|r| !r.only_store_paths_changed)
        .map(|r| r.path.clone())
        .collect();
    let readable_change = effect.readable_change;
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
        parts.push(format!("changed: {}", list_directives(directives)));
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
    let keys = security_keys(directives);
    if !keys.is_empty() {
        let keys: Vec<&str> = keys.into_iter().collect();
        parts.push(format!("security-relevant: {}", keys.join(", ")));
    }
    if effect.now_root {
        parts.push("now runs as root".to_owned());
    }
    Some((AlertKind::UnitChanged, effect.severity, parts.join("; ")))
}

/// Cuts a directive change description to 200 characters.
fn cut(text: &str) -> String {
    let mut cut: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        cut.push('…');
    }
    cut
}

/// Describes up to [`MAX_DIRECTIVES_LISTED`] directive changes.
fn list_directives(directives: &[DirectiveChange]) -> String {
    let mut parts: Vec<String> = directives
        .iter()
        .take(MAX_DIRECTIVES_LISTED)
        .map(|change| cut(&change.describe()))
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
    use crate::diff::system::SystemFiles;

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
        let bare = change(
            "[Service]\nExecStart=/nix/store/…-x/bin/x\n",
            "[Service]\nExecStart=-x --flag\n",
        );
        assert_eq!(directive_severity(&bare), Severity::High);
        let reset = change(
            "[Service]\nExecStart=/nix/store/…-x/bin/x\n",
            "[Service]\nExecStart=\n",
        );
        assert_eq!(directive_severity(&reset), Severity::Medium);
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
            raw: UnitFile::default(),
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
            let merged =
                merged(&files.units, "backup.service").unwrap().unwrap();
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
        let old = merged(&old.units, "backup.service").unwrap().unwrap();
        let new = merged(&new.units, "backup.service").unwrap().unwrap();
        let (_, severity, detail) =
            changed_unit("backup.service", &[], &old, &new).unwrap();
        assert_eq!(severity, Severity::High);
        assert!(
            detail.contains("drop-in overrides.conf a dangling link"),
            "{detail}"
        );
    }

    #[test]
    fn shared_drop_ins_sorted_by_file_name() {
        // `10-a.conf` of the type folder comes before `20-b.conf` of the
        // unit's own folder, and `30-c.conf` of the dash prefix after
        // both, whatever folder each is in.
        let dir = tempfile::tempdir().unwrap();
        let files = system_with_units(
            dir.path(),
            &[
                ("foo-bar.service", b"[Service]\nUser=unit\n"),
                ("service.d/10-a.conf", b"[Service]\nUser=type\n"),
                ("foo-bar.service.d/20-b.conf", b"[Service]\nUser=own\n"),
                ("foo-.service.d/30-c.conf", b"[Service]\nGroup=prefix\n"),
            ],
        );
        let unit = merged(&files.units, "foo-bar.service").unwrap().unwrap();
        assert_eq!(unit.directives.get("Service", "User"), ["own"]);
        assert_eq!(unit.directives.get("Service", "Group"), ["prefix"]);
    }

    #[test]
    fn most_specific_folder_wins_per_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let files = system_with_units(
            dir.path(),
            &[
                ("foo-bar@x.service", b"[Service]\nUser=unit\n"),
                ("foo-baz.service", b"[Service]\nUser=unit\n"),
                ("service.d/50-user.conf", b"[Service]\nUser=root\n"),
                ("foo-.service.d/50-user.conf", b"[Service]\nUser=prefix\n"),
                (
                    "foo-bar@.service.d/50-user.conf",
                    b"[Service]\nUser=template\n",
                ),
            ],
        );
        // The template folder is the most specific of the three, so only
        // its `50-user.conf` applies to the instance.
        let instance =
            merged(&files.units, "foo-bar@x.service").unwrap().unwrap();
        assert_eq!(instance.directives.get("Service", "User"), ["template"]);
        // The dash-prefix folder is the most specific one of another
        // unit with that prefix.
        let sibling =
            merged(&files.units, "foo-baz.service").unwrap().unwrap();
        assert_eq!(sibling.directives.get("Service", "User"), ["prefix"]);
        // Shared drop-ins alone make no unit.
        assert!(merged(&files.units, "other.service").unwrap().is_none());
    }

    #[test]
    fn shared_folder_reports_once_with_units() {
        let dir = tempfile::tempdir().unwrap();
        let units: &[(&str, &[u8])] = &[
            ("backup.service", b"[Service]\nUser=backup\n"),
            ("hello.service", b"[Service]\nExecStart=/bin/hello\n"),
            ("own-user.service", b"[Service]\n"),
            ("own-user.service.d/zz.conf", b"[Service]\nUser=nobody\n"),
            ("sshd.socket", b"[Socket]\nListenStream=22\n"),
        ];
        let old = system_with_units(dir.path(), units);
        let mut with_drop_in = units.to_vec();
        with_drop_in.push(("service.d/zz.conf", b"[Service]\nUser=root\n"));
        let new = system_with_units(dir.path(), &with_drop_in);

        let (severity, detail) =
            changed_shared_folder(&old.units, &new.units, "service")
                .unwrap()
                .unwrap();
        assert_eq!(severity, Severity::High);

        assert!(
            detail.starts_with(
                "unit type drop-in folder for 3 units (backup.service, \
                 hello.service, own-user.service); changes 2 of them"
            ),
            "{detail}"
        );
        assert!(
            detail.contains("[Service] User: backup -> root (backup.service)"),
            "{detail}"
        );
        assert!(
            detail.contains("added [Service] User=root (hello.service)"),
            "{detail}"
        );
        assert!(detail.contains("security-relevant: User"), "{detail}");
        assert!(
            detail.contains("now runs as root: backup.service"),
            "{detail}"
        );

        // A unit with its own `zz.conf` keeps its own file.
        assert!(!detail.contains("nobody"), "{detail}");
        assert!(!detail.contains("sshd.socket"), "{detail}");
    }

    #[test]
    fn long_unit_lists_are_cut() {
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        assert_eq!(list_units(&names), "a, b, c, d, e and 2 more");
        assert_eq!(list_units(&names[..2]), "a, b");
    }

    #[test]
    fn shared_folder_without_effect_is_silent() {
        let dir = tempfile::tempdir().unwrap();
        let units: &[(&str, &[u8])] =
            &[("backup.service", b"[Service]\nUser=backup\n")];
        let old = system_with_units(dir.path(), units);
        let mut with_drop_in = units.to_vec();
        with_drop_in.push(("socket.d/zz.conf", b"[Socket]\nBacklog=8\n"));
        let new = system_with_units(dir.path(), &with_drop_in);
        let found =
            changed_shared_folder(&old.units, &new.units, "socket").unwrap();
        assert_eq!(found, None);
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
