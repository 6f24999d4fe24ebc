//! The source part of the diff: commits and changed files between the
//! deployed commit and the candidate, read from the bare mirror.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::thread;

use serde::{Deserialize, Serialize};

use super::text::{Hunk, as_text, diff_lines};
use crate::error::{Error, Result};
use crate::git::{self, CommitInfo, git_read as git};
use crate::process::{self, unexpected};

/// Maximum commits listed between the two commits.
pub const MAX_COMMITS: usize = 200;

/// Maximum files listed; further files are counted but not listed.
pub const MAX_FILES: usize = 2000;

/// Files larger than this are summarised by size, without a diff.
pub const MAX_TEXT_BYTES: u64 = 256 * 1024;

/// Once this many diff lines are included, further files are
/// summarised, so one huge change cannot make the document unusable.
pub const MAX_TOTAL_DIFF_LINES: usize = 20_000;

/// The changes in the repository between two commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDiff {
    /// The deployed commit; `None` when nothing was deployed from this
    /// repository before, and then `files` lists the whole tree.
    pub old_commit: Option<CommitInfo>,
    pub new_commit: CommitInfo,
    /// Whether the new commit descends from the old one. `false` means
    /// the branch history was rewritten, for example by a force-push.
    pub fast_forward: Option<bool>,
    /// Commits reachable from the new commit but not from the old one,
    /// newest first, at most [`MAX_COMMITS`].
    pub commits: Vec<CommitInfo>,
    pub commits_truncated: bool,
    pub files: Vec<FileDiff>,
    /// Number of changed files not listed because of [`MAX_FILES`].
    pub files_not_listed: usize,
}

/// One changed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDiff {
    /// The path in the new commit, or in the old one for a removed file.
    pub path: String,
    /// The path in the old commit, for a renamed file.
    pub old_path: Option<String>,
    pub status: FileStatus,
    /// Git's file mode in octal, such as `100644`, `100755` or `120000`
    /// for a symbolic link.
    pub old_mode: Option<String>,
    pub new_mode: Option<String>,
    pub old_size: Option<u64>,
    pub new_size: Option<u64>,
    pub lines_added: Option<u64>,
    pub lines_removed: Option<u64>,
    pub content: FileContent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Added,
    Removed,
    Modified,
    Renamed,
}

/// The part of a file's change that the document shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileContent {
    Text {
        hunks: Vec<Hunk>,
    },
    /// Binary content on either side; only the sizes are shown.
    Binary,
    /// Larger than [`MAX_TEXT_BYTES`] on either side.
    TooLarge,
    /// A symbolic link, shown by its target text on each side.
    Symlink {
        old_target: Option<String>,
        new_target: Option<String>,
    },
    /// A git submodule, shown by its commit ids.
    Submodule {
        old_commit: Option<String>,
        new_commit: Option<String>,
    },
    /// Left out, for the reason given.
    Omitted {
        reason: String,
    },
}

const NO_BASE_REASON: &str = "no deployed commit to compare with";
const BUDGET_REASON: &str = "the document's limit on diff lines was reached";
const ZERO_ID: &str = "0000000000000000000000000000000000000000";

/// Compares `old_commit` with `new_commit` in the bare repository
/// `mirror`. Without an old commit the files of the new commit are listed
/// as added, without their content.
pub fn source_diff(
    mirror: &Path,
    old_commit: Option<&str>,
    new_commit: &str,
) -> Result<SourceDiff> {
    let new_info = git::commit_info(mirror, new_commit)?;
    let Some(old) = old_commit else {
        let (files, files_not_listed) = list_tree(mirror, new_commit)?;
        return Ok(SourceDiff {
            old_commit: None,
            new_commit: new_info.clone(),
            fast_forward: None,
            commits: vec![new_info],
            commits_truncated: false,
            files,
            files_not_listed,
        });
    };
    let old_info = git::commit_info(mirror, old)?;
    let fast_forward = git::is_ancestor(mirror, old, new_commit)?;
    let mut commits =
        git::commits_between(mirror, old, new_commit, MAX_COMMITS + 1)?;
    let commits_truncated = commits.len() > MAX_COMMITS;
    commits.truncate(MAX_COMMITS);

    let mut changes = raw_changes(mirror, old, new_commit)?;
    let files_not_listed = changes.len().saturating_sub(MAX_FILES);
    changes.truncate(MAX_FILES);
    let files = describe_changes(mirror, &changes)?;
    Ok(SourceDiff {
        old_commit: Some(old_info),
        new_commit: new_info,
        fast_forward: Some(fast_forward),
        commits,
        commits_truncated,
        files,
        files_not_listed,
    })
}

/// One record of `git diff-tree --raw`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawChange {
    old_mode: String,
    new_mode: String,
    old_id: String,
    new_id: String,
    status: FileStatus,
    old_path: Option<String>,
    path: String,
}

