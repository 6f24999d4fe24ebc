# Stand-ins for the NixOS options that services.countersign sets, so that
# the module evaluates with nixpkgs' lib alone: no nixpkgs package set and
# no NixOS module tree. They accept any value and check nothing, so the
# real NixOS types are checked only by the NixOS test in the flake.
{ lib, ... }:

let
  inherit (lib) mkOption types;

  # A value that passes for a package in option types and string
  # interpolation, without building anything.
  stubPackage = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };

  freeform = mkOption {
    type = types.attrsOf types.anything;
    default = { };
  };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    networking.hostName = mkOption {
      type = types.str;
      default = "nixos";
    };
    environment.etc = freeform;
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    users.users = freeform;
    users.groups = freeform;
    systemd.services = freeform;
    systemd.sockets = freeform;
    services.nginx = freeform;
    security.acme = freeform;
    nix.settings = freeform;
    nix.package = mkOption {
      type = types.package;
      default = stubPackage "nix";
    };
    systemd.package = mkOption {
      type = types.package;
      default = stubPackage "systemd";
    };
  };

  config._module.args.pkgs = {
    countersign = stubPackage "countersign";
    git = stubPackage "git";
    openssh = stubPackage "openssh";
  };
}
