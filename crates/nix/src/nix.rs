//! The `nix` program and queries of the local store.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use countersign_core::StorePath;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::process::{self, unexpected};

/// How to run `nix`: the program, extra `--option` settings and the
/// environment. Every call to Nix in this crate goes through one value
/// of this type, so the server and the activator each decide once which
/// store, settings and user their calls use.
///
/// Each command gets `--extra-experimental-features 'nix-command
/// flakes'`, because every call here uses the new command line and
/// flake references.
#[derive(Debug, Clone)]
pub struct Nix {
    program: PathBuf,
    options: Vec<(String, String)>,
    env: Vec<(OsString, OsString)>,
    clear_env: bool,
    user: Option<(u32, u32)>,
    build_timeout: Option<Duration>,
}

impl Default for Nix {
    fn default() -> Self {
        Self::new()
    }
}

impl Nix {
    /// Runs `nix` from `PATH` with Nix's own configuration.
    pub fn new() -> Self {
        Self {
            program: PathBuf::from("nix"),
            options: Vec::new(),
            env: Vec::new(),
            clear_env: false,
            user: None,
            build_timeout: None,
        }
    }

    /// Uses `program` in place of `nix` from `PATH`.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// Adds `--option NAME VALUE` to every command. A name that is empty
    /// or starts with `-` is rejected, so that it cannot turn into a flag.
    pub fn with_option(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self> {
        let name = name.into();
        let valid = !name.is_empty()
            && !name.starts_with('-')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(Error::invalid(
                "Nix option name",
                name,
                "expected letters, digits and '-', not starting with '-'",
            ));
        }
        self.options.push((name, value.into()));
        Ok(self)
    }

    /// Sets an environment variable for every command, for example
    /// `NIX_CONFIG`, `NIX_REMOTE` or `HOME`.
    pub fn with_env(
        mut self,
        key: impl AsRef<OsStr>,
        value: impl AsRef<OsStr>,
    ) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Starts every command with an empty environment apart from the
    /// variables given with [`Nix::with_env`]. The privileged activator
    /// uses this so that its own environment does not leak into Nix.
    pub fn with_clear_env(mut self) -> Self {
        self.clear_env = true;
        self
    }

    /// Runs every command as this user and group, with no supplementary
    /// groups. Only a privileged caller can switch users.
    pub fn with_user(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
    }

    /// Stops a build (its evaluation included) that runs longer than
    /// `limit`, as [`crate::build`] describes.
    pub fn with_build_timeout(mut self, limit: Duration) -> Self {
        self.build_timeout = Some(limit);
        self
    }

    /// Returns the time limit of a build, if one is set.
    pub fn build_timeout(&self) -> Option<Duration> {
        self.build_timeout
    }

    /// Returns the program that is run.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Tells whether this runner's calls use the default local store in
    /// `/nix/store` with its database under `/nix/var/nix`: no `store`
    /// option, and no variable in its environment or this process's
    /// that points Nix elsewhere. Only then may the Nix database be read
    /// directly in place of asking `nix`.
    ///
    /// The configuration files that Nix reads are looked at too
    /// (`nix.conf` in `NIX_CONF_DIR` or `/etc/nix`, the user's files and
    /// the files they include), since a `store` setting there moves the
    /// store as well.
    pub fn uses_default_store(&self) -> bool {
        const MOVED: [&str; 4] =
            ["NIX_STORE_DIR", "NIX_STATE_DIR", "NIX_DB_DIR", "NIX_STORE"];
        let remote_ok =
            |value: &OsStr| value.to_str().is_some_and(default_store);
        let config_ok = |value: &OsStr| !sets_store(&value.to_string_lossy());
        if self.options.iter().any(|(name, _)| name == "store") {
            return false;
        }
        for (key, value) in &self.env {
            let key = key.to_string_lossy();
            if MOVED.contains(&key.as_ref())
                || (key == "NIX_REMOTE" && !remote_ok(value))
                || (key == "NIX_CONFIG" && !config_ok(value))
            {
                return false;
            }
        }
        let inherited = !self.clear_env;
        if inherited
            && !(MOVED.iter().all(|key| std::env::var_os(key).is_none())
                && std::env::var_os("NIX_REMOTE")
                    .is_none_or(|v| remote_ok(&v))
                && std::env::var_os("NIX_CONFIG")
                    .is_none_or(|v| config_ok(&v)))
        {
            return false;
        }
        let var = |key: &str| {
            self.env
                .iter()
                .rev()
                .find(|(name, _)| name == key)
                .map(|(_, value)| value.clone())
                .or_else(|| inherited.then(|| std::env::var_os(key)).flatten())
        };
        !config_files(var)
            .iter()
            .any(|file| file_sets_store(file, 0))
    }

