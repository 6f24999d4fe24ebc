//! The Unix socket: creating it, accepting connections and reading one
//! request per connection.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use countersign_core::protocol::{Event, MAX_REQUEST_BYTES, Outcome, Request};
use serde::de::IgnoredAny;

use crate::Error;
use crate::activate::{Activator, EventSink, Refusal};
use crate::config::Config;
use crate::history::History;
use crate::nix::NixTools;
use crate::users;

/// How long a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one event may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are refused at once.
const MAX_CONNECTIONS: usize = 32;
/// Input read and dropped after an oversized request line.
const MAX_DRAINED_BYTES: u64 = 16 * 1024 * 1024;

/// A bound activator, ready to serve.
pub struct Daemon {
    listener: UnixListener,
    activator: Arc<Activator>,
}

/// Prepares the state directory, the history and the socket.
pub fn bind(config: Config) -> Result<Daemon, Error> {
    // Taken first, while the process still runs one thread, because
    // taking it edits the environment.
    let activated = take_activation_socket()?;
    create_private_dir(&config.state_dir)?;
    let evaluator = match &config.evaluator_user {
        Some(name) => Some(users::lookup_user(name)?),
        None => {
            if config.verify_evaluation {
                tracing::warn!(
                    "evaluator_user is not set, so the approved source is \
                     evaluated as the activator's own user; set \
                     evaluator_user to an unprivileged account"
                );
            }
            None
        }
    };
    let group = match (&config.socket_group, &activated) {
        // The socket unit sets the group of a socket systemd created.
        (Some(name), None) => Some(users::lookup_group(name)?),
        _ => None,
    };
    check_policy(&config);
    let nix = NixTools::new(&config.nix.options, evaluator.as_ref())
        .map_err(Error::NixSettings)?;
    let history = History::open(&config.state_dir)?;
    let activator = Arc::new(Activator::new(config, nix, history));
    // An activation that a crash interrupted is finished, or continues
    // on a thread that holds the activation lock, before any request is
    // served.
    Activator::recover(&activator);
    let config = &activator.config;
    let (listener, socket_source) = match activated {
        Some(listener) => {
            check_activation_path(&listener, &config.socket);
            (listener, "systemd")
        }
        None => (bind_socket(config, group)?, "bound"),
    };
    tracing::info!(
        socket = %config.socket.display(),
        socket_source,
        state_dir = %config.state_dir.display(),
        policy = %config.policy.display(),
        profile = %config.profile.display(),
        verify_evaluation = config.verify_evaluation,
        evaluator_user = config.evaluator_user.as_deref(),
        pre_switch_commands = config.pre_switch.len(),
        health_checks = config.health.units.len()
            + config.health.commands.len()
            + config.health.http.len(),
        confirm_timeout_secs = config.confirm_timeout_secs,
        "activator started"
    );
    Ok(Daemon {
        listener,
        activator,
    })
}

/// Binds and serves until the listener fails.
pub fn run(config: Config) -> Result<(), Error> {
    bind(config)?.serve()
}

impl Daemon {
    /// Returns the path of the bound socket.
    pub fn socket(&self) -> &Path {
        &self.activator.config.socket
    }

    /// Accepts connections and serves each on its own thread.
    pub fn serve(self) -> Result<(), Error> {
        let active = Arc::new(AtomicUsize::new(0));
        for stream in self.listener.incoming() {
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::error!(%error, "accepting a connection failed");
                    // Running out of file descriptors repeats at once;
                    // a pause keeps the log readable.
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    "too many connections; closing a new one"
                );
                let mut sink = Connection::new(stream);
                sink.send(&Event::Finished {
                    outcome: Outcome::Refused,
                    proposal: None,
                    message: format!(
                        "the activator already serves {MAX_CONNECTIONS} \
                         connections; try again later"
                    ),
                });
                continue;
            }
            let activator = Arc::clone(&self.activator);
            let slot = ConnectionSlot(Arc::clone(&active));
            let spawned = thread::Builder::new()
                .name("connection".into())
                .spawn(move || {
                    let _slot = slot;
                    serve_connection(&activator, stream);
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a connection thread");
            }
        }
        tracing::info!("activator stopped");
        Ok(())
    }
}

