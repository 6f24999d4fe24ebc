//! The privilege split on a real machine. A real nix-daemon serves the
//! store, and the server runs as an unprivileged system user that
//! reaches the store only through the daemon. The activator runs as root
//! with its own root-only state, and its socket is open only to the
//! server's group.
//!
//! The test needs root (to create users and to run the activator) and
//! `useradd`, `setpriv` and `nix-daemon`; without them it prints why it
//! was skipped and passes. It creates system users named `cs-*-<pid>`
//! and removes them at the end, also when an assertion fails.
//!
//! Commands that must run as a test user go through `setpriv` with the
//! user's supplementary groups, because the standard library's
//! `CommandExt::uid` drops every supplementary group, and Debian's
//! nix-bin opens the daemon socket only to the group `nix-users`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use countersign::client::Client;
use countersign_core::certificate::{Certificate, Vote, VoteSignature};
use countersign_core::protocol::{Event, Outcome, Request};
use countersign_nix::Nix;
use countersign_nix::fixture::{SystemSpec, write_flake};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_countersign");
const HOST: &str = "privsplit";
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
const DAEMON_SOCKET: &str = "/nix/var/nix/daemon-socket/socket";
/// The group that Debian's nix-bin allows to open the daemon socket.
const NIX_USERS_GROUP: &str = "nix-users";
/// The environment variable that turns this test binary into the probe
/// that runs as another user.
const PROBE_ENV: &str = "COUNTERSIGN_PRIVILEGE_PROBE";
/// Markers of the probe's result and of each activator event in its
/// standard output.
const PROBE_RESULT: &str = "PROBE-RESULT ";
const PROBE_EVENT: &str = "PROBE-EVENT ";

