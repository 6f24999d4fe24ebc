//! Protections around every request: security headers, the client's
//! address (with `X-Forwarded-For` believed only from trusted proxies),
//! rate limits per client address and per approver, and the same-origin
//! check for requests that a session cookie authenticates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header,
};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;

use crate::state::AppState;

/// The Content-Security-Policy of every response: only the server's own
/// script and style, no plugins, no framing, no `<base>` changes.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; \
    script-src 'self'; object-src 'none'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'self'";

/// Requests per second one client address may make on average, and the
/// burst it may make at once.
const ADDRESS_RATE: u32 = 50;
const ADDRESS_BURST: u32 = 200;

/// Sign-in, enrolment and challenge requests one client address may
/// make per minute, and at once.
const PASSKEY_PER_MINUTE: u32 = 60;
const PASSKEY_BURST: u32 = 30;

/// State-changing requests (votes, sign-out) one approver may make per
/// minute, and at once, through browser sessions and sign-ins.
const APPROVER_PER_MINUTE: u32 = 30;
const APPROVER_BURST: u32 = 20;

/// How many checks pass between two sweeps of idle limiter entries.
const SWEEP_EVERY: u64 = 4096;

/// The address a request is attributed to, as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// Returns the key that rate limits count this client under: the
    /// IPv4 address, or the /64 network of an IPv6 address. An IPv6 host
    /// is commonly assigned a whole /64, so keying by the full address
    /// would give it 2^64 separate allowances. An IPv4-mapped IPv6
    /// address counts as its IPv4 address.
    pub fn limit_key(self) -> IpAddr {
        match self.0.to_canonical() {
            IpAddr::V6(address) => {
                let bits = u128::from(address) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
            v4 => v4,
        }
    }
}

/// The keyed rate limiters.
pub struct Limits {
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    passkey_per_address: DefaultKeyedRateLimiter<IpAddr>,
    per_approver: DefaultKeyedRateLimiter<String>,
    checks: AtomicU64,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}

impl Limits {
    pub fn new() -> Self {
        let quota = |per_second: Option<u32>, per_minute: u32, burst: u32| {
            let burst = NonZeroU32::new(burst).expect("a burst above 0");
            match per_second {
                Some(rate) => Quota::per_second(
                    NonZeroU32::new(rate).expect("a rate above 0"),
                ),
                None => Quota::per_minute(
                    NonZeroU32::new(per_minute).expect("a rate above 0"),
                ),
            }
            .allow_burst(burst)
        };
        Self {
            per_address: RateLimiter::keyed(quota(
                Some(ADDRESS_RATE),
                0,
                ADDRESS_BURST,
            )),
            passkey_per_address: RateLimiter::keyed(quota(
                None,
                PASSKEY_PER_MINUTE,
                PASSKEY_BURST,
            )),
            per_approver: RateLimiter::keyed(quota(
                None,
                APPROVER_PER_MINUTE,
                APPROVER_BURST,
            )),
            checks: AtomicU64::new(0),
        }
    }

    fn sweep(&self) {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            self.per_address.retain_recent();
            self.passkey_per_address.retain_recent();
            self.per_approver.retain_recent();
        }
    }

    /// Counts one request from `address`; `Err` with the wait when over
    /// the limit.
    pub fn address(&self, address: ClientAddr) -> Result<(), Duration> {
        self.sweep();
        self.per_address
            .check_key(&address.limit_key())
            .map_err(|not_until| wait_of(&not_until))
    }

    /// Counts one passkey ceremony step (challenge, sign-in, enrolment)
    /// from `address`.
    pub fn passkey(&self, address: ClientAddr) -> Result<(), Duration> {
        self.passkey_per_address
            .check_key(&address.limit_key())
            .map_err(|not_until| wait_of(&not_until))
    }

    /// Counts one state-changing request or sign-in of `approver`.
    pub fn approver(&self, approver: &str) -> Result<(), Duration> {
        self.per_approver
            .check_key(&approver.to_owned())
            .map_err(|not_until| wait_of(&not_until))
    }
}

fn wait_of(
    not_until: &governor::NotUntil<governor::clock::QuantaInstant>,
) -> Duration {
    use governor::clock::{Clock, DefaultClock};
    not_until.wait_time_from(DefaultClock::default().now())
}

/// The response to a request over a rate limit.
pub fn too_many(wait: Duration, api: bool) -> Response {
    let seconds = wait.as_secs().max(1);
    let message = format!(
        "too many requests from this address or approver; try again in \
         {seconds} s"
    );
    let mut response = if api {
        (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({ "error": message })),
        )
            .into_response()
    } else {
        (StatusCode::TOO_MANY_REQUESTS, message).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Finds the client's address: the TCP peer, or, when the peer is a
/// trusted proxy, the rightmost address in `X-Forwarded-For` that is not
/// itself a trusted proxy. Addresses left of that one were written by
/// the client and could be anything, so they are ignored.
pub fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpAddr],
) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .map(|item| item.parse::<IpAddr>().ok())
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    forwarded
        .into_iter()
        .rev()
        .find(|address| !trusted.contains(address))
        .unwrap_or(peer)
}

