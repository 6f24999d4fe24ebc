//! Evaluates the NixOS module `nix/module.nix` with the module system of
//! nixpkgs' lib and the stand-ins in `nix/tests/stand-ins.nix`, through
//! `nix-instantiate --eval --strict --json`. The tests check the units
//! and files the module generates, parse the generated policy and
//! configurations with countersign's own parsers, and check that each
//! assertion fails with its message.
//!
//! They need a nixpkgs `lib` folder, named by the environment variable
//! `COUNTERSIGN_NIXPKGS_LIB`. Without it each test prints that it was
//! skipped and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const LIB_ENV: &str = "COUNTERSIGN_NIXPKGS_LIB";

const PHONE_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMiTUzUf/2BiGAixrGJ759SOZwWVqT/l+KkIJoB2sPJw phone";
/// A security key's public key (`ED25519-SK`), whose signatures can
/// carry the user-verified flag.
const LAPTOP_KEY: &str = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIJEToSe5dCQ8Yt9zRcb+Cs/vs29AjUTmswU0nvTDXdUhAAAABHNzaDo= laptop";
/// A WebAuthn credential id and an Ed25519 COSE_Key (alg -8), both
/// base64url without padding as the policy stores them.
const TABLET_CREDENTIAL_ID: &str = "dGFibGV0LWNyZWRlbnRpYWwtMDAwMQ";
const TABLET_COSE_KEY: &str =
    "pAEBAycgBiFYIARMBnoI7RN5BB-PqPfvU-Zg0E-flcpe_wEuiIoG5-lm";

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Returns the nixpkgs lib folder, or `None` after printing why the
/// test named `test` is skipped.
fn nixpkgs_lib(test: &str) -> Option<PathBuf> {
    let Some(lib) = std::env::var_os(LIB_ENV) else {
        println!(
            "{test} skipped: {LIB_ENV} is not set; set it to the `lib` \
             folder of a nixpkgs checkout to evaluate the NixOS module"
        );
        return None;
    };
    let lib = PathBuf::from(lib);
    assert!(
        lib.join("default.nix").is_file(),
        "{LIB_ENV}={} has no default.nix; point it at nixpkgs' lib folder",
        lib.display()
    );
    Some(lib.canonicalize().unwrap())
}

/// Evaluates `expression` with Nix and returns its JSON value, or the
/// error output when the evaluation fails.
fn nix_eval(expression: &str) -> Result<Value, String> {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr", expression])
        .env("HOME", home.path())
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("nix-instantiate runs; install Nix");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&output.stdout).unwrap())
}

/// Evaluates the module with `configuration` (a Nix module expression)
/// and returns what `nix/tests/eval.nix` reports.
fn evaluate(lib: &Path, configuration: &str) -> Value {
    let root = repository_root();
    let expression = format!(
        "import {}/nix/tests/eval.nix {{ lib = import {}; \
         configuration = {configuration}; }}",
        root.display(),
        lib.display()
    );
    nix_eval(&expression).unwrap_or_else(|error| {
        panic!("evaluating the module failed:\n{error}\n{configuration}")
    })
}

/// Returns a valid configuration of two approvers, merged by the module
/// system with `extra`, the body of a second module.
fn configuration(extra: &str) -> String {
    format!(
        r#"{{
          imports = [
            ({{ lib, ... }}: {{
              networking.hostName = "web1";
              services.countersign = {{
                enable = true;
                repository.url = "https://git.example.org/infra/nixos.git";
                approvers.phone.ssh = "{PHONE_KEY}";
                approvers.laptop.ssh = "{LAPTOP_KEY}";
                threshold = lib.mkDefault 2;
              }};
            }})
            ({{ lib, ... }}: {{
              {extra}
            }})
          ];
        }}"#
    )
}

fn failed_assertions(result: &Value) -> Vec<String> {
    result["failedAssertions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message.as_str().unwrap().to_owned())
        .collect()
}

fn etc_text<'a>(result: &'a Value, name: &str) -> &'a str {
    result["etc"][name]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("environment.etc.{name:?} has no text"))
}

/// Asserts that `extra` makes exactly one assertion fail, with a message
/// that contains each of `expected`.
fn assert_only_failure(lib: &Path, extra: &str, expected: &[&str]) {
    let result = evaluate(lib, &configuration(extra));
    let failed = failed_assertions(&result);
    assert_eq!(failed.len(), 1, "{extra}: {failed:#?}");
    for part in expected {
        assert!(failed[0].contains(part), "{extra}: {}", failed[0]);
    }
}

