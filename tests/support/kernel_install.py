"""A throwaway root for kernel-install tests: RPMs installed with `rpm --root`, and the host's real
kernel-install run against it in a private mount namespace.

systemd 252's kernel-install (a shell script) has no --root: it reads /etc/kernel (install.conf,
cmdline, entry-token; KERNEL_INSTALL_CONF_ROOT only moves that one directory), runs the plugins of
/etc/kernel/install.d and /usr/lib/kernel/install.d, and writes to $BOOT_ROOT or what it finds at
/efi, /boot, /boot/efi. So, inside `unshare --mount`, /etc/kernel, /boot and /usr/lib/modules are
bind-mounted from the scratch root, and /usr becomes an overlay (on a tmpfs) to which the scratch
root's /usr/lib/kernel files (and the variant files of /usr/share/mkosi-initrd-initrd) are added,
next to the host's own plugins. Nothing outside the
namespace changes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

TOP = Path(__file__).resolve().parent.parent.parent
# systemd 252 has no layout=uki support; this is systemd 257's own plugin (make setup extracts it
# from Debian trixie's systemd package), run unchanged.
UKI_COPY_PLUGIN = TOP / ".tools" / "systemd" / "usr" / "lib" / "kernel" / "install.d" / "90-uki-copy.install"
MACHINE_ID = "4f2b7e1c9a8d4e6f8b0c1d2e3f405162"
KERNEL_CMDLINE = "console=ttyS0 panic=-1"

_NAMESPACE_SCRIPT = r"""
set -eu
mount -t tmpfs tmpfs "$NS"
mkdir "$NS/upper" "$NS/work"
mount -t overlay overlay -o "lowerdir=/usr,upperdir=$NS/upper,workdir=$NS/work" /usr
cp -a "$ROOT/usr/lib/kernel/." /usr/lib/kernel/
# The variant files -common installs, for the plugin's local build.
if [ -d "$ROOT/usr/share/mkosi-initrd-initrd" ]; then cp -a "$ROOT/usr/share/mkosi-initrd-initrd" /usr/share/; fi
for p in $EXTRA_PLUGINS; do cp -a "$p" /usr/lib/kernel/install.d/; done
mkdir -p /usr/lib/modules
mount --bind "$ROOT/usr/lib/modules" /usr/lib/modules
mount --bind "$ROOT/etc/kernel" /etc/kernel
mount --bind "$ROOT/boot" /boot
exec kernel-install "$@"
"""


def rpm_root(root: Path, *args: object, check: bool = True) -> subprocess.CompletedProcess:
    """rpm --root ROOT ...; scriptlets run chrooted into ROOT."""
    proc = subprocess.run(["rpm", "--root", str(root), *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"rpm {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def make_root(root: Path, rpms: Sequence[Path], *, nodeps: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rpm_root(root, "--initdb")
    if rpms:
        rpm_root(root, "-i", *(["--nodeps"] if nodeps else []), *rpms)
    return root


@dataclasses.dataclass(frozen=True)
class BootDir:
    """What kernel-install left in the scratch root's /boot, for one kernel version."""

    root: Path
    kernel_version: str

    @property
    def boot(self) -> Path:
        return self.root / "boot"

    @property
    def entry(self) -> Path:
        return self.boot / "loader" / "entries" / f"{MACHINE_ID}-{self.kernel_version}.conf"

    @property
    def entry_dir(self) -> Path:
        return self.boot / MACHINE_ID / self.kernel_version

    @property
    def uki(self) -> Path:
        return self.boot / "EFI" / "Linux" / f"{MACHINE_ID}-{self.kernel_version}.efi"

    def entry_fields(self) -> dict[str, list[str]]:
        fields: dict[str, list[str]] = {}
        for line in self.entry.read_text().splitlines():
            if m := re.match(r"^(\S+)\s+(.*)$", line):
                fields.setdefault(m.group(1), []).append(m.group(2).strip())
        return fields

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.boot)) for p in self.boot.rglob("*") if p.is_file())


def configure(root: Path, *, layout: str, dropins: bool = True, extra: str = "") -> None:
    """Write ROOT/etc/kernel/install.conf and cmdline. kernel-install 252 does not read
    install.conf.d, so with `dropins` the package's drop-ins are appended to install.conf, in name
    order, which is what later kernel-install releases make of them (later lines win when sourced)."""
    etc = root / "etc" / "kernel"
    etc.mkdir(parents=True, exist_ok=True)
    text = f"layout={layout}\n"
    if dropins:
        for dropin in sorted((root / "usr/lib/kernel/install.conf.d").glob("*.conf")):
            text += f"# from {dropin.name}\n" + dropin.read_text()
    (etc / "install.conf").write_text(text + extra)
    (etc / "cmdline").write_text(KERNEL_CMDLINE + "\n")
    (root / "boot" / "loader" / "entries").mkdir(parents=True, exist_ok=True)


def kernel_install(root: Path, *args: str, extra_plugins: Sequence[Path] = (),
                   env: Optional[Mapping[str, str]] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the host's kernel-install with ROOT's /etc/kernel, /boot, /usr/lib/modules and plugins."""
    for p in extra_plugins:
        if not p.exists():
            raise FileNotFoundError(p)
    ns = Path(tempfile.mkdtemp(prefix="ki-ns-"))
    full_env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "ROOT": str(root.resolve()),
        "NS": str(ns),
        "EXTRA_PLUGINS": " ".join(str(p.resolve()) for p in extra_plugins),
        "MACHINE_ID": MACHINE_ID,
        "LC_ALL": "C",
        **(env or {}),
    }
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _NAMESPACE_SCRIPT,
                               "sh", *args], capture_output=True, text=True, env=full_env, timeout=timeout)
    finally:
        shutil.rmtree(ns, ignore_errors=True)


def host_has_kernel_install() -> Optional[str]:
    """None when the tests can run, else what is missing."""
    for tool in ("kernel-install", "unshare", "rpm"):
        if shutil.which(tool) is None:
            return tool
    if os.geteuid() != 0:
        return "root (mount namespaces, rpm --root)"
    return None
