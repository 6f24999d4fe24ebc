//! Output for terminals. Text from a repository (commit subjects, file
//! names) could hold escape sequences that rewrite what an approver sees,
//! so every such string passes through [`sanitize`] before printing.

use countersign_nix::{escape_control_chars, escape_json_output};
use serde::Serialize;

/// Escapes control and bidirectional formatting characters other than
/// newline and tab, with the same escapes as the diff's text rendering.
pub fn sanitize(text: &str) -> String {
    text.split('\n')
        .map(|line| {
            line.split('\t')
                .map(escape_control_chars)
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints `value` as pretty JSON with invisible and bidirectional
/// characters escaped, so that text from a repository cannot reorder
/// what `jq` or a terminal shows.
pub fn print_json(value: &impl Serialize) -> serde_json::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    println!("{}", escape_json_output(&json));
    Ok(())
}

/// Formats a duration in seconds for people: `3 h 12 min`, `45 s`.
pub fn format_duration(seconds: i64) -> String {
    let sign = if seconds < 0 { "-" } else { "" };
    let seconds = seconds.unsigned_abs();
    if seconds >= 3600 {
        format!("{sign}{} h {} min", seconds / 3600, seconds % 3600 / 60)
    } else if seconds >= 60 {
        format!("{sign}{} min", seconds / 60)
    } else {
        format!("{sign}{seconds} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_terminal_controls() {
        assert_eq!(sanitize("a\u{1b}[2Jb"), "a\\x1b[2Jb");
        assert_eq!(sanitize("x\ry"), "x\\x0dy");
        assert_eq!(sanitize("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(sanitize("keep\ttab\nline"), "keep\ttab\nline");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(45), "45 s");
        assert_eq!(format_duration(600), "10 min");
        assert_eq!(format_duration(3 * 3600 + 720), "3 h 12 min");
    }
}
