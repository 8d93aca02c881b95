#!/usr/bin/env bash
# Runs the runtime and engine integration tests (the `it` binary's `runtime::` and
# `engine::` tests: OOM kill, pids limit, CPU quota, metrics, cleanup, re-adoption)
# inside a pure cgroup v2 VM, so the v2 code path runs against a real kernel.
#
#   sudo bash scripts/cgroup-v2-vm.sh                      # runtime:: and engine::
#   sudo bash scripts/cgroup-v2-vm.sh runtime::half_a_cpu  # any libtest filters/flags
#
# The CI machines are cgroup v1 hybrid and their hierarchies must not be touched, so
# this boots Debian's kernel under qemu with `cgroup_no_v1=all` from an initramfs that
# holds static busybox, runc, the test binary and the berth binary (in /opt/berth-test,
# which no mount inside the VM covers, whatever the checkout's path) and their shared
# libraries. The VM's /init copies the initramfs into a tmpfs and switch_roots into it
# (runc's pivot_root fails on the initramfs root), mounts cgroup2 on /sys/fs/cgroup and
# a tmpfs on /tmp, links the berth path compiled into the test binary to the copy in
# /opt/berth-test, runs the tests as root with CI=true, prints `VM-RESULT: PASS` or
# `VM-RESULT: FAIL <code>` on the serial console and powers off.
#
# Exits 0 only when the VM reports PASS. When qemu, a kernel or another tool is
# missing, or it does not run as root, it fails under CI=true and otherwise prints
# `SKIPPED: ...` and fails too, unless BERTH_ALLOW_SKIP=1 (scripts/lib.sh, adr/013).
#
# Environment:
#   BERTH_VM_KERNEL   kernel image (default: the newest /boot/vmlinuz-*)
#   BERTH_VM_TIMEOUT  seconds before the VM is killed (default 600; no KVM, so qemu emulates)
#   BERTH_VM_MEM      VM memory in MiB (default 1024)
#   BERTH_VM_SMP      VM CPUs (default 2)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

TIMEOUT=${BERTH_VM_TIMEOUT:-600}
MEM=${BERTH_VM_MEM:-1024}
SMP=${BERTH_VM_SMP:-2}
# The image-and-network engine test and the daemon re-adoption test need ip and nft
# (and the latter the daemon), and the host-restart test an overlay mount (the VM's
# kernel has overlayfs as a module it does not load), none of which the VM carries;
# what they add (networks, images, the daemon's start-up, reviving a container) does
# not depend on the cgroup version.
if [ "$#" -gt 0 ]; then
    TEST_ARGS=("$@")
else
    TEST_ARGS=(runtime:: engine:: --skip engine::a_replica_runs_from_a_pushed_image
        --skip engine::the_daemon_re_adopts --skip engine::replicas_come_back_after_a_host_restart)
fi
STARTED=$SECONDS

say() { printf 'cgroup-v2-vm: %s\n' "$*"; }
die() {
    printf 'cgroup-v2-vm: error: %s\n' "$*" >&2
    exit 1
}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

[ "$(id -u)" -eq 0 ] || skip "not root: the VM runs containers (bash scripts/cgroup-v2-vm.sh as root, or with sudo)"

# --- prerequisites -------------------------------------------------------------
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
KERNEL=${BERTH_VM_KERNEL:-}
if [ -z "$KERNEL" ]; then
    KERNEL=$(find /boot -maxdepth 1 -name 'vmlinuz-*' 2>/dev/null | sort -V | tail -n 1)
fi
if [ -z "$KERNEL" ] || [ ! -r "$KERNEL" ]; then
    skip "no readable kernel in /boot (apt-get install linux-image-amd64)"
fi
for tool in cpio:cpio gzip:gzip jq:jq ldd:libc-bin runc:runc; do
    need_tool "${tool%%:*}" "${tool#*:}"
done
BUSYBOX=/bin/busybox
if [ ! -x "$BUSYBOX" ] || ldd "$BUSYBOX" >/dev/null 2>&1; then
    skip "a static $BUSYBOX is needed (apt-get install busybox-static)"
fi
RUNC=$(command -v runc)
STRIP=$(command -v objcopy || true)

