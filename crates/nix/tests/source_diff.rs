//! Source diffs of awkward repositories: names that are not UTF-8,
//! symbolic links, submodules, large and binary files, renames, and a
//! mirror whose configuration tells git to run programs.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt as _;

use common::{TestEnv, git_in};
use countersign_nix::diff::{FileContent, FileStatus, source_diff};
use countersign_nix::git;

fn fetch(env: &TestEnv) -> String {
    git::fetch_branch(env.repo().to_str().unwrap(), "main", &env.mirror())
        .unwrap()
}

#[test]
fn awkward_files_are_summarised() {
    let env = TestEnv::new();
    let repo = env.repo();
    let old = env.commit(&env.demo(), "Demo");

    let odd_name = OsStr::from_bytes(b"bad\xffname.txt");
    fs::write(repo.join(odd_name), "odd\n").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", repo.join("link")).unwrap();
    let big: String = (0..40_000).map(|i| format!("line {i:08}\n")).collect();
    assert!(big.len() > 512 * 1024);
    fs::write(repo.join("big.txt"), &big).unwrap();
    fs::write(repo.join("blob.bin"), [0u8, 159, 146, 150, 0, 1]).unwrap();
    fs::write(repo.join("keep.txt"), "a\nb\nc\nd\ne\n").unwrap();
    git_in(&repo, &["add", "--all"]);
    git_in(
        &repo,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            "160000,0123456789abcdef0123456789abcdef01234567,vendor/lib",
        ],
    );
    git_in(&repo, &["commit", "--quiet", "-m", "Add awkward files"]);
    git_in(&repo, &["mv", "keep.txt", "kept.txt"]);
    fs::write(repo.join("kept.txt"), "a\nb\nc\nd\nE\n").unwrap();
    fs::remove_file(repo.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", repo.join("link")).unwrap();
    // Not `--all`: the submodule has no folder and would be removed.
    git_in(&repo, &["add", "--", "kept.txt", "link"]);
    git_in(&repo, &["commit", "--quiet", "-m", "Rename and relink"]);
    let new = fetch(&env);

    let diff = source_diff(&env.mirror(), Some(&old), &new).unwrap();
    let file = |path: &str| {
        diff.files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{path} missing from {:#?}", diff.files))
    };
    assert_eq!(file("bad\\xffname.txt").status, FileStatus::Added);
    assert_eq!(
        file("link").content,
        FileContent::Symlink {
            old_target: None,
            new_target: Some("/etc/passwd".to_owned()),
        }
    );
    assert_eq!(
        file("vendor/lib").content,
        FileContent::Submodule {
            old_commit: None,
            new_commit: Some(
                "0123456789abcdef0123456789abcdef01234567".to_owned()
            ),
        }
    );
    let large = file("big.txt");
    assert_eq!(large.content, FileContent::TooLarge);
    assert_eq!(large.new_size, Some(big.len() as u64));
    assert_eq!(file("blob.bin").content, FileContent::Binary);
    let kept = file("kept.txt");
    assert_eq!(kept.status, FileStatus::Added, "new since the old commit");

    // Between the two newer commits the rename and the new link target
    // show as such.
    let middle = git_in(&repo, &["rev-parse", "HEAD~1"]);
    let diff = source_diff(&env.mirror(), Some(&middle), &new).unwrap();
    let renamed = diff.files.iter().find(|f| f.path == "kept.txt").unwrap();
    assert_eq!(renamed.status, FileStatus::Renamed);
    assert_eq!(renamed.old_path.as_deref(), Some("keep.txt"));
    assert_eq!(renamed.lines_added, Some(1));
    let link = diff.files.iter().find(|f| f.path == "link").unwrap();
    assert_eq!(
        link.content,
        FileContent::Symlink {
            old_target: Some("/etc/shadow".to_owned()),
            new_target: Some("/etc/passwd".to_owned()),
        }
    );
}

#[test]
fn mirror_configuration_runs_nothing() {
    let env = TestEnv::new();
    let repo = env.repo();
    let old = env.commit(&env.demo(), "Demo");
    fs::write(repo.join(".gitattributes"), "* diff=evil filter=evil\n")
        .unwrap();
    fs::write(repo.join("notes.txt"), "plain text\n").unwrap();
    git_in(&repo, &["add", "--all"]);
    git_in(&repo, &["commit", "--quiet", "-m", "Ask for a diff driver"]);
    let new = fetch(&env);

    // Configuration that would run a program if git honoured it while
    // reading: an external diff, a text conversion, a filter, hooks.
    let marker = env.path("ran");
    let program = format!("sh -c 'touch {}'", marker.display());
    let mirror = env.mirror();
    for (key, value) in [
        ("diff.external", program.as_str()),
        ("diff.evil.textconv", program.as_str()),
        ("diff.evil.command", program.as_str()),
        ("filter.evil.smudge", program.as_str()),
        ("filter.evil.clean", program.as_str()),
        ("core.fsmonitor", program.as_str()),
    ] {
        git_in(&mirror, &["config", key, value]);
    }
    fs::create_dir_all(mirror.join("info")).unwrap();
    fs::write(mirror.join("info/attributes"), "* diff=evil filter=evil\n")
        .unwrap();

    let diff = source_diff(&mirror, Some(&old), &new).unwrap();
    assert!(!marker.exists(), "git ran a program from the configuration");
    let notes = diff.files.iter().find(|f| f.path == "notes.txt").unwrap();
    match &notes.content {
        FileContent::Text { hunks } => {
            assert_eq!(hunks[0].lines, ["+plain text"]);
        }
        other => panic!("notes.txt has {other:?}"),
    }
}
