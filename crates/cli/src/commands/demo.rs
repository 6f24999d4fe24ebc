//! `countersign demo`: the whole flow on one machine, in one folder.
//!
//! The demo makes a sample repository whose flake builds a NixOS-shaped
//! system without nixpkgs, two approver keys and a policy. It installs
//! the first system into a profile inside the folder, as the first
//! ordinary `nixos-rebuild` would. It then starts the activator and the
//! server as separate processes, commits a change and proposes it.
//! Interactive, it prints the commands that approve the change with each
//! key and waits. With `--unattended` it runs them itself and checks the
//! result.
//!
//! The pages run on `http://localhost:PORT`, and the policy names that
//! origin and the relying party `localhost`, so a passkey can be enrolled
//! there. The policy is read from the deployed system, so the passkey
//! counts only after a change that lists it is approved and deployed.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use countersign_nix::Nix;
use countersign_nix::fixture::{SystemSpec, write_flake};
use serde_json::Value;

use crate::client::Client;
use crate::commands::vote;

/// Host name of the demo system.
const HOST: &str = "demo";
/// File that marks a folder as the demo's own, so it may be replaced.
const MARKER: &str = ".countersign-demo";
/// Time between two reads of a proposal's state while waiting for it to
/// change. Each read is one line in the server log.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct DemoOptions {
    /// Approve with both keys, wait for the switch, check it and exit;
    /// the exit status is 0 only if the approved system was activated.
    #[arg(long)]
    unattended: bool,
    /// Folder for everything the demo makes; replaced if it holds an
    /// earlier demo.
    #[arg(long, default_value = "countersign-demo")]
    dir: PathBuf,
    /// TCP port on 127.0.0.1 for the server (default: a free one).
    #[arg(long)]
    port: Option<u16>,
}

/// Paths inside the demo folder.
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.path(&format!("keys/{name}"))
    }
    pub fn profile(&self) -> PathBuf {
        self.path("profiles/system")
    }
    pub fn switch_log(&self) -> PathBuf {
        self.path("switch-to-configuration.log")
    }
    /// Returns the policy file of the system the profile points to. The
    /// server and the activator read it there, as they read /etc on a
    /// real machine, so a policy change is in force once it is deployed.
    pub fn policy(&self) -> PathBuf {
        self.profile().join("etc/countersign/policy.toml")
    }
}

/// Child processes that are stopped when the demo ends, however it ends.
struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (name, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(process = %name, "stopped");
        }
    }
}

/// A demo or test installation: folder, keys, policy, repository, first
/// system, configurations, and the activator and server processes.
pub struct Environment {
    pub layout: Layout,
    pub nix: Nix,
    /// The `countersign` binary that runs the server and the approvals.
    pub binary: PathBuf,
    pub server_url: String,
    pub spec: SystemSpec,
    processes: Processes,
}

impl Environment {
    /// Makes everything up to the running first system, without starting
    /// any process. `binary` is the `countersign` executable to use.
    pub fn create(
        dir: &Path,
        binary: &Path,
        port: Option<u16>,
    ) -> Result<Self> {
        let layout = prepare_folder(dir)?;
        let nix_options = nix_options(&layout)?;
        let nix = nix_options
            .iter()
            .try_fold(Nix::new(), |nix, (name, value)| {
                nix.with_option(name, value)
            })?;

        // The port comes first: the policy names the pages' origin.
        let port = match port {
            Some(port) => port,
            None => free_port()?,
        };
        step("Making two approver keys (phone, laptop) and the policy");
        let keys = ["phone", "laptop"]
            .map(|name| make_key(&layout, name))
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let policy = policy_text(&keys, port);

        step("Making the sample repository with a NixOS-shaped flake");
        let mut spec = SystemSpec::demo(HOST, &layout.switch_log());
        spec.policy_toml = Some(policy.clone());
        write_flake(&layout.repo(), &spec)?;
        git(&layout.repo(), &["init", "-q", "-b", "main"])?;
        commit_all(&layout.repo(), "Initial system")?;

        step("Installing the first system into the demo profile");
        let base = bootstrap(&nix, &layout)?;
        println!("  {base}");

        write_configs(&layout, port, &nix_options)?;
        Ok(Self {
            layout,
            nix,
            binary: binary.to_owned(),
            server_url: format!("http://127.0.0.1:{port}"),
            spec,
            processes: Processes(Vec::new()),
        })
    }

