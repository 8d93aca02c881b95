#!/usr/bin/env bash
# Registry push/pull speed, monolithic upload speed and daemon memory, against CNCF
# distribution, a static file server and the machine's own limits, measured in the same run.
#
#   bench/registry.sh                  full run: a 1 GiB image (4 x 256 MiB random layers), a 1 GiB blob
#   BENCH_SMOKE=1 bench/registry.sh    a 64 MiB image (4 x 16 MiB) and a 64 MiB blob; checks that
#                                      everything works, never fails on targets
#
# Cache state: cold. Every timed step starts right after an untimed
# `sync; echo 3 > /proc/sys/vm/drop_caches` (so the script needs root), so every push,
# pull and limit reads what it reads from the disk and writes into a page cache with
# nothing dirty in it, whatever ran before it: no pull gets the pages its registry's
# push left behind, and no server gets files a generator has just written.
#
# Steps, in order (each is named in the error when it fails):
#  1. writes an OCI image layout with 4 uncompressed tar layers of random bytes, and a
#     random file for the monolithic upload;
#  2. starts Debian's `docker-registry` (CNCF distribution 2.8; filesystem storage, no
#     auth), a static file server (busybox httpd) and `berth serve --dev` on free
#     loopback ports with throw-away state; bootstraps berth, logs in, creates project
#     `bench`, mints an API token;
#  3. each round (a fresh random image each): the push to distribution and to berth
#     (`skopeo copy`, berth with `--dest-creds bench:TOKEN`, sampling berth's VmRSS
#     every 0.2 s), taking turns going first; the push's limit: `dd bs=4M conv=fsync`
#     of each of the image's blob files (the same bytes) into a fresh dir; then the
#     pull from distribution, berth and the static server, taking turns going first:
#     busybox httpd serves the very blob files berth stored (hard links to
#     `<data_dir>/registry/blobs/sha256/<2 hex>/<64 hex>`) at the registry's URLs, so
#     it reads the same disk blocks and does nothing but send them (sendfile, no auth,
#     no database); then the monolithic upload's limit: `openssl dgst -sha256` of the
#     blob file and `dd ... conv=fsync` writing a copy of it, the slower of the two;
#  4. berth: one monolithic blob upload per round
#     (`POST /v2/bench/big/blobs/uploads/?digest=...` with the whole body; 201 expected),
#     and a raw GET of that blob from each registry (no target).
#
# skopeo runs with `--preserve-digests` both ways: without it, skopeo gzips the
# uncompressed layers on the way to a registry and again when writing `oci:`, and the
# benchmark would measure gzip.
#
# The last line is the verdict, each figure (medians of the rounds) next to its target
# as a ratio:
#   berth's pull <= 1.1 x the static server's; berth's push <= 1.25 x the disk limit
#   (dd) and <= 0.8 x distribution's; the monolithic upload <= 1.5 x its limit;
#   berth's RSS < 64 MiB during the pushes and pulls. berth's pull against
#   distribution's is reported without a target.
#
# Environment: BENCH_SMOKE=1, LAYER_MIB (size of each of the 4 layers), BLOB_MIB (the
# monolithic blob), ROUNDS, BERTH_BIN (a prebuilt binary; otherwise `cargo build
# --release` is run first, a no-op when up to date), BENCH_TMPDIR (where the temp dir
# goes; a full run needs about 12 GiB free there: every round's image stays in both
# registries).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=${BENCH_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    LAYER_MIB=${LAYER_MIB:-16}
    BLOB_MIB=${BLOB_MIB:-64}
else
    LAYER_MIB=${LAYER_MIB:-256}
    BLOB_MIB=${BLOB_MIB:-1024}
fi
LAYERS=4
ROUNDS=${ROUNDS:-$([ "$SMOKE" = 1 ] && echo 1 || echo 3)}
TARGET_PUSH_RATIO=0.8
TARGET_PUSH_DISK_RATIO=1.25
TARGET_PULL_STATIC_RATIO=1.1
TARGET_MONO_RATIO=1.5
BUDGET_RSS_MIB=64
REPO=bench/big
TAG=v1