#[test]
fn valid_configuration_passes_assertions() {
    let Some(lib) = nixpkgs_lib("valid_configuration_passes_assertions")
    else {
        return;
    };
    let result = evaluate(&lib, &configuration(""));
    assert_eq!(failed_assertions(&result), Vec::<String>::new());
    assert_eq!(result["warnings"], serde_json::json!([]));
}

#[test]
fn policy_file_is_generated() {
    let Some(lib) = nixpkgs_lib("policy_file_is_generated") else {
        return;
    };
    let extra = r#"services.countersign = {
        required = [ "laptop" ];
        veto = false;
        proposalLifetime = 3600;
        approvers.laptop.userVerification = true;
    };"#;
    let result = evaluate(&lib, &configuration(extra));
    let policy_entry = &result["etc"]["countersign/policy.toml"];
    assert_eq!(policy_entry["mode"], "0644");
    assert!(policy_entry.get("user").is_none(), "root owns the policy");

    let text = etc_text(&result, "countersign/policy.toml");
    let policy = countersign_core::Policy::from_toml(text.as_bytes())
        .unwrap_or_else(|error| panic!("{error}:\n{text}"));
    assert_eq!(policy.host, "web1");
    assert_eq!(policy.threshold, 2);
    assert!(!policy.veto);
    assert_eq!(policy.proposal_lifetime_secs, 3600);
    let required: Vec<&str> =
        policy.required.iter().map(|name| name.as_str()).collect();
    assert_eq!(required, ["laptop"]);
    let names: Vec<&str> =
        policy.approvers.keys().map(|name| name.as_str()).collect();
    assert_eq!(names, ["laptop", "phone"]);
    let laptop = policy.approvers.values().next().unwrap();
    assert!(laptop.user_verification);
    assert!(text.contains(LAPTOP_KEY), "{text}");
    assert!(text.contains(PHONE_KEY), "{text}");
}

#[test]
fn configurations_parse_with_own_parsers() {
    let Some(lib) = nixpkgs_lib("configurations_parse_with_own_parsers")
    else {
        return;
    };
    let extra = r#"services.countersign = {
        triggerTokenFile = "/run/keys/countersign-trigger";
        action = "boot";
        repository.branch = "production";
        listen = "[::1]:9000";
        metrics = true;
        buildTimeout = 5400;
        nixSettings = {
          fallback = true;
          "max-jobs" = 2;
          "extra-sandbox-paths" = [ "/a" "/b" ];
        };
      };"#;
    let result = evaluate(&lib, &configuration(extra));

    let text = etc_text(&result, "countersign/server.toml");
    let server = countersign_server::ServerConfig::parse(text)
        .unwrap_or_else(|error| panic!("{error}:\n{text}"));
    assert_eq!(server.host, "web1");
    assert_eq!(server.listen, "[::1]:9000");
    assert_eq!(server.state_dir, Path::new("/var/lib/countersign"));
    assert_eq!(server.policy, Path::new("/etc/countersign/policy.toml"));
    assert_eq!(
        server.activator_socket,
        Path::new("/run/countersign/activator.sock")
    );
    assert_eq!(server.repository.branch, "production");
    assert_eq!(server.repository.action.to_string(), "boot");
    assert_eq!(
        server.attribute(),
        "nixosConfigurations.web1.config.system.build.toplevel"
    );
    let trigger = server.trigger.expect("a [trigger] section");
    assert_eq!(
        trigger.token_file,
        Path::new("/run/credentials/countersign.service/trigger-token")
    );
    assert_eq!(server.nix.options["fallback"], "true");
    assert_eq!(server.nix.options["max-jobs"], "2");
    assert_eq!(server.nix.options["extra-sandbox-paths"], "/a /b");
    assert_eq!(server.nix.build_timeout_secs, 5400);
    assert!(server.metrics);
    assert!(server.webhook.is_none());

    let text = etc_text(&result, "countersign/activator.toml");
    let activator = countersign_activator::Config::parse(text)
        .unwrap_or_else(|error| panic!("{error}:\n{text}"));
    assert_eq!(activator.policy, server.policy);
    assert_eq!(activator.socket, server.activator_socket);
    assert_eq!(
        activator.state_dir,
        Path::new("/var/lib/countersign-activator")
    );
    assert_eq!(activator.socket_mode.to_string(), "0660");
    assert_eq!(activator.socket_group.as_deref(), Some("countersign"));
    assert_eq!(activator.profile, Path::new("/nix/var/nix/profiles/system"));
    assert!(activator.verify_evaluation);
    assert_eq!(
        activator.attribute.as_deref(),
        Some("nixosConfigurations.web1.config.system.build.toplevel")
    );
    assert_eq!(
        activator.evaluator_user.as_deref(),
        Some("countersign-eval")
    );
    assert_eq!(activator.nix.options["max-jobs"], "2");

    let server_unit = &result["services"]["countersign"];
    assert_eq!(
        server_unit["serviceConfig"]["LoadCredential"],
        serde_json::json!(["trigger-token:/run/keys/countersign-trigger"])
    );
}

