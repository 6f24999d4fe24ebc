//! Checks of what runs as root or opens the machine: setuid and capability
//! wrappers, the firewall, activation snippets, tmpfiles and udev rules.

use crate::Error;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use countersign_core::StorePath;

use super::{
    Ctx, NO_DRY_ACTIVATION, activation_snippets, added_removed, config_line,
    find_reference, line_changes, quote_lines, rule_line,
};
use crate::closure::{is_store_path, store_name};
use crate::diff::alerts::{AlertKind, Severity};
use crate::diff::packages::split_name;
use crate::diff::reduce::reduce_store_paths;
use crate::diff::references::store_references;
use crate::diff::system::{
    Node, SystemFiles, referenced_changes, store_file_bytes, store_file_text,
};
use crate::error::Result;
use crate::store_read::{Resolved, read_dir_sorted, resolve};

/// One wrapper in `/run/wrappers/bin`, as the wrappers' script makes it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct WrapperInfo {
    /// The wrapped program with its store path reduced to the package
    /// name, and its version.
    source: String,
    version: String,
    owner: String,
    /// `chmod` argument, such as `u+s,g-s,u+rx,g+x,o+x`.
    mode: String,
    /// `setcap` argument, empty for a setuid or setgid wrapper.
    capabilities: String,
}

impl WrapperInfo {
    fn setuid(&self) -> bool {
        self.mode.contains("u+s")
    }

    fn setgid(&self) -> bool {
        self.mode.contains("g+s")
    }

    fn describe(&self) -> String {
        let mut grants = Vec::new();
        if self.setuid() {
            grants.push("setuid".to_owned());
        }
        if self.setgid() {
            grants.push("setgid".to_owned());
        }
        if !self.capabilities.is_empty() {
            grants.push(format!("capabilities {}", self.capabilities));
        }
        if grants.is_empty() {
            grants.push("no setuid, setgid or capabilities".to_owned());
        }
        format!(
            "{} owned by {}, mode {}, wrapping {}",
            grants.join(" and "),
            self.owner,
            self.mode,
            self.source
        )
    }
}

/// Programs that run anything they are given, so a setuid-root wrapper
/// of one is root for everyone.
const INTERPRETERS: &[&str] = &[
    "sh",
    "bash",
    "dash",
    "zsh",
    "fish",
    "ksh",
    "busybox",
    "env",
    "perl",
    "python",
    "python3",
    "ruby",
    "node",
    "lua",
    "nix",
    "nix-shell",
];

/// The wrappers of a system, and the lines of their script that set up
/// no wrapper in particular.
#[derive(Default)]
struct Wrappers {
    wrappers: BTreeMap<String, WrapperInfo>,
    other_lines: String,
}

