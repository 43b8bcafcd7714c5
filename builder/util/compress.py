"""The one decompressor: initrds, kernel modules and repodata come as zstd, xz, gzip or plain bytes."""

from __future__ import annotations

import gzip
import lzma
import zlib
from pathlib import Path

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
