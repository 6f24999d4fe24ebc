//! The detached run of a switch script, so that stopping or restarting
//! the activator cannot cut a switch short.
//!
//! Each run of `TOPLEVEL/bin/switch-to-configuration ACTION` has a name
//! (`switch-<proposal>` for the target, `rollback-<proposal>-<attempt>`
//! for the base) and a set of files in [`SWITCH_RUNS_DIR`] of the state
//! directory:
//!
//! - `NAME.lock`: the runner holds an exclusive `flock` on it for its
//!   whole life, and the script inherits the locked descriptor, so the
//!   lock lasts until both have exited;
//! - `NAME.started`: written durably by the runner, while it holds the
//!   lock, before it starts the script, with the runner's process id
//!   and the run's identity (proposal, toplevel and action);
//! - `NAME.log`: the script's standard output and standard error;
//! - `NAME.status`: the run's identity and the script's wait status,
//!   written durably by the runner before it exits;
//! - `NAME.abandoned`: written durably by the activator, while it holds
//!   the lock, when the runner had not started; a runner that takes the
//!   lock later finds it and exits without running the script.
//!
//! The runner is the activator's own binary in its hidden `run-switch`
//! mode ([`run_runner`]). With systemd (`/run/systemd/system` is a
//! directory and the configured `systemd_run` is an executable file) it
//! runs as a transient service unit, outside the activator's control
//! group. Otherwise it runs as a process in a process group of its own,
//! with its output going to the log file, never to a pipe.
//!
//! A runner that dies on its own does not stop its script, because a
//! switch cut off at a random point (units stopped, not yet started)
//! leaves the machine in a worse state than one that finishes. The
//! script keeps the lock until it exits, so nothing treats the run as
//! ended while the script runs, and the run then ends without a status
//! and is rolled back. Under systemd the death of the runner, which is
//! the unit's main process, makes systemd stop the unit's other
//! processes, and those keep the lock until they have exited.
//!
//! # Crash windows
//!
//! The intent for the switch step is written before the runner starts.
//! Whoever takes the lock of a run when the runner does not hold it
//! learns how the run ended ([`RunEnd`]): a status file means that the
//! script finished with that status; a `started` marker without a status
//! means that the runner died after it may have started the script; no
//! marker at all means that the script never started, and the
//! `abandoned` marker written then keeps a runner that is still on its
//! way from starting it. Files whose identity is not the one the
//! activator expects belong to another activation, so the run's end is
//! unknown ([`RunEnd::NotThisRun`]). The activator therefore never has
//! to guess
//! whether a runner is about to start, and before it starts a run it
//! waits for every other run in the directory to end, so two switch
//! scripts never run at once.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use countersign_core::{Action, StorePath};
use serde::{Deserialize, Serialize};

use crate::nix::CLEAN_PATH;
use crate::state;
use crate::system::SWITCH_SCRIPT;

/// Directory of the run files inside the state directory.
pub const SWITCH_RUNS_DIR: &str = "switch-runs";

/// The directory that exists when systemd is the init system, as
/// `sd_booted(3)` checks.
pub const SYSTEMD_RUNTIME_DIR: &str = "/run/systemd/system";

/// Name of the hidden subcommand of `countersign-activator` that runs a
/// switch script detached.
pub const RUNNER_SUBCOMMAND: &str = "run-switch";

/// Maximum bytes of one output line; a longer line arrives in pieces.
const MAX_LOG_LINE_BYTES: usize = 16 * 1024;

/// How long a runner may take from its launch to its `started` marker
/// before the activator abandons it.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between two looks at the run files.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Interval of the log messages while the activator waits for a runner
/// that it did not start itself.
const WAIT_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Exit status of a runner that did not run the script because its run
/// was abandoned or had run before.
const RUNNER_SKIPPED: u8 = 3;

/// One run of a switch script and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    directory: PathBuf,
    name: String,
    /// The identity that the run's files must record; `None` for the
    /// runs of other activations, whose files are read as they are.
    expected: Option<RunIdentity>,
}

/// The identity of a run (proposal, toplevel and action), which its
/// runner records in the `started` and `status` files. Files that
/// another activation left under the same name therefore do not count
/// as this run's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunIdentity {
    proposal: u64,
    toplevel: StorePath,
    action: Action,
}

impl std::fmt::Display for RunIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "proposal {}, `{}/{SWITCH_SCRIPT} {}`",
            self.proposal, self.toplevel, self.action
        )
    }
}

/// The content of a `started` marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartedMarker {
    pid: u32,
    run: RunIdentity,
}

/// The content of a `status` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusRecord {
    run: RunIdentity,
    outcome: RunStatus,
}

impl Run {
    /// Returns the run of the target's script of `proposal`; a proposal
    /// is activated once, so its name is used once.
    pub(crate) fn target(state_dir: &Path, proposal: u64) -> Self {
        Self {
            directory: state_dir.join(SWITCH_RUNS_DIR),
            name: format!("switch-{proposal}"),
            expected: None,
        }
    }

    /// Returns this run, whose files must record that it runs the
    /// script of `toplevel` with `action` for the proposal in its name.
    pub(crate) fn expecting(
        mut self,
        toplevel: &StorePath,
        action: Action,
    ) -> Self {
        self.expected = self.proposal().map(|proposal| RunIdentity {
            proposal,
            toplevel: toplevel.clone(),
            action,
        });
        self
    }