/// Reads the wrappers of a system from the script of
/// `suid-sgid-wrappers.service`.
fn wrappers_of(files: &SystemFiles) -> Result<Wrappers> {
    let mut found = Wrappers::default();
    let mut script = String::new();
    for script_path in
        started_files(files, "suid-sgid-wrappers.service", |name| {
            name.starts_with("unit-script-")
        })?
    {
        let name = script_path.name().trim_start_matches("unit-script-");
        let inside = format!("bin/{name}");
        if let Some(text) = store_file_text(&script_path, &inside)? {
            script.push_str(&text);
        }
    }
    let wrappers = &mut found.wrappers;
    for line in script.lines() {
        let line = line.trim();
        let Some(program) = wrapper_target(line) else {
            found.other_lines.push_str(line);
            found.other_lines.push('\n');
            continue;
        };
        let wrapper: &mut WrapperInfo =
            wrappers.entry(program.to_owned()).or_default();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("cp") => {
                if let Some(path) = find_reference(line, |name| {
                    name.starts_with("security-wrapper")
                }) {
                    let (source, version) = wrapped_program(&path)?;
                    wrapper.source = source;
                    wrapper.version = version;
                }
            }
            Some("chown") => {
                wrapper.owner =
                    words.get(1).copied().unwrap_or_default().to_owned();
            }
            Some("chmod") if words.get(1) != Some(&"0000") => {
                wrapper.mode = words
                    .get(1)
                    .copied()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_owned();
            }
            Some(first) if first.ends_with("/bin/setcap") => {
                wrapper.capabilities = words
                    .get(1)
                    .copied()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .trim_start_matches("cap_setpcap,")
                    .to_owned();
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Returns the program a line acts on, from its `"$wrapperDir/<program>"`.
fn wrapper_target(line: &str) -> Option<&str> {
    let start = line.find("\"$wrapperDir/")? + "\"$wrapperDir/".len();
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

/// Reads the program a wrapper runs as the store path compiled into its
/// `bin/security-wrapper`. Returns that path reduced to the package
/// name, and the package's version.
fn wrapped_program(wrapper: &StorePath) -> Result<(String, String)> {
    let Some(bytes) = store_file_bytes(wrapper, "bin/security-wrapper")?
    else {
        return Ok(("(unreadable wrapper)".to_owned(), String::new()));
    };
    let text = String::from_utf8_lossy(&bytes);
    for path in store_references(&text) {
        if path.name().starts_with("security-wrapper") {
            continue;
        }
        // The program's path continues after the store path.
        let full = text
            .split(path.as_str())
            .nth(1)
            .map(|rest| {
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '\0' || c == '"')
                    .unwrap_or(rest.len());
                format!("{path}{}", &rest[..end])
            })
            .unwrap_or_else(|| path.to_string());
        let (_, version, _) = split_name(path.name());
        return Ok((reduce_store_paths(&full), version.to_owned()));
    }
    Ok((
        "(no store path found in the wrapper)".to_owned(),
        String::new(),
    ))
}

/// setuid, setgid and capability wrappers added, removed or changed.
pub(super) fn wrappers(ctx: &mut Ctx<'_>) -> Result<()> {
    // Read even when the unit file did not change, since a drop-in can
    // replace the script that systemd runs.
    let old = wrappers_of(ctx.old)?;
    let new = wrappers_of(ctx.new)?;
    let keep = |line: &str| config_line(line, '#');
    let (added, removed) =
        line_changes(&old.other_lines, &new.other_lines, keep);
    if !added.is_empty() || !removed.is_empty() {
        ctx.push(
            AlertKind::WrapperChanged,
            Severity::High,
            "/run/wrappers",
            format!(
                "the script that creates the wrappers changed: {}",
                added_removed(&added, &removed)
            ),
        );
    }
    let (before, after) = (&old.wrappers, &new.wrappers);
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let subject = format!("/run/wrappers/bin/{name}");
        match (before.get(name), after.get(name)) {
            (None, Some(wrapper)) => {
                let base =
                    wrapper.source.rsplit('/').next().unwrap_or_default();
                let root_shell = wrapper.setuid()
                    && wrapper.owner.starts_with("root")
                    && INTERPRETERS.contains(&base);
                let severity = if root_shell {
                    Severity::Critical
                } else {
                    Severity::High
                };
                ctx.push(
                    AlertKind::WrapperAdded,
                    severity,
                    subject,
                    format!("added: {}", wrapper.describe()),
                );
            }
            (Some(wrapper), None) => ctx.push(
                AlertKind::WrapperRemoved,
                Severity::Low,
                subject,
                format!("removed: {}", wrapper.describe()),
            ),
            (Some(a), Some(b)) => {
                let mut changes = Vec::new();
                if a.source != b.source {
                    changes
                        .push(format!("wraps {} -> {}", a.source, b.source));
                }
                if a.owner != b.owner {
                    changes.push(format!("owner {} -> {}", a.owner, b.owner));
                }
                if a.mode != b.mode {
                    changes.push(format!("mode {} -> {}", a.mode, b.mode));
                }
                if a.capabilities != b.capabilities {
                    changes.push(format!(
                        "capabilities {} -> {}",
                        show(&a.capabilities),
                        show(&b.capabilities)
                    ));
                }
                if !changes.is_empty() {
                    let newly_setuid = (!a.setuid() && b.setuid())
                        || (!a.setgid() && b.setgid());
                    ctx.push(
                        AlertKind::WrapperChanged,
                        if newly_setuid {
                            Severity::Critical
                        } else {
                            Severity::High
                        },
                        subject,
                        changes.join("; "),
                    );
                }
            }
            (None, None) => {}
        }
    }
    Ok(())
}

fn show(text: &str) -> &str {
    if text.is_empty() { "(none)" } else { text }
}

/// Returns the store paths whose name `matches` that the `ExecStart=`
/// commands of `unit` name, with its drop-ins applied, in the order
/// systemd runs them. Other lines of the unit may name other paths of
/// that name, which systemd does not run.
fn started_files(
    files: &SystemFiles,
    unit: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<Vec<StorePath>> {
    let mut paths = Vec::new();
    for command in super::units::exec_start(&files.units, unit)? {
        if let Some(path) = find_reference(&command, &matches)
            && !paths.contains(&path)
        {
            paths.push(path);
        }
    }
    Ok(paths)
}

/// The rules of a system's firewall: open ports, other rule lines,
/// and whether a firewall unit exists.
#[derive(Debug, Default)]
struct FirewallRules {
    present: bool,
    ports: BTreeSet<String>,
    rules: String,
}

fn firewall_rules(files: &SystemFiles) -> Result<FirewallRules> {
    let mut rules = FirewallRules::default();
    if files.unit_text("firewall.service")?.is_some() {
        rules.present = true;
    }
    for path in started_files(files, "firewall.service", |name| {
        name == "firewall-start"
    })? {
        if let Some(script) = store_file_text(&path, "bin/firewall-start")? {
            for line in script.lines() {
                match iptables_port(line) {
                    Some(port) => {
                        rules.ports.insert(port);
                    }
                    None => {
                        rules.rules.push_str(line);
                        rules.rules.push('\n');
                    }
                }
            }
        }
    }
    if files.unit_text("nftables.service")?.is_some() {
        rules.present = true;
    }
    for path in started_files(files, "nftables.service", |name| {
        name == "nftables-rules"
    })? {
        if let Some(ruleset) = store_file_text(&path, "")? {
            for line in ruleset.lines() {
                let ports = nft_ports(line);
                if ports.is_empty() {
                    rules.rules.push_str(line);
                    rules.rules.push('\n');
                } else {
                    rules.ports.extend(ports);
                }
            }
        }
    }
    Ok(rules)
}

/// `tcp 22` or `udp 51820 on wg0` from an iptables line of the NixOS
/// firewall that accepts a port.
fn iptables_port(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    let port = after("--dport").or_else(|| after("--dports"))?;
    if !line.contains("-j nixos-fw-accept") && !line.contains("-j ACCEPT") {
        return None;
    }
    let protocol = after("-p").unwrap_or("any");
    let mut text = format!("{protocol} {}", port.replace(':', "-"));
    if let Some(interface) = after("-i") {
        text.push_str(&format!(" on {interface}"));
    }
    Some(text)
}

/// Ports accepted by an nftables rule such as `tcp dport { 22, 80 }
/// accept` or `iifname "wg0" udp dport 51820 accept`.
fn nft_ports(line: &str) -> Vec<String> {
    let mut ports = Vec::new();
    if !line.contains("accept") {
        return ports;
    }
    for protocol in ["tcp", "udp"] {
        let needle = format!("{protocol} dport ");
        let Some(start) = line.find(&needle) else {
            continue;
        };
        let rest = &line[start + needle.len()..];
        let list = if let Some(inner) = rest.strip_prefix('{') {
            inner.split('}').next().unwrap_or_default()
        } else {
            rest.split_whitespace().next().unwrap_or_default()
        };
        let interface = line
            .split_once("iifname ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(|name| format!(" on {}", name.trim_matches('"')));
        for port in list.split(',') {
            let port = port.trim();
            if !port.is_empty() {
                ports.push(format!(
                    "{protocol} {port}{}",
                    interface.clone().unwrap_or_default()
                ));
            }
        }
    }
    ports
}

/// Checks the firewall: ports opened or closed, other rules changed,
/// and the firewall unit removed.
pub(super) fn firewall(ctx: &mut Ctx<'_>) -> Result<()> {
    // Read even when the unit files did not change, since a drop-in
    // can replace the script that systemd runs.
    let before = firewall_rules(ctx.old)?;
    let after = firewall_rules(ctx.new)?;
    if before.present && !after.present {
        ctx.push(
            AlertKind::FirewallDisabled,
            Severity::High,
            "firewall",
            "firewall.service and nftables.service are gone: no \
             packet filter is set up",
        );
    }
    for port in after.ports.difference(&before.ports) {
        ctx.push(
            AlertKind::FirewallPortOpened,
            Severity::High,
            "firewall",
            format!("{port} opened"),
        );
    }
    for port in before.ports.difference(&after.ports) {
        ctx.push(
            AlertKind::FirewallPortClosed,
            Severity::Low,
            "firewall",
            format!("{port} closed"),
        );
    }
    let keep = |line: &str| config_line(line, '#');
    let (added, removed) = line_changes(&before.rules, &after.rules, keep);
    if after.present && (!added.is_empty() || !removed.is_empty()) {
        ctx.push(
            AlertKind::FirewallRuleChanged,
            if added.is_empty() {
                Severity::Medium
            } else {
                Severity::High
            },
            "firewall",
            added_removed(&added, &removed),
        );
    }
    Ok(())
}

/// Snippets of `activate`, which runs as root at every boot and switch:
/// added, removed, changed, or running a generated file whose content
/// changed.
pub(super) fn activation(ctx: &mut Ctx<'_>) -> Result<()> {
    if !ctx.diff.toplevel.iter().any(|c| c.path == "activate") {
        return Ok(());
    }
    let old = activation_snippets(
        &ctx.old.toplevel_text("activate")?.unwrap_or_default(),
    );
    let new = activation_snippets(
        &ctx.new.toplevel_text("activate")?.unwrap_or_default(),
    );
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let subject = format!("activation snippet {name}");
        match (old.get(name), new.get(name)) {
            (None, Some(text)) => {
                let lines: Vec<String> = text
                    .lines()
                    .filter_map(|l| config_line(l, '\u{0}'))
                    .filter(|l| !l.starts_with("_localstatus=0"))
                    .collect();
                ctx.push(
                    AlertKind::ActivationSnippetAdded,
                    Severity::High,
                    subject,
                    format!("added, runs as root: {}", quote_lines(&lines)),
                );
            }
            (Some(_), None) => ctx.push(
                AlertKind::ActivationSnippetRemoved,
                Severity::Low,
                subject,
                "removed",
            ),
            (Some(a), Some(b)) => {
                let keep = |line: &str| config_line(line, '\u{0}');
                let (added, removed) = line_changes(a, b, keep);
                if !added.is_empty() || !removed.is_empty() {
                    ctx.push(
                        AlertKind::ActivationSnippetChanged,
                        Severity::High,
                        subject,
                        added_removed(&added, &removed),
                    );
                    continue;
                }
                // The same text can run another generated file. The
                // users data has a check of its own.
                let changed: Vec<String> = referenced_changes(a, b, 1)?
                    .into_iter()
                    .filter(|c| !c.only_store_paths_changed)
                    .map(|c| c.path)
                    .filter(|path| !path.ends_with("users-groups.json"))
                    .collect();
                if !changed.is_empty() {
                    ctx.push(
                        AlertKind::ActivationSnippetChanged,
                        Severity::High,
                        subject,
                        format!(
                            "runs generated files whose content changed: {}",
                            changed.join(", ")
                        ),
                    );
                }
            }
            (None, None) => {}
        }
    }
    Ok(())
}

/// Snippets of `dry-activate`, which runs as root when an administrator
/// requests a preview of a switch (`switch-to-configuration dry-activate`).
/// A change that the same snippet of `activate` makes too is reported
/// by [`activation`] alone.
pub(super) fn dry_activation(ctx: &mut Ctx<'_>) -> Result<()> {
    if !ctx.diff.toplevel.iter().any(|c| c.path == "dry-activate") {
        return Ok(());
    }
    let snippets = |files: &SystemFiles, name: &str| -> Result<_> {
        Ok(activation_snippets(
            &files.toplevel_text(name)?.unwrap_or_default(),
        ))
    };
    let old = snippets(ctx.old, "dry-activate")?;
    let new = snippets(ctx.new, "dry-activate")?;
    let old_activate = snippets(ctx.old, "activate")?;
    let new_activate = snippets(ctx.new, "activate")?;
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let (before, after) = (old.get(name), new.get(name));
        if before == after {
            continue;
        }
        let same_as_activate = before == old_activate.get(name)
            && after == new_activate.get(name);
        if same_as_activate {
            continue;
        }
        fn runs(text: Option<&String>) -> Option<&String> {
            text.filter(|text| text.as_str() != NO_DRY_ACTIVATION)
        }
        let lines = |text: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| config_line(l, '\u{0}'))
                .filter(|l| !l.starts_with("_localstatus=0"))
                .collect()
        };
        let subject = format!("dry-activate snippet {name}");
        let (severity, detail) = match (runs(before), runs(after)) {
            (None, Some(text)) => (
                Severity::High,
                format!(
                    "now runs in dry activation, as root: {}",
                    quote_lines(&lines(text))
                ),
            ),
            (Some(_), None) => {
                (Severity::Low, "no longer runs in dry activation".to_owned())
            }
            (Some(a), Some(b)) => {
                let keep = |line: &str| config_line(line, '\u{0}');
                let (added, removed) = line_changes(a, b, keep);
                if !added.is_empty() || !removed.is_empty() {
                    (Severity::High, added_removed(&added, &removed))
                } else {
                    let changed: Vec<String> = referenced_changes(a, b, 1)?
                        .into_iter()
                        .filter(|c| !c.only_store_paths_changed)
                        .map(|c| c.path)
                        .collect();
                    if changed.is_empty() {
                        continue;
                    }
                    (
                        Severity::High,
                        format!(
                            "runs generated files whose content changed: {}",
                            changed.join(", ")
                        ),
                    )
                }
            }
            // A snippet that appears or disappears without running.
            (None, None) => continue,
        };
        ctx.push(AlertKind::DryActivationChanged, severity, subject, detail);
    }
    Ok(())
}

