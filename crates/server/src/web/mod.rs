//! The web pages: proposals, their diffs and live progress, deployment
//! history, passkey sign-in and enrolment, and approving or rejecting
//! in the browser with a passkey.
//!
//! The pages are rendered on the server with askama (HTML escaping on)
//! and use one small script, served by the server itself, for the
//! passkey ceremonies and the live updates; the Content-Security-Policy
//! forbids every other script. A passkey approval is a WebAuthn
//! assertion over a challenge derived from the exact statement bytes,
//! sent to the same approvals API that `countersign approve` uses, so
//! the activator checks it like any other vote. The browser session
//! only lets an approver read proposals and upload signatures; it
//! approves nothing by itself.

mod assets;
mod boot_view;
mod config;
mod pages;
mod passkey;
mod security;
mod session;
mod sse;
mod templates;
mod view;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{Response, StatusCode, header};
use axum::middleware::from_fn_with_state;
use tokio::sync::Semaphore;
use tower_http::csrf::CsrfLayer;

pub use config::{PublicOrigin, WebConfig};
pub use security::{CONTENT_SECURITY_POLICY, ClientAddr};
pub use session::CHALLENGE_LIFETIME_SECS;

use crate::api_error::ApiError;
use crate::state::AppState;

/// How many event streams may be open at once across all clients; each
/// reads the database twice a second.
const MAX_EVENT_STREAMS: usize = 64;

/// The web part of the server's state.
pub struct WebState {
    enabled: Option<Enabled>,
    pub(crate) limits: security::Limits,
    trusted_proxies: Vec<IpAddr>,
}

struct Enabled {
    origin: PublicOrigin,
    sessions: session::Sessions,
    streams: Arc<Semaphore>,
}

impl WebState {
    /// The state for the `[web]` table, or for a server without pages.
    pub fn new(config: Option<&WebConfig>) -> Result<Self, String> {
        let trusted_proxies = config
            .map(|config| config.trusted_proxies.clone())
            .unwrap_or_default();
        let enabled = match config {
            Some(config) if config.enabled => {
                let origin = config.check()?;
                Some(Enabled {
                    sessions: session::Sessions::new(origin.secure),
                    origin,
                    streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
                })
            }
            _ => None,
        };
        Ok(Self {
            enabled,
            limits: security::Limits::new(),
            trusted_proxies,
        })
    }

    /// The proxies whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[IpAddr] {
        &self.trusted_proxies
    }

    /// Whether the pages are served over https.
    pub fn is_https(&self) -> bool {
        self.enabled
            .as_ref()
            .is_some_and(|enabled| enabled.origin.secure)
    }

    fn enabled(&self) -> Option<&Enabled> {
        self.enabled.as_ref()
    }
}

/// Adds the pages, when enabled, to the API router, and wraps both in
/// the protections every request gets: the cross-origin check for
/// state-changing requests, the security headers and the per-address
/// rate limit.
pub fn with_pages(api: Router, state: AppState) -> Router {
    let mut csrf = CsrfLayer::new();
    let mut app = api;
    if let Some(enabled) = state.web.enabled() {
        app = app.merge(pages::router(state.clone()));
        csrf = csrf
            .add_trusted_origin(&enabled.origin.origin)
            .expect("a checked public origin is a valid origin");
    }
    let csrf = csrf.with_rejection_response(|_| {
        let mut response = Response::new(Body::from(
            "{\"error\":\"cross-origin request refused: state-changing \
             requests must come from the server's own pages or from a \
             client that sends no Origin header\"}",
        ));
        *response.status_mut() = StatusCode::FORBIDDEN;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    });
    app.layer(csrf)
        .layer(from_fn_with_state(
            state.clone(),
            security::security_headers,
        ))
        .layer(from_fn_with_state(state, security::limit_by_address))
}

/// The approver that the request's session cookie names, for the API's
/// authentication. `Ok(None)` when the request has no session cookie or
/// the pages are off. A state-changing request must come from the
/// server's own origin and counts against the approver's rate limit.
pub fn session_approver(
    state: &AppState,
    parts: &Parts,
) -> Result<Option<String>, ApiError> {
    let Some(enabled) = state.web.enabled() else {
        return Ok(None);
    };
    let approver = enabled
        .sessions
        .approver(&parts.headers, crate::db::now())
        .map_err(|_| {
            ApiError::unauthorized(
                "the browser session ended; sign in again at /sign-in",
            )
        })?;
    let Some(approver) = approver else {
        return Ok(None);
    };
    if !security::same_origin(
        &parts.method,
        &parts.headers,
        &enabled.origin.origin,
    ) {
        tracing::warn!(
            approver,
            "cross-origin request with a session refused"
        );
        return Err(ApiError::forbidden(format!(
            "a state-changing request with a session cookie must come from \
             the pages at {}",
            enabled.origin.origin
        )));
    }
    if !parts.method.is_safe()
        && let Err(wait) = state.web.limits.approver(&approver)
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "approver {approver} made too many requests; try again in \
                 {} s",
                wait.as_secs().max(1)
            ),
        ));
    }
    Ok(Some(approver))
}

/// Ends every browser session of `approver`.
pub fn close_sessions_of(state: &AppState, approver: &str) {
    if let Some(enabled) = state.web.enabled() {
        enabled.sessions.close_all_of(approver);
    }
}

/// Renders the proposal page of a diff document for a made-up
/// proposal, without a database or a session. For the benchmark of
/// page generation only; not a stable interface.
#[doc(hidden)]
pub fn bench_proposal_page(
    document: &countersign_nix::diff::DiffDocument,
) -> String {
    pages::render_detached(document)
}