# Under sudo, PATH is reset and rustup lives in the invoking user's home.
if ! command -v cargo >/dev/null; then
    home=${HOME:-/root}
    if [ ! -x "$home/.cargo/bin/cargo" ] && [ -n "${SUDO_USER:-}" ]; then
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        export RUSTUP_HOME="${RUSTUP_HOME:-$home/.rustup}" CARGO_HOME="${CARGO_HOME:-$home/.cargo}"
    fi
    [ -x "$home/.cargo/bin/cargo" ] || die "cargo not found; install the Rust toolchain (https://rustup.rs)"
    export PATH="$home/.cargo/bin:$PATH"
fi

# --- the binaries ------------------------------------------------------------------
say "building the integration test binary"
json=$(cargo test --test it --no-run --message-format=json)
IT=$(jq -r 'select(.reason == "compiler-artifact" and .target.name == "it" and .profile.test) | .executable // empty' <<<"$json" | tail -n 1)
BERTH=$(jq -r 'select(.reason == "compiler-artifact" and .target.name == "berth" and (.target.kind | index("bin"))) | .executable // empty' <<<"$json" | tail -n 1)
if [ -z "$IT" ] || [ ! -x "$IT" ]; then
    die "cargo did not report the it test binary"
fi
if [ -z "$BERTH" ] || [ ! -x "$BERTH" ]; then
    cargo build --bin berth
    BERTH="$ROOT/target/debug/berth"
fi
[ -x "$BERTH" ] || die "no berth binary at $BERTH"
# The test binary runs `berth shim` from the path cargo compiled into it; inside the
# VM that path is a link to the copy in $VM_DIR.
grep -qaF "$BERTH" "$IT" || die "the test binary does not refer to $BERTH"
VM_DIR=/opt/berth-test