/// Most command names quoted in one system path alert.
const MAX_COMMANDS_LISTED: usize = 20;

/// Reads `sw/bin` of a system: each command name and the package (name
/// without version) that its link points into. The links are read, not
/// followed.
fn commands_of(files: &SystemFiles) -> Result<BTreeMap<String, String>> {
    let mut commands = BTreeMap::new();
    let Some(Node::StoreLink { target }) = files.toplevel.get("sw") else {
        return Ok(commands);
    };
    let bin = Path::new(target).join("bin");
    let Resolved::Directory { path } = resolve(&bin)? else {
        return Ok(commands);
    };
    // The links are read relative to the opened folder, which spares
    // the kernel a lookup of the whole path for each of the hundreds of
    // commands.
    let folder = rustix::fs::open(
        &path,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|error| Error::io(&path, error.into()))?;
    for name in read_dir_sorted(&path)? {
        let provider = match rustix::fs::readlinkat(&folder, &name, Vec::new())
        {
            Ok(link) => {
                let link = link.to_string_lossy();
                // The store path is the link's text up to the first `/`
                // after the store directory.
                let end = link
                    .get("/nix/store/".len()..)
                    .and_then(|rest| rest.find('/'))
                    .map_or(link.len(), |at| at + "/nix/store/".len());
                if is_store_path(&link[..end]) {
                    split_name(store_name(&link[..end])).0.to_owned()
                } else {
                    link.into_owned()
                }
            }
            // A file of the system path itself.
            Err(_) => "system-path".to_owned(),
        };
        commands.insert(name, provider);
    }
    Ok(commands)
}

