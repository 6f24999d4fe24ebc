//! Ties a statement's commit to the files of its source.
//!
//! The statement names both a git commit and a source store path with
//! its NAR hash. The NAR hash pins the files, but only the commit is what
//! approvers can review elsewhere. This module checks that the files are
//! that commit's tree. The commit object that the server sends must hash
//! to the commit id. The tree id on its first line must then equal the
//! git tree id computed here from the source's files, modes and symbolic
//! links. Nothing of the server's is trusted, because both ids are
//! hashes.
//!
//! Nix copies a commit without its submodules, each of which is then an
//! empty folder. The server lists them with the commit ids the tree
//! records, and those ids enter the computed tree as they would in git,
//! so a wrong list only makes the ids differ.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use base64::Engine as _;
use countersign_core::protocol::CommitEvidence;
use sha2::Digest as _;

/// Checks that the files of `source` are the tree of `commit`, whose
/// commit object and submodules `evidence` contains.
pub(crate) fn check(
    source: &Path,
    commit: &str,
    evidence: &CommitEvidence,
) -> Result<(), String> {
    let format = ObjectFormat::of(commit)?;
    let object = base64::engine::general_purpose::STANDARD
        .decode(&evidence.commit)
        .map_err(|error| {
            format!("the commit object from the server is not base64: {error}")
        })?;
    let id = hex::encode(format.object_id("commit", &object)?);
    if id != commit {
        return Err(format!(
            "the commit object from the server hashes to {id}, not to the \
             statement's commit {commit}"
        ));
    }

    let tree = tree_line(&object, format)?;
    let submodules = parse_submodules(&evidence.submodules, format)?;

    // A source that is a symbolic link would make the check read the
    // folder it points to, which can change after the check.
    let is_folder = fs::symlink_metadata(source)
        .is_ok_and(|metadata| metadata.file_type().is_dir());
    if !is_folder {
        return Err(format!(
            "the source {} is not a folder, so it cannot be the tree of \
             commit {commit}",
            source.display()
        ));
    }

    let computed = hex::encode(format.tree_id(source, "", &submodules)?);
    if computed != tree {
        return Err(format!(
            "the files of {} are not the tree {tree} of commit {commit} \
             (they hash to {}). Either the server named a commit whose \
             files differ from the source, or the repository's \
             .gitattributes changes files on export (export-ignore, \
             export-subst, eol or a filter), so that Nix copied other \
             files than the tree contains",
            source.display(),
            computed
        ));
    }
    Ok(())
}

/// The hash function of a repository's object ids.
#[derive(Clone, Copy)]
enum ObjectFormat {
    Sha1,
    Sha256,
}

impl ObjectFormat {
    /// Tells the format by the length of a commit id in lowercase hex.
    fn of(commit: &str) -> Result<Self, String> {
        let hex_digits = commit.bytes().all(|b| b.is_ascii_hexdigit())
            && !commit.bytes().any(|b| b.is_ascii_uppercase());
        match commit.len() {
            40 if hex_digits => Ok(Self::Sha1),
            64 if hex_digits => Ok(Self::Sha256),
            _ => Err(format!(
                "the statement's commit {commit:?} is not a git object id \
                 (40 or 64 lowercase hex digits)"
            )),
        }
    }

    fn id_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    /// Returns the id of the object of `kind` with content `body`.
    fn object_id(self, kind: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let mut hasher = self.hasher(kind, body.len() as u64);
        hasher.update(body);
        hasher.finish()
    }

    /// Starts the hash of an object of `kind` with `len` bytes of
    /// content: git hashes `<kind> <len>\0` followed by the content.
    fn hasher(self, kind: &str, len: u64) -> ObjectHasher {
        let mut hasher = match self {
            Self::Sha1 => ObjectHasher::Sha1(Box::new(
                sha1_checked::Builder::default().safe_hash(false).build(),
            )),
            Self::Sha256 => ObjectHasher::Sha256(sha2::Sha256::new()),
        };
        hasher.update(format!("{kind} {len}\0").as_bytes());
        hasher
    }

