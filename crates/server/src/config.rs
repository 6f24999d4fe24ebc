//! The server's configuration file, and the checks that run before the
//! server starts.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use countersign_core::{Action, Policy};
use serde::Deserialize;

/// The path of the running system on NixOS.
pub const DEFAULT_CURRENT_SYSTEM: &str = "/run/current-system";
/// The system profile of NixOS.
pub const DEFAULT_PROFILE: &str = "/nix/var/nix/profiles/system";

/// The server's configuration, as read from its TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The host name; it must equal the policy's `host`.
    pub host: String,
    /// The address the HTTP API listens on, for example `127.0.0.1:8470`.
    pub listen: String,
    /// The folder of the database, the git mirror, build logs and GC
    /// roots. It is created if it does not exist.
    pub state_dir: PathBuf,
    /// The policy file; it is read again for every proposal and vote, so
    /// a deployed policy change takes effect without a restart.
    pub policy: PathBuf,
    /// The Unix socket of the privileged activator.
    pub activator_socket: PathBuf,
    /// The symbolic link to the running system, resolved to find the
    /// base of each proposal.
    #[serde(default = "default_current_system")]
    pub current_system: PathBuf,
    /// The system profile whose generations a rollback proposal names.
    /// The server only reads its `<profile>-<N>-link` entries.
    #[serde(default = "default_profile")]
    pub profile: PathBuf,
    pub repository: RepositoryConfig,
    /// The optional bearer token that may only create proposals.
    #[serde(default)]
    pub trigger: Option<TriggerConfig>,
    #[serde(default)]
    pub nix: NixConfig,
    /// The optional forge webhooks under `/api/v1/webhooks/{forge}`.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Whether `GET /metrics` serves proposal counts and the deployed
    /// commit without authentication. Off by default.
    #[serde(default)]
    pub metrics: bool,
    /// The address of a proposal's page, with `{number}` for its number,
    /// linked from commit statuses and notifications.
    #[serde(default)]
    pub proposal_url: Option<String>,
    /// The optional CI gate: checks that must succeed first.
    #[serde(default)]
    pub ci: Option<crate::ci_gate::CiConfig>,
    /// The optional commit statuses posted back to the forge.
    #[serde(default)]
    pub commit_status: Option<crate::forge_status::CommitStatusConfig>,
    /// The optional requirement that proposed commits are signed.
    #[serde(default)]
    pub signed_commits: Option<crate::signed_commits::SignedCommitsConfig>,
    /// The optional notifications through ntfy and a JSON webhook.
    #[serde(default)]
    pub notify: Option<crate::notify::NotifyConfig>,
    /// The optional web pages with passkey sign-in and approval.
    #[serde(default)]
    pub web: Option<crate::web::WebConfig>,
}

/// The settings of forge webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The file that contains the secret entered in the forge's webhook
    /// settings.
    pub secret_file: PathBuf,
    /// The repository's name as the forge spells it, for example
    /// `ops/infra`; when set, deliveries about other repositories are
    /// ignored.
    #[serde(default)]
    pub repository: Option<String>,
}

/// The repository that contains the host's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// The address git fetches from: a path, `file://`, `https://` or
    /// `ssh://`. It goes into every statement, so it must not contain a
    /// password or token; use an SSH key or a git credential helper.
    pub url: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    /// The flake attribute of the toplevel; by default
    /// `nixosConfigurations.<host>.config.system.build.toplevel`.
    #[serde(default)]
    pub attribute: Option<String>,
    /// What `switch-to-configuration` does with an approved target.
    #[serde(default = "default_action")]
    pub action: Action,
    /// Seconds between two reads of the branch head; a new head is
    /// proposed as a webhook delivery would. Off when unset; at least
    /// [`MIN_POLL_INTERVAL_SECS`].
    #[serde(default)]
    pub poll_interval_secs: Option<u64>,
    /// Replaces `poll_interval_secs` without its minimum, so tests can
    /// poll quickly. Never read from a configuration file.
    #[doc(hidden)]
    #[serde(skip)]
    pub poll_interval_for_tests: Option<std::time::Duration>,
}

/// The shortest allowed `[repository] poll_interval_secs`, so polling
/// cannot hammer the git server.
pub const MIN_POLL_INTERVAL_SECS: u64 = 10;

