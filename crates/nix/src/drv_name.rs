//! Package names and versions from store path names.

/// Splits a derivation name into name and version the way Nix's
/// `builtins.parseDrvName` does: at the first `-` that is followed by a
/// character other than an ASCII letter. Without such a dash the whole
/// text is the name and the version is empty.
///
/// `hello-2.12.1` gives `hello` and `2.12.1`; `apache-httpd-2.0.48`
/// gives `apache-httpd` and `2.0.48`; `linux-6.6.63-modules` gives
/// `linux` and `6.6.63-modules`.
pub fn parse_drv_name(text: &str) -> (&str, &str) {
    let bytes = text.as_bytes();
    for (index, &byte) in bytes.iter().enumerate() {
        if byte != b'-' {
            continue;
        }
        match bytes.get(index + 1) {
            Some(next) if !next.is_ascii_alphabetic() => {
                return (&text[..index], &text[index + 1..]);
            }
            _ => {}
        }
    }
    (text, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_drv_name_cases() {
        let cases = [
            ("hello-2.12.1", "hello", "2.12.1"),
            ("apache-httpd-2.0.48", "apache-httpd", "2.0.48"),
            (
                "python3.12-requests-2.32.3",
                "python3.12-requests",
                "2.32.3",
            ),
            ("linux-6.6.63-modules", "linux", "6.6.63-modules"),
            (
                "unit-script-sshd-keygen-start",
                "unit-script-sshd-keygen-start",
                "",
            ),
            (
                "nixos-system-web-25.05.20250101",
                "nixos-system-web",
                "25.05.20250101",
            ),
            ("odd-_x", "odd", "_x"),
            ("dot-.x", "dot", ".x"),
            ("trailing-", "trailing-", ""),
            ("source", "source", ""),
            ("", "", ""),
        ];
        for (text, name, version) in cases {
            assert_eq!(parse_drv_name(text), (name, version), "{text}");
        }
    }
}
