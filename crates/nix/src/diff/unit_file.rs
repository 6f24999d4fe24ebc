//! systemd unit files and drop-ins, parsed into directives.
//!
//! A unit is compared by what it sets rather than by its lines, so that
//! reordering keys, moving comments or splitting a value over several
//! lines changes nothing. The syntax follows systemd.syntax(7): `[Section]`
//! headers, `Key=Value` assignments, `#` and `;` comments at the start of
//! a line, and a trailing backslash joining a line with the next one.
//! As in systemd, the last assignment of a setting wins, except for the
//! list settings in [`accumulates`] (commands, dependencies, paths,
//! environment, capabilities, socket listens, ...), whose assignments
//! add up in order. An empty assignment (`Key=`) resets either kind.
//! Drop-ins (`<unit>.d/*.conf`) are applied after the unit in file name
//! order, the way systemd merges them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::reduce::reduce_store_paths;

/// The effective directives of a unit: section, then key, then the
/// values. A list setting keeps every assignment since its last reset,
/// in order, and any other setting keeps only its last value. Values have
/// their store paths reduced to package names (see
/// [`reduce_store_paths`]) and runs of blank space outside quotes
/// collapsed to one space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitFile {
    pub sections: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

/// One directive whose values differ between two versions of a unit. An
/// empty `old` means the directive was added, an empty `new` that it
/// was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectiveChange {
    pub section: String,
    pub key: String,
    pub old: Vec<String>,
    pub new: Vec<String>,
}

impl UnitFile {
    /// Parses one unit file or drop-in.
    pub fn parse(text: &str) -> Self {
        let mut unit = Self::default();
        unit.apply(text);
        unit
    }

    /// Applies the assignments of `text` on top of these directives, as
    /// systemd applies a drop-in to its unit.
    pub fn apply(&mut self, text: &str) {
        self.apply_with(text, normalize_value);
    }

    /// Applies the assignments of `text` as [`UnitFile::apply`] does,
    /// but keeps the store paths of the values whole, for a check that
    /// reads the files that a unit runs.
    pub fn apply_raw(&mut self, text: &str) {
        self.apply_with(text, collapse_blank);
    }

    fn apply_with(&mut self, text: &str, normalize: fn(&str) -> String) {
        let mut section = String::new();
        for line in logical_lines(text) {
            // A line that starts with a comment sign only once its byte
            // order mark is gone is a comment too.
            if line.starts_with(['#', ';']) {
                continue;
            }
            // systemd keeps the blank space inside the brackets, so
            // `[ Service ]` is an unknown section whose settings it
            // ignores.
            if let Some(name) =
                line.strip_prefix('[').and_then(|l| l.strip_suffix(']'))
            {
                section = name.to_owned();
                continue;
            }
            // A line without `=` is invalid in a unit; systemd ignores it
            // with a warning, so it sets nothing here either.
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim_matches(BLANK);
            if key.is_empty() {
                continue;
            }
            let values = self
                .sections
                .entry(section.clone())
                .or_default()
                .entry(key.to_owned())
                .or_default();
            let value = normalize(value);
            if value.is_empty() {
                values.clear();
                if let Some(family) = condition_family(&section, key) {
                    reset_conditions(self.sections.get_mut(&section), family);
                }
            } else if accumulates(&section, key) {
                values.push(value);
            } else {
                *values = vec![value];
            }
        }
        // A list that ended up empty sets nothing.
        for keys in self.sections.values_mut() {
            keys.retain(|_, values| !values.is_empty());
        }
        self.sections.retain(|_, keys| !keys.is_empty());
    }

    /// Returns the values of `key` in `section`, empty when it is unset.
    pub fn get(&self, section: &str, key: &str) -> &[String] {
        self.sections
            .get(section)
            .and_then(|keys| keys.get(key))
            .map_or(&[], Vec::as_slice)
    }

    /// Returns the last value of `key` in `section`: the value of a
    /// setting that takes one, or the last assignment of a list.
    pub fn last(&self, section: &str, key: &str) -> Option<&str> {
        self.get(section, key).last().map(String::as_str)
    }
}