    /// Returns [`RunEnd::NotThisRun`] when `found`, read from `file`, is
    /// not the identity this run expects.
    fn mismatch(&self, found: &RunIdentity, file: &Path) -> Option<RunEnd> {
        let expected = self.expected.as_ref()?;
        (expected != found).then(|| RunEnd::NotThisRun {
            file: file.to_owned(),
            found: found.to_string(),
        })
    }

    /// Returns the next unused run of the base's script of `proposal`.
    /// A rollback that a crash interrupted runs again under a new name,
    /// so no name ever belongs to two runners.
    pub(crate) fn next_base(state_dir: &Path, proposal: u64) -> Self {
        let directory = state_dir.join(SWITCH_RUNS_DIR);
        let mut attempt = 1;
        loop {
            let run = Self {
                directory: directory.clone(),
                name: format!("rollback-{proposal}-{attempt}"),
                expected: None,
            };
            if !run.file("lock").exists() {
                return run;
            }
            attempt += 1;
        }
    }

    fn file(&self, extension: &str) -> PathBuf {
        self.directory.join(format!("{}.{extension}", self.name))
    }

    /// Returns the name of the transient systemd unit of this run.
    pub(crate) fn unit_name(&self) -> String {
        format!("countersign-{}.service", self.name)
    }

    /// Returns the proposal number in the run's name.
    fn proposal(&self) -> Option<u64> {
        let rest = self
            .name
            .strip_prefix("switch-")
            .or_else(|| self.name.strip_prefix("rollback-"))?;
        rest.split('-').next()?.parse().ok()
    }

    /// Returns the message for a failed `operation` ("opening",
    /// "locking") on the run's lock file, with the fix for its cause.
    fn lock_error(&self, operation: &str, error: &io::Error) -> String {
        let fix = match error.raw_os_error() {
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
                "make the state directory writable for root"
            }
            Some(libc::ENOLCK | libc::EOPNOTSUPP) => {
                "keep the state directory on a file system that supports \
                 flock(2)"
            }
            Some(libc::EISDIR) => {
                "move away the directory that has the lock file's name"
            }
            Some(libc::EEXIST | libc::ENOTDIR) => {
                return format!(
                    "{operation} the switch lock file {} failed: {error}; \
                     {} must be a directory, so move away the file that has \
                     its name",
                    self.file("lock").display(),
                    self.directory.display()
                );
            }
            Some(libc::ENOSPC | libc::EDQUOT) => {
                "free space on the file system of the state directory"
            }
            _ => "fix the cause that the error names",
        };
        format!(
            "{operation} the switch lock file {} failed: {error}; {fix}",
            self.file("lock").display()
        )
    }

    fn open_lock(&self) -> io::Result<File> {
        fs::create_dir_all(&self.directory)?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.file("lock"))
    }

    /// Returns how the run ended, from its files; the caller holds its
    /// lock, so no runner of it runs now. A run that had not started is
    /// marked abandoned durably.
    fn classify_locked(&self) -> Result<RunEnd, String> {
        let status_path = self.file("status");
        match fs::read(&status_path) {
            Ok(bytes) => {
                let record: StatusRecord = serde_json::from_slice(&bytes)
                    .map_err(|error| {
                        format!(
                            "the switch status file {} is invalid: \
                             {error}; move it away, and the run then counts \
                             as ended without a status",
                            status_path.display()
                        )
                    })?;
                if let Some(foreign) = self.mismatch(&record.run, &status_path)
                {
                    return Ok(foreign);
                }
                return Ok(RunEnd::Finished(record.outcome));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(format!(
                    "cannot read the switch status file {}: {error}",
                    status_path.display()
                ));
            }
        }
        let started_path = self.file("started");
        match fs::read(&started_path) {
            Ok(bytes) if self.expected.is_some() => {
                let marker: StartedMarker = serde_json::from_slice(&bytes)
                    .map_err(|error| {
                        format!(
                            "the switch started marker {} is invalid: \
                             {error}; move it away, and the run then counts \
                             as never started",
                            started_path.display()
                        )
                    })?;
                if let Some(foreign) =
                    self.mismatch(&marker.run, &started_path)
                {
                    return Ok(foreign);
                }
                return Ok(RunEnd::DiedWithoutStatus);
            }
            Ok(_) => return Ok(RunEnd::DiedWithoutStatus),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(format!(
                    "cannot read the switch started marker {}: {error}",
                    started_path.display()
                ));
            }
        }
        state::write_atomically(&self.file("abandoned"), b"abandoned\n")
            .map_err(|error| {
                format!(
                    "cannot mark the switch run {} as abandoned: {error}",
                    self.name
                )
            })?;
        Ok(RunEnd::NeverStarted {
            log: self.file("log"),
            unit: self.unit_name(),
        })
    }

    /// Waits until no runner of this run holds its lock, logging every
    /// few seconds, and returns how the run ended.
    pub(crate) fn settle(&self) -> Result<RunEnd, String> {
        let _lock = self.wait_for_lock()?;
        self.classify_locked()
    }

    /// Waits like [`Run::settle`] for a run of another activation. A
    /// status file that cannot be parsed is renamed to
    /// `NAME.status.invalid`, with a warning, and the run counts as
    /// ended without a status, so that one damaged file of an old run
    /// does not block every later switch.
    fn settle_other(&self) -> Result<RunEnd, String> {
        let _lock = self.wait_for_lock()?;
        let status_path = self.file("status");
        if let Ok(bytes) = fs::read(&status_path)
            && let Err(error) = serde_json::from_slice::<StatusRecord>(&bytes)
        {
            let aside = self.file("status.invalid");
            fs::rename(&status_path, &aside).map_err(|rename_error| {
                format!(
                    "the switch status file {} of an earlier run is invalid \
                     ({error}), and renaming it to {} failed: \
                     {rename_error}; move it away by hand",
                    status_path.display(),
                    aside.display()
                )
            })?;
            tracing::warn!(
                path = %status_path.display(),
                renamed_to = %aside.display(),
                %error,
                "the switch status file of an earlier run is invalid; the \
                 run counts as ended without a status"
            );
            return Ok(RunEnd::DiedWithoutStatus);
        }
        self.classify_locked()
    }

    /// Waits until no runner of this run holds its lock, logging every
    /// few seconds, and returns the lock file, locked.
    fn wait_for_lock(&self) -> Result<File, String> {
        let lock = self
            .open_lock()
            .map_err(|error| self.lock_error("opening", &error))?;
        let started = Instant::now();
        let mut reported = started;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(error)) => {
                    return Err(self.lock_error("locking", &error));
                }
            }
            if reported.elapsed() >= WAIT_REPORT_INTERVAL {
                reported = Instant::now();
                tracing::info!(
                    run = %self.name,
                    waited_secs = started.elapsed().as_secs(),
                    "waiting for a detached switch-to-configuration to end"
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(lock)
    }

    /// Returns how the run ended, or `None` while a runner holds its
    /// lock, without waiting.
    pub(crate) fn try_settle(&self) -> Result<Option<RunEnd>, String> {
        let lock = self
            .open_lock()
            .map_err(|error| self.lock_error("opening", &error))?;
        match lock.try_lock() {
            Ok(()) => self.classify_locked().map(Some),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(error)) => {
                Err(self.lock_error("locking", &error))
            }
        }
    }

    /// Removes the files of an ended run, and the temporary files that
    /// a crash during [`state::write_atomically`] left, so that later
    /// switches no longer wait for it. The `abandoned` marker stays when
    /// `keep_abandoned` is set, because a runner that arrives late must
    /// still find it.
    fn remove_files(&self, keep_abandoned: bool) {
        let extensions = ["log", "status", "started", "abandoned", "lock"];
        for extension in extensions {
            let temporary = self
                .directory
                .join(format!(".{}.{extension}.tmp", self.name));
            let kept = keep_abandoned && extension == "abandoned";
            let paths = if kept {
                vec![temporary]
            } else {
                vec![self.file(extension), temporary]
            };
            for path in paths {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => tracing::warn!(
                        path = %path.display(),
                        %error,
                        "cannot remove the file of an old switch run"
                    ),
                }
            }
        }
    }
}

