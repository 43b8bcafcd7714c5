"""The boot matrix: boot an initrd (or a UKI under OVMF) with a case's disks and command line, wait
for the real root's marker, and read the kernel's uptime at that moment from it. A broken case
waits instead for the initrd to give up (emergency mode) and collects the units it names."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import Optional

from mkosi_initrd_builder.checking.qemu import BootProbe, boot

from .disks import CASES, HIBERNATE_MARKER, RESUME_SWAP_OFFSET, RESUMED_MARKER, ROOT_MARKER, RootDisks

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


# The guest's network: a virtio NIC on QEMU's user network, which answers DHCP and shows this
# machine's loopback at the gateway address (disks.NFS_SERVER).
NIC_ARGS = ("-netdev", "user,id=rcnet", "-device", "virtio-net-pci,netdev=rcnet")


def boot_case(case_name: str, disks: Optional[RootDisks], *, kernel: Path, initrd: Optional[Path] = None,
              uefi: bool = False, timeout: float = BOOT_TIMEOUT, console_log: Optional[Path] = None,
              extra_args: Sequence[str] = (), dracut: bool = False) -> CaseResult:
    """Boot kernel+initrd (or, with uefi=True, the UKI `kernel` under OVMF, which passes the
    command line to the stub) with the case's disks (None: a case without disks) and NIC; the marker
    must name the case's root.
    A broken case stops at the initrd's emergency mode instead; `ok` then says it gave up.
    dracut=True boots the case's dracut command line, where it has one."""
    case = CASES[case_name]
    drives = disks.drive_args(case) if disks is not None else []
    if case.disks and disks is None:
        raise ValueError(f"case {case_name} needs the disks {', '.join(case.disks)}")
    # A boot that should reach the root stops waiting too once the initrd has given up: emergency
    # mode never recovers by itself.
    root_marker = f"{ROOT_MARKER} case={case.root_case} "
    expect = GAVE_UP_RE if case.broken else f"{root_marker}|{GAVE_UP_RE}"
    with tempfile.TemporaryDirectory(prefix="realcontent-boot-") as tmp:
        log = console_log or Path(tmp) / "console.log"
        result = boot(kernel=kernel, initrd=initrd, append=case.append(dracut=dracut), uefi=uefi,
                      probe=BootProbe(expect=expect), timeout=timeout, memory=BOOT_MEMORY,
                      extra_args=[*drives, *(NIC_ARGS if case.nic else ()), *extra_args],
                      console_log=log)
        console = log.read_bytes().decode(errors="replace")
    m = MARKER_RE.search(console)
    ok = result.ok and (case.broken or (m is not None and root_marker in result.marker_line))
    return CaseResult(case_name, ok, result.seconds,
                      float(m.group(2)) if m else None, m.group(3) if m else None,
                      result.marker_line, result.console_tail, failed_units(console),
                      tuple(dict.fromkeys(failed_units(console, FAILURE_LINE_RE))), console_log)


# The kernel's swap header ends with a signature in the last 10 bytes of the first page: SWAPSPACE2
# for plain swap; while a hibernation image is stored there, the kernel writes S1SUSPEND instead.
SWAP_SIGNATURE_OFFSET = 4096 - 10
HIBERNATION_SIGNATURE = b"S1SUSPEND"
HIBERNATE_RE = re.compile(HIBERNATE_MARKER + r" case=(\S+) token=(\S+)")
RESUMED_RE = re.compile(RESUMED_MARKER + r" case=(\S+) token=(\S+) status=(\d+) uptime=([0-9.]+)")


