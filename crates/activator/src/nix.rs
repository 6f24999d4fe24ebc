//! The Nix commands the activator runs: store queries with `nix
//! path-info`, evaluation through countersign-nix, and profile changes
//! with `nix-env`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use countersign_core::StorePath;
use countersign_nix::{FetchedSource, Nix};
use serde::Deserialize;

use crate::users::User;

/// Lines of standard error quoted in an error message.
const STDERR_TAIL_LINES: usize = 20;

/// Search path for commands the activator starts with a cleared
/// environment; the NixOS system path comes first.
pub(crate) const CLEAN_PATH: &str = "/run/current-system/sw/bin:\
     /nix/var/nix/profiles/default/bin:/usr/bin:/bin";

/// Variables of the activator's own environment that an evaluation as
/// `evaluator_user` keeps, because they select the Nix store and its
/// settings.
const EVALUATOR_ENV: [&str; 2] = ["NIX_REMOTE", "NIX_CONFIG"];

/// The Nix runners of the activator: its own for store queries and
/// profile changes, and the evaluator user's, when one is configured, for
/// evaluating approved sources.
#[derive(Debug, Clone)]
pub(crate) struct NixTools {
    options: BTreeMap<String, String>,
    own: Nix,
    evaluator: Nix,
}

impl NixTools {
    /// Prepares the commands; an invalid option name is an error.
    pub(crate) fn new(
        options: &BTreeMap<String, String>,
        evaluator: Option<&User>,
    ) -> Result<Self, countersign_nix::Error> {
        let own = with_options(Nix::new(), options)?;
        let evaluator = match evaluator {
            None => own.clone(),
            Some(user) => {
                // `with_user` also drops root's supplementary groups.
                // NOTE: the tests run Nix without a daemon, where only
                // root can use the store, so this branch runs only on
                // machines with a nix-daemon.
                let mut nix = Nix::new()
                    .with_clear_env()
                    .with_env("PATH", CLEAN_PATH)
                    .with_env("HOME", &user.home)
                    .with_env("USER", &user.name)
                    .with_user(user.uid, user.gid);
                for name in EVALUATOR_ENV {
                    if let Some(value) = std::env::var_os(name) {
                        nix = nix.with_env(name, value);
                    }
                }
                with_options(nix, options)?
            }
        };
        Ok(Self {
            options: options.clone(),
            own,
            evaluator,
        })
    }

    /// Queries `nix path-info --json` once for `path` and returns its
    /// NAR hash and content address, or `None` when `path` is not a valid
    /// path in the Nix store.
    pub(crate) fn query_valid_path(
        &self,
        path: &StorePath,
    ) -> Result<Option<ValidPath>, String> {
        let mut command = Command::new(self.own.program());
        command.args(["--extra-experimental-features", "nix-command flakes"]);
        for (name, value) in &self.options {
            command.arg("--option").arg(name).arg(value);
        }
        command.args(["path-info", "--json", "--offline", "--"]);
        command.arg(path.as_str());
        let description = describe(&command);
        let stdout = run_for_output(&mut command)?;
        let entries: Vec<RawPathInfo> = serde_json::from_slice(&stdout)
            .map_err(|error| {
                format!("`{description}` printed invalid JSON: {error}")
            })?;
        let Some(entry) = entries
            .into_iter()
            .find(|entry| entry.path == path.as_str())
        else {
            return Err(format!(
                "`{description}` printed no entry for {path}"
            ));
        };
        if !entry.valid {
            return Ok(None);
        }
        let nar_hash = entry.nar_hash.ok_or_else(|| {
            format!("`{description}` printed no narHash for {path}")
        })?;
        let nar_hash = if nar_hash.starts_with("sha256-") {
            countersign_nix::validate_nar_hash(&nar_hash)
                .map_err(|error| error.to_string())?;
            nar_hash
        } else {
            // Nix before 2.4 prints `sha256:<nix base32>`; the nix crate
            // converts that form to SRI with a second query.
            countersign_nix::nar_hash(&self.own, path)
                .map_err(|error| error.to_string())?
        };
        Ok(Some(ValidPath {
            nar_hash,
            content_address: entry.ca,
        }))
    }

    /// Evaluates `attribute` of the flake at `source`, pinned by its NAR
    /// hash, as the evaluator user, and returns the output path it
    /// names without building it.
    pub(crate) fn evaluate_out_path(
        &self,
        source: &StorePath,
        nar_hash: &str,
        attribute: &str,
    ) -> Result<StorePath, countersign_nix::Error> {
        let source = FetchedSource::new(source.clone(), nar_hash)?;
        countersign_nix::evaluate_out_path(&self.evaluator, &source, attribute)
    }

    /// Points `profile` at `path` as a new generation.
    ///
    /// NOTE: this stays a `nix-env --set` call rather than writing the
    /// links here. Besides the `P-N-link` generation and the atomic swap
    /// of `P`, Nix 2.8 registers an indirect GC root under
    /// `/nix/var/nix/gcroots/auto`, holds the target as a temporary root
    /// against a concurrent garbage collection, and reuses the last
    /// generation when it already points at `path`.
    pub(crate) fn set_profile(
        &self,
        profile: &Path,
        path: &StorePath,
    ) -> Result<(), String> {
        let mut command = Command::new("nix-env");
        for (name, value) in &self.options {
            command.arg("--option").arg(name).arg(value);
        }
        command.arg("--profile").arg(profile);
        command.arg("--set").arg(path.as_str());
        run(&mut command)
    }

    /// Points `profile` at its existing generation `generation`.
    pub(crate) fn switch_generation(
        &self,
        profile: &Path,
        generation: u64,
    ) -> Result<(), String> {
        let mut command = Command::new("nix-env");
        for (name, value) in &self.options {
            command.arg("--option").arg(name).arg(value);
        }
        command.arg("--profile").arg(profile);
        command
            .arg("--switch-generation")
            .arg(generation.to_string());
        run(&mut command)
    }
}

/// What the Nix database records about one valid store path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValidPath {
    /// SRI form, `sha256-<base64>`.
    pub(crate) nar_hash: String,
    /// The content address of a content-addressed path, such as
    /// `fixed:r:sha256:<nix base32>`; `None` for an input-addressed one.
    pub(crate) content_address: Option<String>,
}

/// One entry of the JSON that `nix path-info --json` prints (Nix 2.8).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPathInfo {
    path: String,
    #[serde(default = "valid_by_default")]
    valid: bool,
    nar_hash: Option<String>,
    ca: Option<String>,
}

/// Nix marks only invalid paths, with `"valid": false`.
fn valid_by_default() -> bool {
    true
}

fn with_options(
    mut nix: Nix,
    options: &BTreeMap<String, String>,
) -> Result<Nix, countersign_nix::Error> {
    for (name, value) in options {
        nix = nix.with_option(name, value)?;
    }
    Ok(nix)
}

/// Runs `command` with no input, or returns an error that quotes the end
/// of its standard error.
fn run(command: &mut Command) -> Result<(), String> {
    run_for_output(command).map(drop)
}

/// Runs `command` with no input and returns its standard output, or an
/// error that quotes the end of its standard error.
fn run_for_output(command: &mut Command) -> Result<Vec<u8>, String> {
    let description = describe(command);
    tracing::debug!(command = %description, "running");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot start `{description}`: {error}"))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let mut tail = lines[start..].join("\n");
    if tail.is_empty() {
        tail = "(no output on standard error)".into();
    }
    Err(format!(
        "`{description}` failed with {}: {tail}",
        output.status
    ))
}

/// Formats the program and its arguments for messages.
pub(crate) fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    words.join(" ")
}