/// The wait status of a switch script, or why it could not be started,
/// as the runner records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum RunStatus {
    /// The script ran; the raw wait status of `waitpid(2)`.
    Exited { wait_status: i32 },
    /// The runner could not start the script.
    NotRun { error: String },
}

/// The end of a run, as the activator finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunEnd {
    Finished(RunStatus),
    /// The runner died after its `started` marker and recorded no
    /// status, and the script, which holds the lock too, has exited.
    // NOTE: a background process that the script leaves with the lock's
    // descriptor open keeps the run from ending until it exits. Without
    // systemd nothing stops such a process.
    DiedWithoutStatus,
    /// The runner never started the script, and the run is abandoned.
    /// `log` and, when systemd started the runner, the journal of `unit`
    /// hold the runner's errors.
    NeverStarted {
        log: PathBuf,
        unit: String,
    },
    /// The run's `file` records `found`, another activation's switch, so
    /// how this run ended is unknown.
    NotThisRun {
        file: PathBuf,
        found: String,
    },
}

impl RunEnd {
    /// Returns whether the script exited with status 0.
    pub(crate) fn succeeded(&self) -> bool {
        matches!(
            self,
            Self::Finished(RunStatus::Exited { wait_status })
                if ExitStatus::from_raw(*wait_status).success()
        )
    }

    /// Returns `Ok` when the script exited with status 0, and otherwise
    /// an error that names the script as `description`.
    pub(crate) fn into_result(self, description: &str) -> Result<(), String> {
        match self {
            Self::Finished(RunStatus::Exited { wait_status }) => {
                let status = ExitStatus::from_raw(wait_status);
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("`{description}` exited with {status}"))
                }
            }
            Self::Finished(RunStatus::NotRun { error }) => {
                Err(format!("`{description}` failed: {error}"))
            }
            Self::DiedWithoutStatus => Err(format!(
                "the runner of `{description}` ended without recording an \
                 exit status, so the script may have stopped part-way"
            )),
            Self::NeverStarted { log, unit } => Err(format!(
                "the runner of `{description}` never started the script; \
                 see its errors in {} or, when systemd started it, in \
                 `journalctl -u {unit}`",
                log.display()
            )),
            Self::NotThisRun { file, found } => Err(format!(
                "{} records {found}, not `{description}`, so it was left by \
                 another activation and how this switch ended is unknown; \
                 move the old run files away before the next proposal",
                file.display()
            )),
        }
    }
}

/// The way a runner is launched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Launcher {
    /// A transient service unit through this `systemd-run`.
    Systemd { systemd_run: PathBuf },
    /// A process in a process group of its own.
    Process,
}