impl RepositoryConfig {
    /// Returns the polling interval, or `None` when polling is off.
    pub fn poll_interval(&self) -> Option<std::time::Duration> {
        self.poll_interval_for_tests
            .or(self.poll_interval_secs.map(std::time::Duration::from_secs))
    }
}

/// Where the trigger token is read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    pub token_file: PathBuf,
}

/// Settings for the `nix` program.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NixConfig {
    /// Passed to every Nix command as `--option NAME VALUE`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Seconds that the build of a proposal, its evaluation included,
    /// may take before it is stopped and the proposal fails: 1 to
    /// [`MAX_BUILD_TIMEOUT_SECS`].
    #[serde(default = "default_build_timeout")]
    pub build_timeout_secs: u64,
    /// Environment variables for every Nix command. The file format has
    /// no such key; programs that embed the server (tests, the demo) set
    /// it to give Nix its own `HOME` or `NIX_CONFIG`.
    #[serde(skip)]
    pub env: Vec<(OsString, OsString)>,
}

impl Default for NixConfig {
    fn default() -> Self {
        Self {
            options: BTreeMap::new(),
            build_timeout_secs: default_build_timeout(),
            env: Vec::new(),
        }
    }
}

/// The default `[nix] build_timeout_secs`: 6 hours, room for a system
/// that compiles a kernel or a large package from source on a small
/// machine.
pub const DEFAULT_BUILD_TIMEOUT_SECS: u64 = 6 * 3600;

/// The largest `[nix] build_timeout_secs`: 7 days.
pub const MAX_BUILD_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

fn default_build_timeout() -> u64 {
    DEFAULT_BUILD_TIMEOUT_SECS
}

fn default_current_system() -> PathBuf {
    PathBuf::from(DEFAULT_CURRENT_SYSTEM)
}

fn default_profile() -> PathBuf {
    PathBuf::from(DEFAULT_PROFILE)
}

fn default_branch() -> String {
    "main".to_owned()
}

fn default_action() -> Action {
    Action::Switch
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the server configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid server configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid server configuration: {0}")]
    Invalid(String),
}

/// The values a validated configuration yields.
pub(crate) struct Checked {
    pub(crate) listen: SocketAddr,
    pub(crate) policy: Policy,
    pub(crate) policy_bytes: Vec<u8>,
    pub(crate) trigger_token: Option<String>,
    pub(crate) webhook_secret: Option<Vec<u8>>,
    pub(crate) integrations: crate::integrations::Integrations,
}

