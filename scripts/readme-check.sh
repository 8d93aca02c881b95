#!/usr/bin/env bash
# Runs the README's examples, literally, against a fresh dev daemon started by
# command 1. scripts/test.sh runs it (so CI does); by hand, as root:
#
#   bash scripts/readme-check.sh
#
# 1. Starts command 1, `bash scripts/dev.sh`, with its state in a temp dir
#    (BERTH_DATA_DIR), the API and the ingress on free loopback ports (--api-listen,
#    --http-listen, --https-listen), and waits until it answers /healthz. Its containers get names of
#    this run's own, like the integration tests' (BERTH_NETWORK_*, BERTH_RUNTIME_*): an
#    address pool, a /20 of 10.200.0.0-10.254.255.255 overlapping no route here,
#    links named rd<tag>…, netns berth-it-readme-<tag>-…, the nftables table
#    berth_it_readme_<tag> and the cgroup subtree berth-it-readme-<tag>; the temp dir
#    is /tmp/berth-it-readme.*. So its names never meet another daemon's (the pool
#    rarely does), and scripts/check-leftovers.sh sees whatever would remain. Old replicas drain for 1 s
#    and get 2 s between SIGTERM and SIGKILL (BERTH_DEPLOY_*), so rollouts are quick.
# 2. Starts a private Docker engine for the registry examples (its own data root, exec
#    root, socket and client config, as TESTING.md shows; no bridge, no iptables).
# 3. Takes every ```sh block of README.md in order, except a block right after a
#    `<!-- readme-check: skip: <why> -->` line, and runs them as one bash script
#    (`set -euo pipefail`, so the variables of one block reach the next), with the
#    same substitutions in every block: `127.0.0.1:7420` becomes the daemon's API
#    address, `127.0.0.1:8080` its ingress and `.berth-dev` its temp state dir. A
#    command is the shortest run of lines that `bash -n` accepts (so a loop or a
#    quoted string may span lines). The status of every curl is asserted: the status
#    in the comment that ends the command (`# 201`, `# 403 {...}`), else any 2xx (a
#    curl in a loop, each time it runs); every other command must exit 0.
# 4. Checks that the README names every API token scope of src/auth/scopes.rs.
#
# Stops the daemon and the engine by their pids, also when a step fails; then removes
# what the daemon's containers may have left under this run's names (containers in
# its runc root, mounts under its temp dir, its netns, links, nftables table and
# cgroups: nothing of any other name), removes the temp dir, and fails if anything of
# this run's names is still there. Like every script here, a missing tool fails under
# CI=true and is a SKIPPED otherwise (scripts/lib.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

say() { printf 'readme-check: %s\n' "$*" >&2; }
die() {
    printf 'readme-check: error: %s\n' "$*" >&2
    exit 1
}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

[ "$(id -u)" -eq 0 ] || skip "not root: command 1 and the docker examples need root (run it as root, or with sudo)"
for tool in curl:curl jq:jq python3:python3 docker:docker.io dockerd:docker.io skopeo:skopeo runc:runc ip:iproute2 \
    nft:nftables; do
    need_tool "${tool%%:*}" "${tool#*:}"
done
[ -x /bin/busybox ] || skip "no /bin/busybox (apt-get install busybox-static)"

# A short dir: unix socket paths (the engine's) are limited to 108 bytes.
T=$(mktemp -d /tmp/berth-it-readme.XXXXXX)
DATA="$T/data"
BERTH_PID=""
DOCKERD_PID=""

# This run's names for what the daemon's containers make on the host.
TAG=$(python3 -c 'import secrets, string; print("".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(4)))')
LINK_PREFIX="rd$TAG"
NETNS_PREFIX="berth-it-readme-$TAG-"
NFT_TABLE="berth_it_readme_$TAG"
CGROUP_PREFIX="berth-it-readme-$TAG"

# Stops a process we started: SIGTERM, up to 30 s, then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Processes whose command line names this run's temp dir (the shims of the daemon's
# containers; dockerd and its containerd), by pid. (The pattern comes through a pipe so
# that grep's own command line does not hold it.)
our_processes() {
    { grep -laF -f <(printf '%s/\n' "$T") /proc/[0-9]*/cmdline 2>/dev/null || true; } |
        sed -n 's|^/proc/\([0-9]*\)/cmdline$|\1|p'
}

