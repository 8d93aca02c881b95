#!/usr/bin/env bash
# Set up a Debian 12 / Ubuntu 22.04+ machine for berth and run the daemon in dev mode.
#
#   bash scripts/dev.sh [extra `berth serve` flags]         # in a root shell
#   sudo bash scripts/dev.sh [extra `berth serve` flags]    # from an account with sudo
#
# 1. Installs with apt-get, only the missing ones, what berth needs to build and run
#    (build tools, runc, iproute2, nftables, buildah for Upload and Git builds) and what the README's examples use: curl
#    and jq, and for the registry examples docker.io, skopeo and busybox-static
#    (BERTH_DEV_CLIENTS=0 leaves these three out).
# 2. Builds target/quick/berth with cargo's progress on screen, in the `quick` profile
#    defined below: the first answer comes sooner than from the release or the dev
#    build. Under sudo the build runs as the invoking user, with their toolchain, so
#    target/ stays theirs.
# 3. Replaces itself with `berth serve --dev`: the API on 127.0.0.1:7420, state in
#    ./.berth-dev (BERTH_DATA_DIR or --data-dir put it elsewhere). On the first start
#    the daemon prints where the bootstrap token is and the curl that creates the
#    first super-admin.
#
# Safe to run again: installed packages are skipped and cargo rebuilds only what changed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGES=(build-essential pkg-config curl jq runc iproute2 nftables ca-certificates buildah git)
if [ "${BERTH_DEV_CLIENTS:-1}" != 0 ]; then
    PACKAGES+=(docker.io skopeo busybox-static)
fi

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

# The `quick` profile: the release profile's defaults (no debug info, no debug
# assertions, build scripts and proc macros unoptimized) at opt-level 0, without LTO,
# in 16 codegen units, incremental; only the hashing that sits on hot paths is
# optimized (argon2 and blake2 for passwords, sha2 for blob digests, miniz_oxide for
# gzip layers). Clean builds here took 92 s of CPU (52 s wall on an idle machine),
# against 189 s at opt-level 1, 230-242 s for the release profile (opt-level 3 and
# an LTO pass) and 410 s for the dev profile (whose `package."*"` opt-level 2 also
# optimizes the proc macros, with debug info). The README has the times to the
# first answer.
QUICK=(--profile quick
    --config 'profile.quick.inherits="release"' --config 'profile.quick.opt-level=0'
    --config 'profile.quick.lto=false' --config 'profile.quick.codegen-units=16'
    --config 'profile.quick.incremental=true')
for pkg in argon2 blake2 sha2 miniz_oxide; do
    QUICK+=(--config "profile.quick.package.$pkg.opt-level=1")
done

install_packages
find_cargo

log "building target/quick/berth (a first build compiles about 150 crates: some minutes on 2 cores)"
if [ -n "$BUILD_AS" ]; then
    sudo -u "$BUILD_AS" -H env "PATH=$(dirname "$CARGO"):$PATH" cargo build --bin berth "${QUICK[@]}"
else
    "$CARGO" build --bin berth "${QUICK[@]}"
fi

log "starting berth in dev mode (state in ${BERTH_DATA_DIR:-./.berth-dev} unless --data-dir says otherwise; Ctrl-C stops it)"
exec target/quick/berth serve --dev "$@"