impl ServerConfig {
    /// Reads, parses and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            ConfigError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        let config =
            Self::parse(&text).map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?;
        config.check()?;
        Ok(config)
    }

    /// Parses configuration text without validating it; [`Self::load`]
    /// and [`crate::serve`] validate.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|error| error.to_string())
    }

    /// The flake attribute that is built.
    pub fn attribute(&self) -> String {
        match &self.repository.attribute {
            Some(attribute) => attribute.clone(),
            None => format!(
                "nixosConfigurations.{}.config.system.build.toplevel",
                self.host
            ),
        }
    }

    /// Checks every value that can be checked before starting: the
    /// listen address, the policy and its host, the trigger token and
    /// the Nix settings.
    pub(crate) fn check(&self) -> Result<Checked, ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        let listen: SocketAddr = match self.listen.parse() {
            Ok(listen) => listen,
            Err(_) => {
                return invalid(format!(
                    "listen = {:?} is not an address and port; write it as \
                     \"127.0.0.1:8470\" or \"[::1]:8470\"",
                    self.listen
                ));
            }
        };
        if self.host.is_empty() {
            let message = "host is empty; set it to this machine's host \
                           name as the policy names it";
            return invalid(message.into());
        }
        let (policy, policy_bytes) = self.load_policy()?;
        if let Err(error) =
            countersign_nix::validate_attribute(&self.attribute())
        {
            return invalid(format!("repository.attribute: {error}"));
        }
        if let Err(error) =
            countersign_nix::git::validate_branch(&self.repository.branch)
        {
            return invalid(format!("repository.branch: {error}"));
        }
        if self.repository.url.is_empty() {
            let message = "repository.url is empty; set it to the address \
                           of the configuration repository";
            return invalid(message.into());
        }
        if let Some(secs) = self.repository.poll_interval_secs
            && secs < MIN_POLL_INTERVAL_SECS
        {
            return invalid(format!(
                "repository.poll_interval_secs = {secs} is below the \
                 minimum of {MIN_POLL_INTERVAL_SECS}; set it to \
                 {MIN_POLL_INTERVAL_SECS} or more, or remove it to turn \
                 polling off"
            ));
        }
        if url_has_password(&self.repository.url) {
            let message = "repository.url contains a password or token; \
                           remove it and use an SSH key or a git \
                           credential helper, because the address goes \
                           into every statement";
            return invalid(message.into());
        }
        self.nix_runner()?;
        let trigger_token = match &self.trigger {
            Some(trigger) => Some(read_token(&trigger.token_file)?),
            None => None,
        };
        let webhook_secret = match &self.webhook {
            Some(webhook) => Some(read_webhook_secret(&webhook.secret_file)?),
            None => None,
        };
        if let Some(web) = &self.web {
            web.check().map_err(ConfigError::Invalid)?;
        }
        let integrations = crate::integrations::Integrations::load(self)
            .map_err(ConfigError::Invalid)?;
        Ok(Checked {
            listen,
            policy,
            policy_bytes,
            trigger_token,
            webhook_secret,
            integrations,
        })
    }

    /// Reads the policy file and checks that it is valid and names this
    /// host.
    fn load_policy(&self) -> Result<(Policy, Vec<u8>), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        let policy_bytes = match std::fs::read(&self.policy) {
            Ok(bytes) => bytes,
            Err(error) => {
                return invalid(format!(
                    "cannot read the policy file {} (key `policy`): {error}",
                    self.policy.display()
                ));
            }
        };
        let policy = match Policy::from_toml(&policy_bytes) {
            Ok(policy) => policy,
            Err(error) => {
                return invalid(format!(
                    "the policy file {} is invalid: {error}",
                    self.policy.display()
                ));
            }
        };
        if policy.host != self.host {
            return invalid(format!(
                "host = {:?} differs from the policy's host {:?} in {}; \
                 the two must name the same machine",
                self.host,
                policy.host,
                self.policy.display()
            ));
        }
        Ok((policy, policy_bytes))
    }

    /// Returns the Nix runner with the configured options and environment.
    pub(crate) fn nix_runner(
        &self,
    ) -> Result<countersign_nix::Nix, ConfigError> {
        let timeout = self.nix.build_timeout_secs;
        if !(1..=MAX_BUILD_TIMEOUT_SECS).contains(&timeout) {
            return Err(ConfigError::Invalid(format!(
                "nix.build_timeout_secs = {timeout} is out of range; set \
                 it to 1 to {MAX_BUILD_TIMEOUT_SECS} seconds (7 days)"
            )));
        }
        let mut nix = countersign_nix::Nix::new()
            .with_build_timeout(std::time::Duration::from_secs(timeout));
        for (name, value) in &self.nix.options {
            nix = nix.with_option(name, value).map_err(|error| {
                ConfigError::Invalid(format!("nix.options: {error}"))
            })?;
        }
        for (key, value) in &self.nix.env {
            nix = nix.with_env(key, value);
        }
        Ok(nix)
    }
}

/// Returns whether `url` may carry a credential in its user information:
/// a password (`https://user:token@host/repo.git`), or any user name
/// over HTTP, where forges accept a bare token as the user name
/// (`https://TOKEN@host/repo.git`). An `ssh://git@host` user is allowed.
fn url_has_password(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return false;
    };
    let is_http = scheme.eq_ignore_ascii_case("http")
        || scheme.eq_ignore_ascii_case("https");
    is_http || authority[..at].contains(':')
}

