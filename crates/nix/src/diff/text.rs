//! Line diffs of text files, as unified hunks.

use serde::{Deserialize, Serialize};
use similar::{ChangeTag, TextDiff};

/// Lines of context around each change, as in `diff -u`.
const CONTEXT_LINES: usize = 3;

/// The marker line that follows a line without a final newline.
pub const NO_NEWLINE_MARKER: &str = "\\ No newline at end of file";

/// One hunk of a unified diff. Line numbers start at 1; a start of 0
/// with a count of 0 means the side is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hunk {
    pub old_start: usize,
    pub old_lines: usize,
    pub new_start: usize,
    pub new_lines: usize,
    /// Each line starts with `+`, `-` or a space, without its newline;
    /// [`NO_NEWLINE_MARKER`] follows a line that has none.
    pub lines: Vec<String>,
}

impl Hunk {
    /// Formats the `@@ -a,b +c,d @@` header.
    pub fn header(&self) -> String {
        format!(
            "@@ -{},{} +{},{} @@",
            self.old_start, self.old_lines, self.new_start, self.new_lines
        )
    }
}

/// A text diff with its line counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TextChange {
    pub hunks: Vec<Hunk>,
    pub added: u64,
    pub removed: u64,
}

/// Diffs two texts line by line with Myers' algorithm. No deadline is
/// set, so the result depends on the input only; callers cap the input
/// size instead.
pub(crate) fn diff_lines(old: &str, new: &str) -> TextChange {
    let diff = TextDiff::from_lines(old, new);
    let mut change = TextChange {
        hunks: Vec::new(),
        added: 0,
        removed: 0,
    };
    for group in diff.grouped_ops(CONTEXT_LINES) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let old_range = first.old_range().start..last.old_range().end;
        let new_range = first.new_range().start..last.new_range().end;
        let mut lines = Vec::new();
        for op in &group {
            for line in diff.iter_changes(op) {
                let sign = match line.tag() {
                    ChangeTag::Equal => ' ',
                    ChangeTag::Delete => {
                        change.removed += 1;
                        '-'
                    }
                    ChangeTag::Insert => {
                        change.added += 1;
                        '+'
                    }
                };
                let text = line.value();
                let text = text.strip_suffix('\n').unwrap_or(text);
                lines.push(format!("{sign}{text}"));
                if line.missing_newline() {
                    lines.push(NO_NEWLINE_MARKER.to_owned());
                }
            }
        }
        change.hunks.push(Hunk {
            old_start: start_line(&old_range),
            old_lines: old_range.len(),
            new_start: start_line(&new_range),
            new_lines: new_range.len(),
            lines,
        });
    }
    change
}

/// Line number of a range's start for a hunk header, as `diff -u`
/// writes it: 1-based, and 0 for an empty range at the start.
fn start_line(range: &std::ops::Range<usize>) -> usize {
    if range.is_empty() {
        range.start
    } else {
        range.start + 1
    }
}

/// Returns `bytes` as text if they are valid UTF-8 without NUL bytes in
/// the first 8000 bytes, the window git inspects for the same decision.
pub(crate) fn as_text(bytes: &[u8]) -> Option<&str> {
    if bytes[..bytes.len().min(8000)].contains(&0) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_changed_line() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        let change = diff_lines(old, new);
        assert_eq!(change.added, 1);
        assert_eq!(change.removed, 1);
        assert_eq!(change.hunks.len(), 1);
        let hunk = &change.hunks[0];
        assert_eq!(hunk.header(), "@@ -2,7 +2,7 @@");
        assert_eq!(
            hunk.lines,
            [" b", " c", " d", "-e", "+E", " f", " g", " h"]
        );
    }

    #[test]
    fn added_file_starts_at_zero() {
        let change = diff_lines("", "x\ny\n");
        assert_eq!(change.hunks[0].header(), "@@ -0,0 +1,2 @@");
        assert_eq!(change.added, 2);
    }

    #[test]
    fn missing_final_newline_is_marked() {
        let change = diff_lines("a\n", "a\nb");
        assert_eq!(change.hunks[0].lines, [" a", "+b", NO_NEWLINE_MARKER]);
    }

    #[test]
    fn identical_texts_have_no_hunks() {
        assert!(diff_lines("same\n", "same\n").hunks.is_empty());
    }

    #[test]
    fn binary_detection() {
        assert_eq!(as_text(b"plain"), Some("plain"));
        assert_eq!(as_text(b"nul\0byte"), None);
        assert_eq!(as_text(&[0xff, 0xfe]), None);
    }
}
