//! The administrator's pre-switch commands and the health checks after a
//! switch. Both come from the activator's own configuration, never from
//! the certificate or the system being activated.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use countersign_core::protocol::{Event, Step};
use countersign_core::{Action, StorePath};

use crate::activate::{EventSink, progress};
use crate::command::{self, CommandError};
use crate::config::{HealthConfig, PreSwitchCommand};

/// Pause between two attempts of a failing health check.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Maximum bytes read for an HTTP status line.
const MAX_STATUS_LINE_BYTES: u64 = 8 * 1024;

/// The facts about an activation that commands receive as environment
/// variables named `COUNTERSIGN_*`.
pub(crate) struct ActivationInfo<'a> {
    pub(crate) proposal: u64,
    pub(crate) action: Action,
    pub(crate) base: &'a StorePath,
    pub(crate) target: &'a StorePath,
}

impl ActivationInfo<'_> {
    fn variables(&self) -> [(&'static str, String); 4] {
        [
            ("COUNTERSIGN_PROPOSAL", self.proposal.to_string()),
            ("COUNTERSIGN_ACTION", self.action.as_str().to_owned()),
            ("COUNTERSIGN_BASE", self.base.as_str().to_owned()),
            ("COUNTERSIGN_TARGET", self.target.as_str().to_owned()),
        ]
    }
}

/// Runs each pre-switch command once, in order, and stops at the first
/// that fails or runs out of time.
pub(crate) fn run_pre_switch(
    commands: &[PreSwitchCommand],
    info: &ActivationInfo<'_>,
    events: &mut dyn EventSink,
) -> Result<(), String> {
    let variables = info.variables();
    for entry in commands {
        let mut command = command::clean_command(&entry.command, &variables);
        progress(
            events,
            Step::PreSwitch,
            format!(
                "running `{}` (at most {} s)",
                entry.command.join(" "),
                entry.timeout_secs
            ),
        );
        let deadline =
            Instant::now() + Duration::from_secs(entry.timeout_secs);
        command::run_until(&mut command, deadline, &mut log_line(events))
            .map_err(|error| format!("the pre-switch command {error}"))?;
    }
    Ok(())
}

/// Runs every health check in turn: units, then commands, then URLs.
/// Each is tried again every second until it passes or its timeout
/// expires; the first that does not pass is the error.
pub(crate) fn run_health_checks(
    health: &HealthConfig,
    info: &ActivationInfo<'_>,
    events: &mut dyn EventSink,
) -> Result<(), String> {
    for check in &health.units {
        let unit = &check.unit;
        progress(
            events,
            Step::HealthCheck,
            format!(
                "waiting for the unit {unit} to be active (at most {} s)",
                check.timeout_secs
            ),
        );
        retry(check.timeout_secs, &mut |deadline| {
            unit_is_active(unit, deadline)
        })
        .map_err(|error| {
            format!("health check of the unit {unit}: {error}")
        })?;
        progress(events, Step::HealthCheck, format!("{unit} is active"));
    }

    let variables = info.variables();
    for check in &health.commands {
        let shown = check.command.join(" ");
        progress(
            events,
            Step::HealthCheck,
            format!(
                "running `{shown}` until it succeeds (at most {} s)",
                check.timeout_secs
            ),
        );
        retry(check.timeout_secs, &mut |deadline| {
            let mut command =
                command::clean_command(&check.command, &variables);
            command::run_until(&mut command, deadline, &mut log_line(events))
                .map_err(|error| error.to_string())
        })
        .map_err(|error| format!("health check command: {error}"))?;
        progress(events, Step::HealthCheck, format!("`{shown}` succeeded"));
    }

    for check in &health.http {
        let url = &check.url;
        progress(
            events,
            Step::HealthCheck,
            format!(
                "waiting for GET {url} to answer 2xx (at most {} s)",
                check.timeout_secs
            ),
        );
        let parsed = HttpUrl::parse(url)
            .map_err(|error| format!("health check URL {url}: {error}"))?;
        retry(check.timeout_secs, &mut |deadline| {
            let status = http_get_status(&parsed, deadline)?;
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(format!("answered with status {status}"))
            }
        })
        .map_err(|error| format!("health check GET {url}: {error}"))?;
        progress(events, Step::HealthCheck, format!("GET {url} answered 2xx"));
    }
    Ok(())
}

