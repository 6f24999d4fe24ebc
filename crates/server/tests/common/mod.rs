//! Shared set-up for the server tests: a git repository with a fixture
//! NixOS flake, a running system built from it, real `ssh-keygen` keys,
//! a policy, and the server itself on 127.0.0.1 with port 0.
//!
//! Nix gets flakes enabled, an empty flake registry and no substituters
//! through its environment, and a private `HOME`, so nothing goes to the
//! network and the caller's Nix cache is left alone.

#![allow(dead_code)]

pub mod activator;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use countersign_core::{Sha256Digest, StorePath};
use countersign_nix::fixture::{self, SystemSpec};
use countersign_nix::{Nix, build, fetch_source, git};
use countersign_server::{RunningServer, ServerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

pub const HOST: &str = "demo";

/// An approver's key pair, made by `ssh-keygen`.
pub struct Key {
    pub name: String,
    pub path: PathBuf,
    pub public: String,
}

impl Key {
    pub fn generate(dir: &Path, name: &str) -> Self {
        let path = dir.join(format!("{name}_ed25519"));
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen runs");
        assert!(status.success(), "ssh-keygen failed to make key {name}");
        let public = fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            name: name.to_owned(),
            path,
            public,
        }
    }

    /// Signs `message` with `ssh-keygen -Y sign` in `namespace`.
    pub fn sign(&self, namespace: &str, message: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let message_path = dir.path().join("message");
        fs::write(&message_path, message).unwrap();
        let output = Command::new("ssh-keygen")
            .args(["-Y", "sign", "-n", namespace, "-f"])
            .arg(&self.path)
            .arg(&message_path)
            .output()
            .expect("ssh-keygen runs");
        assert!(
            output.status.success(),
            "ssh-keygen -Y sign failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        fs::read_to_string(dir.path().join("message.sig")).unwrap()
    }
}

/// Options of one test set-up.
pub struct Options {
    pub threshold: usize,
    pub veto: bool,
    pub lifetime_secs: u64,
    pub trigger: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            threshold: 2,
            veto: true,
            lifetime_secs: 3600,
            trigger: true,
        }
    }
}

pub struct Harness {
    pub dir: TempDir,
    pub nix: Nix,
    pub nix_env: Vec<(String, String)>,
    pub phone: Key,
    pub laptop: Key,
    pub stranger: Key,
    pub trigger_token: String,
    pub spec: SystemSpec,
    pub base: StorePath,
    pub base_commit: String,
    pub config: ServerConfig,
    pub server: Option<RunningServer>,
    pub url: String,
    pub client: reqwest::Client,
}

impl Harness {
    /// Builds the running system from the fixture, commits an update on
    /// top, and starts the server.
    pub async fn start(options: Options) -> Self {
        let mut harness = Self::prepare(options);
        harness.start_server().await;
        harness
    }