    /// Builds the command for the subcommand `args`, with the settings
    /// applied.
    pub(crate) fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(&self.program);
        if self.clear_env {
            command.env_clear();
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command.args(["--extra-experimental-features", "nix-command flakes"]);
        for (name, value) in &self.options {
            command.arg("--option").arg(name).arg(value);
        }
        command.args(args);
        command
    }
}

/// Tells whether a `store` setting of `value` names the default local
/// store.
fn default_store(value: &str) -> bool {
    matches!(value.trim(), "" | "daemon" | "local" | "auto")
}

/// Tells whether configuration text in `nix.conf` syntax sets `store`
/// to anything other than the default store.
fn sets_store(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or_default();
        line.split_once('=').is_some_and(|(key, value)| {
            key.trim() == "store" && !default_store(value)
        })
    })
}

/// Lists the configuration files Nix reads, in its order: the system's
/// `nix.conf`, then `NIX_USER_CONF_FILES` or the XDG places. `var` looks
/// up the environment that Nix runs with.
fn config_files(var: impl Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let system = var("NIX_CONF_DIR").unwrap_or_else(|| "/etc/nix".into());
    files.push(Path::new(&system).join("nix.conf"));
    if let Some(list) = var("NIX_USER_CONF_FILES") {
        files.extend(std::env::split_paths(&list));
        return files;
    }
    let dirs = var("XDG_CONFIG_DIRS").unwrap_or_else(|| "/etc/xdg".into());
    let home_config = var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| Path::new(&home).join(".config")));
    for dir in home_config.into_iter().chain(std::env::split_paths(&dirs)) {
        files.push(dir.join("nix").join("nix.conf"));
    }
    files
}

/// The depth to which `include` lines of configuration files are
/// followed.
const MAX_INCLUDE_DEPTH: usize = 4;

/// Tells whether the configuration file at `path`, or a file it
/// includes, sets `store` to another store. A file that cannot be read
/// sets nothing, since Nix skips missing files. A file included deeper
/// than [`MAX_INCLUDE_DEPTH`] counts as setting it, so that the caller
/// asks `nix` rather than guess.
fn file_sets_store(path: &Path, depth: usize) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    if sets_store(&text) {
        return true;
    }
    let base = path.parent().unwrap_or(Path::new("/"));
    text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or_default().trim();
        let included = line
            .strip_prefix("include ")
            .or_else(|| line.strip_prefix("!include "));
        included.is_some_and(|name| {
            depth >= MAX_INCLUDE_DEPTH
                || file_sets_store(&base.join(name.trim()), depth + 1)
        })
    })
}

