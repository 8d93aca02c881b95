#!/usr/bin/env bash
# Everything CI checks, in the order CI checks it.
#
#   bash scripts/test.sh          # in a root shell
#   sudo bash scripts/test.sh     # from an account with sudo
#
# 1. installs the system packages the tests drive for real (apt-get, missing ones only),
#    the Python OpenAPI validator (in a venv at .venv-test, put first on PATH), and
#    node with the browser test's npm modules (npm ci in tests/browser);
# 2. cargo fmt --check;
# 3. cargo clippy --all-targets -- -D warnings;
# 4. cargo test --all-targets (unit tests and the integration binary tests/it);
# 5. the runtime and engine integration tests again, inside a pure cgroup v2 VM under
#    qemu (scripts/cgroup-v2-vm.sh; this host is cgroup v1 hybrid);
# 6. every example of the README, run literally against command 1's daemon
#    (scripts/readme-check.sh);
# 7. the .deb (scripts/deb-vm.sh): built, checked with lintian and systemd-analyze
#    verify, then installed in a Debian 12 VM with systemd as PID 1: bootstrap, a
#    deployed service through the ingress, a reboot, remove and purge;
# 8. every benchmark in bench/ in smoke mode (short runs that check the benchmark
#    works, not that targets are met), on the release build.
#
# Stops at the first failure. Root is needed: the integration tests run runc, create
# network namespaces and nftables tables. A test or script that cannot run here (a
# tool missing) fails, under CI=true always, elsewhere unless BERTH_ALLOW_SKIP=1
# (adr/013); this script neither sets nor clears CI (.ci/run sets it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

PACKAGES=(
    build-essential pkg-config ca-certificates curl jq sqlite3 wrk runc iproute2 nftables
    mount tar gzip python3 python3-pip python3-venv
    # real registry clients and the reference registry the benchmark compares against
    docker.io skopeo docker-registry busybox-static openssl
    # Git sources: the system git berth clones with (and its http-backend the tests serve
    # repositories with), and sshd for clones over ssh with a deploy key
    git openssh-server openssh-client
    # the builder of Upload and Git deployments (tests/it/builds.rs, bench/build.sh)
    buildah
    # htpasswd (bcrypt) for the registry with Basic auth that external pulls are tested against
    apache2-utils
    # the pure cgroup v2 VM the runtime tests also run in (scripts/cgroup-v2-vm.sh)
    qemu-system-x86 linux-image-amd64 cpio
    # promtool, which checks GET /metrics (the only Debian package that ships it)
    prometheus
    # the .deb: built with dpkg tooling, checked by lintian and systemd-analyze, then
    # installed in a Debian 12 VM with systemd as PID 1 built by mmdebstrap (scripts/deb-vm.sh)
    dpkg-dev binutils lintian systemd mmdebstrap e2fsprogs
    # ACME against a real CA on loopback (tests/it/acme.rs), and the reverse proxy the
    # ingress benchmark compares against (bench/ingress.sh)
    pebble nginx
    # the system time zones job schedules are read in (tests/it/jobs.rs: Europe/Paris);
    # "required" on Debian, but minimal images leave it out
    tzdata
    # the browser the console page is tested in (tests/it/browser.rs), driven by
    # playwright-core from npm (tests/browser; node and npm: install_node below)
    chromium
)
VENV="$ROOT/.venv-test"
STARTED=$SECONDS
STEP="setup"

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

finish() {
    local rc=$?
    local took=$((SECONDS - STARTED))
    if [ "$rc" -eq 0 ]; then
        printf '\ntest.sh: PASS (fmt, clippy, tests, cgroup v2 VM, README examples, .deb in a systemd VM, benchmarks in smoke mode) in %ss\n' "$took"
    else
        printf '\ntest.sh: FAIL at step "%s" (exit %s) after %ss\n' "$STEP" "$rc" "$took" >&2
    fi
}
trap finish EXIT

step() {
    STEP="$1"
    log "$1"
}

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# The integration test validates /v1/openapi.json with `python3 -m openapi_spec_validator`
# or the `openapi-spec-validator` command; both must resolve to an install that has it.
venv_ok() { [ -x "$VENV/bin/python3" ] && "$VENV/bin/python3" -m pip --version >/dev/null 2>&1; }

