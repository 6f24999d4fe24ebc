//! The diff document: everything an approver reviews before signing.
//!
//! The document has three parts, source (git), packages (closure) and
//! system (files on the machine), with the security-relevant changes
//! collected as alerts at the top. The server hashes its JSON form and
//! the signed statement carries that SHA-256, so
//! [`DiffDocument::to_json`] must give the same bytes for the same
//! inputs. Every list is sorted, every map is ordered, and nothing
//! depends on time or on limits that vary between runs.

mod alerts;
mod bootspec;
mod checks;
mod initrd;
mod packages;
mod redact;
mod reduce;
mod references;
mod render;
mod source;
mod system;
mod text;
mod unit_file;

use std::path::Path;

use countersign_core::{Sha256Digest, StorePath};
use serde::{Deserialize, Serialize};

pub use alerts::{
    Alert, AlertKind, Severity, sort_alerts, source_alerts, system_alerts,
};
pub use bootspec::{
    BOOTSPEC_V1, BootspecChange, BootspecDiff, SPECIALISATION_V1,
};
pub use initrd::{
    InitrdDiff, InitrdEntry, InitrdEntryKind, InitrdFileChange, InitrdSummary,
    MAX_INITRD_CHANGES, MAX_INITRD_ENTRIES, MAX_INITRD_FILE_BYTES,
    MAX_INITRD_UNPACKED_BYTES,
};
pub use packages::{
    Duplicate, OUTPUT_NAMES, PackageDiff, PackageVersions, Rebuild,
    SizeChange, VersionChange, compare_versions, diff_closures, diff_pair,
    package_alerts, package_diff, package_name, split_name,
};
pub use redact::{REDACTED, redact_secrets};
pub use reduce::{VersionBump, reduce_store_paths, version_bumps};
pub use render::render_text;
pub use source::{
    FileContent, FileDiff, FileStatus, MAX_COMMITS, MAX_FILES, MAX_TEXT_BYTES,
    MAX_TOTAL_DIFF_LINES, SourceDiff, source_diff,
};
pub use system::{
    ChangeStatus, EntryChange, MAX_DIFF_BYTES, MAX_HASH_BYTES, MAX_READ_BYTES,
    MAX_REFERENCE_DEPTH, MAX_TREE_DEPTH, MAX_TREE_ENTRIES, Node,
    SpecialisationChange, SystemDiff, mask_store_hashes, system_diff,
    system_diff_from_nothing,
};
pub use text::{Hunk, NO_NEWLINE_MARKER};
pub use unit_file::{DirectiveChange, UnitFile, directive_changes};

use crate::error::{Error, Result};
use crate::nix::Nix;
use crate::store_db;

/// Version of the document's JSON layout.
pub const DIFF_FORMAT: u32 = 2;

/// The whole diff between the deployed system and a candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffDocument {
    pub format: u32,
    /// Security-relevant changes, most severe first.
    pub alerts: Vec<Alert>,
    /// The repository changes; `None` when two systems were compared
    /// without their commits, as [`DiffDocument::of_systems`] does.
    pub source: Option<SourceDiff>,
    pub packages: PackageDiff,
    pub system: SystemDiff,
}

/// Computes the package part on this thread and the system part on
/// another one.
fn packages_and_system(
    nix: &Nix,
    old: Option<&StorePath>,
    new: &StorePath,
) -> (Result<PackageDiff>, Result<SystemDiff>) {
    std::thread::scope(|scope| {
        let system = scope.spawn(|| match old {
            Some(old) => system_diff(old, new),
            None => system_diff_from_nothing(new),
        });
        let packages =
            store_db::closure_pair(nix, old, new).map(|pair| diff_pair(&pair));
        (packages, join(system))
    })
}

/// Waits for a scoped thread; a panic there continues on this thread.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The commits and systems to compare.
#[derive(Debug, Clone, Copy)]
pub struct DiffInputs<'a> {
    /// The bare mirror that contains both commits.
    pub mirror: &'a Path,
    /// The deployed commit, if the running system came from this
    /// repository.
    pub old_commit: Option<&'a str>,
    pub new_commit: &'a str,
    /// The running system, if there is one.
    pub old_system: Option<&'a StorePath>,
    /// The built candidate.
    pub new_system: &'a StorePath,
}

impl DiffDocument {
    /// Computes all three parts and the alerts. Only reads: the mirror
    /// through git, the closures from the Nix database or `nix
    /// path-info`, and the two systems' files.
    pub fn compute(nix: &Nix, inputs: &DiffInputs<'_>) -> Result<Self> {
        // The three parts read different things (git, the Nix database,
        // the systems' files), so they run at the same time.
        let (source, (packages, system)) = std::thread::scope(|scope| {
            let source = scope.spawn(|| {
                source_diff(
                    inputs.mirror,
                    inputs.old_commit,
                    inputs.new_commit,
                )
            });
            let parts =
                packages_and_system(nix, inputs.old_system, inputs.new_system);
            (join(source), parts)
        });
        Ok(Self::assemble(Some(source?), packages?, system?))
    }

    /// Compares two built systems without their commits: the package and
    /// system parts only.
    pub fn of_systems(
        nix: &Nix,
        old: &StorePath,
        new: &StorePath,
    ) -> Result<Self> {
        let (packages, system) = packages_and_system(nix, Some(old), new);
        Ok(Self::assemble(None, packages?, system?))
    }

    /// Puts computed parts together and derives the alerts.
    pub fn assemble(
        source: Option<SourceDiff>,
        packages: PackageDiff,
        system: SystemDiff,
    ) -> Self {
        let mut alerts = system_alerts(&system);
        alerts.extend(package_alerts(&packages));
        if let Some(source) = &source {
            alerts.extend(source_alerts(source));
        }
        sort_alerts(&mut alerts);
        Self {
            format: DIFF_FORMAT,
            alerts,
            source,
            packages,
            system,
        }
    }

    /// Serializes the document to its canonical JSON bytes, the ones that
    /// are hashed and served.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the document serializes to JSON")
    }

    /// SHA-256 of [`DiffDocument::to_json`].
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of(&self.to_json())
    }

    /// Parses a document, for example one fetched from the server after
    /// its digest was checked against the signed statement.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let document: Self =
            serde_json::from_slice(bytes).map_err(|error| {
                Error::invalid("diff document", "(JSON)", error.to_string())
            })?;
        if document.format != DIFF_FORMAT {
            return Err(Error::invalid(
                "diff document",
                format!("format {}", document.format),
                format!("this version reads format {DIFF_FORMAT} only"),
            ));
        }
        Ok(document)
    }

    /// Returns the maximum severity among the alerts, if there is any
    /// alert.
    pub fn max_severity(&self) -> Option<Severity> {
        self.alerts.iter().map(|alert| alert.severity).max()
    }
}