fn log_line(events: &mut dyn EventSink) -> impl FnMut(&str) + '_ {
    move |line: &str| {
        tracing::info!(line, "check output");
        events.send(&Event::Log {
            line: line.to_owned(),
        });
    }
}

/// Calls `attempt` with the check's deadline until it succeeds, pausing
/// [`RETRY_INTERVAL`] between attempts, and returns the last error once
/// no time for another attempt is left.
fn retry(
    timeout_secs: u64,
    attempt: &mut dyn FnMut(Instant) -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let error = match attempt(deadline) {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if Instant::now() + RETRY_INTERVAL >= deadline {
            return Err(format!(
                "{error}; still failing after {timeout_secs} s"
            ));
        }
        thread::sleep(RETRY_INTERVAL);
    }
}

/// Asks `systemctl is-active` about `unit`, which prints `active` and
/// exits 0 only for an active unit.
fn unit_is_active(unit: &str, deadline: Instant) -> Result<(), String> {
    let argv = ["systemctl", "is-active", "--", unit].map(str::to_owned);
    let mut command = command::clean_command(&argv, &[]);
    let mut output = Vec::new();
    let result = command::run_until(&mut command, deadline, &mut |line| {
        output.push(line.to_owned());
    });
    match result {
        Ok(()) => Ok(()),
        Err(CommandError::Exit(_)) => Err(format!(
            "`systemctl is-active` reports {}",
            if output.is_empty() {
                "no state".to_owned()
            } else {
                output.join(" ")
            }
        )),
        Err(error) => Err(error.to_string()),
    }
}

/// A parsed `http://` URL of a loopback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpUrl {
    /// The host and port as written, for the `Host` header.
    authority: String,
    address: SocketAddr,
    /// The path and query, starting with `/`.
    target: String,
}

impl HttpUrl {
    /// Parses `http://HOST[:PORT][/PATH]`, where HOST is `localhost` or
    /// a loopback IP address. The activator runs as root and speaks plain
    /// HTTP, so it checks only services on the machine itself.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "{url:?} does not start with http://; health checks use \
                 plain HTTP to a loopback address such as \
                 http://127.0.0.1:8080/"
            )
        })?;
        // The authority ends at the path or at a query without a path.
        let (authority, target) = match rest.find(['/', '?']) {
            Some(index) => (&rest[..index], &rest[index..]),
            None => (rest, ""),
        };
        let target = if target.starts_with('/') {
            target.to_owned()
        } else {
            format!("/{target}")
        };
        if target
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#')
        {
            return Err(format!(
                "{url:?} has white space, a control character or a fragment \
                 in its path; percent-encode them or drop the fragment"
            ));
        }
        if authority.contains('@') {
            return Err(format!(
                "{url:?} contains user information; remove the part before \
                 `@`"
            ));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| {
            format!(
                "{url:?} has no valid host and port; write them as \
                 127.0.0.1:8080, [::1]:8080 or localhost:8080"
            )
        })?;
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse::<IpAddr>().map_err(|_| {
                format!(
                    "{url:?} names the host {host:?}; use localhost or a \
                     loopback IP address, because health checks stay on \
                     this machine"
                )
            })?
        };
        if !ip.is_loopback() {
            return Err(format!(
                "{url:?} names {ip}, which is not a loopback address; health \
                 checks stay on this machine, so use 127.0.0.1 or ::1"
            ));
        }
        Ok(Self {
            authority: authority.to_owned(),
            address: SocketAddr::new(ip, port),
            target,
        })
    }
}

/// Splits `host[:port]` or `[v6][:port]`; the port defaults to 80.
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return None,
        };
        (&rest[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None => 80,
        Some(text) => text.parse::<u16>().ok().filter(|port| *port != 0)?,
    };
    Some((host, port))
}

