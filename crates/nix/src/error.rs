//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use countersign_core::StorePathError;

/// Everything that can go wrong when calling git or Nix, or when reading
/// a built system.
///
/// Messages name the command or the value involved, and for a failed
/// command the tail of its standard error, so that a log line alone is
/// enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    #[error("`{command}` failed with {status}: {stderr_tail}")]
    CommandFailed {
        command: String,
        status: String,
        stderr_tail: String,
    },

    #[error(
        "`{command}` timed out after {seconds} seconds and was stopped; \
         raise the time limit if the build needs longer: {stderr_tail}"
    )]
    TimedOut {
        command: String,
        seconds: u64,
        stderr_tail: String,
    },

    #[error("`{command}` printed unexpected output ({reason}): {output}")]
    UnexpectedOutput {
        command: String,
        reason: String,
        output: String,
    },

    /// A value failed validation; `field` names what it was meant to be,
    /// such as "branch" or "commit id".
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidValue {
        field: &'static str,
        value: String,
        reason: String,
    },

    #[error("commit {commit} is not reachable from any ref of {mirror}")]
    Unreachable { commit: String, mirror: PathBuf },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    StorePath(#[from] StorePathError),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(
        field: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidValue {
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
