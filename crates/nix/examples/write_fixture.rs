//! Writes test-system flakes to a folder, for the benchmark script and
//! for looking at a fixture by hand.
//!
//! `write_fixture demo DIR` writes the demo system;
//! `write_fixture large DIR PACKAGES PERCENT` writes `DIR/old` and
//! `DIR/new`, the two versions of a large system.

use std::path::PathBuf;
use std::process::ExitCode;

use countersign_nix::fixture::{SystemSpec, large_pair, write_flake};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("write_fixture: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let usage = "usage: write_fixture demo DIR | write_fixture large DIR \
                 PACKAGES PERCENT";
    let dir = PathBuf::from(args.get(1).ok_or(usage)?);
    let log = dir.join("switch.log");
    let log = std::path::absolute(&log).map_err(|e| e.to_string())?;
    match args.first().map(String::as_str) {
        Some("demo") => {
            let spec = SystemSpec::demo("demo", &log);
            write_flake(&dir, &spec).map_err(|e| e.to_string())?;
        }
        Some("large") => {
            let number = |index: usize| -> Result<u64, String> {
                args.get(index)
                    .ok_or(usage)?
                    .parse()
                    .map_err(|_| format!("{usage}: not a number"))
            };
            let pair = large_pair(
                "large",
                &log,
                number(2)? as usize,
                number(3)? as u32,
                1,
            );
            write_flake(&dir.join("old"), &pair.old)
                .map_err(|e| e.to_string())?;
            write_flake(&dir.join("new"), &pair.new)
                .map_err(|e| e.to_string())?;
            println!(
                "{} packages, {} with a new version",
                pair.old.packages.len(),
                pair.changed.len()
            );
        }
        _ => return Err(usage.to_owned()),
    }
    Ok(())
}