STEP="setup"
MEASURED=""
# fail MESSAGE: names the failed step on stderr and, as the last line on stdout, a
# verdict with whatever was measured before it.
fail() {
    printf 'bench/registry: error in step "%s": %s\n' "$STEP" "$*" >&2
    if [[ "$STEP" == berth* ]] && [ -s "${T:-}/berth.log" ]; then
        printf 'bench/registry: last lines of the berth log:\n' >&2
        tail -20 "$T/berth.log" >&2
    fi
    printf 'registry: FAILED at step "%s"%s\n' "$STEP" "${MEASURED:+ (measured before it:$MEASURED)}"
    exit 1
}
step() {
    STEP=$1
    printf '==> %s\n' "$1" >&2
}

# A need that is not met (a missing tool, not root): a failure under CI=true, else a
# A need that is not met (a missing tool): a failure under CI=true, else a SKIPPED
# line, and the run does not pass unless BERTH_ALLOW_SKIP=1 (skip in scripts/lib.sh).
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
for tool in skopeo:skopeo docker-registry:docker-registry busybox:busybox-static curl:curl jq:jq python3:python3 \
    openssl:openssl dd:coreutils awk:mawk sync:coreutils; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || skip "${tool%%:*} is not installed (apt-get install -y ${tool#*:})"
done
[ "$(id -u)" = 0 ] || skip "dropping the page cache before each timed step needs root"

if [ -n "${BERTH_BIN:-}" ]; then
    BIN=$BERTH_BIN
else
    command -v cargo >/dev/null 2>&1 || skip "cargo is not installed (rustup) and BERTH_BIN is not set"
    cargo build --release --quiet --bin berth || fail "cargo build failed"
    BIN=${CARGO_TARGET_DIR:-target}/release/berth
fi
[ -x "$BIN" ] || fail "$BIN is not an executable"

T=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/berth-bench-registry.XXXXXX")
BERTH_PID=""
DIST_PID=""
STATIC_PID=""
SAMPLER_PID=""
stop_pid() {
    if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
        kill "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}
cleanup() {
    stop_pid "$SAMPLER_PID"
    stop_pid "$BERTH_PID"
    stop_pid "$DIST_PID"
    stop_pid "$STATIC_PID"
    rm -rf "$T"
}
trap cleanup EXIT

# skopeo must not pick up credentials or a strict policy from the host. (Not exported:
# docker-registry reads REGISTRY_* variables as configuration overrides.)
sk() { REGISTRY_AUTH_FILE="$T/auth.json" skopeo --insecure-policy "$@"; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "inf" }'; }
mibps() { awk -v m="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", m / s; else print "inf" }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
# settle: before each timed step, write back what is dirty and drop the page cache,
# so every step starts cold (untimed).
settle() {
    sync
    echo 3 >/proc/sys/vm/drop_caches || fail "could not drop the page cache"
}
IMAGE_MIB=$((LAYER_MIB * LAYERS))

# ---------------------------------------------------------------------------------
step "write the layout generator (${LAYERS} x ${LAYER_MIB} MiB random uncompressed tar layers per image)"
cat >"$T/mklayout.py" <<'EOF'
# mklayout.py DIR TAG LAYER_BYTES...: an OCI image layout with one image, one
# uncompressed tar layer (a single random file) per size.
import hashlib, json, os, sys, tarfile

out, tag, sizes = sys.argv[1], sys.argv[2], [int(n) for n in sys.argv[3:]]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)

def put(data):
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, h), "wb") as f:
        f.write(data)
    return "sha256:" + h

def layer(i, size):
    info = tarfile.TarInfo(f"random-{i}.bin")
    info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o644, 1700000000, "root", "root"
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    tmp = os.path.join(blobs, f".tmp-{i}")
    h, n = hashlib.sha256(), 0
    with open(tmp, "wb") as f:
        def w(b):
            nonlocal n
            h.update(b); f.write(b); n += len(b)
        w(header)
        left = size
        while left:
            k = min(left, 4 << 20)
            w(os.urandom(k))
            left -= k
        w(b"\0" * ((512 - size % 512) % 512 + 1024))
    os.rename(tmp, os.path.join(blobs, h.hexdigest()))
    return "sha256:" + h.hexdigest(), n

