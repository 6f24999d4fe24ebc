//! Commit statuses posted back to the forge: one status per proposal's
//! commit, pending while it collects approvals, success once deployed,
//! failure with the reason otherwise.
//!
//! Statuses are queued and sent by one background task in order, so the
//! forge ends with the newest state. A status that is still being retried
//! when a newer one for the same commit arrives is dropped. Nothing in
//! the pipeline waits for the forge.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;

use crate::outbound::{self, Client, LogContext, Post, RetryPolicy};

/// GitHub and Gitea cut descriptions at 140 characters.
const MAX_DESCRIPTION_CHARS: usize = 140;

/// How many commits' last GitLab states are remembered.
const MAX_REMEMBERED: usize = 1000;

/// The `[commit_status]` section: where statuses are posted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitStatusConfig {
    /// The forge's API flavour.
    pub forge: ForgeApi,
    /// The API's base address: `https://api.github.com`,
    /// `https://git.example.org/api/v1` (Gitea, Forgejo) or
    /// `https://gitlab.example.org/api/v4`.
    pub api_url: String,
    /// `owner/name` on GitHub, Gitea and Forgejo; the numeric project id
    /// or the `group/project` path on GitLab.
    pub repository: String,
    /// The file that contains the API token. It needs the permission to
    /// write commit statuses and nothing else.
    pub token_file: PathBuf,
    /// The status's name on the forge; `countersign/<host>` by default.
    #[serde(default)]
    pub context: Option<String>,
}

/// The commit status APIs the server can post to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeApi {
    GitHub,
    Gitea,
    Forgejo,
    GitLab,
}

/// The state of a posted status, in GitHub's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitState {
    /// Collecting approvals, waiting for checks or activating.
    Pending,
    /// Deployed.
    Success,
    /// The build failed or was blocked, the proposal was rejected, or
    /// the activation failed, was refused or rolled back.
    Failure,
    /// The proposal ended without a verdict on the commit: it expired or
    /// was superseded.
    Error,
}

/// One status to post.
#[derive(Debug, Clone)]
pub struct StatusUpdate {
    pub proposal: u64,
    pub event: &'static str,
    pub commit: String,
    pub state: CommitState,
    /// Whether a pending proposal already has approvals or activates;
    /// GitLab shows this as `running`.
    pub started: bool,
    pub description: String,
    pub target_url: Option<String>,
}

/// The configured poster with its queue.
pub struct StatusPoster {
    api: ForgeApi,
    api_url: String,
    repository: String,
    context: String,
    token: String,
    client: Client,
    retry: RetryPolicy,
    queue: Mutex<VecDeque<StatusUpdate>>,
    wake: Notify,
    /// The last state sent per commit, for GitLab, which returns 400 for
    /// a status in the state it already has.
    gitlab_last: Mutex<HashMap<String, &'static str>>,
}

impl StatusPoster {
    /// Checks the section and reads the token.
    pub fn load(
        config: &CommitStatusConfig,
        host: &str,
        client: Client,
    ) -> Result<Self, String> {
        outbound::validate_url("commit_status.api_url", &config.api_url)?;
        check_repository(config.forge, &config.repository)?;
        let context = match &config.context {
            Some(context) => context.clone(),
            None => format!("countersign/{host}"),
        };
        if context.trim().is_empty() || context.chars().any(char::is_control) {
            return Err("commit_status.context is empty or contains control \
                        characters; name the status, for example \
                        \"countersign/web1\""
                .into());
        }
        let token = outbound::read_secret(
            "commit_status.token_file",
            &config.token_file,
        )?;
        Ok(Self {
            api: config.forge,
            api_url: config.api_url.trim_end_matches('/').to_owned(),
            repository: config.repository.clone(),
            context,
            token,
            client,
            retry: RetryPolicy::DEFAULT,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            gitlab_last: Mutex::new(HashMap::new()),
        })
    }

    /// Returns the name of the posted status.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// Queues a status; the background task sends it.
    pub fn post(&self, update: StatusUpdate) {
        lock(&self.queue).push_back(update);
        self.wake.notify_one();
    }

