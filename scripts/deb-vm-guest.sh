#!/bin/bash
# Runs inside the systemd VM as /host/run.sh (scripts/deb-vm.sh puts it there), as a
# sysadmin would meet the package: boot 1 installs the .deb, bootstraps, pushes an
# image and deploys it, then reboots; boot 2 checks that berth and the service came
# back by themselves, upgrades to a second build (state kept; only when /host/upgrade
# exists, see below), removes (state kept) and purges (state gone).
# /host holds: berth.deb, berth-upgrade.deb, image/ (layer, config, manifest).
set -euo pipefail

API=http://127.0.0.1:7420
PASS=change-me-please
PAGE='hello from the systemd vm'
say() { printf 'deb-vm: %s\n' "$*"; }
fail() {
    printf 'deb-vm: FAIL: %s\n' "$*"
    if [ -n "${DEP:-}" ] && [ -n "${TOKEN:-}" ]; then
        curl -s -m 5 $API/v1/deployments/$DEP -H "Authorization: Bearer $TOKEN" || true
        echo
        curl -s -m 5 $API/v1/deployments/$DEP/logs/stream -H "Authorization: Bearer $TOKEN" || true
        echo
    fi
    echo "deb-vm: berth's journal:"
    journalctl -u berth --no-pager -n 60 -o cat || true
    exit 1
}
on_error() {
    local rc=$?
    say "failed (exit $rc) at line $1; berth's journal:"
    journalctl -u berth --no-pager -n 60 -o cat || true
    systemctl status berth --no-pager || true
    exit "$rc"
}
trap 'on_error $LINENO' ERR

# curl that prints the body and fails unless the status is WANT: want WANT curl-args...
want() {
    local code=$1 out status
    shift
    out=$(curl -sS -w '\n%{http_code}' "$@") || fail "curl $*"
    status=${out##*$'\n'}
    out=${out%$'\n'*}
    [ "$status" = "$code" ] || fail "expected $code, got $status from curl $*: $out"
    printf '%s' "$out"
}
login() {
    want 200 -X POST $API/v1/auth/login -d "{\"username\":\"admin\",\"password\":\"$PASS\"}" | jq -r .token
}
# Polls the ingress for the page, up to $1 seconds.
page_within() {
    local i got=""
    for ((i = 0; i < $1; i++)); do
        got=$(curl -s -m 5 -H 'Host: web.alpha.localhost' http://127.0.0.1/ || true)
        [ "$got" = "$PAGE" ] && return 0
        sleep 1
    done
    fail "the ingress did not serve the page within $1 s (last answer: ${got:-none})"
}

systemctl is-system-running --wait >/dev/null || true

if [ ! -e /var/lib/deb-vm-boot1 ]; then
    say "boot 1: cgroup fs $(stat -fc %T /sys/fs/cgroup), systemd $(systemctl --version | head -n1)"
    for dep in runc nftables; do
        ! dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q 'install ok installed' ||
            fail "$dep is installed before berth: the image should only have it in apt's cache"
    done
    out=$(apt-get install -y --no-install-recommends /host/berth.deb 2>&1) || fail "apt-get install: $out"
    printf '%s\n' "$out"
    for dep in runc nftables; do
        dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q 'install ok installed' ||
            fail "apt-get install ./berth.deb did not pull in $dep"
    done
    say "apt-get install pulled in berth's dependencies (runc, nftables)"
    grep -q '/var/lib/berth/bootstrap-token' <<<"$out" || fail "the install message does not say where the bootstrap token is"
    [ "$(systemctl is-active berth)" = active ] || fail "berth is $(systemctl is-active berth) after install"
    [ "$(systemctl is-enabled berth)" = enabled ] || fail "berth is not enabled after install"
    [ -f /etc/berth/berth.toml ] || fail "no /etc/berth/berth.toml"
    dpkg-query -W -f='${Conffiles}\n' berth | grep -q '/etc/berth/berth.toml' || fail "berth.toml is not a conffile"
    [ "$(stat -c %a /var/lib/berth)" = 700 ] || fail "/var/lib/berth has mode $(stat -c %a /var/lib/berth)"
    [ "$(stat -c %a /var/lib/berth/bootstrap-token)" = 600 ] || fail "the bootstrap token is not mode 600"
    want 200 $API/healthz >/dev/null
    say "installed: active, enabled, /healthz answers, token at /var/lib/berth/bootstrap-token"

    want 201 -X POST $API/v1/bootstrap -H "Authorization: Bearer $(cat /var/lib/berth/bootstrap-token)" \
        -d "{\"username\":\"admin\",\"password\":\"$PASS\"}" >/dev/null
    TOKEN=$(login)
    PRJ=$(want 201 -X POST $API/v1/projects -H "Authorization: Bearer $TOKEN" -d '{"name":"alpha"}' | jq -r .id)

    # Push the image with the registry API itself (the VM has no docker).
    for blob in /host/image/layer.tar.gz /host/image/config.json; do
        digest=sha256:$(sha256sum "$blob" | cut -d' ' -f1)
        loc=$(curl -sS -o /dev/null -D - -u "admin:$PASS" -X POST $API/v2/alpha/web/blobs/uploads/ |
            tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
        [ -n "$loc" ] || fail "no upload location"
        case $loc in http*) ;; *) loc=$API$loc ;; esac
        case $loc in *\?*) loc="$loc&digest=$digest" ;; *) loc="$loc?digest=$digest" ;; esac
        want 201 -u "admin:$PASS" -X PUT -H 'Content-Type: application/octet-stream' \
            --data-binary "@$blob" "$loc" >/dev/null
    done
    want 201 -u "admin:$PASS" -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
        --data-binary @/host/image/manifest.json $API/v2/alpha/web/manifests/v1 >/dev/null
    say "pushed alpha/web:v1"

    SVC=$(jq -n --arg p "$PRJ" '{project_id: $p, name: "web", port: 8080, replicas: 1,
            health_check: {path: "/", interval_s: 2}}' |
        want 201 -X POST $API/v1/services -H "Authorization: Bearer $TOKEN" -d @- | jq -r .id)
    DEP=$(want 201 -X POST $API/v1/deployments -H "Authorization: Bearer $TOKEN" \
        -d "{\"service_id\":\"$SVC\",\"source\":{\"kind\":\"Image\",\"repository\":\"alpha/web\",\"reference\":\"v1\"}}" |
        jq -r .id)
    status=""
    for ((i = 0; i < 180; i++)); do
        status=$(want 200 $API/v1/deployments/$DEP -H "Authorization: Bearer $TOKEN" | jq -r .status)
        case $status in live | failed | cancelled) break ;; esac
        sleep 1
    done
    [ "$status" = live ] || fail "deployment $DEP is $status"
    page_within 30
    say "deployed: web.alpha.localhost answers through the ingress"

    # When the reboot began, for boot 2 to say how long the shutdown took.
    date +%s >/var/lib/deb-vm-boot1
    say "rebooting"
    systemctl reboot
    exit 0
