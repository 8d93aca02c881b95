#!/usr/bin/env bash
# Whether slow clients can stall the API: wrk on an authenticated `GET /v1/projects`
# alone, then while slow clients hold connections, measured in the same run.
#
#   bench/stall.sh                  full run: 15 s of load per wrk run, a 64 MiB blob; fails when a target is missed
#   BENCH_SMOKE=1 bench/stall.sh    3 s per run, a 16 MiB blob; checks that everything works, never fails on targets
#
# Starts the release binary on a free loopback port with a throw-away state dir,
# bootstraps it, creates 20 projects and `bench`, mints an API token and pushes one
# random blob (one monolithic `POST /v2/bench/big/blobs/uploads/?digest=`). Then three
# wrk runs (2 threads, 64 connections, 2 s timeout) of the authenticated GET:
#  1. unloaded: nothing else talks to berth;
#  2. loaded, with the slow clients of one python3 process running:
#     - DOWNLOADS (32) downloads of the blob (`GET /v2/bench/big/blobs/sha256:...`
#       with the API token), each reading RATE_KIB (100) KiB a second in steps of a
#       tenth of that, with a 64 KiB receive buffer, so each stays in flight for the
#       whole run (64 MiB take ~11 min) with berth's side of the socket full;
#     - SLOWLORIS (256) connections on the API listener, half sending a request head
#       one byte a second, half sending a complete `POST /v1/auth/login` head with
#       `Content-Length: 1000` and then the body one byte a second; a connection the
#       server closes is opened again a second later;
#  3. unloaded again, after the slow clients were stopped (no target: shows recovery).
# (curl --limit-rate is not used for the downloads: curl 7.88 reads a first burst of
# megabytes at full speed and then stops reading until its average falls back, so
# its downloads are a burst and a stall rather than a steady slow reader.)
#
# Addresses: wrk comes from 127.0.0.1; the downloads from 127.0.0.2 and the slowloris
# connections from 127.0.0.3-127.0.0.10 (32 each), all on loopback. berth runs with its
# default connection caps (256 per address, 4096 in all): spreading the slow clients
# over addresses is what an attacker with a few hosts does, and keeps the caps as they
# ship instead of raising them for the benchmark. Only `rate_limit_per_minute` is
# raised (as in api.sh), so the per-token limiter stays in the path without refusing
# wrk; the slowloris clients are anonymous and stay under the per-address limit.
#
# Beside each wrk run, a canary client (python3) sends the same GET every 10 ms with a
# 2 s deadline: wrk counts only requests that were answered, so a request still
# waiting when its run ends is in none of wrk's figures (a daemon that never answers
# reads "0 requests, 0 errors"); the canary's are.
#
# As the very last line, the loaded run against the unloaded one:
#   success 100% (of wrk's requests and the canary's; a non-2xx answer, a socket error,
#   a timeout, or no answer within 2 s counts as a failure), p99 (wrk's) <= 2 x the
#   unloaded run's p99.
# A smoke run fails when something does not work: setup, a failure in the unloaded
# run, a slow client that could not connect or was cut off, berth dying.
#
# Environment: BENCH_SMOKE=1, DURATION (seconds per wrk run), BLOB_MIB, DOWNLOADS,
# RATE_KIB, SLOWLORIS, BERTH_BIN (a prebuilt binary; otherwise `cargo build --release`
# is run first, a no-op when up to date).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=${BENCH_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    DURATION=${DURATION:-3}
    BLOB_MIB=${BLOB_MIB:-16}
else
    DURATION=${DURATION:-15}
    BLOB_MIB=${BLOB_MIB:-64}
fi
DOWNLOADS=${DOWNLOADS:-32}
SLOWLORIS=${SLOWLORIS:-256}
RATE_KIB=${RATE_KIB:-100}
THREADS=2
CONNECTIONS=64
PROJECTS=20
TARGET_P99_RATIO=2
DL_ADDR=127.0.0.2
SLOW_ADDRS=(127.0.0.3 127.0.0.4 127.0.0.5 127.0.0.6 127.0.0.7 127.0.0.8 127.0.0.9 127.0.0.10)

