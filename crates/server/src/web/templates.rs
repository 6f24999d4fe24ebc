//! The askama templates of the pages. HTML escaping is on for every
//! template (they end in `.html`), so every value is shown as text.

use askama::Template;

use super::view::DiffView;

/// What every page's frame shows.
pub struct Layout {
    pub title: String,
    pub host: String,
    /// The signed-in approver.
    pub approver: Option<String>,
}

pub struct ListRow {
    pub number: u64,
    pub state: String,
    pub host: String,
    pub commit: String,
    pub subject: String,
    pub age: String,
    pub created_utc: String,
    pub have: usize,
    pub threshold: usize,
}

#[derive(Template)]
#[template(path = "list.html")]
pub struct ListPage {
    pub layout: Layout,
    pub rows: Vec<ListRow>,
}

pub struct VoteView {
    pub approver: String,
    /// `approve` or `reject`.
    pub verdict: &'static str,
    pub at_utc: String,
    pub reason: String,
}

pub struct ActivationLine {
    pub at_utc: String,
    pub text: String,
}

pub struct ProposalView {
    pub number: u64,
    pub state: String,
    /// Whether the page follows the proposal's events.
    pub live: bool,
    pub host: String,
    pub commit: String,
    pub subject: String,
    pub requested_by: String,
    pub created_utc: String,
    pub created_age: String,
    pub expires_utc: Option<String>,
    pub base: Option<String>,
    pub target: Option<String>,
    pub statement_sha256: Option<String>,
    pub error: String,
    pub have: usize,
    pub threshold: usize,
    pub missing_required: String,
    pub votes: Vec<VoteView>,
    pub can_vote: bool,
    /// The viewer has a passkey but the proposal is still building: the
    /// buttons appear once a reload shows the finished diffs.
    pub vote_after_build: bool,
    pub viewer: String,
    pub vote_note: String,
    pub activation: Vec<ActivationLine>,
    /// The id of the last activation event shown.
    pub activation_after: i64,
    pub log: String,
    pub log_lines: usize,
    /// The byte offset in the build log up to which `log` reaches.
    pub log_offset: u64,
}

#[derive(Template)]
#[template(path = "proposal.html")]
pub struct ProposalPage {
    pub layout: Layout,
    pub p: ProposalView,
    pub diff: Option<DiffView>,
}

pub struct HistoryRow {
    pub seq: u64,
    pub hash: String,
    pub at_utc: String,
    pub proposal: u64,
    pub outcome: String,
    pub outcome_class: String,
    pub commit: String,
    pub subject: String,
    pub approvers: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "history.html")]
pub struct HistoryPage {
    pub layout: Layout,
    pub rows: Vec<HistoryRow>,
}

#[derive(Template)]
#[template(path = "sign_in.html")]
pub struct SignInPage {
    pub layout: Layout,
    pub available: bool,
    pub unavailable: String,
    /// Where to go after signing in: a path on this server.
    pub next: String,
}

#[derive(Template)]
#[template(path = "enrol.html")]
pub struct EnrolPage {
    pub layout: Layout,
    pub available: bool,
    pub unavailable: String,
    pub rp_id: String,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub layout: Layout,
    pub heading: String,
    pub message: String,
}
