"""The output formats, keyed by the OutputFormat a variant file names in `formats`.

Adding a format: a module here with a Format subclass, a member of OutputFormat and an entry in
FORMATS (ARCHITECTURE.md walks through it). Everything else iterates over FORMATS."""

from __future__ import annotations

import enum
from collections.abc import Iterable

from mkosi_initrd_builder.building.formats.base import Format
from mkosi_initrd_builder.building.formats.initrd import INITRD
from mkosi_initrd_builder.building.formats.microcode import MICROCODE
from mkosi_initrd_builder.building.formats.uki import UKI


class OutputFormat(str, enum.Enum):
    initrd = "initrd"  # OUTPUT/<variant>/initrd.cpio.zst, mkosi's cpio compressed; every variant has it
    microcode = "microcode"  # OUTPUT/<variant>/microcode.cpio: the early cpio, every vendor's CPU microcode
    uki = "uki"        # OUTPUT/<variant>/uki.efi


# In build order: a later format may read an earlier one's output (the UKI embeds the initrd and
# the microcode).
FORMATS: dict[OutputFormat, Format] = {
    OutputFormat.initrd: INITRD,
    OutputFormat.microcode: MICROCODE,
    OutputFormat.uki: UKI,
}


def formats_of(kinds: Iterable[OutputFormat]) -> list[Format]:
    """The Format objects of `kinds`, in build order."""
    wanted = set(kinds)
    return [f for k, f in FORMATS.items() if k in wanted]


def formats_in(outputs: Iterable[str]) -> list[Format]:
    """The formats whose files a manifest's "outputs" lists, in build order."""
    names = set(outputs)
    return [f for f in FORMATS.values() if f.file_name in names]
