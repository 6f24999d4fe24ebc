//! Browser sessions: single-use passkey challenges and the session
//! cookie that a successful sign-in sets.
//!
//! Both live in memory only, so a restart signs everybody out. The
//! cookie holds 32 random bytes; the server keeps only their SHA-256.
//! The cookie is `HttpOnly` and `SameSite=Strict`; over https it is also
//! `Secure` and named with the `__Host-` prefix, which makes browsers
//! refuse it unless it is secure, host-only and for path `/`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use axum::http::HeaderMap;
use axum::http::header;
use countersign_core::Sha256Digest;

use crate::auth::make_room_for_challenge;

/// How long a passkey challenge (sign-in or enrolment) can be used, in
/// seconds.
pub const CHALLENGE_LIFETIME_SECS: u64 = 300;

/// How long a browser session lasts, in seconds. Every approval or
/// rejection needs its own passkey signature, so the session only
/// decides who may read proposals.
pub const SESSION_LIFETIME_SECS: u64 = 8 * 60 * 60;

/// Maximum number of open challenges, so that unauthenticated requests
/// cannot fill the memory.
const MAX_OPEN_CHALLENGES: usize = 1024;

/// Maximum number of sessions kept at once.
const MAX_SESSIONS: usize = 4096;

/// What a challenge may be used for; a challenge issued for one purpose
/// is refused for the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    SignIn,
    /// Registration of a new passkey for the approver `name`, with the
    /// random WebAuthn user handle given to the browser.
    Enrol {
        name: String,
        user_id: Vec<u8>,
    },
}

struct Challenge {
    purpose: Purpose,
    expires: u64,
    /// The limit key of the client that asked for it.
    client: IpAddr,
}

struct Session {
    approver: String,
    expires: u64,
}

/// The challenges and sessions of the web pages.
pub struct Sessions {
    challenges: Mutex<HashMap<[u8; 32], Challenge>>,
    sessions: Mutex<HashMap<Sha256Digest, Session>>,
    cookie_name: &'static str,
    secure: bool,
}

/// A challenge could not be issued because too many are open.
#[derive(Debug)]
pub struct TooManyChallenges;

impl Sessions {
    pub fn new(secure: bool) -> Self {
        Self {
            challenges: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            cookie_name: if secure {
                "__Host-countersign-session"
            } else {
                "countersign-session"
            },
            secure,
        }
    }

    /// Issues a fresh random challenge for `purpose` to `client`, the
    /// limit key of the requester, making room as
    /// [`make_room_for_challenge`] describes.
    pub fn challenge(
        &self,
        purpose: Purpose,
        now: u64,
        client: IpAddr,
    ) -> Result<[u8; 32], TooManyChallenges> {
        let mut challenges = lock(&self.challenges);
        challenges.retain(|_, challenge| challenge.expires > now);
        let room = make_room_for_challenge(
            &mut challenges,
            client,
            MAX_OPEN_CHALLENGES,
            |challenge| (challenge.client, challenge.expires),
        );
        if !room {
            return Err(TooManyChallenges);
        }
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes[..]);
        challenges.insert(
            bytes,
            Challenge {
                purpose,
                expires: now + CHALLENGE_LIFETIME_SECS,
                client,
            },
        );
        Ok(bytes)
    }

    /// Removes the challenge and returns its purpose if it was issued,
    /// has not expired and was not used before. A challenge is used up by
    /// this call whatever happens next, so a failed attempt cannot be
    /// retried with the same challenge.
    pub fn take_challenge(
        &self,
        bytes: &[u8; 32],
        now: u64,
    ) -> Option<Purpose> {
        let challenge = lock(&self.challenges).remove(bytes)?;
        (challenge.expires > now).then_some(challenge.purpose)
    }

    /// Opens a session for `approver` and returns the `Set-Cookie` value.
    pub fn open(&self, approver: &str, now: u64) -> String {
        let mut token = [0u8; 32];
        rand::fill(&mut token[..]);
        let token = hex::encode(token);
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, session| session.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, session)| session.expires)
                .map(|(digest, _)| *digest)
        {
            // Dropping the session closest to expiry keeps the map
            // bounded; its holder signs in again.
            sessions.remove(&oldest);
        }
        sessions.insert(
            Sha256Digest::of(token.as_bytes()),
            Session {
                approver: approver.to_owned(),
                expires: now + SESSION_LIFETIME_SECS,
            },
        );
        self.cookie(&token, SESSION_LIFETIME_SECS)
    }

    /// Ends the session of the request's cookie, if any, and returns the
    /// `Set-Cookie` value that clears the cookie.
    pub fn close(&self, headers: &HeaderMap) -> String {
        if let Some(token) = self.token(headers) {
            lock(&self.sessions).remove(&Sha256Digest::of(token.as_bytes()));
        }
        self.cookie("", 0)
    }

    /// The approver whose session cookie the request carries, if the
    /// session is open. `Err` when a cookie is present but its session
    /// is unknown or expired, so the caller can say "sign in again".
    pub fn approver(
        &self,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<Option<String>, SessionEnded> {
        let Some(token) = self.token(headers) else {
            return Ok(None);
        };
        let digest = Sha256Digest::of(token.as_bytes());
        let sessions = lock(&self.sessions);
        match sessions.get(&digest) {
            Some(session) if session.expires > now => {
                Ok(Some(session.approver.clone()))
            }
            _ => Err(SessionEnded),
        }
    }

    /// Ends every session of `approver`, for example when the policy no
    /// longer lists it.
    pub fn close_all_of(&self, approver: &str) {
        lock(&self.sessions).retain(|_, session| session.approver != approver);
    }

    fn token<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.cookie_name)
            .map(|(_, value)| value.trim())
            .filter(|value| {
                value.len() == 64
                    && value.bytes().all(|byte| byte.is_ascii_hexdigit())
            })
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; \
             SameSite=Strict{secure}",
            self.cookie_name
        )
    }
}

