//! Running external programs and turning their failures into errors.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::escape::escape_control_chars;

/// Number of standard error lines kept for an error message.
pub(crate) const STDERR_TAIL_LINES: usize = 25;

/// Maximum characters of standard error or output quoted in an error.
const QUOTE_MAX_CHARS: usize = 4000;

/// Maximum bytes of one standard error line passed on. The rest of a
/// longer line is read and dropped, so a builder that writes no line
/// break cannot make the reader hold its whole output.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Runs `command` with no standard input and returns its standard output,
/// or an error with the tail of its standard error when it exits non-zero.
pub(crate) fn run(command: &mut Command) -> Result<Vec<u8>> {
    let description = describe(command);
    tracing::debug!(command = %description, "running");
    let output = command.stdin(Stdio::null()).output().map_err(|source| {
        Error::Spawn {
            command: description.clone(),
            source,
        }
    })?;
    if !output.status.success() {
        return Err(failed(description, output.status, &output.stderr));
    }
    Ok(output.stdout)
}

/// Reads one line into `line`, at most [`MAX_LINE_BYTES`] of it, and
/// skips the rest of a longer line. Returns `None` at the end of the
/// stream, else the number of bytes skipped.
fn read_line_capped(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    let read = reader
        .by_ref()
        .take(MAX_LINE_BYTES as u64)
        .read_until(b'\n', line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') || read < MAX_LINE_BYTES {
        return Ok(Some(0));
    }
    let mut skipped = 0;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(Some(skipped));
        }
        match buffer.iter().position(|byte| *byte == b'\n') {
            Some(end) => {
                reader.consume(end + 1);
                return Ok(Some(skipped + end));
            }
            None => {
                let length = buffer.len();
                reader.consume(length);
                skipped += length;
            }
        }
    }
}

/// How long a timed-out command has after SIGTERM before SIGKILL. On
/// SIGTERM, Nix stops the builds it runs itself and disconnects from the
/// nix-daemon, which then stops the builds it ran for that client (seen
/// with Nix 2.8, with and without a daemon).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs `command`, passes each line of its standard error to `on_line` as
/// soon as it arrives, and returns its standard output. On failure the
/// error quotes the last lines of standard error.
///
/// With a `timeout`, the command runs in a process group of its own, and
/// the group gets SIGTERM once the time is up and SIGKILL
/// [`STOP_GRACE`] later. The error is then [`Error::TimedOut`].
pub(crate) fn run_streaming(
    command: &mut Command,
    timeout: Option<Duration>,
    on_line: &mut dyn FnMut(&str),
) -> Result<Vec<u8>> {
    let description = describe(command);
    tracing::debug!(command = %description, "running");
    if timeout.is_some() {
        command.process_group(0);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: description.clone(),
            source,
        })?;

    let watchdog =
        timeout.map(|limit| Watchdog::start(&description, child.id(), limit));

    // Standard output is read on its own thread, so that a child which
    // fills the output pipe cannot block while this thread waits for
    // standard error.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stdout_reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        stdout.read_to_end(&mut bytes).map(|_| bytes)
    });

    let stderr = child.stderr.take().expect("stderr is piped");
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = read_line_capped(&mut reader, &mut line);
        let cut = match read {
            Ok(None) => break,
            Ok(Some(cut)) => cut,
            Err(error) => {
                tracing::warn!(
                    command = %description,
                    %error,
                    "reading standard error failed"
                );
                break;
            }
        };
        let text = String::from_utf8_lossy(&line);
        let mut text = text.trim_end_matches(['\n', '\r']).to_owned();
        if cut > 0 {
            text.push_str(&format!(
                " [{cut} more bytes of this line dropped]"
            ));
        }
        on_line(&text);
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
    }

    let status = child.wait().map_err(|source| Error::Spawn {
        command: description.clone(),
        source,
    })?;
    if let (Some(watchdog), Some(limit)) = (watchdog, timeout)
        && watchdog.finish()
    {
        return Err(Error::TimedOut {
            command: description,
            seconds: limit.as_secs(),
            stderr_tail: stderr_tail(Vec::from(tail).join("\n").as_bytes()),
        });
    }
    let stdout = stdout_reader
        .join()
        .expect("the stdout reader does not panic")
        .map_err(|source| Error::Spawn {
            command: description.clone(),
            source,
        })?;
    if !status.success() {
        let joined = Vec::from(tail).join("\n");
        return Err(failed(description, status, joined.as_bytes()));
    }
    Ok(stdout)
}

