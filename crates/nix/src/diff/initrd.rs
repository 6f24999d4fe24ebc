//! The files of the initrd, read from its cpio archives.
//!
//! The toplevel's `initrd` links to `<initrd derivation>/initrd`. That
//! file holds one or more cpio archives in the newc format (magic
//! `070701`, or `070702` with checksums), one after the other with zero
//! bytes between them, as the kernel's `unpack_to_rootfs` reads them.
//! Each is uncompressed or compressed with zstd or gzip. An early
//! archive for CPU microcode often comes first, uncompressed. A later
//! archive replaces a file of the same name, as when the kernel unpacks
//! them.
//!
//! The initrd is untrusted input: every size is capped (the file, the
//! decompressed bytes, the number of entries, a name, a link target),
//! and anything the reader does not understand makes it stop and give
//! the reason instead of a partial list.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::checks::InitrdDetails;
use super::system::{ChangeStatus, Node};
use crate::error::Result;
use crate::store_read::{Resolved, read_limited, resolve};

/// Largest initrd file that is read.
pub const MAX_INITRD_FILE_BYTES: u64 = 512 * 1024 * 1024;
/// Maximum number of bytes all archives of one initrd may decompress to.
pub const MAX_INITRD_UNPACKED_BYTES: u64 = 1024 * 1024 * 1024;
/// Maximum number of entries in all archives of one initrd.
pub const MAX_INITRD_ENTRIES: usize = 200_000;
/// Maximum number of changed files listed in an [`InitrdDiff`].
pub const MAX_INITRD_CHANGES: usize = 2_000;

/// The changes of the initrd's files between two systems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitrdDiff {
    /// The old initrd; `None` when the old system has none.
    pub old: Option<InitrdSummary>,
    /// The new initrd; `None` when the new system has none.
    pub new: Option<InitrdSummary>,
    /// Files added, removed or changed, by path inside the initrd with
    /// store paths reduced to package names. Empty when a side was not
    /// read.
    pub files: Vec<InitrdFileChange>,
    /// Whether more than [`MAX_INITRD_CHANGES`] files changed, so that
    /// the list is cut.
    pub truncated: bool,
}

/// The result of reading one initrd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitrdSummary {
    /// The store path of the initrd file.
    pub path: String,
    /// The archives in file order: `cpio`, `zstd` or `gzip`.
    pub archives: Vec<String>,
    /// The number of entries read.
    pub entries: u64,
    /// The reason the files were not read, such as an unsupported
    /// compression or a cap that was reached; `None` when they were.
    pub not_read: Option<String>,
}

/// One file of the initrd that was added, removed or changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitrdFileChange {
    pub path: String,
    pub status: ChangeStatus,
    pub old: Option<InitrdEntry>,
    pub new: Option<InitrdEntry>,
    /// Whether both sides are text that is the same once store paths
    /// are reduced, as after a rebuild of a package it names.
    pub only_store_paths_changed: bool,
}

/// One entry of an initrd archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitrdEntry {
    pub kind: InitrdEntryKind,
    /// Permission bits in octal, with setuid, setgid and sticky bits,
    /// such as `0755`.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// SHA-256 of a regular file's content, in hex.
    pub sha256: Option<String>,
    /// A symbolic link's target, store paths reduced.
    pub target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitrdEntryKind {
    File,
    Directory,
    Symlink,
    /// A device, pipe or socket node.
    Other,
}

/// An initrd comparison: the diff, and what the alerts read besides it.
#[derive(Debug, Default)]
pub(super) struct InitrdComparison {
    pub diff: Option<InitrdDiff>,
    pub details: InitrdDetails,
}

/// Compares the initrds that two `initrd` toplevel entries point to.
pub(super) fn compare_initrds(
    old: Option<&Node>,
    new: Option<&Node>,
) -> Result<InitrdComparison> {
    let before = old.map(read_node).transpose()?;
    let after = new.map(read_node).transpose()?;
    let mut comparison = InitrdComparison::default();
    let both_read = before.as_ref().is_none_or(|(s, _)| s.not_read.is_none())
        && after.as_ref().is_none_or(|(s, _)| s.not_read.is_none());
    let mut files = Vec::new();
    let mut truncated = false;
    for (_, side) in before.iter().chain(&after) {
        if let Some(target) =
            side.get("init").and_then(|e| e.entry.target.clone())
        {
            comparison.details.init_targets.push(target);
        }
    }
    if both_read {
        let empty = BTreeMap::new();
        let old_files = before.as_ref().map_or(&empty, |(_, f)| f);
        let new_files = after.as_ref().map_or(&empty, |(_, f)| f);
        let paths: BTreeSet<&String> =
            old_files.keys().chain(new_files.keys()).collect();
        for path in paths {
            let (a, b) = (old_files.get(path), new_files.get(path));
            let Some(change) = compare_entry(path, a, b) else {
                continue;
            };
            if files.len() >= MAX_INITRD_CHANGES {
                truncated = true;
                break;
            }
            let text = |entry: Option<&ReadEntry>| {
                entry.and_then(|entry| entry.text.clone())
            };
            if text(a).is_some() || text(b).is_some() {
                comparison
                    .details
                    .texts
                    .insert(path.clone(), (text(a), text(b)));
            }
            files.push(change);
        }
    }
    comparison.diff = Some(InitrdDiff {
        old: before.map(|(summary, _)| summary),
        new: after.map(|(summary, _)| summary),
        files,
        truncated,
    });
    Ok(comparison)
}

