//! The web pages in a real headless Chromium with virtual WebAuthn
//! authenticators, against the server, the real activator binary, real
//! git, real Nix builds and real ssh-keygen keys.
//!
//! One scenario, in order, because its set-up (two passkeys enrolled in
//! the browser, then put into the policy by a change that the current
//! SSH approvers deploy) is the expensive part:
//!
//! 1. two approvers enrol a passkey each on the enrolment page;
//! 2. a policy that lists both passkeys is committed, proposed and
//!    approved by the two SSH approvers, and the activator deploys it;
//! 3. both sign in with their passkeys;
//! 4. a proposal whose file name and commit message carry HTML and
//!    script is shown as text, and no script runs; screenshots at phone
//!    and desktop width show its alerts and approve button;
//! 5. one approval changes nothing; forged, UV-less, foreign-origin and
//!    foreign-RP-ID assertions are refused by the server, and by the
//!    activator when written to its socket in a certificate;
//! 6. an approval replayed on a newer proposal is refused;
//! 7. both approve in the browser and the system switches, and the page
//!    follows the build and the activation without a reload;
//! 8. a rejection vetoes.
//!
//! The test prints a reason and passes without running when
//! `/usr/bin/chromium` is missing.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::cdp::browser_protocol::target::{
    CreateBrowserContextParams, CreateTargetParams,
};
use chromiumoxide::cdp::browser_protocol::web_authn::{
    AddVirtualAuthenticatorParams, AuthenticatorId, AuthenticatorProtocol,
    AuthenticatorTransport, Ctap2Version, EnableParams, GetCredentialsParams,
    SetResponseOverrideBitsParams, VirtualAuthenticatorOptions,
};
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use chromiumoxide::page::{Page, ScreenshotParams};
use common::{Key, git_in};
use countersign_core::protocol::{Event, Outcome, Request};
use countersign_core::{Certificate, Vote};
use countersign_nix::fixture::{SystemSpec, write_flake};
use countersign_nix::{Nix, build, fetch_source, git};
use futures_util::StreamExt;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;
use serde_json::{Value, json};
use sha2::Digest as _;

