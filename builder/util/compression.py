"""Reading compressed files as streams, with a bound on what they expand to: repository metadata
comes from people this builder does not trust, and a few kilobytes of zstd can expand to gigabytes."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def _zstd(path: Path) -> BinaryIO:
    import zstandard  # noqa: PLC0415 - only zstd-compressed files need it

    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # type: ignore[return-value]


# file suffix -> how to open it as a stream of the uncompressed bytes
OPENERS: dict[str, Callable[[Path], BinaryIO]] = {
    ".gz": lambda p: gzip.open(p, "rb"),   # type: ignore[dict-item]
    ".xz": lambda p: lzma.open(p, "rb"),   # type: ignore[dict-item]
    ".bz2": lambda p: bz2.open(p, "rb"),   # type: ignore[dict-item]
    ".zst": _zstd,
}
# What the decompressors raise for a damaged stream (besides OSError and EOFError).
DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, lzma.LZMAError, zlib.error)


class ExpansionLimitError(ValueError):
    """A compressed file expands to more than it may."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        super().__init__(f"{path.name} expands to more than {limit:,} bytes")


def is_compressed(path: Path) -> bool:
    return path.suffix in OPENERS


@contextlib.contextmanager
def open_decompressed(path: Path) -> Iterator[BinaryIO]:
    """The file's uncompressed bytes, by its suffix (an unknown suffix is read as it is)."""
    opener = OPENERS.get(path.suffix)
    with (opener(path) if opener else open(path, "rb")) as f:
        yield f


def decompress_to(src: Path, dst: BinaryIO, limit: int) -> int:
    """Write the uncompressed bytes of `src` to `dst`, a chunk at a time; ExpansionLimitError as soon
    as they pass `limit` (so neither memory nor disk takes more). Returns the number of bytes."""
    total = 0
    with open_decompressed(src) as f:
        while chunk := f.read(CHUNK):
            total += len(chunk)
            if total > limit:
                raise ExpansionLimitError(src, limit)
            dst.write(chunk)
    return total