/// Returns `Condition` or `Assert` when `key` in `section` is a unit
/// condition or assertion, the two lists that systemd keeps.
fn condition_family(section: &str, key: &str) -> Option<&'static str> {
    if section != "Unit" {
        return None;
    }
    ["Condition", "Assert"]
        .into_iter()
        .find(|family| key.starts_with(family))
}

/// Empties every key of one condition family. systemd keeps all
/// `Condition*=` settings in one list and all `Assert*=` settings in
/// another, and an empty assignment of any key empties its whole list
/// (`config_parse_unit_condition_string` and its path twin in systemd's
/// src/core/load-fragment.c).
fn reset_conditions(
    keys: Option<&mut BTreeMap<String, Vec<String>>>,
    family: &str,
) {
    for (key, values) in keys.into_iter().flatten() {
        if key.starts_with(family) {
            values.clear();
        }
    }
}

/// Tells whether the values of `key` in `section` name units or paths
/// that systemd keeps as a set, so that their order and the way they
/// are split over assignments mean nothing.
fn is_name_set(section: &str, key: &str) -> bool {
    match section {
        "Unit" => UNIT_LISTS.contains(&key) && key != "Documentation",
        "Install" => INSTALL_LISTS.contains(&key),
        _ => false,
    }
}

/// Collects the words of a name set's assignments, sorted and without
/// repeats.
fn name_set(values: &[String]) -> BTreeSet<&str> {
    values.iter().flat_map(|value| value.split(' ')).collect()
}

/// List settings of `[Unit]`. Every `Condition*` and `Assert*` key is
/// one too.
const UNIT_LISTS: &[&str] = &[
    "Documentation",
    "Wants",
    "Requires",
    "Requisite",
    "BindsTo",
    "PartOf",
    "Upholds",
    "Conflicts",
    "Before",
    "After",
    "OnFailure",
    "OnSuccess",
    "PropagatesReloadTo",
    "ReloadPropagatedFrom",
    "PropagatesStopTo",
    "StopPropagatedFrom",
    "JoinsNamespaceOf",
    "RequiresMountsFor",
    "WantsMountsFor",
];

/// List settings of `[Install]`.
const INSTALL_LISTS: &[&str] =
    &["Alias", "WantedBy", "RequiredBy", "UpheldBy", "Also"];

/// List settings of the type-specific sections (`[Service]`,
/// `[Socket]`, `[Mount]`, `[Swap]`, `[Timer]`, `[Path]`, `[Slice]`):
/// execution environment, sandboxing, credentials, resource control,
/// socket listens, timer and path triggers. Every `Exec*` command is
/// one too.
const TYPE_LISTS: &[&str] = &[
    // systemd.exec(5)
    "Environment",
    "EnvironmentFile",
    "PassEnvironment",
    "UnsetEnvironment",
    "SupplementaryGroups",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "BindPaths",
    "BindReadOnlyPaths",
    "TemporaryFileSystem",
    "MountImages",
    "ExtensionImages",
    "ExtensionDirectories",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "SystemCallFilter",
    "SystemCallArchitectures",
    "SystemCallLog",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictFileSystems",
    "RestrictNetworkInterfaces",
    "StateDirectory",
    "RuntimeDirectory",
    "CacheDirectory",
    "LogsDirectory",
    "ConfigurationDirectory",
    "LoadCredential",
    "LoadCredentialEncrypted",
    "SetCredential",
    "SetCredentialEncrypted",
    "ImportCredential",
    "LogExtraFields",
    "LogFilterPatterns",
    // systemd.service(5)
    "SuccessExitStatus",
    "RestartPreventExitStatus",
    "RestartForceExitStatus",
    "OpenFile",
    // systemd.resource-control(5)
    "DeviceAllow",
    "IPAddressAllow",
    "IPAddressDeny",
    "IPIngressFilterPath",
    "IPEgressFilterPath",
    "SocketBindAllow",
    "SocketBindDeny",
    "BPFProgram",
    "IODeviceWeight",
    "IOReadBandwidthMax",
    "IOWriteBandwidthMax",
    "IOReadIOPSMax",
    "IOWriteIOPSMax",
    "IODeviceLatencyTargetSec",
    // systemd.socket(5)
    "ListenStream",
    "ListenDatagram",
    "ListenSequentialPacket",
    "ListenFIFO",
    "ListenSpecial",
    "ListenNetlink",
    "ListenMessageQueue",
    "ListenUSBFunction",
    "Symlinks",
    // systemd.timer(5) and systemd.path(5)
    "OnActiveSec",
    "OnBootSec",
    "OnStartupSec",
    "OnUnitActiveSec",
    "OnUnitInactiveSec",
    "OnCalendar",
    "PathExists",
    "PathExistsGlob",
    "PathChanged",
    "PathModified",
    "DirectoryNotEmpty",
];