    /// Returns the id of the blob with the content of `path`, read in
    /// pieces so that a large file is never held whole.
    fn file_id(self, path: &Path) -> Result<Vec<u8>, String> {
        let describe = |error: std::io::Error| {
            format!("cannot read {}: {error}", path.display())
        };
        let mut file = File::open(path).map_err(describe)?;
        let len = file.metadata().map_err(describe)?.len();
        let mut hasher = self.hasher("blob", len);
        let mut buffer = vec![0u8; 64 * 1024];
        let mut read_total = 0u64;
        loop {
            let read = file.read(&mut buffer).map_err(describe)?;
            if read == 0 {
                break;
            }
            read_total += read as u64;
            hasher.update(&buffer[..read]);
        }
        if read_total != len {
            return Err(format!(
                "{} changed while it was read",
                path.display()
            ));
        }
        hasher.finish()
    }

    /// Returns the git tree id of the folder `dir`, whose path inside the
    /// source is `relative` (empty for the top).
    fn tree_id(
        self,
        dir: &Path,
        relative: &str,
        submodules: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Vec<u8>, String> {
        let describe = |path: &Path, error: std::io::Error| {
            format!("cannot read {}: {error}", path.display())
        };
        // Each entry: the name as git sorts it, then the entry's bytes.
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(|error| describe(dir, error))? {
            let entry = entry.map_err(|error| describe(dir, error))?;
            let path = entry.path();
            let name = entry.file_name();
            let name_bytes = name.as_bytes();
            let child = if relative.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{relative}/{}", name.to_string_lossy())
            };
            let metadata = fs::symlink_metadata(&path)
                .map_err(|error| describe(&path, error))?;
            let file_type = metadata.file_type();
            let (mode, id): (&str, Vec<u8>) = if file_type.is_symlink() {
                let target = fs::read_link(&path)
                    .map_err(|error| describe(&path, error))?;
                let target = target.as_os_str().as_bytes();
                ("120000", self.object_id("blob", target)?)
            } else if file_type.is_dir() {
                match submodules.get(&child) {
                    Some(id) => ("160000", id.clone()),
                    None => {
                        ("40000", self.tree_id(&path, &child, submodules)?)
                    }
                }
            } else if file_type.is_file() {
                let executable = metadata.permissions().mode() & 0o111 != 0;
                let mode = if executable { "100755" } else { "100644" };
                (mode, self.file_id(&path)?)
            } else {
                return Err(format!(
                    "{} is neither a file, a folder nor a symbolic link, so \
                     it cannot be part of a git tree",
                    path.display()
                ));
            };
            // git orders a tree's entries by name, comparing a folder's
            // name as if it ended in `/`.
            let mut sort_key = name_bytes.to_vec();
            if mode == "40000" {
                sort_key.push(b'/');
            }
            let mut bytes =
                Vec::with_capacity(mode.len() + name_bytes.len() + 34);
            bytes.extend_from_slice(mode.as_bytes());
            bytes.push(b' ');
            bytes.extend_from_slice(name_bytes);
            bytes.push(0);
            bytes.extend_from_slice(&id);
            entries.push((sort_key, bytes));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let body: Vec<u8> =
            entries.into_iter().flat_map(|(_, bytes)| bytes).collect();
        self.object_id("tree", &body)
    }
}

/// A hash in progress over one git object.
enum ObjectHasher {
    Sha1(Box<sha1_checked::Sha1>),
    Sha256(sha2::Sha256),
}

impl ObjectHasher {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha1(hasher) => {
                sha1_checked::Digest::update(&mut **hasher, bytes)
            }
            Self::Sha256(hasher) => hasher.update(bytes),
        }
    }

    /// Returns the object id, or an error when SHA-1's collision
    /// detection finds the marks of a collision attack, as git does.
    fn finish(self) -> Result<Vec<u8>, String> {
        match self {
            Self::Sha1(hasher) => {
                let result = hasher.try_finalize();
                if result.has_collision() {
                    return Err(format!(
                        "a git object hashes to {} with the marks of a \
                         SHA-1 collision attack",
                        hex::encode(result.hash())
                    ));
                }
                Ok(result.hash().to_vec())
            }
            Self::Sha256(hasher) => Ok(hasher.finalize().to_vec()),
        }
    }
}

