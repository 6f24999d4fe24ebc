//! Approval uploads under a flood: the rate and latency at which one
//! approver's uploads are served while another client address sends bad
//! requests as fast as it can, on loopback, against the release
//! `countersign serve` of the demo system.
//!
//! The approver (127.0.0.1) uploads the same valid approval of a proposal
//! that awaits a second approval, at a fixed offered rate, over one
//! keep-alive connection. The flood (127.0.0.2) runs closed loops on
//! several connections, each request an approval upload with an unknown
//! bearer token and an invalid signature. Each phase reports the
//! approver's achieved rate, status counts and latency percentiles, and
//! the flood's rate by status. The clients use the small HTTP/1.1 client
//! of this file, so that the numbers include no client library's work.
//! They share the machine's cores with the server.
//!
//! Run with `scripts/bench-load`; results go to stdout.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use countersign::commands::demo::Environment;
use countersign::sign;
use countersign_core::sshsig::Namespace;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;

/// Approval uploads per second that the approver offers; below the
/// server's limit of 50 requests per second from one address.
const APPROVER_RATE: u32 = 20;
/// Connections of the flooding address.
const FLOOD_CONNECTIONS: usize = 64;
/// Length of each measured phase.
const PHASE: Duration = Duration::from_secs(20);
/// Largest response body read, in bytes.
const MAX_BODY_BYTES: usize = 1024 * 1024;

const APPROVER_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const FLOOD_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn main() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let binary = Path::new(env!("CARGO_BIN_EXE_countersign"));
    let mut environment =
        Environment::create(&dir.path().join("demo"), binary, None)
            .expect("the demo environment is created");
    environment.start().expect("server and activator start");
    environment
        .commit_change("Load", |spec| spec.apply_demo_change())
        .expect("the change is committed");
    let number = environment.propose().expect("the proposal is made");
    let detail = environment
        .wait_for_state(number, &["building"], Duration::from_secs(300))
        .expect("the proposal is built");
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");

    let server: SocketAddr = environment
        .server_url
        .trim_start_matches("http://")
        .parse()
        .expect("the demo server listens on an IP address");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(measure(&environment, server, number));
}

async fn measure(environment: &Environment, server: SocketAddr, number: u64) {
    let key = environment.layout.key("phone");
    let token = login(server, &key).await;
    let mut client = HttpClient::new(APPROVER_ADDRESS, server);
    let (status, statement) = client
        .request(
            "GET",
            &format!("/api/v1/proposals/{number}/statement"),
            &token,
            b"",
        )
        .await
        .expect("the statement is readable");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&statement));
    let signature = sign::sign(&key, Namespace::Approve, &statement)
        .expect("the phone signs the statement");
    let approval = serde_json::to_vec(&json!({ "signature": signature }))
        .expect("the body serializes");
    let path = format!("/api/v1/proposals/{number}/approvals");

    println!(
        "machine: {} cores; approver offers {APPROVER_RATE} uploads/s from \
         {APPROVER_ADDRESS}; flood: {FLOOD_CONNECTIONS} connections from \
         {FLOOD_ADDRESS}; {} s per phase",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        PHASE.as_secs()
    );
    // A warm-up that the report leaves out.
    approver_load(&mut client, &path, &token, &approval, PHASE / 10).await;

    let quiet =
        approver_load(&mut client, &path, &token, &approval, PHASE).await;
    quiet.report("approver alone");

    let stop = Arc::new(AtomicBool::new(false));
    let flood_counts = Arc::new(Mutex::new(BTreeMap::<u16, u64>::new()));
    let flood_started = Instant::now();
    let mut floods = Vec::new();
    for _ in 0..FLOOD_CONNECTIONS {
        floods.push(tokio::spawn(flood(
            server,
            path.clone(),
            Arc::clone(&stop),
            Arc::clone(&flood_counts),
        )));
    }
    // The flood uses up its address's burst before the measurement.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flooded =
        approver_load(&mut client, &path, &token, &approval, PHASE).await;
    stop.store(true, Ordering::SeqCst);
    for task in floods {
        task.await.expect("a flood task ends");
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    flooded.report("approver during the flood");
    let counts = flood_counts.lock().await;
    let total: u64 = counts.values().sum();
    println!(
        "flood: {total} responses in {flood_secs:.1} s = {:.0}/s",
        total as f64 / flood_secs
    );
    for (status, count) in counts.iter() {
        println!(
            "  status {status}: {count} ({:.0}/s)",
            *count as f64 / flood_secs
        );
    }
    let detail = client
        .request("GET", &format!("/api/v1/proposals/{number}"), &token, b"")
        .await
        .map(|(_, body)| serde_json::from_slice::<Value>(&body))
        .expect("the proposal is readable")
        .expect("the proposal is JSON");
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
}

