//! The network-facing countersign server: it fetches and builds proposed
//! configurations, computes their diffs, writes the statements approvers
//! sign, collects approvals over an HTTP API, and hands a certificate to
//! the privileged activator as soon as the policy's quorum is met.
//!
//! The server is unprivileged and trusted by nobody: the activator checks
//! every certificate on its own. What the server keeps (proposals, votes
//! and an append-only, hash-chained audit log) lives in SQLite in the
//! state folder.

mod activation;
mod activator;
mod api;
mod api_error;
mod audit;
mod auth;
mod ci_gate;
mod config;
mod db;
mod forge_status;
mod gc_roots;
mod integrations;
mod metrics;
mod notify;
mod outbound;
mod pipeline;
mod poll;
mod signed_commits;
mod state;
mod votes;
mod web;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use api::REQUEST_TIMEOUT;
pub use api_error::MAX_BODY_BYTES;
pub use audit::{AuditSummary, AuditVerifyError, verify_audit};
pub use auth::{CHALLENGE_LIFETIME_SECS, TOKEN_LIFETIME_SECS};
pub use ci_gate::CiConfig;
pub use config::{
    ConfigError, MIN_POLL_INTERVAL_SECS, NixConfig, RepositoryConfig,
    ServerConfig, TriggerConfig, WebhookConfig,
};
pub use db::DB_FILE;
pub use forge_status::{CommitStatusConfig, ForgeApi};
pub use notify::{NotifyConfig, NotifyEvent, NotifyWebhookConfig, NtfyConfig};
pub use signed_commits::SignedCommitsConfig;
#[doc(hidden)]
pub use web::bench_proposal_page;
pub use web::{CONTENT_SECURITY_POLICY, WebConfig};

use crate::db::{AuditEvent, Context, Db, ProposalState};
use crate::state::{AppState, Inner, PolicySource};

/// How often expired proposals are marked.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(5);

/// How often an activation whose outcome is unknown is looked up again
/// from the activator's status.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// The message of proposals a restart interrupted while building.
const INTERRUPTED: &str = "interrupted by a server restart; propose again";

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the state folder {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the database in {path}: {source}")]
    Database { path: String, source: db::DbError },
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// A server started with [`start`], answering requests until
/// [`RunningServer::shutdown`] is called or it is dropped.
pub struct RunningServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    http: JoinHandle<std::io::Result<()>>,
    /// The build worker and the periodic task.
    background: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// The address the server listens on, with the port the system chose
    /// when the configuration gave port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting requests, finishes the open ones and stops the
    /// build queue and the periodic tasks. A build already running on its
    /// blocking thread finishes, but its result is not recorded, so the
    /// next start marks it failed. Activations already sent run on to
    /// their end.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.stop_background();
        match (&mut self.http).await {
            Ok(result) => result.map_err(ServerError::Serve),
            Err(error) => {
                Err(ServerError::Serve(std::io::Error::other(error)))
            }
        }
    }
}

impl RunningServer {
    fn stop_background(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.stop_background();
    }
}

/// Runs the server until it receives SIGINT or SIGTERM.
pub async fn serve(config: ServerConfig) -> Result<(), ServerError> {
    let server = start(config).await?;
    wait_for_signal().await;
    tracing::info!("stopping");
    server.shutdown().await
}

async fn wait_for_signal() {
    let mut terminate = match tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::terminate(),
    ) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot wait for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Validates the configuration, opens the database, recovers from an