impl Launcher {
    /// Chooses systemd when `runtime_dir` (normally
    /// [`SYSTEMD_RUNTIME_DIR`]) is a directory and `systemd_run` an
    /// executable file, and a process otherwise.
    pub(crate) fn choose(runtime_dir: &Path, systemd_run: &Path) -> Self {
        if !runtime_dir.is_dir() {
            return Self::Process;
        }
        if is_executable_file(systemd_run) {
            return Self::Systemd {
                systemd_run: systemd_run.to_owned(),
            };
        }
        tracing::warn!(
            systemd_run = %systemd_run.display(),
            "systemd runs this machine, but `systemd_run` is not an \
             executable file, so the switch runs as a process in the \
             activator's own control group, and stopping the activator's \
             unit stops it too; set `systemd_run` to the path of \
             systemd-run"
        );
        Self::Process
    }
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|metadata| {
        metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
    })
}

/// Returns the arguments of the runner subcommand for `run`.
fn runner_args(
    run: &Run,
    toplevel: &StorePath,
    action: Action,
) -> Vec<OsString> {
    vec![
        RUNNER_SUBCOMMAND.into(),
        "--directory".into(),
        run.directory.clone().into(),
        "--run".into(),
        run.name.clone().into(),
        "--toplevel".into(),
        toplevel.as_str().into(),
        "--action".into(),
        action.as_str().into(),
    ]
}

/// Returns the arguments of `systemd-run` that start `runner` with
/// `runner_args` as the transient service `unit`. The type `exec` makes
/// `systemd-run` report a runner that cannot be executed. The unit asks
/// for no password and is garbage-collected when it ends, even after a
/// failure. It gets `LOCALE_ARCHIVE` when the activator has it, and
/// otherwise the manager's environment, not the activator's, so
/// `NIXOS_INSTALL_BOOTLOADER` never reaches it.
pub(crate) fn systemd_run_args(
    unit: &str,
    description: &str,
    runner: &Path,
    runner_args: &[OsString],
    locale_archive: Option<&OsStr>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        format!("--unit={unit}").into(),
        format!("--description={description}").into(),
        "--service-type=exec".into(),
        "--no-ask-password".into(),
        "--quiet".into(),
        "--collect".into(),
        "--working-directory=/".into(),
    ];
    if let Some(archive) = locale_archive {
        let mut setting = OsString::from("--setenv=LOCALE_ARCHIVE=");
        setting.push(archive);
        args.push(setting);
    }
    // NOTE: `--expand-environment=no` (systemd-run 254 and later) is
    // not passed, because the module's `systemd.package` may be older,
    // and systemd-run before 254 rejects the option. The manager
    // therefore expands `$NAME` in the arguments. Store paths, the run's
    // name and the action cannot contain `$`, but a configured state
    // directory could.
    args.push(runner.into());
    args.extend(runner_args.iter().cloned());
    args
}

/// Runs `TOPLEVEL/bin/switch-to-configuration ACTION` detached as `run`,
/// passes each line of its output to `on_line`, and returns when it
/// ended. Any exit status other than 0 is a failure, including 4, with
/// which NixOS reports that some units failed after the switch.
pub(crate) fn run_detached(
    launcher: &Launcher,
    run: &Run,
    toplevel: &StorePath,
    action: Action,
    on_line: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let description = format!("{toplevel}/{SWITCH_SCRIPT} {action}");
    let run = &run.clone().expecting(toplevel, action);
    settle_other_runs(run)?;
    if run.file("lock").exists() {
        return Err(format!(
            "the switch run {} has files in {} already, so it may have run \
             before; move them away and propose again",
            run.name,
            run.directory.display()
        ));
    }
    let lock = run
        .open_lock()
        .map_err(|error| run.lock_error("creating", &error))?;
    let log_path = run.file("log");
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|error| {
            format!(
                "cannot create the switch log {}: {error}",
                log_path.display()
            )
        })?;
    let mut follower = LogFollower::open(&log_path)?;

    let mut child =
        launch(launcher, run, toplevel, action, log, &description)?;
    tracing::info!(
        run = %run.name,
        launcher = ?launcher,
        "switch-to-configuration launched detached"
    );
    let end = follow_run(run, &lock, child.as_mut(), &mut follower, on_line);
    if let Some(mut child) = child
        && let Err(error) = child.wait()
    {
        tracing::warn!(run = %run.name, %error, "cannot reap the runner");
    }
    end?.into_result(&description)
}