/// One counted connection; dropping it, even while a panic unwinds the
/// connection's thread, frees the place.
struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_connection(activator: &Activator, stream: UnixStream) {
    let timeouts = stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)));
    if let Err(error) = timeouts {
        tracing::warn!(%error, "cannot set the socket timeouts");
    }
    let line = read_request_line(&stream);
    let mut sink = Connection::new(stream);
    let line = match line {
        Ok(line) => line,
        Err(RequestError::Io(error)) => {
            tracing::warn!(%error, "reading a request failed");
            return;
        }
        Err(RequestError::Empty) => {
            tracing::debug!("a connection closed without a request");
            return;
        }
        Err(error) => {
            activator.refuse(Refusal::new(error.to_string()), &mut sink);
            // Closing a Unix socket with unread input resets it, so the
            // client would lose the refusal. The rest of the oversized
            // line is therefore read and dropped first, up to a bound.
            sink.finish_and_drain();
            return;
        }
    };
    let request = match parse_request(&line) {
        Ok(request) => request,
        Err(reason) => {
            activator.refuse(Refusal::new(reason), &mut sink);
            return;
        }
    };
    match request {
        Request::Activate {
            certificate,
            audit_head,
            commit_evidence,
        } => {
            tracing::info!(
                approvals = certificate.approvals.len(),
                audit_seq = audit_head.map(|head| head.seq),
                "activation request"
            );
            activator.activate(
                &certificate,
                audit_head,
                commit_evidence.as_ref(),
                &mut sink,
            );
        }
        Request::Prepare {
            source,
            nar_hash,
            attribute,
        } => {
            tracing::info!(
                %source,
                nar_hash = ?nar_hash,
                attribute = ?attribute,
                "prepare request"
            );
            activator.prepare(&source, &nar_hash, &attribute, &mut sink);
        }
        Request::Confirm { proposal } => {
            tracing::info!(proposal, "confirm request");
            activator.confirm(proposal, &mut sink);
        }
        Request::Status => {
            tracing::info!("status request");
            match activator.status() {
                Ok(event) => sink.send(&event),
                Err(error) => {
                    tracing::error!(%error, "cannot report the status");
                    sink.send(&Event::Finished {
                        outcome: Outcome::Refused,
                        proposal: None,
                        message: error,
                    });
                }
            }
        }
    }
}

/// Parses a request line strictly: unknown fields are errors.
fn parse_request(line: &[u8]) -> Result<Request, String> {
    let invalid = |error| {
        format!("the request is not a valid JSON request line: {error}")
    };
    let request: Request = serde_json::from_slice(line).map_err(invalid)?;
    if request == Request::Status {
        // Serde ignores unknown fields next to the tag of a unit variant,
        // so a status request is checked on its own.
        let fields: BTreeMap<String, IgnoredAny> =
            serde_json::from_slice(line).map_err(invalid)?;
        if let Some(field) = fields.keys().find(|key| *key != "request") {
            return Err(format!(
                "the request is not a valid JSON request line: unknown \
                 field `{field}` in a status request"
            ));
        }
    }
    Ok(request)
}

#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error(
        "the request line is longer than {MAX_REQUEST_BYTES} bytes; send \
         one JSON request of at most that size followed by a line break"
    )]
    TooLong,
    #[error("the connection closed before a request arrived")]
    Empty,
    #[error(transparent)]
    Io(io::Error),
}

/// Reads one line of at most [`MAX_REQUEST_BYTES`] bytes, without its
/// line break; a final line without a line break counts too.
fn read_request_line(stream: &UnixStream) -> Result<Vec<u8>, RequestError> {
    let limit = MAX_REQUEST_BYTES as u64 + 1;
    let mut reader = BufReader::new(stream.take(limit));
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .map_err(RequestError::Io)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLong);
    }
    if line.is_empty() {
        return Err(RequestError::Empty);
    }
    Ok(line)
}

/// Sends events as JSON lines until the client goes away.
struct Connection {
    stream: UnixStream,
    open: bool,
}

impl Connection {
    fn new(stream: UnixStream) -> Self {
        Self { stream, open: true }
    }
}

impl Connection {
    /// Ends the reply and reads up to [`MAX_DRAINED_BYTES`] of remaining
    /// input, so that closing does not reset the connection before the
    /// client has read the reply.
    fn finish_and_drain(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let mut remaining = (&self.stream).take(MAX_DRAINED_BYTES);
        if let Err(error) = io::copy(&mut remaining, &mut io::sink()) {
            tracing::debug!(%error, "draining a refused request failed");
        }
    }
}

