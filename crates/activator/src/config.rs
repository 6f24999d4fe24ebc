//! The activator's configuration file.
//!
//! Every value that decides trust (the policy file, the state directory,
//! the profile, the running system) comes from this root-owned file,
//! never from a request.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// Default permissions of the socket: owner and group may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// Default system profile of NixOS.
pub const DEFAULT_PROFILE: &str = "/nix/var/nix/profiles/system";
/// Default link to the running system on NixOS.
pub const DEFAULT_CURRENT_SYSTEM: &str = "/run/current-system";
/// Default `systemd-run` of the running NixOS system.
pub const DEFAULT_SYSTEMD_RUN: &str = "/run/current-system/sw/bin/systemd-run";

/// The loaded activator configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The policy file, read again for every activation request.
    pub policy: PathBuf,
    /// The activator's own state: last accepted proposal, history and
    /// the evaluation cache.
    pub state_dir: PathBuf,
    /// The Unix socket on which the server sends requests.
    pub socket: PathBuf,
    /// Permissions of the socket, as an octal string such as `"0660"`.
    #[serde(
        default = "default_socket_mode",
        deserialize_with = "deserialize_mode"
    )]
    pub socket_mode: SocketMode,
    /// Group that owns the socket, so that its members may connect.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// The system profile that `nix-env --set` points at the target.
    #[serde(default = "default_profile")]
    pub profile: PathBuf,
    /// A symlink to the running system; its resolved store path must be
    /// the base of every statement.
    #[serde(default = "default_current_system")]
    pub current_system: PathBuf,
    /// The `systemd-run` that starts each switch script as a transient
    /// service unit, so that stopping the activator does not stop the
    /// switch. It is used when systemd runs the machine
    /// (`/run/systemd/system` is a directory) and this is an executable
    /// file; otherwise the switch runs as a process of its own.
    #[serde(default = "default_systemd_run")]
    pub systemd_run: PathBuf,
    /// The flake attribute of this host's toplevel, such as
    /// `nixosConfigurations.web1.config.system.build.toplevel`. When set,
    /// a statement that deploys a source must name exactly this
    /// attribute, so that an approved commit cannot be deployed as
    /// another configuration of the same flake.
    #[serde(default)]
    pub attribute: Option<String>,
    /// Whether to evaluate the approved source and require that it
    /// yields exactly the target.
    #[serde(default = "default_true")]
    pub verify_evaluation: bool,
    /// The unprivileged user that runs the evaluation; when unset it
    /// runs as the activator's own user. Nix keeps its caches under the
    /// user's home directory from `/etc/passwd`, which should be
    /// writable by that user.
    #[serde(default)]
    pub evaluator_user: Option<String>,
    /// Whether a `prepare` request may evaluate an unapproved source as
    /// the activator's own user when `evaluator_user` is unset. Off by
    /// default, because nothing from a proposal may run as root before it
    /// is approved; single-user Nix set-ups without a daemon (the demo)
    /// turn it on to keep the last approval fast.
    #[serde(default)]
    pub prepare_as_root: bool,
    /// Seconds within which the server of a newly activated system must
    /// send a `confirm` request, or the activator rolls the activation
    /// back; 0 turns the confirmation window off.
    #[serde(default)]
    pub confirm_timeout_secs: u64,
    /// Commands that run, in order, before the profile or the running
    /// system changes; one that fails aborts the activation.
    #[serde(default)]
    pub pre_switch: Vec<PreSwitchCommand>,
    /// Checks that must pass after the switch, or the activator rolls
    /// back to the certificate's base.
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub nix: NixSettings,
}

/// Default seconds one health check may take.
pub const DEFAULT_HEALTH_TIMEOUT_SECS: u64 = 60;
/// Default seconds one pre-switch command may take; longer than a health
/// check, because a snapshot of a large file system can take minutes.
pub const DEFAULT_PRE_SWITCH_TIMEOUT_SECS: u64 = 300;

/// One command of `[[pre_switch]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreSwitchCommand {
    /// The program and its arguments, run without a shell.
    pub command: Vec<String>,
    #[serde(default = "default_pre_switch_timeout")]
    pub timeout_secs: u64,
}

/// The `[health]` table: what must work after a switch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default)]
    pub units: Vec<UnitCheck>,
    #[serde(default)]
    pub commands: Vec<CommandCheck>,
    #[serde(default)]
    pub http: Vec<HttpCheck>,
}

impl HealthConfig {
    /// Returns whether no check is configured.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
            && self.commands.is_empty()
            && self.http.is_empty()
    }
}

/// A systemd unit that `systemctl is-active` must report as active.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitCheck {
    pub unit: String,
    #[serde(default = "default_health_timeout")]
    pub timeout_secs: u64,
}