/// The Nix database's record of one store path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    /// SRI form, `sha256-<base64>`.
    pub nar_hash: String,
    /// Size of the path's NAR serialisation in bytes.
    pub nar_size: u64,
    pub references: Vec<StorePath>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPathInfo {
    path: String,
    #[serde(default = "default_true")]
    valid: bool,
    nar_hash: Option<String>,
    nar_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// Queries `nix path-info --json` for `paths`, and with `recursive` for
/// their whole closures. Only the local store is asked (`--offline`), so
/// a missing path is never substituted. A path that is not valid is an
/// error.
pub fn path_info(
    nix: &Nix,
    paths: &[&StorePath],
    recursive: bool,
) -> Result<Vec<PathInfo>> {
    let (command, entries) = query_path_info(nix, paths, recursive)?;
    let mut infos = Vec::with_capacity(entries.len());
    for entry in entries {
        if !entry.valid {
            return Err(unexpected(
                &command,
                "the path is not valid in the store",
                entry.path.as_bytes(),
            ));
        }
        let (Some(nar_hash), Some(nar_size)) =
            (entry.nar_hash, entry.nar_size)
        else {
            return Err(unexpected(
                &command,
                "narHash or narSize is missing",
                entry.path.as_bytes(),
            ));
        };
        infos.push(PathInfo {
            path: StorePath::parse(&entry.path)?,
            nar_hash: normalize_nar_hash(&nar_hash)?,
            nar_size,
            references: entry
                .references
                .iter()
                .map(|reference| StorePath::parse(reference))
                .collect::<Result<_, _>>()?,
        });
    }
    Ok(infos)
}

fn query_path_info(
    nix: &Nix,
    paths: &[&StorePath],
    recursive: bool,
) -> Result<(Command, Vec<RawPathInfo>)> {
    let mut args = vec!["path-info", "--json", "--offline"];
    if recursive {
        args.push("--recursive");
    }
    args.push("--");
    args.extend(paths.iter().map(|path| path.as_str()));
    let mut command = nix.command(args);
    let stdout = process::run(&mut command)?;
    let entries = serde_json::from_slice(&stdout).map_err(|error| {
        unexpected(&command, format!("invalid JSON: {error}"), &stdout)
    })?;
    Ok((command, entries))
}

/// Returns the NAR hash the store records for `path`, in SRI form.
pub fn nar_hash(nix: &Nix, path: &StorePath) -> Result<String> {
    let infos = path_info(nix, &[path], false)?;
    match infos.into_iter().find(|info| &info.path == path) {
        Some(info) => Ok(info.nar_hash),
        None => Err(Error::UnexpectedOutput {
            command: "nix path-info".to_owned(),
            reason: "the queried path is missing from the output".to_owned(),
            output: path.to_string(),
        }),
    }
}

/// Tells whether `path` is valid in the local store. An error means the
/// query failed, not that the path is missing.
pub fn is_valid_path(nix: &Nix, path: &StorePath) -> Result<bool> {
    let (_, entries) = query_path_info(nix, &[path], false)?;
    Ok(entries
        .iter()
        .any(|entry| entry.path == path.as_str() && entry.valid))
}

/// Checks that `hash` is a SHA-256 hash in SRI form, `sha256-` followed
/// by 44 characters of padded base64.
pub fn validate_nar_hash(hash: &str) -> Result<()> {
    let valid = hash.strip_prefix("sha256-").is_some_and(|encoded| {
        encoded.len() == 44
            && encoded.ends_with('=')
            && encoded[..43]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    });
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            "NAR hash",
            hash,
            "expected sha256- followed by 44 base64 characters",
        ))
    }
}

/// Converts the `sha256:<nix base32>` form that older Nix versions print
/// into SRI form; an SRI hash is checked and returned as it is.
fn normalize_nar_hash(hash: &str) -> Result<String> {
    if let Some(encoded) = hash.strip_prefix("sha256:") {
        let bytes = decode_nix_base32(encoded).ok_or_else(|| {
            Error::invalid("NAR hash", hash, "invalid Nix base32")
        })?;
        let sri = format!("sha256-{}", encode_base64(&bytes));
        validate_nar_hash(&sri)?;
        return Ok(sri);
    }
    validate_nar_hash(hash)?;
    Ok(hash.to_owned())
}

const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Decodes a 32-byte hash from Nix's base32, which writes the bits in
/// reverse order: the first character carries the highest bits of the
/// last byte.
fn decode_nix_base32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 52 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (n, c) in text.bytes().rev().enumerate() {
        let digit = NIX_BASE32.iter().position(|&d| d == c)? as u16;
        let bit = n * 5;
        let index = bit / 8;
        let shift = bit % 8;
        bytes[index] |= (digit << shift) as u8;
        let carry = digit >> (8 - shift);
        if index + 1 < 32 {
            bytes[index + 1] |= carry as u8;
        } else if carry != 0 {
            return None;
        }
    }
    Some(bytes)
}

fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n =
            (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes a runner that reads only the configuration in `dir`.
    fn runner_with_config(dir: &Path) -> Nix {
        Nix::new()
            .with_clear_env()
            .with_env("NIX_CONF_DIR", dir)
            .with_env("NIX_USER_CONF_FILES", dir.join("user.conf"))
    }

    #[test]
    fn store_setting_in_config_files_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let nix = runner_with_config(dir.path());
        assert!(nix.uses_default_store(), "no configuration file");

        let conf = dir.path().join("nix.conf");
        std::fs::write(&conf, "sandbox = false\nstore = daemon # d\n")
            .unwrap();
        assert!(nix.uses_default_store(), "the daemon is the default store");

        std::fs::write(&conf, "# store = /mnt\nstore=local?root=/mnt\n")
            .unwrap();
        assert!(!nix.uses_default_store(), "store set in nix.conf");

        std::fs::write(&conf, "!include extra.conf\n").unwrap();
        assert!(nix.uses_default_store(), "a missing include is skipped");
        std::fs::write(dir.path().join("extra.conf"), "store = ssh-ng://b")
            .unwrap();
        assert!(!nix.uses_default_store(), "store set in an include");

        std::fs::write(&conf, "").unwrap();
        std::fs::write(dir.path().join("user.conf"), "store = /mnt").unwrap();
        assert!(!nix.uses_default_store(), "store set in a user file");
    }

    #[test]
    fn include_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nix.conf"), "include nix.conf\n")
            .unwrap();
        // The loop is cut at the depth limit, and the store counts as
        // moved, so that nix is asked.
        assert!(!runner_with_config(dir.path()).uses_default_store());
    }

    #[test]
    fn nar_hash_validation() {
        let good = "sha256-cUoEaiXLylLEMes7C/Ozu2tNn1zx72qREiHO8BM4s2I=";
        assert!(validate_nar_hash(good).is_ok());
        for bad in [
            "",
            "sha256-",
            "sha512-cUoEaiXLylLEMes7C/Ozu2tNn1zx72qREiHO8BM4s2I=",
            "sha256-cUoEaiXLylLEMes7C/Ozu2tNn1zx72qREiHO8BM4s2I",
            "sha256-cUoEaiXLylLEMes7C/Ozu2tNn1zx72qREiHO8BM4s2I=&x",
            "sha256-cUoEaiXLylLEMes7C/Ozu2tNn1zx72qREi O8BM4s2I=",
        ] {
            assert!(validate_nar_hash(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn base32_hash_becomes_sri() {
        // One hash in both forms; `nix hash to-sri` maps the first to the
        // second.
        let base32 =
            "sha256:1v1k4rb8hwacv3rqa8rzmi5q5cj03fxz50rjkp1kskm36q1169nd";
        let sri = "sha256-zSYTAjajTj3DnTKD8rsbQLKCS6w/I4Xz2ExxiFYmM+w=";
        assert_eq!(normalize_nar_hash(base32).unwrap(), sri);
        assert_eq!(normalize_nar_hash(sri).unwrap(), sri);
    }

    #[test]
    fn option_names_cannot_be_flags() {
        assert!(Nix::new().with_option("--impure", "").is_err());
        assert!(Nix::new().with_option("", "x").is_err());
        assert!(Nix::new().with_option("substituters", "").is_ok());
    }

    #[test]
    fn command_places_options_before_subcommand() {
        let nix = Nix::new().with_option("substituters", "").unwrap();
        let command = nix.command(["eval", "--raw"]);
        let args: Vec<_> = command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--extra-experimental-features",
                "nix-command flakes",
                "--option",
                "substituters",
                "",
                "eval",
                "--raw"
            ]
        );
    }
}
