#!/usr/bin/env bash
# Set up a Debian 12 / Ubuntu 22.04+ machine for berth and run the daemon in dev mode.
#
#   sudo bash scripts/dev.sh [extra `berth serve` flags]
#
# Installs the runtime and build dependencies with apt-get (only the missing ones),
# builds the release binary, then replaces itself with
# `berth serve --dev --data-dir ./.berth-dev`. On the first start the daemon prints
# where the bootstrap token is and the curl that creates the first super-admin.
# Safe to run again: installed packages are skipped and cargo rebuilds only what changed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGES=(build-essential pkg-config curl jq runc iproute2 nftables ca-certificates)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# Finds cargo. Under sudo, PATH is reset and rustup lives in the invoking user's
# home, so look there too. Sets CARGO (the binary) and BUILD_AS (a user to build as,
# so target/ stays owned by whoever will edit the code, or empty).
find_cargo() {
    BUILD_AS=""
    if CARGO=$(command -v cargo 2>/dev/null); then
        return
    fi
    if [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
        CARGO="${HOME:-/root}/.cargo/bin/cargo"
        export PATH="$(dirname "$CARGO"):$PATH"
        return
    fi
    if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        local home
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [ -n "$home" ] && [ -x "$home/.cargo/bin/cargo" ]; then
            CARGO="$home/.cargo/bin/cargo"
            BUILD_AS="$SUDO_USER"
            return
        fi
    fi
    die "cargo not found. Install the Rust toolchain with rustup (see https://rustup.rs), open a new shell so ~/.cargo/bin is on PATH, then run this again"
}

install_packages
find_cargo

log "building target/release/berth (the first build takes a few minutes)"
if [ -n "$BUILD_AS" ]; then
    sudo -u "$BUILD_AS" -H env "PATH=$(dirname "$CARGO"):$PATH" cargo build --release --bin berth
else
    "$CARGO" build --release --bin berth
fi

log "starting berth in dev mode (state in ./.berth-dev; Ctrl-C stops it)"
exec target/release/berth serve --dev --data-dir ./.berth-dev "$@"