@dataclasses.dataclass(frozen=True)
class ResumeResult:
    """Two boots of one disk: the first hibernates, the second resumes (or does not)."""

    case: str
    token: Optional[str]             # what the first boot's root kept in memory
    hibernated: bool                 # the first boot left a hibernation signature in the swap partition
    resumed_token: Optional[str]     # what the second boot printed after resuming
    second_boot_fresh: bool          # the second boot started the root's init anew: no resume
    gave_up: bool                    # the second boot ended in emergency mode
    resume_uptime: Optional[float]   # the kernel's clock when the resumed process printed the token
    wall_seconds: tuple[float, float]
    failure_lines: tuple[str, ...]   # the second boot's [FAILED], [ TIME ] and [DEPEND] lines
    console_logs: tuple[Path, Path]

    @property
    def resumed(self) -> bool:
        return self.token is not None and self.resumed_token == self.token

    def describe(self) -> str:
        return (f"{self.case}: token {self.token}, hibernated={self.hibernated}, "
                f"resumed token {self.resumed_token}, "
                f"fresh second boot={self.second_boot_fresh}, gave up={self.gave_up}, walls {self.wall_seconds}, "
                f"failures {self.failure_lines}; console logs {self.console_logs[0]}, {self.console_logs[1]}")


def swap_signature(image: Path, swap_offset: int) -> bytes:
    with image.open("rb") as f:
        f.seek(swap_offset + SWAP_SIGNATURE_OFFSET)
        return f.read(10).rstrip(b"\0")


# OVMF as two flash devices, firmware and a writable variable store, so that an EFI variable written
# by the first boot is still there in the second (-bios keeps variables in memory only).
OVMF_PFLASH = (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd"))


def hibernate_and_resume(case_name: str, disks: RootDisks, *, kernel: Path, initrd: Optional[Path] = None,
                         logs: Path, prefix: str, efi_variables: bool = False, corrupt_swap: bool = False,
                         timeout: float = BOOT_TIMEOUT) -> ResumeResult:
    """Boot a private copy of the case's disk twice with the same image and command line. The
    root's init keeps a random token in memory, enables swap and hibernates; the guest powers off.
    The second boot should resume that process, which prints the token. With corrupt_swap, the
    hibernation image's signature is overwritten between the boots (the broken case). With
    efi_variables, both boots run `kernel` (a UKI) under OVMF sharing one variable store."""
    case = CASES[case_name]
    (disk,) = case.disks
    with tempfile.TemporaryDirectory(prefix="realcontent-resume-", dir=logs) as tmp:
        image = Path(tmp) / f"{disk}.img"
        subprocess.run(["cp", "--sparse=always", str(disks.image(disk)), str(image)], check=True)
        drive = ["-drive", f"file={image},format=raw,if=virtio"]
        if efi_variables:
            code, template = OVMF_PFLASH
            variables = Path(tmp) / "OVMF_VARS.fd"
            shutil.copyfile(template, variables)
            drive += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                      "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]
        common = dict(kernel=kernel, initrd=initrd, append=case.append(), memory=BOOT_MEMORY,
                      extra_args=drive, timeout=timeout)
        log1, log2 = logs / f"{prefix}-{case_name}-1-hibernate.log", logs / f"{prefix}-{case_name}-2-resume.log"
        # The first boot ends when the guest powers off after writing the image (or when the root
        # reports that hibernating failed: its init then prints the resumed marker with a status).
        first = boot(probe=BootProbe(expect=RESUMED_MARKER), console_log=log1, **common)
        console1 = log1.read_bytes().decode(errors="replace")
        h = HIBERNATE_RE.search(console1)
        token = h.group(2) if h else None
        hibernated = swap_signature(image, RESUME_SWAP_OFFSET) == HIBERNATION_SIGNATURE
        if corrupt_swap:
            with image.open("r+b") as f:
                f.seek(RESUME_SWAP_OFFSET + SWAP_SIGNATURE_OFFSET)
                f.write(b"\0" * 10)
        second = boot(probe=BootProbe(expect=f"{RESUMED_MARKER}|{HIBERNATE_MARKER}|{GAVE_UP_RE}"),
                      console_log=log2, **common)
        console2 = log2.read_bytes().decode(errors="replace")
    r = RESUMED_RE.search(console2)
    if r and r.group(3) != "0":   # the echo to /sys/power/state failed: nothing was resumed
        r = None
    return ResumeResult(case_name, token, hibernated, r.group(2) if r else None,
                        HIBERNATE_RE.search(console2) is not None, re.search(GAVE_UP_RE, console2) is not None,
                        float(r.group(4)) if r else None, (first.seconds, second.seconds),
                        tuple(dict.fromkeys(failed_units(console2, FAILURE_LINE_RE))), (log1, log2))
