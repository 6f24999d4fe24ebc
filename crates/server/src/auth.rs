//! API sessions: single-use login challenges signed with an approver's
//! SSH key, bearer tokens, and the trigger token that may only create
//! proposals.
//!
//! Challenges and tokens live in memory only, so a restart ends every
//! session. The server keeps the SHA-256 of each token, never the token.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use countersign_core::sshsig::{self, Namespace};
use countersign_core::{ApproverKey, Sha256Digest};
use subtle::ConstantTimeEq;

use crate::api_error::ApiError;
use crate::state::AppState;

/// How long a login challenge can be used, in seconds.
pub const CHALLENGE_LIFETIME_SECS: u64 = 120;

/// How long a session token is valid, in seconds.
pub const TOKEN_LIFETIME_SECS: u64 = 600;

/// Maximum number of open challenges, so that unauthenticated requests
/// cannot fill the memory.
const MAX_OPEN_CHALLENGES: usize = 1024;

/// Maximum number of sessions kept at once.
const MAX_SESSIONS: usize = 4096;

/// Maximum number of open challenges per client (an IPv4 address or an
/// IPv6 /64). A new challenge beyond it replaces the client's oldest, so
/// one client cannot fill the table of open challenges and lock out
/// others (see [`make_room_for_challenge`]).
pub const MAX_CHALLENGES_PER_CLIENT: usize = 8;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An approver, through a session token.
    Approver(String),
    /// The holder of the trigger token.
    Trigger,
}

impl Principal {
    /// The approver's name, or 403 for the trigger token.
    pub fn require_approver(&self) -> Result<&str, ApiError> {
        match self {
            Principal::Approver(name) => Ok(name),
            Principal::Trigger => Err(ApiError::forbidden(
                "the trigger token may only create proposals; log in with \
                 an approver key for anything else",
            )),
        }
    }

    /// How the principal is named in the audit log.
    pub fn audit_name(&self) -> String {
        match self {
            Principal::Approver(name) => format!("approver:{name}"),
            Principal::Trigger => "trigger".to_owned(),
        }
    }
}

struct Session {
    approver: String,
    expires: u64,
}

struct OpenChallenge {
    expires: u64,
    /// The limit key of the client that asked for it.
    client: IpAddr,
}

/// Challenges, sessions and the trigger token's digest.
pub struct Auth {
    challenges: Mutex<HashMap<String, OpenChallenge>>,
    sessions: Mutex<HashMap<Sha256Digest, Session>>,
    trigger: Option<Sha256Digest>,
}

/// A new session.
pub struct Issued {
    pub token: String,
    pub expires: u64,
}

impl Auth {
    pub fn new(trigger_token: Option<&str>) -> Self {
        Self {
            challenges: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            trigger: trigger_token
                .map(|token| Sha256Digest::of(token.as_bytes())),
        }
    }

    /// Creates a challenge for `client`, the limit key of the
    /// requester: 32 random bytes as 64 hex digits.
    pub fn challenge(
        &self,
        now: u64,
        client: IpAddr,
    ) -> Result<(String, u64), ApiError> {
        let mut challenges = lock(&self.challenges);
        challenges.retain(|_, open| open.expires > now);
        let room = make_room_for_challenge(
            &mut challenges,
            client,
            MAX_OPEN_CHALLENGES,
            |open| (open.client, open.expires),
        );
        if !room {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "too many login challenges are open; try again in two \
                 minutes",
            ));
        }
        let challenge = random_hex::<32>();
        let expires = now + CHALLENGE_LIFETIME_SECS;
        challenges
            .insert(challenge.clone(), OpenChallenge { expires, client });
        Ok((challenge, expires))
    }

    /// Checks a signed challenge and opens a session for the approver
    /// whose key made the signature. The challenge is used up even when
    /// the signature is invalid.
    pub fn login(
        &self,
        policy: &countersign_core::Policy,
        challenge: &str,
        armored: &str,
        now: u64,
    ) -> Result<(String, Issued), ApiError> {
        let open = lock(&self.challenges).remove(challenge);
        match open {
            Some(open) if open.expires > now => {}
            _ => {
                return Err(ApiError::unauthorized(
                    "the challenge is unknown, expired or already used; \
                     request a new one with POST /api/v1/auth/challenge",
                ));
            }
        }
        let (approver, key) = approver_for_signature(policy, armored)?;
        sshsig::verify(
            key,
            Namespace::Login,
            challenge.as_bytes(),
            armored,
            approver.user_verification,
        )
        .map_err(|error| {
            ApiError::unauthorized(format!(
                "login signature of approver {} rejected: {error}; sign the \
                 challenge with `ssh-keygen -Y sign -n {}`",
                approver.name,
                Namespace::Login.as_str()
            ))
        })?;
        let name = approver.name.as_str().to_owned();
        let issued = self.issue(&name, now);
        Ok((name, issued))
    }

    fn issue(&self, approver: &str, now: u64) -> Issued {
        let token = random_hex::<32>();
        let expires = now + TOKEN_LIFETIME_SECS;
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, session| session.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            // Dropping the session closest to expiry keeps the map
            // bounded; its holder logs in again.
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, session)| session.expires)
                .map(|(digest, _)| *digest)
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            Sha256Digest::of(token.as_bytes()),
            Session {
                approver: approver.to_owned(),
                expires,
            },
        );
        Issued { token, expires }
    }

    /// Returns the principal that `token` belongs to.
    pub fn authenticate(
        &self,
        token: &str,
        now: u64,
    ) -> Result<Principal, ApiError> {
        let digest = Sha256Digest::of(token.as_bytes());
        if let Some(trigger) = &self.trigger {
            // Comparing digests of equal length in constant time reveals
            // neither the token nor its length through timing.
            if bool::from(digest.as_bytes().ct_eq(trigger.as_bytes())) {
                return Ok(Principal::Trigger);
            }
        }
        let sessions = lock(&self.sessions);
        match sessions.get(&digest) {
            Some(session) if session.expires > now => {
                Ok(Principal::Approver(session.approver.clone()))
            }
            Some(_) => Err(ApiError::unauthorized(
                "the session token expired; log in again",
            )),
            None => Err(ApiError::unauthorized(
                "the bearer token is not valid; log in again with POST \
                 /api/v1/auth/challenge and /api/v1/auth/login",
            )),
        }
    }
}

