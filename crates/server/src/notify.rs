//! Notifications when a proposal awaits approval, is deployed, fails or
//! rolls back: an ntfy topic and a generic JSON webhook.
//!
//! A notification carries only the summary: host, proposal number,
//! state, short commit id and the link to the proposal's page. It never
//! carries the diff, the commit message, an error text or a secret.
//! Each one is sent in its own task with bounded retries, so a slow
//! receiver delays nothing else.

use std::path::PathBuf;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use crate::outbound::{self, Client, LogContext, Post, RetryPolicy};

/// The length of the commit ids in notifications.
pub const SHORT_COMMIT_LEN: usize = 12;

/// The header of the generic webhook's signature.
pub const SIGNATURE_HEADER: &str = "X-Countersign-Signature";

/// The `[notify]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The events that are sent; by default awaiting-approval, deployed,
    /// failed and rolled-back.
    #[serde(default = "default_events")]
    pub events: Vec<NotifyEvent>,
    #[serde(default)]
    pub ntfy: Option<NtfyConfig>,
    #[serde(default)]
    pub webhook: Option<NotifyWebhookConfig>,
}

/// The `[notify.ntfy]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NtfyConfig {
    /// The topic's address, for example `https://ntfy.sh/mytopic`.
    pub url: String,
    /// A file with an ntfy access token, sent as `Authorization: Bearer`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// The `[notify.webhook]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyWebhookConfig {
    /// The address that receives a JSON POST per notification.
    pub url: String,
    /// A file with a secret; when set, each request carries
    /// `X-Countersign-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

/// The proposal events that can be notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyEvent {
    AwaitingApproval,
    Deployed,
    /// The fetch, the signature check, the build or the activation
    /// failed, or the activator refused the certificate.
    Failed,
    RolledBack,
    Rejected,
    Expired,
    Superseded,
}

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingApproval => "awaiting-approval",
            Self::Deployed => "deployed",
            Self::Failed => "failed",
            Self::RolledBack => "rolled-back",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Superseded => "superseded",
        }
    }

    /// Returns the phrase after "proposal N".
    fn phrase(self) -> &'static str {
        match self {
            Self::AwaitingApproval => "awaits approval",
            Self::Deployed => "is deployed",
            Self::Failed => "failed",
            Self::RolledBack => "was rolled back",
            Self::Rejected => "was rejected",
            Self::Expired => "expired",
            Self::Superseded => "was superseded",
        }
    }

    /// Returns the ntfy tag, shown as an emoji.
    fn ntfy_tag(self) -> &'static str {
        match self {
            Self::AwaitingApproval => "hourglass_flowing_sand",
            Self::Deployed => "white_check_mark",
            Self::Failed => "x",
            Self::RolledBack => "rewind",
            Self::Rejected => "no_entry",
            Self::Expired => "hourglass",
            Self::Superseded => "fast_forward",
        }
    }

    fn is_alarm(self) -> bool {
        matches!(self, Self::Failed | Self::RolledBack)
    }
}

fn default_events() -> Vec<NotifyEvent> {
    vec![
        NotifyEvent::AwaitingApproval,
        NotifyEvent::Deployed,
        NotifyEvent::Failed,
        NotifyEvent::RolledBack,
    ]
}

/// The summary of one notification.
#[derive(Debug, Clone)]
pub struct Notification {
    pub event: NotifyEvent,
    pub host: String,
    pub proposal: u64,
    /// The proposal's state as the API names it.
    pub state: String,
    /// The full commit id, when the proposal got that far; notifications
    /// show the first [`SHORT_COMMIT_LEN`] characters.
    pub commit: Option<String>,
    pub url: Option<String>,
}

impl Notification {
    fn short_commit(&self) -> Option<&str> {
        self.commit
            .as_deref()
            .map(|commit| &commit[..commit.len().min(SHORT_COMMIT_LEN)])
    }

