"""The boot matrix: boot an initrd (or a UKI under OVMF) with a case's disks and command line, wait
for the real root's marker, and read the kernel's uptime at that moment from it. A broken case
waits instead for the initrd to give up (emergency mode) and collects the units it names."""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import Optional

from mkosi_initrd_builder.checking.qemu import BootProbe, boot

from .disks import CASES, ROOT_MARKER, RootDisks

BOOT_TIMEOUT = 300.0   # TCG: a systemd initrd to a real root takes 20-40 s when the host is idle
BOOT_MEMORY = "1024"
MARKER_RE = re.compile(ROOT_MARKER + r" case=(\S+) uptime=([0-9.]+) root=(\S+)")
# systemd's status line for a unit that failed: "[FAILED] Failed to start ..." (with colours).
FAILED_UNIT_RE = re.compile(r"FAILED(?:\x1b\[0m)?\] (.*)")
# The lines of a setup that gave up: systemd's status lines for a failed start, a timed-out job or a
# dependency that failed; dracut's initqueue warnings, which name the device it waited for.
FAILURE_LINE_RE = re.compile(r"(?:(?:FAILED| TIME |DEPEND)(?:\x1b\[0m)?\] |dracut-initqueue\[\d+\]: Warning: )(.*)")
# The last thing a failed initrd prints, ours (systemd's emergency.service runs sulogin, which
# refuses the locked root account) and dracut's (its emergency shell): the boot has given up.
GAVE_UP_RE = r"emergency mode|root account is locked|Cannot open access to console"


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
    failure_lines: tuple[str, ...] = ()  # [FAILED], [ TIME ] and [DEPEND] lines
    console_log: Optional[Path] = None

    def describe(self) -> str:
        if self.ok and self.uptime is None:
            return (f"{self.case}: gave up after {self.wall_seconds:.1f}s (console log: {self.console_log}): "
                    + "; ".join(self.failure_lines))
        if self.ok:
            return f"{self.case}: root {self.root_device} after {self.uptime:.1f}s (wall {self.wall_seconds:.1f}s)"
        return (f"{self.case}: no root marker after {self.wall_seconds:.0f}s (console log: {self.console_log}); "
                f"console tail:\n{self.console_tail}")


def failed_units(console: str, pattern: re.Pattern[str] = FAILED_UNIT_RE) -> tuple[str, ...]:
    """The messages of systemd's [FAILED] status lines (or `pattern`'s) in a console log, colours removed."""
    return tuple(re.sub(r"\x1b\[[0-9;]*m", "", m.group(1)).strip() for m in pattern.finditer(console))


def boot_case(case_name: str, disks: RootDisks, *, kernel: Path, initrd: Optional[Path] = None,
              uefi: bool = False, timeout: float = BOOT_TIMEOUT, console_log: Optional[Path] = None,
              extra_args: Sequence[str] = ()) -> CaseResult:
    """Boot kernel+initrd (or, with uefi=True, the UKI `kernel` under OVMF, which passes the
    command line to the stub) with the case's disks; the marker must name the case's root.
    A broken case stops at the initrd's emergency mode instead; `ok` then says it gave up."""
    case = CASES[case_name]
    # A boot that should reach the root stops waiting too once the initrd has given up: emergency
    # mode never recovers by itself.
    root_marker = f"{ROOT_MARKER} case={case.root_case} "
    expect = GAVE_UP_RE if case.broken else f"{root_marker}|{GAVE_UP_RE}"
    with tempfile.TemporaryDirectory(prefix="realcontent-boot-") as tmp:
        log = console_log or Path(tmp) / "console.log"
        result = boot(kernel=kernel, initrd=initrd, append=case.append(), uefi=uefi,
                      probe=BootProbe(expect=expect), timeout=timeout, memory=BOOT_MEMORY,
                      extra_args=[*disks.drive_args(case), *extra_args], console_log=log)
        console = log.read_bytes().decode(errors="replace")
    m = MARKER_RE.search(console)
    ok = result.ok and (case.broken or (m is not None and root_marker in result.marker_line))
    return CaseResult(case_name, ok, result.seconds,
                      float(m.group(2)) if m else None, m.group(3) if m else None,
                      result.marker_line, result.console_tail, failed_units(console),
                      tuple(dict.fromkeys(failed_units(console, FAILURE_LINE_RE))), console_log)