/// Commands on `PATH` added, removed, or now provided by another
/// package, which shadows what the name ran before.
pub(super) fn system_path(ctx: &mut Ctx<'_>) -> Result<()> {
    if !ctx.diff.toplevel.iter().any(|c| c.path == "sw") {
        return Ok(());
    }
    let before = commands_of(ctx.old)?;
    let after = commands_of(ctx.new)?;
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut moved = Vec::new();
    // A command named like its package is listed once.
    let entry = |name: &String, provider: &String| {
        if name == provider {
            name.clone()
        } else {
            format!("{name} (from {provider})")
        }
    };
    for (name, provider) in &after {
        match before.get(name) {
            None => added.push(entry(name, provider)),
            Some(old) if old != provider => {
                moved.push(format!("{name}: {old} -> {provider}"));
            }
            Some(_) => {}
        }
    }
    for (name, provider) in &before {
        if !after.contains_key(name) {
            removed.push(entry(name, provider));
        }
    }
    let list = |items: &[String]| {
        let mut text = items
            .iter()
            .take(MAX_COMMANDS_LISTED)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if items.len() > MAX_COMMANDS_LISTED {
            text.push_str(&format!(
                " and {} more",
                items.len() - MAX_COMMANDS_LISTED
            ));
        }
        text
    };
    if !moved.is_empty() {
        ctx.push(
            AlertKind::SystemPathChanged,
            Severity::Medium,
            "sw/bin",
            format!("commands now from another package: {}", list(&moved)),
        );
    }
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("added commands {}", list(&added)));
    }
    if !removed.is_empty() {
        parts.push(format!("removed commands {}", list(&removed)));
    }
    if !parts.is_empty() {
        ctx.push(
            AlertKind::SystemPathChanged,
            Severity::Info,
            "sw/bin",
            parts.join("; "),
        );
    }
    Ok(())
}