/// Sends `GET` for `url` over HTTP/1.1 and returns the status code of
/// the response, reading nothing past its status line.
fn http_get_status(url: &HttpUrl, deadline: Instant) -> Result<u16, String> {
    let remaining = || {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err("timed out".to_owned())
        } else {
            Ok(left)
        }
    };
    let mut stream = TcpStream::connect_timeout(&url.address, remaining()?)
        .map_err(|error| {
            format!("cannot connect to {}: {error}", url.address)
        })?;
    let io_error = |error: std::io::Error| match error.kind() {
        // A socket timeout shows as EAGAIN, whose text names no timeout.
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("the exchange with {} timed out", url.address)
        }
        _ => format!("the exchange with {} failed: {error}", url.address),
    };
    stream
        .set_write_timeout(Some(remaining()?))
        .map_err(io_error)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: countersign-activator\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n",
        url.target, url.authority
    );
    stream.write_all(request.as_bytes()).map_err(io_error)?;
    // The timeout of each read is what is left before the deadline, so
    // that a server sending a byte at a time cannot stretch the check.
    let mut line = Vec::new();
    let mut buffer = [0; 512];
    while !line.contains(&b'\n') && (line.len() as u64) < MAX_STATUS_LINE_BYTES
    {
        stream
            .set_read_timeout(Some(remaining()?))
            .map_err(io_error)?;
        let read = stream.read(&mut buffer).map_err(io_error)?;
        if read == 0 {
            break;
        }
        line.extend_from_slice(&buffer[..read]);
    }
    if let Some(end) = line.iter().position(|byte| *byte == b'\n') {
        line.truncate(end + 1);
    }
    parse_status_line(&line).ok_or_else(|| {
        format!(
            "{} did not answer with an HTTP/1.x status line: {:?}",
            url.address,
            String::from_utf8_lossy(&line)
        )
    })
}

/// Parses `HTTP/1.x NNN reason`.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.trim_end_matches(['\r', '\n']).splitn(3, ' ');
    let version = words.next()?;
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return None;
    }
    let code = words.next()?;
    if code.len() != 3 || !code.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn loopback_urls_parse() {
        let url =
            HttpUrl::parse("http://127.0.0.1:8470/api/v1/health").unwrap();
        assert_eq!(url.address, "127.0.0.1:8470".parse().unwrap());
        assert_eq!(url.target, "/api/v1/health");
        assert_eq!(url.authority, "127.0.0.1:8470");

        let url = HttpUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!(url.address, "[::1]:9000".parse().unwrap());
        assert_eq!(url.target, "/");

        let url = HttpUrl::parse("http://localhost?ready=1").unwrap();
        assert_eq!(url.address, "127.0.0.1:80".parse().unwrap());
        assert_eq!(url.target, "/?ready=1");
    }

    #[test]
    fn other_urls_are_rejected() {
        for url in [
            "https://127.0.0.1/",
            "http://example.org/",
            "http://10.0.0.1/",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:99999/",
            "http://user@127.0.0.1/",
            "http://127.0.0.1/a b",
            "http://127.0.0.1/#top",
            "http://[::1/",
            "http://:80/",
        ] {
            assert!(HttpUrl::parse(url).is_err(), "{url} was accepted");
        }
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 204 No Content\r\n"),
            Some(204)
        );
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/2 200\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn get_reads_status_of_loopback_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = Vec::new();
                reader.read_until(b'\n', &mut line).unwrap();
                if line == b"\r\n" || line.is_empty() {
                    break;
                }
                request.extend_from_slice(&line);
            }
            stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                .unwrap();
            String::from_utf8(request).unwrap()
        });
        let url = HttpUrl::parse(&format!("http://{address}/ready")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        assert_eq!(http_get_status(&url, deadline), Ok(503));
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /ready HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains(&format!("Host: {address}\r\n")),
            "{request}"
        );
    }

    #[test]
    fn slow_status_line_times_out() {
        // A server that sends a byte every 200 ms never lets one read
        // wait for its whole timeout.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            for _ in 0..50 {
                if stream.write_all(b"H").is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
        let url = HttpUrl::parse(&format!("http://{address}/")).unwrap();
        let started = Instant::now();
        let error = http_get_status(&url, started + Duration::from_secs(1))
            .unwrap_err();
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(3), "waited {waited:?}");
        assert!(error.contains("timed out"), "{error}");
        server.join().unwrap();
    }

    #[test]
    fn status_line_does_not_wait_for_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n")
                .unwrap();
            thread::sleep(Duration::from_secs(3));
        });
        let url = HttpUrl::parse(&format!("http://{address}/")).unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        assert_eq!(http_get_status(&url, deadline), Ok(200));
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(2), "waited {waited:?}");
        server.join().unwrap();
    }

    #[test]
    fn get_of_closed_port_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let url = HttpUrl::parse(&format!("http://{address}/")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = http_get_status(&url, deadline).unwrap_err();
        assert!(error.contains("cannot connect"), "{error}");
    }
}