# What this run's names still hold on the host, one thing a line.
our_leftovers() {
    local p
    awk -v t="$T/" 'index($5, t) == 1 { print "mount", $5 }' /proc/self/mountinfo
    ip netns list 2>/dev/null | awk -v p="$NETNS_PREFIX" 'index($1, p) == 1 { print "netns", $1 }'
    ls /sys/class/net | { grep -E "^${LINK_PREFIX}([0-9]+|v[a-z2-7]{8})\$" || true; } | sed 's/^/link /'
    if nft list table inet "$NFT_TABLE" >/dev/null 2>&1; then
        echo "nftables inet $NFT_TABLE"
    fi
    find /sys/fs/cgroup -mindepth 1 -maxdepth 7 -type d -name "$CGROUP_PREFIX" 2>/dev/null | sed 's/^/cgroup /'
    for p in $(our_processes); do
        echo "process $p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c 1-160)"
    done
}

# Removes what the daemon's containers left under this run's names, after the daemon
# has stopped: the walkthrough deletes its service, so normally only the project's
# bridge, the nftables table and the (empty) cgroup subtree remain; after a failure,
# also containers, their shims, netns, veths and mounts. Nothing of another name.
remove_ours() {
    local id n d p
    if [ -d "$DATA/run/runc" ]; then
        for id in $(runc --root "$DATA/run/runc" list -q 2>/dev/null); do
            runc --root "$DATA/run/runc" delete --force "$id" >/dev/null 2>&1 || true
        done
    fi
    # A shim exits once its container has; give them a moment, then end the rest.
    for _ in $(seq 50); do
        [ -n "$(our_processes)" ] || break
        sleep 0.1
    done
    for p in $(our_processes); do
        kill -KILL "$p" 2>/dev/null || true
    done
    # Mounts under the temp dir (overlay roots, the engine's data root): deepest first.
    awk -v t="$T/" 'index($5, t) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    for n in $(ip netns list 2>/dev/null | awk -v p="$NETNS_PREFIX" 'index($1, p) == 1 { print $1 }'); do
        ip netns delete "$n" 2>/dev/null || true
    done
    # Veths first, then bridges.
    for n in $(ls /sys/class/net | grep -E "^${LINK_PREFIX}v[a-z2-7]{8}\$" || true) \
        $(ls /sys/class/net | grep -E "^${LINK_PREFIX}[0-9]+\$" || true); do
        ip link delete "$n" 2>/dev/null || true
    done
    if nft list table inet "$NFT_TABLE" >/dev/null 2>&1; then
        nft delete table inet "$NFT_TABLE" || true
    fi
    # The cgroup subtree, leaves first (only directories: a cgroup's files go with it).
    find /sys/fs/cgroup -mindepth 1 -maxdepth 7 -type d -name "$CGROUP_PREFIX" 2>/dev/null | while read -r d; do
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    [ -z "$BERTH_PID" ] || stop_pid "$BERTH_PID"
    if [ -n "$DOCKERD_PID" ]; then
        # dockerd stops the containerd it started; kill that one too if dockerd had to be.
        local containerd
        containerd=$(cat "$T/docker/exec/containerd/containerd.pid" 2>/dev/null || true)
        stop_pid "$DOCKERD_PID"
        if [ -n "$containerd" ] && kill -0 "$containerd" 2>/dev/null; then
            kill -KILL "$containerd" 2>/dev/null || true
        fi
    fi
    if [ "$rc" -ne 0 ] && [ -s "$T/dev.log" ]; then
        say "the last lines of command 1's output:"
        tail -40 "$T/dev.log" >&2
    fi
    local left
    left=$(our_leftovers)
    if [ -n "$left" ]; then
        say "removing what the daemon left under this run's names: ${left//$'\n'/, }"
    fi
    remove_ours
    left=$(our_leftovers)
    if [ -n "$left" ]; then
        printf 'readme-check: left behind under this run'"'"'s names:\n%s\n' "$left" >&2
        rc=1
    fi
    [ -n "$(awk -v t="$T/" 'index($5, t) == 1' /proc/self/mountinfo)" ] || rm -rf "$T"
    if [ "$rc" -ne 0 ]; then
        say "FAIL"
        exit "$rc"
    fi
}
trap cleanup EXIT

