//! The privileged process of countersign: it receives certificates from
//! the server on a local Unix socket, verifies each one on its own and
//! switches the system to the approved target.
//!
//! # Trust boundary
//!
//! The activator runs as root and trusts only the machine: its own
//! configuration file, the policy file that configuration names, its own
//! state directory, the running system and the Nix store. It trusts
//! nothing from the server, which is network-facing and unprivileged: a
//! request is untrusted input, and every decision is derived again here.
//! One compromised approving device, the git forge or the server process
//! therefore cannot change the system alone. The crate links no HTTP
//! stack, no async runtime and no template engine.
//!
//! # Protocol
//!
//! Each connection carries one JSON request line of at most
//! [`MAX_REQUEST_BYTES`](countersign_core::protocol::MAX_REQUEST_BYTES)
//! bytes (see [`countersign_core::protocol`]). The activator replies with
//! events, one JSON line each, and ends with `finished`, `status`,
//! `prepared` or `confirmed`. Longer or malformed lines are refused with a
//! `finished` event whose outcome is `refused`. Activations are
//! serialized by one lock, and evaluations by another. A `confirm`
//! request takes neither, so it reaches an activation that waits in its
//! confirmation window.
//!
//! A `prepare` request, which the server sends once a proposal is built,
//! runs checks 5 and 6 below for a source, NAR hash and attribute ahead
//! of the certificate. It changes nothing but the two caches those
//! checks read, uses no proposal number and is not recorded in the
//! history; at most a few run or wait at once.
//!
//! # Order of checks
//!
//! Each failure ends the request with outcome `refused`, changes
//! nothing, and is recorded in the history, up to 20 refusals a minute;
//! past that they are logged and counted in the next recorded one:
//!
//! 1. Load the policy afresh from the configured file.
//! 2. [`verify_certificate`](countersign_core::verify_certificate): every
//!    signature over the raw statement bytes first, then the strict
//!    parse, host, policy hash, expiry, and the quorum of distinct
//!    approvers.
//! 3. The statement's base is the running system (the resolved
//!    `current_system` link).
//! 4. The proposal number is above the last accepted one, as the state
//!    file and the history record it, and each
//!    WebAuthn approval's signature counter is above the counter stored
//!    for its credential, unless both are zero.
//! 5. When the configuration names an `attribute`, the statement names
//!    exactly it, so an approved commit cannot be deployed as another
//!    configuration of the same flake. The source store path is valid
//!    and has the stated NAR hash. A
//!    content-addressed source checked before, whose path still exists,
//!    is taken from the cache of verified sources.
//! 6. When `verify_evaluation` is on, evaluating the statement's
//!    attribute of `path:<source>?narHash=<hash>` yields exactly the
//!    target. The evaluation runs as `evaluator_user` when configured,
//!    and its result is cached by NAR hash and attribute.
//!
//!    A rollback statement names no source but a `rollback_generation`
//!    of the system profile. In place of checks 5 and 6, generation N of
//!    the activator's own profile (`<profile>-N-link`) must resolve to
//!    the target, a system that this profile held before. Its activation
//!    switches the profile to generation N instead of adding one.
//! 7. The target is a valid store path with an executable
//!    `bin/switch-to-configuration` that resolves inside the store.
//!
//! Before anything changes, the proposal number (used once, whatever the
//! outcome), the server's audit head, the WebAuthn signature counters,
//! the first intent record and an `accepted` history entry are written
//! durably.
//!
//! # Activation steps
//!
//! Before each step the activator writes its intent (proposal, action,
//! step, base, target, the base's profile generation) to the state file
//! durably; see [`intent`] for the rule by which a restarted activator
//! resumes an activation whose switch finished, or restores the base
//! when an activation did not finish. The steps:
//!
//! 1. `[[pre_switch]]` commands from the activator's configuration, such
//!    as a file system snapshot. One that fails or runs out of time
//!    aborts the activation with outcome `refused` before anything
//!    changed.
//! 2. For `switch` and `boot`, `nix-env --set` points the profile at the
//!    target, as `nixos-rebuild` does; `test` leaves the profile alone.
//! 3. The target's `switch-to-configuration ACTION` runs with a cleared
//!    environment, detached from the activator (see [`switch`]), so that
//!    stopping or restarting the activator does not cut it short. Any
//!    non-zero exit status is a failure, including 4 ("some units
//!    failed").
//! 4. For `switch` and `test`, the `[health]` checks of the activator's
//!    configuration: units that `systemctl is-active` reports active,
//!    commands that exit 0, and loopback URLs that answer 2xx, each
//!    retried until its timeout. `boot` changes nothing that runs before
//!    the next boot, so it skips steps 4 and 5.
//! 5. With `confirm_timeout_secs` above 0, the activator sends
//!    `awaiting-confirmation` and waits that long for a `confirm` request
//!    from the server of the new system.
//!
//! A failure in steps 2 to 5 rolls back to the certificate's base. The
//! profile goes back to its generation at acceptance, and the base's
//! `switch-to-configuration` runs with the same action. When the profile
//! held another system, the base's `test` and that system's `boot` run
//! instead, as [`intent`] describes. The outcome is `rolled-back`, or
//! `failed` when the rollback fails too. The outcome is written
//! to the history, and the intent cleared, before it is sent.

mod activate;
mod command;
mod commit_check;
pub mod config;
mod confirm;
mod deploy;
mod evaluation;
mod health;
pub mod history;
pub mod intent;
mod nix;
mod prepare;
mod refusal_budget;
mod server;
mod source_check;
pub mod state;
pub mod switch;
pub mod system;
pub mod users;

use std::path::PathBuf;

pub use config::{Config, ConfigError};
pub use evaluation::EVALUATION_CACHE_DIR;
pub use history::{
    HISTORY_FILE, HistoryEntry, HistoryError, HistoryRecord, HistorySummary,
    read_history, verify_history,
};
pub use intent::{Intent, IntentStep};
pub use server::{Daemon, bind, run};
pub use source_check::VERIFIED_SOURCES_DIR;
pub use state::{ActivatorState, STATE_FILE, StateError, read_state};
pub use switch::{RunnerArgs, SWITCH_RUNS_DIR, run_runner};

/// An error that stops the activator from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Lookup(#[from] users::LookupError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("invalid `[nix] options` in the activator config: {0}")]
    NixSettings(countersign_nix::Error),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} exists and is not a socket; remove it or set `socket` to \
         another path"
    )]
    SocketPathTaken(PathBuf),
    #[error(
        "another process is listening on {0}; stop it before starting \
         this activator"
    )]
    SocketInUse(PathBuf),
    #[error(
        "the socket directory {directory} (owner uid {owner}, mode \
         {mode:04o}) may be changed by users other than root, who could \
         redirect the socket's permissions to another file; make it and \
         its parents owned by root and not writable by group or others"
    )]
    UnsafeSocketDirectory {
        directory: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error(
        "file descriptor 3 from systemd socket activation is not a \
         listening Unix socket: {0}; set `ListenStream=` in the \
         countersign-activator.socket unit to a socket path"
    )]
    ActivationSocket(#[source] std::io::Error),
}
