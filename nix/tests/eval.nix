# Evaluates services.countersign with nixpkgs' lib and the stand-ins, and
# returns plain data for `nix-instantiate --eval --strict --json`: the
# messages of failed assertions, the warnings, and what the module wrote.
{
  lib,
  configuration,
}:

let
  evaluated = lib.evalModules {
    modules = [
      ./stand-ins.nix
      ../module.nix
      configuration
    ];
  };
  inherit (evaluated) config;
in
{
  failedAssertions = map (check: check.message) (lib.filter (check: !check.assertion) config.assertions);
  inherit (config) warnings;
  etc = config.environment.etc;
  services = config.systemd.services;
  sockets = config.systemd.sockets;
  users = config.users.users;
  groups = config.users.groups;
  nginx = config.services.nginx;
  systemPackages = map (package: package.name) config.environment.systemPackages;
}
