"""File-system helpers: temp-then-rename writes, directory swaps, hashing, path containment."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
