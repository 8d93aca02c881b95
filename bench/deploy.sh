#!/usr/bin/env bash
# Deployment time and the ingress's cost, against a bare container start and a direct
# request to the replica, measured in the same run.
#
#   bench/deploy.sh                  full run: 7 rounds, 5 x 2 s of wrk per path; fails when a target is missed
#   BENCH_SMOKE=1 bench/deploy.sh    2 rounds, 1 s of wrk per path; checks that everything works,
#                                    never fails on targets
#
# Runs as root (containers, network namespaces, nftables). Starts the release binary
# in dev mode with a throw-away state dir, free loopback ports and network names of
# its own (address pool, link, netns and cgroup prefixes, nftables table), so it never
# meets another daemon on the machine; builds a busybox httpd image in two versions
# (tar layers, config and manifest put through berth's /v2 with curl: no Docker) and
# makes a service with an HTTP health check every second. Then, each round, taking
# turns going first:
#  1. deploy: from just before `POST /v1/deployments` (the other version than the one
#     live, so each round rolls out a new digest; both are unpacked by two untimed
#     warm-up deployments) until `GET /v1/deployments/{id}` says `live`, polled every
#     10 ms; then checks the ingress serves the new version and waits, untimed, for the
#     old replica to be removed (`[deploy] drain_seconds = 0`);
#  2. the limit: `runc run -d` of an equivalent bundle (the same layers unpacked as its
#     rootfs, the same command and limits, a netns with a veth made beforehand, a
#     cgroup beside berth's) until `GET /` at its address answers 200, polled every
#     2 ms with a fresh connection; `runc delete --force` (untimed).
# Then wrk (2 threads, 8 connections: fewer than busybox httpd's listen backlog) on the
# small page through the ingress (Host: web.bench.localhost) and directly at the
# replica's address, taking turns.
#
# As the very last line, the deploy median as a ratio of its target (<= 2 x the bare
# start's median + one health-check interval) and the ingress's req/s and p99 as
# ratios of the direct ones (no target yet). On exit, even a failed one, it deletes
# the service through the API, stops the daemon by its pid, removes what is left under
# its names (replicas, nftables table, netns, links, cgroups, mounts, temp dir) and
# checks that nothing remains.
#
# Environment: BENCH_SMOKE=1, ROUNDS, DURATION (seconds per wrk run), WRK_ROUNDS, CONNECTIONS,
# BERTH_BIN (a prebuilt binary; otherwise `cargo build --release --bin berth` first,
# a no-op when up to date).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=${BENCH_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    ROUNDS=${ROUNDS:-2}
    DURATION=${DURATION:-1}
    WRK_ROUNDS=${WRK_ROUNDS:-1}
else
    ROUNDS=${ROUNDS:-7}
    # Each request on either path is a new TCP connection to the replica (busybox
    # closes after every answer), and each leaves a conntrack entry on the host for
    # 2 minutes: 5 x 2 s per path keeps that near 130,000 at 6,500 req/s, under the
    # usual nf_conntrack_max of 262,144 on a machine others share. Many short rounds
    # rather than a few long ones: single runs here swing by several times (see
    # bench/README.md), and the median of the rounds' ratios absorbs that.
    DURATION=${DURATION:-2}
    WRK_ROUNDS=${WRK_ROUNDS:-5}
fi
THREADS=2
# Fewer than busybox httpd's listen backlog (9): with more connections than that,
# each opening a connection per request (busybox closes after every answer, so the
# ingress cannot keep its upstream connections either), the replica's accept queue
# overflows, the SYN is dropped and retried a second later, and both p99s measure
# that retry, not the path (see bench/README.md).
CONNECTIONS=${CONNECTIONS:-8}
INTERVAL_S=1
MEMORY_MB=64
CPUS=1
PIDS=64
TARGET_BARE_FACTOR=2

# die MESSAGE: the benchmark fails with MESSAGE (bench_die in scripts/lib.sh).
die() { bench_die deploy "$@"; }
log() { printf 'bench/deploy: %s\n' "$*" >&2; }

