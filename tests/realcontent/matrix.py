"""The boot matrix: boot an initrd (or a UKI under OVMF) with a case's disks and command line, wait
for the real root's marker, and read the kernel's uptime at that moment from it."""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.checking.qemu import BootProbe, boot

from .disks import CASES, ROOT_MARKER, RootDisks

BOOT_TIMEOUT = 300.0   # TCG: a systemd initrd to a real root takes 20-40 s when the host is idle
BOOT_MEMORY = "1024"
MARKER_RE = re.compile(ROOT_MARKER + r" case=(\S+) uptime=([0-9.]+) root=(\S+)")
# systemd's status line for a unit that failed: "[FAILED] Failed to start ..." (with colours).
FAILED_UNIT_RE = re.compile(r"FAILED(?:\x1b\[0m)?\] (.*)")


@dataclasses.dataclass(frozen=True)
class CaseResult:
    case: str
    ok: bool
    wall_seconds: float               # QEMU start to marker
    uptime: Optional[float]           # kernel start to marker (the guest's /proc/uptime)
    root_device: Optional[str]
    marker_line: str
    console_tail: str
    failed_units: tuple[str, ...] = ()   # systemd's [FAILED] lines

    def describe(self) -> str:
        if self.ok:
            return f"{self.case}: root {self.root_device} after {self.uptime:.1f}s (wall {self.wall_seconds:.1f}s)"
        return f"{self.case}: no root marker after {self.wall_seconds:.0f}s; console tail:\n{self.console_tail}"


def failed_units(console: str) -> tuple[str, ...]:
    """The messages of systemd's [FAILED] status lines in a console log, colours removed."""
    return tuple(re.sub(r"\x1b\[[0-9;]*m", "", m.group(1)).strip() for m in FAILED_UNIT_RE.finditer(console))


def boot_case(case_name: str, disks: RootDisks, *, kernel: Path, initrd: Optional[Path] = None,
              uefi: bool = False, timeout: float = BOOT_TIMEOUT, console_log: Optional[Path] = None) -> CaseResult:
    """Boot kernel+initrd (or, with uefi=True, the UKI `kernel` under OVMF, which passes the
    command line to the stub) with the case's disks; the marker must name this case."""
    case = CASES[case_name]
    with tempfile.TemporaryDirectory(prefix="realcontent-boot-") as tmp:
        log = console_log or Path(tmp) / "console.log"
        result = boot(kernel=kernel, initrd=initrd, append=case.append(), uefi=uefi,
                      probe=BootProbe(expect=f"{ROOT_MARKER} case={case_name} "), timeout=timeout, memory=BOOT_MEMORY,
                      extra_args=disks.drive_args(case), console_log=log)
        console = log.read_bytes().decode(errors="replace")
    failed = failed_units(console)
    m = MARKER_RE.search(result.marker_line)
    return CaseResult(case_name, result.ok and m is not None, result.seconds,
                      float(m.group(2)) if m else None, m.group(3) if m else None,
                      result.marker_line, result.console_tail, failed)
