//! Signed commits: with a `[signed_commits]` section, a proposal is only
//! built when its commit carries a valid signature by an allowed key.
//!
//! SSH signatures are checked against an `ssh-keygen` allowed signers
//! file, OpenPGP signatures against a keyring of allowed public keys
//! with `gpgv`. A key counts only while it is listed, unexpired and not
//! revoked at the time of the check. The commit's own date plays no
//! part. `git verify-commit` (git 2.47, as the tests show) checks an SSH
//! key's `valid-after` and `valid-before` at the committer date, which
//! the author of the commit sets, so a key that expired could still sign
//! a backdated commit. The server therefore takes the signature and the
//! signed payload out of the commit object itself and runs
//! `ssh-keygen -Y verify` with `-Overify-time` set to the current time.
//!
//! A commit that fails the check blocks its proposal: it ends `failed`
//! with an error that starts with [`BLOCKED_PREFIX`] and says why, before
//! anything from the commit is evaluated or built, and no statement is
//! written.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::json;

use crate::db::{self, AuditEvent, Context};
use crate::state::AppState;

/// The start of the error of a proposal that a check blocked.
pub const BLOCKED_PREFIX: &str = "blocked: ";

/// The namespace git signs commits in with SSH keys.
const GIT_NAMESPACE: &str = "git";

/// The header that carries a commit's signature in a SHA-1 repository.
const SIGNATURE_HEADER: &[u8] = b"gpgsig";

const SSH_ARMOR: &str = "-----BEGIN SSH SIGNATURE-----";
const PGP_ARMOR: &str = "-----BEGIN PGP SIGNATURE-----";

/// The `[signed_commits]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCommitsConfig {
    /// An allowed signers file in `ssh-keygen`'s format: one line per
    /// key, `principal [options] key-type key`, where the options may
    /// limit the key with `valid-after`, `valid-before` and
    /// `namespaces="git"`.
    #[serde(default)]
    pub allowed_signers: Option<PathBuf>,
    /// A key revocation list or a file of revoked public keys, passed to
    /// `ssh-keygen -Y verify -r`.
    #[serde(default)]
    pub revoked_keys: Option<PathBuf>,
    /// A keyring of allowed OpenPGP public keys (`gpg --export KEYID >
    /// FILE`), used by `gpgv`. Expired and revoked keys in it do not
    /// count.
    #[serde(default)]
    pub gpg_keyring: Option<PathBuf>,
}

