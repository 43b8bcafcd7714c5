"""Work directories the builder can prove it made, and the lock that keeps two runs out of one
destination: what lets a run killed outright (kill -9, an OOM kill) be cleaned up by the next one
without ever removing anything else.

A work directory holds an owner file (OWNER_FILE) written first and flock(2)ed for as long as the
run lives; the kernel drops the lock when the process dies, however it dies. So a directory with
the builder's name pattern whose owner file reads as ours and can be locked is debris of a dead
run; one without the file, or whose lock is held, is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.util.errors import DestinationBusyError

logger = logging.getLogger("mkosi_initrd_builder.util.workdirs")

OWNER_FILE = ".mkosi-initrd-owner"
OWNER_FORMAT = "mkosi-initrd-work/1"
# A holder writes its pid right after it takes the lock; a second run reading the file in between
# waits this long for it before it names the holder "unknown".
HOLDER_PID_WAIT = 1.0


def lock_path(dest: Path) -> Path:
    """The lock of `dest`: beside it, named after it. Never inside it: the destination is replaced by
    a rename, and a lock inside would be renamed away with the old directory."""
    return dest.with_name(f".{dest.name}.stage-lock")


@contextlib.contextmanager
def destination_lock(dest: Path) -> Iterator[None]:
    """Hold `dest` for this process, or raise DestinationBusyError naming it and the holder at once.

    The file is removed on release, before the lock is let go; a run that opened it meanwhile finds
    after locking that the name no longer leads to its file and tries again."""
    path = lock_path(dest)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(fd)
            os.close(fd)
            raise DestinationBusyError(dest, holder) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)  # its last holder removed it while this run waited to lock it: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder_pid(fd: int) -> Optional[int]:
    deadline = time.monotonic() + HOLDER_PID_WAIT
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


@contextlib.contextmanager
def owned_work_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new directory `parent/<prefix><random>` holding the owner file, locked until the context
    ends; then the directory is removed with everything in it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        fd = os.open(path / OWNER_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, (json.dumps({"format": OWNER_FORMAT, "pid": os.getpid()}) + "\n").encode())
            yield path
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_abandoned(parent: Path, prefix: str, *,
                     salvage: Optional[Callable[[Path], None]] = None) -> list[Path]:
    """Remove the work directories `owned_work_dir(parent, prefix)` made for runs that are dead;
    returns them. Anything else under `parent`, whatever its name, is left alone. `salvage` is
    called with each before it is removed."""
    removed = []
    try:
        names = sorted(os.listdir(parent))
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        path = parent / name
        pid = _dead_owner(path)
        if pid is None:
            continue
        if salvage is not None:
            salvage(path)
        logger.info("removing %s, left behind by a run that was killed (pid %d)", path, pid)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _dead_owner(path: Path) -> Optional[int]:
    """The pid recorded in `path`'s owner file when `path` is a work directory of ours whose run is
    dead (its owner file can be locked); None otherwise."""
    try:
        if not stat.S_ISDIR(path.lstat().st_mode):
            return None
        fd = os.open(path / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None  # its run is alive
            raise
        try:
            owner = json.loads(os.pread(fd, 4096, 0))
        except ValueError:
            return None
        if not isinstance(owner, dict) or owner.get("format") != OWNER_FORMAT or not isinstance(owner.get("pid"), int):
            return None
        return owner["pid"]
    finally:
        os.close(fd)
