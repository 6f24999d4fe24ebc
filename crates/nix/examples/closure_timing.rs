//! Times the two ways of reading two closures: `nix path-info --json
//! --recursive` (one call per system) and the walk of the Nix database
//! (both systems at once); then the package diff and the system diff.
//!
//! `closure_timing OLD NEW [ROUNDS]` prints the median of each, in
//! milliseconds.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use countersign_core::StorePath;
use countersign_nix::closure::ClosurePair;
use countersign_nix::diff::{diff_pair, system_diff};
use countersign_nix::store_db::{DEFAULT_DB, read_pair};
use countersign_nix::{Nix, path_info};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(old), Some(new)) = (args.first(), args.get(1)) else {
        eprintln!("usage: closure_timing OLD NEW [ROUNDS]");
        return ExitCode::FAILURE;
    };
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(9);
    let path = |text: &str| {
        let resolved = std::fs::canonicalize(text).expect("the system exists");
        StorePath::parse(resolved.to_str().unwrap()).expect("a store path")
    };
    let (old, new) = (path(old), path(new));
    let nix = Nix::new();

    let cli = median(rounds, || {
        let a = path_info(&nix, &[&old], true).unwrap();
        let b = path_info(&nix, &[&new], true).unwrap();
        assert!(!a.is_empty() && !b.is_empty());
    });
    let db = median(rounds, || {
        let pair = read_pair(Path::new(DEFAULT_DB), Some(&old), &new)
            .unwrap()
            .expect("both systems are in the database");
        assert!(!pair.is_empty());
    });
    let pair = read_pair(Path::new(DEFAULT_DB), Some(&old), &new)
        .unwrap()
        .unwrap();
    let from_cli = ClosurePair::from_path_infos(
        &path_info(&nix, &[&old], true).unwrap(),
        &path_info(&nix, &[&new], true).unwrap(),
    );
    let from_db = diff_pair(&pair);
    let same = from_db == diff_pair(&from_cli);
    let grouping = median(rounds, || {
        let diff = diff_pair(&pair);
        assert!(diff.new_path_count > 0);
    });
    let system = median(rounds, || {
        system_diff(&old, &new).unwrap();
    });
    println!(
        "paths: {} -> {}\n\
         nix path-info --json --recursive, both systems: {cli:.1} ms\n\
         Nix database, both systems: {db:.1} ms\n\
         same package diff from both: {same}\n\
         package diff of the read closures: {grouping:.1} ms\n\
         system diff: {system:.1} ms",
        from_db.old_path_count, from_db.new_path_count
    );
    ExitCode::SUCCESS
}

fn median(rounds: usize, mut run: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