layers = [layer(i, s) for i, s in enumerate(sizes)]
config = json.dumps({
    "architecture": "amd64", "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]},
}).encode()
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n} for d, n in layers],
}).encode()
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest), "size": len(manifest),
    "annotations": {"org.opencontainers.image.ref.name": tag}}]}
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump(index, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
EOF
LAYER_BYTES=$((LAYER_MIB * 1024 * 1024))
# make_layout: a fresh random image for each round, so no round can reuse (or have
# skopeo's blob-info cache mount) the blobs of another.
make_layout() {
    rm -rf "$T/layout"
    python3 "$T/mklayout.py" "$T/layout" "$TAG" $(for _ in $(seq "$LAYERS"); do echo "$LAYER_BYTES"; done) \
        || fail "could not write the OCI layout"
    MANIFEST_DIGEST=$(jq -er '.manifests[0].digest' "$T/layout/index.json") || fail "no manifest in the layout"
}
make_layout

step "write a ${BLOB_MIB} MiB random blob"
BLOB="$T/blob.bin"
head -c $((BLOB_MIB * 1024 * 1024)) /dev/urandom >"$BLOB" || fail "could not write $BLOB"

# ---------------------------------------------------------------------------------
step "start distribution"
DIST_PORT=$(free_port)
DIST="127.0.0.1:$DIST_PORT"
mkdir -p "$T/dist"
cat >"$T/dist/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $T/dist/data
  delete:
    enabled: true
http:
  addr: $DIST
EOF
# docker-registry reads REGISTRY_* variables as configuration overrides; drop any.
env $(env | awk -F= '/^REGISTRY_/ { printf "-u %s ", $1 }') \
    docker-registry serve "$T/dist/config.yml" >"$T/dist.log" 2>&1 &
DIST_PID=$!
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://$DIST/v2/" 2>/dev/null && break
    kill -0 "$DIST_PID" 2>/dev/null || { cat "$T/dist.log" >&2; fail "docker-registry exited during start-up"; }
    sleep 0.1
done
curl -fsS -o /dev/null "http://$DIST/v2/" || { cat "$T/dist.log" >&2; fail "docker-registry did not answer /v2/ in 10 s"; }

step "start a static file server"
# busybox httpd serving $T/www, where static_tree links the files berth stored for
# the image's manifest and blobs at the paths a registry answers on (`/v2/<repo>/blobs/sha256:<hex>`,
# `/v2/<repo>/manifests/<tag>.manifest`, the suffix giving the manifest's type).
mkdir -p "$T/www/v2"
echo ok >"$T/www/v2/index.html"
printf '.manifest:application/vnd.oci.image.manifest.v1+json\n' >"$T/httpd.conf"
STATIC_PORT=$(free_port)
STATIC="127.0.0.1:$STATIC_PORT"
busybox httpd -f -p "$STATIC" -h "$T/www" -c "$T/httpd.conf" >"$T/static.log" 2>&1 &
STATIC_PID=$!
for _ in $(seq 1 50); do
    curl -fsS -o /dev/null "http://$STATIC/v2/" 2>/dev/null && break
    sleep 0.1
done
curl -fsS -o /dev/null "http://$STATIC/v2/" || { cat "$T/static.log" >&2; fail "busybox httpd did not answer /v2/"; }
# static_tree: links, for the static server, the very files berth stored for the
# image's manifest, config and layers (hard links: the same inodes, so the same disk
# blocks and the same page cache).
static_tree() {
    local dir="$T/www/v2/$REPO" store="$T/data/registry/blobs/sha256" d hex
    rm -rf "$dir"
    mkdir -p "$dir/blobs" "$dir/manifests"
    hex=${MANIFEST_DIGEST#sha256:}
    [ -f "$store/${hex:0:2}/$hex" ] || fail "berth has no file for the manifest $MANIFEST_DIGEST in $store"
    ln "$store/${hex:0:2}/$hex" "$dir/manifests/$TAG.manifest" || fail "could not link berth's manifest"
    for d in $(jq -r '.config.digest, .layers[].digest' "$dir/manifests/$TAG.manifest"); do
        hex=${d#sha256:}
        [ -f "$store/${hex:0:2}/$hex" ] || fail "berth has no blob file for $d (expected $store/${hex:0:2}/$hex)"
        ln "$store/${hex:0:2}/$hex" "$dir/blobs/sha256:$hex" || fail "could not link berth's blob $d"
    done
}

step "start berth"
PORT=$(free_port)
BASE="http://127.0.0.1:$PORT"
BERTH="127.0.0.1:$PORT"
cat >"$T/berth.toml" <<EOF
run_dir = "$T/run"

[api]
rate_limit_per_minute = 100000000
EOF
# berth reads BERTH_* variables as configuration and refuses unknown ones; drop them
# all (BERTH_BIN among them) so only the config written above applies.
start_berth "$BERTH" 127.0.0.1:0 fail

# call METHOD PATH EXPECTED_STATUS [JSON_BODY]; prints the response body.
AUTH=""
call() {
    local method=$1 path=$2 want=$3 body=${4:-} status
    local args=(-sS -o "$T/resp" -w '%{http_code}' -X "$method")
    [ -z "$AUTH" ] || args+=(-H "Authorization: Bearer $AUTH")
    [ -z "$body" ] || args+=(-H 'Content-Type: application/json' --data "$body")
    status=$(curl "${args[@]}" "$BASE$path") || fail "$method $path: curl failed"
    if [ "$status" != "$want" ]; then
        cat "$T/resp" >&2
        fail "$method $path answered $status, expected $want"
    fi
    cat "$T/resp"
}

step "set up berth: bootstrap, login, project, API token"
AUTH=$(cat "$T/data/bootstrap-token")
call POST /v1/bootstrap 201 '{"username":"bench","password":"bench-password-1"}' >/dev/null
AUTH=""
AUTH=$(call POST /v1/auth/login 200 '{"username":"bench","password":"bench-password-1"}' | jq -er .token)
call POST /v1/projects 201 '{"name":"bench"}' >/dev/null
TOKEN=$(call POST /v1/api-tokens 201 '{"name":"bench"}' | jq -er .token)
AUTH=""

# ---------------------------------------------------------------------------------
# push NAME REGISTRY [CREDS]: times a push of the layout; sets PUSH_S.
# pull NAME REGISTRY [CREDS]: times a pull into a fresh `oci:` dir; sets PULL_S; checks
# the pulled image has the pushed manifest and every blob with its size (skopeo has
# verified the digests), then deletes it.
push() {
    local name=$1 reg=$2 creds=${3:-} t0 t1
    local args=(copy --quiet --preserve-digests --dest-tls-verify=false)
    [ -z "$creds" ] || args+=(--dest-creds "$creds")
    settle
    t0=$(now)
    sk "${args[@]}" "oci:$T/layout:$TAG" "docker://$reg/$REPO:$TAG" 2>"$T/skopeo.err" \
        || { cat "$T/skopeo.err" >&2; fail "skopeo push to $name failed"; }
    t1=$(now)
    PUSH_S=$(elapsed "$t0" "$t1")
}
pull() {
    local name=$1 reg=$2 creds=${3:-} t0 t1 got
    local args=(copy --quiet --preserve-digests --src-tls-verify=false)
    [ -z "$creds" ] || args+=(--src-creds "$creds")
    rm -rf "$T/pull"
    settle
    t0=$(now)
    sk "${args[@]}" "docker://$reg/$REPO:$TAG" "oci:$T/pull:$TAG" 2>"$T/skopeo.err" \
        || { cat "$T/skopeo.err" >&2; fail "skopeo pull from $name failed"; }
    t1=$(now)
    PULL_S=$(elapsed "$t0" "$t1")
    got=$(jq -er '.manifests[0].digest' "$T/pull/index.json") || fail "the image pulled from $name has no manifest"
    [ "$got" = "$MANIFEST_DIGEST" ] || fail "pulled manifest $got from $name, pushed $MANIFEST_DIGEST"
    for f in "$T"/layout/blobs/sha256/*; do
        [ "$(stat -c %s "$f")" = "$(stat -c %s "$T/pull/blobs/sha256/${f##*/}" 2>/dev/null)" ] \
            || fail "blob ${f##*/} pulled from $name is missing or has the wrong size"
    done
    rm -rf "$T/pull"
}

step "berth: GET /v2/"
V2_STATUS=$(curl -sS -o "$T/resp" -D "$T/v2.headers" -w '%{http_code}' "$BASE/v2/") || fail "GET /v2/: curl failed"
case "$V2_STATUS" in
    200 | 401) ;;
    *) cat "$T/resp" >&2; fail "berth's GET /v2/ answered $V2_STATUS (expected 401 with a challenge, or 200): no registry?" ;;
