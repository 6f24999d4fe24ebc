//! Secrets taken out of texts before they are diffed.
//!
//! `users-groups.json` and similar generated files carry password
//! hashes and sometimes clear-text passwords. The diff document is
//! shown to every approver and kept by the server, so the value of such
//! a field never enters it: the text diff shows a placeholder, and the
//! alerts state only that the field changed.

/// JSON keys whose string values are passwords or password hashes.
const SECRET_KEYS: &[&str] = &[
    "hashedPassword",
    "password",
    "initialPassword",
    "initialHashedPassword",
];

/// The placeholder that replaces a secret value.
pub const REDACTED: &str = "<redacted>";

/// Replaces the string values of [`SECRET_KEYS`] in JSON text and every
/// crypt(3) hash (`$1$`, `$5$`, `$6$`, `$y$`, `$2b$`, ...) anywhere in
/// `text` by [`REDACTED`]. An empty value stays empty, because that it
/// is empty (a login without password) is what an approver must see.
pub fn redact_secrets(text: &str) -> String {
    redact_crypt_hashes(&redact_json_values(text))
}

fn redact_json_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while let Some(quote) = rest.find('"') {
        for key in SECRET_KEYS {
            let pattern = format!("\"{key}\"");
            if !rest[quote..].starts_with(&pattern) {
                continue;
            }
            let after_key = &rest[quote + pattern.len()..];
            let trimmed = after_key.trim_start();
            let Some(value) = trimmed.strip_prefix(':') else {
                continue;
            };
            let value = value.trim_start();
            if !value.starts_with('"') {
                continue;
            }
            let Some(length) = string_length(&value[1..]) else {
                continue;
            };
            let value_start = text_offset(rest, value) + 1;
            out.push_str(&rest[..value_start]);
            if length > 0 {
                out.push_str(REDACTED);
            }
            rest = &rest[value_start + length..];
            continue 'scan;
        }
        out.push_str(&rest[..=quote]);
        rest = &rest[quote + 1..];
    }
    out.push_str(rest);
    out
}

/// Length in bytes of a JSON string body up to its closing quote.
fn string_length(body: &str) -> Option<usize> {
    let mut escaped = false;
    for (index, byte) in body.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(index),
            _ => {}
        }
    }
    None
}

fn text_offset(outer: &str, inner: &str) -> usize {
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// Replaces `$<id>$<salt>$<hash>` style crypt hashes.
fn redact_crypt_hashes(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'$'
            && let Some(length) = crypt_hash_length(&text[index..])
        {
            out.push_str(&text[last..index]);
            out.push_str(REDACTED);
            index += length;
            last = index;
            continue;
        }
        index += 1;
    }
    out.push_str(&text[last..]);
    out
}

/// If `text` starts with a crypt hash, its length: an identifier of
/// letters and digits between dollar signs, then at least two more
/// `$`-separated fields of hash characters, the last one long.
fn crypt_hash_length(text: &str) -> Option<usize> {
    let hash_char =
        |b: u8| b.is_ascii_alphanumeric() || b"./=+-,".contains(&b);
    let length = text
        .bytes()
        .skip(1)
        .take_while(|&b| hash_char(b) || b == b'$')
        .count()
        + 1;
    let candidate = &text[..length];
    let fields: Vec<&str> = candidate[1..].split('$').collect();
    let id = fields.first()?;
    let known = [
        "1", "2a", "2b", "2y", "5", "6", "7", "y", "gy", "sha1", "md5",
    ];
    let is_argon = id.starts_with("argon2");
    if !(known.contains(id) || is_argon) || fields.len() < 3 {
        return None;
    }
    let last = fields.last()?;
    (last.len() >= 20).then_some(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_password_values_are_redacted() {
        let text = r#"{"hashedPassword":"$6$abc$def","name":"alice","password":"hunter2","initialPassword":null,"x":"password"}"#;
        let redacted = redact_secrets(text);
        assert_eq!(
            redacted,
            r#"{"hashedPassword":"<redacted>","name":"alice","password":"<redacted>","initialPassword":null,"x":"password"}"#
        );
    }

    #[test]
    fn empty_password_stays_visible() {
        let text = r#"{"hashedPassword": ""}"#;
        assert_eq!(redact_secrets(text), text);
    }

    #[test]
    fn crypt_hashes_in_any_text_are_redacted() {
        let hash = "$6$rounds=5000$saltsalt$\
                    Jd8uqaNHsL1b0oq5JQXx3rlQZ6bxm2mGkqV9m5F7Ln0u0/";
        let text =
            format!("SetCredential=passwd.hashed-password.root:{hash}\n");
        let redacted = redact_secrets(&text);
        assert_eq!(
            redacted,
            "SetCredential=passwd.hashed-password.root:<redacted>\n"
        );
        let yescrypt = "root:$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7:";
        assert!(!redact_secrets(yescrypt).contains("X3DX6M94"));
    }

    #[test]
    fn ordinary_dollars_are_kept() {
        for text in ["echo $HOME", "a $1 b", "PATH=$PATH:$i/bin", "$$"] {
            assert_eq!(redact_secrets(text), text);
        }
    }
}
