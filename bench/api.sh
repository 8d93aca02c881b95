#!/usr/bin/env bash
# API throughput, tail latency and memory of `berth serve --dev`.
#
#   bench/api.sh                  full run (10 s of load), fails when a target is missed
#   BENCH_SMOKE=1 bench/api.sh    2 s of load; checks that everything works, never fails on targets
#
# Starts the release binary on a free loopback port with a throw-away state dir,
# bootstraps it, creates 100 projects (p001..p100), mints an API token and drives an
# authenticated `GET /v1/projects` (the default page of 20, with 100 projects in the
# node) with wrk (2 threads, 64 connections).
# Prints req/s, p99 latency, the daemon's idle RSS (VmRSS after setup and a 2 s
# settle) and its peak RSS (VmHWM after the load), then, as the very last line, each
# figure as a ratio of its target on a 2-core machine:
#   >= 15,000 req/s, p99 < 10 ms, idle RSS < 20 MiB.
#
# Environment: BENCH_SMOKE=1, DURATION (seconds of load), BERTH_BIN (a prebuilt binary;
# otherwise `cargo build --release` is run first, a no-op when up to date).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=${BENCH_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    DURATION=${DURATION:-2}
else
    DURATION=${DURATION:-10}
fi
THREADS=2
CONNECTIONS=64
PROJECTS=100
TARGET_RPS=15000
BUDGET_P99_MS=10
BUDGET_RSS_MIB=20

