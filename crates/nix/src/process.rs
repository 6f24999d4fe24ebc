//! Running external programs and turning their failures into errors.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;

use crate::error::{Error, Result};
use crate::escape::escape_control_chars;

/// Number of standard error lines kept for an error message.
pub(crate) const STDERR_TAIL_LINES: usize = 25;

/// Maximum characters of standard error or output quoted in an error.
const QUOTE_MAX_CHARS: usize = 4000;

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

/// Runs `command`, passes each line of its standard error to `on_line` as
/// soon as it arrives, and returns its standard output. On failure the
/// error quotes the last lines of standard error.
pub(crate) fn run_streaming(
    command: &mut Command,
    on_line: &mut dyn FnMut(&str),
) -> Result<Vec<u8>> {
    let description = describe(command);
    tracing::debug!(command = %description, "running");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: description.clone(),
            source,
        })?;

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
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(
                    command = %description,
                    %error,
                    "reading standard error failed"
                );
                break;
            }
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        on_line(text);
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text.to_owned());
    }

    let status = child.wait().map_err(|source| Error::Spawn {
        command: description.clone(),
        source,
    })?;
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
        let stdout = run_streaming(&mut command, &mut |line| {
            lines.push(line.to_owned())
        })
        .unwrap();
        assert_eq!(stdout, b"out\n");
        assert_eq!(lines, ["a", "b"]);
    }
}