/// A thread that stops a process group once its time limit is up.
struct Watchdog {
    exited: mpsc::Sender<()>,
    thread: JoinHandle<bool>,
}

impl Watchdog {
    /// Starts watching the process group led by `pid`.
    fn start(description: &str, pid: u32, limit: Duration) -> Self {
        let (exited, exit_received) = mpsc::channel::<()>();
        let description = description.to_owned();
        let thread = thread::spawn(move || {
            let expired = |wait| {
                exit_received.recv_timeout(wait)
                    == Err(RecvTimeoutError::Timeout)
            };
            if !expired(limit) {
                return false;
            }
            tracing::warn!(
                command = %description,
                seconds = limit.as_secs(),
                "command timed out; stopping it"
            );
            signal_group(pid, rustix::process::Signal::TERM);
            if expired(STOP_GRACE) {
                signal_group(pid, rustix::process::Signal::KILL);
            }
            true
        });
        Self { exited, thread }
    }

    /// Ends the watch after the process has exited, and returns whether
    /// the watchdog stopped it. Call it before anything else reaps the
    /// process, so that the group id cannot belong to another process
    /// when the signal goes out.
    fn finish(self) -> bool {
        drop(self.exited);
        self.thread.join().unwrap_or(false)
    }
}

/// Sends `signal` to the process group `leader`, logging a failure.
fn signal_group(leader: u32, signal: rustix::process::Signal) {
    let Some(pid) = i32::try_from(leader)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(error) = rustix::process::kill_process_group(pid, signal) {
        // ESRCH: every process of the group has exited already.
        if error != rustix::io::Errno::SRCH {
            tracing::warn!(%error, group = leader, "cannot signal the group");
        }
    }
}

/// Builds the error for a command that exited unsuccessfully.
pub(crate) fn failed(
    command: String,
    status: ExitStatus,
    stderr: &[u8],
) -> Error {
    Error::CommandFailed {
        command,
        status: status.to_string(),
        stderr_tail: stderr_tail(stderr),
    }
}

/// Builds the error for output that does not have the expected form.
pub(crate) fn unexpected(
    command: &Command,
    reason: impl Into<String>,
    output: &[u8],
) -> Error {
    Error::UnexpectedOutput {
        command: describe(command),
        reason: reason.into(),
        output: quote(&String::from_utf8_lossy(output)),
    }
}

/// Formats the program and its arguments, quoted where needed, for
/// messages.
/// Environment variables are left out because they may carry settings
/// that do not belong in logs.
pub(crate) fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    for arg in command.get_args() {
        let arg = arg.to_string_lossy();
        let plain = !arg.is_empty()
            && arg.chars().all(|c| {
                c.is_ascii_alphanumeric() || "-_./:=@+,%#?&".contains(c)
            });
        if plain {
            words.push(arg.into_owned());
        } else {
            words.push(format!("'{}'", arg.replace('\'', "'\\''")));
        }
    }
    escape_control_chars(&words.join(" ")).into_owned()
}

/// Returns the last lines of standard error, without empty lines,
/// escaped and cut to a length that fits a log line.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let tail = lines[start..].join("\n");
    if tail.is_empty() {
        return "(no output on standard error)".to_owned();
    }
    quote(&tail)
}

