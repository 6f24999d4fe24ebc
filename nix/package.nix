# The countersign package: the `countersign` command (server, approver
# commands, audit check, demo) and the privileged `countersign-activator`.
{
  lib,
  rustPlatform,
  makeWrapper,
  git,
  openssh,
  nix,
}:

let
  workspace = (lib.importTOML ../Cargo.toml).workspace.package;
in
rustPlatform.buildRustPackage {
  pname = "countersign";
  inherit (workspace) version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../crates
    ];
  };
  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [
    "--package"
    "countersign"
    "--package"
    "countersign-activator"
  ];

  # The tests run real git, Nix builds, ssh-keygen and, as root, a
  # nix-daemon with test users; none of that works in the build sandbox.
  # Run them with scripts/test on a machine with Nix instead.
  doCheck = false;

  nativeBuildInputs = [ makeWrapper ];

  # git, ssh-keygen and nix are found on PATH. They are appended, so that
  # the PATH of a NixOS unit (with the system's own Nix, the version the
  # daemon runs) comes first.
  postInstall = ''
    wrapProgram $out/bin/countersign \
      --suffix PATH : ${
        lib.makeBinPath [
          git
          openssh
          nix
        ]
      }
    wrapProgram $out/bin/countersign-activator \
      --suffix PATH : ${lib.makeBinPath [ nix ]}
  '';

  meta = {
    description = "Deploy NixOS configurations only after a quorum of devices signs the exact change";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "countersign";
    platforms = lib.platforms.linux;
  };
}
