//! The `countersign` command: the server, the approver commands, the
//! audit check and the demo, over the workspace's crates.
//!
//! `countersign activator` execs the separate `countersign-activator`
//! binary, so that the privileged process never contains the HTTP code
//! linked into this one.

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use countersign::client::Client;
use countersign::commands::{self, vote::VoteOptions};
use countersign::terminal;

#[derive(Parser)]
#[command(name = "countersign", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The server address and the key that an approver command signs in with.
#[derive(clap::Args)]
struct Connection {
    /// Address of the countersign server, for example http://127.0.0.1:8470.
    #[arg(long, env = "COUNTERSIGN_SERVER")]
    server: String,
    /// SSH key to sign in with: a private key file, or a public key whose
    /// private half is in ssh-agent.
    #[arg(long, env = "COUNTERSIGN_KEY")]
    key: Option<PathBuf>,
}

impl Connection {
    fn login(&self) -> Result<Client> {
        let key = self
            .key
            .as_deref()
            .context("no key given; pass --key PATH or set COUNTERSIGN_KEY")?;
        Client::login(&self.server, key)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: fetch, build, diff, collect approvals.
    Serve {
        /// Server configuration file (TOML, see examples/server.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the privileged activator (execs countersign-activator).
    Activator {
        /// Activator configuration file (TOML, see
        /// examples/activator.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Propose the head of the configured branch, --rev, or a rollback
    /// to an earlier generation; prints the new proposal number.
    Propose {
        #[command(flatten)]
        connection: Connection,
        /// Commit or ref to propose instead of the branch head; it must be
        /// on the configured branch.
        #[arg(long)]
        rev: Option<String>,
        /// Propose going back to this generation of the server's system
        /// profile (as `nix-env --list-generations` numbers them); it is
        /// approved like any proposal, and nothing is built.
        #[arg(long, value_name = "GENERATION", conflicts_with = "rev")]
        rollback: Option<u64>,
        /// Authenticate with the trigger token in this file instead of a
        /// key; it may only create proposals.
        #[arg(long, conflicts_with = "key")]
        token_file: Option<PathBuf>,
        /// Wait until the build ends and print the resulting state.
        /// Reading the proposal needs an approver's key, which the
        /// trigger token is not.
        #[arg(long, conflicts_with = "token_file")]
        wait: bool,
    },
    /// Show the running system and the recent proposals.
    Status {
        #[command(flatten)]
        connection: Connection,
        /// Print the server's status and proposal list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a proposal: its statement, the checks and the whole diff.
    Show {
        /// Proposal number, as `countersign status` lists it.
        number: u64,
        #[command(flatten)]
        connection: Connection,
        /// Print the proposal, its statement and its diff as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Review and sign a proposal's statement as an approval.
    Approve {
        /// Proposal number, as `countersign status` lists it.
        number: u64,
        #[command(flatten)]
        connection: Connection,
        /// Sign without asking for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Review and sign a proposal's statement as a rejection.
    Reject {
        /// Proposal number, as `countersign status` lists it.
        number: u64,
        #[command(flatten)]
        connection: Connection,
        /// Why, shown to the other approvers (not signed).
        #[arg(long)]
        reason: Option<String>,
        /// Sign without asking for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Check the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Show the package and system diff of two built systems.
    Diff {
        /// The system before the change: a store path or a link to one,
        /// such as /run/current-system.
        old: PathBuf,
        /// The system after the change: a store path or a link to one,
        /// such as ./result.
        new: PathBuf,
        /// Print the diff document as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole flow on this machine in a folder of its own.
    Demo(commands::demo::DemoOptions),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain of the server's audit log against the head
    /// the activator recorded, and the activator's own history.
    Verify {
        /// The server's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The activator's configuration file, to verify its history too
        /// (needs read access to its state folder).
        #[arg(long)]
        activator_config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    init_tracing();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("countersign: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("COUNTERSIGN_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only help a terminal; in a log file they are noise.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = countersign_server::ServerConfig::load(&config)?;
            let runtime = tokio::runtime::Runtime::new()
                .context("failed to start the async runtime")?;
            Ok(runtime.block_on(countersign_server::serve(config))?)
        }
        Command::Activator { config } => exec_activator(config),
        Command::Propose {
            connection,
            rev,
            rollback,
            token_file,
            wait,
        } => {
            let mut client = match token_file {
                Some(path) => {
                    Client::with_token_file(&connection.server, &path)?
                }
                None => connection.login()?,
            };
            let number = commands::proposals::propose(&client, rev, rollback)?;
            if wait {
                let detail = commands::proposals::wait_until_built(
                    &mut client,
                    number,
                )?;
                eprintln!(
                    "proposal {number} is {}",
                    terminal::sanitize(
                        detail["state"].as_str().unwrap_or("?")
                    )
                );
            }
            Ok(())
        }
        Command::Status { connection, json } => {
            commands::proposals::status(&connection.login()?, json)
        }
        Command::Show {
            number,
            connection,
            json,
        } => commands::vote::show(&connection.login()?, number, json),
        Command::Approve {
            number,
            connection,
            yes,
        } => {
            let client = connection.login()?;
            let key = connection.key.as_deref().expect("login needs a key");
            commands::vote::vote(
                &client,
                VoteOptions {
                    number,
                    key,
                    approve: true,
                    reason: None,
                    yes,
                },
            )
        }
        Command::Reject {
            number,
            connection,
            reason,
            yes,
        } => {
            let client = connection.login()?;
            let key = connection.key.as_deref().expect("login needs a key");
            commands::vote::vote(
                &client,
                VoteOptions {
                    number,
                    key,
                    approve: false,
                    reason,
                    yes,
                },
            )
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    config,
                    activator_config,
                },
        } => commands::audit::verify(&config, activator_config.as_deref()),
        Command::Diff { old, new, json } => {
            commands::diff::run(&old, &new, json)
        }
        Command::Demo(options) => commands::demo::run(options),
    }
}

/// Replaces this process with `countersign-activator` from the same
/// folder as this binary.
fn exec_activator(config: PathBuf) -> Result<()> {
    let own = std::env::current_exe()
        .context("failed to find the path of the countersign binary")?;
    let activator = own.with_file_name("countersign-activator");
    let error = std::process::Command::new(&activator)
        .arg("--config")
        .arg(config)
        .exec();
    Err(error).with_context(|| {
        format!(
            "failed to start {}; it is installed next to countersign",
            activator.display()
        )
    })
}
