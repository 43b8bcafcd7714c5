"""Read newc cpio archives (what mkosi writes), compressed with zstd, for inspection and verification.

Hand-written rather than libarchive-c: parsing an initrd's 18 MB of cpio takes the same time in both
(measured in tests/bench/library_bench.py), and libarchive stops at the first trailer, while the
kernel reads concatenated archives (an early microcode cpio before the main one) and so must we."""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Iterator
from pathlib import Path

from mkosi_initrd_builder.util.compress import decompress_file

TRAILER = "TRAILER!!!"


@dataclasses.dataclass(frozen=True)
class CpioEntry:
    name: str     # without a leading "./" or "/"
    mode: int
    size: int
    mtime: int
    data: bytes   # file content, or the link target for symlinks

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class CpioFormatError(ValueError):
    pass


def iter_cpio(data: bytes) -> Iterator[CpioEntry]:
    """Entries of one or more concatenated newc archives; raises CpioFormatError when malformed."""
    for entry, _, _ in iter_cpio_members(data):
        yield entry


def iter_cpio_members(data: bytes) -> Iterator[tuple[CpioEntry, int, int]]:
    """iter_cpio(), each entry with where its member starts and ends in `data` (header, name, data
    and padding), for a caller that copies members as they are."""
    off = 0
    seen_trailer = False
    while off < len(data):
        # Archives may be padded with NULs to a block boundary between and after members.
        if data[off] == 0:
            off += 1
            continue
        magic = data[off:off + 6]
        if magic not in (b"070701", b"070702"):
            raise CpioFormatError(f"bad cpio magic {magic!r} at offset {off}")
        try:
            fields = [int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise CpioFormatError(f"bad cpio header at offset {off}") from None
        mode, mtime, filesize, namesize = fields[1], fields[5], fields[6], fields[11]
        name_start = off + 110
        name = data[name_start:name_start + namesize - 1].decode(errors="replace")
        data_start = (name_start + namesize + 3) & ~3
        data_end = data_start + filesize
        if data_end > len(data):
            raise CpioFormatError(f"entry {name!r} runs past the end of the archive")
        start, off = off, (data_end + 3) & ~3
        if name == TRAILER:
            seen_trailer = True
            continue
        seen_trailer = False
        yield CpioEntry(entry_name(name), mode, filesize, mtime, data[data_start:data_end]), start, off
    if not seen_trailer:
        raise CpioFormatError("archive has no trailer (truncated?)")


def entry_name(name: str) -> str:
    """'./usr/bin/sh', '/usr/bin/sh' and 'usr/bin/sh' -> 'usr/bin/sh'; './.hidden' -> '.hidden'; the
    archive's root ('.', './', '/') -> '.'. Whole prefixes are removed, never single characters."""
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return name or "."


def read_cpio(path: Path) -> list[CpioEntry]:
    return list(iter_cpio(decompress_file(path)))


def resolve(entries: dict[str, CpioEntry], name: str, depth: int = 0) -> CpioEntry | None:
    """Follow symlinks (relative or absolute) inside the archive to the entry `name` denotes."""
    if depth > 20:
        return None
    parts: list[str] = []
    for i, comp in enumerate(name.strip("/").split("/")):
        candidate = "/".join(parts + [comp])
        e = entries.get(candidate)
        if e is not None and e.is_symlink:
            target = e.data.decode()
            base = "" if target.startswith("/") else "/".join(parts)
            rest = "/".join(name.strip("/").split("/")[i + 1:])
            joined = _normalize(f"{base}/{target}/{rest}" if rest else f"{base}/{target}")
            return resolve(entries, joined, depth + 1)
        parts.append(comp)
    return entries.get("/".join(parts))


def _normalize(path: str) -> str:
    out: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if out:
                out.pop()
            continue
        out.append(comp)
    return "/".join(out)