    fn title(&self) -> String {
        format!(
            "{}: proposal {} {}",
            self.host,
            self.proposal,
            self.event.phrase()
        )
    }

    fn text(&self) -> String {
        let mut text = format!(
            "Proposal {} on {} {}",
            self.proposal,
            self.host,
            self.event.phrase()
        );
        if let Some(commit) = self.short_commit() {
            text.push_str(&format!(" (commit {commit})"));
        }
        text.push('.');
        if let Some(url) = &self.url {
            text.push_str(&format!(" {url}"));
        }
        text
    }
}

/// The configured receivers.
pub struct Notifier {
    events: Vec<NotifyEvent>,
    ntfy: Option<(String, Option<String>)>,
    webhook: Option<(String, Option<Vec<u8>>)>,
    client: Client,
    retry: RetryPolicy,
}

impl Notifier {
    /// Checks the section and reads the token and secret files.
    pub fn load(
        config: &NotifyConfig,
        client: Client,
    ) -> Result<Self, String> {
        if config.ntfy.is_none() && config.webhook.is_none() {
            return Err("[notify] has neither [notify.ntfy] nor \
                        [notify.webhook]; add one or remove the section"
                .into());
        }
        let ntfy = match &config.ntfy {
            Some(ntfy) => {
                outbound::validate_url("notify.ntfy.url", &ntfy.url)?;
                let token = ntfy
                    .token_file
                    .as_ref()
                    .map(|path| {
                        outbound::read_secret("notify.ntfy.token_file", path)
                    })
                    .transpose()?;
                Some((ntfy.url.clone(), token))
            }
            None => None,
        };
        let webhook = match &config.webhook {
            Some(webhook) => {
                outbound::validate_url("notify.webhook.url", &webhook.url)?;
                let secret = webhook
                    .secret_file
                    .as_ref()
                    .map(|path| {
                        outbound::read_secret(
                            "notify.webhook.secret_file",
                            path,
                        )
                        .map(String::into_bytes)
                    })
                    .transpose()?;
                Some((webhook.url.clone(), secret))
            }
            None => None,
        };
        Ok(Self {
            events: config.events.clone(),
            ntfy,
            webhook,
            client,
            retry: RetryPolicy::DEFAULT,
        })
    }

    /// Returns whether `event` is one of the configured events.
    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.events.contains(&event)
    }

    /// Sends `notification` to every receiver in the background, unless
    /// its event is not configured.
    pub fn send(self: &Arc<Self>, notification: Notification) {
        if !self.wants(notification.event) {
            return;
        }
        let mut posts = Vec::new();
        if let Some((url, token)) = &self.ntfy {
            posts.push(ntfy_post(url, token.as_deref(), &notification));
        }
        if let Some((url, secret)) = &self.webhook {
            posts.push(webhook_post(url, secret.as_deref(), &notification));
        }
        for post in posts {
            let notifier = Arc::clone(self);
            let context = LogContext {
                proposal: notification.proposal,
                event: notification.event.as_str(),
            };
            tokio::spawn(async move {
                notifier
                    .client
                    .send(&post, notifier.retry, &context, || false)
                    .await;
            });
        }
    }
}

/// Builds an ntfy publish request: the text as the body, the rest in headers.
fn ntfy_post(
    url: &str,
    token: Option<&str>,
    notification: &Notification,
) -> Post {
    let event = notification.event;
    let mut headers = vec![
        ("Title", notification.title()),
        ("Tags", event.ntfy_tag().to_owned()),
        (
            "Priority",
            if event.is_alarm() { "high" } else { "default" }.to_owned(),
        ),
    ];
    if let Some(link) = &notification.url {
        headers.push(("Click", link.clone()));
    }
    if let Some(token) = token {
        headers.push(("Authorization", format!("Bearer {token}")));
    }
    Post {
        purpose: "ntfy",
        url: url.to_owned(),
        headers,
        content_type: "text/plain; charset=utf-8",
        body: notification.text().into_bytes(),
    }
}

