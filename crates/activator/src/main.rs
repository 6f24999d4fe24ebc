//! `countersign-activator --config FILE`: runs the privileged activator
//! on its Unix socket until it is stopped. The hidden subcommand
//! `run-switch` is the detached runner of one switch script, which the
//! activator starts itself.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use countersign_activator::{Config, RunnerArgs};
use tracing_subscriber::EnvFilter;

/// The privileged countersign process: verifies certificates from the
/// server and switches the system.
#[derive(Parser)]
#[command(
    name = "countersign-activator",
    version,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// Path of the activator configuration file (TOML).
    #[arg(long, value_name = "FILE", required = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Internal>,
}

#[derive(Subcommand)]
enum Internal {
    /// Runs one switch script detached from the activator and records
    /// its exit status; the activator starts it.
    #[command(name = "run-switch", hide = true)]
    RunSwitch {
        /// The directory of the run files.
        #[arg(long)]
        directory: PathBuf,
        /// The name of the run.
        #[arg(long)]
        run: String,
        /// The toplevel store path whose switch script runs.
        #[arg(long)]
        toplevel: String,
        /// The action passed to the script.
        #[arg(long)]
        action: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Internal::RunSwitch {
        directory,
        run,
        toplevel,
        action,
    }) = args.command
    {
        let code = countersign_activator::run_runner(&RunnerArgs {
            directory,
            run,
            toplevel,
            action,
        });
        return ExitCode::from(code);
    }
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only on a terminal: under systemd or in a log file
    // they would be stored as escape sequences.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let config = args.config.expect("clap requires --config");
    let result = Config::load(&config)
        .map_err(countersign_activator::Error::from)
        .and_then(countersign_activator::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the activator stopped with an error");
            ExitCode::FAILURE
        }
    }
}
