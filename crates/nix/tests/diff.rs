//! The diff document between real test systems and real commits.

mod common;

use std::fs;

use common::{TestEnv, git_in};
use countersign_nix::diff::{
    AlertKind, ChangeStatus, DiffDocument, DiffInputs, FileContent,
    FileStatus, Node, Severity, package_diff, render_text, source_diff,
    system_diff,
};
use countersign_nix::fixture::Package;
use countersign_nix::store_read::{self, Resolved};

#[test]
fn package_diff_of_two_systems() {
    let env = TestEnv::new();
    let old_spec = env.demo();
    let mut new_spec = old_spec.clone();
    new_spec.set_package(Package::with_binary("hello", "2.12.2"));
    new_spec.set_package(Package::with_binary("ripgrep", "14.1.1"));
    new_spec.remove_package("coreutils");
    let (_, old) = env.build(&old_spec, "old");
    let (_, new) = env.build(&new_spec, "new");

    let diff = package_diff(&env.nix, &old, &new).unwrap();
    let added: Vec<_> = diff.added.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(added, ["ripgrep"]);
    assert_eq!(diff.added[0].versions, ["14.1.1"]);
    let removed: Vec<_> =
        diff.removed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(removed, ["coreutils"]);
    let hello = diff
        .version_changes
        .iter()
        .find(|change| change.name == "hello")
        .expect("hello changed version");
    assert_eq!(hello.old_versions, ["2.12.1"]);
    assert_eq!(hello.new_versions, ["2.12.2"]);
    assert!(diff.old_closure_size > 0);
    assert_eq!(
        diff.closure_size_delta,
        diff.new_closure_size as i64 - diff.old_closure_size as i64
    );
    // system-path links different packages, so it is regenerated.
    assert!(diff.regenerated.iter().any(|name| name == "system-path"));
}

#[test]
fn system_diff_finds_units_and_alerts() {
    let env = TestEnv::new();
    let old_spec = env.demo();
    let mut new_spec = old_spec.clone();
    new_spec.set_unit(
        "backup.service",
        "[Service]\nExecStart=/run/current-system/sw/bin/backup\n",
    );
    new_spec.set_unit(
        "hello.service",
        "[Service]\nExecStart=@pkg:hello@/bin/hello --loud\n",
    );
    new_spec.set_etc(
        "ssh/sshd_config",
        "PermitRootLogin yes\nPasswordAuthentication yes\n",
    );
    new_spec.policy_toml = Some("threshold = 1\n".to_owned());
    new_spec.kernel_version = "6.6.64".to_owned();
    let (_, old) = env.build(&old_spec, "old");
    let (_, new) = env.build(&new_spec, "new");

    let diff = system_diff(&old, &new).unwrap();
    let unit = |name: &str| diff.units.iter().find(|u| u.path == name);
    assert_eq!(unit("backup.service").unwrap().status, ChangeStatus::Added);
    let hello = unit("hello.service").expect("hello.service changed");
    assert_eq!(hello.status, ChangeStatus::Changed);
    let hunks = hello.hunks.as_ref().expect("a text diff");
    assert!(
        hunks
            .iter()
            .flat_map(|h| &h.lines)
            .any(|l| l.ends_with("--loud")),
        "{hunks:#?}"
    );
    assert!(
        unit("sshd.service").is_none(),
        "sshd.service did not change"
    );
    let wants = unit("multi-user.target.wants/backup.service");
    assert!(wants.is_none(), "backup.service has no WantedBy");
    let (_, enabled) = env.build(
        &{
            let mut spec = new_spec.clone();
            spec.set_unit(
                "backup.service",
                "[Service]\nExecStart=/bin/true\n[Install]\n\
                 WantedBy=multi-user.target\n",
            );
            spec
        },
        "enabled",
    );
    let enabling = system_diff(&new, &enabled).unwrap();
    let link = enabling
        .units
        .iter()
        .find(|u| u.path == "multi-user.target.wants/backup.service")
        .expect("the unit is enabled");
    assert_eq!(
        link.new,
        Some(Node::RelativeLink {
            target: "../backup.service".to_owned()
        })
    );

    let sshd = diff
        .etc
        .iter()
        .find(|entry| entry.path == "ssh/sshd_config")
        .expect("sshd_config changed");
    assert_eq!(sshd.lines_added, Some(1));
    assert_eq!(sshd.lines_removed, Some(5));
    assert!(diff.toplevel.iter().any(|entry| entry.path == "kernel"));

    let document = DiffDocument::assemble(
        Some(source_stub(&env)),
        package_diff(&env.nix, &old, &new).unwrap(),
        diff,
    );
    let alerts = &document.alerts;
    assert_eq!(alerts[0].kind, AlertKind::PolicyChanged);
    assert_eq!(alerts[0].severity, Severity::Critical);
    assert!(
        alerts
            .iter()
            .any(|a| a.kind == AlertKind::SshdSettingChanged
                && a.subject == "/etc/ssh/sshd_config"
                && a.severity == Severity::Critical)
    );
    assert!(alerts.iter().any(|a| a.kind == AlertKind::UnitAdded));
    assert!(alerts.iter().any(|a| a.kind == AlertKind::UnitChanged));
    assert!(alerts.iter().any(|a| a.kind == AlertKind::KernelChanged));
    let severities: Vec<_> = alerts.iter().map(|a| a.severity).collect();
    let mut sorted = severities.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(severities, sorted);
}

