"""A content-addressed cache of verified RPMs, shared by every staging on a host (kojid's builds
included), so a rebuild fetches nothing.

Layout under the cache root: ``<algorithm>/<checksum>.rpm`` (keyed by the repository's checksum of
the file; entries earlier versions made in ``<algorithm>/<xx>/`` are found and used there) with its
facts (what verification established: NEVRA, payload hash, sha256, size, stat identity) in the
file's extended attribute FACTS_XATTR, or in ``<checksum>.json`` next to it, which is read first
(see add()); ``tmp/`` for files being fetched (in one owned directory per staging, see
util/workdirs.py), ``locks/<xx>`` for flock(2) stripes, ``resolved/<key>.json`` for depsolves
(staging/resolve.py, cached_depsolve()). A ``.rpm`` is renamed into place only after it was
verified and its facts written, so every entry present was complete (nothing is fsynced: a crash
may tear one, and every staging checks the bytes it takes); the stripe lock makes concurrent
stagings fetch each file once. Entries are read-only (0444) unless
they are hard links to a directory source's own files, whose mode the cache leaves alone.

An entry's facts also record the file's stat identity when it was verified (``stat``: the boot id,
st_dev, st_ino, st_size, st_mtime_ns; see identity()). While the file still has that identity, a
staging trusts the recorded sha256 instead of hashing the bytes again: a write to the file stamps its mtime
with the current time, and an entry the cache made has its mtime set SETTLE_NS into the past when it
is recorded, so no write after that leaves it unchanged. An identity is recorded only for an mtime
that old (a directory source's file written just now is hashed at each staging until it is). Not
part of the identity: st_ctime, which every hard link a staging makes changes.

The cache touches only what it can prove it made. A directory becomes a cache when it is new or
empty: the marker file (MARKER) is written into it first, under an flock on the directory so two
stagings creating it at once agree. A non-empty directory without the marker is refused before
anything is written or removed in it, and cleaning removes only what tmp/ holds for a staging that
is dead: its directory with an owner file no live process locks (a staging killed outright), or,
as earlier versions left them, a regular file named the way they named theirs and a day old.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from mkosi_initrd_builder.staging.download import Interrupted
from mkosi_initrd_builder.util.errors import CacheError, StagingError
from mkosi_initrd_builder.util.fsutil import atomic_write, hash_algorithm, normalized_absolute
from mkosi_initrd_builder.util.workdirs import owned_work_dir, remove_abandoned

HEX_RE = re.compile(r"^[0-9a-f]{32,128}$")
# Partial downloads left loose in tmp/ by earlier versions; a live download is never this old.
STALE_TEMP_SECONDS = 24 * 3600
# The directory under tmp/ of one staging's partial downloads.
RUN_PREFIX = "run-"
MARKER = "mkosi-initrd-cache.json"
MARKER_FORMAT = "mkosi-initrd-package-cache/1"
# The directories the cache keeps besides its <algorithm>/ trees.
OWN_DIRS = ("tmp", "locks", "resolved")
# What temp_path() names its files, ".<hint>.<8 characters>.part" (a number now; earlier versions
# made them with mkstemp, straight into tmp/).
TEMP_NAME_RE = re.compile(r"^\..*\.[A-Za-z0-9_]{8}\.part$")
# Waiting for another staging's lock: first poll soon (the usual holder is a small package), then
# back off; an interrupt is seen at once all the same, as stop.wait() wakes when stop is set.
LOCK_POLL_FIRST = 0.01
LOCK_POLL_MAX = 0.5
# How far in the past a verified entry's mtime lies when its identity is recorded: a write within
# the file system's timestamp granularity (a clock tick, a few milliseconds) of the recording could
# otherwise leave the mtime as it was.
SETTLE_NS = 2_000_000_000


# Where the facts of an entry whose inode the cache made itself are kept: no file of their own to
# create (creating a file was the costliest step of a cold staging's per-package work here, more than
# writing the package). A directory source's file linked in, a file system without user xattrs and
# record() use <checksum>.json instead, which lookup() reads first: the cache never trusts an
# attribute on a file it did not make (a source's file may carry anything).
FACTS_XATTR = "user.mkosi-initrd.facts"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""  # no /proc: then no identity is recorded or trusted


def identity(st: os.stat_result) -> Optional[list[Any]]:
    """What a cache entry's trust rests on: the same inode, size and modification time as when its
    bytes were verified, in the same boot (nothing is fsynced: after a crash, a file may hold other
    bytes than its size says); None where the boot cannot be told (ARCHITECTURE.md, "Why this shape")."""
    boot = _boot_id()
    return [boot, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns] if boot else None


def checksum_algorithm(checksum_type: str) -> str:
    """hashlib's name for a repodata checksum type; StagingError for one the builder does not verify."""
    try:
        return hash_algorithm(checksum_type)
    except ValueError as e:
        raise StagingError(f"{e} in the repository metadata") from None


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    path: Path
    facts: dict[str, Any]  # nevra, payloadhash, sha256, size: what verification established; stat: identity()
    inode: tuple[int, int]  # (st_dev, st_ino) when it was looked up: discard() removes only that file

    def verified_as(self, st: os.stat_result) -> bool:
        """Whether a file with the stat `st` (the entry, or a hard link to it) is still what was
        verified: its identity is the one recorded then."""
        recorded = self.facts.get("stat")
        return recorded is not None and recorded == identity(st) and isinstance(self.facts.get("sha256"), str)


