#!/bin/bash
# Installs everything the builder, the tests and `make run` need, idempotently.
# Host packages come from the distribution; mkosi 25.3, ukify 257 and a 257 EFI stub are
# extracted from Debian trixie .debs into $TOOLS (the host's apt sources and systemd stay
# untouched); a real Debian kernel is downloaded and extracted for the fixtures; .venv holds
# the Python package and the test dependencies.
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${TOOLS:-$TOP/.tools}
VENV=${VENV:-$TOP/.venv}
mkdir -p "$TOOLS"

log() { printf '[setup %(%H:%M:%S)T] %s\n' -1 "$*"; }

. /etc/os-release
# apt-get, dpkg-deb and Debian's archive keyring: the buildroot's RPMs (and the fixtures' kmod,
# taken from them) are Debian trixie packages fetched through a private apt configuration
# (tests/realcontent/apt.py). chroot, unshare and setpriv: the buildroot tests run in a chroot.
DEBIAN_PKGS=(rpm createrepo-c python3-createrepo-c dnf python3-dnf python3-rpm python3-pefile python3-zstandard
             libarchive13 python3-venv busybox-static
             cpio zstd binutils qemu-system-x86 ovmf kmod iproute2 util-linux rpmlint
             ca-certificates dpkg-dev file apt debian-archive-keyring coreutils sbsigntool openssl
             nfs-ganesha nfs-ganesha-vfs rpcbind)
FEDORA_PKGS=(rpm-build createrepo_c python3-createrepo_c dnf python3-dnf python3-rpm python3-pefile python3-zstandard
             libarchive busybox cpio zstd
             binutils qemu-system-x86-core edk2-ovmf kmod iproute util-linux rpmlint dpkg apt debian-keyring
             coreutils sbsigntools pesign openssl nfs-ganesha nfs-ganesha-vfs rpcbind)
# sbsign, sbverify and openssl: the Secure Boot tests sign UKIs with a throw-away key (ukify signs a
# local build with sbsign); the OVMF Secure Boot build comes with ovmf / edk2-ovmf.
# ganesha.nfsd and rpcbind: the NFS-root boots export a root from this machine
# (tests/realcontent/nfs.py); the container has no kernel nfsd.
NEEDED_CMDS=(rpm rpmbuild createrepo_c dnf qemu-system-x86_64 cpio zstd busybox rpmlint dpkg-deb apt-get
             chroot unshare setpriv sbsign sbverify openssl ganesha.nfsd rpcbind)

missing_cmds() {
    local c
    for c in "${NEEDED_CMDS[@]}"; do command -v "$c" >/dev/null || { echo "$c"; return; }; done
    [[ -e /usr/share/ovmf/OVMF.fd || -e /usr/share/edk2/ovmf/OVMF_CODE.fd ]] || echo ovmf
    [[ -e /usr/share/OVMF/OVMF_CODE_4M.secboot.fd || -e /usr/share/edk2/ovmf/OVMF_CODE.secboot.fd ]] || echo ovmf
    [[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || echo debian-archive-keyring
    /usr/bin/python3 -c 'import dnf, rpm, pefile, createrepo_c, zstandard' 2>/dev/null || echo python3-modules
    # libarchive-c (pip, for tests/bench/library_bench.py) loads the host's libarchive.
    ldconfig -p | grep -q 'libarchive\.so\.13' || echo libarchive
}

if [[ -n "$(missing_cmds)" ]]; then
    case "$ID" in
        debian)
            log "installing host packages: ${DEBIAN_PKGS[*]}"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -q || log "apt-get update reported errors; continuing with what it fetched"
            apt-get install -y -q --no-install-recommends "${DEBIAN_PKGS[@]}"
            ;;
        fedora)
            log "installing host packages: ${FEDORA_PKGS[*]}"
            dnf install -y "${FEDORA_PKGS[@]}"
            ;;
        *) echo "setup: unsupported distribution '$ID' (Debian 12 and Fedora are supported)" >&2; exit 1 ;;
    esac
else
    log "host packages present"
fi

# Debian packages downloaded (never installed) through a private apt configuration. SUITE is
# "trixie" (component main) or "trixie/non-free-firmware" (that component alone, its own lists, so
# adding it never changes what the main configuration resolves).
apt_dir() { echo "$TOOLS/apt-${1//\//-}"; }
apt_private() {
    local suite=${1%%/*} component=main
    [[ $1 == */* ]] && component=${1#*/}
    local d; d=$(apt_dir "$1"); shift
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/sources.list.d"
    cat > "$d/sources.list.d/$suite.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite
Components: $component
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get -q -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$d/sources.list.d" \
        -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" -o Dir::State::Status=/var/lib/dpkg/status \
        -o APT::Get::List-Cleanup=0 "$@"
}

extract_deb_tool() {  # name suite package...
    local name=$1 suite=$2; shift 2
    local dest=$TOOLS/$name
    if [[ -f $dest/.complete ]]; then log "$name present"; return; fi
    if [[ -n "${FEDORA_TOOLS:-}" ]]; then :; fi
    log "downloading $* from Debian $suite"
    [[ -f $(apt_dir "$suite")/.updated ]] || { apt_private "$suite" update && touch "$(apt_dir "$suite")/.updated"; }
    local tmp; tmp=$(mktemp -d "$TOOLS/.dl.XXXXXX")
    (cd "$tmp" && apt_private "$suite" download "$@")
    rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
    local deb
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$dest.tmp"; basename "$deb" >> "$dest.tmp/.debs"; done
    rm -rf "$tmp" "$dest"
    touch "$dest.tmp/.complete"
    mv "$dest.tmp" "$dest"
}

