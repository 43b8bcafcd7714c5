"""Boot a kernel + initrd (direct kernel boot) or a UKI (under OVMF) in QEMU and wait for a marker."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
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
BOOT_MARKER = "MKOSI-INITRD-BOOT-OK"
FAIL_MARKER = "MKOSI-INITRD-BOOT-FAIL"
DEFAULT_TIMEOUT = 180.0  # TCG only (KVM is unusable on these builders); a boot takes 10-20 s when idle


@dataclasses.dataclass(frozen=True)
class BootResult:
    ok: bool
    seconds: float
    marker_line: str
    console_tail: str


def find_ovmf() -> Path:
    for p in OVMF_CANDIDATES:
        if p.exists():
            return p
    raise BootError("no OVMF firmware found (looked in " + ", ".join(map(str, OVMF_CANDIDATES)) + ")",
                    hint="run 'make setup' to install ovmf")


def boot(
    *,
    kernel: Path,
    initrd: Optional[Path] = None,
    append: str = "",
    uefi: bool = False,
    expect: str = BOOT_MARKER,
    timeout: float = DEFAULT_TIMEOUT,
    memory: str = "768",
    extra_args: Sequence[str] = (),
    console_log: Optional[Path] = None,
) -> BootResult:
    """Boot in QEMU with TCG, return when a console line matches `expect` (a regex), when the guest
    powers off, or when `timeout` passes. The QEMU process never outlives this call."""
    qemu = find_tool("qemu-system-x86_64")
    tmp = None
    if console_log is None:
        tmp = tempfile.TemporaryDirectory(prefix="mkosi-initrd-boot-")
        console_log = Path(tmp.name) / "console.log"
    console_log.write_bytes(b"")
    argv = [qemu, "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", memory, "-smp", "1",
            "-nographic", "-no-reboot", "-nodefaults", "-display", "none",
            "-serial", f"file:{console_log}", "-kernel", str(kernel)]
    if uefi:
        argv += ["-bios", str(find_ovmf())]
    if initrd is not None:
        argv += ["-initrd", str(initrd)]
    if append:
        argv += ["-append", append]
    argv += list(extra_args)
    logger.info("+ %s", shlex.join(argv))
    pattern = re.compile(expect)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    marker = ""
    try:
        while True:
            text = console_log.read_bytes().decode(errors="replace")
            for line in text.splitlines():
                if pattern.search(line):
                    marker = line.strip()
                    break
                if FAIL_MARKER in line:
                    marker = line.strip()
                    break
            if marker or proc.poll() is not None or time.monotonic() - start > timeout:
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
    if tmp is not None:
        tmp.cleanup()
    ok = bool(marker) and FAIL_MARKER not in marker and bool(pattern.search(marker))
    tail = "\n".join((text + ("\n" + qemu_out if qemu_out.strip() else "")).splitlines()[-30:])
    if not marker and time.monotonic() - start > timeout:
        tail += f"\n(timed out after {timeout:.0f}s)"
    return BootResult(ok, seconds, marker, tail)
