//! Escaping of text that came from a repository or a build.
//!
//! File names, diff lines, commit subjects and build output come from
//! the repository, so anyone who can push to it controls them. Printed
//! raw, an ESC byte could
//! move the cursor, rewrite earlier lines or change the window title, and
//! a bidirectional override could make a line read differently from what
//! it is. Every such character is shown as a visible escape instead.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Replaces control characters and bidirectional formatting characters
/// with visible escapes: `\x1b` for C0, DEL and C1 controls, `\u{202e}`
/// for the others. A backslash is left as it is, so the output is for
/// display only and is not meant to be unescaped.
pub fn escape_control_chars(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !needs_escape(c) {
            escaped.push(c);
        } else if (c as u32) < 0x100 {
            let _ = write!(escaped, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(escaped, "\\u{{{:04x}}}", c as u32);
        }
    }
    Cow::Owned(escaped)
}

/// Escapes, as JSON `\uXXXX` escapes, the characters of serialized JSON
/// that [`escape_control_chars`] would escape and that serde_json writes
/// raw: DEL, C1 controls, bidirectional formatting characters, and
/// zero-width characters and spaces other than U+0020. JSON's structure
/// is ASCII, so every such character sits inside a string, and the
/// result parses to the same value. A line break or tab outside strings
/// is the layout of pretty-printed JSON and stays.
pub fn escape_json_output(json: &str) -> Cow<'_, str> {
    let escaped = |c: char| needs_escape(c) && !matches!(c, '\n' | '\t');
    if !json.chars().any(escaped) {
        return Cow::Borrowed(json);
    }
    let mut output = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if escaped(c) {
            // Every escaped character is in the Basic Multilingual
            // Plane, so one `\uXXXX` escape represents it.
            let _ = write!(output, "\\u{:04x}", c as u32);
        } else {
            output.push(c);
        }
    }
    Cow::Owned(output)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || is_bidi_control(c) || is_invisible_or_space(c)
}

/// Tells whether `c` is a zero-width character or a space other than
/// U+0020. Both look like nothing or like a plain space, yet systemd,
/// sudo and shells treat them as part of a word, so `User\u{a0}=root`
/// would read as a setting that systemd ignores.
fn is_invisible_or_space(c: char) -> bool {
    matches!(
        c,
        '\u{00a0}'
            | '\u{00ad}'
            | '\u{1680}'
            | '\u{180e}'
            | '\u{2000}'..='\u{200d}'
            | '\u{202f}'
            | '\u{205f}'..='\u{2064}'
            | '\u{3000}'
            | '\u{feff}'
    )
}

/// Tells whether `c` is a Unicode bidirectional embedding, override or
/// isolate character, or a line or paragraph separator, which some
/// terminals treat as line breaks.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output_keeps_its_value() {
        let value = serde_json::json!({
            "subject": "a\u{202e}b\u{7f}c\u{85}d\u{a0}e",
            "plain": "line\nnext\té",
        });
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let escaped = escape_json_output(&pretty);
        for raw in ['\u{202e}', '\u{7f}', '\u{85}', '\u{a0}'] {
            assert!(!escaped.contains(raw), "{escaped}");
        }
        assert!(escaped.contains("\\u202e"), "{escaped}");
        assert!(escaped.contains('é'), "{escaped}");
        let parsed: serde_json::Value =
            serde_json::from_str(&escaped).unwrap();
        assert_eq!(parsed, value);
        assert!(matches!(
            escape_json_output("{\n  \"a\": 1\n}"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(
            escape_control_chars("hello world"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn controls_become_visible() {
        assert_eq!(escape_control_chars("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escape_control_chars("tab\there"), "tab\\x09here");
        assert_eq!(escape_control_chars("nl\n"), "nl\\x0a");
        assert_eq!(escape_control_chars("del\x7f"), "del\\x7f");
        assert_eq!(escape_control_chars("c1\u{9b}"), "c1\\x9b");
    }

    #[test]
    fn invisible_characters_become_visible() {
        assert_eq!(escape_control_chars("User\u{a0}=x"), "User\\xa0=x");
        assert_eq!(escape_control_chars("ro\u{200b}ot"), "ro\\u{200b}ot");
        assert_eq!(escape_control_chars("\u{feff}a"), "\\u{feff}a");
        assert_eq!(escape_control_chars("a\u{2003}b"), "a\\u{2003}b");
        assert_eq!(escape_control_chars("a\u{2060}b"), "a\\u{2060}b");
        assert_eq!(escape_control_chars("é ü"), "é ü");
    }

    #[test]
    fn bidi_overrides_become_visible() {
        assert_eq!(escape_control_chars("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(escape_control_chars("\u{2066}"), "\\u{2066}");
    }

    #[test]
    fn other_unicode_is_kept() {
        assert_eq!(escape_control_chars("größe ✓"), "größe ✓");
    }
}
