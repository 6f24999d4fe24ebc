//! Checks of login and root access: SSH keys and daemon settings, sudo
//! and doas rules, PAM, polkit, and who Nix trusts.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use countersign_core::StorePath;
use sha2::{Digest, Sha256};

use super::{
    Ctx, Include, IncludeSource, added_removed, config_line,
    flag_changed_named_files, inline_includes, line_changes, quote_lines,
};
use crate::diff::alerts::{AlertKind, Severity};
use crate::diff::redact::REDACTED;
use crate::diff::reduce::reduce_store_paths;
use crate::diff::system::{Node, SystemFiles};
use crate::error::Result;
use crate::store_read::{Resolved, read_dir_sorted, read_limited, resolve};

const KEYS_DIR: &str = "ssh/authorized_keys.d/";

/// `/etc/ssh/authorized_keys.d/<user>`: one alert per key added or
/// removed.
pub(super) fn ssh_keys(ctx: &mut Ctx<'_>) -> Result<()> {
    let mut folders = BTreeSet::from([KEYS_DIR.to_owned()]);
    folders.extend(key_folders(ctx.old)?);
    folders.extend(key_folders(ctx.new)?);
    let mut paths = Vec::new();
    for folder in &folders {
        for path in ctx.etc_changed_under(folder) {
            // A file of a subfolder is not `<folder>/%u`.
            if !path[folder.len()..].contains('/') {
                paths.push((path, folder));
            }
        }
    }
    if paths.is_empty() {
        return Ok(());
    }
    let uid_zero = super::users::uid_zero_users(ctx.new)?;
    for (path, folder) in paths {
        let user = path[folder.len()..].to_owned();
        let (old, new) = ctx.etc_texts(&path)?;
        let keep = |line: &str| {
            let line = line.trim();
            (!line.is_empty() && !line.starts_with('#'))
                .then(|| line.to_owned())
        };
        let (added, removed) = line_changes(&old, &new, keep);
        let subject = format!("/etc/{path}");
        let as_root = user != "root" && uid_zero.contains(&user);
        for key in added {
            let severity = if user == "root" || as_root {
                Severity::Critical
            } else {
                Severity::High
            };
            let named_user = if as_root {
                format!("{user} (uid 0)")
            } else {
                user.clone()
            };
            ctx.push(
                AlertKind::SshKeyAdded,
                severity,
                &subject,
                format!("key for {named_user} added: {}", key_summary(&key)),
            );
        }
        for key in removed {
            ctx.push(
                AlertKind::SshKeyRemoved,
                Severity::Low,
                &subject,
                format!("key for {user} removed: {}", key_summary(&key)),
            );
        }
    }
    Ok(())
}

/// Returns the `/etc` folders, relative to `/etc` and ending in `/`,
/// from which the `AuthorizedKeysFile` setting of a system's
/// sshd_config reads one file per user (`/etc/ssh/keys/%u` gives
/// `ssh/keys/`).
fn key_folders(files: &SystemFiles) -> Result<Vec<String>> {
    let Some(text) = files.etc_text("ssh/sshd_config")? else {
        return Ok(Vec::new());
    };
    let source = IncludeSource {
        files,
        dir: "/etc/ssh",
        read_elsewhere: |path| path == "ssh/sshd_config",
    };
    let settings =
        sshd_settings(&inline_includes(&text, sshd_include, source)?.0);
    let Some((_, value)) = settings.get("authorizedkeysfile") else {
        return Ok(Vec::new());
    };
    // NOTE: other key files (one file for all users, `%h/...` in home
    // folders, other tokens) are not read as keys; a change under
    // `/etc/ssh` raises only `ssh_config_changed` at medium.
    Ok(value
        .split_whitespace()
        .filter_map(|pattern| {
            let folder = pattern.strip_prefix("/etc/")?.strip_suffix("%u")?;
            (folder.ends_with('/') && !folder.contains('%'))
                .then(|| folder.to_owned())
        })
        .collect())
}

/// Describes an authorized key line as its type, SHA-256 fingerprint,
/// comment and options, the way `ssh-keygen -l` names keys.
pub(crate) fn key_summary(line: &str) -> String {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let is_type = |token: &str| {
        token.starts_with("ssh-")
            || token.starts_with("ecdsa-")
            || token.starts_with("sk-")
    };
    let Some(position) = tokens.iter().position(|t| is_type(t)) else {
        return format!("`{}`", line.chars().take(60).collect::<String>());
    };
    let kind = tokens[position];
    let blob = tokens.get(position + 1).copied().unwrap_or_default();
    let fingerprint = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map(|bytes| {
            let digest = Sha256::digest(bytes);
            format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .encode(digest)
            )
        })
        .unwrap_or_else(|_| "(not a valid key)".to_owned());
    let mut text = format!("{kind} {fingerprint}");
    let comment = tokens[(position + 2).min(tokens.len())..].join(" ");
    if !comment.is_empty() {
        text.push_str(&format!(" {comment}"));
    }
    if position > 0 {
        text.push_str(&format!(
            " with options {}",
            tokens[..position].join(" ")
        ));
    }
    text
}

