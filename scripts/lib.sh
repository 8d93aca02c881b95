# Shared by scripts/dev.sh and scripts/test.sh (sourced after they define PACKAGES,
# log and die, from the repository root).

# The packages of PACKAGES that dpkg does not have installed, one a line.
missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            printf '%s\n' "$p"
        fi
    done
}

# Installs what is missing of PACKAGES with apt-get (which needs root).
install_packages() {
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
        log "no apt-get here; make sure these are installed yourself: ${PACKAGES[*]}"
        return
    fi
    local missing
    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "system packages already installed"
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "missing packages: ${missing[*]}; run as root: sudo bash $0"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
}
