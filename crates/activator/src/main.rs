//! `countersign-activator --config FILE`: runs the privileged activator
//! on its Unix socket until it is stopped.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use countersign_activator::Config;
use tracing_subscriber::EnvFilter;

/// The privileged countersign process: verifies certificates from the
/// server and switches the system.
#[derive(Parser)]
#[command(name = "countersign-activator", version)]
struct Args {
    /// Path of the activator configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = Config::load(&args.config)
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
