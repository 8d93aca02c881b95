# Shared by the benchmarks that run berth with containers (bench/deploy.sh,
# bench/ingress.sh); sourced from the repository root after scripts/lib.sh, with
# BENCH_NAME, BIN and SMOKE set and die/log defined. It gives the run names of its
# own (a 4-character tag in every bridge, veth, netns, nftables table and cgroup, an
# address pool no route on the machine touches), a temp dir $T, a cleanup on exit
# that removes all of it even after a failure and fails the run if anything is left,
# and helpers to talk to the daemon and push images through /v2 without Docker.
#
# A benchmark may define bench_cleanup_hook (run first in the cleanup) and
# bench_leftovers_hook (more lines for the leftover check), and sets
# VERDICT_PRINTED=1 once its last line is out.

TAG=$(python3 -c 'import secrets, string; print("".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(4)))')
LINK_PREFIX="b${BENCH_NAME:0:1}$TAG"        # bridges bXXXXX0, veths bXXXXXv<8>: 15 characters at most
NETNS_PREFIX="berth-bench-$TAG-"
NFT_TABLE="berth_bench_$TAG"
CG_PREFIX="berth-bench-$TAG"
POOL_BYTE=""
IN_USE=$(ip -4 route show; ip -4 addr show)
for _ in $(seq 1 20); do
    b=$((220 + RANDOM % 30))
    if ! grep -qE "(^|inet )10\.$b\." <<<"$IN_USE"; then
        POOL_BYTE=$b
        break
    fi
done
[ -n "$POOL_BYTE" ] || die "no free 10.220-249.0.0/16 pool on this machine"
POOL="10.$POOL_BYTE.0.0/16"

