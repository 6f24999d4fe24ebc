//! Polling of the configured branch, for repositories that cannot send
//! webhooks: every `[repository] poll_interval_secs` the server reads the
//! branch head with `git ls-remote` and proposes it through the same
//! duplicate check as a webhook delivery.

use std::time::Duration;

use crate::state::AppState;
use crate::webhooks::{HeadOutcome, propose_branch_head};

/// The `requested_by` of proposals that polling creates.
pub(crate) const REQUESTED_BY: &str = "poll";

/// Polls the branch every `interval` until the task is aborted.
pub(crate) async fn run(state: AppState, interval: Duration) {
    let repository = without_userinfo(&state.config.repository.url);
    tracing::info!(
        repository,
        branch = state.config.repository.branch,
        interval_secs = interval.as_secs_f64(),
        "polling the branch"
    );
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_head = None;
    loop {
        ticks.tick().await;
        poll_once(&state, &repository, &mut last_head).await;
    }
}

/// Reads the branch head once and proposes it when it changed since the
/// last poll. `last_head` keeps a head whose proposal failed or was
/// rejected from being proposed again at every poll.
async fn poll_once(
    state: &AppState,
    repository: &str,
    last_head: &mut Option<String>,
) {
    let branch = &state.config.repository.branch;
    match propose_branch_head(state, REQUESTED_BY.to_owned(), last_head).await
    {
        Ok(HeadOutcome::Proposed { number, commit }) => {
            tracing::info!(
                repository,
                branch,
                commit,
                proposal = number,
                "poll proposed the branch head"
            );
        }
        Ok(HeadOutcome::Existing(number)) => {
            tracing::debug!(
                repository,
                branch,
                proposal = number,
                "poll found the branch head already proposed"
            );
        }
        Ok(HeadOutcome::Unchanged) => {}
        Ok(HeadOutcome::NoBranch) => {
            tracing::warn!(
                repository,
                branch,
                "poll failed: the branch does not exist in the repository; \
                 push it or fix [repository] branch"
            );
        }
        Err(error) => {
            tracing::warn!(
                repository,
                branch,
                error = error.message,
                "poll failed; retrying at the next interval"
            );
        }
    }
}

/// Removes a `user@` or `user:password@` part from a URL for logs. The
/// configuration check already rejects addresses with a password, so
/// this only keeps user names out of the log as well.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_removed_from_urls() {
        assert_eq!(
            without_userinfo("https://ci:secret@git.example/a.git"),
            "https://git.example/a.git"
        );
        assert_eq!(
            without_userinfo("ssh://git@git.example:22/a@b.git"),
            "ssh://git.example:22/a@b.git"
        );
        assert_eq!(without_userinfo("/srv/config.git"), "/srv/config.git");
    }
}
