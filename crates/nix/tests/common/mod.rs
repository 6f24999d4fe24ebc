//! Shared set-up for the integration tests: a private Nix configuration
//! and helpers that commit, fetch and build test systems.
//!
//! Every test runs real git and real Nix against the local store. Nix
//! gets flakes enabled, an empty flake registry (so it never downloads
//! the global one) and no substituters, so nothing goes to the network.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use countersign_core::StorePath;
use countersign_nix::fixture::{self, SystemSpec};
use countersign_nix::{FetchedSource, Nix, build, fetch_source, git};
use tempfile::TempDir;

pub struct TestEnv {
    pub dir: TempDir,
    pub nix: Nix,
}

impl TestEnv {
    pub fn new() -> Self {
        assert!(
            Command::new("nix").arg("--version").output().is_ok(),
            "these tests need the `nix` command (Debian package nix-bin)"
        );
        let dir = tempfile::tempdir().expect("create a temporary folder");
        let registry = dir.path().join("registry.json");
        fs::write(&registry, r#"{"flakes":[],"version":2}"#).unwrap();
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        let config = format!(
            "experimental-features = nix-command flakes\n\
             flake-registry = {}\n\
             substituters =\n",
            registry.display()
        );
        let nix = Nix::new()
            .with_env("NIX_CONFIG", config)
            .with_env("HOME", &home);
        Self { dir, nix }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Returns the work tree that test systems are committed to.
    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    pub fn mirror(&self) -> PathBuf {
        self.path("mirror.git")
    }

    pub fn switch_log(&self) -> PathBuf {
        self.path("switch.log")
    }

    pub fn demo(&self) -> SystemSpec {
        SystemSpec::demo("demo", &self.switch_log())
    }

    /// Commits `spec` to the work tree and fetches `main` into the
    /// mirror; returns the commit id.
    pub fn commit(&self, spec: &SystemSpec, message: &str) -> String {
        let commit = fixture::commit_flake(&self.repo(), spec, message)
            .expect("commit the test system");
        let fetched = git::fetch_branch(
            self.repo().to_str().unwrap(),
            "main",
            &self.mirror(),
        )
        .expect("fetch into the mirror");
        assert_eq!(fetched, commit);
        commit
    }

    pub fn fetch(&self, commit: &str) -> FetchedSource {
        fetch_source(&self.nix, &self.mirror(), commit)
            .expect("fetch the commit into the store")
    }

    /// Commits, fetches and builds `spec`; returns the commit and the
    /// toplevel.
    pub fn build(
        &self,
        spec: &SystemSpec,
        label: &str,
    ) -> (String, StorePath) {
        let commit = self.commit(spec, label);
        let source = self.fetch(&commit);
        let gc_root = self.path(&format!("result-{label}"));
        let toplevel = build(
            &self.nix,
            &source,
            &spec.attribute(),
            &gc_root,
            &mut |_| {},
        )
        .expect("build the test system");
        (commit, toplevel)
    }
}

/// Runs git in `dir` with a fixed identity.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@countersign.invalid",
        ])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
