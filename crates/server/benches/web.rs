//! Cost of the proposal page for a large change: a source diff of 5,000
//! changed lines in 50 files and 300 package version changes. Measures
//! the server's time to turn the stored diff document into HTML (parse,
//! prepare, render) and the page's size before and after gzip, as the
//! server sends it. With `COUNTERSIGN_BIN` set to a `countersign`
//! binary, it also starts `countersign serve` with the pages on and
//! reports its resident memory once idle.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use countersign_core::StorePath;
use countersign_nix::diff::{
    DiffDocument, FileContent, FileDiff, FileStatus, Hunk, PackageDiff,
    SourceDiff, SystemDiff, VersionChange,
};
use countersign_nix::git::CommitInfo;

const FILES: usize = 50;
const LINES_PER_FILE: usize = 100;
const PACKAGES: usize = 300;
const ROUNDS: usize = 30;

fn store_path(name: &str) -> StorePath {
    StorePath::parse(&format!(
        "/nix/store/0c4x1ix4vd94r4m1ggq1k1hg9dw1dyhp-{name}"
    ))
    .expect("a valid store path")
}

fn commit(id: char) -> CommitInfo {
    CommitInfo {
        id: id.to_string().repeat(40),
        subject: "Update the fleet".into(),
        author: "Admin <admin@example.org>".into(),
        date: "2026-12-01T10:00:00+00:00".into(),
    }
}

fn document() -> DiffDocument {
    let files = (0..FILES)
        .map(|file| {
            let lines = (0..LINES_PER_FILE)
                .map(|line| {
                    let sign = if line % 2 == 0 { '+' } else { '-' };
                    format!(
                        "{sign}  services.app{file}.setting{line} = \
                         \"value {line} <of> {file}\";"
                    )
                })
                .collect();
            FileDiff {
                path: format!("hosts/web/module-{file}.nix"),
                old_path: None,
                status: FileStatus::Modified,
                old_mode: Some("100644".into()),
                new_mode: Some("100644".into()),
                old_size: Some(4000),
                new_size: Some(4100),
                lines_added: Some((LINES_PER_FILE / 2) as u64),
                lines_removed: Some((LINES_PER_FILE / 2) as u64),
                content: FileContent::Text {
                    hunks: vec![Hunk {
                        old_start: 1,
                        old_lines: LINES_PER_FILE / 2,
                        new_start: 1,
                        new_lines: LINES_PER_FILE / 2,
                        lines,
                    }],
                },
            }
        })
        .collect();
    let source = SourceDiff {
        old_commit: Some(commit('a')),
        new_commit: commit('b'),
        fast_forward: Some(true),
        commits: vec![commit('b')],
        commits_truncated: false,
        files,
        files_not_listed: 0,
    };
    let version_changes = (0..PACKAGES)
        .map(|package| VersionChange {
            name: format!("package-{package}"),
            old_versions: vec![format!("1.{package}.0")],
            new_versions: vec![format!("1.{package}.1")],
            downgrade: false,
            old_size: 1_000_000,
            new_size: 1_000_512,
            size_delta: 512,
        })
        .collect();
    let packages = PackageDiff {
        old_closure_size: 2_000_000_000,
        new_closure_size: 2_000_153_600,
        closure_size_delta: 153_600,
        old_path_count: 1500,
        new_path_count: 1500,
        added: Vec::new(),
        removed: Vec::new(),
        version_changes,
        rebuilt: Vec::new(),
        duplicated: Vec::new(),
        regenerated: Vec::new(),
        largest_size_changes: Vec::new(),
    };
    let system = SystemDiff {
        old_system: Some(store_path("nixos-system-old")),
        new_system: store_path("nixos-system-new"),
        toplevel: Vec::new(),
        units: Vec::new(),
        etc: Vec::new(),
        specialisations: Vec::new(),
        bootspec: None,
        initrd: None,
        alerts: Vec::new(),
        truncated: false,
    };
    DiffDocument::assemble(Some(source), packages, system)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    );
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

fn main() {
    let stored = document().to_json();
    let mut times = Vec::with_capacity(ROUNDS);
    let mut html = String::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let parsed = DiffDocument::from_json(&stored).expect("parse");
        html = countersign_server::bench_proposal_page(&parsed);
        times.push(start.elapsed());
    }
    times.sort();
    let compressed = gzip(html.as_bytes());
    let start = Instant::now();
    let _ = gzip(html.as_bytes());
    let gzip_time = start.elapsed();
    println!(
        "proposal page, {} source diff lines in {FILES} files, {PACKAGES} \
         package changes:",
        FILES * LINES_PER_FILE
    );
    println!("  diff document      {:>9} bytes", stored.len());
    println!(
        "  render (median)    {:>9.2} ms   (min {:.2}, max {:.2}, {ROUNDS} rounds)",
        ms(times[ROUNDS / 2]),
        ms(times[0]),
        ms(times[ROUNDS - 1])
    );
    println!("  gzip               {:>9.2} ms", ms(gzip_time));
    println!("  page               {:>9} bytes", html.len());
    println!("  page, gzip         {:>9} bytes", compressed.len());

    if let Ok(binary) = std::env::var("COUNTERSIGN_BIN") {
        idle_memory(&binary);
    } else {
        println!("  idle memory        skipped: set COUNTERSIGN_BIN");
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Starts `countersign serve` with the pages on, loads two pages, waits
/// and reads its resident set size.
fn idle_memory(binary: &str) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let root = dir.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let key = countersign_nix::fixture::DEMO_ADMIN_KEY;
    std::fs::write(
        root.join("policy.toml"),
        format!(
            "host = \"bench\"\nthreshold = 1\n[webauthn]\n\
             rp_id = \"localhost\"\n\
             origins = [\"http://localhost:{port}\"]\n\
             [approvers.admin]\nssh = \"{key}\"\n"
        ),
    )
    .expect("write the policy");
    std::fs::write(
        root.join("server.toml"),
        format!(
            "host = \"bench\"\nlisten = \"127.0.0.1:{port}\"\n\
             state_dir = \"{state}\"\npolicy = \"{policy}\"\n\
             activator_socket = \"{socket}\"\n\
             [repository]\nurl = \"{root}/repo\"\n\
             [web]\npublic_origin = \"http://localhost:{port}\"\n",
            state = root.join("state").display(),
            policy = root.join("policy.toml").display(),
            socket = root.join("activator.sock").display(),
            root = root.display(),
        ),
    )
    .expect("write the configuration");
    let mut child = Command::new(binary)
        .arg("serve")
        .arg("--config")
        .arg(root.join("server.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start countersign serve");
    let start = Instant::now();
    while http_get(port, "/sign-in").is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "no server");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = http_get(port, "/static/countersign.js");
    std::thread::sleep(Duration::from_secs(2));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .unwrap_or_default();
    let rss = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: unknown")
        .trim_start_matches("VmRSS:")
        .trim()
        .to_owned();
    println!("  idle memory        {rss:>12}   (countersign serve, pages on)");
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends one GET to the local server and reads the whole answer.
fn http_get(port: u16, path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}