impl SignedCommitsConfig {
    /// Checks that at least one kind of key is configured and that the
    /// files exist. They are read again for every check, so that an
    /// edited list applies at once.
    pub fn check(&self) -> Result<(), String> {
        if self.allowed_signers.is_none() && self.gpg_keyring.is_none() {
            return Err("[signed_commits] names neither allowed_signers nor \
                        gpg_keyring; set at least one, or remove the section"
                .into());
        }
        if self.revoked_keys.is_some() && self.allowed_signers.is_none() {
            return Err("signed_commits.revoked_keys is set without \
                        allowed_signers; it only applies to SSH keys"
                .into());
        }
        for (key, path) in [
            ("signed_commits.allowed_signers", &self.allowed_signers),
            ("signed_commits.revoked_keys", &self.revoked_keys),
            ("signed_commits.gpg_keyring", &self.gpg_keyring),
        ] {
            if let Some(path) = path
                && let Err(error) = std::fs::metadata(path)
            {
                return Err(format!(
                    "cannot read {} (key `{key}`): {error}",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

/// The key that signed a commit, and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// `ssh` or `openpgp`.
    pub kind: &'static str,
    /// The principal of the allowed signers file, or the key's user id.
    pub principal: String,
    /// The key's fingerprint as the tool prints it.
    pub key: String,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} key {})", self.principal, self.kind, self.key)
    }
}

/// Checks the commit of proposal `number` when signed commits are
/// required, and records the signer in the audit log. Returns the signer,
/// `None` when no check is configured, or the blocking error with
/// [`BLOCKED_PREFIX`]. Runs on a blocking thread.
pub fn check_proposal(
    state: &AppState,
    number: u64,
    mirror: &Path,
    commit: &str,
) -> Result<Option<Signer>, String> {
    let Some(config) = &state.integrations.signed_commits else {
        return Ok(None);
    };
    let signer = verify_commit(config, mirror, commit, db::now())
        .map_err(|reason| format!("{BLOCKED_PREFIX}{reason}"))?;
    let detail = json!({
        "commit": commit,
        "kind": signer.kind,
        "principal": signer.principal,
        "key": signer.key,
    });
    state
        .db
        .run_blocking(|connection| {
            let tx = connection.transaction().context("begin")?;
            db::append_audit(
                &tx,
                AuditEvent {
                    kind: "commit-signature-verified",
                    proposal: number,
                    approver: None,
                    detail,
                },
            )?;
            tx.commit().context("commit")
        })
        .map_err(|error| error.to_string())?;
    Ok(Some(signer))
}

/// Verifies the signature of `commit` in the bare repository `mirror` at
/// the Unix time `now`. The error is the reason, for the proposal.
pub fn verify_commit(
    config: &SignedCommitsConfig,
    mirror: &Path,
    commit: &str,
    now: u64,
) -> Result<Signer, String> {
    let raw = read_commit(mirror, commit)?;
    let Some((payload, signature)) = split_signature(&raw) else {
        return Err(format!(
            "commit {commit} is not signed; sign it with an allowed key \
             (`git commit -S`) and push again"
        ));
    };
    let dir = tempfile::tempdir().map_err(|error| {
        format!("cannot create a temporary folder for the signature: {error}")
    })?;
    if signature.starts_with(SSH_ARMOR) {
        let Some(allowed) = &config.allowed_signers else {
            return Err(format!(
                "commit {commit} has an SSH signature, but no \
                 allowed_signers file is configured; sign it with an \
                 OpenPGP key of the keyring"
            ));
        };
        verify_ssh(
            allowed,
            config.revoked_keys.as_deref(),
            dir.path(),
            &payload,
            &signature,
            now,
        )
        .map_err(|reason| {
            format!("the SSH signature of commit {commit} {reason}")
        })
    } else if signature.starts_with(PGP_ARMOR) {
        let Some(keyring) = &config.gpg_keyring else {
            return Err(format!(
                "commit {commit} has an OpenPGP signature, but no \
                 gpg_keyring is configured; sign it with an SSH key of the \
                 allowed signers"
            ));
        };
        verify_openpgp(keyring, dir.path(), &payload, &signature).map_err(
            |reason| {
                format!("the OpenPGP signature of commit {commit} {reason}")
            },
        )
    } else {
        Err(format!(
            "commit {commit} has a signature of an unknown kind (neither \
             SSH nor OpenPGP); sign it with an allowed SSH or OpenPGP key"
        ))
    }
}

/// Reads the raw commit object.
fn read_commit(mirror: &Path, commit: &str) -> Result<Vec<u8>, String> {
    countersign_nix::git::validate_commit_id(commit)
        .map_err(|error| format!("invalid commit id {commit:?}: {error}"))?;
    let output = Command::new("git")
        .arg("--git-dir")
        .arg(mirror)
        .args(["cat-file", "commit", commit])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run git cat-file: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "git cat-file commit {commit} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(output.stdout)
}

/// Splits a commit object into the payload that was signed and the
/// armored signature, the way git does: the `gpgsig` header and its
/// continuation lines (which start with a space) are the signature, and
/// everything else is the payload. `None` for an unsigned commit.
pub fn split_signature(raw: &[u8]) -> Option<(Vec<u8>, String)> {
    let mut payload = Vec::with_capacity(raw.len());
    let mut signature = Vec::new();
    let mut in_signature = false;
    let mut found = false;
    let mut rest = raw;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&byte| byte == b'\n')
            .map_or(rest.len(), |index| index + 1);
        let line = &rest[..end];
        if in_signature && line.first() == Some(&b' ') {
            signature.extend_from_slice(&line[1..]);
        } else if line.starts_with(SIGNATURE_HEADER)
            && line.get(SIGNATURE_HEADER.len()) == Some(&b' ')
        {
            signature.extend_from_slice(&line[SIGNATURE_HEADER.len() + 1..]);
            in_signature = true;
            found = true;
        } else if line == b"\n" {
            // The headers end here; the message is payload as it is.
            payload.extend_from_slice(rest);
            break;
        } else {
            payload.extend_from_slice(line);
            in_signature = false;
        }
        rest = &rest[end..];
    }
    if !found {
        return None;
    }
    Some((payload, String::from_utf8_lossy(&signature).into_owned()))
}