    /// Sends the queued statuses, oldest first, until the task is
    /// aborted.
    pub async fn run(&self) {
        loop {
            let next = lock(&self.queue).pop_front();
            let Some(update) = next else {
                self.wake.notified().await;
                continue;
            };
            if self.has_newer(&update.commit) {
                continue;
            }
            self.send(&update).await;
        }
    }

    fn has_newer(&self, commit: &str) -> bool {
        lock(&self.queue)
            .iter()
            .any(|queued| queued.commit == commit)
    }

    async fn send(&self, update: &StatusUpdate) {
        let state = self.state_name(update);
        if self.api == ForgeApi::GitLab {
            let last = lock(&self.gitlab_last).get(&update.commit).copied();
            if last == Some(state) {
                tracing::debug!(
                    proposal = update.proposal,
                    state,
                    "GitLab has this state already; not posting it again"
                );
                return;
            }
        }
        let post = self.request(update, state);
        let context = LogContext {
            proposal: update.proposal,
            event: update.event,
        };
        let sent = self
            .client
            .send(&post, self.retry, &context, || {
                self.has_newer(&update.commit)
            })
            .await;
        if sent && self.api == ForgeApi::GitLab {
            let mut last = lock(&self.gitlab_last);
            if last.len() >= MAX_REMEMBERED {
                last.clear();
            }
            last.insert(update.commit.clone(), state);
        }
    }