#[test]
fn outside_links_reported_not_followed() {
    let env = TestEnv::new();
    let secret = env.path("secret.txt");
    fs::write(&secret, "TOP-SECRET-CONTENT\n").unwrap();
    let old_spec = env.demo();
    let mut new_spec = old_spec.clone();
    new_spec.etc_links = vec![
        ("passwd".to_owned(), "/etc/passwd".to_owned()),
        ("secret".to_owned(), secret.display().to_string()),
        ("escape".to_owned(), "../../../../../etc/passwd".to_owned()),
        ("loop".to_owned(), "loop".to_owned()),
    ];
    let (_, old) = env.build(&old_spec, "old");
    let (_, new) = env.build(&new_spec, "new");

    let diff = system_diff(&old, &new).unwrap();
    let node = |path: &str| {
        diff.etc
            .iter()
            .find(|entry| entry.path == path)
            .and_then(|entry| entry.new.clone())
            .unwrap_or_else(|| panic!("{path} is not in the diff"))
    };
    assert_eq!(
        node("passwd"),
        Node::OutsideLink {
            target: "/etc/passwd".to_owned()
        }
    );
    assert_eq!(
        node("secret"),
        Node::OutsideLink {
            target: secret.display().to_string()
        }
    );
    assert_eq!(
        node("escape"),
        Node::OutsideLink {
            target: "../../../../../etc/passwd".to_owned()
        }
    );
    assert_eq!(node("loop"), Node::TooManyHops);
    // The sidecar that marks a direct symlink is an ordinary file.
    assert!(matches!(node("passwd.mode"), Node::File { .. }));

    let json = String::from_utf8(
        DiffDocument::assemble(
            Some(source_stub(&env)),
            package_diff(&env.nix, &old, &new).unwrap(),
            diff,
        )
        .to_json(),
    )
    .unwrap();
    assert!(!json.contains("TOP-SECRET-CONTENT"));
    assert!(!json.contains("root:x:0:0"));
}

#[test]
fn resolve_stays_in_store() {
    let env = TestEnv::new();
    let mut spec = env.demo();
    spec.etc_links = vec![("passwd".to_owned(), "/etc/passwd".to_owned())];
    let (_, toplevel) = env.build(&spec, "resolve");

    let sshd = toplevel.as_path().join("etc/ssh/sshd_config");
    match store_read::resolve(&sshd).unwrap() {
        Resolved::File { path, .. } => {
            assert!(path.starts_with("/nix/store/"));
            assert!(path.to_string_lossy().ends_with("-sshd.conf-final"));
            assert!(!fs::symlink_metadata(&path).unwrap().is_symlink());
        }
        other => panic!("sshd_config resolved to {other:?}"),
    }
    let passwd = toplevel.as_path().join("etc/passwd");
    assert_eq!(
        store_read::resolve(&passwd).unwrap(),
        Resolved::OutsideLink {
            target: "/etc/passwd".to_owned()
        }
    );
    // Walking through the outside link does not reach /etc either.
    assert!(matches!(
        store_read::resolve(&passwd.join("x")).unwrap(),
        Resolved::OutsideLink { .. }
    ));
}