esac

# The sampler keeps the largest VmRSS (KiB) seen in $T/rss.max, over every round.
echo 0 >"$T/rss.max"
(
    max=0
    while [ -r "/proc/$BERTH_PID/status" ]; do
        while read -r key value _; do
            if [ "$key" = "VmRSS:" ] && [ "$value" -gt "$max" ]; then
                max=$value
                echo "$max" >"$T/rss.max"
            fi
        done <"/proc/$BERTH_PID/status" 2>/dev/null || true
        sleep 0.2
    done
) &
SAMPLER_PID=$!

# Timings on this shared 2-core machine swing by tens of percent from one run to the
# next, so each figure is the median of ROUNDS rounds, and the servers take turns going
# first. The static server's pull needs berth's push of the same round, so the round
# pushes first and pulls after.
DIST_PUSH=() DIST_PULL=() BERTH_PUSH=() BERTH_PULL=() PUSH_DD=() DGST=() DD=() MONO=() STATIC_PULL=()
push_dist() {
    step "round $r: distribution push ${IMAGE_MIB} MiB"
    push distribution "$DIST"
    DIST_PUSH+=("$PUSH_S")
}
push_berth() {
    step "round $r: berth push ${IMAGE_MIB} MiB"
    push berth "$BERTH" "bench:$TOKEN"
    BERTH_PUSH+=("$PUSH_S")
    kill -0 "$BERTH_PID" 2>/dev/null || { tail -50 "$T/berth.log" >&2; fail "berth died during the push"; }
}
pull_dist() {
    step "round $r: distribution pull ${IMAGE_MIB} MiB"
    pull distribution "$DIST"
    DIST_PULL+=("$PULL_S")
}
pull_berth() {
    step "round $r: berth pull ${IMAGE_MIB} MiB"
    pull berth "$BERTH" "bench:$TOKEN"
    BERTH_PULL+=("$PULL_S")
}
pull_static() {
    step "round $r: static file server pull ${IMAGE_MIB} MiB (berth's blob files)"
    TAG="$TAG.manifest" pull static "$STATIC"
    STATIC_PULL+=("$PULL_S")
}
for r in $(seq 1 "$ROUNDS"); do
    REPO="bench/big$r"
    [ "$r" = 1 ] || { step "round $r: write a fresh ${IMAGE_MIB} MiB layout"; make_layout; }
    if [ $((r % 2)) = 1 ]; then
        push_dist
        push_berth
    else
        push_berth
        push_dist
    fi

    step "round $r: the push's limit: dd conv=fsync of the image's ${IMAGE_MIB} MiB"
    rm -rf "$T/ddimage"
    mkdir -p "$T/ddimage"
    settle
    t0=$(now)
    for f in "$T"/layout/blobs/sha256/*; do
        dd if="$f" of="$T/ddimage/${f##*/}" bs=4M conv=fsync status=none || fail "dd of $f failed"
    done
    t1=$(now)
    PUSH_DD+=("$(elapsed "$t0" "$t1")")
    rm -rf "$T/ddimage"

    step "round $r: link berth's blob files for the static server"
    static_tree
    case $((r % 3)) in
        1) pull_dist; pull_berth; pull_static ;;
        2) pull_berth; pull_static; pull_dist ;;
        0) pull_static; pull_dist; pull_berth ;;
    esac
    MEASURED+=" round${r}:dist=${DIST_PUSH[-1]}/${DIST_PULL[-1]}s,berth=${BERTH_PUSH[-1]}/${BERTH_PULL[-1]}s,dd=${PUSH_DD[-1]}s,static=${STATIC_PULL[-1]}s"

    step "round $r: monolithic upload's limit: openssl dgst -sha256 of the ${BLOB_MIB} MiB blob"
    settle
    t0=$(now)
    BLOB_HEX=$(openssl dgst -sha256 -r "$BLOB" | awk '{ print $1 }')
    t1=$(now)
    DGST+=("$(elapsed "$t0" "$t1")")
    [ "${#BLOB_HEX}" = 64 ] || fail "openssl dgst printed no digest"
    step "round $r: monolithic upload's limit: dd conv=fsync of the ${BLOB_MIB} MiB blob"
    settle
    t0=$(now)
    dd if="$BLOB" of="$T/ddcopy" bs=4M conv=fsync status=none || fail "dd failed"
    t1=$(now)
    DD+=("$(elapsed "$t0" "$t1")")
    rm -f "$T/ddcopy"