#[test]
fn server_unit_is_hardened() {
    let Some(lib) = nixpkgs_lib("server_unit_is_hardened") else {
        return;
    };
    let result = evaluate(&lib, &configuration(""));
    let unit = &result["services"]["countersign"];
    let service = &unit["serviceConfig"];
    assert_eq!(service["User"], "countersign");
    assert_eq!(service["Group"], "countersign");
    assert!(
        service["ExecStart"].as_str().unwrap().ends_with(
            "/bin/countersign serve --config /etc/countersign/server.toml"
        ),
        "{}",
        service["ExecStart"]
    );
    assert_eq!(unit["environment"]["NIX_REMOTE"], "daemon");
    assert_eq!(unit["wantedBy"], serde_json::json!(["multi-user.target"]));
    let expected = [
        ("ProtectSystem", serde_json::json!("strict")),
        ("StateDirectory", serde_json::json!("countersign")),
        ("StateDirectoryMode", serde_json::json!("0700")),
        ("NoNewPrivileges", serde_json::json!(true)),
        ("CapabilityBoundingSet", serde_json::json!("")),
        (
            "RestrictAddressFamilies",
            serde_json::json!(["AF_UNIX", "AF_INET", "AF_INET6"]),
        ),
        ("SystemCallFilter", serde_json::json!(["@system-service"])),
        ("PrivateTmp", serde_json::json!(true)),
        ("ProtectHome", serde_json::json!(true)),
        ("PrivateDevices", serde_json::json!(true)),
        ("ProtectKernelTunables", serde_json::json!(true)),
        ("ProtectKernelModules", serde_json::json!(true)),
        ("ProtectKernelLogs", serde_json::json!(true)),
        ("ProtectControlGroups", serde_json::json!(true)),
        ("LockPersonality", serde_json::json!(true)),
        ("MemoryDenyWriteExecute", serde_json::json!(true)),
        ("RestrictNamespaces", serde_json::json!(true)),
        ("RestrictSUIDSGID", serde_json::json!(true)),
        ("UMask", serde_json::json!("0077")),
    ];
    for (key, value) in expected {
        assert_eq!(service[key], value, "serviceConfig.{key}");
    }
    assert_eq!(
        service["LoadCredential"],
        serde_json::json!([]),
        "no trigger token, no credential"
    );

    let user = &result["users"]["countersign"];
    assert_eq!(user["isSystemUser"], true);
    assert_eq!(user["group"], "countersign");
    assert!(result["groups"].get("countersign").is_some());
}

#[test]
fn activator_unit_runs_as_root() {
    let Some(lib) = nixpkgs_lib("activator_unit_runs_as_root") else {
        return;
    };
    let result = evaluate(&lib, &configuration(""));
    let unit = &result["services"]["countersign-activator"];
    let service = &unit["serviceConfig"];
    assert_eq!(service["User"], "root");
    assert_eq!(service["Type"], "simple");
    assert!(
        service["ExecStart"].as_str().unwrap().ends_with(
            "/bin/countersign-activator --config /etc/countersign/activator.toml"
        ),
        "{}",
        service["ExecStart"]
    );
    assert_eq!(
        service["RuntimeDirectory"],
        Value::Null,
        "stopping the service must not remove the socket's directory"
    );
    assert_eq!(service["StateDirectory"], "countersign-activator");
    assert_eq!(service["StateDirectoryMode"], "0700");
    assert_eq!(unit["restartIfChanged"], false);
    assert_eq!(unit["environment"]["NIX_REMOTE"], "daemon");
    assert_eq!(
        unit["requires"],
        serde_json::json!(["countersign-activator.socket"])
    );
    let after = unit["after"].as_array().unwrap();
    assert!(
        after.contains(&serde_json::json!("countersign-activator.socket")),
        "{after:?}"
    );

    let socket = &result["sockets"]["countersign-activator"];
    assert_eq!(
        socket["listenStreams"],
        serde_json::json!(["/run/countersign/activator.sock"])
    );
    assert_eq!(socket["wantedBy"], serde_json::json!(["sockets.target"]));
    let socket_config = &socket["socketConfig"];
    assert_eq!(socket_config["SocketMode"], "0660");
    assert_eq!(socket_config["SocketUser"], "root");
    assert_eq!(socket_config["SocketGroup"], "countersign");

    let evaluator = &result["users"]["countersign-eval"];
    assert_eq!(evaluator["isSystemUser"], true);
    assert_eq!(evaluator["group"], "countersign-eval");
    assert_eq!(evaluator["createHome"], true);
}

