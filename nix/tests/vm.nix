# NixOS VM test of the whole flow with the module's units: the server as
# `countersign` through the nix-daemon, the activator as root, a proposal,
# two approvals with `countersign approve`, and the switch.
#
# The candidate system comes from `countersign demo`, whose repository
# holds a NixOS-shaped flake that builds without nixpkgs and whose
# switch-to-configuration only appends a line to a log file, so the
# approved "switch" leaves the VM itself running.
#
# NOTE: this file is written for machines with nixpkgs and KVM. It has
# not run on the machines that develop countersign, which have neither;
# crates/cli/tests/privilege.rs covers the same privilege split there.
{ self }:
{ lib, pkgs, ... }:

let
  # Approver keys made at build time. The private halves end up in the
  # Nix store, which is acceptable only for a throwaway test VM.
  keys = pkgs.runCommand "countersign-test-keys" { nativeBuildInputs = [ pkgs.openssh ]; } ''
    mkdir $out
    for name in phone laptop; do
      ssh-keygen -q -t ed25519 -N "" -C "$name" -f "$out/$name"
    done
  '';
  publicKey = name: lib.removeSuffix "\n" (builtins.readFile "${keys}/${name}.pub");
  server = "http://127.0.0.1:8470";
in
{
  name = "countersign";

  nodes.machine = {
    imports = [ self.nixosModules.default ];
    virtualisation.memorySize = 2048;
    nix.settings = {
      experimental-features = [
        "nix-command"
        "flakes"
      ];
      substituters = lib.mkForce [ ];
      # The demo's builders run /bin/sh from the host, as on Debian.
      sandbox = false;
      flake-registry = "";
    };
    services.countersign = {
      enable = true;
      # The demo's flake names its host `demo`.
      hostName = "demo";
      repository.url = "/srv/config";
      approvers.phone.ssh = publicKey "phone";
      approvers.laptop.ssh = publicKey "laptop";
      threshold = 2;
    };
    environment.systemPackages = [
      pkgs.curl
      pkgs.git
      pkgs.socat
    ];
  };

  testScript = ''
    import json

    machine.wait_for_unit("countersign-activator.service")
    machine.wait_for_unit("countersign.service")
    machine.wait_until_succeeds("curl -sf ${server}/api/v1/health")

    with subtest("the socket is open to the server's group only"):
        owner = machine.succeed("stat -c '%a %U %G' /run/countersign/activator.sock").strip()
        assert owner == "660 root countersign", owner
        machine.fail("runuser -u nobody -- socat -u /dev/null UNIX-CONNECT:/run/countersign/activator.sock")

    with subtest("the server's user cannot change what the activator trusts"):
        machine.fail("runuser -u countersign -- sh -c 'echo x >> /etc/countersign/policy.toml'")
        machine.fail("runuser -u countersign -- touch /var/lib/countersign-activator/injected")
        machine.fail("runuser -u countersign -- ln -s /nix/store /nix/var/nix/profiles/injected")
        machine.fail("runuser -u countersign -- touch /nix/store/injected")

    with subtest("the demo makes a repository with a NixOS-shaped flake"):
        machine.succeed("countersign demo --unattended --dir /tmp/demo >&2")
        machine.succeed("cp -r /tmp/demo/repo /srv/config && chown -R countersign: /srv/config")
        machine.succeed("mkdir -p /root/keys && cp ${keys}/phone ${keys}/laptop /root/keys && chmod 600 /root/keys/*")

    with subtest("two approvals switch the system"):
        created = machine.succeed(
            "countersign propose --server ${server} --key /root/keys/phone --wait"
        )
        number = int(created.split()[0])
        statement = json.loads(machine.succeed(
            f"countersign show {number} --server ${server} --key /root/keys/phone --json"
        ))
        for approver in ["phone", "laptop"]:
            machine.succeed(
                f"countersign approve {number} --server ${server} --key /root/keys/{approver} --yes"
            )
        machine.wait_until_succeeds(
            f"countersign show {number} --server ${server} --key /root/keys/phone --json"
            " | grep -q '\"state\": *\"deployed\"'"
        )
        target = statement["statement"]["target"]
        profile = machine.succeed("readlink -f /nix/var/nix/profiles/system").strip()
        assert profile == target, (profile, target)
        machine.succeed(f"grep -qx 'switch {target}' /tmp/demo/switch-to-configuration.log")
  '';
}