/// A command that must exit with status 0.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandCheck {
    /// The program and its arguments, run without a shell.
    pub command: Vec<String>,
    #[serde(default = "default_health_timeout")]
    pub timeout_secs: u64,
}

/// A loopback `http://` URL whose GET response must have a 2xx status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub url: String,
    #[serde(default = "default_health_timeout")]
    pub timeout_secs: u64,
}

/// Settings passed to every Nix command.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NixSettings {
    /// Passed as `--option NAME VALUE`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Unix permission bits of the socket, at most `0o777`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl fmt::Debug for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl fmt::Display for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// An error from loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the activator config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid activator config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            ConfigError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses and validates configuration text; the error names the key
    /// and the fix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Config =
            toml::from_str(text).map_err(|error| error.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let paths = [
            ("policy", &self.policy),
            ("state_dir", &self.state_dir),
            ("socket", &self.socket),
            ("profile", &self.profile),
            ("current_system", &self.current_system),
            ("systemd_run", &self.systemd_run),
        ];
        for (key, path) in paths {
            if !path.is_absolute() {
                return Err(format!(
                    "`{key}` is {path:?}, a relative path; use an absolute path"
                ));
            }
        }
        if self.socket.file_name().is_none() {
            return Err(format!(
                "`socket` is {:?}, which names no file; give the socket's full path",
                self.socket
            ));
        }
        for (key, value) in [
            ("socket_group", &self.socket_group),
            ("evaluator_user", &self.evaluator_user),
        ] {
            if value.as_deref().is_some_and(|name| {
                name.is_empty() || name.contains([':', '\n'])
            }) {
                return Err(format!(
                    "`{key}` is {value:?}, which is not a valid name; \
                     give an existing name or remove the key"
                ));
            }
        }
        if let Some(attribute) = &self.attribute {
            countersign_nix::validate_attribute(attribute).map_err(|error| {
                format!("`attribute`: {error}; give the flake attribute of this host's toplevel")
            })?;
        }
        self.validate_checks()?;
        for name in self.nix.options.keys() {
            let valid = !name.is_empty()
                && !name.starts_with('-')
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
            if !valid {
                return Err(format!(
                    "`nix.options` has the invalid option name {name:?}; \
                     use Nix setting names such as \"experimental-features\""
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_checks(&self) -> Result<(), String> {
        if self.confirm_timeout_secs > MAX_TIMEOUT_SECS {
            return Err(format!(
                "`confirm_timeout_secs` is {}, above the limit of \
                 {MAX_TIMEOUT_SECS} s (7 days); give a shorter window, or 0 \
                 for none",
                self.confirm_timeout_secs
            ));
        }
        for (index, entry) in self.pre_switch.iter().enumerate() {
            let key = format!("pre_switch[{index}]");
            validate_command(&key, &entry.command)?;
            validate_timeout(&key, entry.timeout_secs)?;
        }
        for (index, check) in self.health.units.iter().enumerate() {
            let key = format!("health.units[{index}]");
            validate_unit_name(&key, &check.unit)?;
            validate_timeout(&key, check.timeout_secs)?;
        }
        for (index, check) in self.health.commands.iter().enumerate() {
            let key = format!("health.commands[{index}]");
            validate_command(&key, &check.command)?;
            validate_timeout(&key, check.timeout_secs)?;
        }
        for (index, check) in self.health.http.iter().enumerate() {
            let key = format!("health.http[{index}]");
            crate::health::HttpUrl::parse(&check.url)
                .map_err(|error| format!("`{key}.url`: {error}"))?;
            validate_timeout(&key, check.timeout_secs)?;
        }
        Ok(())
    }
}

fn validate_command(key: &str, command: &[String]) -> Result<(), String> {
    match command.first() {
        None => Err(format!(
            "`{key}.command` is empty; give the program and its arguments, \
             such as [\"/run/current-system/sw/bin/true\"]"
        )),
        Some(program) if program.is_empty() => Err(format!(
            "`{key}.command` starts with an empty program name; give the \
             program's name or absolute path first"
        )),
        Some(_) => Ok(()),
    }
}

/// The maximum time in seconds that a step may be given, 7 days, so
/// that no deadline computed from the clock can overflow.
const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 60 * 60;

fn validate_timeout(key: &str, seconds: u64) -> Result<(), String> {
    if seconds == 0 {
        return Err(format!(
            "`{key}.timeout_secs` is 0; give the seconds the step may take, \
             or leave the key out for the default"
        ));
    }
    if seconds > MAX_TIMEOUT_SECS {
        return Err(format!(
            "`{key}.timeout_secs` is {seconds}, above the limit of \
             {MAX_TIMEOUT_SECS} s (7 days); give a shorter time"
        ));
    }
    Ok(())
}

/// Accepts unit names as systemd writes them: no option-like leading
/// `-`, no white space or control characters.
fn validate_unit_name(key: &str, unit: &str) -> Result<(), String> {
    let valid = !unit.is_empty()
        && !unit.starts_with('-')
        && unit.len() <= 256
        && !unit.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(format!(
            "`{key}.unit` is {unit:?}, which is not a systemd unit name; \
             give a name such as \"sshd.service\""
        ));
    }
    Ok(())
}

fn default_health_timeout() -> u64 {
    DEFAULT_HEALTH_TIMEOUT_SECS
}

fn default_pre_switch_timeout() -> u64 {
    DEFAULT_PRE_SWITCH_TIMEOUT_SECS
}

fn default_socket_mode() -> SocketMode {
    SocketMode(DEFAULT_SOCKET_MODE)
}

fn default_profile() -> PathBuf {
    PathBuf::from(DEFAULT_PROFILE)
}

fn default_current_system() -> PathBuf {
    PathBuf::from(DEFAULT_CURRENT_SYSTEM)
}

fn default_systemd_run() -> PathBuf {
    PathBuf::from(DEFAULT_SYSTEMD_RUN)
}

fn default_true() -> bool {
    true
}

fn deserialize_mode<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketMode, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_mode(&text).map_err(serde::de::Error::custom)
}

fn parse_mode(text: &str) -> Result<SocketMode, String> {
    let invalid = || {
        format!(
            "invalid socket_mode {text:?}: use an octal string of at most \
             four digits such as \"0660\""
        )
    };
    let valid = !text.is_empty()
        && text.len() <= 4
        && text.bytes().all(|byte| (b'0'..=b'7').contains(&byte));
    if !valid {
        return Err(invalid());
    }
    let mode = u32::from_str_radix(text, 8).map_err(|_| invalid())?;
    if mode > 0o777 {
        return Err(format!(
            "invalid socket_mode {text:?}: setuid, setgid and sticky bits \
             do not apply to a socket; use at most \"0777\""
        ));
    }
    Ok(SocketMode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "policy = \"/etc/countersign/policy.toml\"\n\
        state_dir = \"/var/lib/countersign-activator\"\n\
        socket = \"/run/countersign/activator.sock\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.socket_mode, SocketMode(0o660));
        assert_eq!(config.profile, Path::new(DEFAULT_PROFILE));
        assert_eq!(config.current_system, Path::new(DEFAULT_CURRENT_SYSTEM));
        assert_eq!(config.systemd_run, Path::new(DEFAULT_SYSTEMD_RUN));
        assert!(config.verify_evaluation);
        assert_eq!(config.evaluator_user, None);
        assert!(config.nix.options.is_empty());
    }

    #[test]
    fn full_config_parses() {
        let text = format!(
            "{MINIMAL}socket_mode = \"0600\"\nsocket_group = \"countersign\"\n\
             profile = \"/tmp/p\"\ncurrent_system = \"/tmp/c\"\n\
             systemd_run = \"/usr/bin/systemd-run\"\n\
             verify_evaluation = false\nevaluator_user = \"eval\"\n\
             [nix]\noptions = {{ \"experimental-features\" = \"nix-command flakes\" }}\n"
        );
        let config = Config::parse(&text).unwrap();
        assert_eq!(config.socket_mode, SocketMode(0o600));
        assert_eq!(config.socket_group.as_deref(), Some("countersign"));
        assert!(!config.verify_evaluation);
        assert_eq!(config.evaluator_user.as_deref(), Some("eval"));
        assert_eq!(config.systemd_run, Path::new("/usr/bin/systemd-run"));
        assert_eq!(
            config.nix.options["experimental-features"],
            "nix-command flakes"
        );
    }

    #[test]
    fn attribute_is_validated() {
        let attribute =
            "nixosConfigurations.web1.config.system.build.toplevel";
        let config =
            Config::parse(&format!("{MINIMAL}attribute = \"{attribute}\"\n"))
                .unwrap();
        assert_eq!(config.attribute.as_deref(), Some(attribute));
        assert_eq!(Config::parse(MINIMAL).unwrap().attribute, None);
        let error = Config::parse(&format!(
            "{MINIMAL}attribute = \"toplevel?dir=x\"\n"
        ))
        .unwrap_err();
        assert!(error.contains("`attribute`"), "{error}");
    }

    #[test]
    fn unknown_key_is_named() {
        let error =
            Config::parse(&format!("{MINIMAL}verify_evalution = false\n"))
                .unwrap_err();
        assert!(error.contains("verify_evalution"), "{error}");
    }

    #[test]
    fn missing_key_is_named() {
        let error =
            Config::parse("policy = \"/p\"\nsocket = \"/s\"\n").unwrap_err();
        assert!(error.contains("state_dir"), "{error}");
    }

    #[test]
    fn invalid_modes_are_rejected() {
        for mode in ["660", "0660"] {
            let text = format!("{MINIMAL}socket_mode = \"{mode}\"\n");
            assert!(Config::parse(&text).is_ok(), "{mode} was rejected");
        }
        for mode in ["", "0869", "4660", "rw-rw----", "00660"] {
            let text = format!("{MINIMAL}socket_mode = \"{mode}\"\n");
            let error = Config::parse(&text).unwrap_err();
            assert!(error.contains("socket_mode"), "{mode}: {error}");
        }
        let error = Config::parse(&format!("{MINIMAL}socket_mode = 660\n"))
            .unwrap_err();
        assert!(error.contains("socket_mode"), "{error}");
    }

    #[test]
    fn checks_parse_with_defaults() {
        let text = format!(
            "{MINIMAL}confirm_timeout_secs = 120\n\
             [[pre_switch]]\ncommand = [\"zfs\", \"snapshot\", \"rpool/root@x\"]\n\
             [[health.units]]\nunit = \"sshd.service\"\n\
             [[health.commands]]\ncommand = [\"/bin/true\"]\ntimeout_secs = 5\n\
             [[health.http]]\nurl = \"http://127.0.0.1:8470/api/v1/health\"\n"
        );
        let config = Config::parse(&text).unwrap();
        assert_eq!(config.confirm_timeout_secs, 120);
        assert_eq!(
            config.pre_switch[0].timeout_secs,
            DEFAULT_PRE_SWITCH_TIMEOUT_SECS
        );
        assert_eq!(config.health.units[0].unit, "sshd.service");
        assert_eq!(
            config.health.units[0].timeout_secs,
            DEFAULT_HEALTH_TIMEOUT_SECS
        );
        assert_eq!(config.health.commands[0].timeout_secs, 5);
        assert_eq!(config.health.http.len(), 1);

        let minimal = Config::parse(MINIMAL).unwrap();
        assert_eq!(minimal.confirm_timeout_secs, 0);
        assert!(minimal.pre_switch.is_empty());
        assert!(minimal.health.is_empty());
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../examples/activator.toml");
        let config = Config::parse(text).unwrap();
        assert_eq!(config.confirm_timeout_secs, 300);
        assert_eq!(config.pre_switch.len(), 1);
        assert_eq!(config.health.units.len(), 1);
        assert_eq!(config.health.commands.len(), 1);
        assert_eq!(config.health.http.len(), 1);
    }

    #[test]
    fn invalid_checks_name_key() {
        let cases = [
            ("[[pre_switch]]\ncommand = []\n", "pre_switch[0].command"),
            (
                "[[health.commands]]\ncommand = [\"\"]\n",
                "health.commands[0].command",
            ),
            (
                "[[health.commands]]\ncommand = [\"/bin/true\"]\n\
                 timeout_secs = 0\n",
                "health.commands[0].timeout_secs",
            ),
            (
                "[[health.units]]\nunit = \"--all\"\n",
                "health.units[0].unit",
            ),
            (
                "[[health.http]]\nurl = \"http://192.0.2.1/\"\n",
                "health.http[0].url",
            ),
            (
                "[[health.http]]\nurl = \"https://127.0.0.1/\"\n",
                "health.http[0].url",
            ),
            ("[[health.disks]]\npath = \"/\"\n", "disks"),
            // Adding such a time to the clock overflows, which made the
            // activation panic after its switch.
            (
                "[[health.commands]]\ncommand = [\"/bin/true\"]\n\
                 timeout_secs = 18446744073709551615\n",
                "health.commands[0].timeout_secs",
            ),
            (
                "[[pre_switch]]\ncommand = [\"/bin/true\"]\n\
                 timeout_secs = 9223372036854775808\n",
                "pre_switch[0].timeout_secs",
            ),
            (
                "confirm_timeout_secs = 18446744073709551615\n",
                "confirm_timeout_secs",
            ),
        ];
        for (extra, key) in cases {
            let error =
                Config::parse(&format!("{MINIMAL}{extra}")).expect_err(extra);
            assert!(error.contains(key), "{extra}: {error}");
        }
    }

    #[test]
    fn relative_path_is_rejected() {
        let text = MINIMAL.replace(
            "/var/lib/countersign-activator",
            "var/lib/countersign-activator",
        );
        let error = Config::parse(&text).unwrap_err();
        assert!(error.contains("`state_dir`"), "{error}");
        assert!(error.contains("absolute"), "{error}");
    }
}