/// Checks an SSH signature with `ssh-keygen` at the time `now`.
fn verify_ssh(
    allowed: &Path,
    revoked: Option<&Path>,
    dir: &Path,
    payload: &[u8],
    signature: &str,
    now: u64,
) -> Result<Signer, String> {
    let signature_path = dir.join("commit.sig");
    std::fs::write(&signature_path, signature).map_err(|error| {
        format!("cannot be written out for checking: {error}")
    })?;
    let signature_arg = path_str(&signature_path)?;
    let allowed_arg = path_str(allowed)?;
    let verify_time = format!("-Overify-time={}", ssh_time(now));

    let found = ssh_keygen(
        &[
            "-Y",
            "find-principals",
            "-s",
            signature_arg,
            "-f",
            allowed_arg,
            &verify_time,
        ],
        None,
    )?;
    if !found.success {
        let key = signing_key(signature_arg, payload)?;
        return Err(format!(
            "was made by key {key}, which no entry of {} allows at {} \
             (the key is not listed, or its entry expired or is not valid \
             yet: {}); sign with an allowed key, or list this key",
            allowed.display(),
            iso_time(now),
            found.message()
        ));
    }
    let mut failures = Vec::new();
    for principal in found.stdout.lines().map(str::trim) {
        if principal.is_empty() {
            continue;
        }
        let mut args = vec![
            "-Y",
            "verify",
            "-f",
            allowed_arg,
            "-I",
            principal,
            "-n",
            GIT_NAMESPACE,
            "-s",
            signature_arg,
            &verify_time,
        ];
        if let Some(revoked) = revoked {
            args.push("-r");
            args.push(path_str(revoked)?);
        }
        let verified = ssh_keygen(&args, Some(payload))?;
        if verified.success {
            return Ok(Signer {
                kind: "ssh",
                principal: principal.to_owned(),
                key: fingerprint(&verified.stdout)
                    .unwrap_or_else(|| "unknown".into()),
            });
        }
        // ssh-keygen prints only "Could not verify signature" for a
        // revoked key, so a second check without the revocation list
        // distinguishes revocation from other failures.
        if let Some(revoked) = revoked {
            let unrevoked =
                ssh_keygen(&args[..args.len() - 2], Some(payload))?;
            if unrevoked.success {
                let key = fingerprint(&unrevoked.stdout)
                    .unwrap_or_else(|| "unknown".into());
                return Err(format!(
                    "was made by key {key} of {principal}, which is revoked \
                     in {}; sign with a key that is not revoked",
                    revoked.display()
                ));
            }
        }
        failures.push(format!("{principal}: {}", verified.message()));
    }
    let key = signing_key(signature_arg, payload)?;
    Err(format!(
        "by key {key} did not verify at {}: {}; sign with a listed key",
        iso_time(now),
        if failures.is_empty() {
            "no principal was found".to_owned()
        } else {
            failures.join("; ")
        }
    ))
}

/// Finds the fingerprint of the key that made the signature, without
/// looking at the allowed signers, for the messages of a failed check.
/// Fails with the reason when the signature does not match the payload.
fn signing_key(signature: &str, payload: &[u8]) -> Result<String, String> {
    let checked = ssh_keygen(
        &[
            "-Y",
            "check-novalidate",
            "-n",
            GIT_NAMESPACE,
            "-s",
            signature,
        ],
        Some(payload),
    )?;
    if !checked.success {
        return Err(format!(
            "does not match the commit or was not made for git \
             (namespace \"git\"): {}; sign the commit again",
            checked.message()
        ));
    }
    Ok(fingerprint(&checked.stdout).unwrap_or_else(|| "unknown".into()))
}

