"""Assemble a Unified Kernel Image with ukify, and read its PE sections back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mkosi_initrd_builder.util.errors import BuilderError, VerifyError
from mkosi_initrd_builder.util.run import run
from mkosi_initrd_builder.util.tools import find_tool

# Sections every UKI we build carries; .cmdline only when the variant sets a command line.
REQUIRED_SECTIONS = (".linux", ".initrd", ".osrel", ".uname")
STUB_PATH = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"


@dataclasses.dataclass(frozen=True)
class UkiInputs:
    kernel: Path
    initrd: Path
    stub: Path
    os_release: Path
    uname: str
    cmdline: str


def build_uki(inputs: UkiInputs, output: Path) -> None:
    argv = [
        find_tool("ukify"), "build",
        f"--linux={inputs.kernel}",
        f"--initrd={inputs.initrd}",
        f"--stub={inputs.stub}",
        f"--os-release=@{inputs.os_release}",
        f"--uname={inputs.uname}",
        f"--output={output}",
    ]
    if inputs.cmdline:
        if inputs.cmdline.startswith("@"):
            # Variant loading refuses this; here it would make ukify embed the file it names.
            raise BuilderError(f"kernel command line {inputs.cmdline!r} starts with '@', which ukify reads as a file")
        argv.append(f"--cmdline={inputs.cmdline}")
    run(argv, capture=True)


def uki_sections(path: Path) -> dict[str, bytes]:
    """Section name -> content, read with pefile (the library ukify itself uses)."""
    try:
        import pefile
    except ImportError as e:  # pragma: no cover - make setup installs python3-pefile
        raise VerifyError("python3-pefile is not importable; run 'make setup'") from e
    try:
        pe = pefile.PE(str(path), fast_load=True)
    except pefile.PEFormatError as e:
        raise VerifyError(f"{path}: not a PE image: {e}") from None
    sections = {}
    for s in pe.sections:
        name = s.Name.rstrip(b"\0").decode(errors="replace")
        sections[name] = s.get_data()[: s.Misc_VirtualSize] if s.Misc_VirtualSize else s.get_data()
    pe.close()
    return sections
