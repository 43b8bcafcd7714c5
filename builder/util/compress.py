"""The one decompressor: initrds, kernel modules and repodata come as zstd, xz, gzip or plain bytes."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard  # python3-zstandard

from mkosi_initrd_builder.util.errors import BuilderError

# Recognised by magic, not by file name: mkosi, kernels and createrepo_c name them inconsistently.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"


class DecompressError(BuilderError):
    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: cannot decompress: {message}")
        self.path = path


def decompress_bytes(data: bytes, path: Path) -> bytes:
    """`data` (read from `path`, named in errors) decompressed; unchanged when it is not compressed.

    In process, with the standard library and python3-zstandard: measured against `zstd -dc` in a
    subprocess on a 7 MB initrd, in-process zstd is about twice as fast (tests/bench/library_bench.py)."""
    try:
        if data.startswith(ZSTD_MAGIC):
            return _zstd(data, path)
        if data.startswith(XZ_MAGIC):
            return lzma.decompress(data)
        if data.startswith(GZIP_MAGIC):
            return gzip.decompress(data)
    except (zstandard.ZstdError, lzma.LZMAError, OSError, EOFError, zlib.error) as e:
        raise DecompressError(path, str(e)) from None
    return data


def _zstd(data: bytes, path: Path) -> bytes:
    # Frame by frame: zstandard.decompress() refuses frames without a content size (streamed zstd
    # writes them), and the stream reader returns a truncated file's prefix without a word.
    out = []
    while data:
        d = zstandard.ZstdDecompressor().decompressobj()
        out.append(d.decompress(data))
        if not d.eof:
            raise DecompressError(path, "truncated zstd frame")
        data = d.unused_data
    return b"".join(out)


def decompress_file(path: Path) -> bytes:
    return decompress_bytes(path.read_bytes(), path)


BZIP2_MAGIC = b"BZh"  # old yum repodata; nothing else here uses bzip2
CHUNK = 1 << 20


class ExpansionLimitError(DecompressError):
    """A compressed file expands to more than it may (repodata from people the builder does not trust)."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(path, f"it expands to more than {limit:,} bytes")
        self.limit = limit


@contextlib.contextmanager
def open_decompressed(path: Path) -> Iterator[BinaryIO]:
    """The uncompressed bytes of `path` as a stream, recognised by magic as decompress_bytes() does:
    memory does not grow with what the file expands to. (A truncated zstd stream ends early without
    an error here; whoever reads a document out of it meets the missing end.)"""
    with open(path, "rb") as raw:
        magic = raw.read(len(XZ_MAGIC))
        raw.seek(0)
        if magic.startswith(ZSTD_MAGIC):
            with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False) as f:
                yield f  # type: ignore[misc]
        elif magic.startswith(XZ_MAGIC):
            with lzma.open(raw) as f:
                yield f  # type: ignore[misc]
        elif magic.startswith(GZIP_MAGIC):
            with gzip.open(raw) as f:
                yield f  # type: ignore[misc]
        elif magic.startswith(BZIP2_MAGIC):
            with bz2.open(raw) as f:
                yield f  # type: ignore[misc]
        else:
            yield raw


def decompress_to(src: Path, dst: BinaryIO, limit: int) -> int:
    """Write the uncompressed bytes of `src` to `dst` a chunk at a time; ExpansionLimitError as soon as
    they pass `limit`, so neither memory nor disk takes more. Returns the number of bytes."""
    total = 0
    try:
        with open_decompressed(src) as f:
            while chunk := f.read(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise ExpansionLimitError(src, limit)
                dst.write(chunk)
    except (zstandard.ZstdError, lzma.LZMAError, EOFError, zlib.error, OSError) as e:
        raise DecompressError(src, str(e) or type(e).__name__) from None
    return total