/// The output of one `ssh-keygen` run.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Returns the tool's message about the failure, on one line.
    fn message(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let joined: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if joined.is_empty() {
            "no message".to_owned()
        } else {
            joined.join(" / ")
        }
    }
}

fn ssh_keygen(args: &[&str], stdin: Option<&[u8]>) -> Result<Run, String> {
    run_tool("ssh-keygen", Command::new("ssh-keygen").args(args), stdin)
}

fn run_tool(
    name: &str,
    command: &mut Command,
    stdin: Option<&[u8]>,
) -> Result<Run, String> {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| {
            format!("could not be checked: cannot run {name}: {error}")
        })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // A tool that exits early closes the pipe, and its exit status
        // then reports why.
        let _ = pipe.write_all(input);
    }
    let output = child.wait_with_output().map_err(|error| {
        format!("could not be checked: {name} failed: {error}")
    })?;
    Ok(Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str().ok_or_else(|| {
        format!(
            "could not be checked: the path {} is not UTF-8",
            path.display()
        )
    })
}

/// Finds the `SHA256:…` fingerprint in `ssh-keygen`'s "Good … signature … key
/// SHA256:…" line.
fn fingerprint(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .find(|word| word.starts_with("SHA256:"))
        .map(str::to_owned)
}

/// Checks an OpenPGP signature with `gpgv` against `keyring`. `gpgv`
/// exits 0 for a good signature by an expired or revoked key, so the
/// result is read from its status lines: only `GOODSIG` counts.
fn verify_openpgp(
    keyring: &Path,
    dir: &Path,
    payload: &[u8],
    signature: &str,
) -> Result<Signer, String> {
    let signature_path = dir.join("commit.asc");
    std::fs::write(&signature_path, signature).map_err(|error| {
        format!("cannot be written out for checking: {error}")
    })?;
    // An empty home keeps gpgv away from any default keyring.
    let home = dir.join("gnupg");
    std::fs::create_dir(&home)
        .map_err(|error| format!("could not be checked: {error}"))?;
    let keyring = std::path::absolute(keyring)
        .map_err(|error| format!("could not be checked: {error}"))?;
    let run = run_tool(
        "gpgv",
        Command::new("gpgv")
            .env("GNUPGHOME", &home)
            .args(["--status-fd", "1", "--keyring"])
            .arg(&keyring)
            .arg(&signature_path)
            .arg("-"),
        Some(payload),
    )?;
    parse_gpgv_status(&run.stdout).map_err(|reason| {
        format!("{reason} (checked against {})", keyring.display())
    })
}

/// Reads `gpgv --status-fd` output: a `GOODSIG` with its `VALIDSIG` is a
/// valid signature by a key that is neither expired nor revoked now.
fn parse_gpgv_status(status: &str) -> Result<Signer, String> {
    let mut good: Option<String> = None;
    let mut fingerprint: Option<String> = None;
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let mut words = rest.split(' ');
        let keyword = words.next().unwrap_or("");
        match keyword {
            "GOODSIG" => {
                let _keyid = words.next();
                good = Some(words.collect::<Vec<_>>().join(" "));
            }
            // The primary key's fingerprint is the last field when the
            // signing key is a subkey.
            "VALIDSIG" => {
                let fields: Vec<&str> = words.collect();
                fingerprint = fields
                    .get(9)
                    .or_else(|| fields.first())
                    .map(|fpr| (*fpr).to_owned());
            }
            "EXPKEYSIG" => {
                return Err("was made by a key that has expired; renew \
                            the key in the keyring or sign with another"
                    .into());
            }
            "REVKEYSIG" => {
                return Err("was made by a revoked key; sign with another \
                            key"
                .into());
            }
            "EXPSIG" => {
                return Err("has expired; sign the commit again".into());
            }
            "BADSIG" => {
                return Err("does not match the commit; sign it again".into());
            }
            "NO_PUBKEY" | "ERRSIG" => {
                return Err("was made by a key that is not in the keyring; \
                            sign with an allowed key, or add this key"
                    .into());
            }
            _ => {}
        }
    }
    match (good, fingerprint) {
        (Some(user), Some(key)) => Ok(Signer {
            kind: "openpgp",
            principal: user,
            key,
        }),
        _ => {
            Err("could not be verified: gpgv reported no good signature"
                .into())
        }
    }
}