/// sshd keywords that may appear more than once, all values counting.
const SSHD_LISTS: &[&str] = &[
    "port",
    "listenaddress",
    "hostkey",
    "hostcertificate",
    "acceptenv",
    "subsystem",
    "setenv",
    "include",
    "allowusers",
    "allowgroups",
    "denyusers",
    "denygroups",
];

/// sshd keywords whose change opens or widens a way in.
const SSHD_HIGH: &[&str] = &[
    "permitrootlogin",
    "passwordauthentication",
    "kbdinteractiveauthentication",
    "challengeresponseauthentication",
    "pubkeyauthentication",
    "hostbasedauthentication",
    "ignorerhosts",
    "authorizedkeysfile",
    "authorizedkeyscommand",
    "authorizedkeyscommanduser",
    "authorizedprincipalsfile",
    "authorizedprincipalscommand",
    "authorizedprincipalscommanduser",
    "trustedusercakeys",
    "revokedkeys",
    "usepam",
    "permituserenvironment",
    "permitemptypasswords",
    "strictmodes",
    "forcecommand",
    "allowusers",
    "allowgroups",
    "denyusers",
    "denygroups",
    "include",
    "port",
    "listenaddress",
    "gatewayports",
    "allowtcpforwarding",
    "allowstreamlocalforwarding",
    "permittunnel",
    "permitopen",
    "permitlisten",
    "subsystem",
    "authenticationmethods",
];

/// Reads the effective settings of an `sshd_config`: keyword (lower case) to
/// its spelling and value. sshd takes the first value of a keyword,
/// except for keywords that are lists; each `Match` block is one entry.
fn sshd_settings(text: &str) -> BTreeMap<String, (String, String)> {
    let mut settings: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut block: Option<(String, Vec<String>)> = None;
    let finish =
        |block: Option<(String, Vec<String>)>,
         settings: &mut BTreeMap<String, (String, String)>| {
            if let Some((criteria, lines)) = block {
                settings.insert(
                    format!("match {}", criteria.to_lowercase()),
                    (format!("Match {criteria}"), lines.join("; ")),
                );
            }
        };
    for line in text.lines() {
        let line = reduce_store_paths(line.trim());
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, value) =
            match line.find(|c: char| c.is_whitespace() || c == '=') {
                Some(index) => (
                    line[..index].to_owned(),
                    line[index + 1..]
                        .trim_start_matches(|c: char| {
                            c.is_whitespace() || c == '='
                        })
                        .trim()
                        .to_owned(),
                ),
                None => (line.clone(), String::new()),
            };
        let lower = keyword.to_lowercase();
        if lower == "match" {
            finish(block.take(), &mut settings);
            block = Some((value, Vec::new()));
            continue;
        }
        if let Some((_, lines)) = &mut block {
            lines.push(format!("{keyword} {value}"));
            continue;
        }
        if SSHD_LISTS.contains(&lower.as_str()) {
            let entry =
                settings.entry(lower).or_insert((keyword, String::new()));
            if !entry.1.is_empty() {
                entry.1.push_str(", ");
            }
            entry.1.push_str(&value);
        } else {
            settings.entry(lower).or_insert((keyword, value));
        }
    }
    finish(block, &mut settings);
    settings
}