#[test]
fn timeouts_above_seven_days_fail() {
    let Some(lib) = nixpkgs_lib("timeouts_above_seven_days_fail") else {
        return;
    };
    // The activator rejects longer steps at start, so the module rejects
    // them when the system is built.
    for (extra, option) in [
        (
            "services.countersign.confirmTimeout = 604801;",
            "services.countersign.confirmTimeout",
        ),
        (
            "services.countersign.preSwitch = \
             [ { command = [ \"/bin/true\" ]; timeout = 604801; } ];",
            "timeout",
        ),
        (
            "services.countersign.buildTimeout = 604801;",
            "services.countersign.buildTimeout",
        ),
    ] {
        let expression = format!(
            "import {}/nix/tests/eval.nix {{ lib = import {}; \
             configuration = {}; }}",
            repository_root().display(),
            lib.display(),
            configuration(extra)
        );
        let error = nix_eval(&expression).expect_err(extra);
        assert!(error.contains(option), "{error}");
        assert!(error.contains("604800"), "{error}");
    }
    let accepted = evaluate(
        &lib,
        &configuration("services.countersign.confirmTimeout = 604800;"),
    );
    assert_eq!(failed_assertions(&accepted), Vec::<String>::new());
}

#[test]
fn activator_options_reach_config() {
    let Some(lib) = nixpkgs_lib("activator_options_reach_config") else {
        return;
    };
    let extra = r#"services.countersign = {
        profile = "/nix/var/nix/profiles/other";
        confirmTimeout = 300;
        preSwitch = [ { command = [ "/bin/snapshot" "root" ]; } ];
        healthChecks = {
          units = [ { unit = "nginx.service"; timeout = 20; } ];
          commands = [ { command = [ "/bin/check" ]; } ];
          http = [ { url = "http://127.0.0.1:8080/health"; } ];
        };
      };"#;
    let result = evaluate(&lib, &configuration(extra));
    assert_eq!(failed_assertions(&result), Vec::<String>::new());

    let text = etc_text(&result, "countersign/activator.toml");
    let activator = countersign_activator::Config::parse(text)
        .unwrap_or_else(|error| panic!("{error}:\n{text}"));
    assert_eq!(activator.profile, Path::new("/nix/var/nix/profiles/other"));
    assert_eq!(
        activator.systemd_run,
        Path::new(
            "/nix/store/00000000000000000000000000000000-systemd/bin/systemd-run"
        )
    );
    assert_eq!(activator.confirm_timeout_secs, 300);
    assert_eq!(activator.pre_switch.len(), 1);
    assert_eq!(activator.pre_switch[0].command, ["/bin/snapshot", "root"]);
    assert_eq!(activator.pre_switch[0].timeout_secs, 300);
    let health = &activator.health;
    assert_eq!(health.units.len(), 1);
    assert_eq!(health.units[0].unit, "nginx.service");
    assert_eq!(health.units[0].timeout_secs, 20);
    assert_eq!(health.commands.len(), 1);
    assert_eq!(health.commands[0].command, ["/bin/check"]);
    assert_eq!(health.commands[0].timeout_secs, 60);
    assert_eq!(health.http.len(), 1);
    assert_eq!(health.http[0].url, "http://127.0.0.1:8080/health");

    let text = etc_text(&result, "countersign/server.toml");
    let server = countersign_server::ServerConfig::parse(text)
        .unwrap_or_else(|error| panic!("{error}:\n{text}"));
    assert_eq!(server.profile, Path::new("/nix/var/nix/profiles/other"));
}