# --- 1. command 1, on a free port with a temp state dir ------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
IPORT=$(free_port)
# A /20 (room for 16 projects' /24s) in 10.200.0.0-10.254.255.255, where
# scripts/check-leftovers.sh looks, outside berth's default 10.213.0.0/16, that no
# route here overlaps: small, so two runs side by side rarely pick the same one.
POOL=$(python3 - <<'EOF'
import ipaddress, random
routes = []
for line in open("/proc/net/route").read().splitlines()[1:]:
    f = line.split()
    dest = ipaddress.IPv4Address(bytes.fromhex(f[1])[::-1])
    mask = ipaddress.IPv4Address(bytes.fromhex(f[7])[::-1])
    if int(mask):
        routes.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
free = [n for x in range(200, 255) if x != 213
        for n in ipaddress.IPv4Network(f"10.{x}.0.0/16").subnets(new_prefix=20)
        if not any(r.overlaps(n) for r in routes)]
print(random.choice(free) if free else "")
EOF
)
[ -n "$POOL" ] || die "no /20 of 10.200.0.0-10.254.255.255 is free of routes here"
say "command 1: bash scripts/dev.sh --api-listen 127.0.0.1:$PORT --http-listen 127.0.0.1:$IPORT --https-listen 127.0.0.1:0 (state in $DATA; pool $POOL, names *$TAG*)"
# dev.sh replaces itself with the daemon, so this pid is the daemon's.
BERTH_DATA_DIR="$DATA" BERTH_LOG=warn \
    BERTH_NETWORK_POOL="$POOL" BERTH_NETWORK_LINK_PREFIX="$LINK_PREFIX" BERTH_NETWORK_NETNS_PREFIX="$NETNS_PREFIX" \
    BERTH_NETWORK_NFT_TABLE="$NFT_TABLE" BERTH_RUNTIME_CGROUP_PREFIX="$CGROUP_PREFIX" \
    BERTH_DEPLOY_DRAIN_SECONDS=1 BERTH_DEPLOY_STOP_GRACE_SECONDS=2 \
    bash scripts/dev.sh --api-listen "127.0.0.1:$PORT" --http-listen "127.0.0.1:$IPORT" --https-listen 127.0.0.1:0 >"$T/dev.log" 2>&1 &
BERTH_PID=$!
# Command 1 may have to build first.
for _ in $(seq 1800); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break
    kill -0 "$BERTH_PID" 2>/dev/null || die "command 1 exited before answering"
    sleep 0.2
done
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" || die "command 1 did not answer /healthz within 6 minutes"
grep -q "bootstrap token in $DATA/bootstrap-token" "$T/dev.log" ||
    die "command 1 did not print where the bootstrap token is"

# --- 2. a private Docker engine ------------------------------------------------------
mkdir -p "$T/docker/config" "$T/bin" "$T/tmp"
printf '{}\n' >"$T/docker/daemon.json"
dockerd --config-file "$T/docker/daemon.json" --data-root "$T/docker/root" --exec-root "$T/docker/exec" \
    --pidfile "$T/docker/docker.pid" -H "unix://$T/docker/docker.sock" \
    --bridge=none --iptables=false --ip6tables=false --ip-masq=false --userland-proxy=false \
    >"$T/docker/dockerd.log" 2>&1 &
DOCKERD_PID=$!
export DOCKER_HOST="unix://$T/docker/docker.sock" DOCKER_CONFIG="$T/docker/config"
# Debian's client matches Debian's engine; another `docker` may come first on PATH.
if [ -x /usr/bin/docker ]; then
    ln -s /usr/bin/docker "$T/bin/docker"
fi
export PATH="$T/bin:$PATH"
for _ in $(seq 600); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || {
        tail -20 "$T/docker/dockerd.log" >&2
        die "dockerd exited during start-up"
    }
    sleep 0.1
done
docker info >/dev/null 2>&1 || die "dockerd did not answer within 60 s"

# --- 3. the README's sh blocks, as one script ------------------------------------------
python3 - "$ROOT/README.md" "127.0.0.1:$PORT" "127.0.0.1:$IPORT" "$DATA" >"$T/readme.sh" <<'EOF'
import re
import subprocess
import sys

readme, addr, ingress, data = sys.argv[1:]
lines = open(readme, encoding="utf-8").read().split("\n")


def complete(text):
    """Whether bash parses text as whole commands (no open quote, loop or pipe)."""
    return subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True).returncode == 0