fn compare_entry(
    path: &str,
    old: Option<&ReadEntry>,
    new: Option<&ReadEntry>,
) -> Option<InitrdFileChange> {
    let status = match (old, new) {
        (None, Some(_)) => ChangeStatus::Added,
        (Some(_), None) => ChangeStatus::Removed,
        (Some(a), Some(b)) if a.entry == b.entry => return None,
        (Some(_), Some(_)) => ChangeStatus::Changed,
        (None, None) => return None,
    };
    let only_store_paths_changed = match (old, new) {
        (Some(a), Some(b)) => {
            a.reduced_sha256.is_some()
                && a.reduced_sha256 == b.reduced_sha256
                && InitrdEntry {
                    sha256: None,
                    ..a.entry.clone()
                } == InitrdEntry {
                    sha256: None,
                    ..b.entry.clone()
                }
        }
        _ => false,
    };
    Some(InitrdFileChange {
        path: path.to_owned(),
        status,
        old: old.map(|e| e.entry.clone()),
        new: new.map(|e| e.entry.clone()),
        only_store_paths_changed,
    })
}

/// Reads the initrd an entry points to. The summary gives the reason
/// when its files were not read.
fn read_node(
    node: &Node,
) -> Result<(InitrdSummary, BTreeMap<String, ReadEntry>)> {
    let (path, not_read) = match node {
        Node::StoreLink { target } => (target.clone(), None),
        Node::File { location, .. } => (location.clone(), None),
        Node::OutsideLink { target } => (
            target.clone(),
            Some("the initrd link leaves the Nix store, so it was not opened"),
        ),
        _ => (
            "(none)".to_owned(),
            Some("the initrd entry is not a file in the Nix store"),
        ),
    };
    let mut summary = InitrdSummary {
        path: path.clone(),
        archives: Vec::new(),
        entries: 0,
        not_read: not_read.map(str::to_owned),
    };
    if summary.not_read.is_some() {
        return Ok((summary, BTreeMap::new()));
    }
    let file = match resolve(std::path::Path::new(&path))? {
        Resolved::File { path, size, .. } => {
            if size > MAX_INITRD_FILE_BYTES {
                summary.not_read = Some(format!(
                    "the initrd is {size} bytes, above the cap of {} MiB",
                    MAX_INITRD_FILE_BYTES / (1024 * 1024)
                ));
                return Ok((summary, BTreeMap::new()));
            }
            path
        }
        _ => {
            summary.not_read =
                Some("the initrd is not a regular file in the store".into());
            return Ok((summary, BTreeMap::new()));
        }
    };
    let (bytes, _) = read_limited(&file, MAX_INITRD_FILE_BYTES)?;
    let (archives, result) = read_archives(&bytes, &Limits::default());
    summary.archives = archives;
    match result {
        Ok(files) => {
            summary.entries = files.entries;
            Ok((summary, files.files))
        }
        Err(reason) => {
            summary.not_read = Some(reason);
            Ok((summary, BTreeMap::new()))
        }
    }
}

/// One entry as read, with what the comparison needs besides the entry.
#[derive(Debug, Clone)]
pub(super) struct ReadEntry {
    pub entry: InitrdEntry,
    /// SHA-256 of the text with store paths reduced, for text files of
    /// at most 64 KiB.
    pub reduced_sha256: Option<String>,
    pub text: Option<String>,
}

/// The caps that reading one initrd observes.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "initrd"), allow(dead_code))]
pub(super) struct Limits {
    pub unpacked_bytes: u64,
    pub entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            unpacked_bytes: MAX_INITRD_UNPACKED_BYTES,
            entries: MAX_INITRD_ENTRIES,
        }
    }
}

/// The entries of all archives, by path with store paths reduced.
#[derive(Debug, Default)]
pub(super) struct Files {
    pub files: BTreeMap<String, ReadEntry>,
    pub entries: u64,
    /// The symbolic links unpacked so far, by path as unpacked (no
    /// leading `/`, store paths kept) to their target as written. The
    /// kernel follows them in the folders of later names, also across
    /// concatenated archives, which unpack into the same tree.
    #[cfg(feature = "initrd")]
    pub links: BTreeMap<String, String>,
}

#[cfg(feature = "initrd")]
pub(super) use reader::read_archives;

/// Without the `initrd` feature no archive is read.
#[cfg(not(feature = "initrd"))]
pub(super) fn read_archives(
    _bytes: &[u8],
    _limits: &Limits,
) -> (Vec<String>, std::result::Result<Files, String>) {
    (
        Vec::new(),
        Err("this build of countersign-nix has no initrd reader (cargo \
             feature `initrd`)"
            .to_owned()),
    )
}