done
stop_pid "$SAMPLER_PID"
SAMPLER_PID=""
PEAK_RSS_KIB=$(cat "$T/rss.max")
HWM_KIB=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$BERTH_PID/status")
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
DIST_PUSH_S=$(median "${DIST_PUSH[@]}")
DIST_PULL_S=$(median "${DIST_PULL[@]}")
BERTH_PUSH_S=$(median "${BERTH_PUSH[@]}")
BERTH_PULL_S=$(median "${BERTH_PULL[@]}")
STATIC_PULL_S=$(median "${STATIC_PULL[@]}")
PUSH_DD_S=$(median "${PUSH_DD[@]}")
DGST_S=$(median "${DGST[@]}")
DD_S=$(median "${DD[@]}")
LIMIT_S=$(awk -v a="$DGST_S" -v b="$DD_S" 'BEGIN { printf "%.2f", (a > b ? a : b) }')
REPO=bench/big

step "berth: monolithic upload of the ${BLOB_MIB} MiB blob"
# The registry's auth: a Bearer challenge is answered the way docker and skopeo do
# (GET the realm with basic auth and the scope), a Basic one with basic auth.
MONO_AUTH=()
CHALLENGE=$(awk 'tolower($1) == "www-authenticate:" { sub(/^[^:]*:[ \t]*/, ""); sub(/\r$/, ""); print; exit }' "$T/v2.headers")
case "$CHALLENGE" in
    [Bb]earer*)
        REALM=$(printf '%s' "$CHALLENGE" | sed -n 's/.*realm="\([^"]*\)".*/\1/p')
        SERVICE=$(printf '%s' "$CHALLENGE" | sed -n 's/.*service="\([^"]*\)".*/\1/p')
        [ -n "$REALM" ] || fail "no realm in the challenge: $CHALLENGE"
        STATUS=$(curl -sS -G -o "$T/resp" -w '%{http_code}' -u "bench:$TOKEN" --data-urlencode "service=$SERVICE" \
            --data-urlencode "scope=repository:$REPO:push,pull" "$REALM") || fail "GET $REALM: curl failed"
        [ "$STATUS" = 200 ] || { cat "$T/resp" >&2; fail "GET $REALM answered $STATUS"; }
        REG_TOKEN=$(jq -er '.token // .access_token' "$T/resp") || fail "no token in the answer from $REALM"
        MONO_AUTH=(-H "Authorization: Bearer $REG_TOKEN")
        ;;
    [Bb]asic*) MONO_AUTH=(-u "bench:$TOKEN") ;;
    "") MONO_AUTH=(-H "Authorization: Bearer $TOKEN") ;;
    *) fail "unknown challenge on /v2/: $CHALLENGE" ;;