/// Tells whether `key` in `section` is a list setting, whose
/// assignments add up, rather than one whose last assignment wins.
/// Capability, system call and address family lists are kept as their
/// assignments, including those that start with `~` to invert a part.
/// Lists other than the dependency name sets of [`is_name_set`] are
/// compared in assignment order.
fn accumulates(section: &str, key: &str) -> bool {
    match section {
        "Unit" => {
            UNIT_LISTS.contains(&key)
                || key.starts_with("Condition")
                || key.starts_with("Assert")
        }
        "Install" => INSTALL_LISTS.contains(&key),
        _ => key.starts_with("Exec") || TYPE_LISTS.contains(&key),
    }
}

/// Blank space as systemd trims it from lines, keys and values
/// (`WHITESPACE` in its sources): space, tab, line feed and carriage
/// return. Other Unicode spaces, such as U+00A0, are part of a key or
/// value there, so `User\u{a0}=backup` sets no `User=`.
const BLANK: &[char] = &[' ', '\t', '\n', '\r'];

/// Splits text where systemd's `read_line` ends a line: at `\n`, `\r` or
/// NUL. A run of these in which no byte repeats ends one line, so
/// `\r\n` is one line end and `\n\n` two, and a NUL ends the run.
fn raw_lines(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !matches!(bytes[i], b'\n' | b'\r' | 0) {
            i += 1;
            continue;
        }
        lines.push(&text[start..i]);
        let mut seen = Vec::new();
        while i < bytes.len()
            && matches!(bytes[i], b'\n' | b'\r' | 0)
            && !seen.contains(&bytes[i])
        {
            seen.push(bytes[i]);
            i += 1;
            if seen.last() == Some(&0) {
                break;
            }
        }
        start = i;
    }
    if start < bytes.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// Splits a unit's text into logical lines the way systemd's
/// `config_parse` does: comments and blank lines dropped, continuation
/// lines joined with one space in place of the backslash, and the
/// result trimmed. A line continues only when it ends in a backslash
/// that is not itself escaped, so `a\\` ends its line, and a backslash
/// followed by blank space does not continue either. A comment line
/// inside a continuation is skipped, as systemd skips it. The first
/// line that starts with a UTF-8 byte order mark loses it.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut pending: Option<String> = None;
    let mut bom_seen = false;
    for raw in raw_lines(text) {
        if raw.trim_start_matches(BLANK).starts_with(['#', ';']) {
            continue;
        }
        let mut line = raw;
        if !bom_seen && let Some(rest) = line.strip_prefix('\u{feff}') {
            line = rest;
            bom_seen = true;
        }
        let backslashes =
            line.bytes().rev().take_while(|&byte| byte == b'\\').count();
        let continues = backslashes % 2 == 1;
        let part = if continues {
            &line[..line.len() - 1]
        } else {
            line
        };
        let joined = match pending.take() {
            Some(mut start) => {
                start.push(' ');
                start.push_str(part);
                start
            }
            None => part.to_owned(),
        };
        if continues {
            pending = Some(joined);
        } else if !joined.trim_matches(BLANK).is_empty() {
            lines.push(joined.trim_matches(BLANK).to_owned());
        }
    }
    if let Some(rest) = pending
        && !rest.trim_matches(BLANK).is_empty()
    {
        lines.push(rest.trim_matches(BLANK).to_owned());
    }
    lines
}

