//! A stand-in activator for the server tests: it speaks the socket
//! protocol on a real Unix socket and verifies each certificate with
//! `countersign_core::verify_certificate` against the policy file, but
//! activates nothing and evaluates nothing: a prepare request gets
//! `prepare_target` as its answer. The real activator is exercised by
//! the CLI's end-to-end tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use countersign_core::protocol::{AuditHead, Event, Outcome, Request, Step};
use countersign_core::{Policy, StorePath, verify_certificate};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// What the stand-in reports and what it has received.
#[derive(Default)]
pub struct StubState {
    pub current_system: Option<StorePath>,
    pub last_proposal: u64,
    pub audit_head: Option<AuditHead>,
    /// The target a prepare request is answered with.
    pub prepare_target: Option<StorePath>,
    pub requests: Vec<Request>,
}

pub struct StubActivator {
    pub state: Arc<Mutex<StubState>>,
    task: JoinHandle<()>,
}

impl Drop for StubActivator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StubActivator {
    /// Listens on `socket`. Each accepted certificate moves
    /// `current_system` to its target, like a successful switch.
    pub fn start(socket: &Path, policy: PathBuf, current: StorePath) -> Self {
        let _ = std::fs::remove_file(socket);
        let listener =
            UnixListener::bind(socket).expect("bind the stub socket");
        let state = Arc::new(Mutex::new(StubState {
            current_system: Some(current),
            ..StubState::default()
        }));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = Arc::clone(&shared);
                let policy = policy.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut line = String::new();
                    BufReader::new(read).read_line(&mut line).await.unwrap();
                    let request: Request =
                        serde_json::from_str(&line).unwrap();
                    shared.lock().unwrap().requests.push(request.clone());
                    let events = answer(&shared, &policy, request);
                    for event in events {
                        let mut text = serde_json::to_string(&event).unwrap();
                        text.push('\n');
                        write.write_all(text.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        Self { state, task }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn answer(
    shared: &Mutex<StubState>,
    policy_path: &Path,
    request: Request,
) -> Vec<Event> {
    let mut state = shared.lock().unwrap();
    match request {
        Request::Status => vec![Event::Status {
            current_system: state.current_system.clone(),
            last_proposal: state.last_proposal,
            audit_head: state.audit_head,
            activating: None,
            awaiting_confirmation: None,
        }],
        Request::Confirm { proposal } => vec![Event::Finished {
            outcome: Outcome::Refused,
            proposal: Some(proposal),
            message: "the stand-in has no confirmation window".into(),
        }],
        Request::Prepare { .. } => vec![
            Event::Progress {
                step: Step::Evaluate,
                message: "evaluation skipped by the stand-in".into(),
            },
            Event::Prepared {
                target: state.prepare_target.clone(),
            },
        ],
        Request::Activate {
            certificate,
            audit_head,
            commit_evidence,
        } => {
            let policy =
                Policy::from_toml(&std::fs::read(policy_path).unwrap())
                    .unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let verified = match verify_certificate(&policy, &certificate, now)
            {
                Ok(verified) => verified,
                Err(error) => {
                    return vec![Event::Finished {
                        outcome: Outcome::Refused,
                        proposal: None,
                        message: error.to_string(),
                    }];
                }
            };
            let statement = verified.statement();
            // The real activator checks the evidence against the source.
            // The stand-in only checks that the server sent the commit
            // object that the statement's commit id names.
            if let Some(source) = &statement.source {
                let object = commit_evidence.as_ref().map(|evidence| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD
                        .decode(&evidence.commit)
                        .unwrap()
                });
                let named = object.as_ref().is_some_and(|object| {
                    let mut hashed =
                        format!("commit {}\0", object.len()).into_bytes();
                    hashed.extend_from_slice(object);
                    git_sha1(&hashed) == source.commit
                });
                if !named {
                    return vec![Event::Finished {
                        outcome: Outcome::Refused,
                        proposal: Some(statement.proposal),
                        message: "the request has no commit object of the \
                                  statement's commit"
                            .into(),
                    }];
                }
            }
            if statement.proposal <= state.last_proposal {
                return vec![Event::Finished {
                    outcome: Outcome::Refused,
                    proposal: Some(statement.proposal),
                    message: format!(
                        "proposal {} is not above the last accepted {}",
                        statement.proposal, state.last_proposal
                    ),
                }];
            }
            state.last_proposal = statement.proposal;
            state.audit_head = audit_head;
            state.current_system = Some(statement.target.clone());
            vec![
                Event::Progress {
                    step: Step::Verify,
                    message: "certificate verified".into(),
                },
                Event::Log {
                    line: format!("switching to {}", statement.target),
                },
                Event::Finished {
                    outcome: Outcome::Activated,
                    proposal: Some(statement.proposal),
                    message: "activated".into(),
                },
            ]
        }
    }
}

/// Computes the SHA-1 of `bytes` in hex with coreutils' `sha1sum`.
fn git_sha1(bytes: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("sha1sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sha1sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}
