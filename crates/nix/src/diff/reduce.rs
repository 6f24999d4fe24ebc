//! Store paths in texts, reduced to package names.
//!
//! Unit files, scripts and configuration name store paths such as
//! `/nix/store/<hash>-openssh-9.9p1/bin/sshd`. Both the hash and the
//! version change with every package update, so texts are compared with
//! each store path reduced to `/nix/store/…-openssh/bin/sshd`, and the
//! version changes are listed on their own. A generated path without a
//! version keeps its name, and its content is compared separately (see
//! [`super::references`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::packages::split_name;

/// The prefix every store path in a text starts with.
const PREFIX: &str = "/nix/store/";
/// Nix's base32 alphabet, the characters of a store hash.
const BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
const HASH_LEN: usize = 32;

/// A package named in both texts with different versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionBump {
    pub name: String,
    pub old_version: String,
    pub new_version: String,
}

/// One store path found in a text: its byte range, and the store name.
struct Found<'a> {
    start: usize,
    end: usize,
    name: &'a str,
}

/// Finds every `/nix/store/<hash>-<name>` in `text`.
fn find_store_paths(text: &str) -> Vec<Found<'_>> {
    let mut found = Vec::new();
    let mut offset = 0;
    while let Some(index) = text[offset..].find(PREFIX) {
        let start = offset + index;
        let after = start + PREFIX.len();
        let bytes = text.as_bytes();
        let hash_ok = bytes.len() > after + HASH_LEN
            && bytes[after..after + HASH_LEN]
                .iter()
                .all(|b| BASE32.contains(b))
            && bytes[after + HASH_LEN] == b'-';
        if !hash_ok {
            offset = after;
            continue;
        }
        let name_start = after + HASH_LEN + 1;
        let name_len = text[name_start..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(b))
            .count();
        let end = name_start + name_len;
        if name_len > 0 {
            found.push(Found {
                start,
                end,
                name: &text[name_start..end],
            });
        }
        offset = end.max(after);
    }
    found
}

/// Replaces every store path in `text` by `/nix/store/…-<name>`, where
/// name is the package name without its version (an output suffix such
/// as `-bin` is kept, since it names another path).
pub fn reduce_store_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for found in find_store_paths(text) {
        out.push_str(&text[last..found.start]);
        let (name, _, output) = split_name(found.name);
        out.push_str(PREFIX);
        out.push('…');
        out.push('-');
        out.push_str(name);
        if let Some(output) = output {
            out.push('-');
            out.push_str(output);
        }
        last = found.end;
    }
    out.push_str(&text[last..]);
    out
}

/// Lists the packages that both texts name, with one version each, and
/// whose version differs between them.
pub fn version_bumps(old_text: &str, new_text: &str) -> Vec<VersionBump> {
    let versions = |text: &str| {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for found in find_store_paths(text) {
            let (name, version, _) = split_name(found.name);
            if version.is_empty() {
                continue;
            }
            let entry = map.entry(name.to_owned()).or_default();
            if !entry.iter().any(|v| v == version) {
                entry.push(version.to_owned());
            }
        }
        map
    };
    let old = versions(old_text);
    let new = versions(new_text);
    let mut bumps = Vec::new();
    for (name, old_versions) in &old {
        let Some(new_versions) = new.get(name) else {
            continue;
        };
        if let ([old_version], [new_version]) =
            (&old_versions[..], &new_versions[..])
            && old_version != new_version
        {
            bumps.push(VersionBump {
                name: name.clone(),
                old_version: old_version.clone(),
                new_version: new_version.clone(),
            });
        }
    }
    bumps
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    const B: &str = "zyxwvsrqpnmlkjihgfdcba9876543210";

    #[test]
    fn versions_and_hashes_reduce_away() {
        let old =
            format!("ExecStart=/nix/store/{A}-openssh-9.9p1/bin/sshd -D");
        let new =
            format!("ExecStart=/nix/store/{B}-openssh-9.9p2/bin/sshd -D");
        assert_eq!(reduce_store_paths(&old), reduce_store_paths(&new));
        assert_eq!(
            reduce_store_paths(&old),
            "ExecStart=/nix/store/…-openssh/bin/sshd -D"
        );
        assert_eq!(
            version_bumps(&old, &new),
            [VersionBump {
                name: "openssh".into(),
                old_version: "9.9p1".into(),
                new_version: "9.9p2".into(),
            }]
        );
    }

    #[test]
    fn names_and_outputs_stay() {
        let text = format!(
            "/nix/store/{A}-unit-script-x-start/bin/x \
             /nix/store/{A}-openssl-3.3.2-bin/bin/openssl"
        );
        assert_eq!(
            reduce_store_paths(&text),
            "/nix/store/…-unit-script-x-start/bin/x \
             /nix/store/…-openssl-bin/bin/openssl"
        );
    }

    #[test]
    fn other_text_is_kept() {
        for text in ["/nix/store/short", "no paths", "/nix/store/", ""] {
            assert_eq!(reduce_store_paths(text), text);
        }
    }
}
