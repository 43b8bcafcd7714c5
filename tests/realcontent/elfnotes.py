"""Read the .note.dlopen ELF notes (https://systemd.io/ELF_DLOPEN_METADATA/) and turn them into RPM dependencies.

A note is owner "FDO", type 0x407c0c0a, and a JSON array of objects with "feature",
"description", "priority" ("required", "recommended", "suggested") and "soname" (a list: any one
of them satisfies the feature).
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

NOTE_OWNER = b"FDO"
NOTE_TYPE = 0x407C0C0A
SECTION = b".note.dlopen"


@dataclasses.dataclass(frozen=True)
class DlopenNote:
    feature: str
    priority: str
    sonames: tuple[str, ...]


def read_dlopen_notes(data: bytes) -> list[DlopenNote]:
    """The dlopen notes of one ELF64 little-endian file; [] for anything else."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if not shoff or shstrndx >= shnum or shoff + shnum * shentsize > len(data):
        return []
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    stroff = sections[shstrndx][4]
    notes: list[DlopenNote] = []
    for name_off, _type, _flags, _addr, offset, size in sections:
        start = stroff + name_off
        if data[start:data.find(b"\0", start)] != SECTION:
            continue
        pos, end = offset, offset + size
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            pos += 12
            owner = data[pos:pos + namesz].rstrip(b"\0")
            pos += (namesz + 3) & ~3
            desc = data[pos:pos + descsz].rstrip(b"\0")
            pos += (descsz + 3) & ~3
            if owner != NOTE_OWNER or ntype != NOTE_TYPE:
                continue
            for entry in json.loads(desc):
                notes.append(DlopenNote(entry.get("feature", ""), entry.get("priority", "recommended"),
                                        tuple(entry.get("soname", ()))))
    return notes


def dlopen_notes_in_tree(root: Path) -> list[DlopenNote]:
    """Notes of every regular ELF file under root."""
    notes: list[DlopenNote] = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        notes += read_dlopen_notes(path.read_bytes())
    return notes


def soname_dependency(sonames: Iterable[str], bits64: bool = True) -> str:
    """'libkmod.so.2' -> 'libkmod.so.2()(64bit)', as rpm's elfdeps provides it; alternatives
    become a rich 'or' dependency."""
    suffix = "()(64bit)" if bits64 else "()"
    deps = [f"{s}{suffix}" for s in sonames]
    return deps[0] if len(deps) == 1 else "(" + " or ".join(deps) + ")"


def dlopen_dependencies(notes: Iterable[DlopenNote], kinds: Mapping[str, str]) -> dict[str, list[str]]:
    """Dependency kind (Requires/Recommends/Suggests) -> sorted unique soname dependencies.
    A feature wanted at several priorities counts at the strongest one."""
    order = ("Requires", "Recommends", "Suggests")
    best: dict[str, str] = {}
    for note in notes:
        kind = kinds.get(note.priority)
        if not kind or not note.sonames:
            continue
        dep = soname_dependency(note.sonames)
        if dep not in best or order.index(kind) < order.index(best[dep]):
            best[dep] = kind
    out: dict[str, list[str]] = {}
    for dep, kind in sorted(best.items()):
        out.setdefault(kind, []).append(dep)
    return out