if [[ "$ID" == debian ]]; then
    extract_deb_tool mkosi trixie mkosi
    extract_deb_tool ukify trixie systemd-ukify
    extract_deb_tool stub trixie systemd-boot-efi
    # Only for its kernel-install plugin 90-uki-copy.install: the host's systemd 252 has no
    # layout=uki support, and the kernel-install tests run that real plugin (nothing else of it).
    extract_deb_tool systemd trixie systemd
    # systemd-nspawn for the mock stand-in's nspawn isolation. Installing Debian's
    # systemd-container would upgrade the host's systemd to the same point release, so it is
    # extracted with the libsystemd-shared it was built with and run through a wrapper.
    extract_deb_tool nspawn bookworm systemd-container libsystemd-shared
    # CPU microcode for the fixtures' microcode_ctl and amd-ucode-firmware (Fedora's names); Debian
    # keeps it in non-free-firmware.
    extract_deb_tool microcode trixie/non-free-firmware intel-microcode amd64-microcode
    # Device firmware for the fixtures' linux-firmware (Fedora's name): the bnx2 NIC's, small, and
    # declared by a module the fixture kernel ships (modinfo -F firmware bnx2).
    extract_deb_tool firmware trixie/non-free-firmware firmware-bnx2
    # Wrappers so the builder finds them on PATH; they run under Debian's python3, which sees
    # python3-pefile and python3-dnf (the pyenv python3 first on PATH does not).
    mkdir -p "$TOOLS/bin"
    cat > "$TOOLS/bin/mkosi" <<WRAP
#!/bin/sh
PYTHONPATH="$TOOLS/mkosi/usr/lib/python3/dist-packages\${PYTHONPATH:+:\$PYTHONPATH}" exec /usr/bin/python3 -m mkosi "\$@"
WRAP
    cat > "$TOOLS/bin/ukify" <<WRAP
#!/bin/sh
exec /usr/bin/python3 "$TOOLS/ukify/usr/bin/ukify" "\$@"
WRAP
    cat > "$TOOLS/bin/systemd-nspawn" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$TOOLS/nspawn/usr/lib/x86_64-linux-gnu/systemd" exec "$TOOLS/nspawn/usr/bin/systemd-nspawn" "\$@"
WRAP
    chmod +x "$TOOLS/bin/mkosi" "$TOOLS/bin/ukify" "$TOOLS/bin/systemd-nspawn"
    # The kernel the fixtures repackage: the one linux-image-amd64 currently points at.
    if [[ ! -f $TOOLS/kernel/.complete ]]; then
        KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        [[ -n $KPKG ]] || { echo "setup: cannot find the kernel package linux-image-amd64 depends on" >&2; exit 1; }
        log "downloading kernel $KPKG"
        tmp=$(mktemp -d "$TOOLS/.dl.XXXXXX")
        (cd "$tmp" && apt-get download -q "$KPKG")
        rm -rf "$TOOLS/kernel.tmp"; mkdir -p "$TOOLS/kernel.tmp"
        dpkg-deb -x "$tmp"/*.deb "$TOOLS/kernel.tmp"
        basename "$tmp"/*.deb > "$TOOLS/kernel.tmp/.debs"
        rm -rf "$tmp" "$TOOLS/kernel"; touch "$TOOLS/kernel.tmp/.complete"; mv "$TOOLS/kernel.tmp" "$TOOLS/kernel"
    else
        log "kernel present"
    fi
else
    # On Fedora, mkosi, ukify and the stub come from the distribution; the fixture kernel is
    # the newest kernel-core, extracted.
    command -v mkosi >/dev/null || dnf install -y mkosi systemd-ukify systemd-boot-unsigned
    command -v systemd-nspawn >/dev/null || dnf install -y systemd-container
    if [[ ! -f $TOOLS/kernel/.complete ]]; then
        tmp=$(mktemp -d "$TOOLS/.dl.XXXXXX")
        dnf download -q --destdir "$tmp" kernel-core kernel-modules-core
        rm -rf "$TOOLS/kernel.tmp"; mkdir -p "$TOOLS/kernel.tmp"
        for r in "$tmp"/*.rpm; do (cd "$TOOLS/kernel.tmp" && rpm2cpio "$r" | cpio -idm --quiet); done
        rm -rf "$tmp" "$TOOLS/kernel"; touch "$TOOLS/kernel.tmp/.complete"; mv "$TOOLS/kernel.tmp" "$TOOLS/kernel"
    fi
fi

# The venv sees Debian's python3-dnf, python3-rpm, python3-pefile and python3-zstandard (system site packages).
if [[ ! -x $VENV/bin/python ]]; then
    log "creating $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
STAMP=$VENV/.setup-stamp
WANT=$(cat "$TOP/setup.cfg" "$0" | sha256sum | cut -c1-16)
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
    log "installing Python dependencies into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$TOP[test]"
    # koji's requests-gssapi dependency needs Kerberos headers to build, and nothing here
    # uses Kerberos: install koji alone plus what it imports.
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps 'koji==1.36.1'
    "$VENV/bin/pip" install -q --disable-pip-version-check requests python-dateutil defusedxml
    echo "$WANT" > "$STAMP"
else
    log "Python environment up to date"
fi
log "setup complete"