#[test]
fn source_diff_summarises_binary_files() {
    let env = TestEnv::new();
    let repo = env.repo();
    let old = env.commit(&env.demo(), "Demo");
    fs::write(repo.join("notes.txt"), "first\nsecond\n").unwrap();
    fs::write(repo.join("blob.bin"), [0u8, 1, 2, 3, 0, 255]).unwrap();
    fs::write(repo.join("big.txt"), "x\n".repeat(200_000)).unwrap();
    git_in(&repo, &["add", "--", "notes.txt", "blob.bin", "big.txt"]);
    git_in(&repo, &["commit", "--quiet", "-m", "Add files"]);
    fs::write(repo.join("notes.txt"), "first\nchanged\n").unwrap();
    git_in(&repo, &["mv", "blob.bin", "moved.bin"]);
    git_in(&repo, &["commit", "--quiet", "-am", "Change files"]);
    let new = countersign_nix::git::fetch_branch(
        repo.to_str().unwrap(),
        "main",
        &env.mirror(),
    )
    .unwrap();

    let diff = source_diff(&env.mirror(), Some(&old), &new).unwrap();
    assert_eq!(diff.fast_forward, Some(true));
    let subjects: Vec<_> =
        diff.commits.iter().map(|c| c.subject.as_str()).collect();
    assert_eq!(subjects, ["Change files", "Add files"]);
    let file =
        |path: &str| diff.files.iter().find(|f| f.path == path).unwrap();

    let binary = file("moved.bin");
    assert_eq!(binary.status, FileStatus::Added);
    assert_eq!(binary.content, FileContent::Binary);
    assert_eq!(binary.new_size, Some(6));

    let big = file("big.txt");
    assert_eq!(big.content, FileContent::TooLarge);
    assert_eq!(big.new_size, Some(400_000));

    let notes = file("notes.txt");
    assert_eq!(notes.status, FileStatus::Added);
    assert_eq!(notes.lines_added, Some(2));
    match &notes.content {
        FileContent::Text { hunks } => {
            assert_eq!(hunks[0].lines, ["+first", "+changed"]);
        }
        other => panic!("notes.txt has {other:?}"),
    }
}

#[test]
fn source_diff_without_base_lists_files() {
    let env = TestEnv::new();
    let commit = env.commit(&env.demo(), "Demo");
    let diff = source_diff(&env.mirror(), None, &commit).unwrap();
    assert!(diff.old_commit.is_none());
    assert_eq!(diff.files.len(), 1);
    assert_eq!(diff.files[0].path, "flake.nix");
    assert!(matches!(diff.files[0].content, FileContent::Omitted { .. }));
}

#[test]
fn source_diff_reports_renames_and_rewrites() {
    let env = TestEnv::new();
    let repo = env.repo();
    let old = env.commit(&env.demo(), "Demo");
    fs::write(repo.join("a.txt"), "same text\nover lines\n").unwrap();
    git_in(&repo, &["add", "--", "a.txt"]);
    git_in(&repo, &["commit", "--quiet", "-m", "Add a"]);
    let with_a = env.commit(&env.demo(), "Unchanged system");
    git_in(&repo, &["mv", "a.txt", "b.txt"]);
    git_in(&repo, &["commit", "--quiet", "-m", "Rename"]);
    let renamed = env.commit(&env.demo(), "Unchanged again");

    let diff = source_diff(&env.mirror(), Some(&with_a), &renamed).unwrap();
    let file = &diff.files[0];
    assert_eq!(file.status, FileStatus::Renamed);
    assert_eq!(file.old_path.as_deref(), Some("a.txt"));
    assert_eq!(file.path, "b.txt");

    // Comparing against a commit that is not an ancestor is flagged.
    git_in(&repo, &["reset", "--quiet", "--hard", &old]);
    let rewritten = env.commit(&env.demo().demo_update(), "Rewritten");
    let diff = source_diff(&env.mirror(), Some(&renamed), &rewritten).unwrap();
    assert_eq!(diff.fast_forward, Some(false));
}

