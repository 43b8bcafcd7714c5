"""Boot a kernel + initrd (direct kernel boot) or a UKI (under OVMF) in QEMU and watch the console for
the image's init coming up."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.util.errors import BootError
from mkosi_initrd_builder.util.tools import find_tool

logger = logging.getLogger("mkosi_initrd_builder.checking.qemu")

OVMF_CANDIDATES = (
    Path("/usr/share/ovmf/OVMF.fd"),
    Path("/usr/share/edk2/ovmf/OVMF_CODE.fd"),
    Path("/usr/share/OVMF/OVMF_CODE.fd"),
)
# OVMF built with SMM, which Secure Boot needs to keep its variables from the guest (Debian, Fedora).
SECURE_BOOT_CODE_CANDIDATES = (
    Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
    Path("/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd"),
)
# What OVMF's boot manager prints when Secure Boot refuses an image (unsigned: no signature the db
# trusts; tampered: its digest no longer matches the signature's), as observed with edk2 2022.11:
#   BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x1,0x0): Access Denied
FIRMWARE_REFUSED = r"BdsDxe: failed to (?:load|start) .*: (?:Access Denied|Security Violation)"
# The kernel prints this (KERN_INFO) when it executes the initrd's /init: the image was unpacked and
# its init is executable, whatever the init is (systemd in product images, anything in others).
INIT_STARTED = r"Run /init as init process"
PANIC = r"Kernel panic - not syncing"
DEFAULT_SETTLE = 15.0
DEFAULT_TIMEOUT = 180.0  # TCG only (KVM is unusable on these builders); a boot takes 10-20 s when idle


@dataclasses.dataclass(frozen=True)
class BootProbe:
    """What makes a boot pass. Without `expect`: the kernel started /init and, `settle` seconds later,
    the machine still runs and has not panicked (an init that dies panics the kernel; one stuck in a
    loop of errors is what a product's own `expect` catches). With `expect`: a console line matches it."""

    expect: Optional[str] = None
    fail: str = PANIC
    settle: float = DEFAULT_SETTLE


@dataclasses.dataclass(frozen=True)
class BootResult:
    ok: bool
    seconds: float
    marker_line: str
    console_tail: str


def esp_drive(directory: Path) -> list[str]:
    """QEMU options attaching `directory` read-only as a FAT disk (QEMU's vvfat), which OVMF boots from
    its removable-media path EFI/BOOT/BOOTX64.EFI; how a UKI finds its addons in <uki>.extra.d/."""
    return ["-drive", f"if=virtio,format=raw,readonly=on,file=fat:{directory}"]


@dataclasses.dataclass(frozen=True)
class SecureBootFirmware:
    """OVMF with Secure Boot: its code (built with SMM) and a variable store holding the enrolled keys
    (PK, KEK, db) with Secure Boot on. Each boot works on a copy of the store: the firmware writes to it."""

    code: Path
    variables: Path


def find_secure_boot_code() -> Path:
    for p in SECURE_BOOT_CODE_CANDIDATES:
        if p.exists():
            return p
    raise BootError("no Secure Boot OVMF firmware found (looked in "
                    + ", ".join(map(str, SECURE_BOOT_CODE_CANDIDATES)) + ")", hint="run 'make setup' to install ovmf")


def find_ovmf() -> Path:
    for p in OVMF_CANDIDATES:
        if p.exists():
            return p
    raise BootError("no OVMF firmware found (looked in " + ", ".join(map(str, OVMF_CANDIDATES)) + ")",
                    hint="run 'make setup' to install ovmf")


def boot(
    *,
    kernel: Optional[Path],
    initrd: Optional[Path] = None,
    append: str = "",
    uefi: bool = False,
    probe: BootProbe = BootProbe(),
    timeout: float = DEFAULT_TIMEOUT,
    memory: str = "768",
    extra_args: Sequence[str] = (),
    console_log: Optional[Path] = None,
    cpu: str = "max",
    secure_boot: Optional[SecureBootFirmware] = None,
) -> BootResult:
    """Boot in QEMU with TCG; return as soon as `probe` decides, when the guest powers off, or when
    `timeout` passes. The QEMU process never outlives this call. With `kernel` None (under `uefi`)
    the firmware boots whatever `extra_args` attach, e.g. an ESP from `esp_drive()`.

    With `secure_boot`, `kernel` is an EFI image (a UKI) that the firmware's boot manager loads from a
    disk, \\EFI\\BOOT\\BOOTX64.EFI of an ESP, as on a real machine: that is the load Secure Boot
    guards. A refusal (FIRMWARE_REFUSED) fails the boot at once."""
    qemu = find_tool("qemu-system-x86_64")
    tmp = tempfile.TemporaryDirectory(prefix="mkosi-initrd-boot-")
    work = Path(tmp.name)
    if console_log is None:
        console_log = work / "console.log"
    console_log.write_bytes(b"")
    machine = "q35,smm=on" if secure_boot else "q35"
    argv = [qemu, "-machine", machine, "-accel", "tcg", "-cpu", cpu, "-m", memory, "-smp", "1",
            "-nographic", "-no-reboot", "-nodefaults", "-display", "none",
            "-serial", f"file:{console_log}"]
    if secure_boot is not None:
        if kernel is None:
            raise BootError("a Secure Boot boot needs the EFI image to put on its ESP")
        esp = work / "esp/EFI/BOOT"
        esp.mkdir(parents=True)
        shutil.copyfile(kernel, esp / "BOOTX64.EFI")
        variables = work / "vars.fd"
        shutil.copyfile(secure_boot.variables, variables)
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on",
                 "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={secure_boot.code}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
                 *esp_drive(work / "esp")]
        probe = dataclasses.replace(probe, fail=f"{probe.fail}|{FIRMWARE_REFUSED}")
    elif kernel is not None:
        argv += ["-kernel", str(kernel)]
    if uefi and secure_boot is None:
        argv += ["-bios", str(find_ovmf())]
    if initrd is not None:
        argv += ["-initrd", str(initrd)]
    if append:
        argv += ["-append", append]
    argv += list(extra_args)
    logger.info("+ %s", shlex.join(argv))
    expect = re.compile(probe.expect) if probe.expect else None
    fail = re.compile(probe.fail)
    init = re.compile(INIT_STARTED)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    marker = ""
    ok = False
    init_seen: Optional[float] = None
    try:
        while True:
            text = console_log.read_bytes().decode(errors="replace")
            for line in text.splitlines():
                if fail.search(line):
                    marker, ok = line.strip(), False
                    break
                if expect is not None and expect.search(line):
                    marker, ok = line.strip(), True
                    break
                if init_seen is None and init.search(line):
                    init_seen = time.monotonic()
            now = time.monotonic()
            if not marker and expect is None and init_seen is not None and now - init_seen >= probe.settle:
                marker, ok = f"/init started and ran {now - init_seen:.0f}s without a panic", True
            if marker or proc.poll() is not None or now - start > timeout:
                break
            time.sleep(0.2)
        seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        qemu_out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
    text = console_log.read_bytes().decode(errors="replace")
    tmp.cleanup()
    tail = "\n".join((text + ("\n" + qemu_out if qemu_out.strip() else "")).splitlines()[-30:])
    if not marker and time.monotonic() - start > timeout:
        tail += f"\n(timed out after {timeout:.0f}s)"
    elif not marker and init_seen is not None:
        tail += "\n(the machine stopped before /init had run long enough to count as booted)"
    return BootResult(ok, seconds, marker, tail)