/// `/etc/ssh/sshd_config`: one alert per effective setting that
/// changes.
pub(super) fn sshd(ctx: &mut Ctx<'_>) -> Result<()> {
    let (old, new) = ctx.etc_texts("ssh/sshd_config")?;
    // Settings of a file that an `Include` line names apply at that
    // line. An included `/etc` file may change alone, so the settings
    // are compared even when sshd_config did not change.
    let source = |files| IncludeSource {
        files,
        dir: "/etc/ssh",
        read_elsewhere: |path| path == "ssh/sshd_config",
    };
    let (old_inlined, old_cut) =
        inline_includes(&old, sshd_include, source(ctx.old))?;
    let (new_inlined, new_cut) =
        inline_includes(&new, sshd_include, source(ctx.new))?;
    push_cut_includes(
        ctx,
        AlertKind::SshdSettingChanged,
        "/etc/ssh/sshd_config",
        !old_cut && new_cut,
    );
    let before = sshd_settings(&old_inlined);
    let after = sshd_settings(&new_inlined);
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let old_value = before.get(key);
        let new_value = after.get(key);
        if old_value.map(|v| &v.1) == new_value.map(|v| &v.1) {
            continue;
        }
        let spelled = new_value.or(old_value).map_or(key.as_str(), |v| &v.0);
        let show = |value: Option<&(String, String)>| {
            value.map_or("(default)".to_owned(), |v| v.1.clone())
        };
        let new_text = show(new_value).to_lowercase();
        let critical = if key.starts_with("match ") {
            // A block whose new lines allow what a global line would
            // make critical, for the connections that it matches.
            let old_lines: BTreeSet<String> =
                old_value.map(|v| block_lines(&v.1)).unwrap_or_default();
            new_value.is_some_and(|v| {
                block_lines(&v.1)
                    .difference(&old_lines)
                    .any(|line| opens_root_or_empty_login(line))
            })
        } else {
            opens_root_or_empty_login(&format!("{key} {new_text}"))
        };
        let severity = if critical {
            Severity::Critical
        } else if SSHD_HIGH.contains(&key.as_str())
            || key.starts_with("match ")
        {
            Severity::High
        } else {
            Severity::Medium
        };
        ctx.push(
            AlertKind::SshdSettingChanged,
            severity,
            "/etc/ssh/sshd_config",
            format!("{spelled} {} -> {}", show(old_value), show(new_value)),
        );
    }
    // A file that an `Include` line names is left out, because its
    // settings are compared above.
    let included = included_store_names(&old, &new, sshd_include);
    flag_changed_named_files(
        ctx,
        "ssh/sshd_config",
        AlertKind::SshdSettingChanged,
        |name| included.contains(name),
    );
    Ok(())
}

/// Splits the value of a `Match` block entry of [`sshd_settings`] into
/// its lines, lower case.
fn block_lines(value: &str) -> BTreeSet<String> {
    value.split("; ").map(str::to_lowercase).collect()
}

/// Tells whether a lower-case sshd line is `PermitRootLogin yes` or
/// `PermitEmptyPasswords yes`, the value quoted or not.
fn opens_root_or_empty_login(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let keyword = words.next();
    let value = words.next().map(|word| word.trim_matches('"'));
    matches!(
        (keyword, value, words.next()),
        (
            Some("permitrootlogin" | "permitemptypasswords"),
            Some("yes"),
            None
        )
    )
}

/// Raises a high `kind` alert on `subject` when `cut`: the files that
/// its include lines name now add up to more than
/// [`super::MAX_INLINED_BYTES`], so what lies beyond was not compared.
fn push_cut_includes(
    ctx: &mut Ctx<'_>,
    kind: AlertKind,
    subject: &str,
    cut: bool,
) {
    if cut {
        ctx.push(
            kind,
            Severity::High,
            subject,
            format!(
                "the files its include lines name add up to more than {} \
                 MiB; the rest was not read",
                super::MAX_INLINED_BYTES / (1024 * 1024)
            ),
        );
    }
}

/// Returns the store names of the single files that the include lines
/// of `old` or `new` name.
fn included_store_names(
    old: &str,
    new: &str,
    include: for<'a> fn(&'a str) -> Option<Include<'a>>,
) -> BTreeSet<String> {
    [old, new]
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|line| match include(line.trim()) {
            Some(Include::File(path)) => StorePath::parse(path)
                .ok()
                .map(|store_path| store_path.name().to_owned()),
            _ => None,
        })
        .collect()
}

/// Returns the file or the pattern (`*` and `?` in the last component)
/// that an `sshd_config` `Include` line names. sshd also takes several
/// paths and other glob patterns, which are compared as text.
fn sshd_include(line: &str) -> Option<Include<'_>> {
    let (keyword, rest) = line.split_once(char::is_whitespace)?;
    if !keyword.eq_ignore_ascii_case("include") {
        return None;
    }
    let path = rest.trim().trim_matches('"');
    if path.contains(char::is_whitespace) || path.contains('[') {
        return None;
    }
    let folder = path.rsplit_once('/').map_or("", |(folder, _)| folder);
    if folder.contains(['*', '?']) {
        None
    } else if path.contains(['*', '?']) {
        Some(Include::Pattern(path))
    } else {
        Some(Include::File(path))
    }
}