fi

say "boot 2"
# The guest's clock comes from the host's at each boot; the kernel's uptime is the
# boot's share of the time since `systemctl reboot`, the rest is the shutdown. The
# daemon stops its replicas when the host goes down (adr/026): without that, the
# busybox httpd (PID 1 in its container, ignores SIGTERM) held it for ~80-90 s.
since=$(($(date +%s) - $(cat /var/lib/deb-vm-boot1)))
up=$(cut -d. -f1 /proc/uptime)
shutdown_s=$((since - up))
say "reboot: ${since} s from systemctl reboot to this run, of which the shutdown ${shutdown_s} s"
[ "$shutdown_s" -lt 75 ] || fail "the shutdown took ${shutdown_s} s: did berth not stop its replicas?"
journalctl -u berth -b -1 --no-pager -o cat 2>/dev/null | grep -i 'host is shutting down' || true
[ "$(systemctl is-active berth)" = active ] || fail "berth is $(systemctl is-active berth) after the reboot"
want 200 $API/healthz >/dev/null
page_within 120
say "after the reboot: berth is active and the service answers again"

TOKEN=$(login)
if [ -e /host/upgrade ]; then
    # The containers' cgroups are outside the unit (/berth), so systemd can start
    # the new daemon while they run (adr/026).
    [ -d /sys/fs/cgroup/berth ] || fail "no /sys/fs/cgroup/berth: the containers are not in their own tree"
    out=$(apt-get install -y --no-install-recommends /host/berth-upgrade.deb 2>&1) || fail "upgrade: $out"
    printf '%s\n' "$out"
    [ "$(systemctl is-active berth)" = active ] || fail "berth is $(systemctl is-active berth) after the upgrade"
    want 200 $API/v1/projects -H "Authorization: Bearer $TOKEN" | jq -e '.data[] | select(.name == "alpha")' >/dev/null
    page_within 60
    say "upgraded to $(dpkg-query -W -f='${Version}' berth): the session, the project and the service are still there"
else
    say "upgrade: not run (DEB_VM_UPGRADE=0)"
fi

apt-get remove -y berth
[ -f /var/lib/berth/state.db ] || fail "remove deleted the state"
[ -f /etc/berth/berth.toml ] || fail "remove deleted the config"
[ "$(systemctl is-active berth || true)" != active ] || fail "berth is still active after remove"
! pgrep -f 'busybox httpd' >/dev/null || fail "the service's container still runs after remove"
say "removed: berth and its containers stopped, state and config kept"

apt-get purge -y berth
[ ! -e /var/lib/berth ] || fail "/var/lib/berth is still there after purge: $(ls -A /var/lib/berth)"
[ ! -e /etc/berth ] || fail "/etc/berth is still there after purge"
[ "$(systemctl is-active berth || true)" != active ] || fail "berth is still active after purge"
! pgrep -f 'busybox httpd' >/dev/null || fail "the service's container still runs after purge"
! nft list table inet berth >/dev/null 2>&1 || fail "berth's nftables table is still there after purge"
! curl -s -m 2 -o /dev/null $API/healthz || fail "the API still answers after purge"
say "purged: state, config, containers and the firewall table are gone"
say "all checks passed"
