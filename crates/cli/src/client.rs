//! The HTTP client of the countersign API, used by the approver commands.
//!
//! Every request but the health check is authenticated: the client signs
//! a fresh server challenge with the approver's SSH key, or presents the
//! trigger token, which may only create proposals.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use countersign_core::sshsig::Namespace;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use ureq::Agent;

use crate::commands::vote::unix_now;
use crate::sign;

/// Seconds before its session token expires at which a client that
/// polls logs in again, so that no request is sent with a token about to
/// expire.
const RELOGIN_MARGIN_SECS: u64 = 60;

pub struct Client {
    base: String,
    agent: Agent,
    token: String,
    /// Unix time in seconds, by the server's clock, at which the session
    /// token expires, or `None` for the trigger token, which has no
    /// expiry.
    expires: Option<u64>,
    /// The SSH key that signed the login, kept to log in again when the
    /// session nears its expiry. It is `None` for the trigger token.
    key: Option<PathBuf>,
}

impl Client {
    /// Opens a session by signing a login challenge with `key_path`.
    pub fn login(server: &str, key_path: &Path) -> Result<Self> {
        let mut client = Self::unauthenticated(server)?;
        client.open_session(key_path)?;
        Ok(client)
    }

    /// Logs in again with the same key when the session expires within
    /// a minute by the local clock. A client without a session expiry,
    /// such as one using the trigger token, is left as it is.
    pub fn renew_if_expiring(&mut self) -> Result<()> {
        if !session_expires_soon(self.expires, unix_now()) {
            return Ok(());
        }
        let Some(key) = self.key.clone() else {
            return Ok(());
        };
        self.open_session(&key)
    }

    fn open_session(&mut self, key_path: &Path) -> Result<()> {
        let challenge: Value =
            self.post_json("/api/v1/auth/challenge", &json!({}))?;
        let challenge = challenge["challenge"]
            .as_str()
            .context("the server sent no login challenge")?
            .to_owned();
        let signature =
            sign::sign(key_path, Namespace::Login, challenge.as_bytes())?;
        let session: Value = self.post_json(
            "/api/v1/auth/login",
            &json!({ "challenge": challenge, "signature": signature }),
        )?;
        self.token = session["token"]
            .as_str()
            .context("the server sent no session token")?
            .to_owned();
        self.expires = session["expires"].as_u64();
        self.key = Some(key_path.to_owned());
        Ok(())
    }

    /// Uses the trigger token read from `path`.
    pub fn with_token_file(server: &str, path: &Path) -> Result<Self> {
        let token = std::fs::read_to_string(path).with_context(|| {
            format!("failed to read the trigger token file {}", path.display())
        })?;
        let mut client = Self::unauthenticated(server)?;
        client.token = token.trim().to_owned();
        if client.token.is_empty() {
            bail!("the trigger token file {} is empty", path.display());
        }
        Ok(client)
    }

    fn unauthenticated(server: &str) -> Result<Self> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!(
                "invalid server address {server:?}: expected http://HOST:PORT \
                 or https://HOST"
            );
        }
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(Self {
            base,
            agent,
            token: String::new(),
            expires: None,
            key: None,
        })
    }

    /// Returns the Unix time in seconds at which the session token
    /// expires, as the server sent it at login.
    pub fn expires(&self) -> Option<u64> {
        self.expires
    }

    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .with_context(|| self.failed("GET", path))?;
        read_json(response, path)
    }

    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()
            .with_context(|| self.failed("GET", path))?;
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .with_context(|| format!("failed to read the answer to {path}"))?;
        if !status.is_success() {
            bail!("{path}: {}", error_message(status.as_u16(), &body));
        }
        Ok(body)
    }

    pub fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body)
            .with_context(|| self.failed("POST", path))?;
        read_json(response, path)
    }

    fn failed(&self, method: &str, path: &str) -> String {
        format!(
            "{method} {}{path} failed; check that the server runs and that \
             --server or COUNTERSIGN_SERVER is right",
            self.base
        )
    }
}

fn read_json<T: DeserializeOwned>(
    mut response: ureq::http::Response<ureq::Body>,
    path: &str,
) -> Result<T> {
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .with_context(|| format!("failed to read the answer to {path}"))?;
    if !status.is_success() {
        bail!("{}", error_message(status.as_u16(), &body));
    }
    serde_json::from_slice(&body).with_context(|| {
        format!("the server's answer to {path} is not the expected JSON")
    })
}

/// Returns whether a session that expires at `expires` (Unix seconds)
/// should be replaced by a new login at `now`. A session without a known
/// expiry is kept.
fn session_expires_soon(expires: Option<u64>, now: u64) -> bool {
    expires.is_some_and(|expires| {
        now.saturating_add(RELOGIN_MARGIN_SECS) >= expires
    })
}

/// The server's `{"error": …}` message, or the raw status.
fn error_message(status: u16, body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|value| value["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    format!("the server rejected the request (HTTP {status}): {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_kept_until_margin() {
        let login = 1_000_000;
        let expires = login + 600;
        assert!(!session_expires_soon(Some(expires), login));
        assert!(!session_expires_soon(
            Some(expires),
            expires - RELOGIN_MARGIN_SECS - 1
        ));
    }

    #[test]
    fn session_renewed_near_expiry() {
        let expires = 1_000_600;
        assert!(session_expires_soon(
            Some(expires),
            expires - RELOGIN_MARGIN_SECS
        ));
        assert!(session_expires_soon(Some(expires), expires));
        assert!(session_expires_soon(Some(expires), expires + 3600));
    }

    #[test]
    fn session_without_expiry_kept() {
        assert!(!session_expires_soon(None, u64::MAX / 2));
    }
}