esac
# `-T` streams the file (`--data-binary @FILE` would first read all of it into
# memory); `--request-target` keeps curl from appending the file name to a URL that
# ends in `/`; `Expect:` turns off the 100-continue round trip.
for r in $(seq 1 "$ROUNDS"); do
    settle
    t0=$(now)
    STATUS=$(curl -sS -o "$T/resp" -D "$T/mono.headers" -w '%{http_code}' -X POST -T "$BLOB" -H 'Expect:' \
        -H 'Content-Type: application/octet-stream' "${MONO_AUTH[@]}" \
        --request-target "/v2/$REPO/blobs/uploads/?digest=sha256:$BLOB_HEX" "$BASE/") || fail "monolithic upload: curl failed"
    t1=$(now)
    MONO+=("$(elapsed "$t0" "$t1")")
    [ "$STATUS" = 201 ] || { cat "$T/resp" >&2; fail "monolithic upload answered $STATUS, expected 201"; }
done
MONO_S=$(median "${MONO[@]}")
MEASURED+=" berth_monolithic=${MONO[*]}"

# Server-side speed on its own: skopeo's hashing and writing bound the end-to-end
# pull, so a plain GET of the same blob from each registry shows what the server does.
step "raw blob GET: the ${BLOB_MIB} MiB blob from each registry"
LOC=$(curl -sS -D - -o /dev/null -X POST "http://$DIST/v2/$REPO/blobs/uploads/" | awk 'tolower($1) == "location:" { print $2 }' | tr -d '\r')
case "$LOC" in http*) ;; *) LOC="http://$DIST$LOC" ;; esac
SEP='?'
case "$LOC" in *\?*) SEP='&' ;; esac
STATUS=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -T "$BLOB" -H 'Expect:' "$LOC${SEP}digest=sha256:$BLOB_HEX") \
    || fail "uploading the blob to distribution: curl failed"