impl EventSink for Connection {
    fn send(&mut self, event: &Event) {
        if !self.open {
            return;
        }
        let mut line = serde_json::to_vec(event).expect("events serialize");
        line.push(b'\n');
        if let Err(error) = self.stream.write_all(&line) {
            tracing::warn!(
                %error,
                "the client stopped reading; the request continues without it"
            );
            self.open = false;
        }
    }
}

fn create_private_dir(path: &Path) -> Result<(), Error> {
    let io_error = |source| Error::Io {
        action: "create the state directory",
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(path).map_err(io_error)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(io_error)
}

/// Warns at start when the policy cannot be loaded; each request loads
/// it again, so a fix takes effect without a restart.
fn check_policy(config: &Config) {
    let loaded = fs::read(&config.policy)
        .map_err(|error| error.to_string())
        .and_then(|bytes| {
            countersign_core::Policy::from_toml(&bytes)
                .map_err(|error| error.to_string())
        });
    match loaded {
        Ok(policy) => tracing::info!(
            host = %policy.host,
            threshold = policy.threshold,
            approvers = policy.approvers.len(),
            "policy loaded"
        ),
        Err(error) => tracing::warn!(
            policy = %config.policy.display(),
            %error,
            "the policy cannot be loaded; every activation is refused until \
             it is fixed"
        ),
    }
}

/// Binds the socket under a temporary name, sets its mode and group, and
/// renames it into place, so that it is never reachable with other
/// permissions. A stale socket is replaced; a live one is an error.
/// The first file descriptor that systemd passes to an activated
/// service (`SD_LISTEN_FDS_START` in sd_listen_fds(3)).
const LISTEN_FDS_START: RawFd = 3;

/// Takes the listening socket that systemd passed as file descriptor 3,
/// when `LISTEN_PID` names this process and `LISTEN_FDS` is at least 1,
/// and removes the `LISTEN_*` variables so that children do not take
/// them for their own. Returns `None` when the socket is not passed.
fn take_activation_socket() -> Result<Option<UnixListener>, Error> {
    let for_this_process = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|count| count.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if !for_this_process || count == 0 {
        return Ok(None);
    }
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: the variables are removed only when `LISTEN_PID`
        // names this process, which happens when systemd or a test
        // starts the `countersign-activator` binary. Its `main` calls
        // `bind` before it starts any thread, so no other thread reads
        // or writes the environment at the same time.
        unsafe { std::env::remove_var(name) };
    }
    if count > 1 {
        tracing::warn!(
            listen_fds = count,
            "systemd passed more than one socket; using the first and \
             ignoring the rest"
        );
    }
    // SAFETY: with `LISTEN_PID` equal to this process and `LISTEN_FDS`
    // at least 1, systemd has passed descriptor 3 to this process as an
    // open listening socket, and nothing else in this process owns it,
    // because the variables that announced it are now removed and this
    // function is the only reader of them.
    let passed = unsafe { UnixListener::from_raw_fd(LISTEN_FDS_START) };
    // A descriptor that is not a Unix socket fails here instead of at
    // the first accept.
    passed.local_addr().map_err(Error::ActivationSocket)?;
    // systemd passes the descriptor without close-on-exec. The copy
    // that `try_clone` makes has it set, so switch scripts and health
    // checks do not inherit the listening socket; dropping the original
    // closes descriptor 3.
    let listener = passed.try_clone().map_err(Error::ActivationSocket)?;
    drop(passed);
    Ok(Some(listener))
}

/// Warns when the socket from systemd is not at the configured path,
/// where the server looks for it.
fn check_activation_path(listener: &UnixListener, configured: &Path) {
    let address = listener.local_addr().ok();
    let path = address.as_ref().and_then(|address| address.as_pathname());
    if path != Some(configured) {
        tracing::warn!(
            socket = %configured.display(),
            activation_socket = ?path,
            "the socket from systemd is not at the configured `socket` \
             path; set `ListenStream=` of the socket unit to that path"
        );
    }
}

