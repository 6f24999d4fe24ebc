//! Looking up users and groups in `/etc/passwd` and `/etc/group`.
//!
//! Reading the files directly keeps the activator free of libc bindings.
//! NOTE: names served only by NSS modules (LDAP, systemd's dynamic users)
//! are not found. The evaluator user and the socket group must be local
//! entries, as NixOS `users.users` and `users.groups` create them.

use std::path::{Path, PathBuf};

pub const PASSWD_FILE: &str = "/etc/passwd";
pub const GROUP_FILE: &str = "/etc/group";

/// A local user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "user {0:?} is not in /etc/passwd; create it or change the config"
    )]
    NoSuchUser(String),
    #[error(
        "group {0:?} is not in /etc/group; create it or change the config"
    )]
    NoSuchGroup(String),
    #[error("{path} line {line}: the entry for {name:?} has an invalid id")]
    InvalidEntry {
        path: PathBuf,
        line: usize,
        name: String,
    },
}

/// Finds `name` in `/etc/passwd`.
pub fn lookup_user(name: &str) -> Result<User, LookupError> {
    let path = Path::new(PASSWD_FILE);
    let text = read(path)?;
    find_user(&text, path, name)
}

/// Finds the id of group `name` in `/etc/group`.
pub fn lookup_group(name: &str) -> Result<u32, LookupError> {
    let path = Path::new(GROUP_FILE);
    let text = read(path)?;
    find_group(&text, path, name)
}

fn read(path: &Path) -> Result<String, LookupError> {
    std::fs::read_to_string(path).map_err(|source| LookupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses passwd lines: `name:password:uid:gid:gecos:home:shell`.
fn find_user(
    text: &str,
    path: &Path,
    name: &str,
) -> Result<User, LookupError> {
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || fields[0] != name {
            continue;
        }
        let invalid = || LookupError::InvalidEntry {
            path: path.to_owned(),
            line: index + 1,
            name: name.to_owned(),
        };
        let uid = fields[2].parse().map_err(|_| invalid())?;
        let gid = fields[3].parse().map_err(|_| invalid())?;
        return Ok(User {
            name: name.to_owned(),
            uid,
            gid,
            home: PathBuf::from(fields[5]),
        });
    }
    Err(LookupError::NoSuchUser(name.to_owned()))
}

/// Parses group lines: `name:password:gid:members`.
fn find_group(
    text: &str,
    path: &Path,
    name: &str,
) -> Result<u32, LookupError> {
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 3 || fields[0] != name {
            continue;
        }
        return fields[2].parse().map_err(|_| LookupError::InvalidEntry {
            path: path.to_owned(),
            line: index + 1,
            name: name.to_owned(),
        });
    }
    Err(LookupError::NoSuchGroup(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        countersign-eval:x:987:986::/var/empty:/run/current-system/sw/bin/nologin\n\
        broken:x:abc:1::/:/bin/sh\n";

    const GROUP: &str = "root:x:0:\ncountersign:x:985:countersign\n";

    #[test]
    fn user_is_found() {
        let user = find_user(PASSWD, Path::new("passwd"), "countersign-eval")
            .unwrap();
        assert_eq!(user.uid, 987);
        assert_eq!(user.gid, 986);
        assert_eq!(user.home, Path::new("/var/empty"));
    }

    #[test]
    fn missing_user_is_an_error() {
        let error =
            find_user(PASSWD, Path::new("passwd"), "countersign").unwrap_err();
        assert!(matches!(error, LookupError::NoSuchUser(_)), "{error}");
    }

    #[test]
    fn invalid_uid_is_an_error() {
        let error =
            find_user(PASSWD, Path::new("passwd"), "broken").unwrap_err();
        assert!(
            matches!(error, LookupError::InvalidEntry { line: 4, .. }),
            "{error}"
        );
    }

    #[test]
    fn group_is_found() {
        let gid = find_group(GROUP, Path::new("group"), "countersign");
        assert_eq!(gid.unwrap(), 985);
        let error =
            find_group(GROUP, Path::new("group"), "wheel").unwrap_err();
        assert!(matches!(error, LookupError::NoSuchGroup(_)), "{error}");
    }
}