/// Reads the trigger token: the file's content without surrounding
/// whitespace. The token itself never appears in an error.
fn read_token(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::Invalid(format!(
            "cannot read the trigger token file {} (key \
             `trigger.token_file`): {error}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "the trigger token file {} is empty; write a long random \
             token into it, or remove the [trigger] section",
            path.display()
        )));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::Invalid(format!(
            "the trigger token in {} contains whitespace or control \
             characters; a bearer token must be one word",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// Reads the webhook secret: the file's content without surrounding
/// whitespace. The secret itself never appears in an error.
fn read_webhook_secret(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let text = std::fs::read(path).map_err(|error| {
        ConfigError::Invalid(format!(
            "cannot read the webhook secret file {} (key \
             `webhook.secret_file`): {error}",
            path.display()
        ))
    })?;
    let secret = text.trim_ascii();
    if secret.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "the webhook secret file {} is empty; write a long random \
             secret into it and enter the same secret in the forge, or \
             remove the [webhook] section",
            path.display()
        )));
    }
    Ok(secret.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        host = "demo"
        listen = "127.0.0.1:8470"
        state_dir = "/var/lib/countersign"
        policy = "/etc/countersign/policy.toml"
        activator_socket = "/run/countersign/activator.sock"
        [repository]
        url = "/srv/config.git"
    "#;

    #[test]
    fn defaults_fill_optional_keys() {
        let config = ServerConfig::parse(MINIMAL).unwrap();
        assert_eq!(config.repository.branch, "main");
        assert_eq!(config.repository.action, Action::Switch);
        assert_eq!(config.current_system, Path::new("/run/current-system"));
        assert_eq!(config.profile, Path::new(DEFAULT_PROFILE));
        assert_eq!(
            config.attribute(),
            "nixosConfigurations.demo.config.system.build.toplevel"
        );
        assert!(config.trigger.is_none());
        assert_eq!(config.nix.build_timeout_secs, DEFAULT_BUILD_TIMEOUT_SECS);
        assert_eq!(
            config.nix_runner().unwrap().build_timeout(),
            Some(std::time::Duration::from_secs(DEFAULT_BUILD_TIMEOUT_SECS))
        );
    }

    #[test]
    fn check_rejects_build_timeout_out_of_range() {
        for timeout in [0, MAX_BUILD_TIMEOUT_SECS + 1] {
            let (_dir, mut config) = config_with_policy("demo");
            config.nix.build_timeout_secs = timeout;
            let error = check_error(&config);
            assert!(
                error.contains(&format!("nix.build_timeout_secs = {timeout}")),
                "{error}"
            );
        }
        let text = format!("{MINIMAL}\n[nix]\nbuild_timeout_secs = 600\n");
        let config = ServerConfig::parse(&text).unwrap();
        assert_eq!(config.nix.build_timeout_secs, 600);
    }

    #[test]
    fn unknown_key_is_named() {
        // A top-level key, so it cannot land in the [repository] table.
        let text = format!("branch = \"main\"\n{MINIMAL}");
        let error = ServerConfig::parse(&text).unwrap_err();
        assert!(error.contains("unknown field `branch`"), "{error}");
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMiTUzUf/2BiGAixrGJ759SOZwWVqT/l+KkIJoB2sPJw phone";

    /// Writes a policy for `policy_host` and a configuration for `demo`
    /// that uses it, and returns the folder and the parsed configuration.
    fn config_with_policy(
        policy_host: &str,
    ) -> (tempfile::TempDir, ServerConfig) {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                "host = \"{policy_host}\"\nthreshold = 1\n\
                 [approvers.phone]\nssh = \"{KEY}\"\n"
            ),
        )
        .unwrap();
        let mut config = ServerConfig::parse(MINIMAL).unwrap();
        config.policy = policy;
        (dir, config)
    }

    fn check_error(config: &ServerConfig) -> String {
        match config.check() {
            Ok(_) => panic!("the configuration was accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn check_accepts_valid_config() {
        let (_dir, config) = config_with_policy("demo");
        let checked = config.check().unwrap();
        assert_eq!(checked.listen.port(), 8470);
        assert_eq!(checked.policy.host, "demo");
        assert!(checked.trigger_token.is_none());
    }

    #[test]
    fn check_rejects_host_mismatch() {
        let (_dir, config) = config_with_policy("other");
        let error = check_error(&config);
        assert!(error.contains("differs from the policy's host"), "{error}");
    }

    #[test]
    fn check_rejects_invalid_listen() {
        let (_dir, mut config) = config_with_policy("demo");
        config.listen = "localhost".into();
        let error = check_error(&config);
        assert!(error.contains("listen = \"localhost\""), "{error}");
    }

    #[test]
    fn check_rejects_missing_policy() {
        let (dir, mut config) = config_with_policy("demo");
        config.policy = dir.path().join("absent.toml");
        let error = check_error(&config);
        assert!(error.contains("cannot read the policy file"), "{error}");
    }

    #[test]
    fn check_reads_trigger_token() {
        let (dir, mut config) = config_with_policy("demo");
        let token_file = dir.path().join("token");
        config.trigger = Some(TriggerConfig {
            token_file: token_file.clone(),
        });

        std::fs::write(&token_file, "secret-token-value\n").unwrap();
        let checked = config.check().unwrap();
        assert_eq!(
            checked.trigger_token.as_deref(),
            Some("secret-token-value")
        );

        std::fs::write(&token_file, " \n").unwrap();
        let error = check_error(&config);
        assert!(error.contains("is empty"), "{error}");

        std::fs::write(&token_file, "secret token").unwrap();
        let error = check_error(&config);
        assert!(error.contains("whitespace"), "{error}");
        assert!(!error.contains("secret"), "the token leaked: {error}");

        std::fs::remove_file(&token_file).unwrap();
        let error = check_error(&config);
        assert!(error.contains("cannot read the trigger token"), "{error}");
    }

    #[test]
    fn check_reads_webhook_secret() {
        let (dir, mut config) = config_with_policy("demo");
        let secret_file = dir.path().join("webhook-secret");
        config.webhook = Some(WebhookConfig {
            secret_file: secret_file.clone(),
            repository: None,
        });

        std::fs::write(&secret_file, "hook-secret-value\n").unwrap();
        let checked = config.check().unwrap();
        assert_eq!(
            checked.webhook_secret.as_deref(),
            Some(&b"hook-secret-value"[..])
        );

        std::fs::write(&secret_file, "\n").unwrap();
        let error = check_error(&config);
        assert!(error.contains("webhook secret file"), "{error}");
        assert!(error.contains("is empty"), "{error}");

        std::fs::remove_file(&secret_file).unwrap();
        let error = check_error(&config);
        assert!(error.contains("webhook.secret_file"), "{error}");
    }

    #[test]
    fn webhook_and_metrics_parse() {
        let text = format!(
            "metrics = true\n{MINIMAL}\n[webhook]\n\
             secret_file = \"/run/keys/hook\"\n"
        );
        let config = ServerConfig::parse(&text).unwrap();
        assert!(config.metrics);
        let webhook = config.webhook.unwrap();
        assert_eq!(webhook.secret_file, Path::new("/run/keys/hook"));
        assert!(webhook.repository.is_none());
        let plain = ServerConfig::parse(MINIMAL).unwrap();
        assert!(!plain.metrics);
        assert!(plain.webhook.is_none());
    }

    #[test]
    fn check_rejects_password_in_url() {
        let (_dir, mut config) = config_with_policy("demo");
        config.repository.url = "https://ci:hunter2@git.example/a.git".into();
        let error = check_error(&config);
        assert!(error.contains("contains a password"), "{error}");
        assert!(!error.contains("hunter2"), "the password leaked: {error}");

        config.repository.url = "https://ghp_secret@git.example/a.git".into();
        let error = check_error(&config);
        assert!(error.contains("contains a password"), "{error}");
        assert!(!error.contains("ghp_secret"), "the token leaked: {error}");

        config.repository.url = "ssh://git@git.example:22/a.git".into();
        assert!(config.check().is_ok());
    }

    #[test]
    fn poll_interval_has_minimum() {
        let plain = ServerConfig::parse(MINIMAL).unwrap();
        assert_eq!(plain.repository.poll_interval(), None);

        let text = format!("{MINIMAL}\npoll_interval_secs = 60\n");
        let config = ServerConfig::parse(&text).unwrap();
        assert_eq!(
            config.repository.poll_interval(),
            Some(std::time::Duration::from_secs(60))
        );

        let (_dir, mut config) = config_with_policy("demo");
        config.repository.poll_interval_secs = Some(9);
        let error = check_error(&config);
        assert!(error.contains("poll_interval_secs = 9"), "{error}");
        assert!(error.contains("minimum of 10"), "{error}");
        config.repository.poll_interval_secs = Some(10);
        assert!(config.check().is_ok());
    }

    #[test]
    fn invalid_action_is_rejected() {
        let text = format!("{MINIMAL}\naction = \"reboot\"\n");
        assert!(ServerConfig::parse(&text).is_err());
    }
}