#[test]
fn render_text_escapes_control_characters() {
    let env = TestEnv::new();
    let repo = env.repo();
    let old = env.commit(&env.demo(), "Demo");
    let evil_name = "evil\x1b[2Jname.txt";
    fs::write(repo.join(evil_name), "line with \x1b]0;title\x07 inside\n")
        .unwrap();
    git_in(&repo, &["add", "--", evil_name]);
    git_in(&repo, &["commit", "--quiet", "-m", "Subject \x1b[31mred"]);
    let new = countersign_nix::git::fetch_branch(
        repo.to_str().unwrap(),
        "main",
        &env.mirror(),
    )
    .unwrap();
    let (_, system) = env.build(&env.demo(), "same");

    let document = DiffDocument::compute(
        &env.nix,
        &DiffInputs {
            mirror: &env.mirror(),
            old_commit: Some(&old),
            new_commit: &new,
            old_system: Some(&system),
            new_system: &system,
        },
    )
    .unwrap();
    let source = document.source.as_ref().expect("a source part");
    assert!(source.files.iter().any(|f| f.path == evil_name));
    let text = render_text(&document);
    assert!(!text.contains('\x1b'), "{text}");
    assert!(!text.contains('\x07'), "{text}");
    assert!(text.contains("evil\\x1b[2Jname.txt"), "{text}");
    assert!(text.contains("Subject \\x1b[31mred"), "{text}");
}

#[test]
fn document_json_is_deterministic() {
    let env = TestEnv::new();
    let old_spec = env.demo();
    let new_spec = old_spec.demo_update();
    let (old_commit, old) = env.build(&old_spec, "old");
    let (new_commit, new) = env.build(&new_spec, "new");
    let inputs = DiffInputs {
        mirror: &env.mirror(),
        old_commit: Some(&old_commit),
        new_commit: &new_commit,
        old_system: Some(&old),
        new_system: &new,
    };
    let first = DiffDocument::compute(&env.nix, &inputs).unwrap();
    let second = DiffDocument::compute(&env.nix, &inputs).unwrap();
    assert_eq!(first.to_json(), second.to_json());
    assert_eq!(first.digest(), second.digest());

    let parsed = DiffDocument::from_json(&first.to_json()).unwrap();
    assert_eq!(parsed, first);
    assert_eq!(first.max_severity(), Some(Severity::High));

    let text = render_text(&first);
    assert!(text.contains("PasswordAuthentication no"), "{text}");
    assert!(text.contains("hello 2.12.1 -> 2.12.2"), "{text}");
}

#[test]
fn first_deployment_compares_with_nothing() {
    let env = TestEnv::new();
    let (commit, system) = env.build(&env.demo(), "first");
    let document = DiffDocument::compute(
        &env.nix,
        &DiffInputs {
            mirror: &env.mirror(),
            old_commit: None,
            new_commit: &commit,
            old_system: None,
            new_system: &system,
        },
    )
    .unwrap();
    assert!(document.packages.added.iter().any(|p| p.name == "hello"));
    assert!(
        document
            .system
            .units
            .iter()
            .all(|unit| unit.status == ChangeStatus::Added)
    );
    assert!(
        document
            .alerts
            .iter()
            .any(|a| a.kind == AlertKind::SshKeyAdded)
    );
}

/// Computes a source part for documents whose source is not under test.
fn source_stub(env: &TestEnv) -> countersign_nix::diff::SourceDiff {
    let commit =
        countersign_nix::git::resolve_rev(&env.mirror(), "main").unwrap();
    source_diff(&env.mirror(), None, &commit).unwrap()
}

#[test]
fn change_inside_named_script_is_shown() {
    let env = TestEnv::new();
    let script = |body: &str| Package {
        name: "unit-script-backup-start".to_owned(),
        version: String::new(),
        files: vec![(
            "bin/backup-start".to_owned(),
            format!("#!/bin/sh\nset -e\n{body}\n"),
        )],
    };
    let mut old_spec = env.demo();
    old_spec.set_package(script("echo backing up"));
    old_spec.set_unit(
        "backup.service",
        "[Service]\nExecStart=@pkg:unit-script-backup-start@/bin/backup-start\n",
    );
    let mut new_spec = old_spec.clone();
    new_spec.set_package(script(
        "echo backing up\necho 'ssh-ed25519 AAAA' >> /root/.ssh/authorized_keys",
    ));
    let (_, old) = env.build(&old_spec, "old");
    let (_, new) = env.build(&new_spec, "new");

    let diff = system_diff(&old, &new).unwrap();
    let unit = diff
        .units
        .iter()
        .find(|unit| unit.path == "backup.service")
        .expect("backup.service changed");
    assert!(!unit.only_store_paths_changed);
    let script_change = unit
        .referenced
        .iter()
        .find(|r| r.path == "unit-script-backup-start/bin/backup-start")
        .expect("the script's change is listed");
    let hunks = script_change.hunks.as_ref().expect("a text diff");
    assert!(
        hunks
            .iter()
            .flat_map(|hunk| &hunk.lines)
            .any(|line| line.contains("authorized_keys")),
        "{hunks:#?}"
    );

    let document = DiffDocument::assemble(
        Some(source_stub(&env)),
        package_diff(&env.nix, &old, &new).unwrap(),
        diff,
    );
    let alert = document
        .alerts
        .iter()
        .find(|a| a.subject == "/etc/systemd/system/backup.service")
        .expect("an alert for the unit");
    assert_eq!(alert.severity, Severity::Medium);
    assert!(
        alert.detail.contains("unit-script-backup-start"),
        "{alert:?}"
    );
    let text = render_text(&document);
    assert!(text.contains("+echo 'ssh-ed25519 AAAA'"), "{text}");
}

