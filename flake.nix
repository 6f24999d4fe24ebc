{
  description = "countersign: NixOS deployments that a quorum of devices approves";

  # No flake.lock is committed: `nix flake lock` (or the first `nix build`)
  # pins nixpkgs on a machine with network access.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = function: lib.genAttrs systems (system: function nixpkgs.legacyPackages.${system});
    in
    {
      # NOTE: the workspace needs Rust 1.95 or newer (rust-version in
      # Cargo.toml); an older rustc in the pinned nixpkgs fails the build.
      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nix/package.nix { };
      });

      overlays.default = final: _prev: {
        countersign = final.callPackage ./nix/package.nix { };
      };

      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.countersign.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            git
            openssh
            nix
          ];
        };
      });

      checks = forAllSystems (
        pkgs:
        import ./nix/tests/checks.nix {
          inherit pkgs self nixpkgs;
        }
      );
    };
}