[ "$STATUS" = 201 ] || fail "uploading the blob to distribution answered $STATUS"
GET_DIST=() GET_BERTH=()
get_blob() {
    local t0 t1 got
    settle
    t0=$(now)
    got=$(curl -sS -o /dev/null -w '%{size_download}' "$@") || fail "raw GET: curl failed"
    t1=$(now)
    [ "$got" = $((BLOB_MIB * 1024 * 1024)) ] || fail "raw GET returned $got bytes"
    GET_S=$(elapsed "$t0" "$t1")
}
for r in $(seq 1 "$ROUNDS"); do
    get_blob "http://$DIST/v2/$REPO/blobs/sha256:$BLOB_HEX"
    GET_DIST+=("$GET_S")
    get_blob "${MONO_AUTH[@]}" "$BASE/v2/$REPO/blobs/sha256:$BLOB_HEX"
    GET_BERTH+=("$GET_S")
done
GET_DIST_S=$(median "${GET_DIST[@]}")
GET_BERTH_S=$(median "${GET_BERTH[@]}")
STATUS=$(curl -sS -o /dev/null -I -w '%{http_code} %header{content-length}' "${MONO_AUTH[@]}" \
    "$BASE/v2/$REPO/blobs/sha256:$BLOB_HEX") || fail "HEAD of the uploaded blob: curl failed"
[ "$STATUS" = "200 $((BLOB_MIB * 1024 * 1024))" ] \
    || fail "HEAD of the uploaded blob answered '$STATUS', expected '200 $((BLOB_MIB * 1024 * 1024))' (status, length)"
kill -0 "$BERTH_PID" 2>/dev/null || { tail -50 "$T/berth.log" >&2; fail "berth died during the upload"; }

# ---------------------------------------------------------------------------------
STEP="report"
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
PUSH_RATIO=$(ratio "$BERTH_PUSH_S" "$DIST_PUSH_S")
PUSH_DISK_RATIO=$(ratio "$BERTH_PUSH_S" "$PUSH_DD_S")
PULL_RATIO=$(ratio "$BERTH_PULL_S" "$DIST_PULL_S")
PULL_STATIC_RATIO=$(ratio "$BERTH_PULL_S" "$STATIC_PULL_S")
MONO_RATIO=$(ratio "$MONO_S" "$LIMIT_S")
PEAK_RSS_MIB=$(mib "$PEAK_RSS_KIB")
RSS_RATIO=$(ratio "$PEAK_RSS_MIB" "$BUDGET_RSS_MIB")
MODE=""
[ "$SMOKE" != 1 ] || MODE="smoke, "

cat <<EOF

