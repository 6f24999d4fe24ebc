//! The state shared by request handlers and background tasks.

use std::collections::HashSet;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use countersign_core::{Policy, Sha256Digest};

use crate::api_error::ApiError;
use crate::auth::Auth;
use crate::config::ServerConfig;
use crate::db::Db;

/// A cheap handle to the server's shared state.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: ServerConfig,
    pub attribute: String,
    pub nix: countersign_nix::Nix,
    pub db: Arc<Db>,
    pub policy: PolicySource,
    pub auth: Auth,
    /// Held while a number is chosen and its proposal inserted, so two
    /// proposals never get the same number.
    pub numbering: tokio::sync::Mutex<()>,
    /// The queue of proposals to build.
    pub builds: tokio::sync::mpsc::UnboundedSender<crate::pipeline::BuildJob>,
    /// Proposals whose activation request is in flight in this process.
    pub activations: Mutex<HashSet<u64>>,
    /// The CI gate, commit statuses, signed commits and notifications.
    pub integrations: crate::integrations::Integrations,
    /// Browser sessions, passkey challenges and rate limits.
    pub web: crate::web::WebState,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    pub fn mirror_dir(&self) -> PathBuf {
        self.config.state_dir.join("mirror.git")
    }

    pub fn log_path(&self, number: u64) -> PathBuf {
        self.config
            .state_dir
            .join("logs")
            .join(format!("{number}.log"))
    }

    pub fn gc_root(&self, number: u64) -> PathBuf {
        self.config
            .state_dir
            .join("gcroots")
            .join(number.to_string())
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The policy file, read again on every use so that a deployed change
/// applies at once. The parsed policy is cached by the file's SHA-256.
pub struct PolicySource {
    path: PathBuf,
    host: String,
    cached: Mutex<Option<(Sha256Digest, Arc<Policy>)>>,
}

impl PolicySource {
    pub fn new(path: PathBuf, host: String, initial: Policy) -> Self {
        Self {
            path,
            host,
            cached: Mutex::new(Some((initial.sha256, Arc::new(initial)))),
        }
    }

    /// Returns the policy in force now to a caller who is not signed in
    /// yet. A failure's reason names the policy file and quotes its
    /// content, so it goes to the log only and the caller gets a 503
    /// error without it.
    pub fn current_for_visitor(&self) -> Result<Arc<Policy>, ApiError> {
        self.current().map_err(|error| {
            tracing::error!(error, "the policy cannot be loaded");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "the server cannot load its approval policy; the \
                 administrator finds the reason in the server log",
            )
        })
    }

    /// Reads the policy file and returns the policy in force now.
    pub fn current(&self) -> Result<Arc<Policy>, String> {
        let bytes = std::fs::read(&self.path).map_err(|error| {
            format!(
                "cannot read the policy file {}: {error}",
                self.path.display()
            )
        })?;
        let digest = Sha256Digest::of(&bytes);
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((cached_digest, policy)) = cached.as_ref()
            && *cached_digest == digest
        {
            return Ok(Arc::clone(policy));
        }
        let policy = Policy::from_toml(&bytes).map_err(|error| {
            format!(
                "the policy file {} is invalid: {error}",
                self.path.display()
            )
        })?;
        if policy.host != self.host {
            return Err(format!(
                "the policy file {} is for host {:?}, but this server \
                 serves {:?}",
                self.path.display(),
                policy.host,
                self.host
            ));
        }
        let policy = Arc::new(policy);
        *cached = Some((digest, Arc::clone(&policy)));
        Ok(policy)
    }
}
