#!/usr/bin/env bash
# The .deb as a sysadmin meets it, in a real Debian 12 with systemd as PID 1 (qemu):
#
#   bash scripts/deb-vm.sh           # as root
#
# 1. scripts/deb-check.sh: build the .deb, lintian, systemd-analyze verify;
# 2. a second build of the same tree with a higher version, for the upgrade;
# 3. a tiny OCI image (busybox httpd serving a page, from busybox-static);
# 4. the VM image (scripts/systemd-vm/build-image.sh, cached in target/systemd-vm
#    until build-image.sh or the package list changes), booted with writes discarded
#    (VM_SNAPSHOT=1) and scripts/deb-vm-guest.sh as its run.sh: install, bootstrap,
#    push, deploy, reboot, remove, purge (see that script).
# Needs root, qemu-system-x86, mmdebstrap, e2fsprogs, busybox-static and a Debian
# mirror (the first time, for the VM image). Fails under CI=true when it cannot run.
# Env: DEB_VM_TIMEOUT  seconds for the VM run (default 480).
#      DEB_VM_UPGRADE=0  skip the upgrade to a second build while the service runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'deb-vm.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

[ "$(id -u)" -eq 0 ] || skip "needs root (mmdebstrap root mode, 9p passthrough)"
need_tool qemu-system-x86_64 qemu-system-x86
need_tool mmdebstrap mmdebstrap
need_tool mkfs.ext4 e2fsprogs
need_tool jq jq
[ -x /bin/busybox ] && /bin/busybox --help >/dev/null 2>&1 || skip "/bin/busybox is missing (apt-get install busybox-static)"
ldd /bin/busybox >/dev/null 2>&1 && skip "/bin/busybox is not static (apt-get install busybox-static)"

started=$SECONDS
deb=$(bash scripts/deb-check.sh | tail -n1)
share=$(mktemp -d "${TMPDIR:-/tmp}/berth-deb-vm.XXXXXX")
trap 'rm -rf "$share"' EXIT
cp "$deb" "$share/berth.deb"

version=$(dpkg-deb --field "$deb" Version)
log "a second build, $version+upgrade1, for the upgrade"
upgrade=$(BERTH_DEB_NO_BUILD=1 BERTH_DEB_VERSION="$version+upgrade1" bash packaging/build-deb.sh | tail -n1)
mv "$upgrade" "$share/berth-upgrade.deb"

log "the image to deploy: busybox httpd serving a page"
img=$share/image
mkdir -p "$img/rootfs/bin" "$img/rootfs/www"
cp /bin/busybox "$img/rootfs/bin/busybox"
printf 'hello from the systemd vm' >"$img/rootfs/www/index.html"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$img/rootfs" -cf "$img/layer.tar" .
diff_id=sha256:$(sha256sum "$img/layer.tar" | cut -d' ' -f1)
gzip -9n "$img/layer.tar"
rm -rf "$img/rootfs"
jq -cn --arg d "$diff_id" '{architecture: "amd64", os: "linux",
    config: {Cmd: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]},
    rootfs: {type: "layers", diff_ids: [$d]}}' >"$img/config.json"
desc() { jq -cn --arg t "$1" --arg d "sha256:$(sha256sum "$2" | cut -d' ' -f1)" --argjson s "$(stat -c %s "$2")" \
    '{mediaType: $t, digest: $d, size: $s}'; }
jq -cn --argjson c "$(desc application/vnd.oci.image.config.v1+json "$img/config.json")" \
    --argjson l "$(desc application/vnd.oci.image.layer.v1.tar+gzip "$img/layer.tar.gz")" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json", config: $c, layers: [$l]}' \
    >"$img/manifest.json"

# The VM image: the .deb's Depends are in build-image.sh's base list already (runc,
# iproute2, nftables, ca-certificates); curl and jq are for the checks.
export VM_PACKAGES=curl,jq
# runc and nftables are not installed: they wait in the image's apt cache, so the
# install in the VM shows that apt pulls in the package's dependencies.
export VM_DOWNLOAD=runc,nftables
vm=$ROOT/target/systemd-vm
stamp=$( (cat scripts/systemd-vm/build-image.sh; echo "$VM_PACKAGES $VM_DOWNLOAD") | sha256sum | cut -d' ' -f1)
if [ -f "$vm/rootfs.img" ] && [ "$(cat "$vm/stamp" 2>/dev/null)" = "$stamp" ]; then
    log "VM image: $vm (cached)"
else
    log "VM image: building $vm (scripts/systemd-vm/build-image.sh)"
    rm -f "$vm/stamp"
    bash scripts/systemd-vm/build-image.sh "$vm" >&2
    printf '%s\n' "$stamp" >"$vm/stamp"
fi

log "boot the VM: install, deploy, reboot, remove, purge"
cp scripts/deb-vm-guest.sh "$share/run.sh"
[ "${DEB_VM_UPGRADE:-1}" = 0 ] || touch "$share/upgrade"
rc=0
VM_SNAPSHOT=1 bash scripts/systemd-vm/run-vm.sh "$vm/rootfs.img" "$share" "${DEB_VM_TIMEOUT:-480}" || rc=$?
cat "$share/out/output.log" >&2 || true
if [ "$rc" -ne 0 ]; then
    echo "deb-vm.sh: console tail:" >&2
    tail -n 40 "$share/out/console.log" >&2 || true
    die "the VM run failed (exit $rc)"
fi
[ "$(cat "$share/out/boot-count")" = 2 ] || die "expected 2 boots, saw $(cat "$share/out/boot-count")"
grep -q '^deb-vm: all checks passed$' "$share/out/output.log" || die "the guest did not finish its checks"
echo "deb-vm.sh: PASS in $((SECONDS - started)) s" >&2
