#!/usr/bin/env bash
# The ingress against nginx as a reverse proxy, and against no proxy at all, in the
# same run, over HTTP and HTTPS, for a small page and a 1 MiB body.
#
#   bench/ingress.sh                  full run: 3 rounds of 3 s per row; fails when a target is missed
#   BENCH_SMOKE=1 bench/ingress.sh    1 round of 1 s per row; checks that everything works,
#                                     never fails on targets
#
# Runs as root (containers). Starts the release binary in dev mode with a throw-away
# state dir, free loopback ports and names of its own (scripts/bench-containers.sh),
# and deploys one service whose replica is nginx itself (Debian's binary and the
# libraries ldd lists, in an image pushed through berth's /v2 without Docker),
# serving `/` (a 6-byte page) and `/big` (1 MiB) on :8080 and, with a self-signed
# certificate, on :8443, keep-alive, one worker. The peer is Debian's nginx on the
# host as a reverse proxy to that replica (`keepalive 64` upstream connections, HTTP
# on one port and TLS on another, its other settings default, as many workers as
# cores). Then wrk (2 threads, 64 connections, keep-alive) for each row, taking turns:
#   - berth:  http://127.0.0.1:<ingress>/…  and https://…:<ingress tls>/…  (Host: web.bench.localhost)
#   - nginx:  http://127.0.0.1:<nginx>/…    and https://…:<nginx tls>/…
#   - direct: http://<replica>:8080/…       and https://<replica>:8443/…
# and berth's resident memory is sampled every 0.2 s while it is under load.
#
# Targets (issue 11): on every row berth's req/s >= 1.0 x nginx's and p99 <= 1.2 x
# nginx's; berth's peak RSS under load < 50 MiB. The last line gives each row's
# ratios, the RSS and whether the targets were met.
#
# Environment: BENCH_SMOKE=1, ROUNDS, DURATION (seconds per wrk run), CONNECTIONS,
# BERTH_BIN (a prebuilt binary; otherwise `cargo build --release --bin berth` first).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=${BENCH_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-1}
else
    ROUNDS=${ROUNDS:-3}
    DURATION=${DURATION:-3}
fi
THREADS=2
CONNECTIONS=${CONNECTIONS:-64}
RPS_TARGET=1.0
P99_TARGET=1.2
RSS_TARGET_MIB=50
BENCH_NAME=ingress

die() { bench_die ingress "$@"; }
log() { printf 'bench/ingress: %s\n' "$*" >&2; }

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
[ "$(id -u)" -eq 0 ] || skip "needs root (containers, network namespaces, nftables)"
for tool in runc:runc ip:iproute2 nft:nftables wrk:wrk curl:curl jq:jq python3:python3 openssl:openssl \
    sha256sum:coreutils tar:tar awk:mawk ldd:libc-bin; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || skip "${tool%%:*} is not installed (apt-get install -y ${tool#*:})"
done
NGINX=$(command -v nginx || true)
[ -n "$NGINX" ] || NGINX=/usr/sbin/nginx
[ -x "$NGINX" ] || skip "nginx is not installed (apt-get install -y nginx-light)"

TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -z "${BERTH_BIN:-}" ]; then
    command -v cargo >/dev/null 2>&1 || skip "cargo is not installed (rustup) and BERTH_BIN is not set"
    cargo build --release --quiet --bin berth || die "cargo build --bin berth failed"
fi
BIN=$(realpath "${BERTH_BIN:-$TARGET_DIR/release/berth}")
[ -x "$BIN" ] || die "$BIN is not an executable"

# shellcheck source=scripts/bench-containers.sh
source scripts/bench-containers.sh
HTTPS_PORT=$(free_port)
NGX_HTTP=$(free_port)
NGX_HTTPS=$(free_port)
NGX_PID=""
bench_cleanup_hook() { stop_pid "$NGX_PID"; }

{
    bench_config
    cat <<EOF

[deploy]
drain_seconds = 0
stop_grace_seconds = 1
EOF
} >"$T/berth.toml"
HTTPS_LISTEN="127.0.0.1:$HTTPS_PORT" start_berth "127.0.0.1:$API_PORT" "127.0.0.1:$HTTP_PORT"
bench_login
HOST="web.bench.localhost"

# One self-signed certificate for every TLS endpoint (wrk does not verify).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=$HOST" \
    -keyout "$T/tls.key" -out "$T/tls.crt" 2>/dev/null || die "openssl could not make a certificate"