# die MESSAGE: the benchmark fails with MESSAGE (bench_die in scripts/lib.sh).
die() { bench_die stall "$@"; }
# A need that is not met (a missing tool): a failure under CI=true, else a SKIPPED
# line, and the run does not pass unless BERTH_ALLOW_SKIP=1 (skip in scripts/lib.sh).
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
for tool in wrk:wrk curl:curl jq:jq python3:python3 awk:mawk sha256sum:coreutils; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || skip "${tool%%:*} is not installed (apt-get install -y ${tool#*:})"
done

if [ -n "${BERTH_BIN:-}" ]; then
    BIN=$BERTH_BIN
else
    command -v cargo >/dev/null 2>&1 || skip "cargo is not installed (rustup) and BERTH_BIN is not set"
    cargo build --release --quiet --bin berth || die "cargo build failed"
    BIN=${CARGO_TARGET_DIR:-target}/release/berth
fi
[ -x "$BIN" ] || die "$BIN is not an executable"

T=$(mktemp -d -t berth-bench-stall.XXXXXX)
BERTH_PID=""
SLOW_PID=""
VERDICT_PRINTED=0
stop_pid() {
    if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
        kill "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}
cleanup() {
    local rc=$?
    stop_pid "$SLOW_PID"
    stop_pid "$BERTH_PID"
    if [ "$rc" -ne 0 ] && [ "$VERDICT_PRINTED" = 0 ]; then
        printf 'stall: FAILED (%s)\n' "$(head -n 1 "$T/failure" 2>/dev/null || echo "exit status $rc")"
    fi
    rm -rf "$T"
}
trap cleanup EXIT

# The slow clients' source addresses must be bindable (all of 127.0.0.0/8 is local on Linux).
python3 - "$DL_ADDR" "${SLOW_ADDRS[@]}" <<'EOF' || die "cannot bind the loopback addresses 127.0.0.2-127.0.0.10"
import socket, sys
for a in sys.argv[1:]:
    s = socket.socket()
    s.bind((a, 0))
    s.close()
EOF

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"

cat >"$T/berth.toml" <<EOF
run_dir = "$T/run"

[api]
rate_limit_per_minute = 100000000
EOF

start_berth "127.0.0.1:$PORT" 127.0.0.1:0
berth_alive() { kill -0 "$BERTH_PID" 2>/dev/null || { tail -50 "$T/berth.log" >&2; die "berth died $1"; }; }
rss_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$BERTH_PID/status"; }

# call METHOD PATH EXPECTED_STATUS [JSON_BODY]; prints the response body.
AUTH=""
call() {
    local method=$1 path=$2 want=$3 body=${4:-} status
    local args=(-sS -o "$T/resp" -w '%{http_code}' -X "$method")
    [ -z "$AUTH" ] || args+=(-H "Authorization: Bearer $AUTH")
    [ -z "$body" ] || args+=(-H 'Content-Type: application/json' --data "$body")
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
call POST /v1/projects 201 '{"name":"bench"}' >/dev/null
for i in $(seq -f '%02g' 1 "$PROJECTS"); do
    call POST /v1/projects 201 "{\"name\":\"p$i\",\"description\":\"benchmark project $i\"}" >/dev/null
done
TOKEN=$(call POST /v1/api-tokens 201 '{"name":"bench"}' | jq -er .token)
AUTH=$TOKEN
URL="$BASE/v1/projects"
[ "$(call GET /v1/projects 200 | jq -er '.data | length')" = 20 ] || die "GET /v1/projects did not return a page of 20"

# The blob the slow clients download: random bytes, pushed in one request.
head -c $((BLOB_MIB * 1024 * 1024)) /dev/urandom >"$T/blob.bin" || die "could not write the blob"
BLOB_HEX=$(sha256sum "$T/blob.bin" | awk '{ print $1 }')
BLOB_PATH="/v2/bench/big/blobs/sha256:$BLOB_HEX"
BLOB_URL="$BASE$BLOB_PATH"
STATUS=$(curl -sS -o "$T/resp" -w '%{http_code}' -X POST -T "$T/blob.bin" -H 'Expect:' \
    -H 'Content-Type: application/octet-stream' -H "Authorization: Bearer $TOKEN" \
    --request-target "/v2/bench/big/blobs/uploads/?digest=sha256:$BLOB_HEX" "$BASE/") || die "blob upload: curl failed"
[ "$STATUS" = 201 ] || { cat "$T/resp" >&2; die "blob upload answered $STATUS, expected 201"; }
STATUS=$(curl -sS -o /dev/null -I -w '%{http_code} %header{content-length}' -H "Authorization: Bearer $TOKEN" "$BLOB_URL") \
    || die "HEAD of the blob: curl failed"
[ "$STATUS" = "200 $((BLOB_MIB * 1024 * 1024))" ] || die "HEAD of the blob answered '$STATUS' (status, length)"
rm -f "$T/blob.bin"

cat >"$T/slowclients.py" <<'EOF'
# slowclients.py STATS: the slow clients of bench/stall.sh, set up by environment
# variables (HOST, PORT, TOKEN; DOWNLOADS, DL_ADDR, DL_PATH, DL_RATE in bytes/s;
# HEADS, BODIES, SLOW_ADDRS). Runs until SIGTERM; every tick (0.1 s) it writes its
# counters to STATS (JSON).
# - DOWNLOADS connections from DL_ADDR GET DL_PATH and read DL_RATE bytes a second,
#   a tenth each tick, with a 64 KiB receive buffer. One that is refused (not a 200)
#   or closed is counted and not opened again.
# - HEADS connections send a request head one byte a second, BODIES connections a
#   login request's head at once and then its body one byte a second, spread over
#   SLOW_ADDRS. One the server closes is counted (by the status it answered, if any)
#   and opened again at the next second.
import json, os, selectors, signal, socket, sys, time

env = os.environ
host, port, stats_path = env["HOST"], int(env["PORT"]), sys.argv[1]
downloads, dl_addr, dl_rate = int(env["DOWNLOADS"]), env["DL_ADDR"], int(env["DL_RATE"])
heads, bodies, slow_addrs = int(env["HEADS"]), int(env["BODIES"]), env["SLOW_ADDRS"].split()
TICK = 0.1
DL_REQ = (f"GET {env['DL_PATH']} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: slow-download\r\n"
          f"Authorization: Bearer {env['TOKEN']}\r\n\r\n").encode()
HEAD = (f"GET /v1/projects HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: slowloris\r\n"
        f"X-Padding: {'a' * 200}\r\n\r\n").encode()
BODY_HEAD = (f"POST /v1/auth/login HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: slowloris\r\n"
             "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode()
BODY = (b'{"username":"slowloris","password":"' + b"x" * 1000)[:1000]

dl = {"open": 0, "started": 0, "bytes": 0, "closed": 0, "connect_errors": 0, "refused": {}}
sl = {"open": 0, "all_open": False, "fewest_open": None, "opened": 0, "connect_errors": 0,
      "answered": {}, "closed_silently": 0, "send_errors": 0}
st = {"downloads": dl, "slowloris": sl}

def connect(addr, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((addr, 0))
    s.settimeout(2)
    s.connect((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

readers = {}  # socket -> bytes received (the response head included)
for _ in range(downloads):
    try:
        s = connect(dl_addr, rcvbuf=64 << 10)
        s.sendall(DL_REQ)
        s.setblocking(False)
        readers[s] = 0
    except OSError:
        dl["connect_errors"] += 1

sel = selectors.DefaultSelector()
conns = {}  # socket -> [kind, bytes to send slowly, position, source address]
pending = []  # (kind, source address) of slowloris connections to open again

def open_slow(kind, addr):
    try:
        s = connect(addr)
        if kind == "body":
            s.sendall(BODY_HEAD)
        s.setblocking(False)
    except OSError:
        sl["connect_errors"] += 1
        pending.append((kind, addr))
        return
    sl["opened"] += 1
    conns[s] = [kind, HEAD if kind == "head" else BODY, 0, addr]
    sel.register(s, selectors.EVENT_READ)

def close_slow(s):
    # Opened again at the next second, not at once: a server that drops connections
    # straight away must not turn this into a connection flood.
    sel.unregister(s)
    kind, _, _, addr = conns.pop(s)
    s.close()
    pending.append((kind, addr))

def read_some(s):
    """Reads up to a tick's share; False when the download is over (refused or closed)."""
    quota = max(1, int(dl_rate * TICK))
    while quota > 0:
        try:
            data = s.recv(min(quota, 65536))
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            dl["closed"] += 1
            return False
        if readers[s] == 0:
            if not data.startswith(b"HTTP/1.1 200"):
                code = data[9:12].decode(errors="replace")
                dl["refused"][code] = dl["refused"].get(code, 0) + 1
                return False
            dl["started"] += 1
        readers[s] += len(data)
        dl["bytes"] += len(data)
        quota -= len(data)
    return True

def write_stats():
    dl["open"], sl["open"] = len(readers), len(conns)
    tmp = stats_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(st, f)
    os.replace(tmp, stats_path)

def stop(*_):
    write_stats()
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
for i in range(heads + bodies):
    open_slow("head" if i < heads else "body", slow_addrs[i % len(slow_addrs)])
tick, next_tick = 0, time.monotonic()
while True:
    for key, _ in sel.select(timeout=max(0.0, next_tick - time.monotonic())):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if data.startswith(b"HTTP/1.1 "):
            code = data[9:12].decode(errors="replace")
            sl["answered"][code] = sl["answered"].get(code, 0) + 1
        else:
            sl["closed_silently"] += 1
        close_slow(s)
    if time.monotonic() < next_tick:
        continue
    next_tick += TICK
    tick += 1
    for s in list(readers):
        if not read_some(s):
            del readers[s]
            s.close()
    if tick % 10 == 0:
        retry, pending[:] = pending[:], []
        for kind, addr in retry:
            open_slow(kind, addr)
        for s, c in list(conns.items()):
            kind, payload, pos, _ = c
            if pos < len(payload):
                try:
                    s.send(payload[pos:pos + 1])
                    c[2] += 1
                except OSError:
                    sl["send_errors"] += 1
                    close_slow(s)
        if len(conns) == heads + bodies:
            sl["all_open"] = True
        if sl["all_open"]:
            sl["fewest_open"] = len(conns) if sl["fewest_open"] is None else min(sl["fewest_open"], len(conns))
    write_stats()
EOF

ms() {
    # wrk prints latencies as e.g. 850.00us, 3.21ms, 1.02s, 1.50m.
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000; else if (u != "ms") n = -1
        printf "%.2f", n }'
}
cat >"$T/canary.py" <<'EOF'
# canary.py HOST PORT PATH SECONDS OUT (TOKEN in the environment): one more normal
# client beside wrk, for what wrk does not count. wrk reports only requests that were
# answered: one still waiting when the run ends is in no figure, so a daemon that
# never answers reads as "0 requests, 0 errors". This client sends the same GET every
# 10 ms on a kept-alive connection, gives each answer 2 s (a new connection after a
# failure), and writes to OUT (JSON) how many got a 200 in time, how many did not
# (by cause), and the slowest answer.
import http.client, json, os, sys, time

host, port, path, seconds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
headers = {"Authorization": "Bearer " + os.environ["TOKEN"]}
st = {"ok": 0, "failed": 0, "causes": {}, "max_ms": 0.0}
conn = None
end = time.monotonic() + seconds
while time.monotonic() < end:
    t0 = time.monotonic()
    try:
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=2)
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        r.read()
        took = time.monotonic() - t0
        if r.status == 200 and took <= 2:
            st["ok"] += 1
        else:
            cause = str(r.status) if r.status != 200 else "slower than 2 s"
            st["failed"] += 1
            st["causes"][cause] = st["causes"].get(cause, 0) + 1
        st["max_ms"] = max(st["max_ms"], took * 1000)
    except (OSError, http.client.HTTPException) as e:
        st["failed"] += 1
        cause = type(e).__name__
        st["causes"][cause] = st["causes"].get(cause, 0) + 1
        st["max_ms"] = max(st["max_ms"], (time.monotonic() - t0) * 1000)
        if conn is not None:
            conn.close()
        conn = None
    time.sleep(0.01)
with open(out, "w") as f:
    json.dump(st, f)
EOF

# load NAME: one wrk run of the authenticated GET with the canary beside it; sets RPS,
# P99_MS, REQS, NON2XX, SOCK_ERRS (connect + read + write), TIMEOUTS, CANARY (its
# JSON), OK and ALL (requests of both that got a 2xx in time, and every request of
# both: wrk's answered ones and socket errors, the canary's) and SUCCESS_PCT.
load() {
    local name=$1 out="$T/wrk-$1.txt" p99 canary_pid c_ok c_failed
    TOKEN=$TOKEN python3 "$T/canary.py" 127.0.0.1 "$PORT" /v1/projects "$DURATION" "$T/canary-$name.json" &
    canary_pid=$!
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 2s --latency -H "Authorization: Bearer $TOKEN" "$URL" \
        >"$out" || { cat "$out" >&2; die "wrk ($name) failed"; }
    wait "$canary_pid" || die "the canary client failed ($name)"
    CANARY=$(cat "$T/canary-$name.json")
    RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    REQS=$(awk '/requests in/ { print $1 }' "$out")
    [ -n "$RPS" ] && [ -n "$p99" ] && [ -n "$REQS" ] || { cat "$out" >&2; die "could not read wrk's output ($name)"; }
    P99_MS=$(ms "$p99")
    [ "$P99_MS" != "-1.00" ] || die "unknown latency unit in $p99"
    # No answer at all: the p99 is at least the run's length.
    [ "$REQS" != 0 ] || P99_MS=$((DURATION * 1000)).00
    NON2XX=$(awk '/Non-2xx or 3xx responses:/ { print $5 }' "$out")
    NON2XX=${NON2XX:-0}
    read -r SOCK_ERRS TIMEOUTS < <(awk '/Socket errors:/ { gsub(/,/, ""); s = $4 + $6 + $8; t = $10 } END { print s + 0, t + 0 }' "$out")
    c_ok=$(jq -r .ok <<<"$CANARY")
    c_failed=$(jq -r .failed <<<"$CANARY")
    OK=$((REQS - NON2XX - TIMEOUTS))
    [ "$OK" -ge 0 ] || OK=0
    OK=$((OK + c_ok))
    ALL=$((REQS + SOCK_ERRS + c_ok + c_failed))
    # wrk answered nothing: each of its connections had a request that got no answer.
    [ "$REQS" != 0 ] || ALL=$((ALL + CONNECTIONS))
    # Rounded down, so it reads 100 only when nothing failed.
    SUCCESS_PCT=$(awk -v ok="$OK" -v all="$ALL" \
        'BEGIN { if (ok == all && all > 0) print "100"; else if (all > 0) printf "%.3f", int(100000 * ok / all) / 1000; else print 0 }')
    printf '  %-9s %8.0f req/s   p99 %7s ms   wrk: %s answered, %s non-2xx, %s socket errors, %s timeouts; canary: %s ok, %s failed, slowest %s ms: %s%% success\n' \
        "$name" "$RPS" "$P99_MS" "$REQS" "$NON2XX" "$SOCK_ERRS" "$TIMEOUTS" "$c_ok" "$c_failed" \
        "$(jq -r '.max_ms | floor' <<<"$CANARY")" "$SUCCESS_PCT"
}

sleep 1
IDLE_RSS_KIB=$(rss_kib VmRSS)
printf '\nwrk -t%s -c%s -d%ss --timeout 2s --latency, GET /v1/projects with an API token\n' "$THREADS" "$CONNECTIONS" "$DURATION"

load unloaded
[ "$OK" = "$ALL" ] && [ "$REQS" -gt 0 ] \
    || die "the unloaded run had failures ($NON2XX non-2xx, $SOCK_ERRS socket errors, $TIMEOUTS timeouts; canary $CANARY)"
BASE_P99=$P99_MS BASE_RPS=$RPS
berth_alive "during the unloaded run"

# The slow clients. Every download must be connected and every slowloris connection
# open before the loaded run starts; the downloads are given up to 10 s to get their
# answer (a daemon that cannot answer them in that time is stalling already, which
# the loaded run then shows; the summary reports how many were answered).
HOST=127.0.0.1 PORT=$PORT TOKEN=$TOKEN DOWNLOADS=$DOWNLOADS DL_ADDR=$DL_ADDR DL_PATH=$BLOB_PATH \
    DL_RATE=$((RATE_KIB * 1024)) HEADS=$((SLOWLORIS / 2)) BODIES=$((SLOWLORIS - SLOWLORIS / 2)) \
    SLOW_ADDRS="${SLOW_ADDRS[*]}" python3 "$T/slowclients.py" "$T/slow.json" 2>"$T/slow.err" &
SLOW_PID=$!
for _ in $(seq 1 100); do
    jq -e --argjson d "$DOWNLOADS" '.downloads.started == $d and .slowloris.all_open' "$T/slow.json" >/dev/null 2>&1 \
        && break
    kill -0 "$SLOW_PID" 2>/dev/null || { cat "$T/slow.err" >&2; die "the slow clients exited"; }
    sleep 0.1
done
jq -e --argjson d "$DOWNLOADS" '.downloads.open == $d and .slowloris.all_open' "$T/slow.json" >/dev/null 2>&1 \
    || die "the slow clients did not get going in 10 s: $(cat "$T/slow.json" 2>/dev/null)"
DL_STARTED=$(jq -r '.downloads.started' "$T/slow.json")
[ "$DL_STARTED" = "$DOWNLOADS" ] || printf 'bench/stall: only %s of %s downloads were answered within 10 s\n' "$DL_STARTED" "$DOWNLOADS" >&2
berth_alive "while the slow clients connected"

load loaded
LOADED_P99=$P99_MS LOADED_RPS=$RPS LOADED_SUCCESS=$SUCCESS_PCT LOADED_OK=$OK LOADED_ALL=$ALL
LOADED_DETAIL="wrk: $REQS answered, $NON2XX non-2xx, $SOCK_ERRS socket errors, $TIMEOUTS timeouts; canary: $CANARY"
berth_alive "under the slow clients"
PEAK_RSS_KIB=$(rss_kib VmHWM)

# The slow clients must still have been there at the end of the loaded run: every
# download in flight, and the slowloris connections held.
kill -0 "$SLOW_PID" 2>/dev/null || { cat "$T/slow.err" >&2; die "the slow clients exited during the loaded run"; }
stop_pid "$SLOW_PID"
SLOW_PID=""
SLOW_STATS=$(cat "$T/slow.json")
DL_OPEN=$(jq -r '.downloads.open' <<<"$SLOW_STATS")
DL_STARTED=$(jq -r '.downloads.started' <<<"$SLOW_STATS")
[ "$DL_OPEN" = "$DOWNLOADS" ] || die "only $DL_OPEN of $DOWNLOADS downloads were still in flight at the end of the loaded run: $SLOW_STATS"
SLOW_HELD=$(jq -r '.slowloris.fewest_open // 0' <<<"$SLOW_STATS")
[ "$SLOWLORIS" = 0 ] || [ "$SLOW_HELD" -gt 0 ] || die "no slowloris connection stayed open: $SLOW_STATS"
DL_MIB=$(jq -r '.downloads.bytes / 1048576 * 10 | floor / 10' <<<"$SLOW_STATS")

sleep 2
load after
AFTER_P99=$P99_MS
berth_alive "after the slow clients"
sleep 2
AFTER_RSS_KIB=$(rss_kib VmRSS)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "inf" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
P99_RATIO=$(ratio "$LOADED_P99" "$BASE_P99")
MODE=""
[ "$SMOKE" != 1 ] || MODE="smoke, "

cat <<EOF

berth stall benchmark (${MODE}${DURATION}s per wrk run, wrk -t$THREADS -c$CONNECTIONS from 127.0.0.1)
  slow clients   $DOWNLOADS downloads of a $BLOB_MIB MiB blob at $RATE_KIB KiB/s each from $DL_ADDR ($DL_STARTED answered by the end of the loaded run, $DL_MIB MiB received in all);
                 $SLOWLORIS slowloris connections from ${SLOW_ADDRS[0]}-${SLOW_ADDRS[-1]} ($((SLOWLORIS / 2)) heads, $((SLOWLORIS - SLOWLORIS / 2)) login bodies, a byte a second): at least $SLOW_HELD open at every second
                 counters: $SLOW_STATS
  unloaded       $(printf '%.0f' "$BASE_RPS") req/s, p99 $BASE_P99 ms
  loaded         $(printf '%.0f' "$LOADED_RPS") req/s ($(ratio "$LOADED_RPS" "$BASE_RPS") of unloaded), p99 $LOADED_P99 ms ($P99_RATIO of unloaded; target <= $TARGET_P99_RATIO)
                 success $LOADED_SUCCESS% ($LOADED_OK of $LOADED_ALL; $LOADED_DETAIL; target 100%)
  after          p99 $AFTER_P99 ms ($(ratio "$AFTER_P99" "$BASE_P99") of unloaded; no target)
  berth RSS      idle $(mib "$IDLE_RSS_KIB") MiB, peak $(mib "$PEAK_RSS_KIB") MiB, after $(mib "$AFTER_RSS_KIB") MiB
EOF

MISSED=()
# Exact: one failed request in a million still rounds to 100.00%.
[ "$LOADED_OK" = "$LOADED_ALL" ] && [ "$LOADED_ALL" -gt 0 ] || MISSED+=(success)
awk -v a="$P99_RATIO" -v b="$TARGET_P99_RATIO" 'BEGIN { exit !(a <= b) }' || MISSED+=(p99)
if [ "${#MISSED[@]}" -eq 0 ]; then
    TARGETS="targets=met"
else
    TARGETS="targets=missed:$(IFS=,; echo "${MISSED[*]}")"
fi
[ "$SMOKE" = 1 ] && TARGETS="$TARGETS(smoke: not enforced)"

VERDICT_PRINTED=1
printf 'stall: success=%s%% (%s of %s requests; target 100%%) p99_ms=%s (%s of unloaded %s ms; target <= %s) req_per_s=%.0f (%s of unloaded) slow_clients=%s downloads (%s answered)+%s slowloris peak_rss_mib=%s %s\n' \
    "$LOADED_SUCCESS" "$LOADED_OK" "$LOADED_ALL" \
    "$LOADED_P99" "$P99_RATIO" "$BASE_P99" "$TARGET_P99_RATIO" \
    "$LOADED_RPS" "$(ratio "$LOADED_RPS" "$BASE_RPS")" "$DOWNLOADS" "$DL_STARTED" "$SLOWLORIS" "$(mib "$PEAK_RSS_KIB")" "$TARGETS"

if [ "$SMOKE" != 1 ] && [ "${#MISSED[@]}" -gt 0 ]; then
    exit 1
fi
