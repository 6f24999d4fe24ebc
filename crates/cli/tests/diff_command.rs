//! `countersign diff OLD NEW` on two real test systems built with Nix.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use countersign_nix::fixture::{SystemSpec, write_flake_set};
use serde_json::Value;

struct Env {
    dir: tempfile::TempDir,
    config: String,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("registry.json");
        fs::write(&registry, r#"{"flakes":[],"version":2}"#).unwrap();
        fs::create_dir(dir.path().join("home")).unwrap();
        let config = format!(
            "experimental-features = nix-command flakes\n\
             flake-registry = {}\nsubstituters =\n",
            registry.display()
        );
        Self { dir, config }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Builds the two systems and returns links to them.
    fn build_pair(
        &self,
        old: &SystemSpec,
        new: &SystemSpec,
    ) -> (PathBuf, PathBuf) {
        let flake = self.dir.path().join("flake");
        write_flake_set(&flake, &[("old", old), ("new", new)]).unwrap();
        let mut links = Vec::new();
        for name in ["old", "new"] {
            let link = self.dir.path().join(format!("result-{name}"));
            let output = Command::new("nix")
                .env("NIX_CONFIG", &self.config)
                .env("HOME", self.home())
                .args(["--extra-experimental-features", "nix-command flakes"])
                .args(["build", "--out-link"])
                .arg(&link)
                .arg(format!(
                    "path:{}#nixosConfigurations.{name}.config.system.build.toplevel",
                    flake.display()
                ))
                .output()
                .expect("run nix");
            assert!(
                output.status.success(),
                "nix build failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            links.push(link);
        }
        (links.remove(0), links.remove(0))
    }

    fn countersign(&self, args: &[&Path]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_countersign"))
            .env("NIX_CONFIG", &self.config)
            .env("HOME", self.home())
            .arg("diff")
            .args(args)
            .output()
            .expect("run countersign")
    }
}

#[test]
fn diff_reports_alerts_as_json_and_text() {
    let env = Env::new();
    let log = env.dir.path().join("switch.log");
    let old = SystemSpec::demo("demo", &log);
    let mut new = old.clone();
    new.label = "25.05.20250602.c0ffee1".to_owned();
    new.edit_etc("sudoers", |text| {
        format!("{text}alice ALL=(ALL:ALL) NOPASSWD: ALL\n")
    });
    new.firewall.as_mut().unwrap().allowed_tcp_ports.push(8080);
    new.set_package(countersign_nix::fixture::Package::with_binary(
        "hello", "2.12.2",
    ));
    let (old_link, new_link) = env.build_pair(&old, &new);

    let output = env.countersign(&[&old_link, &new_link, Path::new("--json")]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let document: Value = serde_json::from_slice(&output.stdout).unwrap();
    let alerts = document["alerts"].as_array().unwrap();
    let first = &alerts[0];
    assert_eq!(first["kind"], "sudo_rule_added");
    assert_eq!(first["severity"], "critical");
    assert_eq!(first["subject"], "/etc/sudoers");
    assert!(alerts.iter().any(|a| a["kind"] == "firewall_port_opened"
        && a["detail"] == "tcp 8080 opened"));
    let hello = document["packages"]["version_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "hello")
        .expect("hello changed version");
    assert_eq!(hello["downgrade"], false);
    assert!(document["source"].is_null());

    let output = env.countersign(&[&old_link, &new_link]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("== Alerts"), "{text}");
    assert!(text.contains("[CRITICAL] /etc/sudoers"), "{text}");
    assert!(text.contains("hello 2.12.1 -> 2.12.2"), "{text}");
}

#[test]
fn diff_rejects_a_path_inside_a_system() {
    let env = Env::new();
    let log = env.dir.path().join("switch.log");
    let old = SystemSpec::demo("demo", &log);
    let mut new = old.clone();
    new.label = "25.05.20250602.c0ffee1".to_owned();
    let (old_link, new_link) = env.build_pair(&old, &new);
    let inside = new_link.join("etc");
    let output = env.countersign(&[&old_link, &inside]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("top folder"), "{error}");
    let missing = env.dir.path().join("missing");
    let output = env.countersign(&[&old_link, &missing]);
    assert!(!output.status.success());
}
