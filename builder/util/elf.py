"""The little of ELF64 the builder reads: the section table, and the libraries a file links (DT_NEEDED).

A section-header walk by hand, like the rest of the builder's binary readers: pyelftools would be a
new runtime dependency for two lookups, and is 30 times slower on kernel modules
(tests/bench/library_bench.py)."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

ELF_MAGIC = b"\x7fELF"
SHT_DYNAMIC = 6
DT_NULL, DT_NEEDED = 0, 1


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int
    link: int      # for SHT_DYNAMIC: the index of its string table


def is_elf64(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC and len(data) > 0x40 and data[4] == 2


def sections(elf: bytes) -> list[Section]:
    """The section table of an ELF64 file (either byte order); ValueError when it is not one or is cut short."""
    if not is_elf64(elf):
        raise ValueError("not an ELF64 object")
    endian = "<" if elf[5] == 1 else ">"
    try:
        shoff, = struct.unpack_from(endian + "Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", elf, 0x3A)
        raw = [struct.unpack_from(endian + "IIQQQQI", elf, shoff + i * shentsize) for i in range(shnum)]
        if not raw:
            return []
        names_at = raw[shstrndx][4]
        out = []
        for name_off, stype, _flags, _addr, offset, size, link in raw:
            start = names_at + name_off
            out.append(Section(elf[start:elf.index(b"\0", start)].decode(errors="replace"), stype, offset, size, link))
        return out
    except (struct.error, IndexError, ValueError):
        raise ValueError("truncated or malformed ELF section table") from None


def section_data(elf: bytes, section: Section) -> bytes:
    return elf[section.offset:section.offset + section.size]


def needed(elf: bytes) -> tuple[str, ...]:
    """The sonames a dynamically linked file asks the loader for, in order; () for a static one."""
    table = sections(elf)
    endian = "<" if elf[5] == 1 else ">"
    out: list[str] = []
    for dynamic in (s for s in table if s.type == SHT_DYNAMIC):
        if dynamic.link >= len(table):
            raise ValueError("dynamic section names no string table")
        strings = table[dynamic.link]
        for tag, value in _entries(section_data(elf, dynamic), endian):
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                start = strings.offset + value
                out.append(elf[start:elf.index(b"\0", start)].decode(errors="replace"))
    return tuple(out)


def _entries(data: bytes, endian: str) -> Iterator[tuple[int, int]]:
    for off in range(0, len(data) - 15, 16):
        yield struct.unpack_from(endian + "qQ", data, off)