install_validator() {
    if ! venv_ok; then
        # Also replaces a venv whose base interpreter has gone or that lacks pip.
        rm -rf "$VENV"
        python3 -m venv "$VENV" >/dev/null 2>&1 || true
    fi
    if venv_ok; then
        # Keep the venv out of git without touching the repository's .gitignore.
        [ -f "$VENV/.gitignore" ] || printf '*\n' >"$VENV/.gitignore"
        export PATH="$VENV/bin:$PATH"
        export VIRTUAL_ENV="$VENV"
        if ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
            python3 -m pip install --quiet --disable-pip-version-check openapi-spec-validator
        fi
    else
        log "python3 -m venv is unavailable; installing openapi-spec-validator for the system python3"
        rm -rf "$VENV"
        if ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
            python3 -m pip install --quiet --disable-pip-version-check openapi-spec-validator 2>/dev/null ||
                python3 -m pip install --quiet --disable-pip-version-check --break-system-packages openapi-spec-validator
        fi
    fi
    python3 -c 'import openapi_spec_validator' || die "openapi-spec-validator did not install"
    command -v openapi-spec-validator >/dev/null || die "the openapi-spec-validator command is not on PATH"
    log "openapi-spec-validator: $(command -v openapi-spec-validator)"
}

# Node and npm for the browser test's driver, from Debian unless an npm is already
# there (a NodeSource or nvm install is kept); then tests/browser's locked modules.
install_node() {
    if ! command -v npm >/dev/null 2>&1; then
        PACKAGES=(nodejs npm)
        install_packages
    fi
    command -v node >/dev/null || die "node is not on PATH after installing nodejs"
    npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
    log "node $(node --version), playwright-core $(node -p 'require("./tests/browser/node_modules/playwright-core/package.json").version')"
}

# Under sudo, PATH is reset and rustup lives in the invoking user's home; use that
# toolchain (as root, since the tests need root).
find_cargo() {
    command -v cargo >/dev/null 2>&1 && return
    if [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
        export PATH="${HOME:-/root}/.cargo/bin:$PATH"
        return
    fi
    if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        local home
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [ -n "$home" ] && [ -x "$home/.cargo/bin/cargo" ]; then
            export PATH="$home/.cargo/bin:$PATH"
            export RUSTUP_HOME="${RUSTUP_HOME:-$home/.rustup}"
            export CARGO_HOME="${CARGO_HOME:-$home/.cargo}"
            return
        fi
    fi
    die "cargo not found. Install the Rust toolchain with rustup (see https://rustup.rs), open a new shell so ~/.cargo/bin is on PATH, then run this again"
}

step "system packages"
install_packages
step "python tools"
install_validator
step "node and the browser test's modules"
install_node
step "toolchain"
find_cargo
cargo --version
cargo fmt --version
cargo clippy --version

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --all-targets"
LEFTOVER_BASELINE=$(mktemp)
bash scripts/check-leftovers.sh --record "$LEFTOVER_BASELINE"
cargo test --all-targets

step "cgroup v2 VM: runtime tests"
bash scripts/cgroup-v2-vm.sh

step "README examples (scripts/readme-check.sh)"
bash scripts/readme-check.sh

step "nothing left behind by the tests (mounts, netns, links, nftables, cgroups, processes)"
bash scripts/check-leftovers.sh --since "$LEFTOVER_BASELINE"
rm -f "$LEFTOVER_BASELINE"

step "cargo build --release (for the .deb and the benchmarks)"
cargo build --release --bin berth

step "the .deb: lintian, systemd-analyze, install in a systemd VM (scripts/deb-vm.sh)"
bash scripts/deb-vm.sh

shopt -s nullglob
benches=(bench/*.sh)
[ "${#benches[@]}" -gt 0 ] || die "no benchmarks found in bench/"
for b in "${benches[@]}"; do
    step "BENCH_SMOKE=1 $b"
    BENCH_SMOKE=1 bash "$b"
done
STEP="done"