/// earlier crash, starts the periodic tasks and listens for requests.
pub async fn start(
    config: ServerConfig,
) -> Result<RunningServer, ServerError> {
    let checked = config.check()?;
    let nix = config.nix_runner()?;
    for folder in [
        config.state_dir.clone(),
        config.state_dir.join("logs"),
        config.state_dir.join("gcroots"),
    ] {
        std::fs::create_dir_all(&folder).map_err(|source| {
            ServerError::StateDir {
                path: folder.display().to_string(),
                source,
            }
        })?;
    }
    let db = Db::open(&config.state_dir).map_err(|source| {
        ServerError::Database {
            path: config.state_dir.join(db::DB_FILE).display().to_string(),
            source,
        }
    })?;
    tracing::info!(
        host = config.host,
        policy = %checked.policy.sha256,
        policy_bytes = checked.policy_bytes.len(),
        trigger = checked.trigger_token.is_some(),
        "configuration loaded"
    );
    let web = web::WebState::new(config.web.as_ref())
        .map_err(ConfigError::Invalid)?;
    let (builds, build_queue) = tokio::sync::mpsc::unbounded_channel();
    let state = AppState::new(Inner {
        attribute: config.attribute(),
        policy: PolicySource::new(
            config.policy.clone(),
            config.host.clone(),
            checked.policy,
        ),
        auth: auth::Auth::new(checked.trigger_token.as_deref()),
        config,
        nix,
        db,
        numbering: tokio::sync::Mutex::new(()),
        builds,
        activations: Mutex::new(Default::default()),
        integrations: checked.integrations,
        web,
    });

    recover(&state)
        .await
        .map_err(|source| ServerError::Database {
            path: state.state_dir().join(db::DB_FILE).display().to_string(),
            source,
        })?;

    let listener =
        TcpListener::bind(checked.listen).await.map_err(|source| {
            ServerError::Bind {
                address: checked.listen,
                source,
            }
        })?;
    let address =
        listener.local_addr().map_err(|source| ServerError::Bind {
            address: checked.listen,
            source,
        })?;
    tracing::info!(%address, "listening");

    let builder = tokio::spawn(pipeline::worker(state.clone(), build_queue));
    let periodic = tokio::spawn(periodic(state.clone()));
    let mut background = vec![builder, periodic];
    if let Some(interval) = state.config.repository.poll_interval() {
        background.push(tokio::spawn(poll::run(state.clone(), interval)));
    }
    match integrations::start(&state).await {
        Ok(tasks) => background.extend(tasks),
        Err(source) => {
            for task in &background {
                task.abort();
            }
            return Err(ServerError::Database {
                path: state
                    .state_dir()
                    .join(db::DB_FILE)
                    .display()
                    .to_string(),
                source,
            });
        }
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let app = api::router(state.clone(), checked.webhook_secret);
    let app = web::with_pages(app, state)
        .into_make_service_with_connect_info::<SocketAddr>();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(RunningServer {
        address,
        stop: Some(stop),
        http,
        background,
    })
}

/// Handles what a crash or `kill -9` left behind: builds that were
/// running are failed (their blocking work died with the process), and
/// activations whose outcome was not received are looked up from the
/// activator's status. An activation that cannot be resolved yet stays
/// `activating` and the periodic task tries again.
async fn recover(state: &AppState) -> Result<(), db::DbError> {
    let interrupted = state
        .db
        .run(|connection| {
            let tx = connection.transaction().context("begin")?;
            let building = db::numbers_in_state(&tx, ProposalState::Building)?;
            for &number in &building {
                db::set_state(
                    &tx,
                    number,
                    ProposalState::Building,
                    ProposalState::Failed,
                    Some(INTERRUPTED),
                )?;
                db::append_audit(
                    &tx,
                    AuditEvent {
                        kind: "proposal-failed",
                        proposal: number,
                        approver: None,
                        detail: json!({ "error": INTERRUPTED }),
                    },
                )?;
            }
            tx.commit().context("commit")?;
            Ok(building)
        })
        .await?;
    for number in interrupted {
        tracing::warn!(proposal = number, "build interrupted by a restart");
    }
    let activating = state
        .db
        .run(|connection| {
            db::numbers_in_state(connection, ProposalState::Activating)
        })
        .await?;
    for number in activating {
        activation::resolve(state, number).await;
    }
    Ok(())
}

/// Every few seconds, marks expired proposals and releases the GC roots
/// of proposals that can no longer be deployed. Looks up activations
/// with an unknown outcome now and then.
async fn periodic(state: AppState) {
    let mut ticker = tokio::time::interval(EXPIRY_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_resolve = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        if let Err(error) = expire_due(&state).await {
            tracing::error!(%error, "marking expired proposals failed");
        }
        match gc_roots::release(&state).await {
            Ok(released) if !released.is_empty() => tracing::info!(
                proposals = ?released,
                "released the GC roots of proposals that can no longer \
                 be deployed"
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "releasing GC roots failed");
            }
        }
        if last_resolve.elapsed() >= RESOLVE_INTERVAL {
            last_resolve = tokio::time::Instant::now();
            resolve_orphaned(&state).await;
        }
    }
}

async fn expire_due(state: &AppState) -> Result<(), db::DbError> {
    let expired = state
        .db
        .run(|connection| {
            let now = db::now();
            let due = db::expired_numbers(connection, now)?;
            if due.is_empty() {
                return Ok(due);
            }
            let tx = connection.transaction().context("begin")?;
            let mut expired = Vec::new();
            for number in due {
                let expires = db::proposal(&tx, number)?
                    .and_then(|row| row.expires)
                    .unwrap_or(now);
                if votes::expire(&tx, number, expires)? {
                    expired.push(number);
                }
            }
            tx.commit().context("commit")?;
            Ok(expired)
        })
        .await?;
    for number in expired {
        tracing::info!(proposal = number, "proposal expired");
    }
    Ok(())
}

async fn resolve_orphaned(state: &AppState) {
    let activating = state
        .db
        .run(|connection| {
            db::numbers_in_state(connection, ProposalState::Activating)
        })
        .await;
    match activating {
        Ok(numbers) => {
            for number in numbers {
                if !activation::in_flight(state, number) {
                    activation::resolve(state, number).await;
                }
            }
        }
        Err(error) => {
            tracing::error!(%error, "finding unresolved activations failed")
        }
    }
}