/// sudoers, `sudoers.d` and `doas.conf`: rules and settings added or
/// removed.
pub(super) fn sudo(ctx: &mut Ctx<'_>) -> Result<()> {
    // Every sudoers file is read, changed or not, since an `/etc` file
    // that it includes may change alone.
    let mut paths: BTreeSet<String> = ctx
        .old
        .etc_paths_under("sudoers")
        .chain(ctx.new.etc_paths_under("sudoers"))
        .filter(|path| is_sudoers(path))
        .cloned()
        .collect();
    paths.extend(ctx.etc_changed_under("doas.conf"));
    for path in paths {
        let doas = path == "doas.conf";
        let (old, new) = ctx.etc_texts(&path)?;
        // A rule in a file that sudoers includes applies as if it were
        // written at the include line. A relative name is relative to
        // the including file's folder.
        let (old, new) = if doas {
            (old, new)
        } else {
            let dir = match path.rsplit_once('/') {
                Some((folder, _)) => format!("/etc/{folder}"),
                None => "/etc".to_owned(),
            };
            let source = |files| IncludeSource {
                files,
                dir: &dir,
                read_elsewhere: is_sudoers,
            };
            let (old, old_cut) =
                inline_includes(&old, sudo_include, source(ctx.old))?;
            let (new, new_cut) =
                inline_includes(&new, sudo_include, source(ctx.new))?;
            push_cut_includes(
                ctx,
                AlertKind::SudoConfigChanged,
                &format!("/etc/{path}"),
                !old_cut && new_cut,
            );
            (old, new)
        };
        let (added, removed) = line_changes(
            &join_continuations(&old),
            &join_continuations(&new),
            |line| sudo_line(line, doas),
        );
        let subject = format!("/etc/{path}");
        for line in added {
            let (kind, severity) = classify_sudo(&line, doas);
            ctx.push(kind, severity, &subject, format!("added `{line}`"));
        }
        for line in removed {
            let (kind, _) = classify_sudo(&line, doas);
            let (kind, severity) = match kind {
                AlertKind::SudoRuleAdded => {
                    (AlertKind::SudoRuleRemoved, Severity::Low)
                }
                other => (other, Severity::Medium),
            };
            ctx.push(kind, severity, &subject, format!("removed `{line}`"));
        }
    }
    Ok(())
}

/// Tells whether an `/etc` path is `sudoers` or a file of `sudoers.d`,
/// which the sudo check reads on its own.
fn is_sudoers(path: &str) -> bool {
    path == "sudoers" || path.starts_with("sudoers.d/")
}

/// Returns the file or folder that a sudoers include line names.
fn sudo_include(line: &str) -> Option<Include<'_>> {
    let (directive, rest) = line.split_once(char::is_whitespace)?;
    let path = rest.trim().trim_matches('"');
    match directive {
        "@include" | "#include" => Some(Include::File(path)),
        // sudo skips names with a dot or ending in `~` in such a folder.
        "@includedir" | "#includedir" => Some(Include::Folder(path, |name| {
            !name.contains('.') && !name.ends_with('~')
        })),
        _ => None,
    }
}

/// Returns the file that a `nix.conf` include line names.
fn nix_include(line: &str) -> Option<Include<'_>> {
    let path = line
        .strip_prefix("!include ")
        .or_else(|| line.strip_prefix("include "))?;
    Some(Include::File(path.trim()))
}

fn join_continuations(text: &str) -> String {
    text.replace("\\\n", " ")
}