fn raw_changes(mirror: &Path, old: &str, new: &str) -> Result<Vec<RawChange>> {
    // diff-tree is plumbing, so user settings such as an external diff
    // driver or text conversion do not apply to it. The flags turn them
    // off explicitly as well.
    let mut command = git(mirror);
    command.args([
        "diff-tree",
        "-r",
        "-z",
        "-M",
        "--no-abbrev",
        "--no-ext-diff",
        "--no-textconv",
        old,
        new,
    ]);
    let stdout = process::run(&mut command)?;
    parse_raw(&stdout)
        .ok_or_else(|| unexpected(&command, "invalid --raw output", &stdout))
}

/// Parses `--raw -z` records: `:<old mode> <new mode> <old id> <new id>
/// <status>`, NUL, the path, NUL, and for renames and copies the new
/// path and NUL.
fn parse_raw(bytes: &[u8]) -> Option<Vec<RawChange>> {
    let mut fields = bytes.split(|&b| b == 0);
    let mut changes = Vec::new();
    while let Some(header) = fields.next() {
        if header.is_empty() {
            break;
        }
        let header = std::str::from_utf8(header).ok()?.strip_prefix(':')?;
        let parts: Vec<&str> = header.split(' ').collect();
        let [old_mode, new_mode, old_id, new_id, status] = parts[..] else {
            return None;
        };
        let first = path_text(fields.next()?);
        let letter = status.chars().next()?;
        let (status, old_path, path) = match letter {
            'A' => (FileStatus::Added, None, first),
            'D' => (FileStatus::Removed, None, first),
            'M' | 'T' => (FileStatus::Modified, None, first),
            'R' => {
                let second = path_text(fields.next()?);
                (FileStatus::Renamed, Some(first), second)
            }
            'C' => {
                let second = path_text(fields.next()?);
                (FileStatus::Added, None, second)
            }
            _ => return None,
        };
        changes.push(RawChange {
            old_mode: old_mode.to_owned(),
            new_mode: new_mode.to_owned(),
            old_id: old_id.to_owned(),
            new_id: new_id.to_owned(),
            status,
            old_path,
            path,
        });
    }
    Some(changes)
}

/// Formats a file name as text: UTF-8 where it is valid, each other byte as
/// `\xNN`, and a backslash doubled so that the two cannot be confused.
/// Git allows any bytes but NUL and `/` in names.
pub fn path_text(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        text.push_str(&chunk.valid().replace('\\', "\\\\"));
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

fn describe_changes(
    mirror: &Path,
    changes: &[RawChange],
) -> Result<Vec<FileDiff>> {
    let blob_ids: Vec<&str> = changes
        .iter()
        .flat_map(|change| [change.old_id.as_str(), change.new_id.as_str()])
        .filter(|id| *id != ZERO_ID)
        .collect();
    let sizes: BTreeMap<String, Option<u64>> =
        blob_sizes(mirror, &blob_ids)?.into_iter().collect();
    let size_of = |id: &str| sizes.get(id).copied().flatten();

    let mut budget = MAX_TOTAL_DIFF_LINES;
    let mut files = Vec::with_capacity(changes.len());
    for change in changes {
        let old_present = change.old_id != ZERO_ID;
        let new_present = change.new_id != ZERO_ID;
        let old_size = old_present.then(|| size_of(&change.old_id)).flatten();
        let new_size = new_present.then(|| size_of(&change.new_id)).flatten();
        let mut file = FileDiff {
            path: change.path.clone(),
            old_path: change.old_path.clone(),
            status: change.status,
            old_mode: old_present.then(|| change.old_mode.clone()),
            new_mode: new_present.then(|| change.new_mode.clone()),
            old_size,
            new_size,
            lines_added: None,
            lines_removed: None,
            content: FileContent::Binary,
        };
        let is_submodule =
            change.old_mode == "160000" || change.new_mode == "160000";
        let is_link =
            change.old_mode == "120000" || change.new_mode == "120000";
        if is_link && !is_submodule {
            let target = |present: bool, mode: &str, id: &str| {
                if !present || mode != "120000" {
                    return Ok(None);
                }
                read_blob_or_empty(mirror, id)
                    .map(|bytes| Some(path_text(&bytes)))
            };
            file.content = FileContent::Symlink {
                old_target: target(
                    old_present,
                    &change.old_mode,
                    &change.old_id,
                )?,
                new_target: target(
                    new_present,
                    &change.new_mode,
                    &change.new_id,
                )?,
            };
        } else if is_submodule {
            file.content = FileContent::Submodule {
                old_commit: old_present.then(|| change.old_id.clone()),
                new_commit: new_present.then(|| change.new_id.clone()),
            };
        } else if old_size.unwrap_or(0) > MAX_TEXT_BYTES
            || new_size.unwrap_or(0) > MAX_TEXT_BYTES
        {
            file.content = FileContent::TooLarge;
        } else if budget == 0 {
            file.content = FileContent::Omitted {
                reason: BUDGET_REASON.to_owned(),
            };
        } else {
            let old_bytes = read_blob_or_empty(mirror, &change.old_id)?;
            let new_bytes = read_blob_or_empty(mirror, &change.new_id)?;
            if let (Some(old_text), Some(new_text)) =
                (as_text(&old_bytes), as_text(&new_bytes))
            {
                let text = diff_lines(old_text, new_text);
                let lines: usize =
                    text.hunks.iter().map(|hunk| hunk.lines.len()).sum();
                budget = budget.saturating_sub(lines);
                file.lines_added = Some(text.added);
                file.lines_removed = Some(text.removed);
                file.content = FileContent::Text { hunks: text.hunks };
            }
        }
        files.push(file);
    }
    Ok(files)
}

/// Lists the whole tree of `commit` as added files, for a first
/// deployment.
fn list_tree(mirror: &Path, commit: &str) -> Result<(Vec<FileDiff>, usize)> {
    let mut command = git(mirror);
    command.args(["ls-tree", "-r", "-z", "--long", "--full-tree", commit]);
    let stdout = process::run(&mut command)?;
    let mut files = Vec::new();
    let mut total = 0;
    for record in stdout.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        total += 1;
        if files.len() == MAX_FILES {
            continue;
        }
        // `<mode> <type> <id> <size>\t<path>`, size `-` for submodules.
        let tab =
            record.iter().position(|&b| b == b'\t').ok_or_else(|| {
                unexpected(&command, "invalid ls-tree record", record)
            })?;
        let meta = String::from_utf8_lossy(&record[..tab]);
        let path = path_text(&record[tab + 1..]);
        let meta: Vec<&str> = meta.split_whitespace().collect();
        let [mode, _, _, size] = meta[..] else {
            return Err(unexpected(
                &command,
                "invalid ls-tree record",
                record,
            ));
        };
        files.push(FileDiff {
            path,
            old_path: None,
            status: FileStatus::Added,
            old_mode: None,
            new_mode: Some(mode.to_owned()),
            old_size: None,
            new_size: size.parse().ok(),
            lines_added: None,
            lines_removed: None,
            content: FileContent::Omitted {
                reason: NO_BASE_REASON.to_owned(),
            },
        });
    }
    let not_listed = total - files.len();
    Ok((files, not_listed))
}