#[test]
fn nginx_proxies_only_with_domain() {
    let Some(lib) = nixpkgs_lib("nginx_proxies_only_with_domain") else {
        return;
    };
    let without = evaluate(&lib, &configuration(""));
    assert_eq!(without["nginx"], serde_json::json!({}));

    let with = evaluate(
        &lib,
        &configuration(
            r#"services.countersign.domain = "deploy.example.org";"#,
        ),
    );
    let host = &with["nginx"]["virtualHosts"]["deploy.example.org"];
    assert_eq!(with["nginx"]["enable"], true);
    assert_eq!(host["enableACME"], true);
    assert_eq!(host["forceSSL"], true);
    assert_eq!(host["locations"]["/"]["proxyPass"], "http://127.0.0.1:8470");
    assert_eq!(host["locations"]["= /metrics"]["return"], "404");
}

#[test]
fn disabled_module_adds_nothing() {
    let Some(lib) = nixpkgs_lib("disabled_module_adds_nothing") else {
        return;
    };
    let result = evaluate(
        &lib,
        &configuration("services.countersign.enable = lib.mkForce false;"),
    );
    assert_eq!(result["services"], serde_json::json!({}));
    assert_eq!(result["etc"], serde_json::json!({}));
    assert_eq!(result["users"], serde_json::json!({}));
    assert_eq!(failed_assertions(&result), Vec::<String>::new());
}

#[test]
fn threshold_out_of_range_fails() {
    let Some(lib) = nixpkgs_lib("threshold_out_of_range_fails") else {
        return;
    };
    assert_only_failure(
        &lib,
        "services.countersign.threshold = 0;",
        &[
            "threshold is 0",
            "between 1 and the number of approvers (2)",
        ],
    );
    assert_only_failure(
        &lib,
        "services.countersign.threshold = 3;",
        &[
            "threshold is 3",
            "between 1 and the number of approvers (2)",
        ],
    );
}

#[test]
fn unknown_required_approver_fails() {
    let Some(lib) = nixpkgs_lib("unknown_required_approver_fails") else {
        return;
    };
    assert_only_failure(
        &lib,
        r#"services.countersign.required = [ "tablet" ];"#,
        &[
            "required names tablet",
            "not in services.countersign.approvers",
        ],
    );
}

#[test]
fn required_above_threshold_fails() {
    let Some(lib) = nixpkgs_lib("required_above_threshold_fails") else {
        return;
    };
    assert_only_failure(
        &lib,
        r#"services.countersign = {
            threshold = 1;
            required = [ "phone" "laptop" ];
        };"#,
        &["required lists 2 approvers", "raise the threshold"],
    );
}

