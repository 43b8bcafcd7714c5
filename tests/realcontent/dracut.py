"""The dracut baseline: a generic (--no-hostonly) dracut initrd for the same kernel, the same kernel
modules and the same userspace versions as our image.

dracut collects binaries from the system it runs on. The host's would be bookworm's (systemd 252,
lvm2 2.03.16), and installing dracut-core there pulls in udev, which upgrades the host's systemd.
So dracut runs in a chroot made of Debian trixie packages (dracut-core 106, systemd 257, udev,
lvm2, cryptsetup, ...), extracted with the same private apt client as the test distribution and
never installed on the host. The chroot's kernel module tree holds exactly the modules the
builder kept for the variant (its manifest's kernel-modules), and --add-drivers names them all,
so both images carry the same driver set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.checking.cpio import read_cpio

from .apt import extract_deb, needed_packages
from .distribution import DistributionBuilder, RealRepo

log = logging.getLogger("tests.realcontent.dracut")

CACHE_FORMAT = "realcontent-dracut-root/1"
# dracut and what its modules look for: systemd (+ systemd-sysv for poweroff/reboot), udev,
# device mapper, LVM, LUKS, MD RAID (mdadm), an NFS root (nfs-common; dracut-network, as Debian
# ships dracut's network and nfs modules apart from dracut-core; iproute2 and mawk, without whose `ip`
# and `awk` dracut's net-lib and systemd-networkd modules cannot be installed and `network` falls back
# to network-legacy, which needs dhclient; netbase for the /etc/protocols dracut's nfs module copies,
# without which mount.nfs fails an NFSv3 mount over TCP), file system checkers, and the tools dracut
# itself runs. A module whose tools are missing is left out silently.
DRACUT_PACKAGES = ("dracut-core", "systemd", "systemd-sysv", "udev", "systemd-cryptsetup", "lvm2", "dmsetup",
                   "cryptsetup-bin", "kmod", "e2fsprogs", "util-linux", "mount", "bash", "coreutils", "zstd",
                   "libc-bin", "base-files", "base-passwd", "grep", "sed", "findutils", "mdadm", "nfs-common",
                   "dracut-network", "iproute2", "mawk", "netbase",
                   # dracut --no-hostonly adds its fido2 and pkcs11 modules (LUKS unlocking with a FIDO2 or
                   # PKCS#11 token) whenever it adds systemd-cryptsetup, and they install only the libraries
                   # they find: on a Fedora system both libraries are there (p11-kit always), so they are
                   # here too. Its tpm2-tss module comes only with the tpm2 tool (tpm2-tools, which pulls
                   # in curl and gnutls: 15 MB), not installed by default, so dracut's image has no TPM2
                   # unlocking while ours has: the comparison leaves that in dracut's favour.
                   "libfido2-1", "libp11-kit0")
# Left out of the chroot: maintainer-script machinery that a chroot of unpacked packages never runs.
CHROOT_EXCLUDE = ("debconf", "perl-base", "libpam-runtime", "libpam-modules", "libpam-modules-bin", "dpkg",
                  "initramfs-tools", "initramfs-tools-core", "initramfs-tools-bin", "klibc-utils", "libklibc")
FIRMWARE_PREFIX = "usr/lib/firmware/"
DRACUT_ARGS = ("--force", "--no-hostonly", "--zstd", "--no-early-microcode")


@dataclasses.dataclass(frozen=True)
class DracutImage:
    path: Path
    seconds: float          # the dracut command alone
    total_seconds: float    # with preparing the module tree (depmod)
    dracut_version: str


def _tools_env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def chroot_key(pins: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in (CACHE_FORMAT, Path(__file__).read_text(), *pins):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def prepare_chroot(builder: DistributionBuilder) -> Path:
    """A trixie tree with dracut and the userspace it collects from, cached under a hash of the
    package versions."""
    versions = builder.apt.closure(DRACUT_PACKAGES)
    info = builder.apt.show(versions)
    names = needed_packages(DRACUT_PACKAGES, info, CHROOT_EXCLUDE)
    key = chroot_key(sorted(f"{n}={info[n].version}" for n in names))
    entry = builder.cache_dir / f"dracut-root-{key}"
    if (entry / ".complete").is_file():
        return entry
    debs = builder.download([info[n] for n in names])
    builder.cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".dracut-root-{key}.", dir=builder.cache_dir) as tmp:
        root = Path(tmp) / "root"
        for name in names:
            extract_deb(debs[name], root)
        # What maintainer scripts would have done: users and groups, the linker cache, a /bin/sh
        # (Debian's is dash, which is not needed otherwise; Fedora's is bash) and awk (mawk's
        # postinst makes the alternative; dracut's net-lib module requires `awk`).
        for master, target in (("passwd.master", "passwd"), ("group.master", "group")):
            shutil.copy2(root / "usr/share/base-passwd" / master, root / "etc" / target)
        for link, target in (("usr/bin/sh", "bash"), ("usr/bin/awk", "mawk")):
            if not (root / link).exists():
                (root / link).symlink_to(target)
        for argv in (["systemd-sysusers"], ["ldconfig"]):
            subprocess.run(["chroot", str(root), *argv], check=True, stdout=subprocess.DEVNULL, env=_tools_env())
        (root / ".complete").write_text(json.dumps(sorted(names)) + "\n")
        try:
            os.rename(root, entry)
        except OSError:
            if not (entry / ".complete").is_file():
                shutil.rmtree(entry)
                os.rename(root, entry)
    return entry


def dracut_version(root: Path) -> str:
    out = subprocess.run(["chroot", str(root), "dracut", "--version"], stdout=subprocess.PIPE, text=True,
                         env=_tools_env(), check=True).stdout
    return out.strip().split()[-1]


def build_dracut_image(repo: RealRepo, builder: DistributionBuilder, kernel_modules: Sequence[str],
                       output: Path, firmware_from: Optional[Path] = None,
                       scratch_on_tmpfs: bool = False) -> DracutImage:
    """dracut --no-hostonly for repo's kernel with exactly `kernel_modules` (paths relative to
    /usr/lib/modules/<KVER>/, as in a variant's manifest) and, when `firmware_from` names our
    initrd, exactly the firmware files it carries: dracut installs the firmware its modules declare
    from what /usr/lib/firmware holds, so both images then have the same drivers' firmware."""
    root = prepare_chroot(builder)
    fwdir = root / "usr/lib/firmware"
    shutil.rmtree(fwdir, ignore_errors=True)
    if firmware_from is not None:
        # Links too: a module asks for a name (ice's "intel/ice/ddp/ice.pkg") that linux-firmware ships
        # as a link to a versioned file; without the link dracut finds no such firmware and leaves it out.
        for entry in read_cpio(firmware_from):
            if (entry.is_file or entry.is_symlink) and entry.name.startswith(FIRMWARE_PREFIX):
                target = fwdir / entry.name[len(FIRMWARE_PREFIX):]
                target.parent.mkdir(parents=True, exist_ok=True)
                if entry.is_symlink:
                    target.symlink_to(entry.data.decode())
                else:
                    target.write_bytes(entry.data)
    kver = repo.kernel_version
    src = repo.kernel_tree / "usr/lib/modules" / kver
    moddir = root / "usr/lib/modules" / kver
    started = time.monotonic()
    shutil.rmtree(moddir, ignore_errors=True)
    for rel in kernel_modules:
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, moddir / rel)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy2(src / name, moddir / name)
    subprocess.run(["chroot", str(root), "depmod", "-a", kver], check=True, env=_tools_env())
    drivers = " ".join(sorted({Path(m).name.split(".", 1)[0] for m in kernel_modules}))
    image_in_root = Path("/tmp/realcontent-dracut.img")
    # dracut assembles its image below /var/tmp (its --tmpdir default): a tmpfs there when ours gets one too.
    scratch = root / "var/tmp"
    if scratch_on_tmpfs:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "realcontent-dracut-tmp", scratch], check=True)
    try:
        dracut_started = time.monotonic()
        proc = subprocess.run(["chroot", str(root), "dracut", *DRACUT_ARGS, "--kver", kver, "--add-drivers",
                               drivers, str(image_in_root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", env=_tools_env())
        finished = time.monotonic()
    finally:
        if scratch_on_tmpfs:
            subprocess.run(["umount", scratch], check=True)
    if proc.returncode != 0 or "dracut[E]" in proc.stdout:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise RuntimeError(f"dracut failed (exit status {proc.returncode}):\n{tail}")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    shutil.move(str(root / image_in_root.relative_to("/")), tmp)
    os.replace(tmp, output)
    (output.with_suffix(".log")).write_text(proc.stdout)
    return DracutImage(output, finished - dracut_started, finished - started, dracut_version(root))


def depmod_whole_kernel_seconds(repo: RealRepo, builder: DistributionBuilder) -> float:
    """How long dracut's world takes for its per-kernel step: `depmod -a` over every module the kernel
    packages ship, as kernel-install's 50-depmod.install runs it once per installed kernel before dracut
    (dracut reads the modules.dep and modules.alias it writes). The builder's counterpart is its scan of
    every module's .modinfo on a cold kernel cache. Run in dracut's chroot with trixie's kmod, on a
    hard-linked copy of the whole modules directory, and timed from the copy to depmod's exit."""
    root = prepare_chroot(builder)
    kver = repo.kernel_version
    src = repo.kernel_tree / "usr/lib/modules" / kver
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".depmod-", dir=root / "tmp") as tmp:
        inside = Path(tmp) / "usr/lib/modules" / kver
        inside.parent.mkdir(parents=True)
        shutil.copytree(src, inside, copy_function=os.link)
        subprocess.run(["chroot", str(root), "depmod", "-a", "-b", f"/tmp/{Path(tmp).name}/usr", kver],
                       check=True, env=_tools_env())
        seconds = time.monotonic() - started
        if not (inside / "modules.dep").is_file():
            raise RuntimeError(f"depmod -a wrote no modules.dep in {inside}")
    return seconds
