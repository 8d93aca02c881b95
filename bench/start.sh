#!/usr/bin/env bash
# Replica start time, layer unpack speed and shim memory, against bare runc (the
# limit), docker run and tar -x, measured in the same run.
#
#   bench/start.sh                  full run: 7 rounds, a 200 MiB layer; fails when a target is missed
#   BENCH_SMOKE=1 bench/start.sh    2 rounds, a 20 MiB layer; checks that everything works,
#                                   never fails on targets
#
# The measurements are one ignored integration test, tests/it/bench_start.rs (run as
# root: it starts containers, network namespaces and a private dockerd), built and run
# with `cargo test --release`, so the shim measured is the release `berth`:
#  1. berth: from just before Networks::attach (+ hosts file) and Runtime::create of a
#     busybox httpd replica (image pushed with docker to berth's registry, unpacked
#     beforehand) until GET /index.html at the replica's address answers 200;
#  2. the limit: `runc run -d` of an equivalent bundle (same layers as an overlay, the
#     config.json spec::build makes, a netns attached beforehand) until the same 200;
#     also `runc create` + `runc start` (no target; the two calls the shim makes);
#  3. `docker run -d --rm --network host` of the same image in a private engine until
#     a 200 on loopback;
#  4. a 200 MiB gzip layer of many text files: berth's unpack_layer vs `tar -xzf`;
#  5. memory of each replica's `berth shim` (VmRSS, and Pss with several running).
# Medians of the rounds; as the very last line, each figure as a ratio of its target:
#   start <= 1.5 x bare runc and <= 0.7 x docker run, unpack >= 0.8 x tar -x's speed,
#   each shim's Pss (its proportional share, shared text counted once) <= 4 MiB.
#
# Environment: BENCH_SMOKE=1, ROUNDS (repetitions), LAYER_MIB (size of the unpack layer).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=${BENCH_SMOKE:-0}

die() { printf 'bench/start: error: %s\n' "$*" >&2; printf 'start: FAILED (%s)\n' "$*"; exit 1; }

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
command -v cargo >/dev/null 2>&1 || skip "cargo not found (install Rust with rustup)"

T=$(mktemp -d -t berth-bench-start.XXXXXX)
cleanup() {
    rm -rf "$T"
}
trap cleanup EXIT

export BENCH_SMOKE=$SMOKE
[ -z "${ROUNDS:-}" ] || export BENCH_ROUNDS=$ROUNDS
[ -z "${LAYER_MIB:-}" ] || export BENCH_LAYER_MIB=$LAYER_MIB

# The test cleans up after itself (Drop guards), also when it fails; it prints a
# summary and, last, the verdict line. When it cannot run here (not root, a tool
# missing) it says so in a `SKIPPED: ` line (tests/it/harness.rs `require`), and this
# script skips by the same rule (`skip` in scripts/lib.sh); under CI=true the test
# fails instead.
skipped() { { grep -m1 -o 'SKIPPED: .*' "$T/out.txt" || true; } | sed 's/^SKIPPED: //'; }
if ! cargo test --release --quiet --test it bench_start -- --ignored --nocapture --test-threads=1 2>&1 \
    | tee "$T/out.txt"; then
    REASON=$(skipped)
    [ -z "$REASON" ] || skip "$REASON"
    die "the benchmark test failed (see above)"
fi

VERDICT=$(grep '^start: ' "$T/out.txt" | tail -n 1 || true)
if [ -z "$VERDICT" ]; then
    REASON=$(skipped)
    [ -z "$REASON" ] || skip "$REASON"
    die "the benchmark test did not run (is tests/it/bench_start.rs declared in tests/it/main.rs?)"
fi

printf '%s\n' "$VERDICT"

if [ "$SMOKE" != 1 ] && [[ "$VERDICT" == *targets=missed* ]]; then
    exit 1
fi