#[test]
fn duplicated_key_fails() {
    let Some(lib) = nixpkgs_lib("duplicated_key_fails") else {
        return;
    };
    // The same key under another comment is still the same key.
    let tablet = PHONE_KEY.replace(" phone", " tablet");
    assert_only_failure(
        &lib,
        &format!(r#"services.countersign.approvers.tablet.ssh = "{tablet}";"#),
        &["phone and tablet have the same SSH key"],
    );
}

#[test]
fn trusted_server_user_fails() {
    let Some(lib) = nixpkgs_lib("trusted_server_user_fails") else {
        return;
    };
    let cases = [
        (
            r#"nix.settings.trusted-users = [ "root" "countersign" ];"#,
            "contains countersign,",
        ),
        (
            r#"nix.settings.trusted-users = [ "root" "@countersign" ];"#,
            "contains @countersign,",
        ),
        (
            r#"nix.settings.trusted-users = [ "root" "@wheel" ];
               users.users.countersign.extraGroups = [ "wheel" ];"#,
            "contains @wheel,",
        ),
    ];
    for (extra, expected) in cases {
        assert_only_failure(
            &lib,
            extra,
            &[expected, "countersign user countersign a trusted Nix user"],
        );
    }
}

#[test]
fn trusted_evaluator_user_fails() {
    let Some(lib) = nixpkgs_lib("trusted_evaluator_user_fails") else {
        return;
    };
    assert_only_failure(
        &lib,
        r#"nix.settings.trusted-users = [ "root" "@builders" ];
           users.groups.builders.members = [ "countersign-eval" ];"#,
        &["contains @builders", "countersign user countersign-eval"],
    );

    let result = evaluate(
        &lib,
        &configuration(r#"nix.settings.trusted-users = [ "*" ];"#),
    );
    let failed = failed_assertions(&result);
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert!(
        failed[0].contains("user countersign a trusted"),
        "{failed:#?}"
    );
    assert!(failed[1].contains("user countersign-eval a"), "{failed:#?}");
}

#[test]
fn secret_in_store_fails() {
    let Some(lib) = nixpkgs_lib("secret_in_store_fails") else {
        return;
    };
    assert_only_failure(
        &lib,
        r#"services.countersign.triggerTokenFile = "/nix/store/0000-token";"#,
        &[
            "triggerTokenFile is /nix/store/0000-token",
            "outside the store",
        ],
    );
    let result = evaluate(
        &lib,
        &configuration(
            r#"services.countersign.webhookSecretFile = "/nix/store/0000-secret";"#,
        ),
    );
    let failed = failed_assertions(&result);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(
        failed[0].contains("webhookSecretFile is /nix/store"),
        "{failed:#?}"
    );
}

#[test]
fn webhook_secret_uses_credential() {
    let Some(lib) = nixpkgs_lib("webhook_secret_uses_credential") else {
        return;
    };
    let extra = r#"services.countersign = {
        webhookSecretFile = "/run/keys/countersign-webhook";
        webhookRepository = "ops/infra";
      };"#;
    let result = evaluate(&lib, &configuration(extra));
    assert_eq!(failed_assertions(&result), Vec::<String>::new());
    let text = etc_text(&result, "countersign/server.toml");
    let server = countersign_server::ServerConfig::parse(text)
        .unwrap_or_else(|error| panic!("{error}:\n{text}"));
    let webhook = server.webhook.expect("a [webhook] section");
    assert_eq!(
        webhook.secret_file,
        Path::new("/run/credentials/countersign.service/webhook-secret")
    );
    assert_eq!(webhook.repository.as_deref(), Some("ops/infra"));
    assert_eq!(
        result["services"]["countersign"]["serviceConfig"]["LoadCredential"],
        serde_json::json!(["webhook-secret:/run/keys/countersign-webhook"])
    );
}

#[test]
fn server_user_as_evaluator_fails() {
    let Some(lib) = nixpkgs_lib("server_user_as_evaluator_fails") else {
        return;
    };
    assert_only_failure(
        &lib,
        r#"services.countersign.evaluatorUser = "countersign";"#,
        &["evaluatorUser is the server's user countersign"],
    );
}

/// Returns module lines that add the passkey approver `tablet`.
fn tablet_passkey() -> String {
    format!(
        r#"services.countersign.approvers.tablet.webauthn = {{
          credentialId = "{TABLET_CREDENTIAL_ID}";
          publicKey = "{TABLET_COSE_KEY}";
          algorithm = -8;
          backupEligible = false;
        }};"#
    )
}

#[test]
fn passkey_approver_reaches_policy() {
    let Some(lib) = nixpkgs_lib("passkey_approver_reaches_policy") else {
        return;
    };
    let extra = format!(
        r#"{}
        services.countersign.domain = "deploy.example.org";
        services.countersign.web.enable = true;
        services.countersign.webauthn.rpId = "deploy.example.org";
        services.countersign.approvers.tablet.userVerification = true;"#,
        tablet_passkey()
    );
    let result = evaluate(&lib, &configuration(&extra));
    assert_eq!(failed_assertions(&result), Vec::<String>::new());
    assert_eq!(result["warnings"], serde_json::json!([]));

    let text = etc_text(&result, "countersign/policy.toml");
    let policy = countersign_core::Policy::from_toml(text.as_bytes())
        .unwrap_or_else(|error| panic!("{error}:\n{text}"));
    let settings = policy.webauthn.as_ref().expect("a [webauthn] table");
    assert_eq!(settings.rp_id, "deploy.example.org");
    assert_eq!(settings.origins, ["https://deploy.example.org"]);
    let tablet = policy
        .approvers
        .values()
        .find(|approver| approver.name.as_str() == "tablet")
        .expect("the approver tablet");
    assert!(tablet.user_verification);
    let countersign_core::policy::ApproverKey::WebAuthn(credential) =
        &tablet.key
    else {
        panic!("tablet has an SSH key:\n{text}");
    };
    assert_eq!(credential.credential_id, b"tablet-credential-0001");
    assert_eq!(credential.algorithm.to_string(), "EdDSA");
    assert_eq!(credential.backup_eligible, Some(false));
    assert_eq!(policy.approvers.len(), 3);
}

