#!/usr/bin/env bash
# API throughput, tail latency and memory of `berth serve --dev`, against a minimal
# hyper server answering the same bytes, measured in the same run.
#
#   bench/api.sh                  full run: 3 rounds of 10 s of load on each server; fails when a target is missed
#   BENCH_SMOKE=1 bench/api.sh    1 round of 2 s each; checks that everything works, never fails on targets
#
# Starts the release binary on a free loopback port with a throw-away state dir,
# bootstraps it, creates 100 projects (p001..p100), mints an API token and drives an
# authenticated `GET /v1/projects` (the default page of 20, with 100 projects in the
# node, a ~4.5 KB body) with wrk (2 threads, 64 connections).
#
# The reference: `examples/bench_ref.rs`, a hyper server set up like berth's listener
# (same runtime, HTTP/1.1, TCP_NODELAY, 127.0.0.1 and a free port) that answers every
# request with the very bytes berth answered the GET with (fetched once with curl,
# served from memory), driven by the same wrk command. Each round runs both servers
# back to back (taking turns going first); the ratios are the medians of the rounds'
# ratios, so a change in the machine's load between rounds cancels out.
#
# As the very last line, each figure as a ratio of its target:
#   req/s >= 0.5 x the reference's, p99 <= 2 x the reference's p99, idle RSS < 20 MiB.
# The absolute figures (medians) are printed too.
#
# Environment: BENCH_SMOKE=1, DURATION (seconds of load per wrk run), ROUNDS,
# BERTH_BIN and BENCH_REF_BIN (prebuilt binaries; otherwise `cargo build --release` of
# the berth binary and the bench_ref example is run first, a no-op when up to date).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=${BENCH_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    DURATION=${DURATION:-2}
    ROUNDS=${ROUNDS:-1}
else
    DURATION=${DURATION:-10}
    ROUNDS=${ROUNDS:-3}
fi
THREADS=2
CONNECTIONS=64
PROJECTS=100
TARGET_RPS_RATIO=0.5
TARGET_P99_RATIO=2
BUDGET_RSS_MIB=20

# die MESSAGE: the benchmark fails with MESSAGE (bench_die in scripts/lib.sh).
die() { bench_die api "$@"; }
# A need that is not met (a missing tool): a failure under CI=true, else a SKIPPED
# line, and the run does not pass unless BERTH_ALLOW_SKIP=1 (skip in scripts/lib.sh).
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
for tool in wrk:wrk curl:curl jq:jq python3:python3 awk:mawk cmp:diffutils; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || skip "${tool%%:*} is not installed (apt-get install -y ${tool#*:})"
done

# Two cargo runs, not one: building an example enables the dev-dependencies' features
# (tokio's test-util), and one run for both would build the measured daemon with them.
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -z "${BERTH_BIN:-}" ] || [ -z "${BENCH_REF_BIN:-}" ]; then
    command -v cargo >/dev/null 2>&1 || skip "cargo is not installed (rustup) and BERTH_BIN/BENCH_REF_BIN are not set"
fi
[ -n "${BERTH_BIN:-}" ] || cargo build --release --quiet --bin berth || die "cargo build --bin berth failed"
[ -n "${BENCH_REF_BIN:-}" ] || cargo build --release --quiet --example bench_ref || die "cargo build --example bench_ref failed"
BIN=${BERTH_BIN:-$TARGET_DIR/release/berth}
REF_BIN=${BENCH_REF_BIN:-$TARGET_DIR/release/examples/bench_ref}
[ -x "$BIN" ] || die "$BIN is not an executable"
[ -x "$REF_BIN" ] || die "$REF_BIN is not an executable"