# The replica's image: nginx and its libraries, its configuration, the pages.
R="$T/img/nginx"
mkdir -p "$R/etc" "$R/www" "$R/tmp" "$R/usr/sbin"
cp "$NGINX" "$R/usr/sbin/nginx"
for lib in $(ldd "$NGINX" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    cp --parents -L "$lib" "$R"
done
printf 'root:x:0:0:root:/:/usr/sbin/nologin\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
cp "$T/tls.crt" "$R/etc/tls.crt"
cp "$T/tls.key" "$R/etc/tls.key"
printf 'hello\n' >"$R/www/index.html"
head -c $((1 << 20)) /dev/urandom >"$R/www/big"
cat >"$R/etc/nginx.conf" <<'EOF'
daemon off;
user root;
worker_processes 1;
error_log stderr warn;
pid /tmp/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path /tmp/body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    default_type application/octet-stream;
    server {
        listen 8080;
        listen 8443 ssl;
        ssl_certificate /etc/tls.crt;
        ssl_certificate_key /etc/tls.key;
        root /www;
        location = /health { return 200 "ok\n"; }
    }
}
EOF
tar_dir "$R" "$T/img/nginx.tar"
push_image bench/web v1 '["/usr/sbin/nginx", "-c", "/etc/nginx.conf"]' "$T/img/nginx.tar" >/dev/null

SVC_BODY=$(jq -cn --arg p "$PROJECT" '{project_id: $p, name: "web", port: 8080, replicas: 1,
    health_check: {path: "/health", interval_s: 1}, resources: {memory_mb: 256, pids: 256}}')
SVC=$(call POST /v1/services 201 "$SVC_BODY" | jq -er .id)
DEP=$(call POST /v1/deployments 201 "$(jq -cn --arg s "$SVC" '{service_id: $s, source: {kind: "Image", repository: "bench/web", reference: "v1"}}')" | jq -er .id)
STATUS=""
for _ in $(seq 1 600); do
    STATUS=$(call GET "/v1/deployments/$DEP" 200 | jq -r .status)
    case "$STATUS" in
        live) break ;;
        failed | cancelled | superseded) call GET "/v1/deployments/$DEP/logs" 200 >&2 || true; die "the deployment ended $STATUS" ;;
    esac
    alive
    sleep 0.1
done
[ "$STATUS" = live ] || die "the deployment was not live within 60 s (status $STATUS)"
ADDR=$(call GET "/v1/services/$SVC" 200 | jq -er '.instances[0].address')
IP=${ADDR%:*}

# The peer: Debian's nginx as a reverse proxy to the replica, kept-alive upstream.
mkdir -p "$T/front"
cat >"$T/front/nginx.conf" <<EOF
daemon off;
user root;
worker_processes auto;
error_log $T/front/error.log warn;
pid $T/front/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $T/front/body;
    proxy_temp_path $T/front/proxy;
    fastcgi_temp_path $T/front/fastcgi;
    uwsgi_temp_path $T/front/uwsgi;
    scgi_temp_path $T/front/scgi;
    upstream replica {
        server $IP:8080;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGX_HTTP;
        listen 127.0.0.1:$NGX_HTTPS ssl;
        ssl_certificate $T/tls.crt;
        ssl_certificate_key $T/tls.key;
        location / {
            proxy_pass http://replica;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
        }
    }
}
EOF
"$NGINX" -p "$T/front" -c "$T/front/nginx.conf" >"$T/front/stdout.log" 2>&1 &
NGX_PID=$!