/// Builds the generic webhook's JSON request, signed when a secret is set.
fn webhook_post(
    url: &str,
    secret: Option<&[u8]>,
    notification: &Notification,
) -> Post {
    let body = json!({
        "event": notification.event.as_str(),
        "host": notification.host,
        "proposal": notification.proposal,
        "state": notification.state,
        "commit": notification.short_commit(),
        "url": notification.url,
        "title": notification.title(),
        "at": crate::db::now(),
    })
    .to_string()
    .into_bytes();
    let mut headers = vec![(
        "X-Countersign-Event",
        notification.event.as_str().to_owned(),
    )];
    if let Some(secret) = secret {
        headers.push((
            SIGNATURE_HEADER,
            format!("sha256={}", sign(secret, &body)),
        ));
    }
    Post {
        purpose: "webhook",
        url: url.to_owned(),
        headers,
        content_type: "application/json",
        body,
    }
}

/// Computes the hexadecimal HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(event: NotifyEvent) -> Notification {
        Notification {
            event,
            host: "demo".into(),
            proposal: 4,
            state: "failed".into(),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            url: Some("https://deploy.invalid/proposals/4".into()),
        }
    }

    #[test]
    fn ntfy_request_carries_summary_and_token() {
        let post = ntfy_post(
            "https://ntfy.invalid/topic",
            Some("tk_secret"),
            &notification(NotifyEvent::Failed),
        );
        let body = String::from_utf8(post.body).unwrap();
        assert_eq!(
            body,
            "Proposal 4 on demo failed (commit 0123456789ab). \
             https://deploy.invalid/proposals/4"
        );
        assert!(
            post.headers
                .contains(&("Title", "demo: proposal 4 failed".into()))
        );
        assert!(post.headers.contains(&("Priority", "high".into())));
        assert!(
            post.headers
                .contains(&("Authorization", "Bearer tk_secret".into()))
        );
        assert!(post.headers.contains(&(
            "Click",
            "https://deploy.invalid/proposals/4".into()
        )));
    }

    #[test]
    fn webhook_request_is_signed() {
        let post = webhook_post(
            "https://hooks.invalid/x",
            Some(b"key"),
            &notification(NotifyEvent::Deployed),
        );
        let signature = post
            .headers
            .iter()
            .find(|(name, _)| *name == SIGNATURE_HEADER)
            .map(|(_, value)| value.clone())
            .unwrap();
        assert_eq!(signature, format!("sha256={}", sign(b"key", &post.body)));
        let body: serde_json::Value =
            serde_json::from_slice(&post.body).unwrap();
        assert_eq!(body["event"], "deployed");
        assert_eq!(body["commit"], "0123456789ab");
        assert_eq!(body["proposal"], 4);
        let unsigned = webhook_post(
            "https://hooks.invalid/x",
            None,
            &notification(NotifyEvent::Deployed),
        );
        assert!(
            unsigned
                .headers
                .iter()
                .all(|(name, _)| *name != SIGNATURE_HEADER)
        );
    }

    #[test]
    fn events_parse_in_kebab_case() {
        let config: NotifyConfig = toml::from_str(
            "events = [\"awaiting-approval\", \"rolled-back\"]\n\
             [ntfy]\nurl = \"https://ntfy.invalid/t\"\n",
        )
        .unwrap();
        assert_eq!(
            config.events,
            [NotifyEvent::AwaitingApproval, NotifyEvent::RolledBack]
        );
        let defaults: NotifyConfig =
            toml::from_str("[webhook]\nurl = \"https://h.invalid/\"\n")
                .unwrap();
        assert_eq!(defaults.events.len(), 4);
        assert!(
            toml::from_str::<NotifyConfig>("events = [\"reboot\"]").is_err()
        );
    }
}