/// Starts the runner of `run` with `launcher`; returns the child when it
/// is a process of the activator's.
fn launch(
    launcher: &Launcher,
    run: &Run,
    toplevel: &StorePath,
    action: Action,
    log: File,
    description: &str,
) -> Result<Option<Child>, String> {
    let runner = std::env::current_exe().map_err(|error| {
        format!(
            "cannot find the activator's own binary to run `{description}`: \
             {error}"
        )
    })?;
    let args = runner_args(run, toplevel, action);
    let locale_archive = std::env::var_os("LOCALE_ARCHIVE");
    let launched = match launcher {
        // NOTE: this branch needs systemd as the init system, which the
        // test machines lack; only its argument list is tested.
        Launcher::Systemd { systemd_run } => {
            let unit = run.unit_name();
            let mut command = Command::new(systemd_run);
            command
                .args(systemd_run_args(
                    &unit,
                    &format!("countersign: {description}"),
                    &runner,
                    &args,
                    locale_archive.as_deref(),
                ))
                .stdin(Stdio::null());
            match command.output() {
                Ok(output) if output.status.success() => Ok(None),
                Ok(output) => Err(format!(
                    "`{}` exited with {}: {}",
                    systemd_run.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )),
                Err(error) => Err(format!(
                    "cannot run {}: {error}",
                    systemd_run.display()
                )),
            }
        }
        Launcher::Process => {
            let errors = log.try_clone().map_err(|error| {
                format!("cannot share the switch log: {error}")
            })?;
            let mut command = Command::new(&runner);
            command
                .args(&args)
                .env_clear()
                .env("PATH", CLEAN_PATH)
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(errors))
                // A group of its own keeps the runner alive when the
                // activator's group is killed, as by a terminal's
                // interrupt or a test that kills the activator.
                .process_group(0);
            if let Some(archive) = &locale_archive {
                command.env("LOCALE_ARCHIVE", archive);
            }
            command.spawn().map(Some).map_err(|error| {
                format!("cannot start {}: {error}", runner.display())
            })
        }
    };
    launched.map_err(|error| {
        // A runner that the manager starts later must not run the script.
        if let Err(settle_error) = run.settle() {
            tracing::error!(run = %run.name, error = %settle_error, "cannot abandon a switch run");
        }
        format!("starting the detached `{description}` failed: {error}")
    })
}

/// Waits for the runner's `started` marker, then forwards the log until
/// the runner releases the lock, and returns how the run ended.
fn follow_run(
    run: &Run,
    lock: &File,
    mut child: Option<&mut Child>,
    follower: &mut LogFollower,
    on_line: &mut dyn FnMut(&str),
) -> Result<RunEnd, String> {
    let launched = Instant::now();
    let started_path = run.file("started");
    while !started_path.exists() {
        let exited = match child.as_deref_mut() {
            Some(child) => child.try_wait().map_err(|error| {
                format!("cannot check the switch runner {}: {error}", run.name)
            })?,
            None => None,
        };
        if exited.is_some() || launched.elapsed() >= START_TIMEOUT {
            follower.finish(on_line);
            let end = run.settle()?;
            if matches!(end, RunEnd::NeverStarted { .. }) {
                tracing::error!(
                    run = %run.name,
                    runner_exit = ?exited,
                    timeout_secs = START_TIMEOUT.as_secs(),
                    "the switch runner did not start the script"
                );
            }
            return Ok(end);
        }
        follower.poll(on_line);
        std::thread::sleep(POLL_INTERVAL);
    }
    loop {
        follower.poll(on_line);
        match lock.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(error)) => {
                return Err(run.lock_error("locking", &error));
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    follower.finish(on_line);
    run.classify_locked()
}

/// Waits for every other run in the directory of `run` to end, so that
/// no two switch scripts run at once, and removes the files of ended
/// runs of earlier proposals.
fn settle_other_runs(run: &Run) -> Result<(), String> {
    let entries = match fs::read_dir(&run.directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(error) if error.raw_os_error() == Some(libc::ENOTDIR) => {
            return Err(format!(
                "cannot list the switch runs in {}: {error}; {} must be a \
                 directory, so move away the file that has its name",
                run.directory.display(),
                run.directory.display()
            ));
        }
        Err(error) => {
            return Err(format!(
                "cannot list the switch runs in {}: {error}",
                run.directory.display()
            ));
        }
    };
    let mut others = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| {
            format!(
                "cannot list the switch runs in {}: {error}",
                run.directory.display()
            )
        })?;
        let file_name = entry.file_name();
        let Some(name) = file_name
            .to_str()
            .and_then(|name| name.strip_suffix(".lock"))
        else {
            continue;
        };
        if name != run.name {
            others.push(Run {
                directory: run.directory.clone(),
                name: name.to_owned(),
                expected: None,
            });
        }
    }
    for other in others {
        let end = other.settle_other()?;
        if other.proposal() < run.proposal() {
            let abandoned = matches!(end, RunEnd::NeverStarted { .. });
            other.remove_files(abandoned);
        }
    }
    Ok(())
}

/// Reads the lines that a runner appends to its log file.
struct LogFollower {
    file: File,
    pending: Vec<u8>,
}

impl LogFollower {
    fn open(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|error| {
            format!("cannot read the switch log {}: {error}", path.display())
        })?;
        Ok(Self {
            file,
            pending: Vec::new(),
        })
    }

    /// Passes each complete line read so far to `on_line`.
    fn poll(&mut self, on_line: &mut dyn FnMut(&str)) {
        let mut buffer = [0; 8192];
        loop {
            match self.file.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => self.pending.extend_from_slice(&buffer[..read]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot read the switch log");
                    break;
                }
            }
        }
        self.emit_lines(on_line);
    }

    /// Passes the rest of the log, a last line without a line break
    /// included, to `on_line`.
    fn finish(&mut self, on_line: &mut dyn FnMut(&str)) {
        self.poll(on_line);
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            on_line(&text_of(&rest));
        }
    }

    fn emit_lines(&mut self, on_line: &mut dyn FnMut(&str)) {
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            let limit = rest.len().min(MAX_LOG_LINE_BYTES);
            match rest[..limit].iter().position(|byte| *byte == b'\n') {
                Some(end) => {
                    on_line(&text_of(&rest[..end]));
                    start += end + 1;
                }
                None if limit == MAX_LOG_LINE_BYTES => {
                    on_line(&text_of(&rest[..limit]));
                    start += limit;
                }
                None => break,
            }
        }
        self.pending.drain(..start);
    }
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\n', '\r'])
        .to_owned()
}