/// Paths where a tmpfiles rule can hand out root.
const SENSITIVE_PATHS: &[&str] = &[
    "/etc",
    "/root",
    "/run/wrappers",
    "/bin",
    "/usr",
    "/nix",
    "/var/lib/nixos",
    "/home",
    "/boot",
    "/run/current-system",
    "/lib",
];

/// Tells whether a tmpfiles rule sets a setuid or setgid mode (also
/// behind the `~` and `:` prefixes), sets ACLs or touches a path of
/// [`SENSITIVE_PATHS`]. The path's specifiers are expanded first, as
/// the system's systemd-tmpfiles does (`%E` is `/etc`, `%h` is `/root`).
fn risky_tmpfiles_rule(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let kind = fields.first().copied().unwrap_or_default();
    let target = tmpfiles_path(
        fields.get(1).copied().unwrap_or_default().trim_matches('"'),
    );
    let mode = fields.get(2).copied().unwrap_or_default().trim_matches('"');
    let setid = u32::from_str_radix(mode.trim_start_matches(['~', ':']), 8)
        .is_ok_and(|bits| bits & 0o6000 != 0);
    setid
        || kind.starts_with(['a', 'A'])
        || SENSITIVE_PATHS
            .iter()
            .any(|p| target == *p || target.starts_with(&format!("{p}/")))
}