/// Returns why this machine cannot run the test, or `None` when it can.
fn skip_reason() -> Option<String> {
    let uid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1);
    if uid != 0 {
        return Some(format!(
            "it runs as uid {uid}, and creating users and running the \
             activator need root; run the tests as root"
        ));
    }
    for program in ["useradd", "userdel", "setpriv", "nix-daemon"] {
        if find_program(program).is_none() {
            return Some(format!(
                "`{program}` is not on PATH or in /usr/sbin; install it \
                 (Debian: passwd, util-linux, nix-bin)"
            ));
        }
    }
    None
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `command` to completion and panics with its output on failure.
fn run(command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A system user created for this test.
#[derive(Clone, Debug)]
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

/// The users created by this test, removed with their groups on drop.
#[derive(Default)]
struct Users(Vec<TestUser>);

impl Users {
    /// Creates a system user with home `home` (owned by the user, mode
    /// 0700). `primary_group` is an existing group, or `None` for a new
    /// group named like the user. `groups` are supplementary groups.
    fn create(
        &mut self,
        name: &str,
        home: &Path,
        primary_group: Option<&str>,
        groups: &[&str],
    ) -> TestUser {
        let mut command = Command::new(find_program("useradd").unwrap());
        command
            .args(["--system", "--no-create-home", "--shell"])
            .arg("/usr/sbin/nologin")
            .arg("--home-dir")
            .arg(home);
        match primary_group {
            Some(group) => command.args(["--no-user-group", "--gid", group]),
            None => command.arg("--user-group"),
        };
        if !groups.is_empty() {
            command.arg("--groups").arg(groups.join(","));
        }
        run(command.arg(name));
        let id = |flag: &str| -> u32 {
            run(Command::new("id").arg(flag).arg(name))
                .trim()
                .parse()
                .expect("id prints a number")
        };
        let user = TestUser {
            name: name.to_owned(),
            uid: id("-u"),
            gid: id("-g"),
            home: home.to_owned(),
        };
        self.0.push(user.clone());
        fs::create_dir_all(home).unwrap();
        std::os::unix::fs::chown(home, Some(user.uid), Some(user.gid))
            .unwrap();
        fs::set_permissions(home, fs::Permissions::from_mode(0o700)).unwrap();
        user
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        for user in &self.0 {
            // --force removes the account even while a leftover process
            // of the user still runs.
            let status = Command::new(find_program("userdel").unwrap())
                .arg("--force")
                .arg(&user.name)
                .stderr(Stdio::null())
                .status();
            if !matches!(status, Ok(status) if status.success()) {
                eprintln!("cannot remove the test user {}", user.name);
            }
            // A group named like the user that userdel left behind.
            if let Some(groupdel) = find_program("groupdel") {
                let _ = Command::new(groupdel)
                    .arg(&user.name)
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Processes started by the test. Each runs in its own process group,
/// and the whole group is killed on drop, so that Nix commands the
/// server started end with it.
#[derive(Default)]
struct Processes(Vec<(String, Child)>);

impl Processes {
    fn spawn(&mut self, name: &str, mut command: Command, log: &Path) {
        let log = fs::File::create(log).unwrap();
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start the {name}: {error}")
            });
        self.0.push((name.to_owned(), child));
    }

    /// Panics if a started process has exited.
    fn check_running(&mut self, logs: &Path) {
        for (name, child) in &mut self.0 {
            if let Some(status) = child.try_wait().unwrap() {
                let log = fs::read_to_string(logs.join(format!("{name}.log")))
                    .unwrap_or_default();
                panic!("the {name} exited early ({status}):\n{log}");
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in self.0.iter_mut().rev() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stderr(Stdio::null())
                .status();
            let _ = child.wait();
        }
    }
}

/// Returns whether a nix-daemon accepts connections on the standard
/// socket.
fn daemon_answers() -> bool {
    UnixStream::connect(DAEMON_SOCKET).is_ok()
}

/// Starts a nix-daemon on the standard socket unless one accepts
/// connections there already. Returns the process to stop at the end,
/// which is none when an existing daemon is reused.
fn ensure_daemon(nix_config: &str, logs: &Path) -> Processes {
    let mut processes = Processes::default();
    if daemon_answers() {
        eprintln!("reusing the nix-daemon that listens on {DAEMON_SOCKET}");
        return processes;
    }
    let socket_dir = Path::new(DAEMON_SOCKET).parent().unwrap();
    if !socket_dir.exists() {
        fs::create_dir_all(socket_dir).unwrap();
        fs::set_permissions(socket_dir, fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let mut command = Command::new(find_program("nix-daemon").unwrap());
    command.env("NIX_CONFIG", nix_config);
    processes.spawn("nix-daemon", command, &logs.join("nix-daemon.log"));
    let start = Instant::now();
    while !daemon_answers() {
        processes.check_running(logs);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the nix-daemon did not answer on {DAEMON_SOCKET} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    processes
}

/// Returns whether every user may run `path`: each folder above it is
/// searchable by others, and the file is readable and executable.
fn usable_by_everyone(path: &Path) -> bool {
    let file_ok = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o005 == 0o005)
        .unwrap_or(false);
    file_ok
        && path.ancestors().skip(1).all(|dir| {
            fs::metadata(dir)
                .map(|m| m.permissions().mode() & 0o001 != 0)
                .unwrap_or(false)
        })
}

/// Returns `binary`, or a copy of it in `bin` when the test users
/// cannot reach it where it is.
fn reachable_binary(binary: &Path, bin: &Path) -> PathBuf {
    if usable_by_everyone(binary) {
        return binary.to_owned();
    }
    let copy = bin.join(binary.file_name().unwrap());
    fs::create_dir_all(bin).unwrap();
    fs::copy(binary, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// Writes `text` to `path` owned by root with `mode`.
fn write_root_file(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn make_dir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn git(repo: &Path, args: &[&str]) {
    run(Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_AUTHOR_NAME", "countersign test")
        .env("GIT_AUTHOR_EMAIL", "test@countersign.invalid")
        .env("GIT_COMMITTER_NAME", "countersign test")
        .env("GIT_COMMITTER_EMAIL", "test@countersign.invalid"));
}

fn commit_all(repo: &Path, message: &str) {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "--no-gpg-sign", "-m", message]);
}

fn make_key(path: &Path, comment: &str) -> String {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path));
    fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Builds a command that runs `program` as `user`, with the user's groups from
/// /etc/group and only the environment given in `env`.
fn as_user(user: &TestUser, program: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(find_program("setpriv").unwrap());
    command
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .arg("--")
        .arg(program)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .current_dir(&user.home);
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// Returns the text after `marker` in `line`. The test harness prints
/// the test's name without a line break, so the probe's first line may
/// follow it.
fn after_marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker)
        .map(|start| line[start + marker.len()..].trim())
}

/// What the probe reports: `Ok(())`, or the OS error number.
type ProbeResult = Result<(), i32>;

/// The test binary, run as another user to try one operation.
struct Probe {
    binary: PathBuf,
}

impl Probe {
    /// Runs the probe as `user` with `action` and returns its result and
    /// the lines it printed.
    fn run(
        &self,
        user: &TestUser,
        action: &str,
    ) -> (ProbeResult, Vec<String>) {
        let output = as_user(user, &self.binary, &[(PROBE_ENV, action)])
            .args(["probe_as_other_user", "--exact", "--ignored"])
            .args(["--nocapture", "--test-threads=1"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
        let result = lines
            .iter()
            .find_map(|line| after_marker(line, PROBE_RESULT))
            .unwrap_or_else(|| {
                panic!(
                    "the probe `{action}` as {} printed no result \
                     ({}):\n{stdout}{stderr}",
                    user.name, output.status
                )
            });
        let result = match result {
            "ok" => Ok(()),
            errno => Err(errno.parse().expect("an OS error number")),
        };
        (result, lines)
    }

    /// Asserts that `action` as `user` fails with EACCES.
    fn assert_denied(&self, user: &TestUser, action: &str) {
        let (result, lines) = self.run(user, action);
        assert_eq!(
            result,
            Err(EACCES),
            "{action} as {} was not denied: {lines:?}",
            user.name
        );
    }
}

const EACCES: i32 = 13;

/// Runs one probe action when [`PROBE_ENV`] is set. The actions are
/// `write:PATH` (open an existing file for writing), `create:PATH` (create
/// a new file), `symlink:TARGET:LINK` (create a symbolic link),
/// `connect:SOCKET`, and `send:SOCKET:FILE` (connect, send the request
/// line in FILE and print each event line that comes back).
#[test]
#[ignore = "run by privilege_split_holds as an unprivileged user"]
fn probe_as_other_user() {
    let Ok(action) = std::env::var(PROBE_ENV) else {
        return;
    };
    let report = |result: std::io::Result<()>| match result {
        Ok(()) => println!("{PROBE_RESULT}ok"),
        Err(error) => {
            let errno = error.raw_os_error().unwrap_or(-1);
            println!("{PROBE_RESULT}{errno}");
        }
    };
    let (verb, argument) = action.split_once(':').expect("VERB:ARGUMENT");
    match verb {
        "write" => {
            report(fs::OpenOptions::new().write(true).open(argument).map(drop))
        }
        "create" => report(
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(argument)
                .map(drop),
        ),
        "symlink" => {
            let (target, link) = argument.split_once(':').unwrap();
            report(std::os::unix::fs::symlink(target, link));
        }
        "connect" => report(UnixStream::connect(argument).map(drop)),
        "send" => {
            let (socket, file) = argument.split_once(':').unwrap();
            let request = fs::read(file).unwrap();
            let mut stream = match UnixStream::connect(socket) {
                Ok(stream) => stream,
                Err(error) => return report(Err(error)),
            };
            stream.write_all(&request).unwrap();
            stream.write_all(b"\n").unwrap();
            for line in BufReader::new(stream).lines() {
                println!("{PROBE_EVENT}{}", line.unwrap());
            }
            report(Ok(()));
        }
        other => panic!("unknown probe action {other:?}"),
    }
}

/// Paths of one run, under a temporary folder that every test user may
/// enter but only root may change.
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

fn nix_config(layout: &Layout) -> String {
    let registry = layout.path("nix/registry.json");
    write_root_file(&registry, r#"{"flakes":[],"version":2}"#, 0o644);
    format!(
        "experimental-features = nix-command flakes\n\
         flake-registry = {}\n\
         substituters =\n",
        registry.display()
    )
}

fn nix_options_table(layout: &Layout) -> String {
    format!(
        "{{ \"experimental-features\" = \"nix-command flakes\", \
         \"flake-registry\" = \"{}\", \"substituters\" = \"\" }}",
        layout.path("nix/registry.json").display()
    )
}

fn policy_text(phone: &str, laptop: &str) -> String {
    format!(
        "host = \"{HOST}\"\nthreshold = 2\nveto = true\n\
         proposal_lifetime_secs = 3600\n\n\
         [approvers.phone]\nssh = \"{phone}\"\n\n\
         [approvers.laptop]\nssh = \"{laptop}\"\n"
    )
}

/// Builds the first commit as root through the daemon and sets the
/// profile to it, as the first `nixos-rebuild switch` would.
fn bootstrap(layout: &Layout, nix_config: &str) -> String {
    let nix = Nix::new()
        .with_env("NIX_REMOTE", "daemon")
        .with_env("NIX_CONFIG", nix_config);
    let mirror = layout.path("bootstrap/mirror.git");
    let url = layout.path("repo").display().to_string();
    let commit =
        countersign_nix::git::fetch_branch(&url, "main", &mirror).unwrap();
    let source =
        countersign_nix::fetch_source(&nix, &mirror, &commit).unwrap();
    let attribute =
        format!("nixosConfigurations.{HOST}.config.system.build.toplevel");
    let base = countersign_nix::build(
        &nix,
        &source,
        &attribute,
        &layout.path("bootstrap/result"),
        &mut |_| {},
    )
    .unwrap();
    run(Command::new("nix-env")
        .env("NIX_REMOTE", "daemon")
        .env("NIX_CONFIG", nix_config)
        .arg("--profile")
        .arg(layout.path("profiles/system"))
        .arg("--set")
        .arg(base.as_str()));
    base.to_string()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn wait_for_health(url: &str, processes: &mut Processes, logs: &Path) {
    let start = Instant::now();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    loop {
        if agent.get(format!("{url}/api/v1/health")).call().is_ok() {
            return;
        }
        processes.check_running(logs);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not answer on {url} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_state(
    client: &Client,
    number: u64,
    pending: &[&str],
    timeout: Duration,
    processes: &mut Processes,
    logs: &Path,
) -> Value {
    let start = Instant::now();
    loop {
        let detail: Value = client
            .get_json(&format!("/api/v1/proposals/{number}"))
            .unwrap();
        let state = detail["state"].as_str().unwrap_or("").to_owned();
        if !pending.contains(&state.as_str()) {
            return detail;
        }
        processes.check_running(logs);
        assert!(
            start.elapsed() < timeout,
            "proposal {number} is still {state} after {} s: {detail}",
            timeout.as_secs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn profile_target(layout: &Layout) -> PathBuf {
    fs::canonicalize(layout.path("profiles/system")).unwrap()
}

fn switch_log(layout: &Layout) -> Vec<String> {
    fs::read_to_string(layout.path("switch-to-configuration.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn privilege_split_holds() {
    if let Some(reason) = skip_reason() {
        println!("privilege_split_holds skipped: {reason}");
        return;
    }
    let pid = std::process::id();
    let temp = tempfile::Builder::new()
        .prefix("countersign-privilege-")
        .tempdir()
        .unwrap();
    make_dir(temp.path(), 0o755);
    let layout = Layout {
        root: temp.path().to_owned(),
    };
    for (dir, mode) in [
        ("logs", 0o755),
        ("nix", 0o755),
        ("keys", 0o700),
        ("profiles", 0o755),
        ("run", 0o755),
        ("bootstrap", 0o700),
        ("requests", 0o755),
        ("cache", 0o755),
    ] {
        make_dir(&layout.path(dir), mode);
    }
    let logs = layout.path("logs");
    let nix_config = nix_config(&layout);

    // Users: the server's, a stranger outside the server's group, and
    // the activator's evaluator. Where Debian's nix-users group gates
    // the daemon socket, the server and the evaluator need it. The
    // server gets it as a supplementary group. The evaluator gets it as
    // its primary group, because the activator drops supplementary
    // groups when it switches to the evaluator.
    let has_nix_users = Command::new("getent")
        .args(["group", NIX_USERS_GROUP])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    let daemon_groups: &[&str] = if has_nix_users {
        &[NIX_USERS_GROUP]
    } else {
        &[]
    };
    let mut users = Users::default();
    let server_user = users.create(
        &format!("cs-server-{pid}"),
        &layout.path("server-home"),
        None,
        daemon_groups,
    );
    let stranger = users.create(
        &format!("cs-other-{pid}"),
        &layout.path("other-home"),
        None,
        daemon_groups,
    );
    let evaluator = users.create(
        &format!("cs-eval-{pid}"),
        &layout.path("eval-home"),
        has_nix_users.then_some(NIX_USERS_GROUP),
        &[],
    );
    let server_state = layout.path("server-state");
    make_dir(&server_state, 0o700);
    std::os::unix::fs::chown(
        &server_state,
        Some(server_user.uid),
        Some(server_user.gid),
    )
    .unwrap();

    let _daemon = ensure_daemon(&nix_config, &logs);
    let binary = reachable_binary(Path::new(BINARY), &layout.path("bin"));
    let activator_binary =
        Path::new(BINARY).with_file_name("countersign-activator");
    assert!(
        activator_binary.exists(),
        "{} is missing; run `cargo build --workspace` first",
        activator_binary.display()
    );
    let probe = Probe {
        binary: reachable_binary(
            &std::env::current_exe().unwrap(),
            &layout.path("bin"),
        ),
    };

    // Keys, policy, repository and the first system, all root's.
    let phone = make_key(&layout.path("keys/phone"), "phone");
    let laptop = make_key(&layout.path("keys/laptop"), "laptop");
    let policy = policy_text(&phone, &laptop);
    write_root_file(&layout.path("policy.toml"), &policy, 0o644);
    let repo = layout.path("repo");
    let mut spec =
        SystemSpec::demo(HOST, &layout.path("switch-to-configuration.log"));
    spec.policy_toml = Some(policy.clone());
    write_flake(&repo, &spec).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    commit_all(&repo, "Initial system");
    // Git refuses to read a repository that another user owns unless it
    // is listed as safe. Here root's repository is a stand-in for the
    // forge.
    let gitconfig = server_user.home.join(".gitconfig");
    write_root_file(
        &gitconfig,
        &format!("[safe]\n\tdirectory = {}/.git\n", repo.display()),
        0o644,
    );
    let base = bootstrap(&layout, &nix_config);
    assert_eq!(profile_target(&layout), Path::new(&base));

    // Configurations.
    let socket = layout.path("run/activator.sock");
    let nix_table = nix_options_table(&layout);
    let activator_config = format!(
        "policy = \"{policy}\"\n\
         state_dir = \"{state}\"\n\
         socket = \"{socket}\"\n\
         socket_mode = \"0660\"\n\
         socket_group = \"{group}\"\n\
         profile = \"{profile}\"\n\
         current_system = \"{profile}\"\n\
         verify_evaluation = true\n\
         evaluator_user = \"{evaluator}\"\n\n\
         [nix]\noptions = {nix_table}\n",
        policy = layout.path("policy.toml").display(),
        state = layout.path("activator-state").display(),
        socket = socket.display(),
        group = server_user.name,
        profile = layout.path("profiles/system").display(),
        evaluator = evaluator.name,
    );
    write_root_file(&layout.path("activator.toml"), &activator_config, 0o644);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server_config = format!(
        "host = \"{HOST}\"\n\
         listen = \"127.0.0.1:{port}\"\n\
         state_dir = \"{state}\"\n\
         policy = \"{policy}\"\n\
         activator_socket = \"{socket}\"\n\
         current_system = \"{profile}\"\n\n\
         [repository]\nurl = \"{repo}\"\nbranch = \"main\"\n\n\
         [nix]\noptions = {nix_table}\n",
        state = server_state.display(),
        policy = layout.path("policy.toml").display(),
        socket = socket.display(),
        profile = layout.path("profiles/system").display(),
        repo = repo.display(),
    );
    write_root_file(&layout.path("server.toml"), &server_config, 0o644);

    // The activator as root, then the server as its own user.
    let mut processes = Processes::default();
    let activator_home = layout.path("activator-home");
    make_dir(&activator_home, 0o700);
    let mut activator = Command::new(&activator_binary);
    activator
        .arg("--config")
        .arg(layout.path("activator.toml"))
        .env("NIX_REMOTE", "daemon")
        .env("NIX_CONFIG", &nix_config)
        .env("HOME", &activator_home);
    processes.spawn("activator", activator, &logs.join("activator.log"));
    let start = Instant::now();
    while !socket.exists() {
        processes.check_running(&logs);
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50));
    }
    let socket_metadata = fs::metadata(&socket).unwrap();
    assert_eq!(socket_metadata.permissions().mode() & 0o777, 0o660);
    assert_eq!(socket_metadata.uid(), 0, "root owns the socket");
    assert_eq!(socket_metadata.gid(), server_user.gid);
    assert_eq!(
        fs::metadata(layout.path("activator-state"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    let mut server = as_user(
        &server_user,
        &binary,
        &[("NIX_REMOTE", "daemon"), ("NIX_CONFIG", &nix_config)],
    );
    server
        .arg("serve")
        .arg("--config")
        .arg(layout.path("server.toml"));
    processes.spawn("server", server, &logs.join("server.log"));
    wait_for_health(&url, &mut processes, &logs);

    // A change, proposed and built by the server through the daemon.
    spec.apply_demo_change();
    write_flake(&repo, &spec).unwrap();
    commit_all(&repo, "Update hello, add a backup job");
    let client = Client::login(&url, &layout.path("keys/phone")).unwrap();
    let created: Value = client
        .post_json("/api/v1/proposals", &json!({ "rev": null }))
        .unwrap();
    let number = created["proposal"].as_u64().unwrap();
    let detail = wait_for_state(
        &client,
        number,
        &["building"],
        BUILD_TIMEOUT,
        &mut processes,
        &logs,
    );
    assert_eq!(detail["state"], "awaiting-approval", "{detail}");
    let statement = client
        .get_bytes(&format!("/api/v1/proposals/{number}/statement"))
        .unwrap();
    let target =
        serde_json::from_slice::<Value>(&statement).unwrap()["target"]
            .as_str()
            .unwrap()
            .to_owned();
    let database = server_state.join(countersign_server::DB_FILE);
    let database_owner = fs::metadata(&database).unwrap().uid();
    assert_eq!(database_owner, server_user.uid, "{}", database.display());

    // A user outside the server's group cannot reach the activator; the
    // server's user can.
    let connect = format!("connect:{}", socket.display());
    probe.assert_denied(&stranger, &connect);
    let (result, lines) = probe.run(&server_user, &connect);
    assert_eq!(result, Ok(()), "the server's user connects: {lines:?}");

    // A certificate the server's user forges with keys of its own is
    // refused, and nothing changes.
    let forged_votes: Vec<Vote> = ["phone", "laptop"]
        .iter()
        .map(|approver| {
            let key = server_user.home.join(format!("forged-{approver}"));
            let ssh_keygen = find_program("ssh-keygen").unwrap();
            run(as_user(&server_user, &ssh_keygen, &[])
                .args(["-q", "-t", "ed25519", "-N", "", "-C", approver])
                .arg("-f")
                .arg(&key));
            let signature = sign_as(&server_user, &key, &statement);
            Vote {
                approver: (*approver).to_owned(),
                signature: VoteSignature::Ssh { signature },
            }
        })
        .collect();
    let request = Request::Activate {
        certificate: Certificate::new(&statement, forged_votes),
        audit_head: None,
        commit_evidence: None,
    };
    let request_file = layout.path("requests/forged.json");
    write_root_file(
        &request_file,
        &serde_json::to_string(&request).unwrap(),
        0o644,
    );
    let (result, lines) = probe.run(
        &server_user,
        &format!("send:{}:{}", socket.display(), request_file.display()),
    );
    assert_eq!(result, Ok(()), "the forged request was sent: {lines:?}");
    let finished = lines
        .iter()
        .filter_map(|line| after_marker(line, PROBE_EVENT))
        .filter_map(|line| serde_json::from_str::<Event>(line).ok())
        .find_map(|event| match event {
            Event::Finished {
                outcome, message, ..
            } => Some((outcome, message)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no finished event: {lines:?}"));
    assert_eq!(finished.0, Outcome::Refused, "{}", finished.1);
    assert!(finished.1.contains("invalid"), "{}", finished.1);
    assert_eq!(profile_target(&layout), Path::new(&base));
    assert!(switch_log(&layout).is_empty(), "{:?}", switch_log(&layout));

    // The server's user cannot change what the activator trusts, including the
    // history file that recorded the refusal.
    let state_file = fs::read_dir(layout.path("activator-state"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.is_file())
        .expect("the activator wrote a state file");
    let actions = [
        format!("write:{}", state_file.display()),
        format!(
            "create:{}/injected",
            layout.path("activator-state").display()
        ),
        format!("write:{}", layout.path("policy.toml").display()),
        format!("create:{}/policy.toml.new", layout.root.display()),
        format!("write:{}", layout.path("activator.toml").display()),
        format!(
            "symlink:{target}:{}/system-99-link",
            layout.path("profiles").display()
        ),
        format!("create:{}/system.lock", layout.path("profiles").display()),
        "create:/nix/store/countersign-injected".to_owned(),
        format!("create:{}/injected", layout.path("keys").display()),
    ];
    for action in &actions {
        probe.assert_denied(&server_user, action);
    }

    // Two real approvals, signed by the approvers' key files; the switch
    // follows at once.
    for approver in ["phone", "laptop"] {
        let output = Command::new(&binary)
            .arg("approve")
            .arg(number.to_string())
            .arg("--server")
            .arg(&url)
            .arg("--key")
            .arg(layout.path(&format!("keys/{approver}")))
            .arg("--yes")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "countersign approve with the {approver} key failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let detail = wait_for_state(
        &client,
        number,
        &["awaiting-approval", "activating"],
        Duration::from_secs(120),
        &mut processes,
        &logs,
    );
    assert_eq!(detail["state"], "deployed", "{detail}");
    assert_eq!(profile_target(&layout), Path::new(&target));
    assert_eq!(switch_log(&layout), vec![format!("switch {target}")]);

    // The server's user is not a trusted Nix user, so the daemon rejects
    // an unsigned input-addressed path from it. Root's copy of the same
    // path succeeds.
    let unsigned = unsigned_path_in_cache(&layout, &nix_config);
    let cache = format!("file://{}", layout.path("cache").display());
    let copy_args = ["copy", "--no-check-sigs", "--from", &cache, &unsigned];
    let output = as_user(
        &server_user,
        &find_program("nix").unwrap(),
        &[("NIX_REMOTE", "daemon"), ("NIX_CONFIG", &nix_config)],
    )
    .args(copy_args)
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the server's user added {unsigned}"
    );
    // Nix 2.8 prints "lacks a valid signature", later versions "lacks a
    // signature by a trusted key".
    assert!(stderr.contains("lacks a"), "{stderr}");
    assert!(stderr.contains("signature"), "{stderr}");
    assert!(!Path::new(&unsigned).exists(), "{unsigned} is in the store");
    run(Command::new("nix")
        .args(copy_args)
        .env("NIX_REMOTE", "daemon")
        .env("NIX_CONFIG", &nix_config));
    assert!(
        Path::new(&unsigned).exists(),
        "root could not add {unsigned}"
    );

    // The activator evaluated the approved source as the evaluator: Nix
    // kept its evaluation cache in that user's home.
    let cache = evaluator.home.join(".cache/nix");
    let cache_owner = fs::metadata(&cache)
        .unwrap_or_else(|error| panic!("{}: {error}", cache.display()))
        .uid();
    assert_eq!(cache_owner, evaluator.uid, "{}", cache.display());

    // The profile the activator set is still out of the server's reach.
    probe.assert_denied(
        &server_user,
        &format!(
            "symlink:{base}:{}/system-99-link",
            layout.path("profiles").display()
        ),
    );
}

/// Builds a path of unique content as root, copies it into a binary
/// cache folder without signing it, deletes it from the store and
/// returns its store path.
fn unsigned_path_in_cache(layout: &Layout, nix_config: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let expression = format!(
        "derivation {{ name = \"countersign-unsigned\"; \
         system = builtins.currentSystem; builder = \"/bin/sh\"; \
         args = [ \"-c\" \"echo {nanos} > $out\" ]; }}"
    );
    let nix = |program: &str| {
        let mut command = Command::new(program);
        command
            .env("NIX_REMOTE", "daemon")
            .env("NIX_CONFIG", nix_config);
        command
    };
    let path =
        run(nix("nix-build").args(["--no-out-link", "--expr", &expression]))
            .trim()
            .to_owned();
    let cache = format!("file://{}", layout.path("cache").display());
    run(nix("nix").args(["copy", "--to", &cache, &path]));
    run(nix("nix-store").args(["--delete", &path]));
    path
}

/// Signs `message` in the approval namespace with `key`, running
/// ssh-keygen as `user`.
fn sign_as(user: &TestUser, key: &Path, message: &[u8]) -> String {
    let mut child = as_user(user, &find_program("ssh-keygen").unwrap(), &[])
        .args(["-q", "-Y", "sign", "-n", "countersign-approve", "-f"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "ssh-keygen -Y sign as {} failed: {}",
        user.name,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