#[cfg(feature = "initrd")]
mod reader {
    use std::collections::BTreeMap;
    use std::io::{self, BufRead, BufReader, Read};

    use sha2::{Digest, Sha256};

    use super::{Files, InitrdEntry, InitrdEntryKind, Limits, ReadEntry};
    use crate::diff::reduce::reduce_store_paths;

    /// Text files up to this size keep their text, for the alerts to quote
    /// and for the comparison with store paths reduced.
    const MAX_TEXT_BYTES: u64 = 64 * 1024;
    /// Maximum text kept for one initrd in all, so that memory stays small
    /// however many text files the archives hold.
    const MAX_TEXT_TOTAL: u64 = 16 * 1024 * 1024;

    /// Names the compression that `bytes` start with, for one the reader
    /// does not read.
    fn unsupported_format(bytes: &[u8]) -> String {
        const FORMATS: &[(&[u8], &str)] = &[
            (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "compressed with xz"),
            (
                &[0x02, 0x21, 0x4c, 0x18],
                "compressed with lz4 (legacy format)",
            ),
            (&[0x04, 0x22, 0x4d, 0x18], "compressed with lz4"),
            (b"BZh", "compressed with bzip2"),
            (&[0x5d, 0x00, 0x00], "compressed with lzma"),
            (&[0x89, b'L', b'Z', b'O'], "compressed with lzop"),
            (b"070707", "in the old portable cpio format (odc)"),
        ];
        match FORMATS.iter().find(|(magic, _)| bytes.starts_with(magic)) {
            Some((_, format)) => format!(
                "the initrd has an archive {format}; only newc archives, \
                 uncompressed or compressed with zstd or gzip, are read"
            ),
            None => {
                let start: String = bytes
                    .iter()
                    .take(6)
                    .map(|byte| format!("{byte:02x}"))
                    .collect();
                format!(
                    "the initrd has data that is neither a newc cpio archive nor \
                     zstd or gzip (it starts with the bytes {start})"
                )
            }
        }
    }

    const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
    const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
    const HEADER_LEN: usize = 110;
    const TRAILER: &str = "TRAILER!!!";
    /// Maximum length of an entry name with its NUL byte, Linux's
    /// `PATH_MAX`.
    const MAX_NAME_BYTES: u64 = 4096;
    /// Maximum length of a symbolic link target.
    const MAX_TARGET_BYTES: u64 = 4096;

    /// The unused part of each cap while reading.
    struct Budget {
        unpacked_left: u64,
        entries_left: usize,
        text_left: u64,
        limits: Limits,
    }

    /// Reads every archive of an initrd. Returns the kind of each archive
    /// found (also when reading stopped) and the entries, or why they
    /// could not be read.
    pub(in crate::diff) fn read_archives(
        bytes: &[u8],
        limits: &Limits,
    ) -> (Vec<String>, Result<Files, String>) {
        let mut archives = Vec::new();
        let mut files = Files::default();
        let mut budget = Budget {
            unpacked_left: limits.unpacked_bytes,
            entries_left: limits.entries,
            text_left: MAX_TEXT_TOTAL,
            limits: *limits,
        };
        let mut rest = bytes;
        let result = loop {
            let zeros = rest.iter().take_while(|b| **b == 0).count();
            rest = &rest[zeros..];
            if rest.is_empty() {
                break Ok(());
            }
            if rest.starts_with(b"07070") && !rest.starts_with(b"070707") {
                archives.push("cpio".to_owned());
                let mut counted = Counted::new(&mut rest, &mut budget);
                if let Err(reason) = read_archive(&mut counted, &mut files) {
                    break Err(reason);
                }
                continue;
            }
            if rest.starts_with(ZSTD_MAGIC) {
                archives.push("zstd".to_owned());
                let mut source = rest;
                let result = match ruzstd::decoding::StreamingDecoder::new(
                    &mut source,
                ) {
                    Ok(decoder) => {
                        read_stream(decoder, &mut budget, &mut files)
                    }
                    Err(error) => Err(format!(
                        "the initrd has an invalid zstd frame header: {error}"
                    )),
                };
                if let Err(reason) = result {
                    break Err(reason);
                }
                rest = source;
                continue;
            }
            if rest.starts_with(GZIP_MAGIC) {
                archives.push("gzip".to_owned());
                let mut source = rest;
                let decoder = flate2::bufread::GzDecoder::new(&mut source);
                if let Err(reason) =
                    read_stream(decoder, &mut budget, &mut files)
                {
                    break Err(reason);
                }
                rest = source;
                continue;
            }
            break Err(unsupported_format(rest));
        };
        (archives, result.map(|()| files))
    }

    /// Reads the archives of one decompressed stream, until it ends.
    fn read_stream(
        decoder: impl Read,
        budget: &mut Budget,
        files: &mut Files,
    ) -> Result<(), String> {
        let mut counted =
            BufReader::with_capacity(64 * 1024, Counted::new(decoder, budget));
        loop {
            let buffer = counted.fill_buf().map_err(|e| io_reason(&e))?;
            if buffer.is_empty() {
                return Ok(());
            }
            let zeros = buffer.iter().take_while(|b| **b == 0).count();
            if zeros > 0 {
                counted.consume(zeros);
                continue;
            }
            if !buffer.starts_with(b"07070") || buffer.starts_with(b"070707") {
                return Err(format!(
                    "{}, inside a compressed archive",
                    unsupported_format(buffer)
                ));
            }
            read_archive(&mut counted, files)?;
        }
    }

