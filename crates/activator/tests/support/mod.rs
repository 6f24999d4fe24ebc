//! Shared set-up for the activator's integration tests: a private Nix
//! configuration, real SSH keys, test systems built with real Nix, and a
//! running `countersign-activator` binary per test.
//!
//! Nix gets flakes, an empty flake registry and no substituters, so that
//! nothing goes to the network. Each test starts its own activator with
//! its own state directory, socket and profile. A switch writes to the
//! log that is baked into the systems it runs, so only tests that never
//! switch share systems built once per test binary.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use countersign_activator::{HistoryRecord, read_history};
use countersign_core::protocol::{
    AuditHead, CommitEvidence, Event, Outcome, Request, Step,
};
use countersign_core::{
    Action, Certificate, Policy, STATEMENT_FORMAT, Sha256Digest, Source,
    Statement, StorePath, Vote, VoteSignature,
};
use countersign_nix::fixture::{self, SystemSpec};
use countersign_nix::{FetchedSource, Nix, build, fetch_source, git};
use tempfile::TempDir;

/// Host name of every test system and policy.
pub const HOST: &str = "demo";

/// How long an activator may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The private Nix configuration shared by the tests of one binary.
pub struct NixEnv {
    _dir: TempDir,
    pub home: PathBuf,
    pub registry: PathBuf,
    pub nix_config: String,
}

pub fn nix_env() -> &'static NixEnv {
    static ENV: OnceLock<NixEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let registry = dir.path().join("registry.json");
        fs::write(&registry, r#"{"flakes":[],"version":2}"#).unwrap();
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        let nix_config = format!(
            "experimental-features = nix-command flakes\n\
             flake-registry = {}\n\
             substituters =\n",
            registry.display()
        );
        NixEnv {
            _dir: dir,
            home,
            registry,
            nix_config,
        }
    })
}

/// Returns a Nix runner with the private configuration.
pub fn nix() -> Nix {
    let env = nix_env();
    Nix::new()
        .with_env("NIX_CONFIG", &env.nix_config)
        .with_env("HOME", &env.home)
}

/// An approver's SSH key pair made by `ssh-keygen`.
pub struct Key {
    pub private: PathBuf,
    pub public: String,
}

impl Key {
    fn generate(dir: &Path, name: &str) -> Self {
        let private = dir.join(name);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&private)
            .status()
            .expect("run ssh-keygen");
        assert!(status.success(), "ssh-keygen failed for {name}");
        let public = fs::read_to_string(private.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned();
        Self { private, public }
    }

    /// Signs `message` with `ssh-keygen -Y sign` in `namespace`.
    pub fn sign(&self, namespace: &str, message: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("statement.json");
        fs::write(&file, message).unwrap();
        let output = Command::new("ssh-keygen")
            .args(["-Y", "sign", "-n", namespace, "-f"])
            .arg(&self.private)
            .arg(&file)
            .output()
            .expect("run ssh-keygen -Y sign");
        assert!(
            output.status.success(),
            "ssh-keygen -Y sign failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        fs::read_to_string(dir.path().join("statement.json.sig")).unwrap()
    }

    /// Signs `message` as an approval vote of `approver`.
    pub fn approve(&self, approver: &str, message: &[u8]) -> Vote {
        Vote {
            approver: approver.to_owned(),
            signature: VoteSignature::Ssh {
                signature: self.sign("countersign-approve", message),
            },
        }
    }
}

/// The phone and laptop of the policy, and a stranger outside it.
pub struct Keys {
    _dir: TempDir,
    pub phone: Key,
    pub laptop: Key,
    pub stranger: Key,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        Keys {
            phone: Key::generate(dir.path(), "phone"),
            laptop: Key::generate(dir.path(), "laptop"),
            stranger: Key::generate(dir.path(), "stranger"),
            _dir: dir,
        }
    })
}

/// Returns the policy text: phone and laptop, both needed.
pub fn policy_text() -> String {
    let keys = keys();
    format!(
        "host = \"{HOST}\"\nthreshold = 2\nproposal_lifetime_secs = 86400\n\n\
         [approvers.phone]\nssh = \"{}\"\n\n\
         [approvers.laptop]\nssh = \"{}\"\n",
        keys.phone.public, keys.laptop.public
    )
}

