//! Fetching a commit into the store, and building or evaluating the
//! flake it contains.
//!
//! Both build and evaluation name the source as
//! `path:<store path>?narHash=<hash>`, a flake reference that Nix only
//! accepts when the store path has exactly that NAR hash. The activator
//! re-evaluates the same reference, so it evaluates exactly the bytes
//! that the server built and the approvers signed.

use std::path::Path;

use countersign_core::StorePath;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::git;
use crate::nix::{Nix, validate_nar_hash};
use crate::process::{self, unexpected};

/// A commit's tree, copied into the store by Nix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchedSource {
    pub store_path: StorePath,
    /// NAR hash of `store_path` in SRI form, `sha256-<base64>`.
    pub nar_hash: String,
}

impl FetchedSource {
    /// Pairs a store path with its NAR hash, for example from a signed
    /// statement. The hash's form is checked here; whether the store
    /// path has that hash is checked by Nix when the flake is used.
    pub fn new(store_path: StorePath, nar_hash: &str) -> Result<Self> {
        validate_nar_hash(nar_hash)?;
        Ok(Self {
            store_path,
            nar_hash: nar_hash.to_owned(),
        })
    }

    /// Returns the locked flake reference
    /// `path:<store path>?narHash=<hash>`.
    pub fn flake_url(&self) -> String {
        format!(
            "path:{}?narHash={}",
            self.store_path,
            percent_encode(&self.nar_hash)
        )
    }

    /// Returns the installable `<flake url>#<attribute>` after checking
    /// `attribute` with [`validate_attribute`].
    pub fn installable(&self, attribute: &str) -> Result<String> {
        validate_attribute(attribute)?;
        Ok(format!("{}#{attribute}", self.flake_url()))
    }
}

/// Copies `commit` of the bare repository `mirror` into the store with
/// `nix flake prefetch`, and returns the store path with its NAR hash.
///
/// The commit must be reachable from a ref of the mirror. It is pinned
/// under [`git::PIN_REF_PREFIX`] first, because Nix fetches a commit
/// through a ref that contains it, and the branch may since have moved
/// past or away from it.
pub fn fetch_source(
    nix: &Nix,
    mirror: &Path,
    commit: &str,
) -> Result<FetchedSource> {
    git::validate_commit_id(commit)?;
    let mirror = mirror
        .canonicalize()
        .map_err(|error| Error::io(mirror, error))?;
    let resolved = git::resolve_rev(&mirror, commit)?;
    if resolved != commit {
        return Err(Error::invalid(
            "commit id",
            commit,
            format!("resolves to {resolved}"),
        ));
    }
    let pin = git::pin_commit(&mirror, commit)?;
    let mirror_text = mirror.to_str().ok_or_else(|| {
        Error::invalid(
            "mirror path",
            mirror.display().to_string(),
            "is not valid UTF-8",
        )
    })?;
    let url = format!(
        "git+file://{}?ref={}&rev={commit}",
        percent_encode_path(mirror_text),
        percent_encode(&pin),
    );
    let mut command = nix.command(["flake", "prefetch", "--json", &url]);
    let stdout = process::run(&mut command)?;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Prefetched {
        hash: String,
        store_path: String,
    }
    let prefetched: Prefetched =
        serde_json::from_slice(&stdout).map_err(|error| {
            unexpected(&command, format!("invalid JSON: {error}"), &stdout)
        })?;
    let source = FetchedSource::new(
        StorePath::parse(&prefetched.store_path)?,
        &prefetched.hash,
    )?;
    tracing::info!(
        commit,
        store_path = %source.store_path,
        nar_hash = %source.nar_hash,
        "fetched source into the store"
    );
    Ok(source)
}

/// Builds `attribute` of the fetched flake and returns its output path.
///
/// `gc_root` becomes a symbolic link to the output that keeps it from
/// garbage collection. Every line Nix writes to standard error, builder
/// output included, goes to `on_log_line` as soon as it arrives. The
/// repository's builders write those lines, so a caller that displays
/// them should pass them through [`crate::escape_control_chars`]. A
/// failed build's error quotes the last lines of the log.
///
/// A build that outlives [`Nix::with_build_timeout`] is stopped: `nix`
/// gets SIGTERM, and SIGKILL 10 seconds later, and the error is
/// [`Error::TimedOut`].
pub fn build(
    nix: &Nix,
    source: &FetchedSource,
    attribute: &str,
    gc_root: &Path,
    on_log_line: &mut dyn FnMut(&str),
) -> Result<StorePath> {
    let installable = source.installable(attribute)?;
    let mut command = nix.command([
        "build",
        "--json",
        "--print-build-logs",
        "--no-update-lock-file",
    ]);
    command.arg("--out-link").arg(gc_root).arg(&installable);
    tracing::info!(%installable, gc_root = %gc_root.display(), "building");
    let stdout = process::run_streaming(
        &mut command,
        nix.build_timeout(),
        on_log_line,
    )?;

    #[derive(Deserialize)]
    struct Built {
        outputs: std::collections::BTreeMap<String, String>,
    }
    let built: Vec<Built> =
        serde_json::from_slice(&stdout).map_err(|error| {
            unexpected(&command, format!("invalid JSON: {error}"), &stdout)
        })?;
    let [only] = built.as_slice() else {
        return Err(unexpected(&command, "expected one result", &stdout));
    };
    let Some(out) = only.outputs.get("out") else {
        return Err(unexpected(&command, "no \"out\" output", &stdout));
    };
    let path = StorePath::parse(out)?;
    tracing::info!(%installable, out = %path, "built");
    Ok(path)
}