die() { printf 'bench/api: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# A missing tool: a failure under CI, SKIPPED otherwise (skip in scripts/lib.sh).
for tool in wrk:wrk curl:curl jq:jq python3:python3 awk:mawk; do
    need_tool "${tool%%:*}" "${tool#*:}"
done

if [ -n "${BERTH_BIN:-}" ]; then
    BIN=$BERTH_BIN
else
    command -v cargo >/dev/null 2>&1 || skip "cargo not found (install Rust with rustup) and BERTH_BIN not set"
    cargo build --release --quiet --bin berth
    BIN=target/release/berth
fi
[ -x "$BIN" ] || die "$BIN is not an executable"

T=$(mktemp -d -t berth-bench-api.XXXXXX)
PID=""
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$T"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"

# The per-token limiter (default 6000/min) would answer most of the load with 429.
# Raising it keeps the limiter in the path: every request is still counted and still
# gets its X-RateLimit-* headers, it just is not refused.
cat >"$T/berth.toml" <<EOF
run_dir = "$T/run"

[api]
rate_limit_per_minute = 100000000
EOF

BERTH_LOG=warn "$BIN" serve --dev --data-dir "$T/data" --api-listen "127.0.0.1:$PORT" --config "$T/berth.toml" \
    >"$T/berth.log" 2>&1 &
PID=$!

for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "$BASE/healthz" 2>/dev/null; then
        break
    fi
    kill -0 "$PID" 2>/dev/null || { cat "$T/berth.log" >&2; die "berth exited during start-up"; }
    sleep 0.1
done
curl -fsS -o /dev/null "$BASE/healthz" || { cat "$T/berth.log" >&2; die "berth did not answer /healthz within 10 s"; }

rss_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$PID/status"; }
START_RSS_KIB=$(rss_kib VmRSS)

# call METHOD PATH EXPECTED_STATUS [JSON_BODY]; prints the response body.
call() {
    local method=$1 path=$2 want=$3 body=${4:-} status
    local args=(-sS -o "$T/resp" -w '%{http_code}' -X "$method")
    if [ -n "$AUTH" ]; then
        args+=(-H "Authorization: Bearer $AUTH")
    fi
    if [ -n "$body" ]; then
        args+=(-H 'Content-Type: application/json' --data "$body")
    fi
    status=$(curl "${args[@]}" "$BASE$path")
    if [ "$status" != "$want" ]; then
        cat "$T/resp" >&2
        die "$method $path answered $status, expected $want"
    fi
    cat "$T/resp"
}

AUTH=$(cat "$T/data/bootstrap-token")
call POST /v1/bootstrap 201 '{"username":"bench","password":"bench-password-1"}' >/dev/null
AUTH=""
AUTH=$(call POST /v1/auth/login 200 '{"username":"bench","password":"bench-password-1"}' | jq -er .token)
for i in $(seq -f '%03g' 1 "$PROJECTS"); do
    call POST /v1/projects 201 "{\"name\":\"p$i\",\"description\":\"benchmark project $i\"}" >/dev/null
done
TOKEN=$(call POST /v1/api-tokens 201 '{"name":"bench"}' | jq -er .token)
AUTH=$TOKEN

# The request under load must really be a 200 with a full first page (20 of the 100
# projects, has_more) and rate-limit headers.
URL="$BASE/v1/projects"
STATUS=$(curl -sS -D "$T/headers" -o "$T/list.json" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$URL")
[ "$STATUS" = 200 ] || { cat "$T/list.json" >&2; die "GET /v1/projects answered $STATUS"; }
COUNT=$(jq -er '.data | length' "$T/list.json")
[ "$COUNT" = 20 ] || die "GET /v1/projects returned $COUNT projects, expected a page of 20"
[ "$(jq -r .has_more "$T/list.json")" = true ] || die "GET /v1/projects: has_more should be true with $PROJECTS projects"
grep -qi '^x-ratelimit-remaining:' "$T/headers" || die "response has no X-RateLimit-Remaining header"
BODY_BYTES=$(wc -c <"$T/list.json")

sleep 2
IDLE_RSS_KIB=$(rss_kib VmRSS)

wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "$URL" | tee "$T/wrk.txt"

if grep -q 'Non-2xx or 3xx responses' "$T/wrk.txt"; then
    die "some responses under load were not 2xx: $(grep 'Non-2xx or 3xx responses' "$T/wrk.txt")"
fi
kill -0 "$PID" 2>/dev/null || { cat "$T/berth.log" >&2; die "berth died under load"; }
PEAK_RSS_KIB=$(rss_kib VmHWM)
AFTER_RSS_KIB=$(rss_kib VmRSS)

RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$T/wrk.txt")
P99_RAW=$(awk '$1 == "99%" { print $2 }' "$T/wrk.txt")
[ -n "$RPS" ] && [ -n "$P99_RAW" ] || die "could not read req/s and p99 from wrk's output"
# wrk prints latencies as e.g. 850.00us, 3.21ms, 1.02s, 1.50m.
P99_MS=$(awk -v v="$P99_RAW" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000; else if (u != "ms") n = -1
    printf "%.2f", n }')
[ "$P99_MS" != "-1.00" ] || die "unknown latency unit in $P99_RAW"
REQUESTS=$(awk '/requests in/ { print $1 }' "$T/wrk.txt")

MODE=""
[ "$SMOKE" != 1 ] || MODE="smoke, "
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

cat <<EOF

berth API benchmark ($MODE${DURATION}s, wrk -t$THREADS -c$CONNECTIONS)
  request        GET /v1/projects with an API token ($COUNT of $PROJECTS projects per page, $BODY_BYTES-byte body)
  requests       $REQUESTS
  throughput     $RPS req/s          (target >= $TARGET_RPS)
  p99 latency    $P99_MS ms              (budget < $BUDGET_P99_MS ms)
  RSS at start   $(mib "$START_RSS_KIB") MiB
  RSS idle       $(mib "$IDLE_RSS_KIB") MiB after setup   (budget < $BUDGET_RSS_MIB MiB)
  RSS after load $(mib "$AFTER_RSS_KIB") MiB, peak $(mib "$PEAK_RSS_KIB") MiB
EOF

MISSED=()
awk -v a="$RPS" -v b="$TARGET_RPS" 'BEGIN { exit !(a >= b) }' || MISSED+=(req_per_s)
awk -v a="$P99_MS" -v b="$BUDGET_P99_MS" 'BEGIN { exit !(a < b) }' || MISSED+=(p99_ms)
awk -v a="$IDLE_RSS_KIB" -v b="$BUDGET_RSS_MIB" 'BEGIN { exit !(a / 1024 < b) }' || MISSED+=(idle_rss_mib)

if [ "${#MISSED[@]}" -eq 0 ]; then
    TARGETS="targets=met"
else
    TARGETS="targets=missed:$(IFS=,; echo "${MISSED[*]}")"
fi
[ "$SMOKE" = 1 ] && TARGETS="$TARGETS(smoke: not enforced)"

printf 'api: req_per_s=%.0f (%s of %s target) p99_ms=%s (%s of %s ms budget) idle_rss_mib=%s (%s of %s MiB budget) peak_rss_mib=%s %s\n' \
    "$RPS" "$(ratio "$RPS" "$TARGET_RPS")" "$TARGET_RPS" \
    "$P99_MS" "$(ratio "$P99_MS" "$BUDGET_P99_MS")" "$BUDGET_P99_MS" \
    "$(mib "$IDLE_RSS_KIB")" "$(ratio "$IDLE_RSS_KIB" $((BUDGET_RSS_MIB * 1024)))" "$BUDGET_RSS_MIB" \
    "$(mib "$PEAK_RSS_KIB")" "$TARGETS"

if [ "$SMOKE" != 1 ] && [ "${#MISSED[@]}" -gt 0 ]; then
    exit 1
fi
