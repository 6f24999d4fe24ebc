//! The `[web]` table of the server configuration.
//!
//! The origin the pages are served from is configured here, but the
//! values that decide whether a passkey signature counts (the relying
//! party ID and the accepted origins) come only from the policy's
//! `[webauthn]` table, never from this file or from a request.

use std::net::IpAddr;

use serde::Deserialize;

/// Settings of the web pages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Whether the pages, passkey sign-in and enrolment are served.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The address approvers open in their browser, such as
    /// `https://countersign.example.org`: scheme, host and port only.
    /// Plain `http` is accepted only for `localhost` and loopback
    /// addresses, because browsers allow passkeys nowhere else without
    /// TLS.
    pub public_origin: String,
    /// Addresses of reverse proxies whose `X-Forwarded-For` header is
    /// believed. Requests from any other address are attributed to
    /// their TCP peer, whatever they claim.
    #[serde(default)]
    pub trusted_proxies: Vec<IpAddr>,
}

fn default_enabled() -> bool {
    true
}

/// A public origin, checked and split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicOrigin {
    /// The origin exactly as browsers serialise it, without a trailing
    /// slash: `https://host` or `https://host:port`.
    pub origin: String,
    /// Whether the origin is `https`; the session cookie then gets the
    /// `Secure` attribute and the `__Host-` name prefix.
    pub secure: bool,
}

impl WebConfig {
    /// Checks the settings and returns the parsed origin.
    pub fn check(&self) -> Result<PublicOrigin, String> {
        parse_origin(&self.public_origin)
    }
}

/// Parses `text` as an origin: `http` or `https`, a host, an optional
/// port, and nothing else (no user, path, query or fragment).
pub fn parse_origin(text: &str) -> Result<PublicOrigin, String> {
    let invalid = |why: &str| {
        Err(format!(
            "web.public_origin = {text:?} {why}; write the address \
             approvers open, such as \"https://countersign.example.org\" \
             or \"http://localhost:8470\""
        ))
    };
    let trimmed = text.strip_suffix('/').unwrap_or(text);
    let (scheme, authority) = match trimmed.split_once("://") {
        Some(parts) => parts,
        None => return invalid("has no scheme"),
    };
    let secure = match scheme {
        "https" => true,
        "http" => false,
        _ => return invalid("must start with https:// or http://"),
    };
    if authority.is_empty() {
        return invalid("has no host");
    }
    if authority.contains(['/', '?', '#', '@', ' ', '\\']) {
        return invalid(
            "must be scheme, host and port only, without a user, path, \
             query or fragment",
        );
    }
    if authority.bytes().any(|byte| byte.is_ascii_uppercase()) {
        return invalid(
            "must be lower case, as browsers write origins; change the \
             host to lower case",
        );
    }
    let host = host_of(authority);
    if host.is_empty() {
        return invalid("has no host");
    }
    if let Some(port) = authority
        .strip_prefix(host)
        .and_then(|rest| rest.strip_prefix(':'))
    {
        match port.parse::<u16>() {
            Ok(0) | Err(_) => return invalid("has an invalid port"),
            Ok(443) if secure => {
                return invalid("names the default port 443; leave it out");
            }
            Ok(80) if !secure => {
                return invalid("names the default port 80; leave it out");
            }
            Ok(_) => {}
        }
    } else if authority != host {
        return invalid("has an invalid port");
    }
    if !secure && !is_loopback_host(host) {
        return invalid(
            "uses http for a host other than localhost; browsers offer \
             passkeys only over https there",
        );
    }
    Ok(PublicOrigin {
        origin: format!("{scheme}://{authority}"),
        secure,
    })
}

/// The host part of an authority: up to the port, with brackets kept
/// for an IPv6 address.
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => "",
        }
    } else {
        authority.split(':').next().unwrap_or("")
    }
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host == "127.0.0.1"
        || host == "[::1]"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        let parsed = parse_origin("https://deploy.example.org/").unwrap();
        assert_eq!(parsed.origin, "https://deploy.example.org");
        assert!(parsed.secure);
        let parsed = parse_origin("http://localhost:8470").unwrap();
        assert_eq!(parsed.origin, "http://localhost:8470");
        assert!(!parsed.secure);
        assert!(parse_origin("http://[::1]:8470").is_ok());
        assert!(parse_origin("https://example.org:8443").is_ok());

        for bad in [
            "deploy.example.org",
            "ftp://deploy.example.org",
            "http://deploy.example.org",
            "https://deploy.example.org/path",
            "https://user@deploy.example.org",
            "https://Deploy.example.org",
            "https://deploy.example.org:0",
            "https://deploy.example.org:443",
            "https://deploy.example.org:x",
            "https://",
            "http://localhost:80",
        ] {
            let error = parse_origin(bad).unwrap_err();
            assert!(error.contains("web.public_origin"), "{error}");
        }
    }
}
