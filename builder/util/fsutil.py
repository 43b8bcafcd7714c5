"""File-system helpers: temp-then-rename writes, directory swaps, hashing, path containment."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int), a copy-on-write clone of a whole file
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_file(path: Path, algorithms: Iterable[str]) -> dict[str, str]:
    """hashlib name -> hex digest of the file, in one pass."""
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def private_copy(src: Path, dst: Path, algorithms: Iterable[str]) -> tuple[int, dict[str, str], bool]:
    """Create `dst` (it must not exist) with the bytes of `src` in an inode of its own, and hash what
    `dst` holds: a reflink where the file system clones copy-on-write, else a copy hashed on the way.
    Returns the size, the digests and whether it was a reflink. A hard link would let a later write
    to `src` change `dst`; neither of these does."""
    algorithms = list(algorithms)
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            cloned = True
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EPERM):
                raise
            cloned = False
        if not cloned:
            hashers = {a: hashlib.new(a) for a in algorithms}
            size = 0
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            while n := fin.readinto(buffer):
                for h in hashers.values():
                    h.update(view[:n])
                fout.write(view[:n])
                size += n
            return size, {a: h.hexdigest() for a, h in hashers.items()}, False
    return dst.stat().st_size, hash_file(dst, algorithms), True


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write to a temporary name in the same directory, then rename over `path`."""
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(new: Path, final: Path) -> None:
    """Move the finished directory `new` to `final`, replacing what was there, never leaving a mix."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
    try:
        os.rename(new, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def normalized_absolute(path: str | os.PathLike[str]) -> Path:
    """`path` made absolute with '.', '..' and repeated slashes folded lexically. POSIX lets '//' name
    something else than '/', and os.path.normpath keeps it; nothing here means that."""
    text = os.path.normpath(os.path.abspath(path))
    return Path("/" + text.lstrip("/"))


def is_within(path: PurePosixPath | Path, root: PurePosixPath | Path) -> bool:
    """True when `path` is `root` or below it, comparing whole path components (never string prefixes)."""
    p, r = Path(os.path.normpath(path)).parts, Path(os.path.normpath(root)).parts
    return p[: len(r)] == r


def link_or_copy_tree(src: Path, dest: Path) -> None:
    """Copy a tree, hard-linking files where the file system allows it."""
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dest, symlinks=True, copy_function=link)