# --- the initramfs -------------------------------------------------------------------
WORK=$(mktemp -d /tmp/berth-cgroup-v2-vm.XXXXXX)
QEMU_PID=
# Stops the VM (through timeout, which passes the signal on to qemu) if this script is
# interrupted, and always removes the temp dir.
cleanup() {
    [ -z "$QEMU_PID" ] || kill "$QEMU_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
R="$WORK/root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,newroot}

# Copies a file to the same path inside the VM, dereferencing symlinks.
put() {
    mkdir -p "$R$(dirname "$2")"
    cp -L "$1" "$R$2"
}

# Copies an executable and the shared libraries ldd lists for it (with the loader).
put_exe() {
    local src=$1 dest=$2 strip=${3:-}
    mkdir -p "$R$(dirname "$dest")"
    if [ -n "$strip" ] && [ -n "$STRIP" ]; then
        # Debug info only: symbols stay, so backtraces keep function names.
        "$STRIP" --strip-debug "$src" "$R$dest"
    else
        cp -L "$src" "$R$dest"
    fi
    local lib
    while read -r lib; do
        [ -e "$R$lib" ] || put "$lib" "$lib"
    done < <(ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }')
}

cp -L "$BUSYBOX" "$R/bin/busybox"
while read -r applet; do
    [ -e "$R/$applet" ] || [ -L "$R/$applet" ] || { mkdir -p "$R/$(dirname "$applet")" && ln -s /bin/busybox "$R/$applet"; }
done < <("$BUSYBOX" --list-full)
put_exe "$RUNC" /usr/sbin/runc
put_exe "$IT" "$VM_DIR/it" strip
put_exe "$BERTH" "$VM_DIR/berth" strip

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files\n' >"$R/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$R/etc/hosts"
{
    printf 'IT=%q\n' "$VM_DIR/it"
    printf 'BERTH=%q\n' "$VM_DIR/berth"
    printf 'BERTH_COMPILED_IN=%q\n' "$BERTH"
    printf 'TEST_ARGS=%q\n' "${TEST_ARGS[*]}"
} >"$R/etc/berth-vm.env"

cat >"$R/init" <<'EOF'
#!/bin/sh
# Stage 1 runs on the initramfs; stage 2 runs in a tmpfs copy of it.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
if [ "$1" != stage2 ]; then
    mount -t proc proc /proc
    mount -t tmpfs -o mode=0755 tmpfs /newroot
    for e in /*; do
        case "$e" in /newroot | /proc | /sys | /dev) ;; *) cp -a "$e" /newroot/ ;; esac
    done
    mkdir -p /newroot/proc /newroot/sys /newroot/dev
    umount /proc
    exec switch_root /newroot /init stage2
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
# As systemd mounts it on the production hosts.
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup
want=""
for c in cpu memory pids io; do
    grep -qw "$c" /sys/fs/cgroup/cgroup.controllers && want="$want +$c"
done
echo "$want" >/sys/fs/cgroup/cgroup.subtree_control
ip link set lo up
hostname berth-vm
# shellcheck source=/dev/null
. /etc/berth-vm.env
# The berth path compiled into the test binary, wherever the checkout is (even under
# /tmp, now a fresh tmpfs).
mkdir -p "$(dirname "$BERTH_COMPILED_IN")"
[ -e "$BERTH_COMPILED_IN" ] || ln -s "$BERTH" "$BERTH_COMPILED_IN"

echo "VM: kernel $(uname -r), $(nproc) CPUs, $(grep MemTotal /proc/meminfo | tr -s ' ')"
echo "VM: $(grep cgroup2 /proc/mounts)"
echo "VM: cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "VM: cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "VM: /proc/self/cgroup: $(cat /proc/self/cgroup)"
echo "VM: $(runc --version | head -n 1)"
echo "VM: running $IT --test-threads=1 $TEST_ARGS"
cd /
t0=$(date +%s)
# shellcheck disable=SC2086 # TEST_ARGS are words
env CI=true RUST_BACKTRACE=1 HOME=/root TMPDIR=/tmp "$IT" --test-threads=1 $TEST_ARGS
rc=$?
echo "VM: tests took $(($(date +%s) - t0)) s"
echo "VM: cgroups left: $(cd /sys/fs/cgroup && find . -mindepth 1 -type d | sort | tr '\n' ' ')"
if [ "$rc" -eq 0 ]; then echo "VM-RESULT: PASS"; else echo "VM-RESULT: FAIL $rc"; fi
sync
poweroff -f
EOF
chmod 0755 "$R/init"

(cd "$R" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 >"$WORK/initrd.gz"
say "initramfs: $(du -h "$WORK/initrd.gz" | cut -f1) compressed; kernel: $KERNEL"

# --- the VM ----------------------------------------------------------------------------
say "booting qemu (-m $MEM -smp $SMP, timeout ${TIMEOUT}s); tests: ${TEST_ARGS[*]}"
boot=$SECONDS
# The serial console carries the firmware's terminal escapes and CRLF line ends; the
# reader drops both, shows the console as it comes and keeps it for the verdict.
mkfifo "$WORK/console"
sed -u -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' <"$WORK/console" | tee "$WORK/console.log" &
READER_PID=$!
# No NIC: the tests need only the loopback of the containers' own network namespaces.
timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 \
    -m "$MEM" -smp "$SMP" -nographic -no-reboot -nic none \
    -kernel "$KERNEL" -initrd "$WORK/initrd.gz" \
    -append "console=ttyS0 quiet cgroup_no_v1=all panic=-1 rdinit=/init" \
    </dev/null >"$WORK/console" 2>&1 &
QEMU_PID=$!
qemu_rc=0
wait "$QEMU_PID" || qemu_rc=$?
QEMU_PID=
wait "$READER_PID" || true

result=$(grep -a '^VM-RESULT: ' "$WORK/console.log" | tail -n 1 || true)
took="VM $((SECONDS - boot)) s, total $((SECONDS - STARTED)) s"
case "$result" in
"VM-RESULT: PASS")
    say "PASS: runtime tests on pure cgroup v2 ($took)"
    ;;
"VM-RESULT: FAIL"*)
    die "the tests failed inside the VM: ${result#VM-RESULT: } ($took)"
    ;;
*)
    [ "$qemu_rc" -ne 124 ] || die "no result: the VM did not finish within ${TIMEOUT}s ($took)"
    die "no result line from the VM (qemu exited with $qemu_rc; $took)"
    ;;
esac