def _set_attribute(path: Path, mode: int, data: str) -> bool:
    """Set FACTS_XATTR on a file of the cache's own; False where the file system takes no user
    attributes. Setting one needs write permission, which a read-only file's owner lacks: the mode is
    lifted for the call (the file is still in the staging's own directories)."""
    try:
        os.setxattr(path, FACTS_XATTR, data.encode())
        return True  # root, or a writable file: no mode to lift
    except PermissionError:
        pass
    except OSError:
        return False
    writable = mode | stat.S_IWUSR
    try:
        if writable != mode:
            os.chmod(path, stat.S_IMODE(writable))
        os.setxattr(path, FACTS_XATTR, data.encode())
        return True
    except OSError:
        return False
    finally:
        if writable != mode:
            os.chmod(path, stat.S_IMODE(mode))


class PackageCache:
    def __init__(self, root: Path) -> None:
        self.root = normalized_absolute(root)
        self._claim()
        for sub in OWN_DIRS:
            self._own_dir(self.root / sub)
        self._remove_stale_temps()
        # This staging's directory under tmp/, made at its first download; closed by close().
        self._run: Optional[contextlib.ExitStack] = None
        self._run_dir: Optional[Path] = None
        self._run_guard = threading.Lock()
        self._temps = 0
        # The <algorithm>/ directories add() has made sure of.
        self._made: set[Path] = set()

    def _claim(self) -> None:
        """Make sure the root is this cache: marked, or new or empty and marked now."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except NotADirectoryError:
            raise CacheError(self.root, "not a directory") from None
        except FileExistsError:
            raise CacheError(self.root, "exists and is not a directory") from None
        except OSError as e:
            raise CacheError(self.root, f"cannot create or open it: {e.strerror}") from None
        try:
            # Another staging may be creating the same cache: whoever holds the lock decides.
            fcntl.flock(fd, fcntl.LOCK_EX)
            marker = self.root / MARKER
            if os.path.lexists(marker):
                self._check_marker(marker)
                return
            if os.listdir(fd):
                raise CacheError(self.root, f"not empty and holds no {MARKER}, so it is no cache made by "
                                            "mkosi-initrd-build; refusing to write or remove anything in it "
                                            "(name a new or empty directory)")
            atomic_write(marker, json.dumps({"format": MARKER_FORMAT}) + "\n")
        except OSError as e:
            raise CacheError(self.root, f"cannot read or mark it: {e.strerror}") from None
        finally:
            os.close(fd)

    def _check_marker(self, marker: Path) -> None:
        try:
            if not stat.S_ISREG(marker.lstat().st_mode):
                raise ValueError("not a regular file")
            found = json.loads(marker.read_text()).get("format")
        except (OSError, ValueError, AttributeError) as e:
            raise CacheError(self.root, f"{MARKER} is unreadable ({e}); refusing to use the directory") from None
        if found != MARKER_FORMAT:
            raise CacheError(self.root, f"{MARKER} says {found!r}, this builder writes {MARKER_FORMAT!r}")

    def _own_dir(self, path: Path) -> None:
        """A directory of the cache's layout; never a link that would lead the cache elsewhere."""
        try:
            path.mkdir(exist_ok=True)
            mode = path.lstat().st_mode
        except OSError as e:
            raise CacheError(self.root, f"cannot create {path.name}/: {e.strerror}") from None
        if not stat.S_ISDIR(mode):
            raise CacheError(self.root, f"{path.name} is not a directory (a link or a file); the cache's own "
                                        "directories are never links")

    def _remove_stale_temps(self) -> None:
        remove_abandoned(self.root / "tmp", RUN_PREFIX)
        now = time.time()
        for p in (self.root / "tmp").iterdir():
            if not TEMP_NAME_RE.match(p.name):
                continue
            with contextlib.suppress(OSError):
                st = p.lstat()
                if stat.S_ISREG(st.st_mode) and now - st.st_mtime > STALE_TEMP_SECONDS:
                    p.unlink()

    def _paths(self, checksum_type: str, checksum: str, *, legacy: bool = False) -> tuple[Path, Path]:
        """The entry's file and facts file; `legacy`: where versions before the flat layout put them
        (a directory per two hex digits: creating those was a tenth of a cold staging's fetching)."""
        algo = checksum_algorithm(checksum_type)
        digest = checksum.strip().lower()
        if not HEX_RE.match(digest):
            # It becomes a file name: anything but hex could name a path elsewhere.
            raise StagingError(f"checksum {checksum!r} in the repository metadata is not hexadecimal")
        d = self.root / algo / digest[:2] if legacy else self.root / algo
        return d / f"{digest}.rpm", d / f"{digest}.json"

    def lookup(self, checksum_type: str, checksum: str, size: int) -> Optional[CacheEntry]:
        for legacy in (False, True):
            rpm, facts_file = self._paths(checksum_type, checksum, legacy=legacy)
            try:
                st = rpm.stat()
                break
            except OSError:
                pass
        else:
            return None
        facts = self._read_facts(rpm, facts_file)
        if not isinstance(facts, dict) or (size and st.st_size != size) or facts.get("size") != st.st_size:
            return None
        return CacheEntry(rpm, facts, (st.st_dev, st.st_ino))

    @staticmethod
    def _read_facts(rpm: Path, facts_file: Path) -> Any:
        """The entry's facts: its .json, else the attribute add() set; None when neither parses."""
        try:
            return json.loads(facts_file.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            return None
        try:
            return json.loads(os.getxattr(rpm, FACTS_XATTR))
        except (OSError, ValueError):
            return None

    @contextlib.contextmanager
    def lock(self, checksum: str, *, stop: threading.Event, timeout: float) -> Iterator[None]:
        """Exclusive lock on the stripe of `checksum`; flock locks belong to the open file, so
        threads of one process exclude each other too.

        A blocking flock() in a worker thread would outlive an interrupt of the staging (signals reach
        only the main thread), so the wait polls: it ends when `stop` is set (Interrupted) or after
        `timeout` seconds (CacheError naming the entry), whatever the other holder does."""
        stripe = self.root / "locks" / checksum.strip().lower()[:2]
        fd = os.open(stripe, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            delay = LOCK_POLL_FIRST
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CacheError(self.root, f"waited {timeout:g}s for another staging to finish the entry "
                                                f"{checksum} (lock {stripe}); giving up")
                if stop.wait(min(delay, left)):
                    raise Interrupted(str(stripe))
                delay = min(delay * 2, LOCK_POLL_MAX)
            yield
        finally:
            os.close(fd)

    def temp_path(self, hint: str) -> Path:
        """A name for a partial download, unique in this staging's own directory under tmp/; the file
        is not created (the fetch creates it): creating a file costs more than anything else a cached
        package's path takes, so each is created once."""
        with self._run_guard:
            if self._run_dir is None:
                self._run = contextlib.ExitStack()
                self._run_dir = self._run.enter_context(owned_work_dir(self.root / "tmp", RUN_PREFIX))
            self._temps += 1
            return self._run_dir / f".{hint[:40]}.{self._temps:08d}.part"

    def close(self) -> None:
        """Remove this staging's directory under tmp/ (what a kill leaves there the next staging removes)."""
        with self._run_guard:
            if self._run is not None:
                self._run.close()
            self._run = self._run_dir = None

    def add(self, temp: Path, checksum_type: str, checksum: str, facts: dict[str, Any], *,
            own_inode: bool) -> CacheEntry:
        """Move a verified file into the cache (call with the stripe lock held), its identity recorded.
        `own_inode`: the file is the staging's own (fetched or copied), not a hard link to a source's
        file, so its mtime may be set back."""
        rpm, facts_file = self._paths(checksum_type, checksum)
        if rpm.parent not in self._made:
            rpm.parent.mkdir(exist_ok=True)  # once per algorithm and staging
            self._made.add(rpm.parent)
        if own_inode:
            now = time.time_ns()
            os.utime(temp, ns=(now, now - SETTLE_NS))
        # The one stat: the inode keeps it through the rename below (st_ctime aside, which identity()
        # leaves out).
        st = os.stat(temp)
        facts = self._with_identity(facts, st)
        # No fsync: an entry a crash left empty or torn fails the check every staging makes of what it
        # takes from the cache (or its facts do not parse and it counts as absent), and is fetched
        # again. An fsync per entry was a third of a cold staging's time.
        data = json.dumps(facts, sort_keys=True) + "\n"
        if own_inode and _set_attribute(temp, st.st_mode, data):
            facts_file.unlink(missing_ok=True)  # one left by an entry discarded before would be read first
        else:
            atomic_write(facts_file, data, durable=False)
        os.replace(temp, rpm)
        return CacheEntry(rpm, facts, (st.st_dev, st.st_ino))

    @staticmethod
    def _with_identity(facts: dict[str, Any], st: os.stat_result) -> dict[str, Any]:
        facts = {k: v for k, v in facts.items() if k != "stat"}
        if st.st_mtime_ns <= time.time_ns() - SETTLE_NS and (recorded := identity(st)) is not None:
            facts["stat"] = recorded
        return facts

    def record(self, entry: CacheEntry, st: os.stat_result, *, stop: threading.Event, timeout: float) -> None:
        """Record the identity `st` of an entry whose bytes were just verified in full (an entry of an
        earlier version, copied or restored, or a directory source's file whose mtime was recent), so
        the next staging need not hash it again; nothing when the entry was replaced meanwhile. Into
        its .json: the file may be linked into staged repositories, whose mode is left alone."""
        with self.lock(entry.path.name.removesuffix(".rpm"), stop=stop, timeout=timeout):
            try:
                now = entry.path.stat()
            except FileNotFoundError:
                return
            if identity(now) != identity(st):
                return
            facts = self._with_identity(entry.facts, st)
            if "stat" in facts:
                atomic_write(entry.path.with_suffix(".json"), json.dumps(facts, sort_keys=True) + "\n",
                             durable=False)

    def resolution(self, key: str) -> Optional[Any]:
        """What resolved/<key>.json holds (a depsolve's answer, see staging/resolve.py), None when absent
        or unreadable."""
        try:
            return json.loads((self.root / "resolved" / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def keep_resolution(self, key: str, value: Any) -> None:
        """Write resolved/<key>.json whole or not at all; not fsynced (a torn one does not parse)."""
        atomic_write(self.root / "resolved" / f"{key}.json", json.dumps(value, sort_keys=True) + "\n",
                     durable=False)

    def discard(self, entry: CacheEntry, *, stop: threading.Event, timeout: float) -> None:
        """Remove a damaged entry, unless another staging has replaced it meanwhile (takes the stripe lock)."""
        with self.lock(entry.path.name.removesuffix(".rpm"), stop=stop, timeout=timeout):
            try:
                st = entry.path.stat()
            except FileNotFoundError:
                return
            if (st.st_dev, st.st_ino) != entry.inode:
                return
            entry.path.unlink()
            entry.path.with_suffix(".json").unlink(missing_ok=True)