/// Checks that the policy in force still lists the approver of a
/// browser session. When it does not, every browser session of the
/// approver ends and the request is rejected with 401, as the pages do.
/// Bearer tokens are left to expire after [`TOKEN_LIFETIME_SECS`].
fn require_listed(state: &AppState, approver: &str) -> Result<(), ApiError> {
    let policy = state.policy.current().map_err(|error| {
        ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, error)
    })?;
    if policy
        .approvers
        .keys()
        .any(|listed| listed.as_str() == approver)
    {
        return Ok(());
    }
    crate::web::close_sessions_of(state, approver);
    tracing::warn!(
        approver,
        "sessions of an approver that the policy no longer lists ended"
    );
    Err(ApiError::unauthorized(format!(
        "approver {approver} is no longer in the policy, so its browser \
         sessions ended; sign in again once the policy lists it"
    )))
}

/// Finds the policy's approver whose SSH key is embedded in an armored
/// SSH signature, and that key. The signature itself is not checked
/// here. Approvers with a passkey never match: they sign in and vote
/// with WebAuthn assertions.
pub fn approver_for_signature<'p>(
    policy: &'p countersign_core::Policy,
    armored: &str,
) -> Result<(&'p countersign_core::Approver, &'p ssh_key::PublicKey), ApiError>
{
    let signature = sshsig::parse(armored).map_err(|error| {
        ApiError::bad_request(format!(
            "{error}; send the whole output of `ssh-keygen -Y sign`, from \
             -----BEGIN SSH SIGNATURE----- to -----END SSH SIGNATURE-----"
        ))
    })?;
    let embedded = signature.public_key();
    policy
        .approvers
        .values()
        .find_map(|approver| match &approver.key {
            ApproverKey::Ssh(key) if key.key_data() == embedded => {
                Some((approver, key))
            }
            ApproverKey::Ssh(_) | ApproverKey::WebAuthn(_) => None,
        })
        .ok_or_else(|| {
            let key = ssh_key::PublicKey::new(embedded.clone(), "");
            ApiError::forbidden(format!(
                "the key {} that made this signature belongs to no approver \
                 of the policy for host {}",
                sshsig::fingerprint(&key),
                policy.host
            ))
        })
}

/// Makes room in `open`, a table of at most `max_open` challenges, for
/// one more challenge of `client`, and returns whether there is room.
/// `owner` returns a challenge's client and expiry.
///
/// A client that already has [`MAX_CHALLENGES_PER_CLIENT`] open loses
/// its challenge that expires first. When the table is full, the client
/// that holds the most challenges loses its first-expiring one, so that
/// filling the table takes `max_open` clients with one challenge each,
/// rather than `max_open / MAX_CHALLENGES_PER_CLIENT` clients.
pub(crate) fn make_room_for_challenge<K: Clone + Eq + Hash, V>(
    open: &mut HashMap<K, V>,
    client: IpAddr,
    max_open: usize,
    owner: impl Fn(&V) -> (IpAddr, u64),
) -> bool {
    // Per client: how many challenges it holds, and its first-expiring.
    let mut held: HashMap<IpAddr, (usize, &K, u64)> = HashMap::new();
    for (key, value) in open.iter() {
        let (holder, expires) = owner(value);
        let entry = held.entry(holder).or_insert((0, key, expires));
        entry.0 += 1;
        if expires < entry.2 {
            (entry.1, entry.2) = (key, expires);
        }
    }
    let evict = match held.get(&client) {
        Some(&(count, key, _)) if count >= MAX_CHALLENGES_PER_CLIENT => {
            Some(key.clone())
        }
        _ if open.len() >= max_open => held
            .values()
            .filter(|(count, _, _)| *count > 1)
            .max_by_key(|(count, _, expires)| {
                (*count, std::cmp::Reverse(*expires))
            })
            .map(|(_, key, _)| (*key).clone()),
        _ => None,
    };
    if let Some(key) = evict {
        open.remove(&key);
    }
    open.len() < max_open
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes[..]);
    hex::encode(bytes)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            // Without a bearer token, a browser session of the web pages
            // may authenticate the request.
            if let Some(approver) = crate::web::session_approver(state, parts)?
            {
                require_listed(state, &approver)?;
                return Ok(Principal::Approver(approver));
            }
            return Err(ApiError::unauthorized(
                "missing Authorization header; send `Authorization: Bearer \
                 <token>` with a token from POST /api/v1/auth/login",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|text| text.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "the Authorization header is not of the form `Bearer \
                     <token>`",
                )
            })?;
        state.auth.authenticate(token, crate::db::now())
    }
}