/// Evaluates the output path of `attribute` without building it. The
/// activator compares this with the approved target.
pub fn evaluate_out_path(
    nix: &Nix,
    source: &FetchedSource,
    attribute: &str,
) -> Result<StorePath> {
    let installable = format!("{}.outPath", source.installable(attribute)?);
    let mut command =
        nix.command(["eval", "--raw", "--no-update-lock-file", &installable]);
    let stdout = process::run(&mut command)?;
    let text = String::from_utf8_lossy(&stdout);
    StorePath::parse(text.trim())
        .map_err(|_| unexpected(&command, "expected a store path", &stdout))
}

/// Checks that `attribute` is a flake output attribute path such as
/// `nixosConfigurations.web-1.config.system.build.toplevel`. Segments
/// are separated by dots and made of letters, digits, `_`, `'` and `-`,
/// starting with a letter or `_`. A segment in double quotes may also
/// start with a digit and contain `.` and `+`. Nothing else passes, so
/// the attribute cannot add a query, a second fragment or an option to
/// the flake reference.
pub fn validate_attribute(attribute: &str) -> Result<()> {
    let reject = |reason: &str| {
        Err(Error::invalid("flake attribute", attribute, reason))
    };
    if attribute.is_empty() || attribute.len() > 1024 {
        return reject("expected 1 to 1024 characters");
    }
    let mut rest = attribute;
    loop {
        let segment_end = if let Some(quoted) = rest.strip_prefix('"') {
            let Some(close) = quoted.find('"') else {
                return reject("unterminated quoted segment");
            };
            let inner = &quoted[..close];
            let valid = !inner.is_empty()
                && inner.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || b"_'-.+".contains(&b)
                });
            if !valid {
                return reject("invalid quoted segment");
            }
            close + 2
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            let segment = &rest[..end];
            let mut bytes = segment.bytes();
            let valid = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && bytes
                    .all(|b| b.is_ascii_alphanumeric() || b"_'-".contains(&b));
            if !valid {
                return reject(
                    "each segment needs a letter or '_' first, then letters, \
                     digits, '_', ''' or '-'",
                );
            }
            end
        };
        rest = &rest[segment_end..];
        if rest.is_empty() {
            return Ok(());
        }
        rest = match rest.strip_prefix('.') {
            Some(next) if !next.is_empty() => next,
            _ => return reject("segments are separated by single dots"),
        };
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(text: &str) -> String {
    encode(text, b"-._~")
}

/// Like [`percent_encode`] but keeps `/`, for the path of a URL.
fn percent_encode_path(text: &str) -> String {
    encode(text, b"-._~/")
}

fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || keep.contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "/nix/store/avk83qs4d465srlwja06adspf3bjaifd-source";
    const HASH: &str = "sha256-zSYTAjajTj3DnTKD8rsbQLKCS6w/I4Xz2ExxiFYmM+w=";

    fn source() -> FetchedSource {
        FetchedSource::new(StorePath::parse(SOURCE).unwrap(), HASH).unwrap()
    }

    #[test]
    fn flake_url_encodes_hash() {
        assert_eq!(
            source().flake_url(),
            format!(
                "path:{SOURCE}?narHash=\
                 sha256-zSYTAjajTj3DnTKD8rsbQLKCS6w%2FI4Xz2ExxiFYmM%2Bw%3D"
            )
        );
    }

    #[test]
    fn installable_appends_attribute() {
        let installable = source()
            .installable(
                "nixosConfigurations.demo.config.system.build.toplevel",
            )
            .unwrap();
        assert!(installable.ends_with(
            "#nixosConfigurations.demo.config.system.build.toplevel"
        ));
    }

    #[test]
    fn attributes_accepted() {
        for attribute in [
            "packages.x86_64-linux.default",
            "nixosConfigurations.web-1.config.system.build.toplevel",
            "nixosConfigurations.\"1host\".config",
            "a'b",
            "_x",
        ] {
            assert!(
                validate_attribute(attribute).is_ok(),
                "{attribute} was rejected"
            );
        }
    }

    #[test]
    fn attributes_rejected() {
        for attribute in [
            "",
            ".a",
            "a.",
            "a..b",
            "-a",
            "a#b",
            "a?b",
            "a b",
            "1host",
            "a.\"b",
            "a.\"\"",
            "a.\"b\"c",
            "a.\"b c\"",
            "a/b",
            "a%20b",
        ] {
            assert!(
                validate_attribute(attribute).is_err(),
                "{attribute:?} was accepted"
            );
        }
    }

    #[test]
    fn malformed_hash_rejected() {
        let path = StorePath::parse(SOURCE).unwrap();
        assert!(FetchedSource::new(path, "sha256-abc").is_err());
    }

    #[test]
    fn path_encoding_keeps_slashes() {
        assert_eq!(percent_encode_path("/srv/a b/m.git"), "/srv/a%20b/m.git");
    }
}
