//! Fetching, building and evaluating test systems with real Nix.

mod common;

use std::fs;
use std::process::Command;

use common::TestEnv;
use countersign_nix::{
    Error, FetchedSource, build, evaluate_out_path, is_valid_path, nar_hash,
};

#[test]
fn fetch_build_and_evaluate_agree() {
    let env = TestEnv::new();
    let spec = env.demo();
    let commit = env.commit(&spec, "Demo system");
    let source = env.fetch(&commit);
    assert!(source.store_path.name().ends_with("source"));
    assert_eq!(
        nar_hash(&env.nix, &source.store_path).unwrap(),
        source.nar_hash
    );

    let gc_root = env.path("result");
    let mut log = Vec::new();
    let toplevel = build(
        &env.nix,
        &source,
        &spec.attribute(),
        &gc_root,
        &mut |line| log.push(line.to_owned()),
    )
    .unwrap();
    assert!(
        toplevel.name().starts_with("nixos-system-demo-"),
        "{toplevel}"
    );
    assert_eq!(fs::read_link(&gc_root).unwrap(), toplevel.as_path());
    assert!(is_valid_path(&env.nix, &toplevel).unwrap());

    let evaluated =
        evaluate_out_path(&env.nix, &source, &spec.attribute()).unwrap();
    assert_eq!(evaluated, toplevel);
    assert!(log.iter().all(|line| !line.contains('\n')), "{log:#?}");
}

#[test]
fn toplevel_has_nixos_layout() {
    let env = TestEnv::new();
    let (_, toplevel) = env.build(&env.demo(), "layout");
    let root = toplevel.as_path();
    for entry in [
        "activate",
        "bin/switch-to-configuration",
        "init",
        "kernel",
        "kernel-modules",
        "initrd",
        "kernel-params",
        "nixos-version",
        "system",
        "init-interface-version",
        "sw/bin/hello",
        "etc/ssh/sshd_config",
        "etc/sudoers.mode",
        "etc/systemd/system/sshd.service",
        "etc/systemd/system/multi-user.target.wants/sshd.service",
    ] {
        assert!(root.join(entry).exists(), "{entry} is missing");
    }
    assert!(root.join("specialisation").is_dir());
    assert_eq!(
        fs::read_to_string(root.join("kernel-params")).unwrap(),
        "console=ttyS0 loglevel=4"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/sudoers.mode")).unwrap(),
        "0440"
    );
    let unit_link =
        fs::read_link(root.join("etc/systemd/system/sshd.service")).unwrap();
    assert!(
        unit_link.to_string_lossy().contains("-unit-sshd.service/"),
        "{}",
        unit_link.display()
    );
    let unit =
        fs::read_to_string(root.join("etc/systemd/system/sshd.service"))
            .unwrap();
    assert!(unit.contains("-openssh-9.9p1/bin/sshd -D"), "{unit}");
}

#[test]
fn build_streams_log_lines() {
    let env = TestEnv::new();
    let mut spec = env.demo();
    // A new label makes a toplevel that was never built before, so
    // there is a build to log.
    spec.label = format!("25.05.stream{}", std::process::id());
    let commit = env.commit(&spec, "Streamed");
    let source = env.fetch(&commit);
    let mut lines = Vec::new();
    build(
        &env.nix,
        &source,
        &spec.attribute(),
        &env.path("result"),
        &mut |line| lines.push(line.to_owned()),
    )
    .unwrap();
    assert!(
        lines.iter().any(|line| line.contains("building")
            && line.contains("nixos-system-demo")),
        "{lines:#?}"
    );
}

#[test]
fn failed_build_reports_builder_output() {
    let env = TestEnv::new();
    let mut spec = env.demo();
    spec.fail_build = true;
    let commit = env.commit(&spec, "Broken");
    let source = env.fetch(&commit);
    let mut lines = Vec::new();
    let error = build(
        &env.nix,
        &source,
        &spec.attribute(),
        &env.path("result"),
        &mut |line| lines.push(line.to_owned()),
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::CommandFailed { .. }), "{message}");
    assert!(message.contains("nix"), "{message}");
    assert!(
        message.contains("build fails as the spec requests"),
        "{message}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("build fails as the spec requests")),
        "{lines:#?}"
    );
    assert!(!env.path("result").exists());
}

#[test]
fn wrong_nar_hash_rejected() {
    let env = TestEnv::new();
    let spec = env.demo();
    let commit = env.commit(&spec, "Demo");
    let source = env.fetch(&commit);
    let forged = FetchedSource::new(
        source.store_path.clone(),
        "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    )
    .unwrap();
    let message = evaluate_out_path(&env.nix, &forged, &spec.attribute())
        .unwrap_err()
        .to_string();
    assert!(message.contains("NAR hash mismatch"), "{message}");
}

#[test]
fn old_commit_fetchable_after_branch_moves() {
    let env = TestEnv::new();
    let spec = env.demo();
    let first = env.commit(&spec, "First");
    env.commit(&spec.demo_update(), "Second");
    let source = env.fetch(&first);
    let evaluated =
        evaluate_out_path(&env.nix, &source, &spec.attribute()).unwrap();
    assert!(evaluated.name().starts_with("nixos-system-demo-"));
}

#[test]
fn fetch_rejects_unknown_commit() {
    let env = TestEnv::new();
    env.commit(&env.demo(), "Demo");
    let error = countersign_nix::fetch_source(
        &env.nix,
        &env.mirror(),
        &"1".repeat(40),
    )
    .unwrap_err();
    assert!(matches!(error, Error::InvalidValue { .. }), "{error}");
}

#[test]
fn switch_script_logs_action() {
    let env = TestEnv::new();
    let (_, toplevel) = env.build(&env.demo(), "switch");
    let status =
        Command::new(toplevel.as_path().join("bin/switch-to-configuration"))
            .arg("test")
            .status()
            .unwrap();
    assert!(status.success());
    let log = fs::read_to_string(env.switch_log()).unwrap();
    assert_eq!(log, format!("test {toplevel}\n"));

    let mut failing = env.demo();
    failing.fail_switch = true;
    let (_, broken) = env.build(&failing, "switch-fails");
    let output =
        Command::new(broken.as_path().join("bin/switch-to-configuration"))
            .arg("switch")
            .output()
            .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("failing as the test system requests"),
        "{stderr}"
    );
}

#[test]
fn invalid_path_is_not_valid() {
    let env = TestEnv::new();
    let missing = countersign_core::StorePath::parse(
        "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-not-built",
    )
    .unwrap();
    assert!(!is_valid_path(&env.nix, &missing).unwrap());
    assert!(nar_hash(&env.nix, &missing).is_err());
}
