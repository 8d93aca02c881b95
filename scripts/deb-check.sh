#!/usr/bin/env bash
# Builds the .deb (packaging/build-deb.sh) and checks it without installing it:
#
#   bash scripts/deb-check.sh
#
# 1. lintian: no errors and no warnings (info tags are printed, not fatal);
# 2. systemd-analyze verify of the packaged unit, run against a root holding the
#    host's systemd units plus the package's files (so ExecStart=/usr/bin/berth is the
#    packaged binary): any message at all fails, since unknown keys and bad values
#    are only warnings to systemd;
# 3. systemd-analyze security --offline of the unit, printed for the record (the
#    README quotes it; the score is not asserted).
# Env: BERTH_DEB_NO_BUILD=1 packages the existing release binary (see build-deb.sh).
# Prints the .deb's path as its last line on stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'deb-check.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

need_tool dpkg-deb dpkg
need_tool dpkg-shlibdeps dpkg-dev
need_tool lintian lintian
need_tool systemd-analyze systemd

log "build the .deb (packaging/build-deb.sh)"
deb=$(bash packaging/build-deb.sh | tail -n1)
[ -f "$deb" ] || die "build-deb.sh did not produce a package ($deb)"
dpkg-deb --info "$deb" >&2

log "lintian $deb"
lintian_rc=0
lintian_out=$(lintian --fail-on error,warning --display-info "$deb" 2>&1) || lintian_rc=$?
# lintian warns that it runs as root; that line is not about the package.
grep -v '^running with root privileges' <<<"$lintian_out" >&2 || true
[ "$lintian_rc" -eq 0 ] || die "lintian reports errors or warnings (above)"

root=$(mktemp -d "${TMPDIR:-/tmp}/berth-deb-check.XXXXXX")
trap 'rm -rf "$root"' EXIT
dpkg-deb --extract "$deb" "$root/pkg"
mkdir -p "$root/sys/lib/systemd" "$root/sys/usr/bin"
cp -a /lib/systemd/system "$root/sys/lib/systemd/"
cp "$root/pkg/lib/systemd/system/berth.service" "$root/sys/lib/systemd/system/"
cp "$root/pkg/usr/bin/berth" "$root/sys/usr/bin/"

log "systemd-analyze verify berth.service"
out=$(systemd-analyze verify --root="$root/sys" /lib/systemd/system/berth.service 2>&1) ||
    die "systemd-analyze verify failed: $out"
[ -z "$out" ] || die "systemd-analyze verify complained: $out"
echo "systemd-analyze verify: no complaints" >&2

log "systemd-analyze security berth.service (offline)"
systemd-analyze security --offline=true --root="$root/sys" --no-pager berth.service 2>&1 | tail -n 1 >&2

printf '%s\n' "$deb"
