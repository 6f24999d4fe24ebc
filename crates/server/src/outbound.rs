//! Outgoing HTTP requests to forge APIs and notification services, with
//! a bounded number of retries.
//!
//! Requests run on blocking threads (the client is synchronous), never
//! on the pipeline's or a request handler's path. Failures are logged
//! with the target's origin only: the path of an ntfy topic acts as a
//! password, and tokens live in headers that are never logged.

use std::time::Duration;

/// How long one attempt may take, connection included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// The `User-Agent` sent with every request; GitHub rejects requests
/// without one.
const USER_AGENT: &str =
    concat!("countersign-server/", env!("CARGO_PKG_VERSION"));

/// How often a request is tried and how long to wait in between.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub attempts: u32,
    /// The wait after the first failure; each later wait doubles, up to
    /// `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Five attempts over about 15 seconds: waits of 1, 2, 4 and 8
    /// seconds.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        attempts: 5,
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(30),
    };

    /// Returns the wait after failed attempt `attempt` (counted from 1).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// One POST request.
#[derive(Clone)]
pub struct Post {
    /// The kind of request, for the log: "commit status", "ntfy" or "webhook".
    pub purpose: &'static str,
    pub url: String,
    /// Header names and values. Values may hold tokens and are never
    /// logged.
    pub headers: Vec<(&'static str, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// The reason an attempt failed.
#[derive(Debug)]
enum Failure {
    /// The receiver returned this status. A 4xx status other than 408
    /// and 429 is not retried, because the same request would fail
    /// again.
    Status(u16),
    /// No response: a connection, TLS or timeout failure.
    Transport(String),
}

impl Failure {
    fn is_permanent(&self) -> bool {
        match self {
            Failure::Status(code) => {
                (400..500).contains(code) && *code != 408 && *code != 429
            }
            Failure::Transport(_) => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(code) => write!(f, "HTTP status {code}"),
            Failure::Transport(error) => f.write_str(error),
        }
    }
}

/// The shared HTTP client.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Client {
    pub fn new() -> Self {
        // Redirects are not followed, so that a token is only ever sent
        // to the configured address.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(ATTEMPT_TIMEOUT))
            .max_redirects(0)
            .user_agent(USER_AGENT)
            .build()
            .into();
        Self { agent }
    }

    /// Sends `post` until the receiver returns 2xx, the attempts run out,
    /// the response is a permanent failure, or `abandon` returns true
    /// before a retry. Each failure is logged. Returns whether the
    /// request was delivered.
    pub async fn send(
        &self,
        post: &Post,
        retry: RetryPolicy,
        context: &LogContext,
        abandon: impl Fn() -> bool,
    ) -> bool {
        let origin = origin(&post.url);
        for attempt in 1..=retry.attempts.max(1) {
            let agent = self.agent.clone();
            let request = post.clone();
            let result = tokio::task::spawn_blocking(move || {
                attempt_once(&agent, &request)
            })
            .await
            .unwrap_or_else(|error| {
                Err(Failure::Transport(format!(
                    "the sending task failed: {error}"
                )))
            });
            let failure = match result {
                Ok(()) => {
                    tracing::info!(
                        purpose = post.purpose,
                        origin,
                        proposal = context.proposal,
                        event = context.event,
                        attempt,
                        "sent"
                    );
                    return true;
                }
                Err(failure) => failure,
            };
            let last = attempt >= retry.attempts || failure.is_permanent();
            tracing::warn!(
                purpose = post.purpose,
                origin,
                proposal = context.proposal,
                event = context.event,
                attempt,
                attempts = retry.attempts,
                error = %failure,
                "sending failed{}",
                if last { "; giving up" } else { "; retrying" }
            );
            if last {
                return false;
            }
            tokio::time::sleep(retry.delay_after(attempt)).await;
            if abandon() {
                tracing::info!(
                    purpose = post.purpose,
                    origin,
                    proposal = context.proposal,
                    event = context.event,
                    "a newer request replaces this one; not retrying"
                );
                return false;
            }
        }
        false
    }
}

/// The proposal and event a request belongs to, for the log.
pub struct LogContext {
    pub proposal: u64,
    pub event: &'static str,
}

fn attempt_once(agent: &ureq::Agent, post: &Post) -> Result<(), Failure> {
    let mut request = agent
        .post(&post.url)
        .header("Content-Type", post.content_type);
    for (name, value) in &post.headers {
        request = request.header(*name, value);
    }
    match request.send(&post.body[..]) {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(Failure::Status(response.status().as_u16())),
        Err(error) => Err(Failure::Transport(error.to_string())),
    }
}

/// Returns the scheme, host and port of `url`, without path, query or user
/// information, for logs.
pub fn origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(invalid address)".to_owned();
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{host}")
}

/// Checks that `url` is an `http://` or `https://` address with a host,
/// without user information; `key` names the setting in errors.
pub fn validate_url(key: &str, url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Err(format!(
            "{key} is not an http:// or https:// address; write it as \
             https://host/path"
        ));
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.is_empty() {
        return Err(format!("{key} has no host after the scheme; add one"));
    }
    if authority.contains('@') {
        return Err(format!(
            "{key} contains user information before the host; remove it \
             and put the token into the token or secret file"
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{key} contains spaces or control characters; percent-encode \
             them"
        ));
    }
    Ok(())
}

/// Reads a token or secret from `path`, without surrounding whitespace.
/// `key` names the setting in errors; the content never appears in one.
pub fn read_secret(
    key: &str,
    path: &std::path::Path,
) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        format!("cannot read {} (key `{key}`): {error}", path.display())
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!(
            "{} (key `{key}`) is empty; write the token into it",
            path.display()
        ));
    }
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the content of {} (key `{key}`) contains whitespace or \
             control characters; it must be a single word",
            path.display()
        ));
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum() {
        let retry = RetryPolicy::DEFAULT;
        assert_eq!(retry.delay_after(1), Duration::from_secs(1));
        assert_eq!(retry.delay_after(2), Duration::from_secs(2));
        assert_eq!(retry.delay_after(4), Duration::from_secs(8));
        assert_eq!(retry.delay_after(9), Duration::from_secs(30));
    }

    #[test]
    fn origin_drops_path_and_user() {
        assert_eq!(
            origin("https://ntfy.example.org/secret-topic?x=1"),
            "https://ntfy.example.org"
        );
        assert_eq!(
            origin("http://user:pw@127.0.0.1:8080/a"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(origin("ntfy.example.org"), "(invalid address)");
    }

    #[test]
    fn permanent_failures_are_client_errors() {
        assert!(Failure::Status(404).is_permanent());
        assert!(Failure::Status(422).is_permanent());
        assert!(!Failure::Status(429).is_permanent());
        assert!(!Failure::Status(408).is_permanent());
        assert!(!Failure::Status(500).is_permanent());
        assert!(!Failure::Transport("reset".into()).is_permanent());
    }

    #[test]
    fn urls_are_checked() {
        assert!(validate_url("k", "https://api.github.com").is_ok());
        assert!(validate_url("k", "http://127.0.0.1:8080/t").is_ok());
        assert!(validate_url("k", "ftp://x").is_err());
        assert!(validate_url("k", "https://").is_err());
        let error = validate_url("k", "https://me:s3cr3t@x/").unwrap_err();
        assert!(!error.contains("s3cr3t"), "{error}");
        assert!(validate_url("k", "https://x/a b").is_err());
    }
}