#[test]
fn passkey_without_rp_fails() {
    let Some(lib) = nixpkgs_lib("passkey_without_rp_fails") else {
        return;
    };
    assert_only_failure(
        &lib,
        &tablet_passkey(),
        &[
            "tablet has a WebAuthn credential",
            "services.countersign.webauthn is not set",
        ],
    );

    let result = evaluate(&lib, &configuration(&tablet_passkey()));
    let warnings = result["warnings"].to_string();
    assert!(warnings.contains("tablet can approve only"), "{warnings}");
}

#[test]
fn approver_with_two_keys_fails() {
    let Some(lib) = nixpkgs_lib("approver_with_two_keys_fails") else {
        return;
    };
    let extra = format!(
        r#"{}
        services.countersign.webauthn.rpId = "localhost";
        services.countersign.approvers.tablet.ssh = "{}";"#,
        tablet_passkey(),
        PHONE_KEY.replace(" phone", " tablet")
    );
    let result = evaluate(&lib, &configuration(&extra));
    let failed = failed_assertions(&result);
    assert!(
        failed.iter().any(
            |message| message.contains("tablet has both ssh and webauthn")
        ),
        "{failed:#?}"
    );
}

#[test]
fn approver_without_key_fails() {
    let Some(lib) = nixpkgs_lib("approver_without_key_fails") else {
        return;
    };
    assert_only_failure(
        &lib,
        "services.countersign.approvers.tablet.userVerification = true;",
        &["tablet has no key", "ssh or approvers.<name>.webauthn"],
    );
}

#[test]
fn verification_of_plain_key_fails() {
    let Some(lib) = nixpkgs_lib("verification_of_plain_key_fails") else {
        return;
    };
    assert_only_failure(
        &lib,
        "services.countersign.approvers.phone.userVerification = true;",
        &["phone sets userVerification with a plain SSH key"],
    );
}

#[test]
fn web_and_forge_reach_server_config() {
    let Some(lib) = nixpkgs_lib("web_and_forge_reach_server_config") else {
        return;
    };
    let extra = r#"services.countersign = {
        domain = "deploy.example.org";
        proposalUrl = "https://deploy.example.org/proposals/{number}";
        repository.pollInterval = 300;
        webhookSecretFile = "/run/keys/countersign-webhook";
        web = {
          enable = true;
          trustedProxies = [ "127.0.0.1" "::1" ];
        };
        ci = {
          required = [ "build" "pipeline" ];
          acceptVotesWhilePending = true;
        };
        commitStatus = {
          forge = "gitea";
          apiUrl = "https://git.example.org/api/v1";
          repository = "ops/infra";
          tokenFile = "/run/keys/countersign-forge-token";
        };
        signedCommits.allowedSigners = "/etc/countersign/allowed_signers";
        notify = {
          events = [ "deployed" "failed" ];
          ntfy = {
            url = "https://ntfy.example.org/web1";
            tokenFile = "/run/keys/countersign-ntfy";
          };
          webhook = {
            url = "https://chat.example.org/hooks/countersign";
            secretFile = "/run/keys/countersign-notify";
          };
        };
      };"#;
    let result = evaluate(&lib, &configuration(extra));
    assert_eq!(failed_assertions(&result), Vec::<String>::new());
    assert_eq!(result["warnings"], serde_json::json!([]));

    let text = etc_text(&result, "countersign/server.toml");
    let server = countersign_server::ServerConfig::parse(text)
        .unwrap_or_else(|error| panic!("{error}:\n{text}"));
    let credential = |name: &str| {
        PathBuf::from(format!("/run/credentials/countersign.service/{name}"))
    };
    assert_eq!(
        server.proposal_url.as_deref(),
        Some("https://deploy.example.org/proposals/{number}")
    );
    assert_eq!(server.repository.poll_interval_secs, Some(300));

    let web = server.web.expect("a [web] section");
    let origin = web.check().unwrap_or_else(|error| panic!("{error}"));
    assert!(origin.secure);
    assert!(web.enabled);
    assert_eq!(web.public_origin, "https://deploy.example.org");
    let proxies: Vec<String> = web
        .trusted_proxies
        .iter()
        .map(|ip| ip.to_string())
        .collect();
    assert_eq!(proxies, ["127.0.0.1", "::1"]);

    let ci = server.ci.expect("a [ci] section");
    ci.check().unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(ci.required, ["build", "pipeline"]);
    assert!(ci.accept_votes_while_pending);

    let status = server.commit_status.expect("a [commit_status] section");
    assert_eq!(status.forge, countersign_server::ForgeApi::Gitea);
    assert_eq!(status.api_url, "https://git.example.org/api/v1");
    assert_eq!(status.repository, "ops/infra");
    assert_eq!(status.token_file, credential("commit-status-token"));
    assert_eq!(status.context, None);

    let signed = server.signed_commits.expect("a [signed_commits] section");
    assert_eq!(
        signed.allowed_signers.as_deref(),
        Some(Path::new("/etc/countersign/allowed_signers"))
    );
    assert_eq!(signed.gpg_keyring, None);

    let notify = server.notify.expect("a [notify] section");
    let events: Vec<&str> =
        notify.events.iter().map(|event| event.as_str()).collect();
    assert_eq!(events, ["deployed", "failed"]);
    let ntfy = notify.ntfy.expect("a [notify.ntfy] section");
    assert_eq!(ntfy.url, "https://ntfy.example.org/web1");
    assert_eq!(ntfy.token_file, Some(credential("ntfy-token")));
    let webhook = notify.webhook.expect("a [notify.webhook] section");
    assert_eq!(webhook.url, "https://chat.example.org/hooks/countersign");
    assert_eq!(
        webhook.secret_file,
        Some(credential("notify-webhook-secret"))
    );

    assert_eq!(
        result["services"]["countersign"]["serviceConfig"]["LoadCredential"],
        serde_json::json!([
            "webhook-secret:/run/keys/countersign-webhook",
            "commit-status-token:/run/keys/countersign-forge-token",
            "ntfy-token:/run/keys/countersign-ntfy",
            "notify-webhook-secret:/run/keys/countersign-notify",
        ])
    );
}