# berth and runc put containers at the same relative path in every controller: the
# deepest of this process's own cgroups (cgroup v1 controllers), or the unified one.
CG_BASE=$(awk -F: '
    $2 ~ /(^|,)(memory|cpu|cpuacct|pids|blkio)(,|$)/ { if (length($3) > length(v1)) v1 = $3 }
    $1 == "0" && $2 == "" { v2 = $3 }
    END { p = (v1 != "") ? v1 : v2; sub(/\/$/, "", p); print p }' /proc/self/cgroup)

T=$(mktemp -d -t "berth-bench-$BENCH_NAME.XXXXXX")
API_PORT="" HTTP_PORT="" BERTH_PID="" AUTH="" SVC=""
VERDICT_PRINTED=0

stop_pid() {
    local pid=$1 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop within 30 s of SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# What this run left on the machine, one line each (empty when nothing).
leftovers() {
    ip netns list 2>/dev/null | awk -v p="$NETNS_PREFIX" 'index($1, p) == 1 { print "netns " $1 }'
    nft list tables 2>/dev/null | awk -v t="$NFT_TABLE" '$3 == t { print "nftables table " t }'
    ip -o link show 2>/dev/null | awk -F': ' -v p="$LINK_PREFIX" '{ sub(/@.*/, "", $2) } index($2, p) == 1 { print "link " $2 }'
    find /sys/fs/cgroup -mindepth 1 -maxdepth 8 -type d -name "$CG_PREFIX*" 2>/dev/null | sed 's/^/cgroup /'
    awk -v t="$T" 'index($2, t) == 1 { print "mount " $2 }' /proc/mounts
    [ ! -e "$T" ] || echo "dir $T"
    local p cmd
    for p in /proc/[0-9]*; do
        cmd=$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
        case "$cmd" in *"$T"*) echo "process ${p#/proc/} ${cmd:0:120}" ;; esac
    done
    if declare -F bench_leftovers_hook >/dev/null; then bench_leftovers_hook; fi
}

bench_cleanup() {
    local rc=$? failure="" left id p cmd d m
    set +e
    # A signal names the failure even when what it cut short failed first.
    failure=$(cat "$T/interrupted" 2>/dev/null || head -n 1 "$T/failure" 2>/dev/null)
    if [ "$rc" -ne 0 ] && [ -f "$T/berth.log" ]; then
        log "the daemon's last log lines:"
        tail -n 30 "$T/berth.log" >&2
    fi
    if declare -F bench_cleanup_hook >/dev/null; then bench_cleanup_hook; fi
    # The service first, through the API: it removes the replicas, their netns and links.
    if [ -n "$SVC" ] && [ -n "$BERTH_PID" ] && kill -0 "$BERTH_PID" 2>/dev/null; then
        curl -sS -o /dev/null --max-time 60 -X DELETE -H "Authorization: Bearer $AUTH" \
            "http://127.0.0.1:$API_PORT/v1/services/$SVC" || log "could not delete the service"
    fi
    stop_pid "$BERTH_PID"
    # What the daemon did not get to remove: replicas (their shims outlive the daemon
    # by design) and its network and cgroups.
    for id in $(runc --root "$T/run/runc" list -q 2>/dev/null); do
        runc --root "$T/run/runc" delete --force "$id" >/dev/null 2>&1
    done
    for p in /proc/[0-9]*; do
        cmd=$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
        case "$cmd" in *"$T"*) kill -KILL "${p#/proc/}" 2>/dev/null ;; esac
    done
    nft delete table inet "$NFT_TABLE" 2>/dev/null
    for d in $(ip netns list 2>/dev/null | awk -v p="$NETNS_PREFIX" 'index($1, p) == 1 { print $1 }'); do
        ip netns delete "$d" 2>/dev/null
    done
    for d in $(ip -o link show 2>/dev/null | awk -F': ' -v p="$LINK_PREFIX" '{ sub(/@.*/, "", $2) } index($2, p) == 1 { print $2 }'); do
        ip link delete "$d" 2>/dev/null
    done
    for d in $(find /sys/fs/cgroup -mindepth 1 -maxdepth 8 -type d -name "$CG_PREFIX*" 2>/dev/null); do
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    for m in $(awk -v t="$T" 'index($2, t) == 1 { print length($2), $2 }' /proc/mounts | sort -rn | cut -d' ' -f2); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    rm -rf "$T"
    left=$(leftovers)
    if [ -n "$left" ]; then
        printf '%s\n' "$left" | sed "s/^/bench\/$BENCH_NAME: left behind: /" >&2
        failure="left behind: $(printf '%s\n' "$left" | head -n 3 | paste -sd ';' -)"
        rc=1
    fi
    # A full run that missed its target exits 1 after its verdict: that stays the last line.
    if [ -n "$left" ] || { [ "$rc" -ne 0 ] && [ "$VERDICT_PRINTED" = 0 ]; }; then
        printf '%s: FAILED (%s)\n' "$BENCH_NAME" "${failure:-exit status $rc}"
    fi
    exit "$rc"
}
trap bench_cleanup EXIT
# A signal would run the EXIT trap with a status of 0: turn it into a failure.
interrupted() { printf 'interrupted by SIG%s\n' "$1" >"$T/interrupted"; exit "$2"; }
trap 'interrupted INT 130' INT
trap 'interrupted TERM 143' TERM
trap 'interrupted HUP 129' HUP

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
API_PORT=$(free_port)
HTTP_PORT=$(free_port)
API="http://127.0.0.1:$API_PORT"

# The run's own names in berth's configuration; a benchmark appends its sections.
bench_config() {
    cat <<EOF
run_dir = "$T/run"

[runtime]
cgroup_prefix = "$CG_PREFIX"

[network]
pool = "$POOL"
link_prefix = "$LINK_PREFIX"
netns_prefix = "$NETNS_PREFIX"
nft_table = "$NFT_TABLE"
EOF
}

alive() { kill -0 "$BERTH_PID" 2>/dev/null || die "berth died"; }

# call METHOD PATH EXPECTED_STATUS [JSON_BODY]; prints the response body.
call() {
    local method=$1 path=$2 want=$3 body=${4:-} status
    local args=(-sS -o "$T/resp" -w '%{http_code}' -X "$method")
    [ -z "$AUTH" ] || args+=(-H "Authorization: Bearer $AUTH")
    [ -z "$body" ] || args+=(-H 'Content-Type: application/json' --data "$body")
    status=$(curl "${args[@]}" "$API$path") || { alive; die "$method $path: curl failed"; }
    if [ "$status" != "$want" ]; then
        cat "$T/resp" >&2
        die "$method $path answered $status, expected $want"
    fi
    cat "$T/resp"
}

# bench_login: the first admin (bench / bench-password-1) from the bootstrap token,
# a session for AUTH, and a project `bench` in PROJECT.
bench_login() {
    AUTH=$(cat "$T/data/bootstrap-token")
    call POST /v1/bootstrap 201 '{"username":"bench","password":"bench-password-1"}' >/dev/null
    AUTH=""
    AUTH=$(call POST /v1/auth/login 200 '{"username":"bench","password":"bench-password-1"}' | jq -er .token)
    PROJECT=$(call POST /v1/projects 201 '{"name":"bench"}' | jq -er .id)
}