/// Test systems built from one git repository with real Nix.
pub struct World {
    pub dir: TempDir,
    /// The log that every system of this world appends to on a switch.
    pub switch_log: PathBuf,
    pub repo: PathBuf,
    /// The system that runs before any activation.
    pub base: StorePath,
    /// The system that `source` evaluates to under `attribute`.
    pub target: StorePath,
    pub commit: String,
    pub source: FetchedSource,
    pub attribute: String,
    /// The source of the base's commit, whose NAR hash differs.
    pub base_source: FetchedSource,
}

/// Reads the commit object and submodules of the certificate's commit
/// from the test repository that the statement names, as the server
/// reads them from its mirror. `None` for a statement without a source.
pub fn commit_evidence(certificate: &Certificate) -> Option<CommitEvidence> {
    let bytes = certificate.statement_bytes().ok()?;
    let statement = countersign_core::Statement::parse(&bytes).ok()?;
    let source = statement.source?;
    let repo = source
        .repository
        .strip_prefix("file://")
        .expect("test repositories are local");
    Some(
        git::commit_evidence(&Path::new(repo).join(".git"), &source.commit)
            .expect("read the commit from the test repository"),
    )
}

/// Options of a world.
#[derive(Default, Clone, Copy)]
pub struct WorldOptions {
    /// The target's `switch-to-configuration` exits with status 1.
    pub fail_switch: bool,
    /// Seconds the target's `switch-to-configuration` sleeps after it
    /// logs its action.
    pub switch_delay_secs: u32,
}

impl World {
    pub fn build(options: WorldOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let switch_log = dir.path().join("switch.log");
        let repo = dir.path().join("repo");
        let base_spec = SystemSpec::demo(HOST, &switch_log);
        let mut target_spec = base_spec.demo_update();
        target_spec.fail_switch = options.fail_switch;
        target_spec.switch_delay_secs = options.switch_delay_secs;
        let (_, base_source, base) =
            commit_and_build(dir.path(), &repo, &base_spec, "Base system");
        let (commit, source, target) =
            commit_and_build(dir.path(), &repo, &target_spec, "Target system");
        Self {
            switch_log,
            repo,
            base,
            target,
            commit,
            source,
            attribute: target_spec.attribute(),
            base_source,
            dir,
        }
    }