# Every path answers both pages, and the same bytes, before anything is timed.
BIG_SHA=$(sha "$R/www/big")
check_path() {
    local name=$1 base=$2 got
    for _ in $(seq 1 100); do
        got=$(curl -ksS --max-time 5 -H "Host: $HOST" "$base/" 2>/dev/null || true)
        [ "$got" = hello ] && break
        sleep 0.1
    done
    [ "$got" = hello ] || die "$name ($base/) answered '${got:0:80}', not the page"
    got=$(curl -ksS --max-time 30 -H "Host: $HOST" "$base/big" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$BIG_SHA" ] || die "$name ($base/big) did not give back the 1 MiB body"
}
declare -A BASE=(
    [berth-http]="http://127.0.0.1:$HTTP_PORT" [berth-https]="https://127.0.0.1:$HTTPS_PORT"
    [nginx-http]="http://127.0.0.1:$NGX_HTTP" [nginx-https]="https://127.0.0.1:$NGX_HTTPS"
    [direct-http]="http://$IP:8080" [direct-https]="https://$IP:8443"
)
for k in "${!BASE[@]}"; do
    check_path "$k" "${BASE[$k]}"
done
kill -0 "$NGX_PID" 2>/dev/null || { cat "$T/front/error.log" >&2; die "nginx (the peer) exited"; }

# Berth's resident memory, sampled while wrk runs against it.
PEAK_RSS_KB=0
sample_rss() {
    local peak=0 kb
    while [ ! -e "$T/stop-sampling" ]; do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$BERTH_PID/status" 2>/dev/null || echo 0)
        [ "${kb:-0}" -le "$peak" ] || peak=$kb
        echo "$peak" >"$T/rss-peak"
        sleep 0.2
    done
}

# load WHO PROTO PAGE: one wrk run; sets RPS and P99_MS. A non-2xx answer or a socket
# error fails the run.
load() {
    local who=$1 proto=$2 page=$3 out="$T/wrk-$1-$2-$3-$r.txt" path sampler=""
    path=/
    [ "$page" = small ] || path=/big
    if [ "$who" = berth ]; then
        rm -f "$T/stop-sampling"
        sample_rss &
        sampler=$!
    fi
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Host: $HOST" "${BASE[$who-$proto]}$path" >"$out" \
        || { cat "$out" >&2; die "wrk against $who $proto failed"; }
    if [ -n "$sampler" ]; then
        touch "$T/stop-sampling"
        wait "$sampler" || true
        PEAK_RSS_KB=$(awk -v a="$PEAK_RSS_KB" -v b="$(cat "$T/rss-peak" 2>/dev/null || echo 0)" 'BEGIN { print (b > a) ? b : a }')
    fi
    alive
    read_wrk "$out" "$who $proto $page"
    printf '  round %s  %-6s %-5s %-5s %9.0f req/s   p99 %8s ms\n' "$r" "$who" "$proto" "$page" "$RPS" "$P99_MS"
}

printf '\nwrk -t%s -c%s -d%ss, %s round(s); berth, nginx (reverse proxy) and the replica directly\n' \
    "$THREADS" "$CONNECTIONS" "$DURATION" "$ROUNDS"
# BENCH_ROWS narrows the run to some rows (e.g. "https-small"), for profiling.
read -r -a ROWS <<<"${BENCH_ROWS:-http-small http-big https-small https-big}"
declare -A RPS_OF P99_OF
for r in $(seq 1 "$ROUNDS"); do
    for row in "${ROWS[@]}"; do
        proto=${row%-*} page=${row#*-}
        if [ $((r % 2)) = 1 ]; then order="berth nginx direct"; else order="nginx direct berth"; fi
        for who in $order; do
            load "$who" "$proto" "$page"
            RPS_OF[$who-$row]="${RPS_OF[$who-$row]:-} $RPS"
            P99_OF[$who-$row]="${P99_OF[$who-$row]:-} $P99_MS"
        done
    done
done

MODE=""
[ "$SMOKE" != 1 ] || MODE="smoke, "
RSS_MIB=$(awk -v k="$PEAK_RSS_KB" 'BEGIN { printf "%.1f", k / 1024 }')
printf '\nberth ingress benchmark (%smedians of %s round(s) of %ss; 1 MiB = /big)\n' "$MODE" "$ROUNDS" "$DURATION"
printf '  %-12s %12s %12s %12s   %10s %10s %10s\n' row "berth req/s" "nginx req/s" "direct req/s" "berth p99" "nginx p99" "direct p99"
MISSED=() SUMMARY=()
for row in "${ROWS[@]}"; do
    # shellcheck disable=SC2086  # the lists are space-separated on purpose
    {
        b=$(median ${RPS_OF[berth-$row]}) n=$(median ${RPS_OF[nginx-$row]}) d=$(median ${RPS_OF[direct-$row]})
        bp=$(median ${P99_OF[berth-$row]}) np=$(median ${P99_OF[nginx-$row]}) dp=$(median ${P99_OF[direct-$row]})
    }
    printf '  %-12s %12.0f %12.0f %12.0f   %8s ms %8s ms %8s ms\n' "$row" "$b" "$n" "$d" "$bp" "$np" "$dp"
    rr=$(ratio "$b" "$n") pr=$(ratio "$bp" "$np")
    SUMMARY+=("$row ${rr}x req/s ${pr}x p99")
    awk -v a="$rr" -v t="$RPS_TARGET" 'BEGIN { exit !(a >= t) }' || MISSED+=("$row:req/s")
    awk -v a="$pr" -v t="$P99_TARGET" 'BEGIN { exit !(a <= t) }' || MISSED+=("$row:p99")
done
printf '  berth peak RSS under load: %s MiB (target < %s MiB)\n' "$RSS_MIB" "$RSS_TARGET_MIB"
awk -v a="$RSS_MIB" -v t="$RSS_TARGET_MIB" 'BEGIN { exit !(a < t) }' || MISSED+=("rss")

if [ "${#MISSED[@]}" -eq 0 ]; then
    TARGETS="targets=met"
else
    TARGETS="targets=missed:$(IFS=,; echo "${MISSED[*]}")"
fi
[ "$SMOKE" = 1 ] && TARGETS="$TARGETS(smoke: not enforced)"

VERDICT_PRINTED=1
printf 'ingress: berth/nginx %s; RSS %s MiB (targets >= %sx req/s, <= %sx p99, < %s MiB) %s\n' \
    "$(IFS=';'; echo "${SUMMARY[*]}" | sed 's/;/; /g')" "$RSS_MIB" "$RPS_TARGET" "$P99_TARGET" "$RSS_TARGET_MIB" "$TARGETS"

if [ "$SMOKE" != 1 ] && [ "$TARGETS" != targets=met ]; then
    exit 1
fi