out = []
blocks = commands = 0
i = 0
skip_next = False
while i < len(lines):
    line = lines[i]
    if line.startswith("<!-- readme-check: skip"):
        skip_next = True
    elif line.strip() == "```sh":
        start = i + 1
        i = start
        while lines[i].strip() != "```":
            i += 1
        body = lines[start:i]
        if skip_next:
            skip_next = False
        else:
            blocks += 1
            out.append(f"# --- README.md line {start} ---")
            j = 0
            while j < len(body):
                # A command: the shortest run of lines bash parses as complete.
                k = j
                while body[k].rstrip().endswith("\\") or not complete("\n".join(body[j : k + 1])):
                    k += 1
                    if k == len(body):
                        sys.exit(f"README.md line {start + j + 1}: a command that never ends")
                cmd = [
                    l.replace("127.0.0.1:7420", addr).replace("127.0.0.1:8080", ingress).replace(".berth-dev", data)
                    for l in body[j : k + 1]
                ]
                text = "\n".join(cmd)
                if text.strip() and not text.lstrip().startswith("#"):
                    commands += 1
                    out.append(f"README_LINE={start + j + 1}")
                    if re.search(r"\bcurl\b", text):
                        m = re.search(r"#\s*([1-5][0-9][0-9])\b[^#]*$", cmd[-1])
                        out.append(f"expect {m.group(1) if m else '2xx'}")
                out.append(text)
                j = k + 1
    elif line.startswith("```"):
        # Some other fence: skip to its end, and any skip marker goes with it.
        skip_next = False
        i += 1
        while not lines[i].startswith("```"):
            i += 1
    i += 1
print(f"README_BLOCKS={blocks} README_COMMANDS={commands}")
print("\n".join(out))
EOF
read -r COUNTS <"$T/readme.sh"
say "running the README's examples (${COUNTS}) against command 1's daemon"

cat >"$T/prelude.sh" <<'EOF'
set -euo pipefail
README_LINE=0
EXPECT=2xx
CURLS=0
# The status the next curl must answer: NNN, or 2xx.
expect() { EXPECT=$1; }
# curl as the README calls it, plus the check of its status (the body still goes to
# stdout, for the pipes and variables of the examples).
curl() {
    local body status
    body=$(mktemp "$CHECK_DIR/curl.XXXXXX")
    if ! status=$(command curl -o "$body" -w '%{http_code}' "$@"); then
        printf 'README line %s: curl failed\n' "$README_LINE" >&2
        return 1
    fi
    cat "$body"
    if [[ "$EXPECT" == 2xx && "$status" == 2?? ]] || [ "$status" = "$EXPECT" ]; then
        printf 'README line %s: %s\n' "$README_LINE" "$status" >>"$CHECK_DIR/statuses"
        printf '\n[README line %s: %s as expected]\n' "$README_LINE" "$status" >&2
        return 0
    fi
    printf '\nREADME line %s: expected %s, got %s: %s\n' "$README_LINE" "$EXPECT" "$status" "$(cat "$body")" >&2
    return 1
}
trap 'printf "\nREADME line %s failed (exit %s)\n" "$README_LINE" "$?" >&2' ERR
EOF
mkdir -p "$T/check"
(
    cd "$ROOT"
    export CHECK_DIR="$T/check" TMPDIR="$T/tmp"
    # The examples wait by polling with deadlines of their own; this bound only turns
    # a hang (a stream that never ends) into a failure.
    timeout --kill-after=10 1200 bash -c "source '$T/prelude.sh'; source '$T/readme.sh'" </dev/null
) >"$T/readme.out" 2>&1 || {
    rc=$?
    cat "$T/readme.out" >&2
    [ "$rc" -ne 124 ] || die "the README's examples did not end within 20 minutes"
    die "a README example failed (see above)"
}
sed 's/^/    /' "$T/readme.out" >&2
# Every curl ran (a curl in a loop at least once) and answered as the README says.
STATUSES=$(cut -d: -f1 "$T/check/statuses" | sort -u | wc -l)
EXPECTED=$(grep -c '^expect ' "$T/readme.sh")
[ "$STATUSES" -eq "$EXPECTED" ] || {
    cat "$T/readme.out" >&2
    die "$EXPECTED curl commands in the README, $STATUSES statuses checked"
}
say "every example ran; $STATUSES curl statuses as the README says"

# --- 4. every scope is in the README ------------------------------------------------------
mapfile -t scopes < <(sed -n 's/^ *(Scope::[A-Za-z]*, "\([^"]*\)"),$/\1/p' src/auth/scopes.rs)
[ "${#scopes[@]}" -ge 10 ] || die "found only ${#scopes[@]} scopes in src/auth/scopes.rs; has its ALL table changed shape?"
missing=()
for scope in "${scopes[@]}"; do
    grep -qF "\`$scope\`" README.md || missing+=("$scope")
done
[ "${#missing[@]}" -eq 0 ] || die "the README does not list these API token scopes: ${missing[*]}"
say "the README lists all ${#scopes[@]} API token scopes"
say "PASS"
