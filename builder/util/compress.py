"""The one decompressor (initrds, kernel modules and repodata come as zstd, xz, gzip or plain bytes) and
the initrd's compressor (zstd, with a variant's level and parameters)."""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import lzma
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Union

import zstandard  # python3-zstandard

from mkosi_initrd_builder.util.errors import BuilderError

# Recognised by magic, not by file name: mkosi, kernels and createrepo_c name them inconsistently.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"


LIBZSTD_VERSION = ".".join(map(str, zstandard.ZSTD_VERSION))  # python3-zstandard's libzstd

# zstd's levels without --ultra: 20-22 take windows of 32 MiB and more, which the kernel allocates to
# unpack the initramfs.
ZSTD_LEVELS = range(1, 20)

# zstd's match-finding strategies, weakest and fastest first (zstd's own names, as `zstd --zstd=strategy=`
# numbers them from 1).
ZSTD_STRATEGIES = ("fast", "dfast", "greedy", "lazy", "lazy2", "btlazy2", "btopt", "btultra", "btultra2")


@dataclasses.dataclass(frozen=True)
class ZstdParameter:
    """One of zstd's advanced compression parameters, as a variant file spells it (`zstd-parameters`)."""

    key: str        # in the variant file
    keyword: str    # zstandard.ZstdCompressionParameters' argument
    low: int
    high: int


# The window stops at level 19's (8 MiB): the kernel's initramfs decompressor allocates the whole
# window at boot. The others are zstd's own bounds.
ZSTD_PARAMETERS: tuple[ZstdParameter, ...] = (
    ZstdParameter("window-log", "window_log", zstandard.WINDOWLOG_MIN, 23),
    ZstdParameter("chain-log", "chain_log", zstandard.CHAINLOG_MIN, zstandard.CHAINLOG_MAX),
    ZstdParameter("hash-log", "hash_log", zstandard.HASHLOG_MIN, zstandard.HASHLOG_MAX),
    ZstdParameter("search-log", "search_log", zstandard.SEARCHLOG_MIN, zstandard.SEARCHLOG_MAX),
    ZstdParameter("min-match", "min_match", zstandard.MINMATCH_MIN, zstandard.MINMATCH_MAX),
    ZstdParameter("target-length", "target_length", zstandard.TARGETLENGTH_MIN, zstandard.TARGETLENGTH_MAX),
)


@dataclasses.dataclass(frozen=True)
class ZstdTuning:
    """Parameters over a level's defaults, keyed as in the variant file: those of ZSTD_PARAMETERS and
    `strategy` (a name of ZSTD_STRATEGIES), in the order written."""

    values: tuple[tuple[str, Union[int, str]], ...] = ()

    def keywords(self) -> dict[str, int]:
        by_key = {p.key: p.keyword for p in ZSTD_PARAMETERS}
        return {by_key.get(k, k): (ZSTD_STRATEGIES.index(v) + 1 if isinstance(v, str) else v) for k, v in self.values}

    def to_dict(self) -> dict[str, Union[int, str]]:
        return dict(self.values)


@dataclasses.dataclass(frozen=True)
class ZstdSettings:
    """How an initrd is compressed: a zstd level and a tuning over it."""

    level: int = 9
    tuning: ZstdTuning = ZstdTuning()

    def compression_parameters(self) -> zstandard.ZstdCompressionParameters:
        # Multi-threaded on every core: zstd writes the same bytes whatever the number of threads (one
        # or more), so the image does not depend on the machine that built it. With a checksum, as
        # the zstd command writes one by default.
        return zstandard.ZstdCompressionParameters.from_level(self.level, threads=-1, write_checksum=True,
                                                              **self.tuning.keywords())

    def compress(self, data: bytes) -> bytes:
        return zstandard.ZstdCompressor(compression_params=self.compression_parameters()).compress(data)


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