    /// Starts the activator, then the server, and waits until both respond.
    pub fn start(&mut self) -> Result<()> {
        step("Starting the activator and the server as separate processes");
        self.start_activator()?;
        self.start_server()?;
        println!("  server    {}", self.server_url);
        println!("  logs      {}", self.layout.path("logs").display());
        Ok(())
    }

    pub fn start_activator(&mut self) -> Result<()> {
        let socket = self.layout.path("run/activator.sock");
        let _ = fs::remove_file(&socket);
        let child = self.spawn("activator")?;
        self.processes.0.push(("activator".into(), child));
        wait_for(&socket, "the activator socket")
    }

    pub fn start_server(&mut self) -> Result<()> {
        let child = self.spawn("serve")?;
        self.processes.0.push(("server".into(), child));
        wait_for_server(&self.server_url, &mut self.processes)
    }

    fn spawn(&self, subcommand: &str) -> Result<Child> {
        spawn_own(&self.binary, &self.layout, subcommand)
    }

    /// The process id of the named process (`server` or `activator`).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes
            .0
            .iter()
            .find(|(own, _)| own == name)
            .map(|(_, child)| child.id())
    }

    /// Sends SIGKILL to the named process (`server` or `activator`), as a
    /// crash or power loss would end it.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        let index = self
            .processes
            .0
            .iter()
            .position(|(own, _)| own == name)
            .with_context(|| format!("no {name} process runs"))?;
        let (_, mut child) = self.processes.0.remove(index);
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Changes the sample system with `change`, commits it and returns
    /// the new commit id.
    pub fn commit_change(
        &mut self,
        message: &str,
        change: impl FnOnce(&mut SystemSpec),
    ) -> Result<String> {
        change(&mut self.spec);
        write_flake(&self.layout.repo(), &self.spec)?;
        commit_all(&self.layout.repo(), message)?;
        let output = Command::new("git")
            .arg("-C")
            .arg(self.layout.repo())
            .args(["rev-parse", "HEAD"])
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Proposes the branch head with the trigger token and returns the
    /// proposal number.
    pub fn propose(&self) -> Result<u64> {
        let trigger = Client::with_token_file(
            &self.server_url,
            &self.layout.path("secrets/trigger-token"),
        )?;
        let created: Value = trigger.post_json(
            "/api/v1/proposals",
            &serde_json::json!({ "rev": null }),
        )?;
        created["proposal"]
            .as_u64()
            .context("the server returned no proposal number")
    }

    /// Signs in as `approver` (`phone` or `laptop`).
    pub fn client(&self, approver: &str) -> Result<Client> {
        Client::login(&self.server_url, &self.layout.key(approver))
    }

    /// The command line that approves or rejects proposal `number`.
    pub fn vote_command(
        &self,
        verb: &str,
        number: u64,
        approver: &str,
    ) -> Vec<String> {
        vec![
            self.binary.display().to_string(),
            verb.into(),
            number.to_string(),
            "--server".into(),
            self.server_url.clone(),
            "--key".into(),
            self.layout.key(approver).display().to_string(),
        ]
    }

    /// Runs `countersign approve|reject NUMBER --yes` as a separate process
    /// and returns whether it succeeded, with its output.
    pub fn vote(
        &self,
        verb: &str,
        number: u64,
        approver: &str,
    ) -> Result<(bool, String)> {
        let command = self.vote_command(verb, number, approver);
        let output = Command::new(&command[0])
            .args(&command[1..])
            .arg("--yes")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("failed to run countersign {verb}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.success(), text))
    }

    /// Waits until proposal `number` leaves `building`, `awaiting-approval`
    /// and `activating`, for at most `timeout`, and returns its detail.
    pub fn wait_for_state(
        &self,
        number: u64,
        pending: &[&str],
        timeout: Duration,
    ) -> Result<Value> {
        let mut client = self.client("phone")?;
        let start = Instant::now();
        loop {
            client.renew_if_expiring()?;
            let detail: Value =
                client.get_json(&format!("/api/v1/proposals/{number}"))?;
            let state = detail["state"].as_str().unwrap_or("");
            if !pending.contains(&state) {
                return Ok(detail);
            }
            if start.elapsed() > timeout {
                bail!(
                    "proposal {number} is still {state} after {} s",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The lines of the sample system's switch-to-configuration log.
    pub fn switch_log(&self) -> Vec<String> {
        fs::read_to_string(self.layout.switch_log())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The store path the demo profile points to.
    pub fn profile_target(&self) -> Result<PathBuf> {
        Ok(fs::canonicalize(self.layout.profile())?)
    }
}

pub fn run(options: DemoOptions) -> Result<()> {
    let binary = std::env::current_exe()?;
    let mut environment =
        Environment::create(&options.dir, &binary, options.port)?;
    environment.start()?;

    step("Committing a change: a hello update, a new timer, an sshd edit");
    environment.commit_change("Update hello, add a backup job", |spec| {
        spec.apply_demo_change()
    })?;

    step("Proposing the change (as a forge webhook would)");
    let number = environment.propose()?;
    let detail = environment.wait_for_state(
        number,
        &["building"],
        Duration::from_secs(600),
    )?;
    if detail["state"] != "awaiting-approval" {
        bail!(
            "proposal {number} ended in state {} instead of awaiting \
             approval: {}; the build log is at {}/logs/{number}.log",
            detail["state"],
            detail["error"],
            environment.layout.path("server-state").display()
        );
    }
    let viewer = environment.client("phone")?;
    let reviewed = vote::review(&viewer, number)?;
    let pages = environment.server_url.replace("127.0.0.1", "localhost");
    println!("  page      {pages}/proposals/{number}");
    println!("  passkeys  {pages}/enrol");
    println!(
        "  The page asks for a sign-in with a passkey that the policy lists. \
         The\n  demo policy lists only the SSH keys of phone and laptop, so \
         the page\n  stops at sign-in until a passkey is enrolled and \
         deployed:\n  1. The passkeys page above makes a passkey and \
         prints the policy\n     lines for it under a new approver \
         name.\n  2. \
         The passkey counts only once a change that adds those lines to\n     \
         flake.nix is approved by phone and laptop and deployed, because \
         the\n     policy comes with the deployed system\n     ({}).\n  \
         docs/web.md describes sign-in and enrolment.",
        environment.layout.policy().display()
    );
    println!();
    vote::print_summary(&reviewed, false);
    println!();

    step("To deploy, approve with both keys (2 of 2):");
    for approver in ["phone", "laptop"] {
        let command = environment.vote_command("approve", number, approver);
        println!("  {}", command.join(" "));
    }
    if options.unattended {
        for approver in ["phone", "laptop"] {
            step(&format!("Approving with the {approver} key"));
            let (ok, output) =
                environment.vote("approve", number, approver)?;
            if !ok {
                print!("{output}");
                bail!("countersign approve with the {approver} key failed");
            }
            // The approve command prints the same review as above first,
            // so only its result line is shown.
            let recorded = output
                .lines()
                .find(|line| line.starts_with("Approval recorded"));
            match recorded {
                Some(line) => println!("  {line}"),
                None => print!("{output}"),
            }
        }
    } else {
        println!(
            "\nWaiting for the approvals; press Ctrl-C to stop the demo."
        );
    }

    let timeout = if options.unattended {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(u64::MAX / 4)
    };
    let detail = environment.wait_for_state(
        number,
        &["awaiting-approval", "activating"],
        timeout,
    )?;
    let outcome = detail["state"].as_str().unwrap_or("unknown").to_owned();
    step(&format!("Proposal {number} is {outcome}"));
    check_result(&environment.layout, &reviewed.statement, &outcome)?;
    println!("  The demo profile points to the approved system, and its");
    println!("  switch-to-configuration ran once with action switch.");
    step("Verifying the audit log");
    super::audit::verify(
        &environment.layout.path("server.toml"),
        Some(&environment.layout.path("activator.toml")),
    )?;
    Ok(())
}

fn step(text: &str) {
    println!("==> {text}");
}

fn prepare_folder(dir: &Path) -> Result<Layout> {
    if dir.exists() {
        let empty = fs::read_dir(dir)?.next().is_none();
        if dir.join(MARKER).exists() {
            fs::remove_dir_all(dir).with_context(|| {
                format!(
                    "failed to remove the earlier demo in {}",
                    dir.display()
                )
            })?;
        } else if !empty {
            bail!(
                "{} exists and is not a countersign demo folder; pass --dir \
                 with a new or empty folder",
                dir.display()
            );
        }
    }
    for sub in ["keys", "profiles", "run", "logs", "secrets", "nix"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    fs::write(dir.join(MARKER), "")?;
    let root = fs::canonicalize(dir)?;
    Ok(Layout { root })
}

/// Nix settings for the demo: flakes on, and no registry or binary cache
/// lookups, which would need the network.
fn nix_options(layout: &Layout) -> Result<Vec<(String, String)>> {
    let registry = layout.path("nix/registry.json");
    fs::write(&registry, r#"{"flakes":[],"version":2}"#)?;
    Ok(vec![
        ("experimental-features".into(), "nix-command flakes".into()),
        ("flake-registry".into(), registry.display().to_string()),
        ("substituters".into(), String::new()),
    ])
}

fn make_key(layout: &Layout, name: &str) -> Result<String> {
    let path = layout.key(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .context("failed to run ssh-keygen; install openssh-client")?;
    if !status.success() {
        bail!("ssh-keygen failed to make the {name} key");
    }
    Ok(fs::read_to_string(path.with_extension("pub"))?
        .trim()
        .to_owned())
}

/// The demo's policy. Passkeys are made for the relying party
/// `localhost` on the pages at `http://localhost:PORT`, the one plain
/// http origin where browsers offer them.
fn policy_text(keys: &[String], port: u16) -> String {
    format!(
        "# Who may approve deployments of host {HOST}.\n\
         host = \"{HOST}\"\n\
         threshold = 2\n\
         veto = true\n\
         proposal_lifetime_secs = 3600\n\n\
         [webauthn]\n\
         rp_id = \"localhost\"\n\
         origins = [\"http://localhost:{port}\"]\n\n\
         [approvers.phone]\nssh = \"{}\"\n\n\
         [approvers.laptop]\nssh = \"{}\"\n",
        keys[0], keys[1]
    )
}

fn git(repo: &Path, args: &[&str]) -> Result<()> {
    fs::create_dir_all(repo)?;
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_AUTHOR_NAME", "countersign demo")
        .env("GIT_AUTHOR_EMAIL", "demo@countersign.invalid")
        .env("GIT_COMMITTER_NAME", "countersign demo")
        .env("GIT_COMMITTER_EMAIL", "demo@countersign.invalid")
        .output()
        .context("failed to run git; install git")?;
    if !output.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn commit_all(repo: &Path, message: &str) -> Result<()> {
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "--no-gpg-sign", "-m", message])
}

/// Builds the first commit and sets the demo profile to it, as the first
/// `nixos-rebuild switch` does on a real machine.
fn bootstrap(
    nix: &Nix,
    layout: &Layout,
) -> Result<countersign_core::StorePath> {
    let mirror = layout.path("profiles/bootstrap-mirror.git");
    let url = layout.repo().display().to_string();
    let commit = countersign_nix::git::fetch_branch(&url, "main", &mirror)?;
    let source = countersign_nix::fetch_source(nix, &mirror, &commit)?;
    let attribute =
        format!("nixosConfigurations.{HOST}.config.system.build.toplevel");
    let base = countersign_nix::build(
        nix,
        &source,
        &attribute,
        &layout.path("profiles/bootstrap-result"),
        &mut |_| {},
    )?;
    let status = Command::new("nix-env")
        .arg("--profile")
        .arg(layout.profile())
        .arg("--set")
        .arg(base.as_str())
        .status()
        .context("failed to run nix-env")?;
    if !status.success() {
        bail!("nix-env --set of the first system failed ({status})");
    }
    Ok(base)
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn write_configs(
    layout: &Layout,
    port: u16,
    nix_options: &[(String, String)],
) -> Result<()> {
    let token = random_hex();
    let token_path = layout.path("secrets/trigger-token");
    fs::write(&token_path, format!("{token}\n"))?;
    let nix_table = nix_options
        .iter()
        .map(|(name, value)| format!("{name:?} = {value:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let server = format!(
        "host = \"{HOST}\"\n\
         listen = \"127.0.0.1:{port}\"\n\
         state_dir = \"{state}\"\n\
         policy = \"{policy}\"\n\
         activator_socket = \"{socket}\"\n\
         current_system = \"{profile}\"\n\n\
         [repository]\n\
         url = \"{repo}\"\n\
         branch = \"main\"\n\n\
         [trigger]\n\
         token_file = \"{token}\"\n\n\
         [web]\n\
         public_origin = \"http://localhost:{port}\"\n\n\
         [nix]\n\
         options = {{ {nix_table} }}\n",
        state = layout.path("server-state").display(),
        policy = layout.policy().display(),
        socket = layout.path("run/activator.sock").display(),
        profile = layout.profile().display(),
        repo = layout.repo().display(),
        token = token_path.display(),
    );
    fs::write(layout.path("server.toml"), server)?;
    let activator = format!(
        "policy = \"{policy}\"\n\
         state_dir = \"{state}\"\n\
         socket = \"{socket}\"\n\
         profile = \"{profile}\"\n\
         current_system = \"{profile}\"\n\
         verify_evaluation = true\n\
         # Single-user Nix without a daemon has no other user to evaluate\n\
         # as, so proposals are evaluated as root before approval.\n\
         prepare_as_root = true\n\n\
         [nix]\n\
         options = {{ {nix_table} }}\n",
        policy = layout.policy().display(),
        state = layout.path("activator-state").display(),
        socket = layout.path("run/activator.sock").display(),
        profile = layout.profile().display(),
    );
    fs::write(layout.path("activator.toml"), activator)?;
    Ok(())
}

fn random_hex() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Starts `countersign SUBCOMMAND --config <demo>/<config>`, appending
/// its output to the demo's log folder.
fn spawn_own(
    binary: &Path,
    layout: &Layout,
    subcommand: &str,
) -> Result<Child> {
    let (config, log) = match subcommand {
        "activator" => ("activator.toml", "activator.log"),
        _ => ("server.toml", "server.log"),
    };
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.path("logs").join(log))?;
    Command::new(binary)
        .arg(subcommand)
        .arg("--config")
        .arg(layout.path(config))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("failed to start countersign {subcommand}"))
}

fn wait_for(path: &Path, what: &str) -> Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{what} did not appear within 30 s; see the logs folder");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn wait_for_server(url: &str, processes: &mut Processes) -> Result<()> {
    let start = Instant::now();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    loop {
        if agent.get(format!("{url}/api/v1/health")).call().is_ok() {
            return Ok(());
        }
        for (name, child) in &mut processes.0 {
            if let Some(status) = child.try_wait()? {
                bail!("the {name} exited early ({status}); see its log");
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the server did not respond within 30 s; see its log");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_result(
    layout: &Layout,
    statement: &countersign_core::Statement,
    outcome: &str,
) -> Result<()> {
    if outcome != "deployed" {
        bail!(
            "proposal {} was not deployed: {outcome}",
            statement.proposal
        );
    }
    let profile = fs::canonicalize(layout.profile())?;
    if profile != statement.target.as_path() {
        bail!(
            "the demo profile points to {}, not to the approved {}",
            profile.display(),
            statement.target
        );
    }
    let log = fs::read_to_string(layout.switch_log()).unwrap_or_default();
    let expected = format!("switch {}", statement.target);
    let runs = log.lines().filter(|line| *line == expected).count();
    if runs != 1 {
        bail!(
            "switch-to-configuration of the approved system ran {runs} times \
             (expected once); see {}",
            layout.switch_log().display()
        );
    }
    Ok(())
}