/// Escapes control characters except line breaks, and keeps at most
/// the last [`QUOTE_MAX_CHARS`] characters.
fn quote(text: &str) -> String {
    let escaped: Vec<String> = text
        .split('\n')
        .map(|line| escape_control_chars(line).into_owned())
        .collect();
    let joined = escaped.join("\n");
    let count = joined.chars().count();
    if count <= QUOTE_MAX_CHARS {
        return joined;
    }
    let skip = count - QUOTE_MAX_CHARS;
    let kept: String = joined.chars().skip(skip).collect();
    format!("...{kept}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed_out_seconds(script: &str, limit: Duration) -> (u64, String) {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        match run_streaming(&mut command, Some(limit), &mut |_| {}) {
            Err(Error::TimedOut {
                seconds,
                stderr_tail,
                ..
            }) => (seconds, stderr_tail),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn timeout_stops_the_process_group() {
        let folder = tempfile::tempdir().unwrap();
        let marker = folder.path().join("survived");
        // The `sleep` in the background is in the command's group, so
        // the stop reaches it too; it would write the marker after 3 s.
        let script = format!(
            "echo started >&2; (sleep 3; touch {}) & sleep 60",
            marker.display()
        );
        let (seconds, tail) =
            timed_out_seconds(&script, Duration::from_secs(1));
        assert_eq!(seconds, 1);
        assert!(tail.contains("started"), "{tail}");
        std::thread::sleep(Duration::from_secs(4));
        assert!(!marker.exists(), "a process of the group kept running");
    }

    #[test]
    fn timeout_kills_what_ignores_sigterm() {
        let (_, tail) = timed_out_seconds(
            "trap '' TERM; echo ignoring >&2; sleep 60",
            Duration::from_secs(1),
        );
        assert!(tail.contains("ignoring"), "{tail}");
    }

    #[test]
    fn command_within_its_time_succeeds() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo done"]);
        let stdout = run_streaming(
            &mut command,
            Some(Duration::from_secs(30)),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(stdout, b"done\n");
    }

    #[test]
    fn describe_quotes_spaces_and_quotes() {
        let mut command = Command::new("nix");
        command.args(["build", "a b", "it's"]);
        assert_eq!(describe(&command), "nix build 'a b' 'it'\\''s'");
    }

    #[test]
    fn stderr_tail_keeps_last_lines() {
        let text: String = (0..40).map(|i| format!("line {i}\n")).collect();
        let tail = stderr_tail(text.as_bytes());
        assert!(tail.starts_with("line 15\n"), "{tail}");
        assert!(tail.ends_with("line 39"), "{tail}");
    }

    #[test]
    fn failing_command_reports_stderr() {
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "echo first >&2; echo boom >&2; exit 3"]);
        let error = run(&mut command).unwrap_err().to_string();
        assert!(error.contains("/bin/sh -c"), "{error}");
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(error.contains("boom"), "{error}");
    }

    #[test]
    fn streaming_passes_lines_in_order() {
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "echo out; echo a >&2; echo b >&2"]);
        let mut lines = Vec::new();
        let stdout = run_streaming(&mut command, None, &mut |line| {
            lines.push(line.to_owned())
        })
        .unwrap();
        assert_eq!(stdout, b"out\n");
        assert_eq!(lines, ["a", "b"]);
    }

    #[test]
    fn streaming_cuts_a_long_line() {
        // 200,000 bytes without a line break from a real process, then a
        // short line: the long one is cut at the cap, and the next line
        // still arrives whole.
        let mut command = Command::new("/bin/sh");
        command.args([
            "-c",
            "head -c 200000 /dev/zero | tr '\\0' x >&2; echo >&2; echo next >&2",
        ]);
        let mut lines = Vec::new();
        run_streaming(&mut command, None, &mut |line| {
            lines.push(line.to_owned())
        })
        .unwrap();
        assert_eq!(lines.len(), 2, "{:?}", lines.iter().map(String::len));
        let dropped = 200_000 - MAX_LINE_BYTES;
        assert_eq!(
            lines[0],
            format!(
                "{} [{dropped} more bytes of this line dropped]",
                "x".repeat(MAX_LINE_BYTES)
            )
        );
        assert_eq!(lines[1], "next");
    }

    #[test]
    fn capped_read_handles_exact_and_unterminated_lines() {
        let exact = "y".repeat(MAX_LINE_BYTES);
        let input = format!("{exact}\nshort");
        let mut reader = std::io::Cursor::new(input.into_bytes());
        let mut line = Vec::new();
        // A line of exactly the cap, without its line break yet, loses
        // only that line break.
        assert_eq!(read_line_capped(&mut reader, &mut line).unwrap(), Some(0));
        assert_eq!(line.len(), MAX_LINE_BYTES);
        line.clear();
        assert_eq!(read_line_capped(&mut reader, &mut line).unwrap(), Some(0));
        assert_eq!(line, b"short");
        line.clear();
        assert_eq!(read_line_capped(&mut reader, &mut line).unwrap(), None);
    }
}