/// Trims a value, collapses blank space outside quotes and reduces its
/// store paths.
fn normalize_value(value: &str) -> String {
    reduce_store_paths(&collapse_blank(value))
}

/// Trims a value and collapses blank space outside quotes.
fn collapse_blank(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut quote: Option<char> = None;
    let mut blank = false;
    for c in value.trim_matches(BLANK).chars() {
        match quote {
            Some(open) => {
                if c == open {
                    quote = None;
                }
                out.push(c);
            }
            None if BLANK.contains(&c) => blank = true,
            None => {
                if blank {
                    out.push(' ');
                    blank = false;
                }
                if c == '"' || c == '\'' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

/// Lists the directives whose values differ, by section and key.
pub fn directive_changes(
    old: &UnitFile,
    new: &UnitFile,
) -> Vec<DirectiveChange> {
    let mut keys: BTreeSet<(&String, &String)> = BTreeSet::new();
    for unit in [old, new] {
        for (section, entries) in &unit.sections {
            keys.extend(entries.keys().map(|key| (section, key)));
        }
    }
    keys.into_iter()
        .filter_map(|(section, key)| {
            let before = old.get(section, key);
            let after = new.get(section, key);
            let same = if is_name_set(section, key) {
                name_set(before) == name_set(after)
            } else {
                before == after
            };
            (!same).then(|| DirectiveChange {
                section: section.clone(),
                key: key.clone(),
                old: before.to_vec(),
                new: after.to_vec(),
            })
        })
        .collect()
}

impl DirectiveChange {
    /// Describes the change in one line: `added [Service] User=backup`,
    /// `removed [Service] User=backup` or `[Service] User: a -> b`.
    pub fn describe(&self) -> String {
        let assignments = |values: &[String]| {
            values
                .iter()
                .map(|value| {
                    format!("[{}] {}={value}", self.section, self.key)
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.old.is_empty(), self.new.is_empty()) {
            (true, _) => format!("added {}", assignments(&self.new)),
            (_, true) => format!("removed {}", assignments(&self.old)),
            _ => format!(
                "[{}] {}: {} -> {}",
                self.section,
                self.key,
                self.old.join(", "),
                self.new.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_keys_and_comments() {
        let unit = UnitFile::parse(
            "# leading comment\n[Unit]\nDescription = SSH  daemon \n\
             ; another comment\n\n[Service]\nUser=sshd\n#User=root\n",
        );
        assert_eq!(unit.get("Unit", "Description"), ["SSH daemon"]);
        assert_eq!(unit.get("Service", "User"), ["sshd"]);
        assert_eq!(unit.sections.len(), 2);
    }

    #[test]
    fn repeated_keys_form_a_list() {
        let unit = UnitFile::parse(
            "[Service]\nExecStartPre=/bin/a\nExecStartPre=/bin/b\n",
        );
        assert_eq!(unit.get("Service", "ExecStartPre"), ["/bin/a", "/bin/b"]);
        assert_eq!(unit.last("Service", "ExecStartPre"), Some("/bin/b"));
    }

    #[test]
    fn single_value_last_assignment_wins() {
        let mut unit = UnitFile::parse(
            "[Unit]\nDescription=first\nDescription=second\n\
             [Service]\nUser=backup\nProtectSystem=full\n",
        );
        unit.apply("[Service]\nUser=root\nProtectSystem=strict\n");
        assert_eq!(unit.get("Unit", "Description"), ["second"]);
        assert_eq!(unit.get("Service", "User"), ["root"]);
        assert_eq!(unit.get("Service", "ProtectSystem"), ["strict"]);
    }

    #[test]
    fn drop_in_override_changes_one_value() {
        let old = UnitFile::parse("[Service]\nUser=backup\n");
        let mut new = old.clone();
        new.apply("[Service]\nUser=root\n");
        let described: Vec<String> = directive_changes(&old, &new)
            .iter()
            .map(DirectiveChange::describe)
            .collect();
        assert_eq!(described, ["[Service] User: backup -> root"]);
    }

    #[test]
    fn list_settings_accumulate_per_section() {
        let mut unit = UnitFile::parse(
            "[Unit]\nAfter=network.target\nConditionPathExists=/a\n\
             [Service]\nReadWritePaths=/var/a\n\
             CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n\
             [Socket]\nListenStream=22\n\
             [Install]\nWantedBy=multi-user.target\n",
        );
        unit.apply(
            "[Unit]\nAfter=time-sync.target\nConditionPathExists=/b\n\
             [Service]\nReadWritePaths=/var/b\n\
             CapabilityBoundingSet=~CAP_SYS_ADMIN\n\
             [Socket]\nListenStream=2222\n\
             [Install]\nWantedBy=backup.target\n",
        );
        assert_eq!(
            unit.get("Unit", "After"),
            ["network.target", "time-sync.target"]
        );
        assert_eq!(unit.get("Unit", "ConditionPathExists"), ["/a", "/b"]);
        assert_eq!(
            unit.get("Service", "ReadWritePaths"),
            ["/var/a", "/var/b"]
        );
        assert_eq!(
            unit.get("Service", "CapabilityBoundingSet"),
            ["CAP_NET_BIND_SERVICE", "~CAP_SYS_ADMIN"]
        );
        assert_eq!(unit.get("Socket", "ListenStream"), ["22", "2222"]);
        assert_eq!(
            unit.get("Install", "WantedBy"),
            ["multi-user.target", "backup.target"]
        );
    }

    #[test]
    fn list_table_depends_on_section() {
        // `After=` is a dependency only in `[Unit]`. Elsewhere it is an
        // unknown key, which keeps its last value.
        assert!(accumulates("Unit", "After"));
        assert!(!accumulates("Service", "After"));
        assert!(accumulates("Service", "ExecStartPost"));
        assert!(accumulates("Socket", "ExecStartPre"));
        assert!(!accumulates("Unit", "ExecStart"));
        assert!(accumulates("Install", "WantedBy"));
        assert!(!accumulates("Service", "User"));
    }

    #[test]
    fn empty_assignment_resets_a_single_value() {
        let mut unit =
            UnitFile::parse("[Service]\nUser=backup\nDynamicUser=yes\n");
        unit.apply("[Service]\nUser=\n");
        assert!(unit.get("Service", "User").is_empty());
        assert_eq!(unit.get("Service", "DynamicUser"), ["yes"]);
        unit.apply("[Service]\nUser=\nUser=nobody\n");
        assert_eq!(unit.get("Service", "User"), ["nobody"]);
    }

    #[test]
    fn empty_assignment_resets_the_list() {
        let mut unit = UnitFile::parse(
            "[Service]\nExecStart=/bin/old\nEnvironment=A=1\n",
        );
        unit.apply(
            "[Service]\nExecStart=\nExecStart=/bin/new\nEnvironment=\n",
        );
        assert_eq!(unit.get("Service", "ExecStart"), ["/bin/new"]);
        assert!(unit.get("Service", "Environment").is_empty());
        assert!(!unit.sections["Service"].contains_key("Environment"));
    }

    #[test]
    fn empty_condition_resets_all_conditions() {
        let mut unit = UnitFile::parse(
            "[Unit]\nConditionPathExists=/a\nConditionHost=web\n\
             AssertPathExists=/b\nAfter=x.target\n",
        );
        unit.apply("[Unit]\nConditionVirtualization=\n");
        assert!(unit.get("Unit", "ConditionPathExists").is_empty());
        assert!(unit.get("Unit", "ConditionHost").is_empty());
        assert_eq!(unit.get("Unit", "AssertPathExists"), ["/b"]);
        assert_eq!(unit.get("Unit", "After"), ["x.target"]);
        unit.apply("[Unit]\nAssertHost=\nConditionHost=db\n");
        assert!(unit.get("Unit", "AssertPathExists").is_empty());
        assert_eq!(unit.get("Unit", "ConditionHost"), ["db"]);
    }

    #[test]
    fn dependency_order_changes_nothing() {
        let old = UnitFile::parse(
            "[Unit]\nAfter=a.target b.service\nWants=c.service\n\
             [Install]\nWantedBy=multi-user.target\n",
        );
        let new = UnitFile::parse(
            "[Unit]\nAfter=b.service\nAfter=a.target a.target\n\
             Wants=c.service\n\
             [Install]\nWantedBy=multi-user.target\n",
        );
        assert!(directive_changes(&old, &new).is_empty());
        let added = UnitFile::parse(
            "[Unit]\nAfter=b.service a.target\nWants=c.service d.service\n\
             [Install]\nWantedBy=multi-user.target\n",
        );
        let changes = directive_changes(&old, &added);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].key, "Wants");
    }

    #[test]
    fn command_order_is_a_change() {
        let old = UnitFile::parse(
            "[Service]\nExecStartPre=/bin/a\nExecStartPre=/bin/b\n",
        );
        let new = UnitFile::parse(
            "[Service]\nExecStartPre=/bin/b\nExecStartPre=/bin/a\n",
        );
        let changes = directive_changes(&old, &new);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].key, "ExecStartPre");
    }

    #[test]
    fn continuation_lines_join() {
        let unit = UnitFile::parse(
            "[Service]\nExecStart=/bin/run \\\n  --flag \\\n# skipped\n  \
             value\nUser=x\n",
        );
        assert_eq!(
            unit.get("Service", "ExecStart"),
            ["/bin/run --flag value"]
        );
        assert_eq!(unit.get("Service", "User"), ["x"]);
    }

    #[test]
    fn blank_space_inside_quotes_is_kept() {
        let unit = UnitFile::parse(
            "[Service]\nEnvironment=\"GREETING=a  b\"   \"X=1\"\n",
        );
        assert_eq!(
            unit.get("Service", "Environment"),
            ["\"GREETING=a  b\" \"X=1\""]
        );
    }

    #[test]
    fn store_paths_reduce_in_values() {
        let old = UnitFile::parse(
            "[Service]\nExecStart=/nix/store/\
             0123456789abcdfghijklmnpqrsvwxyz-openssh-9.9p1/bin/sshd\n",
        );
        let new = UnitFile::parse(
            "[Service]\nExecStart=/nix/store/\
             zyxwvsrqpnmlkjihgfdcba9876543210-openssh-9.9p2/bin/sshd\n",
        );
        assert_eq!(old, new);
    }

    #[test]
    fn reordering_and_reformatting_change_nothing() {
        let old = UnitFile::parse(
            "[Unit]\nDescription=Backup\nAfter=network.target\n\n\
             [Service]\nUser=backup\nExecStart=/bin/backup --all\n\
             ProtectSystem=strict\n",
        );
        let new = UnitFile::parse(
            "[Service]\n# hardening\nProtectSystem = strict\n\
             ExecStart=/bin/backup \\\n    --all\nUser=backup\n\n\
             [Unit]\nAfter=network.target\nDescription=Backup\n",
        );
        assert!(directive_changes(&old, &new).is_empty());
    }

    #[test]
    fn changes_by_directive() {
        let old = UnitFile::parse(
            "[Service]\nUser=backup\nExecStart=/bin/a\nPrivateTmp=true\n",
        );
        let new = UnitFile::parse(
            "[Service]\nUser=root\nExecStart=/bin/a\nExecStartPre=+/bin/b\n",
        );
        let described: Vec<String> = directive_changes(&old, &new)
            .iter()
            .map(DirectiveChange::describe)
            .collect();
        assert_eq!(
            described,
            [
                "added [Service] ExecStartPre=+/bin/b",
                "removed [Service] PrivateTmp=true",
                "[Service] User: backup -> root",
            ]
        );
    }

    #[test]
    fn escaped_backslash_ends_the_line() {
        // `\\` is an escaped backslash, so the next line is a directive
        // of its own.
        let unit =
            UnitFile::parse("[Service]\nEnvironment=X=a\\\\\nUser=root\n");
        assert_eq!(unit.get("Service", "User"), ["root"]);
        assert_eq!(unit.get("Service", "Environment"), ["X=a\\\\"]);
    }

    #[test]
    fn backslash_before_blank_space_ends_the_line() {
        let unit =
            UnitFile::parse("[Service]\nExecStart=/bin/a \\ \nUser=root\n");
        assert_eq!(unit.get("Service", "User"), ["root"]);
        assert_eq!(unit.get("Service", "ExecStart"), ["/bin/a \\"]);
    }

    #[test]
    fn carriage_return_and_nul_end_lines() {
        for text in [
            "[Service]\nDescription=backup\rUser=root\n",
            "[Service]\nDescription=backup\0User=root\n",
            "[Service]\r\nDescription=backup\r\nUser=root\r\n",
            "[Service]\n\rDescription=backup\n\r\0User=root",
        ] {
            let unit = UnitFile::parse(text);
            assert_eq!(unit.get("Service", "User"), ["root"], "{text:?}");
            assert_eq!(
                unit.get("Service", "Description"),
                ["backup"],
                "{text:?}"
            );
        }
    }

    #[test]
    fn repeated_line_end_bytes_end_two_lines() {
        // `\n\n` and `\r\r` are two line ends with an empty line
        // between, which ends a continuation.
        for text in [
            "[Service]\nExecStart=/bin/a \\\n\nUser=root\n",
            "[Service]\nExecStart=/bin/a \\\r\rUser=root\n",
        ] {
            let unit = UnitFile::parse(text);
            assert_eq!(unit.get("Service", "User"), ["root"], "{text:?}");
        }
    }

    #[test]
    fn crlf_continuation_joins() {
        let unit = UnitFile::parse(
            "[Service]\r\nExecStart=/bin/a \\\r\n  --flag\r\nUser=x\r\n",
        );
        assert_eq!(unit.get("Service", "ExecStart"), ["/bin/a --flag"]);
        assert_eq!(unit.get("Service", "User"), ["x"]);
    }

    #[test]
    fn unicode_space_is_part_of_the_key() {
        // systemd trims only space, tab, CR and LF, so this key is
        // `User\u{a0}`, which it ignores.
        let unit = UnitFile::parse("[Service]\nUser\u{a0}=backup\n");
        assert!(unit.get("Service", "User").is_empty());
        let unit = UnitFile::parse("[Service]\n\u{2003}User=backup\n");
        assert!(unit.get("Service", "User").is_empty());
    }

    #[test]
    fn unicode_space_in_value_is_kept() {
        let old = UnitFile::parse("[Service]\nExecStart=/bin/a -b\n");
        let new = UnitFile::parse("[Service]\nExecStart=/bin/a\u{a0}-b\n");
        assert_ne!(old, new);
    }

    #[test]
    fn blank_space_inside_section_brackets() {
        let unit = UnitFile::parse("[ Service ]\nUser=backup\n");
        assert!(unit.get("Service", "User").is_empty());
    }

    #[test]
    fn byte_order_mark_is_dropped() {
        let unit = UnitFile::parse("\u{feff}[Service]\nUser=root\n");
        assert_eq!(unit.get("Service", "User"), ["root"]);
        // Only the first mark is dropped.
        let unit =
            UnitFile::parse("\u{feff}[Unit]\n\u{feff}[Service]\nUser=root\n");
        assert!(unit.get("Service", "User").is_empty());
        let unit = UnitFile::parse("\u{feff}#User=root\n[Service]\n");
        assert!(unit.sections.is_empty());
    }

    #[test]
    fn invalid_lines_are_ignored() {
        let unit = UnitFile::parse(
            "not a directive\n[Service]\n=value\nUser=x\n[Broken\nKey\\",
        );
        assert_eq!(unit.get("Service", "User"), ["x"]);
        assert_eq!(unit.sections.len(), 1);
    }
}