/// Signs in as the approver whose private key is at `key`.
async fn login(server: SocketAddr, key: &Path) -> String {
    let mut client = HttpClient::new(APPROVER_ADDRESS, server);
    let (_, body) = client
        .request("POST", "/api/v1/auth/challenge", "", b"{}")
        .await
        .expect("a challenge");
    let challenge: Value = serde_json::from_slice(&body).expect("JSON");
    let challenge = challenge["challenge"].as_str().expect("a challenge");
    let signature = sign::sign(key, Namespace::Login, challenge.as_bytes())
        .expect("the key signs the challenge");
    let body = json!({ "challenge": challenge, "signature": signature });
    let (status, body) = client
        .request(
            "POST",
            "/api/v1/auth/login",
            "",
            body.to_string().as_bytes(),
        )
        .await
        .expect("a login response");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let session: Value = serde_json::from_slice(&body).expect("JSON");
    session["token"].as_str().expect("a token").to_owned()
}

/// The approver's results of one phase.
struct Phase {
    elapsed: Duration,
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

impl Phase {
    fn report(&self, name: &str) {
        let ok: u64 = self
            .statuses
            .iter()
            .filter(|(status, _)| (200..300).contains(*status))
            .map(|(_, count)| count)
            .sum();
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let percentile = |p: f64| {
            let index = ((sorted.len() as f64 * p).ceil() as usize)
                .saturating_sub(1)
                .min(sorted.len().saturating_sub(1));
            sorted.get(index).copied().unwrap_or_default()
        };
        println!(
            "{name}: {} uploads, {ok} accepted = {:.1}/s held; latency \
             p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
             statuses {:?}; connection errors {}",
            sorted.len(),
            ok as f64 / self.elapsed.as_secs_f64(),
            millis(percentile(0.50)),
            millis(percentile(0.90)),
            millis(percentile(0.99)),
            millis(sorted.last().copied().unwrap_or_default()),
            self.statuses,
            self.errors,
        );
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Sends approval uploads at [`APPROVER_RATE`] for `length`. Each upload
/// is timed from its scheduled start, so that a slow response also
/// counts against the uploads queued behind it.
async fn approver_load(
    client: &mut HttpClient,
    path: &str,
    token: &str,
    body: &[u8],
    length: Duration,
) -> Phase {
    let interval = Duration::from_secs(1) / APPROVER_RATE;
    let started = Instant::now();
    let mut phase = Phase {
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        statuses: BTreeMap::new(),
        errors: 0,
    };
    let mut next = started;
    while next < started + length {
        tokio::time::sleep_until(next.into()).await;
        match client.request("POST", path, token, body).await {
            Ok((status, _)) => {
                *phase.statuses.entry(status).or_default() += 1;
                phase.latencies.push(next.elapsed());
            }
            Err(_) => phase.errors += 1,
        }
        next += interval;
    }
    phase.elapsed = started.elapsed();
    phase
}

/// Sends bad approval uploads in a closed loop until `stop` is set.
async fn flood(
    server: SocketAddr,
    path: String,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<u16, u64>>>,
) {
    let mut client = HttpClient::new(FLOOD_ADDRESS, server);
    let body = br#"{"signature":"-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"}"#;
    let token = "0".repeat(64);
    let mut local = BTreeMap::<u16, u64>::new();
    while !stop.load(Ordering::SeqCst) {
        if let Ok((status, _)) =
            client.request("POST", &path, &token, body).await
        {
            *local.entry(status).or_default() += 1;
        }
    }
    let mut counts = counts.lock().await;
    for (status, count) in local {
        *counts.entry(status).or_default() += count;
    }
}

/// A keep-alive HTTP/1.1 client on one connection from a chosen source
/// address; it reconnects after the server closes the connection.
struct HttpClient {
    from: IpAddr,
    server: SocketAddr,
    connection: Option<BufReader<TcpStream>>,
}

impl HttpClient {
    fn new(from: IpAddr, server: SocketAddr) -> Self {
        Self {
            from,
            server,
            connection: None,
        }
    }

    async fn connect(&self) -> std::io::Result<BufReader<TcpStream>> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(self.from, 0))?;
        let stream = socket.connect(self.server).await?;
        stream.set_nodelay(true)?;
        Ok(BufReader::new(stream))
    }

    /// Sends one request and returns the status and body of the
    /// response; `token` is sent as a bearer token unless empty.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let result = self.exchange(method, path, token, body).await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            self.server,
            body.len()
        );
        if !token.is_empty() {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        connection.get_mut().write_all(&bytes).await?;

        let mut line = String::new();
        connection.read_line(&mut line).await?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            connection.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let body = if chunked {
            read_chunked(&mut connection).await?
        } else {
            let length = length.unwrap_or(0);
            if length > MAX_BODY_BYTES {
                return Err(invalid(format!("a body of {length} bytes")));
            }
            let mut body = vec![0; length];
            connection.read_exact(&mut body).await?;
            body
        };
        if !close {
            self.connection = Some(connection);
        }
        Ok((status, body))
    }
}

async fn read_chunked(
    connection: &mut BufReader<TcpStream>,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        connection.read_line(&mut line).await?;
        let size = usize::from_str_radix(
            line.trim_end().split(';').next().unwrap_or(""),
            16,
        )
        .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            line.clear();
            connection.read_line(&mut line).await?;
            return Ok(body);
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(invalid("a chunked body above the limit".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        connection.read_exact(&mut body[start..]).await?;
        line.clear();
        connection.read_line(&mut line).await?;
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}