fn sudo_line(line: &str, doas: bool) -> Option<String> {
    let trimmed = line.trim();
    // In sudoers `#include` and `#includedir` are directives.
    if !doas
        && (trimmed.starts_with("#include ")
            || trimmed.starts_with("#includedir "))
    {
        return Some(reduce_store_paths(trimmed));
    }
    if doas {
        let line = config_line(line, '#')?;
        return Some(line.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    let line = trimmed[..sudoers_comment_start(trimmed)].trim();
    (!line.is_empty()).then(|| {
        reduce_store_paths(line)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// Returns where the comment of a sudoers line starts, or the line's
/// length. A `#` followed by a digit names a uid or gid (`#1000`,
/// `%#100`, `(#0)`) and a `#` inside double quotes is text: neither
/// starts a comment.
fn sudoers_comment_start(line: &str) -> usize {
    let mut quoted = false;
    let mut chars = line.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '"' => quoted = !quoted,
            '#' if !quoted
                && !chars
                    .peek()
                    .is_some_and(|(_, next)| next.is_ascii_digit()) =>
            {
                return index;
            }
            _ => {}
        }
    }
    line.len()
}

fn classify_sudo(line: &str, doas: bool) -> (AlertKind, Severity) {
    if doas {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"permit") {
            let nopass = words.contains(&"nopass");
            let identity = words.iter().skip(1).find(|w| {
                !["nopass", "nolog", "persist", "keepenv"].contains(w)
                    && !w.starts_with("setenv")
            });
            let root_only = identity == Some(&"root");
            let severity = if nopass && !root_only {
                Severity::Critical
            } else {
                Severity::High
            };
            return (AlertKind::SudoRuleAdded, severity);
        }
        return (AlertKind::SudoConfigChanged, Severity::Medium);
    }
    let first = line.split_whitespace().next().unwrap_or_default();
    if first.starts_with("Defaults") {
        let weakening = [
            "!authenticate",
            "!env_reset",
            "LD_",
            "!requiretty",
            "!use_pty",
        ]
        .iter()
        .any(|word| line.contains(word));
        let severity = if weakening {
            Severity::High
        } else {
            Severity::Medium
        };
        return (AlertKind::SudoConfigChanged, severity);
    }
    if first.starts_with("@include") || first.starts_with("#include") {
        return (AlertKind::SudoConfigChanged, Severity::High);
    }
    if first.ends_with("_Alias") {
        return (AlertKind::SudoConfigChanged, Severity::High);
    }
    let nopass_all =
        line.contains("NOPASSWD") && line.trim_end().ends_with("ALL");
    let severity = if nopass_all {
        Severity::Critical
    } else {
        Severity::High
    };
    (AlertKind::SudoRuleAdded, severity)
}

/// `/etc/pam.d/<service>`: rules added or removed, per service.
pub(super) fn pam(ctx: &mut Ctx<'_>) -> Result<()> {
    for path in ctx.etc_changed_under("pam.d/") {
        let (old, new) = ctx.etc_texts(&path)?;
        let service = path.trim_start_matches("pam.d/");
        let subject = format!("/etc/{path}");
        let keep = |line: &str| {
            config_line(line, '#')
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        let (added, removed) = line_changes(&old, &new, keep);
        if added.is_empty() && removed.is_empty() {
            // The lines read the same once store paths are reduced, but
            // a generated file they name, such as a `pam_exec.so`
            // script, may have changed.
            flag_changed_named_files(
                ctx,
                &path,
                AlertKind::PamChanged,
                |_| false,
            );
            continue;
        }
        let weakening = added.iter().any(|line| {
            (line.contains("pam_permit.so") && pam_control_counts(line))
                || line.contains("nullok")
                || line.contains("pam_rootok.so")
        });
        let severity = if weakening {
            Severity::Critical
        } else if added.is_empty() {
            Severity::Medium
        } else {
            Severity::High
        };
        let detail = match (old.is_empty(), new.is_empty()) {
            (true, false) => {
                format!("service {service} added: {}", quote_lines(&added))
            }
            (false, true) => format!("service {service} removed"),
            _ => added_removed(&added, &removed),
        };
        ctx.push(AlertKind::PamChanged, severity, subject, detail);
    }
    Ok(())
}

/// Tells whether the control of a PAM rule lets the module's success
/// count: `sufficient`, `required`, `requisite`, or a bracket form such
/// as `[success=done default=ignore]` with an `ok`, `done` or jump
/// action. Words are compared in any case.
fn pam_control_counts(line: &str) -> bool {
    let line = line.to_lowercase();
    let keyword = ["sufficient", "required", "requisite"]
        .iter()
        .any(|word| line.contains(word));
    let bracket = line
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .is_some_and(|(control, _)| {
            control.split_whitespace().any(|pair| {
                pair.split_once('=').is_some_and(|(_, action)| {
                    matches!(action, "ok" | "done")
                        || action.parse::<u32>().is_ok_and(|jump| jump > 0)
                })
            })
        });
    keyword || bracket
}

/// polkit rules in `/etc/polkit-1/rules.d` and in the system path's
/// `share/polkit-1/rules.d`, which polkit reads too.
pub(super) fn polkit(ctx: &mut Ctx<'_>) -> Result<()> {
    let mut rules: Vec<(String, String, String)> = Vec::new();
    for path in ctx.etc_changed_under("polkit-1/rules.d/") {
        let (old, new) = ctx.etc_texts(&path)?;
        rules.push((format!("/etc/{path}"), old, new));
    }
    let old_sw = sw_rules(ctx.old)?;
    let new_sw = sw_rules(ctx.new)?;
    let names: BTreeSet<&String> =
        old_sw.keys().chain(new_sw.keys()).collect();
    for name in names {
        let old = old_sw.get(name).cloned().unwrap_or_default();
        let new = new_sw.get(name).cloned().unwrap_or_default();
        if reduce_store_paths(&old) != reduce_store_paths(&new) {
            rules.push((
                format!("sw/share/polkit-1/rules.d/{name}"),
                old,
                new,
            ));
        }
    }
    for (subject, old, new) in rules {
        let keep = |line: &str| config_line(line, '\u{0}');
        let (added, removed) = line_changes(&old, &new, keep);
        let detail = if added.is_empty() && removed.is_empty() {
            "changed".to_owned()
        } else {
            added_removed(&added, &removed)
        };
        ctx.push(
            AlertKind::PolkitRuleChanged,
            Severity::High,
            subject,
            detail,
        );
    }
    Ok(())
}

/// Reads the polkit rules that a system's `sw` provides, by file name.
fn sw_rules(files: &SystemFiles) -> Result<BTreeMap<String, String>> {
    let mut rules = BTreeMap::new();
    let Some(Node::StoreLink { target }) = files.toplevel.get("sw") else {
        return Ok(rules);
    };
    let dir = std::path::Path::new(target).join("share/polkit-1/rules.d");
    let Resolved::Directory { path } = resolve(&dir)? else {
        return Ok(rules);
    };
    for name in read_dir_sorted(&path)? {
        if let Resolved::File { path, .. } = resolve(&path.join(&name))? {
            let (bytes, _) = read_limited(&path, 256 * 1024)?;
            rules.insert(name, String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    Ok(rules)
}

/// `nix.conf` settings that decide who may use Nix as root and where
/// store paths come from.
const NIX_HIGH: &[&str] = &[
    "allowed-users",
    "substituters",
    "trusted-substituters",
    "trusted-public-keys",
    "require-sigs",
    "sandbox",
    "sandbox-paths",
    "sandbox-fallback",
    "post-build-hook",
    "pre-build-hook",
    "builders",
    "build-hook",
    "build-users-group",
    "allow-unsafe-native-code-during-evaluation",
    "netrc-file",
    "secret-key-files",
    "plugin-files",
    "diff-hook",
    "include",
];

/// Settings whose values are secrets and never shown.
const NIX_SECRET: &[&str] = &["access-tokens"];

/// Old names of `nix.conf` settings that Nix still reads, with the
/// current name of each.
const NIX_ALIASES: &[(&str, &str)] = &[
    ("binary-caches", "substituters"),
    ("trusted-binary-caches", "trusted-substituters"),
    ("binary-cache-public-keys", "trusted-public-keys"),
    ("build-use-chroot", "sandbox"),
    ("build-use-sandbox", "sandbox"),
    ("build-chroot-dirs", "sandbox-paths"),
    ("build-sandbox-paths", "sandbox-paths"),
    ("build-extra-chroot-dirs", "extra-sandbox-paths"),
    ("build-extra-sandbox-paths", "extra-sandbox-paths"),
];

/// Returns the current name of a `nix.conf` setting, `extra-` kept, so
/// that `binary-caches` and `substituters` are one setting.
fn nix_setting_name(key: &str) -> String {
    let (extra, base) = match key.strip_prefix("extra-") {
        Some(base) => ("extra-", base),
        None => ("", key),
    };
    let base = NIX_ALIASES
        .iter()
        .find(|(alias, _)| *alias == base)
        .map_or(base, |(_, name)| name);
    match base.strip_prefix("extra-") {
        Some(_) => base.to_owned(),
        None => format!("{extra}{base}"),
    }
}

/// Tells whether a value of a Nix boolean setting reads as false, as
/// Nix parses `false`, `no` and `0`.
fn nix_false(value: &str) -> bool {
    matches!(value, "false" | "no" | "0")
}

/// Tells whether a substituter URI marks its store as trusted
/// (`?trusted=1`), so that Nix takes its paths without a signature.
fn trusted_substituter(uri: &str) -> bool {
    let Some((_, query)) = uri.split_once('?') else {
        return false;
    };
    query.split('&').any(|param| {
        matches!(
            param.split_once('='),
            Some(("trusted", "true" | "yes" | "1"))
        )
    })
}

/// Reads the effective settings of a `nix.conf`: a later assignment replaces
/// an earlier one, `extra-<name>` appends to `<name>`, and `include` /
/// `!include` lines are kept under `include`.
fn nix_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let Some(line) = config_line(line, '#') else {
            continue;
        };
        if let Some(path) = line
            .strip_prefix("!include ")
            .or_else(|| line.strip_prefix("include "))
        {
            settings
                .entry("include".to_owned())
                .or_default()
                .push(path.trim().to_owned());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = nix_setting_name(key.trim());
        let values: Vec<String> =
            value.split_whitespace().map(str::to_owned).collect();
        match key.strip_prefix("extra-") {
            Some(base) => {
                settings.entry(base.to_owned()).or_default().extend(values)
            }
            None => {
                settings.insert(key.to_owned(), values);
            }
        }
    }
    settings
}

/// Tells whether a store URI names a store on another machine, from
/// which Nix on this one would take store paths.
fn remote_store(uri: &str) -> bool {
    let scheme = uri.split_once("://").map_or("", |(scheme, _)| scheme);
    !scheme.is_empty() && !matches!(scheme, "local" | "unix" | "file")
}

/// Replaces the password of a URI's user part, as in
/// `https://user:secret@host`, by [`REDACTED`].
fn hide_password(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{name}:{REDACTED}@{host}{tail}")
        }
        _ => uri.to_owned(),
    }
}

/// `/etc/nix/nix.conf`: one alert per effective setting that changes.
pub(super) fn nix_conf(ctx: &mut Ctx<'_>) -> Result<()> {
    // Compared even when nix.conf did not change, since an `/etc` file
    // that it includes may change alone.
    let (old, new) = ctx.etc_texts("nix/nix.conf")?;
    // Settings of an included store file apply at the include line.
    // A setting that names a generated file, such as a `post-build-hook`
    // script, reads the same while the file changed. Included files are
    // compared as settings below.
    let included = included_store_names(&old, &new, nix_include);
    flag_changed_named_files(
        ctx,
        "nix/nix.conf",
        AlertKind::NixSettingChanged,
        |name| included.contains(name),
    );
    let source = |files| IncludeSource {
        files,
        dir: "/etc/nix",
        read_elsewhere: |path| path == "nix/nix.conf",
    };
    let (old, old_cut) = inline_includes(&old, nix_include, source(ctx.old))?;
    let (new, new_cut) = inline_includes(&new, nix_include, source(ctx.new))?;
    push_cut_includes(
        ctx,
        AlertKind::NixSettingChanged,
        "/etc/nix/nix.conf",
        !old_cut && new_cut,
    );
    let before = nix_settings(&old);
    let after = nix_settings(&new);
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let old_values = before.get(key);
        let new_values = after.get(key);
        if old_values == new_values {
            continue;
        }
        let show = |values: Option<&Vec<String>>| {
            if NIX_SECRET.contains(&key.as_str()) {
                return "(not shown)".to_owned();
            }
            match values {
                None => "(default)".to_owned(),
                Some(values) if values.is_empty() => "(empty)".to_owned(),
                Some(values) => values.join(" "),
            }
        };
        let gained_values = |values: Option<&Vec<String>>| {
            let empty = Vec::new();
            let old_set: BTreeSet<&String> =
                old_values.unwrap_or(&empty).iter().collect();
            values
                .unwrap_or(&empty)
                .iter()
                .filter(|value| !old_set.contains(value))
                .cloned()
                .collect::<Vec<String>>()
        };
        let gained =
            |values: Option<&Vec<String>>| !gained_values(values).is_empty();
        let new_first = new_values.and_then(|v| v.first()).map(String::as_str);
        if key == "store" {
            let severity = if new_first.is_some_and(remote_store) {
                Severity::Critical
            } else {
                Severity::High
            };
            let show = |values: Option<&Vec<String>>| match values {
                None => "(default)".to_owned(),
                Some(values) if values.is_empty() => "(empty)".to_owned(),
                Some(values) => values
                    .iter()
                    .map(|uri| hide_password(uri))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            ctx.push(
                AlertKind::NixStoreChanged,
                severity,
                "/etc/nix/nix.conf",
                format!("store {} -> {}", show(old_values), show(new_values)),
            );
            continue;
        }
        let severity = match key.as_str() {
            "trusted-users" if gained(new_values) => Severity::Critical,
            "require-sigs" if new_first.is_some_and(nix_false) => {
                Severity::Critical
            }
            "substituters"
                if gained_values(new_values)
                    .iter()
                    .any(|uri| trusted_substituter(uri)) =>
            {
                Severity::Critical
            }
            "trusted-users" => Severity::High,
            "sandbox" if new_first == Some("false") => Severity::High,
            key if NIX_HIGH.contains(&key) => Severity::High,
            _ => Severity::Medium,
        };
        ctx.push(
            AlertKind::NixSettingChanged,
            severity,
            "/etc/nix/nix.conf",
            format!("{key} {} -> {}", show(old_values), show(new_values)),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_including_files_are_cut() {
        // A sudoers file that includes itself on every line would make
        // 150^3 copies of itself three levels deep.
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("loop");
        let text = "@include /etc/sudoers.loop\n".repeat(150);
        std::fs::write(&location, &text).unwrap();
        let mut files = SystemFiles::default();
        files.etc.insert(
            "sudoers.loop".to_owned(),
            Node::File {
                location: location.display().to_string(),
                size: text.len() as u64,
                executable: false,
                sha256: None,
            },
        );
        let source = IncludeSource {
            files: &files,
            dir: "/etc",
            read_elsewhere: is_sudoers,
        };
        let (inlined, cut) =
            inline_includes(&text, sudo_include, source).unwrap();
        assert!(cut);
        assert!(
            inlined.len() <= text.len() + super::super::MAX_INLINED_BYTES,
            "{} bytes",
            inlined.len()
        );
    }

    #[test]
    fn sshd_first_value_wins_and_match_blocks_count() {
        let settings = sshd_settings(
            "PermitRootLogin no\nPermitRootLogin yes\nPort 22\nPort 2222\n\
             Match User backup\n  ForceCommand internal-sftp\n",
        );
        assert_eq!(settings["permitrootlogin"].1, "no");
        assert_eq!(settings["port"].1, "22, 2222");
        assert_eq!(
            settings["match user backup"].1,
            "ForceCommand internal-sftp"
        );
    }

    #[test]
    fn root_and_empty_logins_found() {
        assert!(opens_root_or_empty_login("permitrootlogin yes"));
        assert!(opens_root_or_empty_login("permitemptypasswords \"yes\""));
        assert!(!opens_root_or_empty_login(
            "permitrootlogin prohibit-password"
        ));
        assert!(!opens_root_or_empty_login("passwordauthentication yes"));
        let lines = block_lines("PermitRootLogin yes; X11Forwarding no");
        assert!(lines.contains("permitrootlogin yes"));
    }

    #[test]
    fn nix_settings_override_and_append() {
        let settings = nix_settings(
            "substituters = a\nsubstituters = b\nextra-substituters = c\n\
             trusted-users = root # the admin\n!include /etc/nix/secret.conf\n",
        );
        assert_eq!(settings["substituters"], ["b", "c"]);
        assert_eq!(settings["trusted-users"], ["root"]);
        assert_eq!(settings["include"], ["/etc/nix/secret.conf"]);
    }

    #[test]
    fn nix_aliases_are_one_setting() {
        let settings = nix_settings(
            "substituters = a\nbinary-caches = b\n\
             extra-binary-cache-public-keys = k\n\
             build-extra-sandbox-paths = /x\nbuild-use-chroot = false\n",
        );
        assert_eq!(settings["substituters"], ["b"]);
        assert_eq!(settings["trusted-public-keys"], ["k"]);
        assert_eq!(settings["sandbox-paths"], ["/x"]);
        assert_eq!(settings["sandbox"], ["false"]);
        assert!(nix_false("no"));
        assert!(nix_false("0"));
        assert!(!nix_false("relaxed"));
        assert!(trusted_substituter("https://c.example.org?trusted=1"));
        assert!(trusted_substituter("s3://c?region=x&trusted=true"));
        assert!(!trusted_substituter("https://c.example.org?priority=1"));
    }

    #[test]
    fn pam_controls_classified() {
        assert!(pam_control_counts("auth Sufficient pam_permit.so"));
        assert!(pam_control_counts(
            "auth [success=done default=ignore] pam_permit.so"
        ));
        assert!(pam_control_counts(
            "auth [success=2 default=bad] pam_permit.so"
        ));
        assert!(!pam_control_counts("auth optional pam_permit.so"));
        assert!(!pam_control_counts(
            "auth [success=ignore default=bad] pam_permit.so"
        ));
    }

    #[test]
    fn store_uris_classified() {
        assert!(remote_store("ssh-ng://root@203.0.113.5"));
        assert!(remote_store("https://cache.example.org"));
        assert!(!remote_store("daemon"));
        assert!(!remote_store("local?root=/mnt"));
        assert!(!remote_store("unix:///run/nix/socket"));
        assert_eq!(
            hide_password("https://alice:hunter2@cache.example.org/x"),
            format!("https://alice:{REDACTED}@cache.example.org/x")
        );
        assert_eq!(hide_password("ssh://root@host"), "ssh://root@host");
        assert_eq!(hide_password("daemon"), "daemon");
    }

    #[test]
    fn sudo_lines_classified() {
        let rule = "%wheel ALL=(ALL:ALL) NOPASSWD: ALL";
        assert_eq!(
            classify_sudo(rule, false),
            (AlertKind::SudoRuleAdded, Severity::Critical)
        );
        assert_eq!(
            classify_sudo("alice ALL=(ALL) /usr/bin/true", false).1,
            Severity::High
        );
        assert_eq!(
            classify_sudo("Defaults !authenticate", false),
            (AlertKind::SudoConfigChanged, Severity::High)
        );
        assert_eq!(
            classify_sudo("permit nopass keepenv root", true).1,
            Severity::High
        );
        assert_eq!(
            classify_sudo("permit nopass alice as root", true).1,
            Severity::Critical
        );
        assert_eq!(
            sudo_line("#includedir /etc/sudoers.d", false).as_deref(),
            Some("#includedir /etc/sudoers.d")
        );
        assert_eq!(sudo_line("# a comment", false), None);
        assert_eq!(
            sudo_line("#0 ALL=(#0) NOPASSWD: ALL # uid 0", false).as_deref(),
            Some("#0 ALL=(#0) NOPASSWD: ALL")
        );
        assert_eq!(
            sudo_line("%#100  ALL=(ALL) ALL", false).as_deref(),
            Some("%#100 ALL=(ALL) ALL")
        );
        assert_eq!(
            sudo_line("Defaults passprompt=\"#%p\" # note", false).as_deref(),
            Some("Defaults passprompt=\"#%p\"")
        );
    }

    #[test]
    fn key_summaries_have_fingerprints() {
        let summary = key_summary(crate::fixture::DEMO_ADMIN_KEY);
        assert!(summary.starts_with("ssh-ed25519 SHA256:"), "{summary}");
        assert!(summary.ends_with("admin@laptop"), "{summary}");
        let with_options = key_summary(&format!(
            "command=\"/bin/backup\" {}",
            crate::fixture::DEMO_ADMIN_KEY
        ));
        assert!(
            with_options.contains("with options command="),
            "{with_options}"
        );
    }
}
