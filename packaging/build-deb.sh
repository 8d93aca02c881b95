#!/usr/bin/env bash
# Builds the berth .deb from this repository with plain dpkg tooling (adr/026):
#
#   bash packaging/build-deb.sh        # -> target/debian/berth_<version>_<arch>.deb
#
# cargo build --release, then a package tree in target/debian/root: the binary
# (stripped) in /usr/bin, the unit in /lib/systemd/system, /etc/berth/berth.toml as a
# conffile, README, changelog and copyright in /usr/share/doc/berth, berth(8), the maintainer
# scripts of packaging/debian/. Needs dpkg-dev (dpkg-shlibdeps) and binutils (strip).
# Env: BERTH_DEB_VERSION   package version (default: Cargo.toml's version)
#      BERTH_DEB_NO_BUILD=1  package the existing target/release/berth as it is
#      CARGO_TARGET_DIR    as for cargo (default: target)
# Prints the path of the .deb on stdout, as its last line.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
die() { printf 'build-deb.sh: %s\n' "$*" >&2; exit 1; }
for t in dpkg-deb dpkg-shlibdeps dpkg-architecture strip gzip; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found (apt-get install dpkg-dev binutils gzip)"
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$TARGET/debian
crate_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$crate_version" ] || die "no version in Cargo.toml"
VERSION=${BERTH_DEB_VERSION:-$crate_version}
ARCH=$(dpkg-architecture -qDEB_HOST_ARCH)

if [ "${BERTH_DEB_NO_BUILD:-}" != 1 ]; then
    cargo build --release --locked --bin berth >&2
fi
BIN=$TARGET/release/berth
[ -x "$BIN" ] || die "$BIN is missing (cargo build --release --bin berth)"

PKG=$OUT/root
rm -rf "$PKG"
mkdir -p "$OUT"
install -d -m 0755 "$PKG/DEBIAN" "$PKG/usr/bin" "$PKG/lib/systemd/system" "$PKG/etc/berth" \
    "$PKG/usr/share/doc/berth" "$PKG/usr/share/man/man8" "$PKG/usr/share/lintian/overrides"
install -m 0755 "$BIN" "$PKG/usr/bin/berth"
# Debian ships stripped binaries (lintian: unstripped-binary-or-object).
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$PKG/usr/bin/berth"
install -m 0644 systemd/berth.service "$PKG/lib/systemd/system/berth.service"
install -m 0644 packaging/berth.toml "$PKG/etc/berth/berth.toml"
install -m 0644 README.md "$PKG/usr/share/doc/berth/README.md"
install -m 0644 packaging/debian/copyright "$PKG/usr/share/doc/berth/copyright"
gzip -9n <packaging/berth.8 >"$PKG/usr/share/man/man8/berth.8.gz"
install -m 0644 packaging/debian/lintian-overrides "$PKG/usr/share/lintian/overrides/berth"
chmod 0644 "$PKG/usr/share/man/man8/berth.8.gz"
for s in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$s" "$PKG/DEBIAN/$s"
done
printf '/etc/berth/berth.toml\n' >"$PKG/DEBIAN/conffiles"

# A native package's changelog: one entry for this version, dated by the commit it
# was built from (the same tree gives the same package).
when=$(git log -1 --format=%aD 2>/dev/null || date -R)
{
    printf 'berth (%s) unstable; urgency=medium\n\n' "$VERSION"
    printf '  * Release %s, built from commit %s.\n\n' "$VERSION" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    printf ' -- berth maintainers <maintainers@berth.example>  %s\n' "$when"
} | gzip -9n >"$PKG/usr/share/doc/berth/changelog.gz"
chmod 0644 "$PKG/usr/share/doc/berth/changelog.gz"

# Shared-library dependencies (libc, libgcc) as dpkg-shlibdeps computes them; it
# wants a debian/control to exist where it runs.
shl=$OUT/shlibdeps
rm -rf "$shl" && mkdir -p "$shl/debian"
printf 'Source: berth\n\nPackage: berth\nArchitecture: any\n' >"$shl/debian/control"
shlibs=$(cd "$shl" && dpkg-shlibdeps -O "$PKG/usr/bin/berth" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
rm -rf "$shl"
[ -n "$shlibs" ] || die "dpkg-shlibdeps found no dependencies for $PKG/usr/bin/berth"

size=$(du -k -s --exclude=DEBIAN "$PKG" | cut -f1)
cat >"$PKG/DEBIAN/control" <<CONTROL
Package: berth
Version: $VERSION
Architecture: $ARCH
Maintainer: berth maintainers <maintainers@berth.example>
Installed-Size: $size
Depends: $shlibs, runc, iproute2, nftables, ca-certificates, tzdata
Recommends: buildah, git, openssh-client
Section: admin
Priority: optional
Description: self-hosted single-node PaaS: containers, registry, ingress
 berth runs apps on one server: an OCI registry to push images to, services
 deployed from them as runc containers under cgroup limits, an HTTP ingress
 that routes hostnames to them, and a REST API with users, projects and
 roles. Its state lives in SQLite under /var/lib/berth.
 .
 The daemon runs as berth.service; buildah is used to build images from Git
 repositories and uploads.
CONTROL

(cd "$PKG" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
    >"$PKG/DEBIAN/md5sums"
chmod 0644 "$PKG/DEBIAN/md5sums" "$PKG/DEBIAN/control" "$PKG/DEBIAN/conffiles"

DEB=$OUT/berth_${VERSION}_${ARCH}.deb
rm -f "$OUT"/berth_*.deb
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s) \
    dpkg-deb --root-owner-group -Zxz --build "$PKG" "$DEB" >&2
printf '%s\n' "$DEB"
