//! Users and groups, from the data NixOS applies at activation: the
//! `users-groups.json` that the `users` snippet of `activate` passes to
//! its script, the `userborn.json` of `userborn.service`, or the lines
//! of `/etc/sysusers.d`.
//!
//! Password fields are compared through their SHA-256 and never shown:
//! an alert names the field that changed, not its value.

use std::collections::{BTreeMap, BTreeSet};

use countersign_core::StorePath;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Ctx, activation_snippets, find_reference};
use crate::diff::alerts::{AlertKind, Severity};
use crate::diff::system::{SystemFiles, store_file_text};
use crate::error::Result;

/// Groups whose members can become root or read what root reads.
const PRIVILEGED_GROUPS: &[&str] = &[
    "root",
    "wheel",
    "sudo",
    "admin",
    "adm",
    "disk",
    "docker",
    "podman",
    "lxd",
    "incus-admin",
    "libvirtd",
    "kvm",
    "shadow",
    "systemd-journal",
    "keys",
    "tty",
    "input",
];

/// Password fields of the users data, in the order they are reported.
const SECRET_FIELDS: &[&str] = &[
    "hashedPassword",
    "password",
    "initialHashedPassword",
    "initialPassword",
];

#[derive(Debug, Default, PartialEq)]
struct UsersData {
    mutable: Option<bool>,
    users: BTreeMap<String, UserInfo>,
    groups: BTreeMap<String, GroupInfo>,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct UserInfo {
    uid: Option<i64>,
    group: String,
    home: String,
    shell: String,
    description: String,
    system: Option<bool>,
    /// Field name to the state of its value.
    secrets: BTreeMap<String, Secret>,
    password_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Secret {
    /// The empty string: for a hash, login without a password.
    Empty,
    /// SHA-256 of the value, for comparing only.
    Set(String),
}

#[derive(Debug, Default, Clone, PartialEq)]
struct GroupInfo {
    gid: Option<i64>,
    members: BTreeSet<String>,
}

pub(super) fn check(ctx: &mut Ctx<'_>) -> Result<()> {
    let old = users_data(ctx.old)?;
    let new = users_data(ctx.new)?;
    if old == new {
        return Ok(());
    }
    let (old, new) = (old.unwrap_or_default(), new.unwrap_or_default());

    if let (Some(a), Some(b)) = (old.mutable, new.mutable)
        && a != b
    {
        let detail = if b {
            "mutableUsers false -> true: users and passwords changed on \
             the machine are kept"
        } else {
            "mutableUsers true -> false: /etc/passwd, /etc/group and \
             passwords are replaced on every activation"
        };
        ctx.push(
            AlertKind::MutableUsersChanged,
            Severity::Medium,
            "users",
            detail,
        );
    }

    let privileged_groups_of = |data: &UsersData, user: &str| -> Vec<String> {
        data.groups
            .iter()
            .filter(|(name, group)| {
                privilege_of(data, name).is_some()
                    && group.members.contains(user)
            })
            .map(|(name, _)| name.clone())
            .collect()
    };

    let names: BTreeSet<&String> =
        old.users.keys().chain(new.users.keys()).collect();
    for name in names {
        let subject = format!("user {name}");
        match (old.users.get(name), new.users.get(name)) {
            (None, Some(user)) => {
                let groups = privileged_groups_of(&new, name);
                let severity = if user.uid == Some(0) {
                    Severity::Critical
                } else if !groups.is_empty()
                    || privilege_of(&new, &user.group).is_some()
                {
                    Severity::High
                } else {
                    Severity::Medium
                };
                let mut facts = vec![format!(
                    "uid {}",
                    user.uid.map_or("allocated".to_owned(), |u| u.to_string())
                )];
                if !groups.is_empty() {
                    facts.push(format!("in {}", groups.join(", ")));
                }
                facts.push(format!("shell {}", user.shell));
                for (field, secret) in &user.secrets {
                    facts.push(match secret {
                        Secret::Empty => format!("empty {field}"),
                        Secret::Set(_) => format!("{field} set"),
                    });
                }
                ctx.push(
                    AlertKind::UserAdded,
                    severity,
                    &subject,
                    format!("added ({})", facts.join(", ")),
                );
            }
            (Some(_), None) => ctx.push(
                AlertKind::UserRemoved,
                Severity::Low,
                &subject,
                "removed",
            ),
            (Some(before), Some(after)) => {
                let privileged_group = privilege_of(&new, &after.group);
                compare_user(
                    ctx,
                    &subject,
                    before,
                    after,
                    privileged_group.is_some(),
                );
            }
            (None, None) => {}
        }
    }

    let names: BTreeSet<&String> =
        old.groups.keys().chain(new.groups.keys()).collect();
    for name in names {
        let subject = format!("group {name}");
        let privilege = privilege_of(&new, name);
        let privileged = privilege.is_some();
        // A group that shares the gid of a privileged group: programs
        // that check gids see its members as members of that group.
        let shares = privilege
            .as_deref()
            .filter(|holder| holder != name)
            .map(|holder| format!(", the gid of {holder}"))
            .unwrap_or_default();
        let before = old.groups.get(name);
        let after = new.groups.get(name);
        match (before, after) {
            (None, Some(group)) => ctx.push(
                AlertKind::GroupChanged,
                if group.gid == Some(0) || !shares.is_empty() {
                    Severity::High
                } else {
                    Severity::Low
                },
                &subject,
                format!("added with gid {}{shares}", show_id(group.gid)),
            ),
            (Some(_), None) => ctx.push(
                AlertKind::GroupChanged,
                Severity::Low,
                &subject,
                "removed",
            ),
            (Some(a), Some(b)) if a.gid != b.gid => ctx.push(
                AlertKind::GroupChanged,
                if b.gid == Some(0) || !shares.is_empty() {
                    Severity::High
                } else {
                    Severity::Medium
                },
                &subject,
                format!(
                    "gid {} -> {}{shares}",
                    show_id(a.gid),
                    show_id(b.gid)
                ),
            ),
            _ => {}
        }
        let empty = BTreeSet::new();
        let old_members = before.map_or(&empty, |g| &g.members);
        let new_members = after.map_or(&empty, |g| &g.members);
        for member in new_members.difference(old_members) {
            ctx.push(
                AlertKind::GroupMemberAdded,
                if privileged {
                    Severity::High
                } else {
                    Severity::Medium
                },
                &subject,
                format!("{member} joins {name}{shares}"),
            );
        }
        for member in old_members.difference(new_members) {
            ctx.push(
                AlertKind::GroupMemberRemoved,
                Severity::Low,
                &subject,
                format!("{member} leaves {name}"),
            );
        }
    }
    Ok(())
}

fn compare_user(
    ctx: &mut Ctx<'_>,
    subject: &str,
    before: &UserInfo,
    after: &UserInfo,
    privileged_group: bool,
) {
    if before.uid != after.uid {
        ctx.push(
            AlertKind::UserUidChanged,
            if after.uid == Some(0) {
                Severity::Critical
            } else {
                Severity::High
            },
            subject,
            format!("uid {} -> {}", show_id(before.uid), show_id(after.uid)),
        );
    }
    if before.shell != after.shell {
        let opens_login =
            !can_log_in(&before.shell) && can_log_in(&after.shell);
        ctx.push(
            AlertKind::UserShellChanged,
            if opens_login {
                Severity::High
            } else {
                Severity::Medium
            },
            subject,
            format!("shell {} -> {}", before.shell, after.shell),
        );
    }
    for field in SECRET_FIELDS {
        let old = before.secrets.get(*field);
        let new = after.secrets.get(*field);
        if old == new {
            continue;
        }
        let clear_text =
            field.ends_with("Password") && !field.contains("ashed");
        let (severity, detail) = match new {
            Some(Secret::Empty) if field.contains("ashed") => (
                Severity::Critical,
                format!(
                    "{field} becomes empty: the account logs in without a \
                     password"
                ),
            ),
            Some(_) if clear_text => (
                Severity::High,
                format!(
                    "{field} (clear text, readable by every local user in \
                     the store) {} (value not shown)",
                    if old.is_some() { "changed" } else { "set" }
                ),
            ),
            Some(_) => (
                Severity::High,
                format!(
                    "{field} {} (value not shown)",
                    if old.is_some() { "changed" } else { "set" }
                ),
            ),
            None => (Severity::Medium, format!("{field} removed")),
        };
        ctx.push(AlertKind::UserPasswordChanged, severity, subject, detail);
    }
    if before.password_file != after.password_file {
        ctx.push(
            AlertKind::UserPasswordChanged,
            Severity::High,
            subject,
            format!(
                "hashedPasswordFile {} -> {}",
                before.password_file.as_deref().unwrap_or("(none)"),
                after.password_file.as_deref().unwrap_or("(none)")
            ),
        );
    }
    let mut other = Vec::new();
    if before.group != after.group {
        other.push(format!("group {} -> {}", before.group, after.group));
    }
    if before.home != after.home {
        other.push(format!("home {} -> {}", before.home, after.home));
    }
    if before.description != after.description {
        other.push("description changed".to_owned());
    }
    if before.system != after.system {
        other.push(format!(
            "system user {} -> {}",
            show_flag(before.system),
            show_flag(after.system)
        ));
    }
    if !other.is_empty() {
        let severity = if privileged_group && before.group != after.group {
            Severity::High
        } else {
            Severity::Low
        };
        ctx.push(AlertKind::UserChanged, severity, subject, other.join("; "));
    }
}

/// Tells whether the group `name` of `data` is privileged: by its name,
/// or by sharing the gid of a privileged group (or gid 0). Returns the
/// privileged group's name, which is `name` itself in the first case.
fn privilege_of(data: &UsersData, name: &str) -> Option<String> {
    if PRIVILEGED_GROUPS.contains(&name) {
        return Some(name.to_owned());
    }
    let gid = data.groups.get(name)?.gid?;
    if gid == 0 {
        return Some("root".to_owned());
    }
    data.groups
        .iter()
        .find(|(other, group)| {
            group.gid == Some(gid)
                && PRIVILEGED_GROUPS.contains(&other.as_str())
        })
        .map(|(other, _)| other.clone())
}

fn can_log_in(shell: &str) -> bool {
    let base = shell.rsplit('/').next().unwrap_or(shell);
    !(shell.is_empty() || base == "nologin" || base == "false")
}

fn show_id(id: Option<i64>) -> String {
    id.map_or_else(|| "(allocated)".to_owned(), |id| id.to_string())
}

fn show_flag(flag: Option<bool>) -> &'static str {
    match flag {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

/// Lists the users of a system whose uid is 0 in its users data. A
/// key login as one of them is a root login, whatever the name.
pub(super) fn uid_zero_users(files: &SystemFiles) -> Result<BTreeSet<String>> {
    Ok(users_data(files)?
        .map(|data| {
            data.users
                .into_iter()
                .filter(|(_, user)| user.uid == Some(0))
                .map(|(name, _)| name)
                .collect()
        })
        .unwrap_or_default())
}

/// Finds and reads the users data of a system, if it has any.
fn users_data(files: &SystemFiles) -> Result<Option<UsersData>> {
    if let Some(activate) = files.toplevel_text("activate")? {
        let snippets = activation_snippets(&activate);
        if let Some(users) = snippets.get("users")
            && let Some(path) =
                data_file(users, "update-users-groups", "users-groups.json")
            && let Some(text) = store_file_text(&path, "")?
        {
            return Ok(parse_json(&text));
        }
    }
    if let Some(unit) = files.unit_text("userborn.service")?
        && let Some(path) = data_file(&unit, "ExecStart=", "userborn.json")
        && let Some(text) = store_file_text(&path, "")?
    {
        return Ok(parse_json(&text));
    }
    let mut sysusers = String::new();
    for path in files.etc_paths_under("sysusers.d/") {
        if let Some(text) = files.etc_text(path)? {
            sysusers.push_str(&text);
            sysusers.push('\n');
        }
    }
    if !sysusers.is_empty() {
        return Ok(Some(parse_sysusers(&sysusers)));
    }
    Ok(None)
}

/// Finds the users data file, a store path whose name ends with
/// `suffix`, on the last line of `text` that contains `command` (the
/// line that passes the file to the program that applies it), with
/// backslash continuations joined. Another line may name other such
/// paths, in a comment for example, which the program never reads.
/// Without such a line, the first such path of `text` is taken.
fn data_file(text: &str, command: &str, suffix: &str) -> Option<StorePath> {
    let matches = |name: &str| name.ends_with(suffix);
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .filter(|line| line.contains(command))
        .filter_map(|line| find_reference(line, matches))
        .next_back()
        .or_else(|| find_reference(text, matches))
}

fn parse_json(text: &str) -> Option<UsersData> {
    let value: Value = serde_json::from_str(text).ok()?;
    let mut data = UsersData {
        mutable: value.get("mutableUsers").and_then(Value::as_bool),
        ..UsersData::default()
    };
    let string = |user: &Value, key: &str| {
        user.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    for user in value.get("users")?.as_array()? {
        let name = string(user, "name");
        let mut secrets = BTreeMap::new();
        for field in SECRET_FIELDS {
            if let Some(secret) = user.get(*field).and_then(Value::as_str) {
                let state = if secret.is_empty() {
                    Secret::Empty
                } else {
                    let digest = Sha256::digest(secret.as_bytes());
                    Secret::Set(
                        digest.iter().map(|b| format!("{b:02x}")).collect(),
                    )
                };
                secrets.insert((*field).to_owned(), state);
            }
        }
        let system = user
            .get("isSystemUser")
            .and_then(Value::as_bool)
            .or_else(|| {
                user.get("isNormal").and_then(Value::as_bool).map(|n| !n)
            });
        data.users.insert(
            name,
            UserInfo {
                uid: user.get("uid").and_then(Value::as_i64),
                group: string(user, "group"),
                home: string(user, "home"),
                shell: string(user, "shell"),
                description: string(user, "description"),
                system,
                secrets,
                password_file: user
                    .get("hashedPasswordFile")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            },
        );
    }
    for group in value.get("groups")?.as_array()? {
        let name = group
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let members = group
            .get("members")
            .and_then(Value::as_array)
            .map(|members| {
                members
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        data.groups.insert(
            name,
            GroupInfo {
                gid: group.get("gid").and_then(Value::as_i64),
                members,
            },
        );
    }
    Some(data)
}

/// Reads `u`, `g` and `m` lines of sysusers.d: `u name uid[:group]
/// "gecos" home shell`, `g name gid`, `m user group`.
fn parse_sysusers(text: &str) -> UsersData {
    let mut data = UsersData::default();
    for line in text.lines() {
        let fields = split_quoted(line.trim());
        let field = |index: usize| {
            fields
                .get(index)
                .filter(|f| f.as_str() != "-")
                .cloned()
                .unwrap_or_default()
        };
        match fields.first().map(String::as_str) {
            Some("u" | "u!") => {
                let id = field(2);
                let (uid, group) = match id.split_once(':') {
                    Some((uid, group)) => (uid.to_owned(), group.to_owned()),
                    None => (id.clone(), field(1)),
                };
                data.users.insert(
                    field(1),
                    UserInfo {
                        uid: uid.parse().ok(),
                        group,
                        description: field(3),
                        home: field(4),
                        shell: field(5),
                        system: Some(true),
                        ..UserInfo::default()
                    },
                );
            }
            Some("g") => {
                data.groups.entry(field(1)).or_default().gid =
                    field(2).parse().ok();
            }
            Some("m") => {
                data.groups
                    .entry(field(2))
                    .or_default()
                    .members
                    .insert(field(1));
            }
            _ => {}
        }
    }
    data
}

/// Splits a line at spaces, keeping double-quoted fields whole.
fn split_quoted(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    fields.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        fields.push(current);
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_users_and_groups() {
        let text = r#"{"groups":[{"gid":1,"members":["admin"],"name":"wheel"}],
            "mutableUsers":false,
            "users":[{"name":"admin","uid":1000,"group":"users",
            "hashedPassword":"$6$x$y","shell":"/bin/bash","home":"/home/admin",
            "isSystemUser":false}]}"#;
        let data = parse_json(text).unwrap();
        assert_eq!(data.mutable, Some(false));
        let admin = &data.users["admin"];
        assert_eq!(admin.uid, Some(1000));
        assert!(matches!(admin.secrets["hashedPassword"], Secret::Set(_)));
        assert!(data.groups["wheel"].members.contains("admin"));
    }

    #[test]
    fn sysusers_lines() {
        let data = parse_sysusers(
            "u sshd 998:sshd \"SSH privilege separation\" /var/empty -\n\
             g wheel 1\nm alice wheel\n",
        );
        assert_eq!(data.users["sshd"].uid, Some(998));
        assert_eq!(data.users["sshd"].description, "SSH privilege separation");
        assert!(data.groups["wheel"].members.contains("alice"));
    }

    #[test]
    fn login_shells() {
        assert!(can_log_in("/run/current-system/sw/bin/bash"));
        assert!(!can_log_in("/run/current-system/sw/bin/nologin"));
        assert!(!can_log_in("/bin/false"));
    }
}
