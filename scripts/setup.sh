# Installs what countersign's demo and tests need, when it is missing.
# Sourced by scripts/demo and scripts/test; safe to run again.
#
# Debian: installs the packages as root (apt-get update once, then one
# apt-get install). NixOS: expects nix, git and ssh-keygen on PATH and
# cargo from `nix develop` or the user's profile.

set -euo pipefail

countersign_missing_packages() {
    local missing=()
    command -v nix >/dev/null || missing+=(nix-bin)
    command -v git >/dev/null || missing+=(git)
    command -v ssh-keygen >/dev/null || missing+=(openssh-client)
    if [ "${COUNTERSIGN_NEED_BROWSER:-1}" = 1 ]; then
        command -v chromium >/dev/null || missing+=(chromium)
    fi
    # cc compiles the bundled SQLite of libsqlite3-sys. Its build script
    # calls pkg-config only when SQLite is linked from the system, which
    # the `bundled` feature of every rusqlite dependency rules out.
    command -v cc >/dev/null || missing+=(gcc libc6-dev)
    [ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
    echo "${missing[@]:-}"
}

countersign_setup() {
    local missing
    missing=$(countersign_missing_packages)
    if [ -n "$missing" ]; then
        if [ ! -e /etc/debian_version ]; then
            echo "countersign: missing tools ($missing); install them with" \
                "your system's package manager, then run this again" >&2
            exit 1
        fi
        local sudo=()
        if [ "$(id -u)" != 0 ]; then
            command -v sudo >/dev/null || {
                echo "countersign: missing packages ($missing) and not" \
                    "root; run this as root or install sudo" >&2
                exit 1
            }
            sudo=(sudo)
        fi
        echo "countersign: installing $missing" >&2
        "${sudo[@]}" apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" \
            apt-get install -y -qq $missing >&2
    fi
    if ! command -v cargo >/dev/null; then
        if [ -x "$HOME/.cargo/bin/cargo" ]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        else
            echo "countersign: cargo not found; install Rust 1.95 or" \
                "newer with rustup, or run 'nix develop' on NixOS" >&2
            exit 1
        fi
    fi
}

# Prints cargo's target folder for this workspace. It honours
# CARGO_TARGET_DIR and a `target-dir` in cargo's configuration, which a
# fixed `target/` would miss.
countersign_target_dir() {
    cargo metadata --no-deps --format-version 1 --locked |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}