# A need that is not met (root, a tool): a failure under CI=true, else a SKIPPED line,
# and the run does not pass unless BERTH_ALLOW_SKIP=1 (skip in scripts/lib.sh).
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
[ "$(id -u)" -eq 0 ] || skip "needs root (containers, network namespaces, nftables)"
for tool in runc:runc ip:iproute2 nft:nftables wrk:wrk curl:curl jq:jq python3:python3 \
    sha256sum:coreutils tar:tar awk:mawk ldd:libc-bin; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || skip "${tool%%:*} is not installed (apt-get install -y ${tool#*:})"
done
[ -x /bin/busybox ] || skip "/bin/busybox is not installed (apt-get install -y busybox-static)"
# A dynamically linked busybox cannot run in a rootfs that holds nothing else.
if LC_ALL=C ldd /bin/busybox >/dev/null 2>&1; then
    skip "/bin/busybox is not statically linked (apt-get install -y busybox-static)"
fi

TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -z "${BERTH_BIN:-}" ]; then
    command -v cargo >/dev/null 2>&1 || skip "cargo is not installed (rustup) and BERTH_BIN is not set"
    cargo build --release --quiet --bin berth || die "cargo build --bin berth failed"
fi
BIN=$(realpath "${BERTH_BIN:-$TARGET_DIR/release/berth}")
[ -x "$BIN" ] || die "$BIN is not an executable"

BENCH_NAME=deploy
# shellcheck source=scripts/bench-containers.sh
source scripts/bench-containers.sh
# The bare container's veth: the last /30 of the pool (projects take /24s from the start).
BARE_HOST_IP="10.$POOL_BYTE.255.253"
BARE_IP="10.$POOL_BYTE.255.254"
BARE_NETNS="${NETNS_PREFIX}bare"
BARE_VETH="${LINK_PREFIX}b0"
BARE_PEER="${LINK_PREFIX}b1"
BARE_ROOT="$T/bare-runc"
bench_cleanup_hook() {
    local id
    for id in $(runc --root "$BARE_ROOT" list -q 2>/dev/null); do
        runc --root "$BARE_ROOT" delete --force "$id" >/dev/null 2>&1
    done
}


# No drain and a short stop grace: rounds measure the rollout, not the goodbye
# (busybox httpd as PID 1 ignores SIGTERM, so each old replica takes the grace). The
# per-token rate limit (6000/min) is raised: polling a deployment every 10 ms is 6000
# requests a minute on its own.
{
    bench_config
    cat <<EOF

[api]
rate_limit_per_minute = 100000000

[deploy]
drain_seconds = 0
stop_grace_seconds = 1
health_deadline_seconds = 60
EOF
} >"$T/berth.toml"

start_berth "127.0.0.1:$API_PORT" "127.0.0.1:$HTTP_PORT"

bench_login
HOST="web.bench.localhost"
REPO="bench/web"

# The image, without Docker: layer 1 the static busybox (and /bin/sh), layer 2 the
# pages (`/` says which version, `/health` for the check).
mkdir -p "$T/img/base/bin"
cp /bin/busybox "$T/img/base/bin/busybox"
ln -s busybox "$T/img/base/bin/sh"
tar_dir "$T/img/base" "$T/img/base.tar"
declare -A DIGEST
for v in v1 v2; do
    mkdir -p "$T/img/$v/www"
    printf 'hello from %s\n' "$v" >"$T/img/$v/www/index.html"
    printf 'ok\n' >"$T/img/$v/www/health"
    tar_dir "$T/img/$v" "$T/img/$v.tar"
    DIGEST[$v]=$(push_image "$REPO" "$v" '["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]' \
        "$T/img/base.tar" "$T/img/$v.tar")
done

SVC_BODY=$(jq -cn --arg p "$PROJECT" --argjson i "$INTERVAL_S" --argjson m "$MEMORY_MB" --argjson c "$CPUS" --argjson n "$PIDS" '{
    project_id: $p, name: "web", port: 8080, replicas: 1,
    health_check: {path: "/health", interval_s: $i},
    resources: {memory_mb: $m, cpus: $c, pids: $n}}')