/// The arguments of the runner subcommand.
#[derive(Debug, Clone)]
pub struct RunnerArgs {
    pub directory: PathBuf,
    pub run: String,
    pub toplevel: String,
    pub action: String,
}

/// Runs the switch script of one run as the runner: takes the run's
/// lock, writes the `started` marker, runs the script with its output
/// appended to the run's log, and writes its wait status. Reads no
/// configuration and opens no socket. Returns the process exit code.
pub fn run_runner(args: &RunnerArgs) -> u8 {
    match runner(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("countersign-activator {RUNNER_SUBCOMMAND}: {error}");
            1
        }
    }
}

fn runner(args: &RunnerArgs) -> Result<u8, String> {
    let valid_name = !args.run.is_empty()
        && args
            .run
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
    if !valid_name || !args.directory.is_absolute() {
        return Err(format!(
            "invalid run {:?} in {}: give an absolute directory and a name \
             of letters, digits and dashes",
            args.run,
            args.directory.display()
        ));
    }
    let toplevel = StorePath::parse(&args.toplevel).map_err(|error| {
        format!("invalid --toplevel {:?}: {error}", args.toplevel)
    })?;
    let action: Action = args.action.parse().map_err(|error| {
        format!("invalid --action {:?}: {error}", args.action)
    })?;
    let mut run = Run {
        directory: args.directory.clone(),
        name: args.run.clone(),
        expected: None,
    };
    let proposal = run.proposal().ok_or_else(|| {
        format!(
            "invalid run {:?}: the name must be `switch-<proposal>` or \
             `rollback-<proposal>-<attempt>`",
            args.run
        )
    })?;
    let identity = RunIdentity {
        proposal,
        toplevel: toplevel.clone(),
        action,
    };
    run.expected = Some(identity.clone());
    let lock = run
        .open_lock()
        .map_err(|error| run.lock_error("opening", &error))?;
    lock.lock()
        .map_err(|error| run.lock_error("locking", &error))?;
    for marker in ["abandoned", "started", "status"] {
        if run.file(marker).exists() {
            eprintln!(
                "countersign-activator {RUNNER_SUBCOMMAND}: not running \
                 `{toplevel}/{SWITCH_SCRIPT} {action}`, because {} exists",
                run.file(marker).display()
            );
            return Ok(RUNNER_SKIPPED);
        }
    }
    let marker = StartedMarker {
        pid: std::process::id(),
        run: identity.clone(),
    };
    let bytes = serde_json::to_vec(&marker).expect("a marker serializes");
    state::write_atomically(&run.file("started"), &bytes)
        .map_err(|error| error.to_string())?;

    let outcome = run_script(&run, &lock, &toplevel, action);
    let code = runner_exit_code(&outcome);
    let record = StatusRecord {
        run: identity,
        outcome,
    };
    let bytes = serde_json::to_vec(&record).expect("a run status serializes");
    state::write_atomically(&run.file("status"), &bytes)
        .map_err(|error| error.to_string())?;
    // The lock is released when the process exits, after the status is
    // durable.
    drop(lock);
    Ok(code)
}

/// Returns the runner's exit code for `outcome`: the script's exit code,
/// 128 plus the signal that killed it, as shells report it, or 1 when it
/// did not run. A failed script thereby fails the runner's unit too.
fn runner_exit_code(outcome: &RunStatus) -> u8 {
    match outcome {
        RunStatus::Exited { wait_status } => {
            let status = ExitStatus::from_raw(*wait_status);
            match (status.code(), status.signal()) {
                (Some(code), _) => u8::try_from(code).unwrap_or(1),
                (None, Some(signal)) => {
                    u8::try_from(128 + signal).unwrap_or(1)
                }
                (None, None) => 1,
            }
        }
        RunStatus::NotRun { .. } => 1,
    }
}