    fn state_name(&self, update: &StatusUpdate) -> &'static str {
        match (self.api, update.state) {
            (ForgeApi::GitLab, CommitState::Pending) if update.started => {
                "running"
            }
            (ForgeApi::GitLab, CommitState::Pending) => "pending",
            (ForgeApi::GitLab, CommitState::Success) => "success",
            (ForgeApi::GitLab, CommitState::Failure) => "failed",
            (ForgeApi::GitLab, CommitState::Error) => "canceled",
            (_, CommitState::Pending) => "pending",
            (_, CommitState::Success) => "success",
            (_, CommitState::Failure) => "failure",
            (_, CommitState::Error) => "error",
        }
    }

    /// Builds the forge's request for `update`.
    fn request(&self, update: &StatusUpdate, state: &str) -> Post {
        let description = truncate(&update.description, MAX_DESCRIPTION_CHARS);
        let (url, body, headers) = match self.api {
            ForgeApi::GitHub | ForgeApi::Gitea | ForgeApi::Forgejo => {
                let url = format!(
                    "{}/repos/{}/statuses/{}",
                    self.api_url, self.repository, update.commit
                );
                let mut body = json!({
                    "state": state,
                    "description": description,
                    "context": self.context,
                });
                if let Some(target) = &update.target_url {
                    body["target_url"] = json!(target);
                }
                let headers = if self.api == ForgeApi::GitHub {
                    vec![
                        ("Authorization", format!("Bearer {}", self.token)),
                        ("Accept", "application/vnd.github+json".to_owned()),
                        ("X-GitHub-Api-Version", "2022-11-28".to_owned()),
                    ]
                } else {
                    vec![("Authorization", format!("token {}", self.token))]
                };
                (url, body, headers)
            }
            ForgeApi::GitLab => {
                let url = format!(
                    "{}/projects/{}/statuses/{}",
                    self.api_url,
                    self.repository.replace('/', "%2F"),
                    update.commit
                );
                let mut body = json!({
                    "state": state,
                    "description": description,
                    "name": self.context,
                });
                if let Some(target) = &update.target_url {
                    body["target_url"] = json!(target);
                }
                (url, body, vec![("PRIVATE-TOKEN", self.token.clone())])
            }
        };
        Post {
            purpose: "commit status",
            url,
            headers,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Cuts `text` to `max` characters, ending with an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Checks the repository's spelling for the forge, since it goes into
/// the request path.
fn check_repository(api: ForgeApi, repository: &str) -> Result<(), String> {
    let segment_ok = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    let segments: Vec<&str> = repository.split('/').collect();
    let valid = match api {
        ForgeApi::GitLab => segments.iter().all(|segment| segment_ok(segment)),
        _ => segments.len() == 2 && segments.iter().all(|s| segment_ok(s)),
    };
    if valid {
        return Ok(());
    }
    let expected = match api {
        ForgeApi::GitLab => {
            "a numeric project id or a path like group/project"
        }
        _ => "owner/name",
    };
    Err(format!(
        "commit_status.repository = {repository:?} is invalid; write {expected} \
         with letters, digits, '.', '_' and '-' only"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poster(api: ForgeApi) -> StatusPoster {
        StatusPoster {
            api,
            api_url: "https://forge.invalid/api".into(),
            repository: "ops/infra".into(),
            context: "countersign/demo".into(),
            token: "t0ken".into(),
            client: Client::new(),
            retry: RetryPolicy::DEFAULT,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            gitlab_last: Mutex::new(HashMap::new()),
        }
    }

    fn update(state: CommitState, started: bool) -> StatusUpdate {
        StatusUpdate {
            proposal: 3,
            event: "approval",
            commit: "a".repeat(40),
            state,
            started,
            description: "1 of 2 approvals".into(),
            target_url: Some("https://deploy.invalid/proposals/3".into()),
        }
    }

    #[test]
    fn github_request_has_bearer_token_and_context() {
        let poster = poster(ForgeApi::GitHub);
        let update = update(CommitState::Pending, true);
        let post = poster.request(&update, poster.state_name(&update));
        assert_eq!(
            post.url,
            format!(
                "https://forge.invalid/api/repos/ops/infra/statuses/{}",
                "a".repeat(40)
            )
        );
        assert!(
            post.headers
                .contains(&("Authorization", "Bearer t0ken".into()))
        );
        let body: serde_json::Value =
            serde_json::from_slice(&post.body).unwrap();
        assert_eq!(body["state"], "pending");
        assert_eq!(body["context"], "countersign/demo");
        assert_eq!(body["target_url"], "https://deploy.invalid/proposals/3");
    }

    #[test]
    fn gitlab_request_uses_its_names() {
        let poster = poster(ForgeApi::GitLab);
        let update = update(CommitState::Pending, true);
        let post = poster.request(&update, poster.state_name(&update));
        assert!(
            post.url.contains("/projects/ops%2Finfra/statuses/"),
            "{}",
            post.url
        );
        assert!(post.headers.contains(&("PRIVATE-TOKEN", "t0ken".into())));
        let body: serde_json::Value =
            serde_json::from_slice(&post.body).unwrap();
        assert_eq!(body["state"], "running");
        assert_eq!(body["name"], "countersign/demo");
        let failed = super::tests::update(CommitState::Failure, false);
        assert_eq!(poster.state_name(&failed), "failed");
    }

    #[test]
    fn gitea_uses_token_scheme() {
        let poster = poster(ForgeApi::Gitea);
        let update = update(CommitState::Error, false);
        let post = poster.request(&update, poster.state_name(&update));
        assert!(
            post.headers
                .contains(&("Authorization", "token t0ken".into()))
        );
        let body: serde_json::Value =
            serde_json::from_slice(&post.body).unwrap();
        assert_eq!(body["state"], "error");
    }

    #[test]
    fn repository_spelling_is_checked() {
        assert!(check_repository(ForgeApi::GitHub, "ops/infra").is_ok());
        assert!(check_repository(ForgeApi::GitHub, "infra").is_err());
        assert!(check_repository(ForgeApi::GitHub, "ops/../x").is_err());
        assert!(check_repository(ForgeApi::Gitea, "ops/in fra").is_err());
        assert!(check_repository(ForgeApi::GitLab, "1234").is_ok());
        assert!(
            check_repository(ForgeApi::GitLab, "group/sub/project").is_ok()
        );
        assert!(check_repository(ForgeApi::GitLab, "group//p").is_err());
    }

    #[test]
    fn long_descriptions_are_cut() {
        let text = "x".repeat(200);
        let cut = truncate(&text, MAX_DESCRIPTION_CHARS);
        assert_eq!(cut.chars().count(), MAX_DESCRIPTION_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short", 140), "short");
    }
}