/// Middleware: attributes the request to a client address, stores it as
/// [`ClientAddr`] and applies the per-address limit.
pub async fn limit_by_address(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let address =
        client_address(peer, request.headers(), state.web.trusted_proxies());
    request.extensions_mut().insert(ClientAddr(address));
    if let Err(wait) = state.web.limits.address(ClientAddr(address)) {
        tracing::warn!(client = %address, "rate limit reached");
        let api = request.uri().path().starts_with("/api/");
        return too_many(wait, api);
    }
    next.run(request).await
}

/// Middleware: adds the security headers to every response.
pub async fn security_headers(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set =
        |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
            headers
                .entry(name)
                .or_insert(HeaderValue::from_static(value));
        };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(
        headers,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        headers,
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    if state.web.is_https() {
        set(
            headers,
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000",
        );
    }
    response
}

/// Checks that a request that a session cookie authenticates comes from
/// the server's own pages. Safe methods always pass. Otherwise the
/// browser's `Origin` must equal the configured public origin exactly. A
/// browser that sends no `Origin` must at least send `Sec-Fetch-Site:
/// same-origin`. Cookies alone never authorise a state change.
pub fn same_origin(
    method: &Method,
    headers: &HeaderMap,
    origin: &str,
) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    match headers.get(header::ORIGIN) {
        Some(value) => value.as_bytes() == origin.as_bytes(),
        None => headers
            .get("sec-fetch-site")
            .is_some_and(|value| value.as_bytes() == b"same-origin"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let stranger: IpAddr = "198.51.100.9".parse().unwrap();
        let forwarded =
            headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.7")]);

        assert_eq!(client_address(stranger, &forwarded, &[proxy]), stranger);
        assert_eq!(client_address(proxy, &forwarded, &[proxy]), client);
        assert_eq!(client_address(proxy, &HeaderMap::new(), &[proxy]), proxy);
        let chained = headers(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2")]);
        let proxies =
            ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        assert_eq!(client_address(proxy, &chained, &proxies), client);
        let garbage = headers(&[("x-forwarded-for", "203.0.113.7, nonsense")]);
        assert_eq!(client_address(proxy, &garbage, &[proxy]), proxy);
    }

    #[test]
    fn same_origin_needs_exact_origin() {
        let origin = "https://deploy.example.org";
        let post = Method::POST;
        assert!(same_origin(&Method::GET, &HeaderMap::new(), origin));
        assert!(same_origin(&post, &headers(&[("origin", origin)]), origin));
        for other in [
            "https://deploy.example.org.evil.example",
            "http://deploy.example.org",
            "https://deploy.example.org:444",
            "null",
        ] {
            assert!(!same_origin(
                &post,
                &headers(&[("origin", other)]),
                origin
            ));
        }
        assert!(!same_origin(&post, &HeaderMap::new(), origin));
        assert!(same_origin(
            &post,
            &headers(&[("sec-fetch-site", "same-origin")]),
            origin
        ));
        assert!(!same_origin(
            &post,
            &headers(&[("sec-fetch-site", "cross-site")]),
            origin
        ));
    }

    #[test]
    fn limits_stop_bursts() {
        let limits = Limits::new();
        let address = ClientAddr("192.0.2.1".parse().unwrap());
        for _ in 0..PASSKEY_BURST {
            limits.passkey(address).unwrap();
        }
        assert!(limits.passkey(address).is_err());
        let other = ClientAddr("192.0.2.2".parse().unwrap());
        assert!(limits.passkey(other).is_ok());
        for _ in 0..APPROVER_BURST {
            limits.approver("phone").unwrap();
        }
        assert!(limits.approver("phone").is_err());
        assert!(limits.approver("laptop").is_ok());
    }

    #[test]
    fn one_ipv6_network_shares_one_limit() {
        let limits = Limits::new();
        // Each request from another address of the same /64.
        for host in 0..PASSKEY_BURST {
            let address = ClientAddr(
                format!("2001:db8:1:2::{:x}", host + 1).parse().unwrap(),
            );
            limits.passkey(address).unwrap();
        }
        let next = ClientAddr("2001:db8:1:2:ffff::9".parse().unwrap());
        assert!(limits.passkey(next).is_err());
        let neighbour = ClientAddr("2001:db8:1:3::1".parse().unwrap());
        assert!(limits.passkey(neighbour).is_ok());

        // IPv4 clients of a dual-stack listener keep one key each.
        let mapped = ClientAddr("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(mapped.limit_key(), "192.0.2.7".parse::<IpAddr>().unwrap());
        let other = ClientAddr("::ffff:192.0.2.8".parse().unwrap());
        assert_ne!(mapped.limit_key(), other.limit_key());
    }
}