    /// Commits the flake text `flake_nix` on top of the repository and
    /// builds `attribute` of it; returns the commit, source and output.
    pub fn commit_raw_flake(
        &self,
        flake_nix: &str,
        attribute: &str,
        message: &str,
    ) -> (String, FetchedSource, StorePath) {
        fs::write(self.repo.join("flake.nix"), flake_nix).unwrap();
        let git = |args: &[&str]| {
            let output = Command::new("git")
                .arg("-C")
                .arg(&self.repo)
                .args(["-c", "user.name=test", "-c", "user.email=t@t.invalid"])
                .args(args)
                .output()
                .expect("run git");
            assert!(
                output.status.success(),
                "git {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        };
        git(&["add", "flake.nix"]);
        git(&["commit", "--quiet", "-m", message]);
        let commit = git(&["rev-parse", "HEAD"]);
        fetch_and_build(
            self.dir.path(),
            &self.repo,
            &commit,
            attribute,
            message,
        )
    }

    /// Lines of the switch log; empty when nothing switched.
    pub fn switch_log_lines(&self) -> Vec<String> {
        match fs::read_to_string(&self.switch_log) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// A statement that moves from `base` to `target` as `proposal`.
    pub fn statement(&self, policy: &str, proposal: u64) -> Statement {
        let policy = Policy::from_toml(policy.as_bytes()).unwrap();
        let now = unix_now();
        Statement {
            format: STATEMENT_FORMAT.to_owned(),
            host: HOST.to_owned(),
            proposal,
            action: Action::Switch,
            source: Some(Source {
                repository: format!("file://{}", self.repo.display()),
                branch: "main".to_owned(),
                commit: self.commit.clone(),
                store_path: self.source.store_path.clone(),
                nar_hash: self.source.nar_hash.clone(),
            }),
            rollback_generation: None,
            attribute: self.attribute.clone(),
            base: self.base.clone(),
            target: self.target.clone(),
            policy_sha256: policy.sha256,
            diff_sha256: Sha256Digest::of(b"diff document"),
            nonce: format!("{:032x}", u128::from(proposal) ^ nanos()),
            created: now - 5,
            expires: now + 3600,
        }
    }
}

/// Commits the flake of `spec` to `repo`, fetches it into the store and
/// builds its toplevel; returns the commit, the source and the toplevel.
fn commit_and_build(
    dir: &Path,
    repo: &Path,
    spec: &SystemSpec,
    message: &str,
) -> (String, FetchedSource, StorePath) {
    let commit = fixture::commit_flake(repo, spec, message)
        .expect("commit the test system");
    fetch_and_build(dir, repo, &commit, &spec.attribute(), message)
}

/// Fetches `commit` of `repo` into the store and builds `attribute`.
fn fetch_and_build(
    dir: &Path,
    repo: &Path,
    commit: &str,
    attribute: &str,
    label: &str,
) -> (String, FetchedSource, StorePath) {
    let mirror = dir.join("mirror.git");
    git::fetch_branch(repo.to_str().unwrap(), "main", &mirror)
        .expect("fetch the test repository into the mirror");
    let source = fetch_source(&nix(), &mirror, commit)
        .expect("fetch the commit into the store");
    let gc_root = dir.join(format!("result-{}", label.replace(' ', "-")));
    let toplevel = build(&nix(), &source, attribute, &gc_root, &mut |_| {})
        .expect("build the test system");
    (commit.to_owned(), source, toplevel)
}

/// The world shared by the tests that must never switch: its switch log
/// stays absent unless a test activates by mistake.
pub struct SharedWorld {
    pub world: World,
    /// A valid, switchable system that the approved source does not
    /// evaluate to.
    pub other: StorePath,
    /// A system whose `bin/switch-to-configuration` is a symlink out of
    /// the store, with the source and attribute that build it.
    pub escape: StorePath,
    pub escape_source: FetchedSource,
    pub escape_commit: String,
}

/// The target of the escaping system's switch script.
pub const OUTSIDE_STORE: &str = "/tmp/countersign-test-outside-the-store";

pub fn shared_world() -> &'static SharedWorld {
    static WORLD: OnceLock<SharedWorld> = OnceLock::new();
    WORLD.get_or_init(|| {
        let world = World::build(WorldOptions::default());
        let mut other_spec = SystemSpec::demo(HOST, &world.switch_log);
        other_spec.set_package(countersign_nix::fixture::Package::with_binary(
            "other", "1.0",
        ));
        let (_, _, other) =
            commit_and_build(world.dir.path(), &world.repo, &other_spec, "Other");
        let flake = format!(
            "{{\n  outputs = {{ self }}: {{\n    \
             nixosConfigurations.escape.config.system.build.toplevel =\n      \
             builtins.derivation {{\n        name = \"nixos-system-escape\";\n        \
             system = \"{}-linux\";\n        builder = \"/bin/sh\";\n        \
             args = [ \"-e\" \"-c\" ''\n          \
             /bin/mkdir -p $out/bin\n          \
             /bin/ln -s {OUTSIDE_STORE} $out/bin/switch-to-configuration\n        \
             '' ];\n      }};\n  }};\n}}\n",
            std::env::consts::ARCH
        );
        let (escape_commit, escape_source, escape) = world.commit_raw_flake(
            &flake,
            ESCAPE_ATTRIBUTE,
            "Escaping system",
        );
        SharedWorld {
            world,
            other,
            escape,
            escape_source,
            escape_commit,
        }
    })
}

/// The attribute of the escaping system.
pub const ESCAPE_ATTRIBUTE: &str =
    "nixosConfigurations.escape.config.system.build.toplevel";

/// Signs `statement` with each `(key, approver)` pair.
pub fn certificate(
    statement: &Statement,
    signers: &[(&Key, &str)],
) -> Certificate {
    let bytes = statement.to_bytes();
    let votes = signers
        .iter()
        .map(|(key, approver)| key.approve(approver, &bytes))
        .collect();
    Certificate::new(&bytes, votes)
}

/// A certificate with both approvals of the policy.
pub fn approved(statement: &Statement) -> Certificate {
    let keys = keys();
    certificate(
        statement,
        &[(&keys.phone, "phone"), (&keys.laptop, "laptop")],
    )
}

/// A running `countersign-activator` with its own state, socket and
/// profile, whose profile starts at the world's base.
pub struct Activator {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub policy_path: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub profile: PathBuf,
    log_path: PathBuf,
    /// A directory put first on the activator's `PATH`.
    extra_path: Option<PathBuf>,
    /// A listening socket passed to the activator as systemd passes one.
    activation_socket: Option<UnixListener>,
    child: Option<Child>,
}

impl Activator {
    /// Starts an activator with the default policy and `extra_config`
    /// appended to its configuration.
    pub fn start(world: &World, extra_config: &str) -> Self {
        let mut activator = Self::configure(world, extra_config);
        activator.spawn();
        activator
    }

    /// Starts an activator whose `PATH` begins with a directory that
    /// holds `programs`: file names and shell scripts, such as a
    /// `nix-env` wrapper.
    pub fn start_with_programs(
        world: &World,
        extra_config: &str,
        programs: &[(&str, String)],
    ) -> Self {
        let mut activator = Self::configure(world, extra_config);
        let bin = activator.dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        for (name, script) in programs {
            let path = bin.join(name);
            fs::write(&path, script).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        activator.extra_path = Some(bin);
        activator.spawn();
        activator
    }

    /// Starts an activator whose configuration ends with the tables that
    /// `tables` returns for it, so that they can name its paths.
    pub fn start_with_tables(
        world: &World,
        tables: impl FnOnce(&Self) -> String,
    ) -> Self {
        let mut activator = Self::configure(world, "");
        let mut config = fs::read_to_string(&activator.config_path).unwrap();
        config.push_str(&tables(&activator));
        fs::write(&activator.config_path, config).unwrap();
        activator.spawn();
        activator
    }

    /// Starts an activator whose running system is the link
    /// [`Activator::running_system_link`], pointed at the world's base,
    /// apart from its profile, as on NixOS where `/run/current-system`
    /// and the system profile differ after a `boot` or `test` switch.
    pub fn start_with_running_system(
        world: &World,
        extra_config: &str,
    ) -> Self {
        let mut activator = Self::configure(world, extra_config);
        let link = activator.running_system_link();
        std::os::unix::fs::symlink(world.base.as_path(), &link).unwrap();
        let config = fs::read_to_string(&activator.config_path).unwrap();
        let profile_line =
            format!("current_system = \"{}\"\n", activator.profile.display());
        assert!(config.contains(&profile_line), "{config}");
        let config = config.replace(
            &profile_line,
            &format!("current_system = \"{}\"\n", link.display()),
        );
        fs::write(&activator.config_path, config).unwrap();
        activator.spawn();
        activator
    }

    /// Returns the link that [`Activator::start_with_running_system`]
    /// makes the activator's running system.
    pub fn running_system_link(&self) -> PathBuf {
        self.dir.path().join("current-system")
    }

    /// Starts an activator the way systemd socket activation does: the
    /// test binds the socket, and the activator gets it as descriptor 3
    /// with `LISTEN_PID` set to its own pid and `LISTEN_FDS=1`.
    pub fn start_socket_activated(
        world: &World,
        extra_config: &str,
        socket_mode: u32,
    ) -> Self {
        let mut activator = Self::configure(world, extra_config);
        fs::create_dir_all(activator.socket.parent().unwrap()).unwrap();
        let listener = UnixListener::bind(&activator.socket).unwrap();
        fs::set_permissions(
            &activator.socket,
            fs::Permissions::from_mode(socket_mode),
        )
        .unwrap();
        activator.activation_socket = Some(listener);
        activator.spawn();
        activator
    }

    /// Writes the configuration, policy and profile of an activator
    /// without starting it.
    fn configure(world: &World, extra_config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let profile = root.join("profile");
        set_profile(&profile, &world.base);
        let policy_path = root.join("policy.toml");
        fs::write(&policy_path, policy_text()).unwrap();
        let state_dir = root.join("state");
        let socket = root.join("run/activator.sock");
        let config_path = root.join("activator.toml");
        let config = format!(
            "policy = \"{}\"\nstate_dir = \"{}\"\nsocket = \"{}\"\n\
             profile = \"{}\"\n\
             current_system = \"{}\"\nverify_evaluation = true\n{extra_config}\n\
             [nix]\noptions = {{ \"experimental-features\" = \"nix-command flakes\", \
             \"flake-registry\" = \"{}\", \"substituters\" = \"\" }}\n",
            policy_path.display(),
            state_dir.display(),
            socket.display(),
            profile.display(),
            profile.display(),
            nix_env().registry.display(),
        );
        fs::write(&config_path, config).unwrap();
        Self {
            log_path: root.join("activator.log"),
            dir,
            config_path,
            policy_path,
            state_dir,
            socket,
            profile,
            extra_path: None,
            activation_socket: None,
            child: None,
        }
    }

    /// Starts an activator whose `nix` is a wrapper that appends its
    /// arguments to [`Activator::nix_calls`] and runs the real `nix`,
    /// so that a test can see which queries and evaluations ran.
    pub fn start_recording_nix(world: &World, extra_config: &str) -> Self {
        let mut activator = Self::start(world, extra_config);
        activator.stop();
        let bin = activator.dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let output = Command::new("sh")
            .args(["-c", "command -v nix"])
            .output()
            .expect("run sh");
        let real_nix = String::from_utf8(output.stdout).unwrap();
        assert!(output.status.success(), "nix is not on PATH");
        let wrapper = bin.join("nix");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh
printf '%s\\n' \"$*\" >> '{}'
exec '{}' \"$@\"
",
                activator.nix_calls_path().display(),
                real_nix.trim()
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
            .unwrap();
        activator.extra_path = Some(bin);
        activator.spawn();
        activator
    }

    fn nix_calls_path(&self) -> PathBuf {
        self.dir.path().join("nix-calls.log")
    }

    /// The argument lists of the `nix` calls recorded so far, one per
    /// call; empty unless started with
    /// [`Activator::start_recording_nix`].
    pub fn nix_calls(&self) -> Vec<String> {
        match fs::read_to_string(self.nix_calls_path()) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Forgets the recorded `nix` calls.
    pub fn clear_nix_calls(&self) {
        let _ = fs::remove_file(self.nix_calls_path());
    }

    fn spawn(&mut self) {
        self.spawn_until(|events| {
            matches!(events.last(), Some(Event::Status { .. }))
        });
    }

    /// Starts the process and waits until a status request gets a reply
    /// that `ready` accepts.
    fn spawn_until(&mut self, ready: fn(&[Event]) -> bool) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let binary = env!("CARGO_BIN_EXE_countersign-activator");
        let mut command = match &self.activation_socket {
            None => Command::new(binary),
            Some(listener) => {
                // The activator's pid is known only after the fork, so
                // a shell sets `LISTEN_PID` to its own pid and execs the
                // activator, which keeps that pid. The socket arrives as
                // the shell's standard input, and the redirections move
                // it to descriptor 3, which is not close-on-exec.
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg(
                        "LISTEN_PID=$$ LISTEN_FDS=1 \
                         LISTEN_FDNAMES=activator.sock \
                         exec \"$0\" \"$@\" 3<&0 0</dev/null",
                    )
                    .arg(binary)
                    .stdin(Stdio::from(OwnedFd::from(
                        listener.try_clone().unwrap(),
                    )));
                command
            }
        };
        if let Some(extra) = &self.extra_path {
            let path = std::env::var("PATH").unwrap_or_default();
            command.env("PATH", format!("{}:{path}", extra.display()));
        }
        // A process group of its own lets a test kill the activator and
        // its children at once, as systemd stops a service's control
        // group and as a power loss stops everything.
        command.process_group(0);
        if self.activation_socket.is_none() {
            command.stdin(Stdio::null());
        }
        let child = command
            .arg("--config")
            .arg(&self.config_path)
            .env("NIX_CONFIG", &nix_env().nix_config)
            .env("HOME", &nix_env().home)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start countersign-activator");
        self.child = Some(child);
        self.wait_until_listening(ready);
    }

    fn wait_until_listening(&mut self, ready: fn(&[Event]) -> bool) {
        let started = Instant::now();
        loop {
            if let Some(status) =
                self.child.as_mut().unwrap().try_wait().unwrap()
            {
                panic!(
                    "countersign-activator exited with {status}:\n{}",
                    self.log()
                );
            }
            if let Ok(events) = self.try_request(b"{\"request\":\"status\"}\n")
                && ready(&events)
            {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "countersign-activator did not listen on {} within {:?}:\n{}",
                self.socket.display(),
                START_TIMEOUT,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process, leaving its socket file behind as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Restarts the process and waits until it replies to a status
    /// request with a refusal, as it does when it cannot read its state.
    pub fn restart_refusing_status(&mut self) {
        self.stop();
        self.spawn_until(|events| {
            matches!(
                events.last(),
                Some(Event::Finished {
                    outcome: Outcome::Refused,
                    ..
                })
            )
        });
    }

    /// Kills the activator and every process of its group with SIGKILL,
    /// without waiting; [`Activator::restart`] reaps it.
    pub fn kill_group(&self) {
        let pid = self.child.as_ref().expect("the activator runs").id();
        let status = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL -{pid} failed");
    }

    /// The activator's log output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn try_request(&self, line: &[u8]) -> std::io::Result<Vec<Event>> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        // The activator stops reading after an oversized line, so a
        // failed write is expected then; its reply is still readable.
        let _ = stream.write_all(line);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut events = Vec::new();
        for line in BufReader::new(stream).lines() {
            let line = line?;
            let event: Event =
                serde_json::from_str(&line).unwrap_or_else(|error| {
                    panic!(
                        "the activator sent an invalid event {line:?}: {error}"
                    )
                });
            events.push(event);
        }
        Ok(events)
    }

    /// Sends a request and passes each event to `on_event` as it
    /// arrives; returns every event. A connection that breaks, as when
    /// the activator is killed, ends the reply early, as does a line cut
    /// off in the middle.
    pub fn request_streaming(
        &self,
        request: &Request,
        on_event: &mut dyn FnMut(&Event),
    ) -> Vec<Event> {
        let mut line = serde_json::to_vec(request).unwrap();
        line.push(b'\n');
        let mut stream =
            UnixStream::connect(&self.socket).unwrap_or_else(|error| {
                panic!("cannot connect to the activator: {error}")
            });
        stream.write_all(&line).unwrap();
        let mut events = Vec::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let Ok(event) = serde_json::from_str::<Event>(&line) else {
                break;
            };
            on_event(&event);
            events.push(event);
        }
        events
    }

    /// Sends raw bytes as a request and returns every event of the reply.
    pub fn request(&self, line: &[u8]) -> Vec<Event> {
        self.try_request(line).unwrap_or_else(|error| {
            panic!("request to the activator failed: {error}\n{}", self.log())
        })
    }

    /// Sends a prepare request and returns every event of the reply.
    pub fn prepare(
        &self,
        source: &StorePath,
        nar_hash: &str,
        attribute: &str,
    ) -> Vec<Event> {
        let request = Request::Prepare {
            source: source.clone(),
            nar_hash: nar_hash.to_owned(),
            attribute: attribute.to_owned(),
        };
        let mut line = serde_json::to_vec(&request).unwrap();
        line.push(b'\n');
        self.request(&line)
    }

    /// Names of the files in the directory `name` of the state
    /// directory; empty when it does not exist.
    pub fn state_files(&self, name: &str) -> Vec<String> {
        match fs::read_dir(self.state_dir.join(name)) {
            Ok(entries) => entries
                .map(|entry| {
                    entry.unwrap().file_name().to_string_lossy().into_owned()
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn activate(&self, certificate: &Certificate) -> Vec<Event> {
        self.activate_with_head(certificate, None)
    }

    /// Sends an activation request with the server's audit head.
    pub fn activate_with_head(
        &self,
        certificate: &Certificate,
        audit_head: Option<AuditHead>,
    ) -> Vec<Event> {
        let request = Request::Activate {
            certificate: certificate.clone(),
            audit_head,
            commit_evidence: commit_evidence(certificate),
        };
        let mut line = serde_json::to_vec(&request).unwrap();
        line.push(b'\n');
        self.request(&line)
    }

    /// Sends a confirm request and returns every event of the reply.
    pub fn confirm(&self, proposal: u64) -> Vec<Event> {
        let mut line =
            serde_json::to_vec(&Request::Confirm { proposal }).unwrap();
        line.push(b'\n');
        self.request(&line)
    }

    /// The store path the profile resolves to.
    /// Returns the text of the profile link, such as `profile-2-link`.
    pub fn profile_link(&self) -> String {
        fs::read_link(&self.profile)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    pub fn profile_target(&self) -> PathBuf {
        fs::canonicalize(&self.profile).unwrap()
    }

    /// Each history entry in short form, such as `accepted 1` or
    /// `finished 1 RolledBack`.
    pub fn record_kinds(&self) -> Vec<String> {
        read_history(&self.state_dir)
            .unwrap()
            .into_iter()
            .map(|entry| match entry.record {
                HistoryRecord::Accepted { proposal, .. } => {
                    format!("accepted {proposal}")
                }
                HistoryRecord::Refused { proposal, .. } => {
                    format!("refused {proposal:?}")
                }
                HistoryRecord::Finished {
                    proposal, outcome, ..
                } => format!("finished {proposal} {outcome:?}"),
                HistoryRecord::Recovered {
                    proposal,
                    step,
                    outcome,
                    ..
                } => format!("recovered {proposal} {step} {outcome:?}"),
            })
            .collect()
    }

    /// The message of the newest history entry that has one.
    pub fn last_message(&self) -> String {
        read_history(&self.state_dir)
            .unwrap()
            .into_iter()
            .rev()
            .find_map(|entry| match entry.record {
                HistoryRecord::Finished { message, .. }
                | HistoryRecord::Recovered { message, .. } => Some(message),
                HistoryRecord::Refused { reason, .. } => Some(reason),
                HistoryRecord::Accepted { .. } => None,
            })
            .unwrap_or_default()
    }
}

/// Waits up to a minute for `condition`, checking every 20 ms.
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Returns the absolute path of `program` on the test's `PATH`.
pub fn real_program(program: &str) -> String {
    let output = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("run sh");
    assert!(output.status.success(), "{program} is not on PATH");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

impl Drop for Activator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The steps of the progress events, in order, without repeats.
pub fn steps(events: &[Event]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for event in events {
        if let Event::Progress { step, .. } = event
            && steps.last() != Some(step)
        {
            steps.push(*step);
        }
    }
    steps
}

/// The lines of the log events.
pub fn log_lines(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Log { line } => Some(line.clone()),
            _ => None,
        })
        .collect()
}

/// Points `profile` at `path`, as an administrator's rollback would.
pub fn set_profile(profile: &Path, path: &StorePath) {
    let status = Command::new("nix-env")
        .env("NIX_CONFIG", &nix_env().nix_config)
        .env("HOME", &nix_env().home)
        .arg("--profile")
        .arg(profile)
        .arg("--set")
        .arg(path.as_str())
        .status()
        .expect("run nix-env");
    assert!(status.success(), "nix-env --set {path} failed");
}

/// The outcome, proposal and message of the final `finished` event.
pub fn finished(events: &[Event]) -> (Outcome, Option<u64>, String) {
    match events.last() {
        Some(Event::Finished {
            outcome,
            proposal,
            message,
        }) => (*outcome, *proposal, message.clone()),
        other => panic!("the reply does not end with `finished`: {other:?}"),
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