    /// Everything but starting the server.
    pub fn prepare(options: Options) -> Self {
        assert!(
            Command::new("nix").arg("--version").output().is_ok(),
            "these tests need the `nix` command (Debian package nix-bin)"
        );
        let dir = tempfile::tempdir().expect("create a temporary folder");
        let root = dir.path().to_owned();
        let registry = root.join("registry.json");
        fs::write(&registry, r#"{"flakes":[],"version":2}"#).unwrap();
        let home = root.join("home");
        fs::create_dir(&home).unwrap();
        let nix_config = format!(
            "experimental-features = nix-command flakes\n\
             flake-registry = {}\n\
             substituters =\n",
            registry.display()
        );
        let nix_env = vec![
            ("NIX_CONFIG".to_owned(), nix_config),
            ("HOME".to_owned(), home.display().to_string()),
        ];
        let mut nix = Nix::new();
        for (key, value) in &nix_env {
            nix = nix.with_env(key, value);
        }

        let keys = root.join("keys");
        fs::create_dir(&keys).unwrap();
        let phone = Key::generate(&keys, "phone");
        let laptop = Key::generate(&keys, "laptop");
        let stranger = Key::generate(&keys, "stranger");

        let policy_path = root.join("policy.toml");
        fs::write(&policy_path, policy_text(&options, &phone, &laptop))
            .unwrap();

        let trigger_token =
            "trigger-0123456789abcdef0123456789abcdef".to_owned();
        let token_path = root.join("trigger-token");
        fs::write(&token_path, format!("{trigger_token}\n")).unwrap();

        // The running system: the fixture's demo, built from the first
        // commit of the repository.
        let repo = root.join("repo");
        let spec = SystemSpec::demo(HOST, &root.join("switch.log"));
        let base_commit = fixture::commit_flake(&repo, &spec, "Install demo")
            .expect("commit the base system");
        let test_mirror = root.join("test-mirror.git");
        git::fetch_branch(repo.to_str().unwrap(), "main", &test_mirror)
            .expect("fetch the base commit");
        let source = fetch_source(&nix, &test_mirror, &base_commit)
            .expect("fetch the base source");
        let base = build(
            &nix,
            &source,
            &spec.attribute(),
            &root.join("base-result"),
            &mut |_| {},
        )
        .expect("build the base system");
        let current = root.join("current-system");
        std::os::unix::fs::symlink(base.as_str(), &current).unwrap();

        // The candidate every proposal builds unless a test commits
        // another one.
        let update = spec.demo_update();
        fixture::commit_flake(&repo, &update, "Update hello, add jq")
            .expect("commit the update");

        let mut config = ServerConfig::parse(&format!(
            r#"
            host = "{HOST}"
            listen = "127.0.0.1:0"
            state_dir = "{state}"
            policy = "{policy}"
            activator_socket = "{socket}"
            current_system = "{current}"
            [repository]
            url = "{repo}"
            branch = "main"
            action = "switch"
            "#,
            state = root.join("state").display(),
            policy = policy_path.display(),
            socket = root.join("activator.sock").display(),
            current = current.display(),
            repo = repo.display(),
        ))
        .expect("the test configuration parses");
        if options.trigger {
            config.trigger = Some(countersign_server::TriggerConfig {
                token_file: token_path,
            });
        }
        config.nix.env = nix_env
            .iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect();

        Self {
            dir,
            nix,
            nix_env,
            phone,
            laptop,
            stranger,
            trigger_token,
            spec: update,
            base,
            base_commit,
            config,
            server: None,
            url: String::new(),
            client: reqwest::Client::new(),
        }
    }

    pub async fn start_server(&mut self) {
        let server = countersign_server::start(self.config.clone())
            .await
            .expect("the server starts");
        self.url = format!("http://{}/api/v1", server.local_addr());
        self.server = Some(server);
    }

    pub async fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("the server stops cleanly");
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    pub fn policy_path(&self) -> PathBuf {
        self.config.policy.clone()
    }

    pub fn socket_path(&self) -> PathBuf {
        self.config.activator_socket.clone()
    }

    pub fn db_path(&self) -> PathBuf {
        self.config.state_dir.join(countersign_server::DB_FILE)
    }

    pub fn policy_sha256(&self) -> Sha256Digest {
        Sha256Digest::of(&fs::read(self.policy_path()).unwrap())
    }

    /// Commits `spec` as the new head of `main`; returns the commit.
    pub fn commit(&self, spec: &SystemSpec, message: &str) -> String {
        fixture::commit_flake(&self.repo(), spec, message)
            .expect("commit a test system")
    }

    pub fn head(&self) -> String {
        git_in(&self.repo(), &["rev-parse", "HEAD"])
    }

    /// Sends a request and returns the status and the body as JSON, or
    /// as a JSON string when the body is not JSON.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request =
            self.client.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("the request is sent");
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        });
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// Sends a GET and returns the status and the raw body.
    pub async fn get_bytes(
        &self,
        path: &str,
        token: &str,
    ) -> (StatusCode, Vec<u8>) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("the request is sent");
        let status = response.status();
        (status, response.bytes().await.unwrap().to_vec())
    }

    /// Logs in with `key` and returns the session token.
    pub async fn login(&self, key: &Key) -> String {
        let (status, challenge) =
            self.post("/auth/challenge", None, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{challenge}");
        let challenge = challenge["challenge"].as_str().unwrap().to_owned();
        let signature = key.sign("countersign-login", challenge.as_bytes());
        let (status, body) = self
            .post(
                "/auth/login",
                None,
                json!({ "challenge": challenge, "signature": signature }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["approver"], key.name.as_str());
        body["token"].as_str().unwrap().to_owned()
    }

    /// Creates a proposal and returns its number.
    pub async fn propose(&self, token: &str, rev: Option<&str>) -> u64 {
        let body = match rev {
            Some(rev) => json!({ "rev": rev }),
            None => json!({}),
        };
        let (status, body) = self.post("/proposals", Some(token), body).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["proposal"].as_u64().unwrap()
    }

    /// Waits until proposal `number` leaves `building` and returns its
    /// detail.
    pub async fn wait_built(&self, token: &str, number: u64) -> Value {
        self.wait_for(token, number, |detail| detail["state"] != "building")
            .await
    }

    /// Polls the detail of a proposal until `done` holds.
    pub async fn wait_for(
        &self,
        token: &str,
        number: u64,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let (status, detail) =
                self.get(&format!("/proposals/{number}"), token).await;
            assert_eq!(status, StatusCode::OK, "{detail}");
            if done(&detail) {
                return detail;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "proposal {number} did not reach the expected state: {detail}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The exact statement bytes of a built proposal.
    pub async fn statement(&self, token: &str, number: u64) -> Vec<u8> {
        let (status, bytes) = self
            .get_bytes(&format!("/proposals/{number}/statement"), token)
            .await;
        assert_eq!(status, StatusCode::OK);
        bytes
    }

    /// Counts the rows of `table` in the server's database.
    pub fn count(&self, table: &str) -> u64 {
        let connection = rusqlite::Connection::open(self.db_path()).unwrap();
        connection
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get::<_, i64>(0)
            })
            .unwrap() as u64
    }

    /// The kinds of the audit entries about proposal `number`, in order.
    pub fn audit_kinds(&self, number: u64) -> Vec<String> {
        let connection = rusqlite::Connection::open(self.db_path()).unwrap();
        let mut statement = connection
            .prepare("SELECT body FROM audit ORDER BY seq")
            .unwrap();
        let bodies: Vec<Vec<u8>> = statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        bodies
            .iter()
            .map(|body| serde_json::from_slice::<Value>(body).unwrap())
            .filter(|body| body["proposal"] == number)
            .map(|body| body["kind"].as_str().unwrap().to_owned())
            .collect()
    }
}

pub fn policy_text(options: &Options, phone: &Key, laptop: &Key) -> String {
    format!(
        "host = \"{HOST}\"\nthreshold = {}\nveto = {}\n\
         proposal_lifetime_secs = {}\n\
         [approvers.phone]\nssh = \"{}\"\n\
         [approvers.laptop]\nssh = \"{}\"\n",
        options.threshold,
        options.veto,
        options.lifetime_secs,
        phone.public,
        laptop.public
    )
}

/// Runs git in `dir` with a fixed identity and returns its output.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@countersign.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