    /// Counts what is read through it against the caps of the budget.
    struct Counted<'b, R> {
        inner: R,
        budget: &'b mut Budget,
    }

    impl<'b, R> Counted<'b, R> {
        fn new(inner: R, budget: &'b mut Budget) -> Self {
            Self { inner, budget }
        }
    }

    /// The error a [`Counted`] reader returns past the unpacked size cap.
    #[derive(Debug)]
    struct UnpackedCap(u64);

    impl std::fmt::Display for UnpackedCap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "the initrd unpacks to more than {} bytes, the cap",
                self.0
            )
        }
    }

    impl std::error::Error for UnpackedCap {}

    impl<R: Read> Read for Counted<'_, R> {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            if buffer.is_empty() {
                return Ok(0);
            }
            if self.budget.unpacked_left == 0 {
                // One more byte distinguishes the end of the stream
                // from a stream that goes on past the cap.
                let mut probe = [0u8; 1];
                return match self.inner.read(&mut probe)? {
                    0 => Ok(0),
                    _ => Err(io::Error::other(UnpackedCap(
                        self.budget.limits.unpacked_bytes,
                    ))),
                };
            }
            let max = (buffer.len() as u64).min(self.budget.unpacked_left);
            let count = self.inner.read(&mut buffer[..max as usize])?;
            self.budget.unpacked_left -= count as u64;
            Ok(count)
        }
    }

    impl<R: Read> Counted<'_, R> {
        fn take_entry(&mut self) -> Result<(), String> {
            if self.budget.entries_left == 0 {
                return Err(format!(
                    "the initrd has more than {} entries, the cap",
                    self.budget.limits.entries
                ));
            }
            self.budget.entries_left -= 1;
            Ok(())
        }

        fn take_text(&mut self, size: u64) -> bool {
            if size > self.budget.text_left {
                return false;
            }
            self.budget.text_left -= size;
            true
        }
    }

    /// Access to the budget through a buffered reader of [`Counted`].
    trait Entries: Read {
        fn take_entry(&mut self) -> Result<(), String>;
        fn take_text(&mut self, size: u64) -> bool;
    }

    impl<R: Read> Entries for Counted<'_, R> {
        fn take_entry(&mut self) -> Result<(), String> {
            Counted::take_entry(self)
        }

        fn take_text(&mut self, size: u64) -> bool {
            Counted::take_text(self, size)
        }
    }

    impl<R: Read> Entries for BufReader<Counted<'_, R>> {
        fn take_entry(&mut self) -> Result<(), String> {
            self.get_mut().take_entry()
        }

        fn take_text(&mut self, size: u64) -> bool {
            self.get_mut().take_text(size)
        }
    }

    fn io_reason(error: &io::Error) -> String {
        if let Some(cap) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<UnpackedCap>())
        {
            return cap.to_string();
        }
        match error.kind() {
            io::ErrorKind::UnexpectedEof => {
                "the initrd is truncated: an archive ends inside an entry"
                    .to_owned()
            }
            _ => format!("the initrd could not be unpacked: {error}"),
        }
    }

    /// Reads one newc archive, from its first header through its
    /// `TRAILER!!!` entry.
    fn read_archive(
        reader: &mut impl Entries,
        files: &mut Files,
    ) -> Result<(), String> {
        // Names of the regular files with more than one link, by inode
        // and device, as the kernel's `find_link` groups them until the
        // archive's trailer.
        let mut links: BTreeMap<(u64, u64, u64), Vec<String>> =
            BTreeMap::new();
        loop {
            let mut header = [0u8; HEADER_LEN];
            reader.read_exact(&mut header).map_err(|e| io_reason(&e))?;
            if &header[..5] != b"07070" || !matches!(header[5], b'1' | b'2') {
                return Err(format!(
                    "the initrd has an invalid cpio header (magic {:?})",
                    String::from_utf8_lossy(&header[..6])
                ));
            }
            let field = |index: usize| -> Result<u64, String> {
                let start = 6 + index * 8;
                let text = std::str::from_utf8(&header[start..start + 8])
                    .map_err(
                        |_| "the initrd has a cpio header that is not text",
                    )?;
                u64::from_str_radix(text, 16).map_err(|_| {
                    format!(
                        "the initrd has an invalid cpio header field {text:?}"
                    )
                })
            };
            let mode = field(1)?;
            let uid = field(2)?;
            let gid = field(3)?;
            let size = field(6)?;
            let name_size = field(11)?;
            if name_size == 0 || name_size > MAX_NAME_BYTES {
                return Err(format!(
                    "the initrd has an entry name of {name_size} bytes; \
                     names of 1 to {MAX_NAME_BYTES} bytes are read"
                ));
            }
            let mut name = vec![0u8; name_size as usize];
            reader.read_exact(&mut name).map_err(|e| io_reason(&e))?;
            if name.pop() != Some(0) {
                return Err(
                    "the initrd has an entry name without its final NUL byte"
                        .to_owned(),
                );
            }
            skip(reader, padding(HEADER_LEN as u64 + name_size))?;
            let name = String::from_utf8_lossy(&name).into_owned();
            if name == TRAILER {
                skip(reader, size + padding(size))?;
                return Ok(());
            }
            reader.take_entry()?;
            let (entry, link_target) =
                read_entry(reader, mode, uid, gid, size)?;
            skip(reader, padding(size))?;
            files.entries += 1;
            let path = unpacked_path(&name, &files.links);
            match link_target {
                Some(target) => {
                    files.links.insert(path.clone(), target);
                }
                // A file or device replaces a link at its path; `mkdir`
                // fails there and the link stays.
                None if entry.entry.kind != InitrdEntryKind::Directory => {
                    files.links.remove(&path);
                }
                None => {}
            }
            let key = entry_key(&path);
            if mode & 0o170000 == 0o100000 && field(4)? >= 2 {
                let inode = (field(0)?, field(7)?, field(8)?);
                let names = links.entry(inode).or_default();
                link_entry(files, names, key, entry);
            } else {
                files.files.insert(key, entry);
            }
        }
    }

    /// Adds a regular file that shares its inode with the earlier
    /// entries `names`. The kernel makes it a hard link to the first of
    /// them, sets the owner and mode of the shared inode and, unless
    /// the entry is empty, replaces its content. So every name shows
    /// the content and owner that the last entry leaves, and an empty
    /// `etc/x` linked to a later file is not empty once unpacked.
    fn link_entry(
        files: &mut Files,
        names: &mut Vec<String>,
        key: String,
        entry: ReadEntry,
    ) {
        let shared = names.last().and_then(|name| files.files.get(name));
        let entry = match shared {
            Some(shared) if entry.entry.size == 0 => ReadEntry {
                entry: InitrdEntry {
                    mode: entry.entry.mode,
                    uid: entry.entry.uid,
                    gid: entry.entry.gid,
                    ..shared.entry.clone()
                },
                ..shared.clone()
            },
            _ => entry,
        };
        if !names.contains(&key) {
            names.push(key);
        }
        for name in names.iter() {
            files.files.insert(name.clone(), entry.clone());
        }
    }

    /// Reads an entry's data: a file is hashed, a link's target kept.
    /// For a link, the target as written comes back beside the entry.
    fn read_entry(
        reader: &mut impl Entries,
        mode: u64,
        uid: u64,
        gid: u64,
        size: u64,
    ) -> Result<(ReadEntry, Option<String>), String> {
        let kind = match mode & 0o170000 {
            0o100000 => InitrdEntryKind::File,
            0o040000 => InitrdEntryKind::Directory,
            0o120000 => InitrdEntryKind::Symlink,
            _ => InitrdEntryKind::Other,
        };
        let id = |value: u64| u32::try_from(value).unwrap_or(u32::MAX);
        let mut entry = InitrdEntry {
            kind,
            mode: format!("{:04o}", mode & 0o7777),
            uid: id(uid),
            gid: id(gid),
            size,
            sha256: None,
            target: None,
        };
        let mut reduced_sha256 = None;
        let mut text = None;
        let mut link_target = None;
        match kind {
            InitrdEntryKind::Symlink => {
                if size > MAX_TARGET_BYTES {
                    return Err(format!(
                        "the initrd has a link target of {size} bytes; at \
                         most {MAX_TARGET_BYTES} are read"
                    ));
                }
                let mut target = vec![0u8; size as usize];
                reader.read_exact(&mut target).map_err(|e| io_reason(&e))?;
                let target = String::from_utf8_lossy(&target).into_owned();
                entry.target = Some(reduce_store_paths(&target));
                link_target = Some(target);
            }
            InitrdEntryKind::File => {
                let keep = size <= MAX_TEXT_BYTES && reader.take_text(size);
                let mut hasher = Sha256::new();
                let mut kept = Vec::new();
                let mut left = size;
                let mut buffer = [0u8; 64 * 1024];
                while left > 0 {
                    let want = left.min(buffer.len() as u64) as usize;
                    reader
                        .read_exact(&mut buffer[..want])
                        .map_err(|e| io_reason(&e))?;
                    hasher.update(&buffer[..want]);
                    if keep {
                        kept.extend_from_slice(&buffer[..want]);
                    }
                    left -= want as u64;
                }
                entry.sha256 = Some(hex(&hasher.finalize()));
                if keep
                    && !kept.contains(&0)
                    && let Ok(kept) = String::from_utf8(kept)
                {
                    let reduced = reduce_store_paths(&kept);
                    reduced_sha256 =
                        Some(hex(&Sha256::digest(reduced.as_bytes())));
                    text = Some(kept);
                }
            }
            // Directories and device nodes have no data to compare; any
            // data they carry is skipped.
            InitrdEntryKind::Directory | InitrdEntryKind::Other => {
                skip(reader, size)?;
            }
        }
        Ok((
            ReadEntry {
                entry,
                reduced_sha256,
                text,
            },
            link_target,
        ))
    }

    /// The limit on links followed in one name, as the kernel's own
    /// limit on nested links; past it the name is kept as resolved so
    /// far.
    const MAX_LINK_HOPS: usize = 40;

    /// Returns the path the kernel writes an entry `name` to, without a
    /// leading `/`. Empty and `.` components are dropped, and `..`
    /// removes the component before it. A folder component that an
    /// earlier entry made a symbolic link is replaced by the link's
    /// target, since the kernel's path walk follows it. The last
    /// component is never followed, because the kernel unlinks what is
    /// there first.
    fn unpacked_path(name: &str, links: &BTreeMap<String, String>) -> String {
        let mut pending: std::collections::VecDeque<String> =
            name.split('/').map(str::to_owned).collect();
        let mut parts: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    parts.pop();
                    continue;
                }
                _ => parts.push(part),
            }
            let last = pending.iter().all(|p| p.is_empty() || p == ".");
            if last || links.is_empty() {
                continue;
            }
            let Some(target) = links.get(&parts.join("/")) else {
                continue;
            };
            hops += 1;
            if hops > MAX_LINK_HOPS {
                break;
            }
            parts.pop();
            if target.starts_with('/') {
                parts.clear();
            }
            for piece in target.split('/').rev() {
                pending.push_front(piece.to_owned());
            }
        }
        parts.join("/")
    }

    /// Returns the key of an entry unpacked at `path` (as
    /// [`unpacked_path`] gives it), with store paths reduced.
    fn entry_key(path: &str) -> String {
        if path.is_empty() {
            return ".".to_owned();
        }
        let reduced = reduce_store_paths(&format!("/{path}"));
        reduced.trim_start_matches('/').to_owned()
    }

    fn padding(length: u64) -> u64 {
        (4 - length % 4) % 4
    }

    fn skip(reader: &mut impl Read, count: u64) -> Result<(), String> {
        let copied = io::copy(&mut reader.take(count), &mut io::sink())
            .map_err(|e| io_reason(&e))?;
        if copied < count {
            return Err(io_reason(&io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

#[cfg(all(test, feature = "initrd"))]
mod tests {
    use super::*;
    use crate::fixture::initrd::{
        CpioEntry, InitrdCompression, compress, made_up_store_path,
        newc_archive,
    };

    fn read(
        bytes: &[u8],
    ) -> (Vec<String>, std::result::Result<Files, String>) {
        read_archives(bytes, &Limits::default())
    }

    fn reason(bytes: &[u8], limits: &Limits) -> String {
        match read_archives(bytes, limits).1 {
            Ok(files) => panic!("read {} entries", files.entries),
            Err(reason) => reason,
        }
    }

    fn sample() -> Vec<CpioEntry> {
        let stage_1 = made_up_store_path("stage-1-init.sh", "");
        let tool = made_up_store_path("extra-utils", "");
        vec![
            CpioEntry::directory("etc"),
            CpioEntry::file("etc/motd", b"hello\n", 0o644),
            CpioEntry::symlink("init", &stage_1),
            CpioEntry::file(
                &format!("{}/bin/ash", tool.trim_start_matches('/')),
                b"\x7fELF\0binary",
                0o555,
            ),
        ]
    }

    #[test]
    fn concatenated_archives_are_read() {
        let early = newc_archive(&[CpioEntry::file("early", b"1", 0o644)]);
        let main = newc_archive(&sample());
        let late =
            newc_archive(&[CpioEntry::file("etc/motd", b"bye\n", 0o600)]);
        let last = newc_archive(&[CpioEntry::file("last", b"2", 0o644)]);
        let mut image = early;
        image.extend(compress(InitrdCompression::Zstd, &main));
        image.extend([0; 3]);
        image.extend(compress(InitrdCompression::Gzip, &late));
        image.extend(compress(InitrdCompression::Zstd, &last));
        image.extend([0; 512]);
        let (archives, files) = read(&image);
        assert_eq!(archives, ["cpio", "zstd", "gzip", "zstd"]);
        let files = files.unwrap();
        assert_eq!(files.entries, 7);
        assert!(files.files.contains_key("early"));
        assert!(files.files.contains_key("last"));
        let motd = &files.files["etc/motd"];
        assert_eq!(motd.entry.mode, "0600", "the later archive wins");
        assert_eq!(motd.text.as_deref(), Some("bye\n"));
    }

    #[test]
    fn store_paths_in_names_are_reduced() {
        let (_, files) = read(&newc_archive(&sample()));
        let files = files.unwrap();
        let ash = &files.files["nix/store/…-extra-utils/bin/ash"];
        assert_eq!(ash.entry.kind, InitrdEntryKind::File);
        assert_eq!(ash.entry.mode, "0555");
        assert!(ash.text.is_none(), "binary content keeps no text");
        // `stage-1-init.sh` parses as the package `stage`, version
        // `1-init.sh`, by the rule of `builtins.parseDrvName`.
        let init = &files.files["init"];
        assert_eq!(init.entry.target.as_deref(), Some("/nix/store/…-stage"));
    }

    #[test]
    fn truncated_archives_are_not_read() {
        let archive = newc_archive(&sample());
        let cut = &archive[..200];
        assert!(reason(cut, &Limits::default()).contains("truncated"));
        for compression in [InitrdCompression::Zstd, InitrdCompression::Gzip] {
            let packed = compress(compression, &archive);
            let half = &packed[..packed.len() / 2];
            let (archives, result) = read(half);
            assert_eq!(archives.len(), 1, "{compression:?}");
            assert!(result.is_err(), "{compression:?} read in half");
        }
    }

    /// Sets the inode and link count of the entry `name` in a newc
    /// archive.
    fn set_link(archive: &mut [u8], name: &str, inode: u32, links: u32) {
        let needle = format!("{name}\0");
        let start = archive
            .windows(needle.len())
            .position(|window| window == needle.as_bytes())
            .expect("the name is in the archive")
            - 110;
        let inode = format!("{inode:08x}");
        archive[start + 6..start + 14].copy_from_slice(inode.as_bytes());
        let links = format!("{links:08x}");
        archive[start + 38..start + 46].copy_from_slice(links.as_bytes());
    }

    #[test]
    fn hard_link_content_is_shared() {
        // The kernel links `share/x` to the key file and writes its
        // content over the shared inode.
        let key = b"ssh-ed25519 AAAA old\n";
        let other = b"ssh-ed25519 BBBB attacker\n";
        let path = "etc/ssh/authorized_keys.d/root";
        let mut archive = newc_archive(&[
            CpioEntry::file(path, key, 0o644),
            CpioEntry::file("share/x", other, 0o600),
        ]);
        set_link(&mut archive, path, 7, 2);
        set_link(&mut archive, "share/x", 7, 2);
        let files = read(&archive).1.unwrap();
        assert_eq!(
            files.files[path].text.as_deref(),
            Some("ssh-ed25519 BBBB attacker\n")
        );
        assert_eq!(files.files[path].entry.mode, "0600");
        assert_eq!(files.files[path].entry, files.files["share/x"].entry);
    }

    #[test]
    fn empty_hard_link_keeps_content() {
        let mut archive = newc_archive(&[
            CpioEntry::file("etc/a", b"content\n", 0o644),
            CpioEntry::file("etc/b", b"", 0o600),
        ]);
        set_link(&mut archive, "etc/a", 9, 2);
        set_link(&mut archive, "etc/b", 9, 2);
        let files = read(&archive).1.unwrap();
        assert_eq!(files.files["etc/b"].text.as_deref(), Some("content\n"));
        assert_eq!(files.files["etc/a"].entry.mode, "0600");
        assert_eq!(files.files["etc/a"].entry.size, 8);
    }

    #[test]
    fn dot_segments_resolve_like_the_kernel() {
        // The kernel opens each name as a path, so `bin/../init`
        // replaces `init`.
        let archive = newc_archive(&[
            CpioEntry::file("init", b"#!/bin/sh\nold\n", 0o755),
            CpioEntry::directory("bin"),
            CpioEntry::file("bin/../init", b"#!/bin/sh\nnew\n", 0o755),
            CpioEntry::file("./etc//ssh/./key", b"k\n", 0o600),
            CpioEntry::file("../../top", b"t\n", 0o644),
        ]);
        let files = read(&archive).1.unwrap();
        let keys: Vec<&str> = files.files.keys().map(String::as_str).collect();
        assert_eq!(keys, ["bin", "etc/ssh/key", "init", "top"]);
        assert_eq!(
            files.files["init"].text.as_deref(),
            Some("#!/bin/sh\nnew\n")
        );
    }

    #[test]
    fn folder_links_are_followed_like_the_kernel() {
        // A file written through a link to a folder lands in that
        // folder, so a key for root's initrd SSH login cannot hide
        // behind a harmless name.
        let archive = newc_archive(&[
            CpioEntry::directory("etc"),
            CpioEntry::directory("etc/ssh"),
            CpioEntry::directory("etc/ssh/authorized_keys.d"),
            CpioEntry::symlink("keys", "etc/ssh/authorized_keys.d"),
            CpioEntry::file("keys/root", b"ssh-ed25519 AAAA x\n", 0o644),
            CpioEntry::symlink("abs", "/etc"),
            CpioEntry::file("abs/motd", b"hi\n", 0o644),
            CpioEntry::symlink("ssh", "etc/ssh"),
            CpioEntry::file("ssh/../shadow", b"s\n", 0o600),
            // The last component is replaced, not followed.
            CpioEntry::file("keys", b"plain\n", 0o644),
            CpioEntry::file("keys/after", b"a\n", 0o644),
            // A loop of links ends at the hop limit.
            CpioEntry::symlink("l1", "l2"),
            CpioEntry::symlink("l2", "l1"),
            CpioEntry::file("l1/x", b"x\n", 0o644),
        ]);
        let files = read(&archive).1.unwrap();
        let keys: Vec<&str> = files.files.keys().map(String::as_str).collect();
        for key in [
            "etc/ssh/authorized_keys.d/root",
            "etc/motd",
            "etc/shadow",
            "keys",
            "keys/after",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        for key in ["keys/root", "abs/motd", "ssh/../shadow", "shadow"] {
            assert!(!keys.contains(&key), "{key} in {keys:?}");
        }
        assert_eq!(files.files["keys"].text.as_deref(), Some("plain\n"));
    }

    #[test]
    fn single_link_inodes_stay_apart() {
        // Entries with one link never share content, whatever the inode.
        let mut archive = newc_archive(&[
            CpioEntry::file("etc/a", b"a\n", 0o644),
            CpioEntry::file("etc/b", b"b\n", 0o644),
        ]);
        set_link(&mut archive, "etc/a", 9, 1);
        set_link(&mut archive, "etc/b", 9, 1);
        let files = read(&archive).1.unwrap();
        assert_eq!(files.files["etc/a"].text.as_deref(), Some("a\n"));
        assert_eq!(files.files["etc/b"].text.as_deref(), Some("b\n"));
    }

    #[test]
    fn malicious_headers_are_rejected() {
        let archive = newc_archive(&[CpioEntry::file("a", b"x", 0o644)]);
        let patched = |offset: usize, bytes: &[u8]| {
            let mut copy = archive.clone();
            copy[offset..offset + bytes.len()].copy_from_slice(bytes);
            copy
        };
        let limits = Limits::default();
        // The name size field is the twelfth after the magic.
        let huge_name = reason(&patched(94, b"ffffffff"), &limits);
        assert!(huge_name.contains("entry name of"), "{huge_name}");
        let not_hex = reason(&patched(14, b"zzzzzzzz"), &limits);
        assert!(not_hex.contains("invalid cpio header field"), "{not_hex}");
        let no_nul = reason(&patched(111, b"y"), &limits);
        assert!(no_nul.contains("NUL"), "{no_nul}");
        // A file size far beyond the archive's end.
        let huge_file = reason(&patched(54, b"7fffffff"), &limits);
        assert!(huge_file.contains("truncated"), "{huge_file}");
        let long_link =
            newc_archive(&[CpioEntry::symlink("l", &"a".repeat(5000))]);
        let long_link = reason(&long_link, &limits);
        assert!(long_link.contains("link target"), "{long_link}");
        let bad_magic = reason(&patched(0, b"070703"), &limits);
        assert!(bad_magic.contains("invalid cpio header"), "{bad_magic}");
        let not_cpio = reason(&patched(0, b"170701"), &limits);
        assert!(not_cpio.contains("neither"), "{not_cpio}");
    }

    #[test]
    fn caps_stop_reading() {
        let archive = newc_archive(&sample());
        let few = Limits {
            entries: 2,
            ..Limits::default()
        };
        let entries = reason(&archive, &few);
        assert!(entries.contains("more than 2 entries"), "{entries}");
        // A small file that unpacks to a lot: 4 MiB of zero bytes.
        let bomb = newc_archive(&[CpioEntry::file(
            "zeros",
            &vec![0; 4 * 1024 * 1024],
            0o644,
        )]);
        let packed = compress(InitrdCompression::Zstd, &bomb);
        assert!(packed.len() < bomb.len() / 8, "{} bytes", packed.len());
        let small = Limits {
            unpacked_bytes: 64 * 1024,
            ..Limits::default()
        };
        let unpacked = reason(&packed, &small);
        assert!(unpacked.contains("unpacks to more than"), "{unpacked}");
        let gzip = compress(InitrdCompression::Gzip, &bomb);
        let unpacked = reason(&gzip, &small);
        assert!(unpacked.contains("unpacks to more than"), "{unpacked}");
    }

    #[test]
    fn other_compressions_are_named() {
        let archive = newc_archive(&sample());
        let xz = reason(
            &compress(InitrdCompression::XzHeader, &archive),
            &Limits::default(),
        );
        assert!(xz.contains("compressed with xz"), "{xz}");
        let lz4 = reason(&[0x02, 0x21, 0x4c, 0x18, 1, 2], &Limits::default());
        assert!(lz4.contains("lz4"), "{lz4}");
        let garbage = reason(b"hello world", &Limits::default());
        assert!(garbage.contains("68656c6c6f20"), "{garbage}");
    }

    #[test]
    fn odd_names_are_only_keys() {
        let archive = newc_archive(&[
            CpioEntry::file("../../etc/shadow", b"x", 0o644),
            CpioEntry::file("./etc/passwd", b"y", 0o644),
            CpioEntry::file("/etc/group", b"z", 0o644),
        ]);
        let files = read(&archive).1.unwrap();
        let keys: Vec<&String> = files.files.keys().collect();
        // `..` above the root stays at the root, as in the kernel.
        assert_eq!(keys, ["etc/group", "etc/passwd", "etc/shadow"]);
    }

    #[test]
    fn empty_and_padding_only_images() {
        let (archives, files) = read(&[0; 1024]);
        assert!(archives.is_empty());
        assert_eq!(files.unwrap().entries, 0);
    }
}