fn bind_socket(
    config: &Config,
    group: Option<u32>,
) -> Result<UnixListener, Error> {
    let path = &config.socket;
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    let directory = path.parent().expect("the config requires a file name");
    fs::create_dir_all(directory)
        .map_err(io_error("create the socket directory", directory))?;
    // The socket is bound, changed and moved through the resolved
    // directory, which only root or this process's user may change.
    // No other user can then swap it for a symlink before the chmod below.
    let directory = &directory
        .canonicalize()
        .map_err(io_error("resolve the socket directory", directory))?;
    check_socket_directory(directory)?;
    let file_name = path.file_name().expect("checked by the config");
    let path = &directory.join(file_name);
    check_existing_socket(path)?;

    let temporary: PathBuf = directory.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(io_error("remove", &temporary)(source));
        }
    }
    let listener = UnixListener::bind(&temporary)
        .map_err(io_error("bind the socket", &temporary))?;
    let prepared = fs::set_permissions(
        &temporary,
        fs::Permissions::from_mode(config.socket_mode.0),
    )
    .map_err(io_error("set the mode of", &temporary))
    .and_then(|()| match group {
        Some(gid) => std::os::unix::fs::chown(&temporary, None, Some(gid))
            .map_err(io_error("set the group of", &temporary)),
        None => Ok(()),
    })
    .and_then(|()| {
        fs::rename(&temporary, path)
            .map_err(io_error("move the socket into place at", path))
    });
    if let Err(error) = prepared {
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    Ok(listener)
}

/// Checks that `directory`, resolved, and each of its ancestors belong to
/// root or to this process's user. Group and others may not write to
/// them, unless the sticky bit keeps them from renaming others' entries.
fn check_socket_directory(directory: &Path) -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    for ancestor in directory.ancestors() {
        let metadata =
            fs::symlink_metadata(ancestor).map_err(|source| Error::Io {
                action: "inspect the socket directory",
                path: ancestor.to_owned(),
                source,
            })?;
        let mode = metadata.mode();
        let owner_ok = metadata.uid() == 0 || metadata.uid() == own_uid;
        let shared = mode & 0o022 != 0 && mode & 0o1000 == 0;
        if !metadata.is_dir() || !owner_ok || shared {
            return Err(Error::UnsafeSocketDirectory {
                directory: ancestor.to_owned(),
                owner: metadata.uid(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

fn check_existing_socket(path: &Path) -> Result<(), Error> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(source) => {
            return Err(Error::Io {
                action: "inspect",
                path: path.to_owned(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(Error::SocketPathTaken(path.to_owned()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(Error::SocketInUse(path.to_owned()));
    }
    tracing::info!(socket = %path.display(), "replacing a stale socket");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_for(socket: &Path) -> Config {
        Config::parse(&format!(
            "policy = \"/nonexistent/policy.toml\"\n\
             state_dir = \"/nonexistent/state\"\nsocket = \"{}\"\n",
            socket.display()
        ))
        .unwrap()
    }

    #[test]
    fn socket_directory_others_may_change_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let run = directory.path().join("run");
        fs::create_dir(&run).unwrap();
        let socket = run.join("activator.sock");
        fs::set_permissions(&run, fs::Permissions::from_mode(0o777)).unwrap();
        let error = bind_socket(&config_for(&socket), None).unwrap_err();
        assert!(
            matches!(error, Error::UnsafeSocketDirectory { mode: 0o777, .. }),
            "{error}"
        );
        assert_eq!(fs::read_dir(&run).unwrap().count(), 0, "something bound");

        // The sticky bit keeps other users from renaming root's entries.
        fs::set_permissions(&run, fs::Permissions::from_mode(0o1777)).unwrap();
        bind_socket(&config_for(&socket), None).unwrap();
        fs::remove_file(&socket).unwrap();

        fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).unwrap();
        let listener = bind_socket(&config_for(&socket), None).unwrap();
        let mode = fs::metadata(&socket).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(listener);
    }

    #[test]
    fn socket_directory_of_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: only root can give a directory away");
            return;
        }
        let directory = tempfile::tempdir().unwrap();
        let run = directory.path().join("run");
        fs::create_dir(&run).unwrap();
        std::os::unix::fs::chown(&run, Some(65534), None).unwrap();
        let socket = run.join("activator.sock");
        let error = bind_socket(&config_for(&socket), None).unwrap_err();
        assert!(
            matches!(error, Error::UnsafeSocketDirectory { owner: 65534, .. }),
            "{error}"
        );
    }

    #[test]
    fn socket_directory_through_other_users_link_is_refused() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: only root can give a directory away");
            return;
        }
        // The configured path goes through a symlink to a directory that
        // another user owns; the check judges the directory itself.
        let directory = tempfile::tempdir().unwrap();
        let theirs = directory.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let link = directory.path().join("run");
        std::os::unix::fs::symlink(&theirs, &link).unwrap();
        let socket = link.join("activator.sock");
        let error = bind_socket(&config_for(&socket), None).unwrap_err();
        assert!(
            matches!(error, Error::UnsafeSocketDirectory { ref directory, .. }
                if *directory == theirs),
            "{error}"
        );
    }
}