/// Expands the specifiers of a tmpfiles path that name folders, as the
/// system instance of systemd-tmpfiles does, and drops empty and `.`
/// components.
fn tmpfiles_path(path: &str) -> String {
    let mut expanded = String::with_capacity(path.len());
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            expanded.push(c);
            continue;
        }
        let folder = match chars.next() {
            Some('E') => "/etc",
            Some('h') => "/root",
            Some('S') => "/var/lib",
            Some('C') => "/var/cache",
            Some('L') => "/var/log",
            Some('t') => "/run",
            Some('T') => "/tmp",
            Some('V') => "/var/tmp",
            Some('%') => "%",
            Some(other) => {
                expanded.push('%');
                expanded.push(other);
                continue;
            }
            None => "%",
        };
        expanded.push_str(folder);
    }
    let parts: Vec<&str> = expanded
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// `/etc/tmpfiles.d`: rules applied at boot and on switch.
pub(super) fn tmpfiles(ctx: &mut Ctx<'_>) -> Result<()> {
    for path in ctx.etc_changed_under("tmpfiles.d/") {
        let (old, new) = ctx.etc_texts(&path)?;
        let keep = |line: &str| {
            rule_line(line)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        let (added, removed) = line_changes(&old, &new, keep);
        if added.is_empty() && removed.is_empty() {
            continue;
        }
        let risky = added.iter().any(|line| risky_tmpfiles_rule(line));
        ctx.push(
            AlertKind::TmpfilesChanged,
            if risky {
                Severity::High
            } else {
                Severity::Medium
            },
            format!("/etc/{path}"),
            added_removed(&added, &removed),
        );
    }
    Ok(())
}

/// `/etc/udev/rules.d`: `RUN` and `PROGRAM` keys execute programs as
/// root.
pub(super) fn udev(ctx: &mut Ctx<'_>) -> Result<()> {
    for path in ctx.etc_changed_under("udev/rules.d/") {
        let (old, new) = ctx.etc_texts(&path)?;
        // udev joins a line that ends with a backslash to the next one.
        let join = |text: &str| text.replace("\\\n", " ");
        let (added, removed) =
            line_changes(&join(&old), &join(&new), rule_line);
        if added.is_empty() && removed.is_empty() {
            continue;
        }
        let runs = added.iter().any(|line| {
            line.contains("RUN")
                || line.contains("PROGRAM")
                || line.contains("IMPORT{program}")
        });
        ctx.push(
            AlertKind::UdevRuleChanged,
            if runs {
                Severity::High
            } else {
                Severity::Medium
            },
            format!("/etc/{path}"),
            added_removed(&added, &removed),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfiles_rules_classified() {
        assert!(risky_tmpfiles_rule("f+ %E/sudoers.d/x 0440 root root -"));
        assert!(risky_tmpfiles_rule("d %h/.ssh 0700 root root -"));
        assert!(risky_tmpfiles_rule("d %S/nixos/x 0700 root root -"));
        assert!(risky_tmpfiles_rule(
            "L+ //etc/./profile.d/x.sh - - - - /tmp/x"
        ));
        assert!(risky_tmpfiles_rule("z /var/lib/app/tool :4755 root root -"));
        assert!(risky_tmpfiles_rule("a+ /srv - - - - u:alice:rwx"));
        assert!(!risky_tmpfiles_rule("d %S/app 0750 app app -"));
        assert!(!risky_tmpfiles_rule("d /var/lib/%%E 0750 app app -"));
        assert_eq!(tmpfiles_path("%t/x/%q"), "/run/x/%q");
    }

    #[test]
    fn iptables_ports() {
        assert_eq!(
            iptables_port(
                "ip46tables -A nixos-fw -p tcp --dport 22 -j nixos-fw-accept"
            )
            .as_deref(),
            Some("tcp 22")
        );
        assert_eq!(
            iptables_port(
                "ip46tables -A nixos-fw -p udp --dport 60000:61000 -j \
                 nixos-fw-accept -i wg0"
            )
            .as_deref(),
            Some("udp 60000-61000 on wg0")
        );
        assert_eq!(
            iptables_port("ip46tables -A nixos-fw -i lo -j nixos-fw-accept"),
            None
        );
    }

    #[test]
    fn nftables_ports() {
        assert_eq!(
            nft_ports("    tcp dport { 22, 443 } accept"),
            ["tcp 22", "tcp 443"]
        );
        assert_eq!(
            nft_ports("iifname \"wg0\" udp dport 51820 accept"),
            ["udp 51820 on wg0"]
        );
        assert!(nft_ports("tcp dport 25 drop").is_empty());
    }

    #[test]
    fn wrapper_targets() {
        assert_eq!(
            wrapper_target("chown root:root \"$wrapperDir/sudo\""),
            Some("sudo")
        );
        assert_eq!(wrapper_target("chmod 755 \"/run/wrappers\""), None);
    }
}