/// Returns the tree id on the first line of a commit object.
fn tree_line(object: &[u8], format: ObjectFormat) -> Result<String, String> {
    let first = object.split(|&byte| byte == b'\n').next().unwrap_or(&[]);
    let tree = first
        .strip_prefix(b"tree ")
        .and_then(|id| std::str::from_utf8(id).ok())
        .filter(|id| id.len() == format.id_len() * 2)
        .filter(|id| {
            id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
    tree.map(str::to_owned).ok_or_else(|| {
        "the commit object does not start with a `tree` line".to_owned()
    })
}

/// Decodes the submodule ids of `evidence` for `format`.
fn parse_submodules(
    listed: &BTreeMap<String, String>,
    format: ObjectFormat,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    listed
        .iter()
        .map(|(path, id)| {
            let bytes = hex::decode(id)
                .ok()
                .filter(|bytes| bytes.len() == format.id_len())
                .ok_or_else(|| {
                    format!("the submodule {path:?} has an invalid id {id:?}")
                })?;
            Ok((path.clone(), bytes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use std::path::PathBuf;

    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=test", "-c", "user.email=t@t.invalid"])
            .args(["-c", "protocol.file.allow=always"])
            .args(args)
            .output()
            .expect("run git");
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Creates a repository whose tree has nested folders, names that
    /// git sorts differently from plain byte order, an executable, an
    /// empty file, a symbolic link and a submodule.
    fn repository(dir: &Path) -> PathBuf {
        let sub = dir.join("sub");
        fs::create_dir(&sub).unwrap();
        git(&sub, &["init", "--quiet", "--initial-branch=main"]);
        fs::write(sub.join("inner"), "inner\n").unwrap();
        git(&sub, &["add", "."]);
        git(&sub, &["commit", "--quiet", "-m", "Inner"]);

        let repo = dir.join("repo");
        fs::create_dir_all(repo.join("a/deeper")).unwrap();
        fs::write(repo.join("a/x"), "x\n").unwrap();
        fs::write(repo.join("a/deeper/y"), "y\n").unwrap();
        fs::write(repo.join("a.b"), "dot\n").unwrap();
        fs::write(repo.join("a-b"), "dash\n").unwrap();
        fs::write(repo.join("empty"), "").unwrap();
        fs::write(repo.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            repo.join("run.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("a/x", repo.join("link")).unwrap();
        git(&repo, &["init", "--quiet", "--initial-branch=main"]);
        git(
            &repo,
            &[
                "submodule",
                "--quiet",
                "add",
                sub.to_str().unwrap(),
                "modules/sub",
            ],
        );
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "--quiet", "-m", "Everything"]);
        repo
    }

    /// Extracts `commit` with `git archive`, as Nix copies a commit
    /// without its submodules.
    fn archive(repo: &Path, commit: &str, into: &Path) {
        fs::create_dir(into).unwrap();
        let status = Command::new("sh")
            .arg("-c")
            .arg("git -C \"$1\" archive \"$2\" | tar -x -C \"$3\"")
            .args([
                "sh",
                repo.to_str().unwrap(),
                commit,
                into.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn evidence(repo: &Path, commit: &str) -> CommitEvidence {
        countersign_nix::git::commit_evidence(&repo.join(".git"), commit)
            .unwrap()
    }

    /// A test repository, its head commit and that commit's files as Nix
    /// copies them.
    struct Fixture {
        dir: tempfile::TempDir,
        repo: PathBuf,
        commit: String,
        source: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let repo = repository(dir.path());
            let commit = git(&repo, &["rev-parse", "HEAD"]);
            let source = dir.path().join("source");
            archive(&repo, &commit, &source);
            Self {
                dir,
                repo,
                commit,
                source,
            }
        }
    }

    #[test]
    fn computed_tree_matches_git() {
        let Fixture {
            dir: _dir,
            repo,
            commit,
            source,
        } = Fixture::new();
        let evidence = evidence(&repo, &commit);
        assert_eq!(evidence.submodules.len(), 1, "{evidence:?}");

        let submodules =
            parse_submodules(&evidence.submodules, ObjectFormat::Sha1)
                .unwrap();
        let tree = ObjectFormat::Sha1.tree_id(&source, "", &submodules);
        assert_eq!(
            hex::encode(tree.unwrap()),
            git(&repo, &["rev-parse", "HEAD^{tree}"])
        );
        check(&source, &commit, &evidence).unwrap();
    }

    #[test]
    fn changed_file_is_not_the_tree() {
        let Fixture {
            dir: _dir,
            repo,
            commit,
            source,
        } = Fixture::new();
        fs::write(source.join("a/deeper/y"), "changed\n").unwrap();
        let error =
            check(&source, &commit, &evidence(&repo, &commit)).unwrap_err();
        assert!(error.contains("are not the tree"), "{error}");
    }

    #[test]
    fn mode_change_is_not_the_tree() {
        let Fixture {
            dir: _dir,
            repo,
            commit,
            source,
        } = Fixture::new();
        fs::set_permissions(
            source.join("a/x"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let error =
            check(&source, &commit, &evidence(&repo, &commit)).unwrap_err();
        assert!(error.contains("are not the tree"), "{error}");
    }

    #[test]
    fn other_commit_object_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let first = git(&repo, &["rev-parse", "HEAD"]);
        fs::write(repo.join("empty"), "no longer\n").unwrap();
        git(&repo, &["commit", "--quiet", "-am", "Second"]);
        let second = git(&repo, &["rev-parse", "HEAD"]);
        let source = dir.path().join("source");
        archive(&repo, &second, &source);

        // The second commit's files named as the first commit.
        let error =
            check(&source, &first, &evidence(&repo, &second)).unwrap_err();
        assert!(error.contains("hashes to"), "{error}");
        let error =
            check(&source, &first, &evidence(&repo, &first)).unwrap_err();
        assert!(error.contains("are not the tree"), "{error}");
    }

    #[test]
    fn wrong_submodule_id_is_not_the_tree() {
        let Fixture {
            dir: _dir,
            repo,
            commit,
            source,
        } = Fixture::new();
        let mut evidence = evidence(&repo, &commit);
        evidence
            .submodules
            .insert("modules/sub".into(), "1".repeat(40));
        let error = check(&source, &commit, &evidence).unwrap_err();
        assert!(error.contains("are not the tree"), "{error}");
        evidence
            .submodules
            .insert("modules/sub".into(), "xyz".into());
        let error = check(&source, &commit, &evidence).unwrap_err();
        assert!(error.contains("invalid id"), "{error}");
    }

    #[test]
    fn source_link_to_the_tree_is_refused() {
        let Fixture {
            dir,
            repo,
            commit,
            source,
        } = Fixture::new();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&source, &link).unwrap();
        let evidence = evidence(&repo, &commit);
        check(&source, &commit, &evidence).unwrap();
        let error = check(&link, &commit, &evidence).unwrap_err();
        assert!(error.contains("is not a folder"), "{error}");
    }

    #[test]
    fn commit_id_must_be_an_object_id() {
        let evidence = CommitEvidence {
            commit: String::new(),
            submodules: BTreeMap::new(),
        };
        let error =
            check(Path::new("/nonexistent"), "ABC", &evidence).unwrap_err();
        assert!(error.contains("not a git object id"), "{error}");
    }
}
