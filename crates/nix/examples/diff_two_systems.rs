//! Does what `countersign diff OLD NEW [--json]` does, without the rest
//! of the command line program: the package and system diff of two
//! built systems, as text or JSON. The benchmark script times it when
//! the whole workspace cannot be built.

use std::io::Write as _;
use std::process::ExitCode;

use countersign_core::StorePath;
use countersign_nix::Nix;
use countersign_nix::diff::{DiffDocument, render_text};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|arg| arg == "--json");
    let paths: Vec<&String> = args.iter().filter(|a| *a != "--json").collect();
    let [old, new] = paths[..] else {
        eprintln!("usage: diff_two_systems OLD NEW [--json]");
        return ExitCode::FAILURE;
    };
    let resolve = |text: &str| -> Result<StorePath, String> {
        let path = std::fs::canonicalize(text)
            .map_err(|error| format!("{text}: {error}"))?;
        StorePath::parse(&path.to_string_lossy())
            .map_err(|error| format!("{text}: {error}"))
    };
    let result = resolve(old).and_then(|old| {
        let new = resolve(new)?;
        DiffDocument::of_systems(&Nix::new(), &old, &new)
            .map_err(|error| error.to_string())
    });
    let document = match result {
        Ok(document) => document,
        Err(message) => {
            eprintln!("diff_two_systems: {message}");
            return ExitCode::FAILURE;
        }
    };
    let output = if json {
        let mut bytes = document.to_json();
        bytes.push(b'\n');
        bytes
    } else {
        render_text(&document).into_bytes()
    };
    let _ = std::io::stdout().lock().write_all(&output);
    ExitCode::SUCCESS
}