/// Unix time as `ssh-keygen`'s `YYYYMMDDHHMMSSZ` (UTC).
fn ssh_time(unix: u64) -> String {
    let (year, month, day, hour, minute, second) = civil(unix);
    format!("{year:04}{month:02}{day:02}{hour:02}{minute:02}{second:02}Z")
}

/// Unix time as ISO 8601 in UTC, for messages.
fn iso_time(unix: u64) -> String {
    let (year, month, day, hour, minute, second) = civil(unix);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// Splits Unix time into the UTC calendar date and time of day, with
/// the days-to-civil conversion of the proleptic Gregorian calendar.
fn civil(unix: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = unix / 86_400;
    let seconds = unix % 86_400;
    // Shift the epoch to 0000-03-01 so that leap days end each cycle.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524
        - day_of_era / 146_096)
        / 365;
    let day_of_year =
        day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (
        year,
        month,
        day,
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(ssh_time(0), "19700101000000Z");
        assert_eq!(ssh_time(951_782_400), "20000229000000Z");
        assert_eq!(ssh_time(1_709_164_799), "20240228235959Z");
        assert_eq!(iso_time(1_709_251_200), "2024-03-01T00:00:00Z");
        assert_eq!(ssh_time(4_102_444_800), "21000101000000Z");
    }

    #[test]
    fn signature_is_taken_out_of_the_headers() {
        let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author a <a@x> 1 +0000\n\
committer a <a@x> 1 +0000\n\
gpgsig -----BEGIN SSH SIGNATURE-----\n \
AAAA\n \
-----END SSH SIGNATURE-----\n\
\n\
subject\n\
\n gpgsig in the message stays\n";
        let (payload, signature) = split_signature(raw).unwrap();
        assert_eq!(
            signature,
            "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"
        );
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\
author a <a@x> 1 +0000\n\
committer a <a@x> 1 +0000\n\
\n\
subject\n\
\n gpgsig in the message stays\n"
        );
    }

    #[test]
    fn unsigned_commit_has_no_signature() {
        let raw = b"tree 4b82\nauthor a <a@x> 1 +0000\n\ngpgsig x\n";
        assert!(split_signature(raw).is_none());
        // A header that only starts with the same letters is no signature.
        let raw = b"tree 4b82\ngpgsigx y\n\nm\n";
        assert!(split_signature(raw).is_none());
    }

    #[test]
    fn gpgv_status_needs_goodsig() {
        let good = "[GNUPG:] NEWSIG\n\
            [GNUPG:] GOODSIG 733A5B332C08EB22 Bob <bob@example.org>\n\
            [GNUPG:] VALIDSIG 03682D64 2026-12-04 1796401390 0 4 0 22 8 00 \
            PRIMARY\n";
        let signer = parse_gpgv_status(good).unwrap();
        assert_eq!(signer.principal, "Bob <bob@example.org>");
        assert_eq!(signer.key, "PRIMARY");
        let expired = "[GNUPG:] KEYEXPIRED 1546387200\n\
            [GNUPG:] EXPKEYSIG 6270C367BA602CB7 Old <old@example.org>\n\
            [GNUPG:] VALIDSIG AF4E 2019-01-01 1546344000 0 4 0 22 8 00 AF4E\n";
        assert!(parse_gpgv_status(expired).unwrap_err().contains("expired"));
        let missing = "[GNUPG:] ERRSIG 733A 22 8 00 1796401390 9 0368\n\
            [GNUPG:] NO_PUBKEY 733A5B332C08EB22\n";
        assert!(
            parse_gpgv_status(missing)
                .unwrap_err()
                .contains("not in the keyring")
        );
        assert!(parse_gpgv_status("").is_err());
    }

    #[test]
    fn fingerprint_is_found_in_output() {
        assert_eq!(
            fingerprint(
                "Good \"git\" signature with ED25519 key SHA256:n6xr/ky+L\n"
            )
            .as_deref(),
            Some("SHA256:n6xr/ky+L")
        );
        assert_eq!(fingerprint("Could not verify"), None);
    }
}
