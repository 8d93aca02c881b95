#!/usr/bin/env bash
# After the test suite: nothing the tests made may remain on the machine. Tests name
# what they create with berth-it-* (temp dirs, netns, cgroups), berth_it_* (nftables
# tables) and addresses from 10.200.0.0-10.254.255.255; this lists anything left
# and fails if there is any. It only reads; it never removes or kills anything.
#
#   check-leftovers.sh                  # fail on anything found
#   check-leftovers.sh --record FILE    # write what exists now (before the tests)
#   check-leftovers.sh --since FILE     # fail only on what is new since FILE
#
# test.sh records before the tests so that something another run left on a shared
# machine is named (as a warning) but not blamed on this run.
set -uo pipefail

mode=check
baseline=
case "${1:-}" in
    --record) mode=record; baseline=${2:?--record FILE} ;;
    --since) baseline=${2:?--since FILE} ;;
    "") ;;
    *) echo "usage: $0 [--record FILE | --since FILE]" >&2; exit 2 ;;
esac

inventory() {
    awk '$5 ~ /\/berth-it-/ { print "mount", $5 }' /proc/self/mountinfo
    if command -v ip >/dev/null; then
        ip netns list 2>/dev/null | awk '/^berth-it-/ { print "netns", $1 }'
        ip -o -4 addr show 2>/dev/null |
            awk '{ split($4, a, "."); if (a[1] == 10 && a[2] >= 200 && a[2] <= 254) print "address", $2, $4 }'
    fi
    if command -v nft >/dev/null; then
        nft list tables 2>/dev/null | grep -E 'berth_it_' | sed 's/^/nftables /'
    fi
    find /sys/fs/cgroup -mindepth 1 -maxdepth 7 -type d -name 'berth-it-*' 2>/dev/null | sed 's/^/cgroup /'
    find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'berth-it-*' 2>/dev/null | sed 's/^/tempdir /'
    for p in /proc/[0-9]*; do
        cmd=$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
        case "$cmd" in
            *check-leftovers*) ;;
            *berth-it-*) echo "process ${p#/proc/} ${cmd:0:160}" ;;
        esac
    done
}

now=$(inventory | sort -u)
if [ "$mode" = record ]; then
    printf '%s\n' "$now" >"$baseline"
    exit 0
fi

status=0
while read -r kind rest; do
    [ -n "$kind" ] || continue
    if [ -n "$baseline" ] && grep -qxF "$kind $rest" "$baseline" 2>/dev/null; then
        printf 'check-leftovers: warning: %s %s was there before the tests began (not counted)\n' "$kind" "$rest" >&2
        continue
    fi
    printf 'leftover %s: %s\n' "$kind" "$rest" >&2
    status=1
done <<<"$now"

if [ "$status" -eq 0 ]; then
    echo "check-leftovers: nothing left behind"
fi
exit "$status"