SVC=$(call POST /v1/services 201 "$SVC_BODY" | jq -er .id)
[ "$(call GET "/v1/services/$SVC" 200 | jq -r .default_hostname)" = "$HOST" ] || die "the service's default hostname is not $HOST"

# The timed parts, in python3 so the clock starts and stops in the process that acts.
cat >"$T/timed.py" <<'EOF'
import http.client, json, socket, subprocess, sys, time

def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)

def http_ok(host, port, path):
    """One GET on a fresh connection: whether it answered 200."""
    try:
        s = socket.create_connection((host, port), timeout=1)
    except OSError:
        return False
    try:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b" ", 2)[1:2] == [b"200"]
    except OSError:
        return False
    finally:
        s.close()

def deploy(port, token, service, repo, reference):
    """POST /v1/deployments, then GET it every 10 ms until it is live: ms to live,
    ms until it was first seen `starting` (the image resolved and unpacked), id, digest."""
    auth = {"Authorization": "Bearer " + token}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"service_id": service, "source": {"kind": "Image", "repository": repo, "reference": reference}})
    t0 = time.monotonic()
    conn.request("POST", "/v1/deployments", body, dict(auth, **{"Content-Type": "application/json"}))
    r = conn.getresponse()
    data = r.read()
    if r.status != 201:
        fail(f"POST /v1/deployments answered {r.status}: {data[:300]!r}")
    dep = json.loads(data)["id"]
    starting = None
    while True:
        conn.request("GET", f"/v1/deployments/{dep}", headers=auth)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            fail(f"GET /v1/deployments/{dep} answered {r.status}: {data[:300]!r}")
        d = json.loads(data)
        now = time.monotonic()
        if d["status"] == "starting" and starting is None:
            starting = now
        if d["status"] == "live":
            break
        if d["status"] not in ("queued", "pulling", "starting"):
            fail(f"deployment {dep} of {repo}:{reference} ended {d['status']}: {json.dumps(d)[:500]}")
        if now - t0 > 120:
            fail(f"deployment {dep} of {repo}:{reference} not live within 120 s (status {d['status']})")
        time.sleep(0.01)
    ms = lambda t: (t - t0) * 1000 if t is not None else -1
    print(f"{ms(now):.1f} {ms(starting):.1f} {dep} {d.get('image_digest', '')}")

