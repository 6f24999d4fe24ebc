# The flake's checks: an evaluation of the module inside a real NixOS
# configuration, with each assertion provoked once, and a NixOS VM test
# of the whole flow. Both need nixpkgs; `nix flake check` runs them.
{
  pkgs,
  self,
  nixpkgs,
}:

let
  inherit (pkgs) lib;
  inherit (pkgs.stdenv.hostPlatform) system;

  phoneKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMiTUzUf/2BiGAixrGJ759SOZwWVqT/l+KkIJoB2sPJw phone";
  laptopKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID25SjFd7x4IG/P0YSZiVOlykfWonCT389LAONRh+wui laptop";

  baseModule = {
    imports = [ self.nixosModules.default ];
    nixpkgs.hostPlatform = system;
    boot.loader.grub.enable = false;
    fileSystems."/" = {
      device = "/dev/vda";
      fsType = "ext4";
    };
    system.stateVersion = "25.05";
    networking.hostName = "web1";
    services.countersign = {
      enable = true;
      repository.url = "https://git.example.org/infra/nixos.git";
      approvers.phone.ssh = phoneKey;
      approvers.laptop.ssh = laptopKey;
      threshold = lib.mkDefault 2;
      domain = "deploy.example.org";
      triggerTokenFile = "/run/keys/countersign-trigger";
    };
    security.acme = {
      acceptTerms = true;
      defaults.email = "admin@example.org";
    };
  };

  evaluate = extra: nixpkgs.lib.nixosSystem { modules = [ baseModule extra ]; };
  failedAssertions = nixos: map (check: check.message) (lib.filter (check: !check.assertion) nixos.config.assertions);

  valid = evaluate { };

  # Each case must make an assertion fail with a message that contains
  # `expected`.
  failingCases = {
    threshold-zero = {
      module.services.countersign.threshold = 0;
      expected = "threshold is 0";
    };
    threshold-above-approvers = {
      module.services.countersign.threshold = 3;
      expected = "threshold is 3";
    };
    unknown-required = {
      module.services.countersign.required = [ "tablet" ];
      expected = "required names tablet";
    };
    duplicated-key = {
      module.services.countersign.approvers.tablet.ssh = lib.replaceStrings [ " phone" ] [ " tablet" ] phoneKey;
      expected = "have the same SSH key";
    };
    trusted-server-user = {
      module.nix.settings.trusted-users = [ "@countersign" ];
      expected = "countersign user countersign a trusted Nix user";
    };
    trusted-through-group = {
      module = {
        users.users.countersign.extraGroups = [ "wheel" ];
        nix.settings.trusted-users = [ "@wheel" ];
      };
      expected = "contains @wheel";
    };
    token-in-store = {
      module.services.countersign.triggerTokenFile = lib.mkForce "/nix/store/0000-token";
      expected = "triggerTokenFile is /nix/store/0000-token";
    };
  };

  checkCase =
    name: case:
    let
      failed = failedAssertions (evaluate case.module);
    in
    if lib.any (lib.hasInfix case.expected) failed then
      name
    else
      throw "module check ${name}: no failed assertion contains \"${case.expected}\"; failed: ${builtins.toJSON failed}";

  validFailures = failedAssertions valid;
in
{
  module-evaluation =
    assert lib.assertMsg (validFailures == [ ]) "the valid configuration fails: ${builtins.toJSON validFailures}";
    pkgs.writeText "countersign-module-evaluation.json" (
      builtins.toJSON {
        # The toplevel's derivation path forces the whole system to
        # evaluate, assertions included, without building it.
        toplevel = builtins.unsafeDiscardStringContext valid.config.system.build.toplevel.drvPath;
        serverUnit = valid.config.systemd.units."countersign.service".text;
        activatorUnit = valid.config.systemd.units."countersign-activator.service".text;
        policy = valid.config.environment.etc."countersign/policy.toml".text;
        failingCases = lib.mapAttrsToList checkCase failingCases;
      }
    );

  # NOTE: written for machines with nixpkgs and KVM; it has not run on
  # the machines that develop countersign, which have neither.
  vm = pkgs.testers.runNixOSTest (import ./vm.nix { inherit self; });
}