T=$(mktemp -d -t berth-bench-api.XXXXXX)
BERTH_PID=""
REF_PID=""
stop_pid() {
    if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
        kill "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}
VERDICT_PRINTED=0
cleanup() {
    local rc=$?
    stop_pid "$BERTH_PID"
    stop_pid "$REF_PID"
    if [ "$rc" -ne 0 ] && [ "$VERDICT_PRINTED" = 0 ]; then
        printf 'api: FAILED (%s)\n' "$(head -n 1 "$T/failure" 2>/dev/null || echo "exit status $rc")"
    fi
    rm -rf "$T"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
BASE="http://127.0.0.1:$PORT"

# The per-token limiter (default 6000/min) would answer most of the load with 429.
# Raising it keeps the limiter in the path: every request is still counted and still
# gets its X-RateLimit-* headers, it just is not refused.
cat >"$T/berth.toml" <<EOF
run_dir = "$T/run"

[api]
rate_limit_per_minute = 100000000
EOF

start_berth "127.0.0.1:$PORT" 127.0.0.1:0

rss_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
START_RSS_KIB=$(rss_kib "$BERTH_PID" VmRSS)

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
    status=$(curl "${args[@]}" "$BASE$path") || die "$method $path: curl failed"
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
# projects, has_more) and rate-limit headers. Its body is what the reference serves.
URL="$BASE/v1/projects"
STATUS=$(curl -sS -D "$T/headers" -o "$T/list.json" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$URL")
[ "$STATUS" = 200 ] || { cat "$T/list.json" >&2; die "GET /v1/projects answered $STATUS"; }
COUNT=$(jq -er '.data | length' "$T/list.json")
[ "$COUNT" = 20 ] || die "GET /v1/projects returned $COUNT projects, expected a page of 20"
[ "$(jq -r .has_more "$T/list.json")" = true ] || die "GET /v1/projects: has_more should be true with $PROJECTS projects"
grep -qi '^x-ratelimit-remaining:' "$T/headers" || die "response has no X-RateLimit-Remaining header"
BODY_BYTES=$(wc -c <"$T/list.json")

REF_PORT=$(free_port)
REF_URL="http://127.0.0.1:$REF_PORT/v1/projects"
"$REF_BIN" "$REF_PORT" "$T/list.json" >"$T/ref.log" 2>&1 &
REF_PID=$!
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$REF_URL" 2>/dev/null && break
    kill -0 "$REF_PID" 2>/dev/null || { cat "$T/ref.log" >&2; die "bench_ref exited during start-up"; }
    sleep 0.1
done
curl -fsS -o "$T/ref.json" "$REF_URL" || { cat "$T/ref.log" >&2; die "bench_ref did not answer within 10 s"; }
cmp -s "$T/list.json" "$T/ref.json" || die "bench_ref does not answer berth's bytes"

sleep 2
IDLE_RSS_KIB=$(rss_kib "$BERTH_PID" VmRSS)
REF_RSS_KIB=$(rss_kib "$REF_PID" VmRSS)

ms() {
    # wrk prints latencies as e.g. 850.00us, 3.21ms, 1.02s, 1.50m.
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000; else if (u != "ms") n = -1
        printf "%.2f", n }'
}
# load NAME URL: one wrk run; sets RPS, P99_MS, REQS and ERRS (socket errors, summed).
# Any non-2xx answer fails the run: both servers must answer every request with the page.
load() {
    local name=$1 url=$2 out="$T/wrk-$1-$r.txt" p99
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "$url" >"$out" \
        || { cat "$out" >&2; die "wrk against $name failed"; }
    if grep -q 'Non-2xx or 3xx responses' "$out"; then
        cat "$out" >&2
        die "some answers from $name under load were not 2xx: $(grep 'Non-2xx or 3xx responses' "$out")"
    fi
    RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    REQS=$(awk '/requests in/ { print $1 }' "$out")
    [ -n "$RPS" ] && [ -n "$p99" ] && [ -n "$REQS" ] || { cat "$out" >&2; die "could not read req/s and p99 from wrk's output"; }
    P99_MS=$(ms "$p99")
    [ "$P99_MS" != "-1.00" ] || die "unknown latency unit in $p99"
    ERRS=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    ERRS=${ERRS:-0}
    printf '  round %s  %-9s %9.0f req/s   p99 %7s ms   %s requests, %s socket errors\n' \
        "$r" "$name" "$RPS" "$P99_MS" "$REQS" "$ERRS"
}

printf '\nwrk -t%s -c%s -d%ss --latency, %s round(s)\n' "$THREADS" "$CONNECTIONS" "$DURATION" "$ROUNDS"
B_RPS=() B_P99=() R_RPS=() R_P99=() RPS_RATIOS=() P99_RATIOS=() B_ERRS=0
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "inf" }'; }
for r in $(seq 1 "$ROUNDS"); do
    for who in $(if [ $((r % 2)) = 1 ]; then echo berth reference; else echo reference berth; fi); do
        if [ "$who" = berth ]; then
            load berth "$URL"
            B_RPS+=("$RPS") B_P99+=("$P99_MS")
            B_ERRS=$((B_ERRS + ERRS))
            kill -0 "$BERTH_PID" 2>/dev/null || { cat "$T/berth.log" >&2; die "berth died under load"; }
        else
            load reference "$REF_URL"
            R_RPS+=("$RPS") R_P99+=("$P99_MS")
            kill -0 "$REF_PID" 2>/dev/null || die "bench_ref died under load"
        fi
    done
    RPS_RATIOS+=("$(ratio "${B_RPS[-1]}" "${R_RPS[-1]}")")
    P99_RATIOS+=("$(ratio "${B_P99[-1]}" "${R_P99[-1]}")")
done
PEAK_RSS_KIB=$(rss_kib "$BERTH_PID" VmHWM)
AFTER_RSS_KIB=$(rss_kib "$BERTH_PID" VmRSS)

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
RPS_MED=$(median "${B_RPS[@]}")
P99_MED=$(median "${B_P99[@]}")
REF_RPS_MED=$(median "${R_RPS[@]}")
REF_P99_MED=$(median "${R_P99[@]}")
RPS_RATIO=$(median "${RPS_RATIOS[@]}")
P99_RATIO=$(median "${P99_RATIOS[@]}")

MODE=""
[ "$SMOKE" != 1 ] || MODE="smoke, "
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

cat <<EOF

berth API benchmark (${MODE}medians of $ROUNDS round(s) of ${DURATION}s, wrk -t$THREADS -c$CONNECTIONS)
  request        GET /v1/projects with an API token ($COUNT of $PROJECTS projects per page, $BODY_BYTES-byte body)
  throughput     berth $(printf '%.0f' "$RPS_MED") req/s, reference $(printf '%.0f' "$REF_RPS_MED") req/s   ratio $RPS_RATIO (target >= $TARGET_RPS_RATIO; rounds ${RPS_RATIOS[*]})
  p99 latency    berth $P99_MED ms, reference $REF_P99_MED ms   ratio $P99_RATIO (target <= $TARGET_P99_RATIO; rounds ${P99_RATIOS[*]})
  socket errors  berth $B_ERRS in all
  RSS at start   $(mib "$START_RSS_KIB") MiB
  RSS idle       $(mib "$IDLE_RSS_KIB") MiB after setup   (budget < $BUDGET_RSS_MIB MiB); reference $(mib "$REF_RSS_KIB") MiB
  RSS after load $(mib "$AFTER_RSS_KIB") MiB, peak $(mib "$PEAK_RSS_KIB") MiB
EOF

MISSED=()
awk -v a="$RPS_RATIO" -v b="$TARGET_RPS_RATIO" 'BEGIN { exit !(a >= b) }' || MISSED+=(req_per_s)
awk -v a="$P99_RATIO" -v b="$TARGET_P99_RATIO" 'BEGIN { exit !(a <= b) }' || MISSED+=(p99_ms)
awk -v a="$IDLE_RSS_KIB" -v b="$BUDGET_RSS_MIB" 'BEGIN { exit !(a / 1024 < b) }' || MISSED+=(idle_rss_mib)

if [ "${#MISSED[@]}" -eq 0 ]; then
    TARGETS="targets=met"
else
    TARGETS="targets=missed:$(IFS=,; echo "${MISSED[*]}")"
fi
[ "$SMOKE" = 1 ] && TARGETS="$TARGETS(smoke: not enforced)"

VERDICT_PRINTED=1
printf 'api: req_per_s=%.0f (%s of reference %.0f; target >= %s) p99_ms=%s (%s of reference %s ms; target <= %s) idle_rss_mib=%s (%s of %s MiB budget) peak_rss_mib=%s %s\n' \
    "$RPS_MED" "$RPS_RATIO" "$REF_RPS_MED" "$TARGET_RPS_RATIO" \
    "$P99_MED" "$P99_RATIO" "$REF_P99_MED" "$TARGET_P99_RATIO" \
    "$(mib "$IDLE_RSS_KIB")" "$(ratio "$IDLE_RSS_KIB" $((BUDGET_RSS_MIB * 1024)))" "$BUDGET_RSS_MIB" \
    "$(mib "$PEAK_RSS_KIB")" "$TARGETS"

if [ "$SMOKE" != 1 ] && [ "${#MISSED[@]}" -gt 0 ]; then
    exit 1
fi