#[test]
fn optional_server_sections_stay_absent() {
    let Some(lib) = nixpkgs_lib("optional_server_sections_stay_absent") else {
        return;
    };
    let result = evaluate(&lib, &configuration(""));
    let text = etc_text(&result, "countersign/server.toml");
    let server = countersign_server::ServerConfig::parse(text)
        .unwrap_or_else(|error| panic!("{error}:\n{text}"));
    assert!(server.web.is_none(), "{text}");
    assert!(server.ci.is_none(), "{text}");
    assert!(server.commit_status.is_none(), "{text}");
    assert!(server.signed_commits.is_none(), "{text}");
    assert!(server.notify.is_none(), "{text}");
    assert!(server.proposal_url.is_none(), "{text}");
    assert_eq!(server.repository.poll_interval_secs, None);
    let policy = etc_text(&result, "countersign/policy.toml");
    assert!(!policy.contains("webauthn"), "{policy}");
}

#[test]
fn forge_secret_in_store_fails() {
    let Some(lib) = nixpkgs_lib("forge_secret_in_store_fails") else {
        return;
    };
    assert_only_failure(
        &lib,
        r#"services.countersign.commitStatus = {
            forge = "github";
            apiUrl = "https://api.github.com";
            repository = "ops/infra";
            tokenFile = "/nix/store/0000-token";
        };"#,
        &["commitStatus.tokenFile is /nix/store/0000-token"],
    );
    assert_only_failure(
        &lib,
        r#"services.countersign.notify.ntfy = {
            url = "https://ntfy.example.org/web1";
            tokenFile = "/nix/store/0000-token";
        };"#,
        &["notify.ntfy.tokenFile is /nix/store/0000-token"],
    );
    assert_only_failure(
        &lib,
        r#"services.countersign.notify.webhook = {
            url = "https://chat.example.org/hooks/countersign";
            secretFile = "/nix/store/0000-secret";
        };"#,
        &["notify.webhook.secretFile is /nix/store/0000-secret"],
    );
}

#[test]
fn options_doc_is_current() {
    let Some(lib) = nixpkgs_lib("options_doc_is_current") else {
        return;
    };
    let root = repository_root();
    let expression = format!(
        "import {}/nix/options-doc.nix {{ lib = import {}; }}",
        root.display(),
        lib.display()
    );
    let generated = nix_eval(&expression).unwrap();
    let committed =
        std::fs::read_to_string(root.join("docs/options.md")).unwrap();
    assert!(
        generated.as_str() == Some(committed.as_str()),
        "docs/options.md differs from the module's options; run \
         scripts/gen-options-doc"
    );
}
