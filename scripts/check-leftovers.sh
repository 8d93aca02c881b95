#!/usr/bin/env bash
# After the test suite: nothing the tests made may remain on the machine. Tests name
# what they create with berth-it-* (temp dirs, netns, cgroups), berth_it_* (nftables
# tables) and addresses from 10.200.0.0-10.254.255.255; this lists anything left
# and fails if there is any. It only reads; it never removes or kills anything.
set -uo pipefail

status=0
report() {
    printf 'leftover %s: %s\n' "$1" "$2" >&2
    status=1
}

while read -r line; do report mount "$line"; done < <(awk '$5 ~ /\/berth-it-/ { print $5 }' /proc/self/mountinfo)
if command -v ip >/dev/null; then
    while read -r ns _; do report netns "$ns"; done < <(ip netns list 2>/dev/null | grep -E '^berth-it-')
    while read -r line; do report address "$line"; done < <(ip -o -4 addr show 2>/dev/null |
        awk '{ split($4, a, "."); if (a[1] == 10 && a[2] >= 200 && a[2] <= 254) print $2, $4 }')
fi
if command -v nft >/dev/null; then
    while read -r line; do report nftables "$line"; done < <(nft list tables 2>/dev/null | grep -E 'berth_it_')
fi
while read -r d; do report cgroup "$d"; done < <(find /sys/fs/cgroup -mindepth 1 -maxdepth 7 -type d -name 'berth-it-*' 2>/dev/null)
while read -r d; do report tempdir "$d"; done < <(find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'berth-it-*' 2>/dev/null)
for p in /proc/[0-9]*; do
    cmd=$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
    case "$cmd" in
        *check-leftovers*) ;;
        *berth-it-*) report process "${p#/proc/} ${cmd:0:160}" ;;
    esac
done

if [ "$status" -eq 0 ]; then
    echo "check-leftovers: nothing left behind"
fi
exit "$status"
