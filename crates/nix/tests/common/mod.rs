//! Shared set-up for the integration tests: a private Nix configuration
//! and helpers that commit, fetch and build test systems.
//!
//! Every test runs real git and real Nix against the local store. Nix
//! gets flakes enabled, an empty flake registry (so it never downloads
//! the global one) and no substituters, so nothing goes to the network.

#![allow(dead_code)]

use std::collections::BTreeMap;
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
    /// The `NIX_CONFIG` and `HOME` that `nix` gets.
    pub config: String,
    pub home: PathBuf,
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
            .with_env("NIX_CONFIG", &config)
            .with_env("HOME", &home);
        Self {
            dir,
            nix,
            config,
            home,
        }
    }

    /// A `nix` command with this environment's settings.
    pub fn nix_command(&self) -> Command {
        let mut command = Command::new("nix");
        command
            .env("NIX_CONFIG", &self.config)
            .env("HOME", &self.home)
            .args(["--extra-experimental-features", "nix-command flakes"]);
        command
    }

    /// Builds several systems written as one flake (no git, no mirror)
    /// with one `nix build`, and returns each toplevel by name. Each
    /// result keeps a GC root in this environment's folder.
    pub fn build_set(
        &self,
        folder: &str,
        specs: &[(&str, &SystemSpec)],
    ) -> BTreeMap<String, StorePath> {
        let dir = self.path(folder);
        fixture::write_flake_set(&dir, specs).expect("write the flake");
        let mut command = self.nix_command();
        command
            .args(["build", "--option", "max-jobs", "2", "--out-link"])
            .arg(dir.join("result"));
        for (name, _) in specs {
            command.arg(format!(
                "path:{}#nixosConfigurations.{name}.config.system.build.toplevel",
                dir.display()
            ));
        }
        let output = command.output().expect("run nix build");
        assert!(
            output.status.success(),
            "nix build failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The links' numbering does not follow the installables, so
        // each result is matched by its label, which must differ.
        let mut built = BTreeMap::new();
        for entry in fs::read_dir(&dir).unwrap() {
            let link = entry.unwrap().path();
            let is_result = link
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("result"));
            if !is_result {
                continue;
            }
            let target = fs::read_link(&link).expect("nix made the link");
            let label =
                fs::read_to_string(target.join("nixos-version")).unwrap();
            let (name, _) = specs
                .iter()
                .find(|(_, spec)| spec.label == label)
                .expect("every system of a set has its own label");
            let path = StorePath::parse(target.to_str().unwrap()).unwrap();
            built.insert((*name).to_owned(), path);
        }
        assert_eq!(built.len(), specs.len(), "one result per system");
        built
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