berth registry benchmark (${MODE}medians of ${ROUNDS} rounds; ${IMAGE_MIB} MiB image as ${LAYERS} x ${LAYER_MIB} MiB uncompressed layers, ${BLOB_MIB} MiB blob, skopeo $(skopeo --version | awk '{ print $3 }'); page cache dropped before every timed step)
  push          berth ${BERTH_PUSH_S}s ($(mibps "$IMAGE_MIB" "$BERTH_PUSH_S") MiB/s)   disk limit (dd conv=fsync of the same bytes) ${PUSH_DD_S}s ($(mibps "$IMAGE_MIB" "$PUSH_DD_S") MiB/s)   ratio ${PUSH_DISK_RATIO} (target <= ${TARGET_PUSH_DISK_RATIO})
                distribution ${DIST_PUSH_S}s ($(mibps "$IMAGE_MIB" "$DIST_PUSH_S") MiB/s)   ratio ${PUSH_RATIO} (target <= ${TARGET_PUSH_RATIO}); distribution $(ratio "$DIST_PUSH_S" "$PUSH_DD_S") of the disk limit
  pull          berth ${BERTH_PULL_S}s ($(mibps "$IMAGE_MIB" "$BERTH_PULL_S") MiB/s)   static server (busybox httpd, berth's blob files) ${STATIC_PULL_S}s ($(mibps "$IMAGE_MIB" "$STATIC_PULL_S") MiB/s)   ratio ${PULL_STATIC_RATIO} (target <= ${TARGET_PULL_STATIC_RATIO})
                distribution ${DIST_PULL_S}s ($(mibps "$IMAGE_MIB" "$DIST_PULL_S") MiB/s)   berth ${PULL_RATIO} of it, distribution $(ratio "$DIST_PULL_S" "$STATIC_PULL_S") of the static server (no target)
  limit         openssl dgst -sha256 ${DGST_S}s ($(mibps "$BLOB_MIB" "$DGST_S") MiB/s)   dd conv=fsync ${DD_S}s ($(mibps "$BLOB_MIB" "$DD_S") MiB/s)   limit ${LIMIT_S}s
  raw GET       distribution ${GET_DIST_S}s ($(mibps "$BLOB_MIB" "$GET_DIST_S") MiB/s)   berth ${GET_BERTH_S}s ($(mibps "$BLOB_MIB" "$GET_BERTH_S") MiB/s)   ratio $(ratio "$GET_BERTH_S" "$GET_DIST_S") (no target; the server alone)
  monolithic    berth ${MONO_S}s ($(mibps "$BLOB_MIB" "$MONO_S") MiB/s)   ratio ${MONO_RATIO} of the limit (target <= ${TARGET_MONO_RATIO})
  rounds       ${MEASURED} (push/pull seconds)
  berth RSS     peak ${PEAK_RSS_MIB} MiB sampled during every push and pull (budget < ${BUDGET_RSS_MIB} MiB); VmHWM $(mib "$HWM_KIB") MiB after it
EOF

MISSED=()
le "$PUSH_DISK_RATIO" "$TARGET_PUSH_DISK_RATIO" || MISSED+=(push_vs_disk)
le "$PUSH_RATIO" "$TARGET_PUSH_RATIO" || MISSED+=(push_vs_distribution)
le "$PULL_STATIC_RATIO" "$TARGET_PULL_STATIC_RATIO" || MISSED+=(pull_vs_static)
le "$MONO_RATIO" "$TARGET_MONO_RATIO" || MISSED+=(monolithic)
awk -v a="$PEAK_RSS_MIB" -v b="$BUDGET_RSS_MIB" 'BEGIN { exit !(a < b) }' || MISSED+=(peak_rss_mib)
if [ "${#MISSED[@]}" -eq 0 ]; then
    TARGETS="targets=met"
else
    TARGETS="targets=missed:$(IFS=,; echo "${MISSED[*]}")"
fi
[ "$SMOKE" = 1 ] && TARGETS="$TARGETS(smoke: not enforced)"

printf 'registry: push=%ss (%s of disk limit %ss; %s of distribution %ss) pull=%ss (%s of a static file server %ss; %s of distribution %ss) raw_get=%ss (%s of distribution %ss) monolithic=%ss (%s of limit %ss) peak_rss_mib=%s (%s of %s) %s\n' \
    "$BERTH_PUSH_S" "$PUSH_DISK_RATIO" "$PUSH_DD_S" "$PUSH_RATIO" "$DIST_PUSH_S" \
    "$BERTH_PULL_S" "$PULL_STATIC_RATIO" "$STATIC_PULL_S" "$PULL_RATIO" "$DIST_PULL_S" \
    "$GET_BERTH_S" "$(ratio "$GET_BERTH_S" "$GET_DIST_S")" "$GET_DIST_S" \
    "$MONO_S" "$MONO_RATIO" "$LIMIT_S" "$PEAK_RSS_MIB" "$RSS_RATIO" "$BUDGET_RSS_MIB" "$TARGETS"

if [ "$SMOKE" != 1 ] && [ "${#MISSED[@]}" -gt 0 ]; then
    exit 1
fi