def bare(root, bundle, cid, ip, port, log):
    """runc run -d, then GET / every 2 ms until 200: ms to 200, ms runc run took."""
    with open(log, "ab") as out:
        t0 = time.monotonic()
        r = subprocess.run(["runc", "--root", root, "run", "--detach", "--bundle", bundle, cid],
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        t_run = time.monotonic()
    if r.returncode != 0:
        fail(f"runc run -d {cid} exited {r.returncode} (log: {log})")
    while not http_ok(ip, int(port), "/"):
        if time.monotonic() - t0 > 30:
            fail(f"the bare container {cid} gave no 200 at {ip}:{port} within 30 s")
        time.sleep(0.002)
    t1 = time.monotonic()
    print(f"{(t1 - t0) * 1000:.1f} {(t_run - t0) * 1000:.1f}")

if __name__ == "__main__":
    {"deploy": deploy, "bare": bare}[sys.argv[1]](*sys.argv[2:])
EOF

# Until the service runs one replica, of deployment $1, and the ingress serves version $2.
settle() {
    local dep=$1 v=$2 s="" page=""
    for _ in $(seq 1 300); do
        s=$(call GET "/v1/services/$SVC" 200)
        page=$(curl -sS --max-time 5 -H "Host: $HOST" "http://127.0.0.1:$HTTP_PORT/" 2>/dev/null || true)
        if [ "$(jq -r --arg d "$dep" '[(.instances | length), (.instances[0].deployment_id == $d), .instances[0].status] | @tsv' <<<"$s")" = $'1\ttrue\trunning' ] \
            && [ "$page" = "hello from $v" ]; then
            return 0
        fi
        alive
        sleep 0.1
    done
    printf '%s\n' "$s" >&2
    die "after deployment $dep the service did not settle on one replica serving $v within 30 s (ingress said: ${page:-nothing})"
}

# deploy_round VERSION RECORD: one timed deployment; appends to the medians when RECORD=1.
DEPLOY_MS=() STARTING_MS=()
deploy_round() {
    local v=$1 record=$2 out ms starting dep digest
    out=$(python3 "$T/timed.py" deploy "$API_PORT" "$AUTH" "$SVC" "$REPO" "$v") || { alive; die "deploying $REPO:$v failed (see above)"; }
    read -r ms starting dep digest <<<"$out"
    [ "$digest" = "${DIGEST[$v]}" ] || die "deployment $dep runs $digest, expected $v's ${DIGEST[$v]}"
    settle "$dep" "$v"
    if [ "$record" = 1 ]; then
        DEPLOY_MS+=("$ms") STARTING_MS+=("$starting")
        printf '  round %s  deploy %s   %7.1f ms to live (starting seen at %s ms)\n' "$r" "$v" "$ms" "$starting"
    fi
}

# The bare bundle: the same two layers as one rootfs, the image's command, the
# service's limits, the netns made here, a cgroup beside berth's subtree.
mkdir -p "$T/bare/rootfs" "$BARE_ROOT"
tar -C "$T/bare/rootfs" -xf "$T/img/base.tar"
tar -C "$T/bare/rootfs" -xf "$T/img/v1.tar"
runc spec --bundle "$T/bare" || die "runc spec failed"
ip netns add "$BARE_NETNS" || die "ip netns add $BARE_NETNS failed"
ip link add "$BARE_VETH" type veth peer name "$BARE_PEER" || die "ip link add $BARE_VETH failed"
ip link set "$BARE_PEER" netns "$BARE_NETNS" || die "could not move $BARE_PEER into $BARE_NETNS"
ip addr add "$BARE_HOST_IP/30" dev "$BARE_VETH" && ip link set "$BARE_VETH" up || die "could not set up $BARE_VETH"
ip -n "$BARE_NETNS" addr add "$BARE_IP/30" dev "$BARE_PEER" && ip -n "$BARE_NETNS" link set "$BARE_PEER" up \
    && ip -n "$BARE_NETNS" link set lo up || die "could not set up the bare netns"
bundle_config() {
    jq --arg root "$T/bare/rootfs" --arg ns "/run/netns/$BARE_NETNS" --arg cg "$1" \
        --argjson mem $((MEMORY_MB << 20)) --argjson quota $((CPUS * 100000)) --argjson pids "$PIDS" '
        .process.terminal = false
        | .process.args = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
        | .process.env = ["PATH=/bin"]
        | .root = {path: $root, readonly: false}
        | .hostname = "web"
        | .linux.namespaces = [.linux.namespaces[] | if .type == "network" then .path = $ns else . end]
        | .linux.cgroupsPath = $cg
        | .linux.resources.memory = {limit: $mem}
        | .linux.resources.cpu = {quota: $quota, period: 100000}
        | .linux.resources.pids = {limit: $pids}' "$T/bare/config.json.orig" >"$T/bare/config.json"
}
mv "$T/bare/config.json" "$T/bare/config.json.orig"
BARE_MS=() BARE_RUN_MS=()
bare_round() {
    local record=$1 id out ms run_ms
    id="bare-$r-$RANDOM"
    bundle_config "$CG_BASE/$CG_PREFIX-bare/$id"
    out=$(python3 "$T/timed.py" bare "$BARE_ROOT" "$T/bare" "$id" "$BARE_IP" 8080 "$T/bare-runc.log") \
        || { cat "$T/bare-runc.log" >&2; die "the bare container start failed (see above)"; }
    read -r ms run_ms <<<"$out"
    runc --root "$BARE_ROOT" delete --force "$id" || die "runc delete --force $id failed"
    if [ "$record" = 1 ]; then
        BARE_MS+=("$ms") BARE_RUN_MS+=("$run_ms")
        printf '  round %s  runc run -d %7.1f ms to 200 (runc run %s ms)\n' "$r" "$ms" "$run_ms"
    fi
}

# Warm-up, untimed: both versions deployed once (their layers unpacked), one bare start.
r=0
deploy_round v1 0
deploy_round v2 0
bare_round 0

printf '\ndeploy to live vs runc run -d, %s round(s)\n' "$ROUNDS"
LIVE=v2
for r in $(seq 1 "$ROUNDS"); do
    if [ "$LIVE" = v1 ]; then NEXT=v2; else NEXT=v1; fi
    if [ $((r % 2)) = 1 ]; then
        deploy_round "$NEXT" 1
        bare_round 1
    else
        bare_round 1
        deploy_round "$NEXT" 1
    fi
    LIVE=$NEXT
done

ADDR=$(call GET "/v1/services/$SVC" 200 | jq -er '.instances[0].address')
REPLICA_NETNS="$NETNS_PREFIX$(call GET "/v1/services/$SVC" 200 | jq -er '.instances[0].id')"
# The replica's listen queue overflows so far (SYNs dropped at its accept queue).
overflows() {
    ip netns exec "$REPLICA_NETNS" cat /proc/net/netstat \
        | awk '$1 == "TcpExt:" { if (!n) { for (i = 2; i <= NF; i++) k[i] = $i; n = 1 } else for (i = 2; i <= NF; i++) if (k[i] == "ListenOverflows") print $i }'
}
overflows >/dev/null || die "cannot read the replica's netstat in netns $REPLICA_NETNS"
[ "$(curl -sS --max-time 5 "http://$ADDR/")" = "hello from $LIVE" ] || die "the replica at $ADDR does not serve $LIVE"

# The host's TIME_WAIT sockets towards the replica. busybox answers every request
# with `Connection: close`; wrk and the ingress close their end as soon as the answer
# is read, often before busybox's FIN arrives, so many of those connections end in
# TIME_WAIT on the host, for 60 s, on the one 4-tuple space both paths share (the
# bridge's address to the replica's). connect() draws ports from the even half of the
# ephemeral range first and scans past every port held that way: with half of them
# held, each connect() costs milliseconds (__inet_check_established) and both paths
# fall to a few hundred req/s. Each wrk run therefore starts below a seventh of the
# range, waiting for the kernel to expire them if need be.
time_wait() { ss -Htan state time-wait dst "$ADDR" | wc -l; }
read -r PORT_LO PORT_HI </proc/sys/net/ipv4/ip_local_port_range
TW_LIMIT=$(((PORT_HI - PORT_LO + 1) / 7))
if [ "$SMOKE" = 1 ]; then TW_WAIT=10; else TW_WAIT=65; fi
cool_down() {
    local waited=0
    while TW=$(time_wait) && [ "$TW" -gt "$TW_LIMIT" ]; do
        if [ "$waited" -ge "$TW_WAIT" ]; then
            log "still $TW TIME_WAIT sockets towards $ADDR after $waited s (limit $TW_LIMIT); running anyway"
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

# load NAME URL [HOST]: one wrk run; sets RPS and P99_MS. Any non-2xx answer or
# socket error fails the run.
load() {
    local name=$1 url=$2 host=${3:-} out="$T/wrk-$1-$w.txt" before
    local args=(-t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency)
    [ -z "$host" ] || args+=(-H "Host: $host")
    cool_down
    before=$(overflows)
    wrk "${args[@]}" "$url" >"$out" || { cat "$out" >&2; alive; die "wrk against $name failed"; }
    alive
    OVERFLOWS=$(($(overflows) - before))
    read_wrk "$out" "$name"
    printf '  round %s  %-8s %8.0f req/s   p99 %7s ms   %s requests; before: %s TIME_WAIT to the replica; %s SYN(s) dropped at its accept queue\n' \
        "$w" "$name" "$RPS" "$P99_MS" "$(awk '/requests in/ { print $1 }' "$out")" "$TW" "$OVERFLOWS"
}


printf '\nwrk -t%s -c%s -d%ss on GET / (%s bytes), through the ingress and at %s, %s round(s)\n' \
    "$THREADS" "$CONNECTIONS" "$DURATION" "$(printf 'hello from %s\n' "$LIVE" | wc -c)" "$ADDR" "$WRK_ROUNDS"
I_RPS=() I_P99=() D_RPS=() D_P99=() RPS_RATIOS=() P99_RATIOS=() I_OVF=0 D_OVF=0
for w in $(seq 1 "$WRK_ROUNDS"); do
    for who in $(if [ $((w % 2)) = 1 ]; then echo ingress direct; else echo direct ingress; fi); do
        if [ "$who" = ingress ]; then
            load ingress "http://127.0.0.1:$HTTP_PORT/" "$HOST"
            I_RPS+=("$RPS") I_P99+=("$P99_MS") I_OVF=$((I_OVF + OVERFLOWS))
        else
            load direct "http://$ADDR/"
            D_RPS+=("$RPS") D_P99+=("$P99_MS") D_OVF=$((D_OVF + OVERFLOWS))
        fi
    done
    RPS_RATIOS+=("$(ratio "${I_RPS[-1]}" "${D_RPS[-1]}")")
    P99_RATIOS+=("$(ratio "${I_P99[-1]}" "${D_P99[-1]}")")
done

LIVE_MED=$(median "${DEPLOY_MS[@]}")
STARTING_MED=$(median "${STARTING_MS[@]}")
BARE_MED=$(median "${BARE_MS[@]}")
BARE_RUN_MED=$(median "${BARE_RUN_MS[@]}")
TARGET_MS=$(awk -v b="$BARE_MED" -v f="$TARGET_BARE_FACTOR" -v i="$INTERVAL_S" 'BEGIN { printf "%.1f", f * b + i * 1000 }')
LIVE_RATIO=$(ratio "$LIVE_MED" "$TARGET_MS")
RPS_RATIO=$(median "${RPS_RATIOS[@]}")
P99_RATIO=$(median "${P99_RATIOS[@]}")
MODE=""
[ "$SMOKE" != 1 ] || MODE="smoke, "
s() { awk -v m="$1" 'BEGIN { printf "%.3g", m / 1000 }'; }

cat <<EOF

berth deploy benchmark (${MODE}medians of $ROUNDS round(s); wrk: $WRK_ROUNDS round(s) of ${DURATION}s)
  deploy to live   $LIVE_MED ms (first seen starting at $STARTING_MED ms; rounds ${DEPLOY_MS[*]})
  runc run -d      $BARE_MED ms to 200 (runc run itself $BARE_RUN_MED ms; rounds ${BARE_MS[*]})
  target           <= $TARGET_BARE_FACTOR x $BARE_MED + $((INTERVAL_S * 1000)) ms (one health-check interval) = $TARGET_MS ms: ratio $LIVE_RATIO
  vs bare alone    $(ratio "$LIVE_MED" "$BARE_MED") x the bare start (no target; the interval is not needed when the first probe passes)
  ingress          $(printf '%.0f' "$(median "${I_RPS[@]}")") req/s, p99 $(median "${I_P99[@]}") ms ($I_OVF SYNs dropped at the replica)
  direct           $(printf '%.0f' "$(median "${D_RPS[@]}")") req/s, p99 $(median "${D_P99[@]}") ms ($D_OVF SYNs dropped at the replica)
  ingress/direct   req/s $RPS_RATIO (rounds ${RPS_RATIOS[*]}), p99 $P99_RATIO (rounds ${P99_RATIOS[*]}); no target yet
EOF

if awk -v a="$LIVE_RATIO" 'BEGIN { exit !(a <= 1) }'; then
    TARGETS="targets=met"
else
    TARGETS="targets=missed:live"
fi
[ "$SMOKE" = 1 ] && TARGETS="$TARGETS(smoke: not enforced)"

VERDICT_PRINTED=1
printf 'deploy: live %sx target (median %s s vs %s x bare %s s + %s s interval); ingress %sx direct req/s, p99 %sx (no target) %s\n' \
    "$LIVE_RATIO" "$(s "$LIVE_MED")" "$TARGET_BARE_FACTOR" "$(s "$BARE_MED")" "$INTERVAL_S" "$RPS_RATIO" "$P99_RATIO" "$TARGETS"

if [ "$SMOKE" != 1 ] && [ "$TARGETS" != targets=met ]; then
    exit 1
fi