/// Sizes of `ids` from one `git cat-file --batch-check`; `None` for an
/// object that is missing.
fn blob_sizes(
    mirror: &Path,
    ids: &[&str],
) -> Result<Vec<(String, Option<u64>)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut command = git(mirror);
    command.args(["cat-file", "--batch-check"]);
    let description = process::describe(&command);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: description.clone(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input: String = ids.iter().map(|id| format!("{id}\n")).collect();
    // Writing happens on its own thread so that a full output pipe
    // cannot block the writer while this thread is not yet reading.
    let writer = thread::spawn(move || stdin.write_all(input.as_bytes()));
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut sizes = Vec::with_capacity(ids.len());
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|error| Error::io("git cat-file", error))?;
        // `<id> <type> <size>` or `<id> missing`.
        let parts: Vec<&str> = line.split(' ').collect();
        let size = match parts[..] {
            [id, _, size] => (id.to_owned(), size.parse().ok()),
            [id, ..] => (id.to_owned(), None),
            [] => continue,
        };
        sizes.push(size);
    }
    let _ = writer.join();
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_end(&mut stderr);
    }
    let status = child.wait().map_err(|source| Error::Spawn {
        command: description.clone(),
        source,
    })?;
    if !status.success() {
        return Err(process::failed(description, status, &stderr));
    }
    Ok(sizes)
}

fn read_blob_or_empty(mirror: &Path, id: &str) -> Result<Vec<u8>> {
    if id == ZERO_ID {
        return Ok(Vec::new());
    }
    process::run(git(mirror).args(["cat-file", "blob", id]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_raw_records() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let input = format!(
            ":100644 100644 {a} {b} M\0src/main.rs\0\
             :000000 100755 {ZERO_ID} {b} A\0run.sh\0\
             :100644 100644 {a} {a} R100\0old name\0new name\0"
        );
        let changes = parse_raw(input.as_bytes()).unwrap();
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[0].status, FileStatus::Modified);
        assert_eq!(changes[0].path, "src/main.rs");
        assert_eq!(changes[1].status, FileStatus::Added);
        assert_eq!(changes[1].new_mode, "100755");
        assert_eq!(changes[2].status, FileStatus::Renamed);
        assert_eq!(changes[2].old_path.as_deref(), Some("old name"));
        assert_eq!(changes[2].path, "new name");
    }

    #[test]
    fn non_utf8_names_are_escaped() {
        assert_eq!(path_text(b"caf\xc3\xa9"), "caf\u{e9}");
        assert_eq!(path_text(b"bad\xff\xfename"), "bad\\xff\\xfename");
        assert_eq!(path_text(b"back\\slash"), "back\\\\slash");
    }

    #[test]
    fn parse_raw_rejects_garbage() {
        assert!(parse_raw(b"not raw\0").is_none());
        assert_eq!(parse_raw(b"").unwrap(), []);
    }
}
