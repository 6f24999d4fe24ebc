//! Latency of countersign's own work in the deployment flow, on the demo
//! system, with the release binaries:
//!
//! - from the start of the final approval's upload to the start of
//!   `switch-to-configuration` (the modification time of the fixture's
//!   switch log, which the script appends to as its first action);
//! - from the trigger to `awaiting-approval`, minus the time the server
//!   measured inside Nix (fetching the source and building);
//! - the resident memory of the idle server and activator.
//!
//! Run with `scripts/bench-flow`; results go to stdout for
//! BENCHMARKS.md.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use countersign::client::Client;
use countersign::commands::demo::Environment;
use countersign::sign;
use countersign_core::sshsig::Namespace;
use serde_json::{Value, json};

const ROUNDS: usize = 7;

fn main() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let binary = Path::new(env!("CARGO_BIN_EXE_countersign"));
    let activator = binary.with_file_name("countersign-activator");
    assert!(
        activator.exists(),
        "{} is missing; run scripts/bench-flow, which builds it first",
        activator.display()
    );
    let mut environment =
        Environment::create(&dir.path().join("demo"), binary, None)
            .expect("the demo environment is created");
    environment.start().expect("server and activator start");

    let mut approval_to_switch = Vec::new();
    let mut trigger_overhead = Vec::new();
    let mut diff_times = Vec::new();
    let mut git_times = Vec::new();
    for round in 0..ROUNDS {
        environment
            .commit_change(&format!("Round {round}"), |spec| {
                spec.kernel_params.push(format!("bench.round={round}"));
            })
            .expect("the change is committed");

        let phone = environment.client("phone").expect("phone signs in");
        let started = Instant::now();
        let number = environment.propose().expect("the proposal is made");
        let detail = poll_until_built(&phone, number);
        let elapsed = started.elapsed();
        assert_eq!(detail["state"], "awaiting-approval", "{detail}");
        let log = phone
            .get_bytes(&format!("/api/v1/proposals/{number}/log"))
            .expect("the build log");
        let timings = parse_timings(&String::from_utf8_lossy(&log));
        let nix = Duration::from_millis(timings.nix_fetch + timings.nix_build);
        trigger_overhead.push(elapsed.saturating_sub(nix));
        diff_times.push(Duration::from_millis(timings.diff));
        git_times.push(Duration::from_millis(timings.git));

        let (ok, output) = environment
            .vote("approve", number, "phone")
            .expect("countersign approve runs");
        assert!(ok, "{output}");
        let statement = phone
            .get_bytes(&format!("/api/v1/proposals/{number}/statement"))
            .expect("the statement");
        let signature = sign::sign(
            &environment.layout.key("laptop"),
            Namespace::Approve,
            &statement,
        )
        .expect("the laptop signs");
        let laptop = environment.client("laptop").expect("laptop signs in");
        let lines_before = environment.switch_log().len();

        let upload = SystemTime::now();
        let _: Value = laptop
            .post_json(
                &format!("/api/v1/proposals/{number}/approvals"),
                &json!({ "signature": signature }),
            )
            .expect("the approval is accepted");
        while environment.switch_log().len() == lines_before {
            std::thread::sleep(Duration::from_millis(1));
        }
        let switched = std::fs::metadata(environment.layout.switch_log())
            .and_then(|metadata| metadata.modified())
            .expect("the switch log has a modification time");
        approval_to_switch
            .push(switched.duration_since(upload).unwrap_or(Duration::ZERO));
        let detail = environment
            .wait_for_state(
                number,
                &["awaiting-approval", "activating"],
                Duration::from_secs(60),
            )
            .expect("the activation ends");
        assert_eq!(detail["state"], "deployed", "{detail}");
    }

    std::thread::sleep(Duration::from_secs(3));
    println!("rounds: {ROUNDS}");
    report(
        "final approval upload -> switch-to-configuration",
        approval_to_switch,
    );
    report(
        "trigger -> awaiting-approval, minus Nix fetch and build",
        trigger_overhead,
    );
    report(
        "  of which the diff (with its Nix closure queries)",
        diff_times,
    );
    report(
        "  of which git (fetching the branch, reading the commit)",
        git_times,
    );
    for name in ["server", "activator"] {
        let pid = environment.pid(name).expect("the process runs");
        println!("idle {name} RSS: {} KiB", rss_kib(pid));
    }
}

/// Polls every 25 ms: often enough that the interval adds about 12 ms on
/// average, and within the server's rate limit of 50 requests per second
/// from one address.
fn poll_until_built(client: &Client, number: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let detail: Value = client
            .get_json(&format!("/api/v1/proposals/{number}"))
            .expect("the proposal is readable");
        if detail["state"] != "building" || Instant::now() > deadline {
            return detail;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

struct Timings {
    git: u64,
    nix_fetch: u64,
    nix_build: u64,
    diff: u64,
}

/// Reads the server's `timings (ms): …` build log line.
fn parse_timings(log: &str) -> Timings {
    let line = log
        .lines()
        .find(|line| line.contains("timings (ms):"))
        .expect("the build log has a timings line");
    let value = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|field| field.strip_prefix(&format!("{key}=")))
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    Timings {
        git: value("git"),
        nix_fetch: value("nix_fetch"),
        nix_build: value("nix_build"),
        diff: value("diff"),
    }
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    println!(
        "{label}: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the process status is readable");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .expect("VmRSS is present")
}