/// The request's session cookie names no open session.
#[derive(Debug)]
pub struct SessionEnded;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::MAX_CHALLENGES_PER_CLIENT;
    use axum::http::HeaderValue;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn token_of(set_cookie: &str) -> String {
        let pair = set_cookie.split(';').next().unwrap();
        pair.split_once('=').unwrap().1.to_owned()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn challenges_are_single_use_and_expire() {
        let sessions = Sessions::new(true);
        let challenge =
            sessions.challenge(Purpose::SignIn, 100, CLIENT).unwrap();
        assert_eq!(
            sessions.take_challenge(&challenge, 101),
            Some(Purpose::SignIn)
        );
        assert_eq!(sessions.take_challenge(&challenge, 101), None);

        let late = sessions.challenge(Purpose::SignIn, 100, CLIENT).unwrap();
        assert_eq!(
            sessions.take_challenge(&late, 100 + CHALLENGE_LIFETIME_SECS),
            None
        );
        assert_eq!(sessions.take_challenge(&[7; 32], 100), None);
    }

    #[test]
    fn one_client_cannot_fill_the_challenges() {
        let sessions = Sessions::new(true);
        let flooder = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 9));
        let first = sessions.challenge(Purpose::SignIn, 100, flooder).unwrap();
        for _ in 0..MAX_OPEN_CHALLENGES {
            sessions.challenge(Purpose::SignIn, 101, flooder).unwrap();
        }
        // The flooder's oldest challenge made room for its newer ones.
        assert_eq!(sessions.take_challenge(&first, 102), None);
        let mine = sessions.challenge(Purpose::SignIn, 102, CLIENT).unwrap();
        assert_eq!(sessions.take_challenge(&mine, 103), Some(Purpose::SignIn));
    }

    #[test]
    fn many_clients_leave_room_for_one_more() {
        let sessions = Sessions::new(true);
        // Enough /64 networks with the per-client maximum to fill the
        // table.
        let networks = MAX_OPEN_CHALLENGES / MAX_CHALLENGES_PER_CLIENT;
        for network in 0..networks {
            let address = IpAddr::V6(std::net::Ipv6Addr::from(
                (0x2001_0db8_u128 << 96) | ((network as u128) << 64),
            ));
            for _ in 0..MAX_CHALLENGES_PER_CLIENT {
                sessions.challenge(Purpose::SignIn, 100, address).unwrap();
            }
        }
        let mine = sessions.challenge(Purpose::SignIn, 101, CLIENT).unwrap();
        assert_eq!(sessions.take_challenge(&mine, 102), Some(Purpose::SignIn));
    }

    #[test]
    fn table_of_single_challenges_is_full() {
        let sessions = Sessions::new(true);
        for client in 0..MAX_OPEN_CHALLENGES {
            let address = IpAddr::V6(std::net::Ipv6Addr::from(
                (0x2001_0db8_u128 << 96) | ((client as u128) << 64),
            ));
            sessions.challenge(Purpose::SignIn, 100, address).unwrap();
        }
        assert!(sessions.challenge(Purpose::SignIn, 101, CLIENT).is_err());
        // Expired challenges make room again.
        let later = 100 + CHALLENGE_LIFETIME_SECS;
        assert!(sessions.challenge(Purpose::SignIn, later, CLIENT).is_ok());
    }

    #[test]
    fn secure_cookie_has_host_prefix() {
        let sessions = Sessions::new(true);
        let cookie = sessions.open("phone", 10);
        assert!(cookie.starts_with("__Host-countersign-session="));
        for attribute in ["Path=/", "HttpOnly", "SameSite=Strict", "Secure"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        assert!(!cookie.contains("Domain"), "{cookie}");

        let plain = Sessions::new(false).open("phone", 10);
        assert!(plain.starts_with("countersign-session="), "{plain}");
        assert!(!plain.contains("Secure"), "{plain}");
    }

    #[test]
    fn sessions_open_expire_and_close() {
        let sessions = Sessions::new(false);
        let cookie = sessions.open("phone", 10);
        let headers = with_cookie(&format!(
            "other=1; countersign-session={}",
            token_of(&cookie)
        ));
        assert_eq!(
            sessions.approver(&headers, 11).unwrap().as_deref(),
            Some("phone")
        );
        assert!(
            sessions
                .approver(&headers, 10 + SESSION_LIFETIME_SECS)
                .is_err()
        );
        assert!(sessions.approver(&HeaderMap::new(), 11).unwrap().is_none());
        let forged =
            with_cookie(&format!("countersign-session={}", "ab".repeat(32)));
        assert!(sessions.approver(&forged, 11).is_err());

        let cleared = sessions.close(&headers);
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
        assert!(sessions.approver(&headers, 11).is_err());
    }
}
