//! Running the administrator's commands (pre-switch commands and health
//! checks) with a deadline.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::nix::{CLEAN_PATH, describe};

/// Maximum bytes of one output line; a longer line arrives in pieces.
const MAX_LINE_BYTES: u64 = 16 * 1024;

/// How often a running command is checked for its exit.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long output may still arrive after the command exited. A process
/// that the command left running in the background may hold its output
/// open for longer; its lines are then dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A failure of a command that [`run_until`] ran.
#[derive(Debug)]
pub(crate) enum CommandError {
    /// The command could not be started.
    Start(String),
    /// The command exited with a status other than 0.
    Exit(String),
    /// The deadline passed; the command and its process group were
    /// killed.
    TimedOut(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Start(message)
            | Self::Exit(message)
            | Self::TimedOut(message) => f.write_str(message),
        }
    }
}

/// Builds a command with a cleared environment that contains `PATH` and
/// `variables`, running in `/` with no input.
pub(crate) fn clean_command(
    argv: &[String],
    variables: &[(&str, String)],
) -> Command {
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .current_dir("/");
    if let Some(archive) = std::env::var_os("LOCALE_ARCHIVE") {
        command.env("LOCALE_ARCHIVE", archive);
    }
    for (name, value) in variables {
        command.env(name, value);
    }
    command
}

/// Runs `command` until it exits or `deadline` passes, and passes each
/// line of its standard output and standard error to `on_line`.
///
/// The command runs in a process group of its own, which is killed with
/// `SIGKILL` at the deadline, so that a shell's children do not outlive
/// it.
pub(crate) fn run_until(
    command: &mut Command,
    deadline: Instant,
    on_line: &mut dyn FnMut(&str),
) -> Result<(), CommandError> {
    let description = describe(command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command.spawn().map_err(|error| {
        CommandError::Start(format!("cannot start `{description}`: {error}"))
    })?;
    let (sender, receiver) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    forward_lines(stdout, sender.clone());
    forward_lines(stderr, sender);

    let status = loop {
        match receiver.recv_timeout(POLL_INTERVAL) {
            Ok(line) => on_line(&line),
            Err(
                RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected,
            ) => {}
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(error) => {
                kill_group(&mut child);
                return Err(CommandError::Start(format!(
                    "cannot wait for `{description}`: {error}"
                )));
            }
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            drain(&receiver, on_line);
            return Err(CommandError::TimedOut(format!(
                "`{description}` timed out and was killed"
            )));
        }
    };
    drain(&receiver, on_line);
    check_status(&description, status)
}

fn check_status(
    description: &str,
    status: ExitStatus,
) -> Result<(), CommandError> {
    if status.success() {
        Ok(())
    } else {
        Err(CommandError::Exit(format!(
            "`{description}` exited with {status}"
        )))
    }
}

/// Passes on the lines that are still buffered or arrive shortly.
fn drain(receiver: &mpsc::Receiver<String>, on_line: &mut dyn FnMut(&str)) {
    let until = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => on_line(&line),
            Err(_) => return,
        }
    }
}

/// Kills the process group that `child` leads, then `child` itself in
/// case the group could not be signalled, and reaps it.
fn kill_group(child: &mut Child) {
    // The command runs in a process group of its own (`process_group(0)`
    // when spawned), led by the child, so the group id is the child's id.
    let group = child.id() as libc::pid_t;
    // SAFETY: killpg only sends a signal; the group was made for this
    // command, and a group that is gone already makes it fail with ESRCH.
    let killed = unsafe { libc::killpg(group, libc::SIGKILL) } == 0;
    if !killed {
        tracing::warn!(
            pid = child.id(),
            "cannot kill the process group of a timed-out command; killing \
             the command alone"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends each line of `stream` to `sender` from a thread of its own. The
/// thread is not joined: it ends when the last process holding the
/// stream open exits.
fn forward_lines(
    stream: impl Read + Send + 'static,
    sender: mpsc::Sender<String>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut reader)
                .take(MAX_LINE_BYTES)
                .read_until(b'\n', &mut line)
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']).to_owned();
            if sender.send(text).is_err() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    #[test]
    fn output_and_status_are_reported() {
        let mut lines = Vec::new();
        let mut command = clean_command(
            &argv(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]),
            &[],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = run_until(&mut command, deadline, &mut |line| {
            lines.push(line.to_owned());
        })
        .unwrap_err();
        assert!(matches!(error, CommandError::Exit(_)), "{error}");
        assert!(error.to_string().contains("exit status: 3"), "{error}");
        lines.sort();
        assert_eq!(lines, ["err", "out"]);
    }

    #[test]
    fn environment_is_cleared() {
        let mut lines = Vec::new();
        let mut command = clean_command(
            &argv(&["/bin/sh", "-c", "echo \"$HOME|$COUNTERSIGN_X|$PATH\""]),
            &[("COUNTERSIGN_X", "7".to_owned())],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        run_until(&mut command, deadline, &mut |line| {
            lines.push(line.to_owned());
        })
        .unwrap();
        assert_eq!(lines, [format!("|7|{CLEAN_PATH}")]);
    }

    #[test]
    fn deadline_kills_process_group() {
        let directory = tempfile::tempdir().unwrap();
        let marker = directory.path().join("survived");
        let script = format!("(sleep 2; touch {}) & wait", marker.display());
        let mut command =
            clean_command(&argv(&["/bin/sh", "-c", &script]), &[]);
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let error =
            run_until(&mut command, deadline, &mut |_| {}).unwrap_err();
        assert!(matches!(error, CommandError::TimedOut(_)), "{error}");
        assert!(started.elapsed() < Duration::from_secs(2));
        thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "the background child was not killed");
    }

    #[test]
    fn missing_program_fails_to_start() {
        let mut command =
            clean_command(&argv(&["/nonexistent/countersign-check"]), &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let error =
            run_until(&mut command, deadline, &mut |_| {}).unwrap_err();
        assert!(matches!(error, CommandError::Start(_)), "{error}");
    }
}
