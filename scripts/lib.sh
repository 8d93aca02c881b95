# Shared by the scripts in scripts/ and bench/ (sourced from the repository root;
# install_packages needs PACKAGES, log and die defined first).

# The packages of PACKAGES that dpkg does not have installed, one a line.
missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            printf '%s\n' "$p"
        fi
    done
}

# Installs what is missing of PACKAGES with apt-get (which needs root).
install_packages() {
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
        log "no apt-get here; make sure these are installed yourself: ${PACKAGES[*]}"
        return
    fi
    local missing
    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "system packages already installed"
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "missing packages: ${missing[*]}; run this as root (bash $0 in a root shell, or sudo bash $0)"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Packages such as nginx and docker.io start their service when installed; the
    # tests start their own on free ports, so no daemon is started here (and a busy
    # port 80 cannot fail the install). A policy the machine already has is kept.
    local policy=/usr/sbin/policy-rc.d added=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added=1
    fi
    local rc=0
    { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } || rc=$?
    [ -z "$added" ] || rm -f "$policy"
    [ "$rc" -eq 0 ] || die "apt-get install failed (exit $rc)"
}

# A need of a script that is not met (a tool, root, a kernel), named by the
# arguments: such a script never passes silently (adr/013). Under CI=true it fails.
# Elsewhere it prints `SKIPPED: <script>: <need>` and stops: with status 0 when
# BERTH_ALLOW_SKIP=1, else 1.
skip() {
    local script=${0#"$PWD"/}
    if [ "${CI:-}" = true ]; then
        printf '%s: error: %s (required under CI=true)\n' "$script" "$*" >&2
        exit 1
    fi
    printf 'SKIPPED: %s: %s\n' "$script" "$*" >&2
    if [ "${BERTH_ALLOW_SKIP:-}" = 1 ]; then
        exit 0
    fi
    printf '%s: a run that skipped does not pass (BERTH_ALLOW_SKIP=1 lets it)\n' "$script" >&2
    exit 1
}

# skip unless TOOL runs: need_tool TOOL PACKAGE
need_tool() {
    command -v "$1" >/dev/null 2>&1 || skip "$1 is not installed (apt-get install $2)"
}

# bench_die NAME MESSAGE...: a benchmark's failure: the error on stderr and, as the
# last line on stdout, `NAME: FAILED (...)`; once the benchmark's temp dir $T exists
# the message goes to $T/failure instead, for its cleanup to print last (so a die
# inside $(...) is reported too).
bench_die() {
    local name=$1
    shift
    printf 'bench/%s: error: %s\n' "$name" "$*" >&2
    if [ -n "${T:-}" ] && [ -d "$T" ]; then
        printf '%s\n' "$*" >>"$T/failure"
    else
        printf '%s: FAILED (%s)\n' "$name" "$*"
    fi
    exit 1
}

# start_berth API_ADDR HTTP_LISTEN [FAIL]: a benchmark's daemon: "$BIN" serve --dev on
# $T/data with $T/berth.toml, its output in $T/berth.log, none of the caller's BERTH_*
# variables (berth reads them as configuration and refuses unknown ones, BERTH_BIN
# among them). Sets BERTH_PID at once (for the caller's cleanup), then waits up to
# 30 s for /healthz; on failure calls FAIL (default die) with the reason. The HTTPS
# listener takes $HTTPS_LISTEN, else a free loopback port.
start_berth() {
    local api=$1 http=$2 fail=${3:-die} i
    # shellcheck disable=SC2046  # one -u per variable, split on purpose
    env $(env | awk -F= '/^BERTH_/ { printf "-u %s ", $1 }') BERTH_LOG=warn "$BIN" serve --dev \
        --data-dir "$T/data" --api-listen "$api" --http-listen "$http" --https-listen "${HTTPS_LISTEN:-127.0.0.1:0}" \
        --config "$T/berth.toml" \
        >"$T/berth.log" 2>&1 &
    BERTH_PID=$!
    for i in $(seq 1 300); do
        curl -fsS -o /dev/null "http://$api/healthz" 2>/dev/null && return 0
        kill -0 "$BERTH_PID" 2>/dev/null || { tail -50 "$T/berth.log" >&2; "$fail" "berth exited during start-up"; }
        sleep 0.1
    done
    tail -50 "$T/berth.log" >&2
    "$fail" "berth did not answer /healthz within 30 s"
}