#[test]
fn rebuilt_dependency_alone_is_a_package_note() {
    let env = TestEnv::new();
    let old_spec = env.demo();
    let mut new_spec = old_spec.clone();
    // A new sshd build with the same version changes only the store
    // hash that sshd.service names.
    let mut openssh = new_spec
        .packages
        .iter()
        .find(|p| p.name == "openssh")
        .unwrap()
        .clone();
    openssh.files[1].1.push_str("# patched\n");
    new_spec.set_package(openssh);
    let (_, old) = env.build(&old_spec, "old");
    let (_, new) = env.build(&new_spec, "new");

    let diff = system_diff(&old, &new).unwrap();
    let unit = diff
        .units
        .iter()
        .find(|unit| unit.path == "sshd.service")
        .expect("sshd.service changed");
    assert!(unit.only_store_paths_changed);
    assert!(unit.referenced.is_empty());
    let packages = package_diff(&env.nix, &old, &new).unwrap();
    let openssh = packages
        .rebuilt
        .iter()
        .find(|r| r.name == "openssh")
        .expect("openssh is rebuilt");
    assert!(openssh.unexplained, "no runtime dependency changed");
    let document =
        DiffDocument::assemble(Some(source_stub(&env)), packages, diff);
    assert!(
        document
            .alerts
            .iter()
            .all(|a| a.subject != "/etc/systemd/system/sshd.service"),
        "{:#?}",
        document.alerts
    );
    let note = document
        .alerts
        .iter()
        .find(|a| a.kind == AlertKind::PackageRebuilt)
        .expect("the rebuild is noted");
    assert_eq!(note.severity, Severity::Low);
    assert_eq!(note.subject, "package openssh");
}

#[test]
fn of_systems_has_no_source() {
    let env = TestEnv::new();
    let (_, old) = env.build(&env.demo(), "old");
    let (_, new) = env.build(&env.demo().demo_update(), "new");
    let document = DiffDocument::of_systems(&env.nix, &old, &new).unwrap();
    assert!(document.source.is_none());
    assert!(document.packages.added.iter().any(|p| p.name == "jq"));
    let text = render_text(&document);
    assert!(!text.contains("== Source"), "{text}");
    assert!(text.contains("== System"), "{text}");
}

#[test]
fn database_and_path_info_agree() {
    let env = TestEnv::new();
    let (_, old) = env.build(&env.demo(), "old");
    let (_, new) = env.build(&env.demo().demo_update(), "new");

    let from_db = countersign_nix::store_db::read_pair(
        std::path::Path::new(countersign_nix::store_db::DEFAULT_DB),
        Some(&old),
        &new,
    )
    .unwrap()
    .expect("both systems are in the database");
    let from_cli = countersign_nix::closure::ClosurePair::from_path_infos(
        &countersign_nix::path_info(&env.nix, &[&old], true).unwrap(),
        &countersign_nix::path_info(&env.nix, &[&new], true).unwrap(),
    );
    let db_diff = countersign_nix::diff::diff_pair(&from_db);
    assert_eq!(db_diff, countersign_nix::diff::diff_pair(&from_cli));
    assert!(db_diff.version_changes.iter().any(|c| c.name == "hello"));

    // A runner with its own store setting never reads the database and
    // gets the same answer from nix path-info.
    let nix = env.nix.clone().with_option("store", "local").unwrap();
    assert!(!nix.uses_default_store());
    assert!(env.nix.uses_default_store());
    assert_eq!(package_diff(&nix, &old, &new).unwrap(), db_diff);
}