/// Runs the script with its output appended to the run's log. The
/// script inherits the run's locked descriptor, so the `flock`, which
/// belongs to the open file description, lasts until the runner, the
/// script and every child that keeps the descriptor have exited.
fn run_script(
    run: &Run,
    lock: &File,
    toplevel: &StorePath,
    action: Action,
) -> RunStatus {
    let lock_fd = lock.as_raw_fd();
    let spawned = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(run.file("log"))
        .and_then(|log| {
            let errors = log.try_clone()?;
            let mut command = crate::system::switch_command(toplevel, action);
            command.stdout(Stdio::from(log)).stderr(Stdio::from(errors));
            // SAFETY: the closure runs in the forked child before exec
            // and calls only fcntl(2), which is async-signal-safe. It
            // clears close-on-exec in the child's descriptor table only.
            unsafe {
                command.pre_exec(move || {
                    if libc::fcntl(lock_fd, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            command.spawn()
        })
        .and_then(|mut child| child.wait());
    match spawned {
        Ok(status) => RunStatus::Exited {
            wait_status: status.into_raw(),
        },
        Err(error) => RunStatus::NotRun {
            error: error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toplevel() -> StorePath {
        StorePath::parse(
            "/nix/store/zyxwvsrqpnmlkjihgfdcba9876543210-nixos-system-b",
        )
        .unwrap()
    }

    #[test]
    fn systemd_run_arguments() {
        let run = Run::target(Path::new("/var/lib/countersign-activator"), 7);
        let args = systemd_run_args(
            &run.unit_name(),
            "countersign: switch",
            Path::new("/nix/store/x-countersign/bin/countersign-activator"),
            &runner_args(&run, &toplevel(), Action::Switch),
            Some(OsStr::new("/nix/store/y-glibc-locales/lib/locale")),
        );
        let args: Vec<&str> =
            args.iter().map(|arg| arg.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--unit=countersign-switch-7.service",
                "--description=countersign: switch",
                "--service-type=exec",
                "--no-ask-password",
                "--quiet",
                "--collect",
                "--working-directory=/",
                "--setenv=LOCALE_ARCHIVE=/nix/store/y-glibc-locales/lib/locale",
                "/nix/store/x-countersign/bin/countersign-activator",
                "run-switch",
                "--directory",
                "/var/lib/countersign-activator/switch-runs",
                "--run",
                "switch-7",
                "--toplevel",
                "/nix/store/zyxwvsrqpnmlkjihgfdcba9876543210-nixos-system-b",
                "--action",
                "switch",
            ]
        );
    }

    #[test]
    fn systemd_run_without_locale_passes_no_environment() {
        let run = Run::target(Path::new("/s"), 1);
        let args = systemd_run_args(
            "u",
            "d",
            Path::new("/r"),
            &runner_args(&run, &toplevel(), Action::Test),
            None,
        );
        assert!(
            !args
                .iter()
                .any(|arg| arg.to_string_lossy().starts_with("--setenv")),
            "{args:?}"
        );
        assert!(
            !args
                .iter()
                .any(|arg| arg.to_string_lossy().contains("NIXOS_INSTALL")),
            "{args:?}"
        );
    }

    #[test]
    fn launcher_without_systemd_is_process() {
        let directory = tempfile::tempdir().unwrap();
        let missing = directory.path().join("missing");
        assert_eq!(
            Launcher::choose(&missing, Path::new("/bin/sh")),
            Launcher::Process
        );
        // systemd without an executable systemd-run falls back too.
        assert_eq!(
            Launcher::choose(directory.path(), &missing),
            Launcher::Process
        );
        assert_eq!(
            Launcher::choose(directory.path(), Path::new("/bin/sh")),
            Launcher::Systemd {
                systemd_run: PathBuf::from("/bin/sh")
            }
        );
    }

    #[test]
    fn base_runs_get_new_names() {
        let directory = tempfile::tempdir().unwrap();
        let first = Run::next_base(directory.path(), 4);
        assert_eq!(first.name, "rollback-4-1");
        first.open_lock().unwrap();
        let second = Run::next_base(directory.path(), 4);
        assert_eq!(second.name, "rollback-4-2");
        assert_eq!(second.proposal(), Some(4));
        assert_eq!(Run::target(directory.path(), 12).proposal(), Some(12));
    }

    #[test]
    fn unstarted_run_is_abandoned() {
        let directory = tempfile::tempdir().unwrap();
        let run = Run::target(directory.path(), 3);
        let end = run.try_settle().unwrap().unwrap();
        assert_eq!(
            end,
            RunEnd::NeverStarted {
                log: run.file("log"),
                unit: "countersign-switch-3.service".to_owned(),
            }
        );
        let error = end.into_result("s switch").unwrap_err();
        assert!(
            error.contains("journalctl -u countersign-switch-3.service"),
            "{error}"
        );
        assert!(run.file("abandoned").exists());
        // A runner that arrives after the recovery does not run.
        let code = run_runner(&RunnerArgs {
            directory: run.directory.clone(),
            run: run.name.clone(),
            toplevel: toplevel().as_str().to_owned(),
            action: "switch".to_owned(),
        });
        assert_eq!(code, RUNNER_SKIPPED);
        assert!(!run.file("started").exists());
    }

    #[test]
    fn older_runs_are_removed() {
        let directory = tempfile::tempdir().unwrap();
        let finished = Run::target(directory.path(), 1);
        finished.open_lock().unwrap();
        fs::write(finished.file("started"), "").unwrap();
        fs::write(finished.file("log"), "output\n").unwrap();
        let abandoned = Run::target(directory.path(), 2);
        abandoned.open_lock().unwrap();
        let temporary = finished.directory.join(".switch-1.status.tmp");
        fs::write(&temporary, "").unwrap();
        let current = Run::next_base(directory.path(), 3);

        settle_other_runs(&current).unwrap();
        let mut names: Vec<String> = fs::read_dir(&current.directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["switch-2.abandoned"]);

        // A runner of the abandoned run that arrives now still skips.
        let code = run_runner(&RunnerArgs {
            directory: abandoned.directory.clone(),
            run: abandoned.name.clone(),
            toplevel: toplevel().as_str().to_owned(),
            action: "switch".to_owned(),
        });
        assert_eq!(code, RUNNER_SKIPPED);
        assert!(!abandoned.file("started").exists());
    }

    #[test]
    fn lock_errors_name_the_fix() {
        let run = Run::target(Path::new("/s"), 1);
        let no_locks = io::Error::from_raw_os_error(libc::ENOLCK);
        let message = run.lock_error("locking", &no_locks);
        assert!(
            message.contains("/s/switch-runs/switch-1.lock"),
            "{message}"
        );
        assert!(message.contains("supports flock(2)"), "{message}");
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        let message = run.lock_error("opening", &denied);
        assert!(message.contains("writable for root"), "{message}");
    }

    #[test]
    fn runs_path_taken_by_file_is_named() {
        let directory = tempfile::tempdir().unwrap();
        let runs = directory.path().join(SWITCH_RUNS_DIR);
        fs::write(&runs, "").unwrap();
        let run = Run::target(directory.path(), 3);
        let expected = format!(
            "{} must be a directory, so move away the file",
            runs.display()
        );
        let error = run.try_settle().unwrap_err();
        assert!(error.contains(&expected), "{error}");
        let error = settle_other_runs(&run).unwrap_err();
        assert!(error.contains(&expected), "{error}");
    }

    #[test]
    fn held_lock_means_running() {
        let directory = tempfile::tempdir().unwrap();
        let run = Run::target(directory.path(), 3);
        let lock = run.open_lock().unwrap();
        lock.lock().unwrap();
        assert_eq!(run.try_settle().unwrap(), None);
        assert!(!run.file("abandoned").exists());
        drop(lock);
        assert!(matches!(
            run.try_settle().unwrap(),
            Some(RunEnd::NeverStarted { .. })
        ));
    }

    #[test]
    fn recorded_status_is_read() {
        let directory = tempfile::tempdir().unwrap();
        let run = Run::target(directory.path(), 3);
        run.open_lock().unwrap();
        fs::write(run.file("started"), "1\n").unwrap();
        assert_eq!(run.try_settle().unwrap(), Some(RunEnd::DiedWithoutStatus));
        let record = StatusRecord {
            run: RunIdentity {
                proposal: 3,
                toplevel: toplevel(),
                action: Action::Switch,
            },
            outcome: RunStatus::Exited {
                wait_status: ExitStatus::from_raw(4 << 8).into_raw(),
            },
        };
        fs::write(run.file("status"), serde_json::to_vec(&record).unwrap())
            .unwrap();
        let end = run.try_settle().unwrap().unwrap();
        assert!(!end.succeeded());
        let error = end.into_result("s switch").unwrap_err();
        assert!(error.contains("exited with exit status: 4"), "{error}");
    }

    #[test]
    fn files_of_another_switch_are_not_this_run() {
        let directory = tempfile::tempdir().unwrap();
        let other = StorePath::parse(
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-a",
        )
        .unwrap();
        let run = Run::target(directory.path(), 3)
            .expecting(&toplevel(), Action::Switch);
        run.open_lock().unwrap();
        let marker = StartedMarker {
            pid: 1,
            run: RunIdentity {
                proposal: 3,
                toplevel: other.clone(),
                action: Action::Switch,
            },
        };
        fs::write(run.file("started"), serde_json::to_vec(&marker).unwrap())
            .unwrap();
        let end = run.try_settle().unwrap().unwrap();
        assert_eq!(
            end,
            RunEnd::NotThisRun {
                file: run.file("started"),
                found: format!("proposal 3, `{other}/{SWITCH_SCRIPT} switch`"),
            }
        );
        assert!(!end.succeeded());

        // A status of the same toplevel with another action does not
        // count either.
        let record = StatusRecord {
            run: RunIdentity {
                proposal: 3,
                toplevel: toplevel(),
                action: Action::Test,
            },
            outcome: RunStatus::Exited { wait_status: 0 },
        };
        fs::write(run.file("status"), serde_json::to_vec(&record).unwrap())
            .unwrap();
        let end = run.try_settle().unwrap().unwrap();
        assert!(matches!(end, RunEnd::NotThisRun { .. }), "{end:?}");
        let error = end.into_result("s switch").unwrap_err();
        assert!(error.contains("left by another activation"), "{error}");

        let matching = StatusRecord {
            run: RunIdentity {
                proposal: 3,
                toplevel: toplevel(),
                action: Action::Switch,
            },
            outcome: RunStatus::Exited { wait_status: 0 },
        };
        fs::write(run.file("status"), serde_json::to_vec(&matching).unwrap())
            .unwrap();
        assert!(run.try_settle().unwrap().unwrap().succeeded());
    }

    #[test]
    fn runner_exit_code_follows_script() {
        let exited = |code: i32| RunStatus::Exited {
            wait_status: ExitStatus::from_raw(code << 8).into_raw(),
        };
        assert_eq!(runner_exit_code(&exited(0)), 0);
        assert_eq!(runner_exit_code(&exited(4)), 4);
        let killed = RunStatus::Exited {
            wait_status: ExitStatus::from_raw(libc::SIGKILL).into_raw(),
        };
        assert_eq!(runner_exit_code(&killed), 128 + 9);
        let not_run = RunStatus::NotRun {
            error: "missing".to_owned(),
        };
        assert_eq!(runner_exit_code(&not_run), 1);
    }

    #[test]
    fn long_lines_arrive_in_pieces() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("log");
        let long = "x".repeat(MAX_LOG_LINE_BYTES + 10);
        fs::write(&path, format!("one\n{long}\ntail")).unwrap();
        let mut follower = LogFollower::open(&path).unwrap();
        let mut lines = Vec::new();
        follower.poll(&mut |line| lines.push(line.to_owned()));
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1].len(), MAX_LOG_LINE_BYTES);
        assert_eq!(lines[2], "x".repeat(10));
        follower.finish(&mut |line| lines.push(line.to_owned()));
        assert_eq!(lines.last().unwrap(), "tail");
    }
}