# Images without Docker: uncompressed tar layers, an OCI config and manifest, each
# blob in one monolithic POST, the manifest PUT.
case "$(uname -m)" in
    x86_64) ARCH=amd64 ;;
    aarch64) ARCH=arm64 ;;
    *) ARCH=$(uname -m) ;;
esac
sha() { sha256sum "$1" | cut -d' ' -f1; }
tar_dir() { tar -C "$1" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$2" .; }
layer() {
    jq -cn --arg d "sha256:$(sha "$1")" --argjson s "$(stat -c %s "$1")" \
        '{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $d, size: $s}'
}
# push_blob REPO FILE
push_blob() {
    local status
    status=$(curl -sS -o "$T/resp" -w '%{http_code}' -X POST -H "Authorization: Bearer $AUTH" \
        -H 'Content-Type: application/octet-stream' --data-binary "@$2" \
        "$API/v2/$1/blobs/uploads/?digest=sha256:$(sha "$2")") || die "push of $2: curl failed"
    [ "$status" = 201 ] || { cat "$T/resp" >&2; die "push of blob $2 answered $status"; }
}
# push_image REPO TAG CMD_JSON LAYER_TAR...: pushes the layers (already pushed ones
# again: a no-op for the registry), a config running CMD_JSON, and the manifest under
# TAG; prints the manifest's digest.
push_image() {
    local repo=$1 tag=$2 cmd=$3 f diff_ids="[]" layers="[]" status name
    name="$T/img-${1//\//-}-$2"
    shift 3
    for f in "$@"; do
        push_blob "$repo" "$f"
        diff_ids=$(jq -c --arg d "sha256:$(sha "$f")" '. + [$d]' <<<"$diff_ids")
        layers=$(jq -c --argjson l "$(layer "$f")" '. + [$l]' <<<"$layers")
    done
    jq -cn --arg arch "$ARCH" --argjson cmd "$cmd" --argjson ids "$diff_ids" '{
        architecture: $arch, os: "linux", config: {Cmd: $cmd, Env: ["PATH=/bin:/usr/sbin:/usr/bin"]},
        rootfs: {type: "layers", diff_ids: $ids}}' | tr -d '\n' >"$name.config.json"
    push_blob "$repo" "$name.config.json"
    jq -cn --arg cd "sha256:$(sha "$name.config.json")" --argjson cs "$(stat -c %s "$name.config.json")" \
        --argjson layers "$layers" '{
        schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
        layers: $layers}' | tr -d '\n' >"$name.manifest.json"
    status=$(curl -sS -o "$T/resp" -w '%{http_code}' -X PUT -H "Authorization: Bearer $AUTH" \
        -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "@$name.manifest.json" \
        "$API/v2/$repo/manifests/$tag") || die "manifest $repo:$tag: curl failed"
    [ "$status" = 201 ] || { cat "$T/resp" >&2; die "manifest $repo:$tag answered $status"; }
    echo "sha256:$(sha "$name.manifest.json")"
}

# wrk's latency as milliseconds (it prints e.g. 850.00us, 3.21ms, 1.02s, 1.50m).
ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000; else if (u != "ms") n = -1
        printf "%.2f", n }'
}
# read_wrk OUT WHAT: checks one wrk run's output file (any non-2xx answer or socket
# error fails the benchmark, naming WHAT) and sets RPS and P99_MS from it.
read_wrk() {
    local out=$1 what=$2 errs p99
    if grep -q 'Non-2xx or 3xx responses' "$out"; then
        cat "$out" >&2
        die "some answers from $what under load were not 2xx: $(grep 'Non-2xx or 3xx responses' "$out")"
    fi
    errs=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    if [ "${errs:-0}" != 0 ]; then
        cat "$out" >&2
        die "wrk against $what had socket errors: $(grep 'Socket errors:' "$out")"
    fi
    RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    [ -n "$RPS" ] && [ -n "$p99" ] || { cat "$out" >&2; die "could not read req/s and p99 from wrk's output"; }
    P99_MS=$(ms "$p99")
    [ "$P99_MS" != "-1.00" ] || die "unknown latency unit in $p99"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "inf" }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