const CHROMIUM: &str = "/usr/bin/chromium";
const HOST: &str = "demo";
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Everything the scenario runs against.
struct World {
    dir: tempfile::TempDir,
    origin: String,
    spec: SystemSpec,
    phone: Key,
    laptop: Key,
    trigger_token: String,
    server: Option<countersign_server::RunningServer>,
    activator: Child,
    api: reqwest::Client,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.activator.kill();
        let _ = self.activator.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn activator_binary() -> PathBuf {
    let test = std::env::current_exe().unwrap();
    let binary = test
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("countersign-activator");
    assert!(
        binary.exists(),
        "{} is missing; run `cargo build --workspace` first",
        binary.display()
    );
    binary
}

fn ssh_policy(origin: &str, phone: &Key, laptop: &Key) -> String {
    format!(
        "host = \"{HOST}\"\nthreshold = 2\nveto = true\n\
         proposal_lifetime_secs = 3600\n\n\
         [webauthn]\nrp_id = \"localhost\"\norigins = [\"{origin}\"]\n\n\
         [approvers.phone]\nssh = \"{}\"\n\n\
         [approvers.laptop]\nssh = \"{}\"\n",
        phone.public, laptop.public
    )
}

impl World {
    /// Builds and installs the first system, whose policy lists two SSH
    /// approvers and the relying party, and starts the activator and the
    /// server with the pages on `http://localhost:PORT`.
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let port = free_port();
        let origin = format!("http://localhost:{port}");
        let registry = root.join("registry.json");
        fs::write(&registry, r#"{"flakes":[],"version":2}"#).unwrap();
        let home = root.join("home");
        fs::create_dir(&home).unwrap();
        let nix_config = format!(
            "experimental-features = nix-command flakes\n\
             flake-registry = {}\nsubstituters =\n",
            registry.display()
        );
        let nix_env = [
            ("NIX_CONFIG".to_owned(), nix_config),
            ("HOME".to_owned(), home.display().to_string()),
        ];
        let nix = nix_env
            .iter()
            .fold(Nix::new(), |nix, (key, value)| nix.with_env(key, value));

        let keys = root.join("keys");
        fs::create_dir(&keys).unwrap();
        let phone = Key::generate(&keys, "phone");
        let laptop = Key::generate(&keys, "laptop");

        let repo = root.join("repo");
        let mut spec = SystemSpec::demo(HOST, &root.join("switch.log"));
        spec.policy_toml = Some(ssh_policy(&origin, &phone, &laptop));
        commit(&repo, &spec, "Install the demo", &[]);
        let mirror = root.join("bootstrap.git");
        let head = git::fetch_branch(repo.to_str().unwrap(), "main", &mirror)
            .unwrap();
        let source = fetch_source(&nix, &mirror, &head).unwrap();
        let base = build(
            &nix,
            &source,
            &spec.attribute(),
            &root.join("base-result"),
            &mut |_| {},
        )
        .unwrap();
        let profile = root.join("profiles/system");
        fs::create_dir_all(profile.parent().unwrap()).unwrap();
        let status = Command::new("nix-env")
            .arg("--profile")
            .arg(&profile)
            .args(["--set", base.as_str()])
            .envs(nix_env.iter().map(|(key, value)| (key, value)))
            .status()
            .unwrap();
        assert!(status.success(), "nix-env --set failed");

        // Both processes read the policy that the running system carries,
        // so a deployed policy change is in force at once.
        let policy = profile.join("etc/countersign/policy.toml");
        let socket = root.join("activator.sock");
        let activator_config = root.join("activator.toml");
        fs::write(
            &activator_config,
            format!(
                "policy = \"{policy}\"\nstate_dir = \"{state}\"\n\
                 socket = \"{socket}\"\nprofile = \"{profile}\"\n\
                 current_system = \"{profile}\"\nverify_evaluation = true\n",
                policy = policy.display(),
                state = root.join("activator-state").display(),
                socket = socket.display(),
                profile = profile.display(),
            ),
        )
        .unwrap();
        let activator = Command::new(activator_binary())
            .arg("--config")
            .arg(&activator_config)
            .envs(nix_env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(fs::File::create(root.join("activator.log")).unwrap())
            .stderr(fs::File::create(root.join("activator.err")).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !socket.exists() {
            assert!(start.elapsed() < Duration::from_secs(30), "no socket");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let trigger_token = "trigger-browser-0123456789abcdef".to_owned();
        fs::write(root.join("trigger"), &trigger_token).unwrap();
        let mut config = countersign_server::ServerConfig::parse(&format!(
            "host = \"{HOST}\"\nlisten = \"127.0.0.1:{port}\"\n\
             state_dir = \"{state}\"\npolicy = \"{policy}\"\n\
             activator_socket = \"{socket}\"\ncurrent_system = \"{profile}\"\n\
             [repository]\nurl = \"{repo}\"\n\
             [trigger]\ntoken_file = \"{trigger}\"\n\
             [web]\npublic_origin = \"{origin}\"\n",
            state = root.join("state").display(),
            policy = policy.display(),
            socket = socket.display(),
            profile = profile.display(),
            repo = repo.display(),
            trigger = root.join("trigger").display(),
        ))
        .unwrap();
        config.nix.env = nix_env
            .iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect();
        let server = countersign_server::start(config).await.unwrap();
        Self {
            dir,
            origin,
            spec,
            phone,
            laptop,
            trigger_token,
            server: Some(server),
            activator,
            api: reqwest::Client::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    fn profile_target(&self) -> PathBuf {
        fs::canonicalize(self.path("profiles/system")).unwrap()
    }

    fn switch_log(&self) -> Vec<String> {
        fs::read_to_string(self.path("switch.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn api_url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.origin)
    }

    async fn post(
        &self,
        path: &str,
        token: &str,
        body: Value,
    ) -> (reqwest::StatusCode, Value) {
        let response = self
            .api
            .post(self.api_url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.api
            .get(self.api_url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Logs in over the API with an SSH key.
    async fn login(&self, key: &Key) -> String {
        let (status, challenge) =
            self.post("/auth/challenge", "", json!({})).await;
        assert!(status.is_success(), "{challenge}");
        let challenge = challenge["challenge"].as_str().unwrap().to_owned();
        let signature = key.sign("countersign-login", challenge.as_bytes());
        let (status, body) = self
            .post(
                "/auth/login",
                "",
                json!({ "challenge": challenge, "signature": signature }),
            )
            .await;
        assert!(status.is_success(), "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Commits the spec (and `extra` files) with `message` and proposes
    /// the head; returns the proposal number.
    async fn propose(&self, message: &str, extra: &[(&str, &str)]) -> u64 {
        commit(&self.repo(), &self.spec, message, extra);
        let (status, body) = self
            .post("/proposals", &self.trigger_token, json!({}))
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
        body["proposal"].as_u64().unwrap()
    }

    async fn detail(&self, token: &str, number: u64) -> Value {
        self.get(&format!("/proposals/{number}"), token)
            .await
            .json()
            .await
            .unwrap()
    }

    /// Waits until proposal `number` is in none of `pending`.
    async fn wait_past(
        &self,
        token: &str,
        number: u64,
        pending: &[&str],
    ) -> Value {
        let start = Instant::now();
        loop {
            let detail = self.detail(token, number).await;
            let state = detail["state"].as_str().unwrap_or("");
            if !pending.contains(&state) {
                return detail;
            }
            assert!(
                start.elapsed() < BUILD_TIMEOUT,
                "proposal {number} stayed {state}: {detail}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn statement(&self, token: &str, number: u64) -> Vec<u8> {
        self.get(&format!("/proposals/{number}/statement"), token)
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    /// The stored signature of `approver` on proposal `number`, as the
    /// server's database keeps it.
    fn stored_signature(&self, number: u64, approver: &str) -> String {
        let database = self.path("state").join(countersign_server::DB_FILE);
        let connection = rusqlite::Connection::open(database).unwrap();
        connection
            .query_row(
                "SELECT signature FROM votes WHERE proposal = ?1 AND \
                 approver = ?2 AND verdict = 'approve'",
                rusqlite::params![number, approver],
                |row| row.get(0),
            )
            .unwrap()
    }

    /// Sends a certificate to the activator's socket, as a compromised
    /// server could, and returns the outcome and message.
    fn send_certificate(
        &self,
        statement: &[u8],
        votes: Vec<Vote>,
    ) -> (Outcome, String) {
        let request = Request::Activate {
            certificate: Certificate::new(statement, votes),
            audit_head: None,
            commit_evidence: None,
        };
        let mut stream =
            UnixStream::connect(self.path("activator.sock")).unwrap();
        let mut line = serde_json::to_string(&request).unwrap();
        line.push('\n');
        stream.write_all(line.as_bytes()).unwrap();
        for line in BufReader::new(stream).lines() {
            let event: Event = serde_json::from_str(&line.unwrap()).unwrap();
            if let Event::Finished {
                outcome, message, ..
            } = event
            {
                return (outcome, message);
            }
        }
        panic!("the activator sent no outcome");
    }
}

/// Writes the flake of `spec` and the `extra` files into `repo` and
/// commits everything with `message`.
fn commit(
    repo: &Path,
    spec: &SystemSpec,
    message: &str,
    extra: &[(&str, &str)],
) {
    if !repo.join(".git").exists() {
        fs::create_dir_all(repo).unwrap();
        git_in(repo, &["init", "-q", "-b", "main"]);
    }
    write_flake(repo, spec).unwrap();
    for (name, text) in extra {
        fs::write(repo.join(name), text).unwrap();
    }
    git_in(repo, &["add", "-A"]);
    git_in(repo, &["commit", "-q", "--allow-empty", "-m", message]);
}

/// Evaluates `expression` in the page, awaiting a promise, and returns
/// its JSON value.
async fn js(page: &Page, expression: &str) -> Value {
    let params = EvaluateParams::builder()
        .expression(expression)
        .await_promise(true)
        .return_by_value(true)
        .build()
        .unwrap();
    let result =
        page.evaluate_expression(params)
            .await
            .unwrap_or_else(|error| {
                panic!("evaluating {expression} failed: {error}")
            });
    result.into_value().unwrap_or(Value::Null)
}

/// Waits until the boolean `expression` holds in the page.
async fn wait_js(page: &Page, expression: &str, what: &str) {
    let start = Instant::now();
    loop {
        if js(page, expression).await == Value::Bool(true) {
            return;
        }
        if start.elapsed() > BUILD_TIMEOUT {
            let body =
                js(page, "document.body ? document.body.innerText : ''").await;
            panic!("timed out waiting for {what}; the page shows: {body}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn text_of(page: &Page, id: &str) -> String {
    js(
        page,
        &format!(
            "(document.getElementById('{id}') || {{}}).textContent || ''"
        ),
    )
    .await
    .as_str()
    .unwrap_or("")
    .to_owned()
}

async fn goto(page: &Page, url: &str) {
    page.goto(url).await.unwrap();
    page.wait_for_navigation().await.unwrap();
}

async fn click(page: &Page, selector: &str) {
    page.find_element(selector)
        .await
        .unwrap_or_else(|error| panic!("no {selector} on the page: {error}"))
        .click()
        .await
        .unwrap();
}

/// One approver's browser: its own browser context (cookies) and page
/// with a virtual platform authenticator.
struct Approver {
    name: &'static str,
    page: Page,
    authenticator: AuthenticatorId,
}

async fn approver(browser: &Browser, name: &'static str) -> Approver {
    let context = browser
        .create_browser_context(CreateBrowserContextParams::default())
        .await
        .unwrap();
    let page = browser
        .new_page(
            CreateTargetParams::builder()
                .url("about:blank")
                .browser_context_id(context)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    page.execute(EnableParams::default()).await.unwrap();
    let options = VirtualAuthenticatorOptions::builder()
        .protocol(AuthenticatorProtocol::Ctap2)
        .ctap2_version(Ctap2Version::Ctap21)
        .transport(AuthenticatorTransport::Internal)
        .has_resident_key(true)
        .has_user_verification(true)
        .is_user_verified(true)
        .automatic_presence_simulation(true)
        .build()
        .unwrap();
    let authenticator = page
        .execute(AddVirtualAuthenticatorParams::new(options))
        .await
        .unwrap()
        .result
        .authenticator_id;
    Approver {
        name,
        page,
        authenticator,
    }
}

impl Approver {
    /// Enrols a passkey on the enrolment page and returns the policy
    /// lines it prints.
    async fn enrol(&self, origin: &str) -> String {
        goto(&self.page, &format!("{origin}/enrol")).await;
        click(&self.page, "#enrol-name").await;
        self.page
            .find_element("#enrol-name")
            .await
            .unwrap()
            .type_str(self.name)
            .await
            .unwrap();
        click(&self.page, "#enrol-button").await;
        wait_js(
            &self.page,
            "!document.getElementById('enrol-result').hidden",
            "the enrolment snippet",
        )
        .await;
        text_of(&self.page, "enrol-snippet").await
    }

    async fn sign_in(&self, origin: &str) {
        goto(&self.page, &format!("{origin}/sign-in")).await;
        click(&self.page, "#sign-in-button").await;
        wait_js(
            &self.page,
            "location.pathname === '/proposals'",
            "the proposal list after signing in",
        )
        .await;
    }

    async fn override_bits(&self, bogus_signature: bool, bad_uv: bool) {
        self.page
            .execute(
                SetResponseOverrideBitsParams::builder()
                    .authenticator_id(self.authenticator.clone())
                    .is_bogus_signature(bogus_signature)
                    .is_bad_uv(bad_uv)
                    .is_bad_up(false)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
    }

    /// Clicks a vote button on the open proposal page and returns the
    /// status line once the vote finished.
    async fn vote(&self, button: &str) -> String {
        click(&self.page, button).await;
        wait_js(
            &self.page,
            "/accepted|refused|invalid|not valid|failed|cancelled|error|[0-9]{3}/i\
             .test(document.getElementById('vote-status').textContent)",
            "the vote's outcome",
        )
        .await;
        text_of(&self.page, "vote-status").await
    }

    /// Asks the authenticator for an assertion over the vote challenge
    /// of proposal `number` from the page's current origin, without
    /// sending it. `options` is the JSON from the pages' passkey
    /// endpoint.
    async fn assertion(&self, options: &Value, uv: &str) -> Value {
        let script = format!(
            "(async () => {{
              const o = {options};
              const d = t => Uint8Array.from(atob(t.replace(/-/g, '+').replace(/_/g, '/')), c => c.charCodeAt(0));
              const e = b => btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
              const c = await navigator.credentials.get({{ publicKey: {{
                challenge: d(o.challenge), rpId: o.rp_id, userVerification: '{uv}',
                allowCredentials: [{{ type: 'public-key', id: d(o.credential_id) }}] }} }});
              return {{ kind: 'webauthn', credential_id: e(c.rawId),
                authenticator_data: e(c.response.authenticatorData),
                client_data_json: e(c.response.clientDataJSON),
                signature: e(c.response.signature) }};
            }})()"
        );
        js(&self.page, &script).await
    }

    /// The vote challenge and credential for proposal `number`.
    async fn vote_options(&self, number: u64, verdict: &str) -> Value {
        js(
            &self.page,
            &format!(
                "fetch('/proposals/{number}/passkey?verdict={verdict}')\
                 .then(r => r.json())"
            ),
        )
        .await
    }

    /// Posts `signature` as this approver's vote through the session
    /// cookie, as the pages do, and returns the status and body.
    async fn post_vote(
        &self,
        number: u64,
        signature: &Value,
    ) -> (u64, String) {
        let body = json!({ "signature": signature }).to_string();
        let answer = js(
            &self.page,
            &format!(
                "fetch('/api/v1/proposals/{number}/approvals', {{ method: \
                 'POST', headers: {{ 'Content-Type': 'application/json' }}, \
                 body: {body:?} }}).then(async r => [r.status, await r.text()])"
            ),
        )
        .await;
        (
            answer[0].as_u64().unwrap(),
            answer[1].as_str().unwrap().to_owned(),
        )
    }

    /// The PKCS#8 private key and id of the authenticator's credential.
    async fn credential(&self) -> (Vec<u8>, Vec<u8>) {
        let credentials = self
            .page
            .execute(GetCredentialsParams::new(self.authenticator.clone()))
            .await
            .unwrap()
            .result
            .credentials;
        assert_eq!(credentials.len(), 1, "one passkey per authenticator");
        let credential = &credentials[0];
        let decode = |binary: &chromiumoxide::types::Binary| {
            let text: &str = binary.as_ref();
            STANDARD.decode(text).unwrap()
        };
        (
            decode(&credential.private_key),
            decode(&credential.credential_id),
        )
    }
}

/// Signs an assertion as the authenticator would, but over the RP ID
/// `rp_id`: the signature is valid for the credential's key, so only
/// the RP ID check can refuse it.
fn forged_assertion(
    private_key: &[u8],
    credential_id: &[u8],
    rp_id: &str,
    challenge: &str,
    origin: &str,
) -> Value {
    let key = p256::ecdsa::SigningKey::from_pkcs8_der(private_key).unwrap();
    let mut authenticator_data = sha2::Sha256::digest(rp_id).to_vec();
    authenticator_data.push(0x05);
    authenticator_data.extend_from_slice(&1000u32.to_be_bytes());
    let client_data = json!({
        "type": "webauthn.get",
        "challenge": challenge,
        "origin": origin,
        "crossOrigin": false,
    })
    .to_string();
    let mut signed = authenticator_data.clone();
    signed.extend_from_slice(&sha2::Sha256::digest(client_data.as_bytes()));
    let signature: p256::ecdsa::Signature = key.sign(&signed);
    json!({
        "kind": "webauthn",
        "credential_id": URL_SAFE_NO_PAD.encode(credential_id),
        "authenticator_data": URL_SAFE_NO_PAD.encode(&authenticator_data),
        "client_data_json": URL_SAFE_NO_PAD.encode(client_data.as_bytes()),
        "signature": URL_SAFE_NO_PAD.encode(signature.to_der().as_bytes()),
    })
}

fn vote(approver: &str, signature: &Value) -> Vote {
    let mut value = signature.clone();
    value["approver"] = json!(approver);
    serde_json::from_value(value).unwrap()
}

/// Serves a blank page on another port: another origin, as a phishing
/// site would be.
async fn other_origin() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            axum::response::Html("<!doctype html><title>other</title>")
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://localhost:{port}")
}

/// Reads a PNG's width and height from its header.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let word =
        |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

/// Checks that the system diff shows unit directives, boot.json and the
/// initrd's files with the values of step 6's change, as text.
async fn check_system_sections(page: &Page) {
    let sections = js(
        page,
        "(() => { \
         const text = s => Array.from(document.querySelectorAll(s)) \
           .map(e => e.textContent).join('\\n'); \
         const open = s => Array.from(document.querySelectorAll(s)) \
           .every(e => e.getClientRects().length > 0); \
         return { \
           headings: Array.from(document.querySelectorAll('section.system h3')) \
             .map(h => h.firstChild.textContent.trim()), \
           directives: text('.directives'), \
           bootspec: text('.boot'), \
           initrd: text('.initrd'), \
           visible: open('.directives li') && open('.boot li') \
             && open('.initrd li'), \
           markup: document.querySelectorAll('.directives b, .boot b, .initrd b').length, \
         }; })()",
    )
    .await;

    let headings: Vec<&str> = sections["headings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|heading| heading.as_str().unwrap())
        .collect();
    assert!(headings.contains(&"boot.json"), "{headings:?}");
    assert!(headings.contains(&"initrd files"), "{headings:?}");
    assert!(headings.contains(&"systemd units"), "{headings:?}");

    let directives = sections["directives"].as_str().unwrap();
    assert!(
        directives.contains("added [Timer] OnCalendar=daily"),
        "{directives}"
    );
    assert!(
        directives.contains("added [Service] Environment=GREETING=<b>hi</b>"),
        "{directives}"
    );

    let bootspec = sections["bootspec"].as_str().unwrap();
    assert!(bootspec.contains("kernelParams"), "{bootspec}");
    assert!(bootspec.contains("quiet"), "{bootspec}");

    let initrd = sections["initrd"].as_str().unwrap();
    assert!(initrd.contains("etc/initrd-banner"), "{initrd}");
    assert!(initrd.contains("file 0644"), "{initrd}");

    assert_eq!(sections["visible"], true, "short sections start open");
    assert_eq!(sections["markup"], 0, "the drop-in's HTML shows as text");
}

async fn screenshot(
    page: &Page,
    width: u32,
    height: u32,
    name: &str,
) -> PathBuf {
    page.execute(SetDeviceMetricsOverrideParams::new(
        i64::from(width),
        i64::from(height),
        1.0,
        width < 600,
    ))
    .await
    .unwrap();
    page.reload().await.unwrap();
    page.wait_for_navigation().await.unwrap();
    let png = page
        .screenshot(
            ScreenshotParams::builder()
                .format(CaptureScreenshotFormat::Png)
                .build(),
        )
        .await
        .unwrap();
    let folder =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    fs::create_dir_all(&folder).unwrap();
    let path = folder.join(name);
    fs::write(&path, &png).unwrap();
    let written = fs::read(&path).unwrap();
    assert_eq!(png_size(&written), (width, height), "{}", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkeys_approve_and_reject_in_the_browser() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!(
            "skipped: {CHROMIUM} is missing; install Debian's chromium \
             package (scripts/setup.sh does) to run the browser tests"
        );
        return;
    }
    let mut world = World::start().await;
    let origin = world.origin.clone();
    let profile_dir = world.path("chromium");
    let (mut browser, mut handler) = Browser::launch(
        BrowserConfig::builder()
            .chrome_executable(CHROMIUM)
            .no_sandbox()
            .user_data_dir(&profile_dir)
            .window_size(1280, 900)
            .args([
                "--headless",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let events = tokio::spawn(async move {
        while let Some(event) = handler.next().await {
            if event.is_err() {
                continue;
            }
        }
    });

    // 1. Enrolment in the browser prints the policy lines.
    let alice = approver(&browser, "alice").await;
    let bob = approver(&browser, "bob").await;
    let alice_lines = alice.enrol(&origin).await;
    let bob_lines = bob.enrol(&origin).await;
    for (name, lines) in [("alice", &alice_lines), ("bob", &bob_lines)] {
        assert!(
            lines.starts_with(&format!("[approvers.{name}]\nwebauthn = {{")),
            "{lines}"
        );
        assert!(lines.contains("algorithm = -7"), "{lines}");
    }
    // Enrolment grants nothing: the passkey cannot sign in yet.
    goto(&alice.page, &format!("{origin}/sign-in")).await;
    click(&alice.page, "#sign-in-button").await;
    wait_js(
        &alice.page,
        "document.getElementById('sign-in-status').classList.contains('failed')",
        "the refused sign-in",
    )
    .await;
    assert!(
        text_of(&alice.page, "sign-in-status")
            .await
            .contains("no approver"),
        "{}",
        text_of(&alice.page, "sign-in-status").await
    );

    // 2. The policy change that lists the passkeys needs the current
    // SSH quorum, and is deployed by the real activator.
    let phone = world.login(&world.phone).await;
    let laptop = world.login(&world.laptop).await;
    let passkey_policy = format!(
        "host = \"{HOST}\"\nthreshold = 2\nveto = true\n\
         proposal_lifetime_secs = 3600\n\n\
         [webauthn]\nrp_id = \"localhost\"\norigins = [\"{origin}\"]\n\n\
         {}user_verification = true\n\n{}user_verification = true\n",
        alice_lines
            .replace("user_verification = true\n", "")
            .replace("user_verification = false\n", ""),
        bob_lines
            .replace("user_verification = true\n", "")
            .replace("user_verification = false\n", ""),
    );
    world.spec.policy_toml = Some(passkey_policy);
    let number = world.propose("List the passkeys as approvers", &[]).await;
    let detail = world.wait_past(&phone, number, &["building"]).await;
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    let statement = world.statement(&phone, number).await;
    for (key, token) in [(&world.phone, &phone), (&world.laptop, &laptop)] {
        let signature = key.sign("countersign-approve", &statement);
        let (status, body) = world
            .post(
                &format!("/proposals/{number}/approvals"),
                token,
                json!({ "signature": signature }),
            )
            .await;
        assert!(status.is_success(), "{body}");
    }
    let detail = world
        .wait_past(&phone, number, &["awaiting-approval", "activating"])
        .await;
    assert_eq!(detail["state"], "deployed", "{detail}");

    // 3. Now both passkeys sign in.
    alice.sign_in(&origin).await;
    bob.sign_in(&origin).await;
    // The SSH approvers are no longer in the policy; the trigger token
    // proposes from here on.

    // 4. Repository text is shown as text; no script runs. The build is
    // slow so that the page can be watched while it runs.
    let xss_file = "<img src=x onerror=\"window.__pwned=1\">.txt";
    let xss_subject =
        "<script>window.__pwned=2</script><b>bold</b> Update hello";
    world.spec.apply_demo_change();
    world.spec.build_delay_secs = 4;
    let first = world
        .propose(
            xss_subject,
            &[(xss_file, "<script>window.__pwned=3</script>\n")],
        )
        .await;
    goto(&alice.page, &format!("{origin}/proposals/{first}")).await;
    let shown = js(
        &alice.page,
        "document.getElementById('log').textContent.length",
    )
    .await
    .as_u64()
    .unwrap();
    assert_eq!(text_of(&alice.page, "state").await, "building");
    wait_js(
        &alice.page,
        &format!(
            "document.getElementById('log').textContent.length > {shown} && \
             document.getElementById('log').textContent.includes('countersign:')"
        ),
        "build log lines streamed into the page",
    )
    .await;
    wait_js(
        &alice.page,
        "document.getElementById('state').textContent === 'awaiting-approval'",
        "the state change without a reload",
    )
    .await;
    goto(&alice.page, &format!("{origin}/proposals/{first}")).await;
    let body = js(&alice.page, "document.body.innerText").await;
    let body = body.as_str().unwrap();
    assert!(
        body.contains(xss_file),
        "the file name shows as text: {body}"
    );
    assert!(
        body.contains(xss_subject),
        "the subject shows as text: {body}"
    );
    assert_eq!(js(&alice.page, "typeof window.__pwned").await, "undefined");
    assert_eq!(
        js(
            &alice.page,
            "document.querySelectorAll('main script, main img').length"
        )
        .await,
        0
    );
    assert!(
        js(&alice.page, "document.querySelectorAll('.alert').length")
            .await
            .as_u64()
            .unwrap()
            > 0,
        "the demo change raises alerts"
    );

    for (width, height, name) in [
        (390, 844, "proposal-390x844.png"),
        (1280, 900, "proposal-1280x900.png"),
    ] {
        let path = screenshot(&alice.page, width, height, name).await;
        let visible = js(
            &alice.page,
            "(() => { const r = e => e.getBoundingClientRect(); \
             const a = document.querySelector('.alert'); \
             const b = document.getElementById('approve'); \
             return [r(a).bottom <= innerHeight, b.textContent, r(b).bottom <= innerHeight, \
             document.documentElement.scrollWidth - innerWidth]; })()",
        )
        .await;
        assert_eq!(visible[3], 0, "sideways scrolling in {}", path.display());
        assert_eq!(visible[0], true, "alerts visible in {}", path.display());
        assert_eq!(visible[1], "Approve", "{}", path.display());
        assert_eq!(
            visible[2],
            true,
            "approve button visible in {}",
            path.display()
        );
    }
    alice
        .page
        .execute(SetDeviceMetricsOverrideParams::new(1280, 900, 1.0, false))
        .await
        .unwrap();

    // 5. One approval: nothing happens.
    let base = world.profile_target();
    let status = alice.vote("#approve").await;
    assert!(status.contains("accepted"), "{status}");
    wait_js(
        &alice.page,
        "document.getElementById('quorum').textContent === '1 of 2'",
        "one approval counted",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(text_of(&alice.page, "state").await, "awaiting-approval");
    assert_eq!(
        world.profile_target(),
        base,
        "one approval switches nothing"
    );
    assert_eq!(world.switch_log().len(), 1, "{:?}", world.switch_log());

    // A forged signature from the browser's authenticator is refused.
    goto(&bob.page, &format!("{origin}/proposals/{first}")).await;
    bob.override_bits(true, false).await;
    let status = bob.vote("#approve").await;
    assert!(
        !status.contains("accepted"),
        "a bogus signature passed: {status}"
    );
    // So is one without user verification, which the policy requires.
    goto(&bob.page, &format!("{origin}/proposals/{first}")).await;
    bob.override_bits(false, true).await;
    let status = bob.vote("#approve").await;
    assert!(
        !status.contains("accepted"),
        "a UV-less assertion passed: {status}"
    );
    bob.override_bits(false, false).await;

    let options = bob.vote_options(first, "approve").await;
    let statement = world.statement_via(&bob, first).await;
    let alice_vote: Value =
        serde_json::from_str(&world.stored_signature(first, "alice")).unwrap();
    let alice_vote = vote("alice", &alice_vote);

    // Captured without sending: each must be refused by the server and,
    // in a certificate with alice's valid approval, by the activator.
    bob.override_bits(true, false).await;
    let bogus = bob.assertion(&options, "preferred").await;
    bob.override_bits(false, false).await;
    let no_uv = {
        bob.page
            .execute(
                chromiumoxide::cdp::browser_protocol::web_authn::SetUserVerifiedParams::new(
                    bob.authenticator.clone(),
                    false,
                ),
            )
            .await
            .unwrap();
        let assertion = bob.assertion(&options, "discouraged").await;
        bob.page
            .execute(
                chromiumoxide::cdp::browser_protocol::web_authn::SetUserVerifiedParams::new(
                    bob.authenticator.clone(),
                    true,
                ),
            )
            .await
            .unwrap();
        assertion
    };
    let foreign = other_origin().await;
    goto(&bob.page, &foreign).await;
    let foreign_origin = bob.assertion(&options, "preferred").await;
    goto(&bob.page, &format!("{origin}/proposals/{first}")).await;
    let (private_key, credential_id) = bob.credential().await;
    let foreign_rp = forged_assertion(
        &private_key,
        &credential_id,
        "evil.localhost",
        options["challenge"].as_str().unwrap(),
        &origin,
    );
    let control = forged_assertion(
        &private_key,
        &credential_id,
        "localhost",
        options["challenge"].as_str().unwrap(),
        &origin,
    );
    // Each is refused for its own reason, by both.
    for (what, signature, reason) in [
        ("a bogus signature", &bogus, "signature"),
        (
            "an assertion without user verification",
            &no_uv,
            "user verification",
        ),
        (
            "an assertion made for another origin",
            &foreign_origin,
            "origin",
        ),
        (
            "an assertion over another RP ID",
            &foreign_rp,
            "relying party",
        ),
    ] {
        let (status, body) = bob.post_vote(first, signature).await;
        assert!(
            (400..500).contains(&status),
            "{what} was accepted: {status} {body}"
        );
        let refused = "assertion of approver bob is invalid";
        assert!(
            body.contains(refused) && body.contains(reason),
            "{what}: {body}"
        );
        let (outcome, message) = world.send_certificate(
            &statement,
            vec![alice_vote.clone(), vote("bob", signature)],
        );
        assert_eq!(outcome, Outcome::Refused, "{what}: {message}");
        assert!(
            message.contains(refused) && message.contains(reason),
            "{what}: {message}"
        );
    }
    assert_eq!(world.profile_target(), base);
    assert_eq!(world.switch_log().len(), 1);
    // The forging itself is sound: the same assertion over the right RP
    // ID verifies, so the RP ID alone made the difference.
    let policy = countersign_core::Policy::from_toml(
        &fs::read(world.path("profiles/system/etc/countersign/policy.toml"))
            .unwrap(),
    )
    .unwrap();
    let checked = |signature: &Value| {
        countersign_core::verify_vote(
            &policy,
            &statement,
            &vote("bob", signature),
            countersign_core::Verdict::Approve,
        )
    };
    assert!(checked(&control).is_ok(), "{:?}", checked(&control).err());
    assert!(checked(&foreign_rp).is_err());

    // 6. Alice's approval does not move to a newer proposal. That
    // proposal also fills the system diff's unit directives, boot.json
    // and initrd sections with known values, and its drop-in carries
    // HTML.
    world.spec.build_delay_secs = 0;
    world.spec.kernel_params.push("quiet".into());
    world.spec.set_unit(
        "hello.service.d/greeting.conf",
        "[Service]\nEnvironment=GREETING=<b>hi</b>\n",
    );
    world.spec.initrd.files.push((
        "etc/initrd-banner".into(),
        "welcome\n".into(),
        0o644,
    ));
    let second = world.propose("Quiet boot", &[]).await;
    goto(&alice.page, &format!("{origin}/proposals/{second}")).await;
    wait_js(
        &alice.page,
        "document.getElementById('state').textContent === 'awaiting-approval'",
        "the second proposal built",
    )
    .await;
    // Bob's page shows the finished diff. Alice's page keeps the state
    // it had while watching the build, for step 7.
    goto(&bob.page, &format!("{origin}/proposals/{second}")).await;
    check_system_sections(&bob.page).await;
    let path =
        screenshot(&bob.page, 390, 844, "system-diff-390x844.png").await;
    check_system_sections(&bob.page).await;
    let overflow = js(
        &bob.page,
        "document.documentElement.scrollWidth - innerWidth",
    )
    .await;
    assert_eq!(overflow, 0, "sideways scrolling in {}", path.display());
    bob.page
        .execute(SetDeviceMetricsOverrideParams::new(1280, 900, 1.0, false))
        .await
        .unwrap();
    let replayed: Value =
        serde_json::from_str(&world.stored_signature(first, "alice")).unwrap();
    let (status, body) = alice.post_vote(second, &replayed).await;
    assert!(
        (400..500).contains(&status),
        "a replayed approval passed: {body}"
    );
    assert!(body.contains("challenge"), "{body}");

    // 7. Both approve in the browser: the system switches, and the open
    // page shows it without a reload. The page that watched the build
    // offers no buttons until a reload shows the diffs.
    assert!(
        js(&alice.page, "document.getElementById('approve') === null")
            .await
            .as_bool()
            .unwrap(),
        "an approve button on a page that showed no diff"
    );
    wait_js(
        &alice.page,
        "document.getElementById('vote-note').textContent.includes('Reload')",
        "the note to reload after the build",
    )
    .await;
    goto(&alice.page, &format!("{origin}/proposals/{second}")).await;
    let target_before = world.profile_target();
    let status = alice.vote("#approve").await;
    assert!(status.contains("accepted"), "{status}");
    goto(&bob.page, &format!("{origin}/proposals/{second}")).await;
    let status = bob.vote("#approve").await;
    assert!(status.contains("accepted"), "{status}");
    wait_js(
        &alice.page,
        "document.getElementById('state').textContent === 'deployed'",
        "the deployment shown live",
    )
    .await;
    assert!(
        !text_of(&alice.page, "activation").await.is_empty(),
        "activation progress is shown"
    );
    assert_ne!(world.profile_target(), target_before);
    let log = world.switch_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(
        log[1],
        format!("switch {}", world.profile_target().display())
    );
    goto(&alice.page, &format!("{origin}/history")).await;
    let history = js(&alice.page, "document.body.innerText").await;
    assert!(
        history.as_str().unwrap().contains(&format!("#{second}")),
        "{history}"
    );

    // 8. A rejection vetoes.
    world.spec.kernel_params.push("nomodeset".into());
    let third = world.propose("Another boot change", &[]).await;
    goto(&bob.page, &format!("{origin}/proposals/{third}")).await;
    wait_js(
        &bob.page,
        "document.getElementById('state').textContent === 'awaiting-approval'",
        "the third proposal built",
    )
    .await;
    goto(&bob.page, &format!("{origin}/proposals/{third}")).await;
    click(&bob.page, "details.reject > summary").await;
    click(&bob.page, "#reason").await;
    bob.page
        .find_element("#reason")
        .await
        .unwrap()
        .type_str("not tonight")
        .await
        .unwrap();
    let status = bob.vote("#reject").await;
    assert!(status.contains("accepted"), "{status}");
    wait_js(
        &bob.page,
        "document.getElementById('state').textContent === 'rejected'",
        "the veto shown live",
    )
    .await;
    goto(&alice.page, &format!("{origin}/proposals/{third}")).await;
    assert!(
        js(&alice.page, "document.getElementById('approve') === null")
            .await
            .as_bool()
            .unwrap(),
        "no approve button on a rejected proposal"
    );
    assert_eq!(world.switch_log().len(), 2);

    browser.close().await.unwrap();
    let _ = browser.wait().await;
    events.abort();
    if let Some(server) = world.server.take() {
        server.shutdown().await.unwrap();
    }
}

impl World {
    /// The statement bytes, read through an approver's browser session.
    async fn statement_via(
        &self,
        approver: &Approver,
        number: u64,
    ) -> Vec<u8> {
        let text = js(
            &approver.page,
            &format!(
                "fetch('/api/v1/proposals/{number}/statement').then(r => r.text())"
            ),
        )
        .await;
        text.as_str().unwrap().as_bytes().to_vec()
    }
}
