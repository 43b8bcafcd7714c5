"""A content-addressed cache of verified RPMs, shared by every staging on a host (kojid's builds
included), so a rebuild fetches nothing.

Layout under the cache root: ``<algorithm>/<xx>/<checksum>.rpm`` (keyed by the repository's
checksum of the file) next to ``<checksum>.json`` (the header facts seen when the file was
verified), ``tmp/`` for files being fetched, ``locks/<xx>`` for flock(2) stripes. A ``.rpm`` is
renamed into place only after it was verified and its ``.json`` written, so every entry present is
complete; the stripe lock makes concurrent stagings fetch each file once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from .errors import StagingError
from .fsutil import atomic_write

ALGORITHMS = frozenset({"md5", "sha1", "sha224", "sha256", "sha384", "sha512"})
HEX_RE = re.compile(r"^[0-9a-f]{32,128}$")
# Partial downloads of stagings that were killed outright; a live download is never this old.
STALE_TEMP_SECONDS = 24 * 3600


def hash_algorithm(checksum_type: str) -> str:
    """hashlib's name for a repodata checksum type ('sha' is yum's old spelling of sha1)."""
    algo = "sha1" if checksum_type == "sha" else checksum_type.lower()
    if algo not in ALGORITHMS:
        raise StagingError(f"unsupported checksum type {checksum_type!r} in the repository metadata")
    return algo


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    path: Path
    facts: dict[str, Any]  # nevra, payloadhash, sha256, size: what verification established


class PackageCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        try:
            for sub in ("tmp", "locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StagingError(f"cache {self.root}: cannot create it: {e.strerror}") from None
        self._remove_stale_temps()

    def _remove_stale_temps(self) -> None:
        now = time.time()
        for p in (self.root / "tmp").iterdir():
            with contextlib.suppress(OSError):
                if now - p.lstat().st_mtime > STALE_TEMP_SECONDS:
                    p.unlink()

    def _paths(self, checksum_type: str, checksum: str) -> tuple[Path, Path]:
        algo = hash_algorithm(checksum_type)
        digest = checksum.strip().lower()
        if not HEX_RE.match(digest):
            # It becomes a file name: anything but hex could name a path elsewhere.
            raise StagingError(f"checksum {checksum!r} in the repository metadata is not hexadecimal")
        d = self.root / algo / digest[:2]
        return d / f"{digest}.rpm", d / f"{digest}.json"

    def lookup(self, checksum_type: str, checksum: str, size: int) -> Optional[CacheEntry]:
        rpm, facts_file = self._paths(checksum_type, checksum)
        try:
            st = rpm.stat()
            facts = json.loads(facts_file.read_text())
        except (OSError, ValueError):
            return None
        if (size and st.st_size != size) or facts.get("size") != st.st_size:
            return None
        return CacheEntry(rpm, facts)

    @contextlib.contextmanager
    def lock(self, checksum: str) -> Iterator[None]:
        """Exclusive lock on the stripe of `checksum`; flock locks belong to the open file, so
        threads of one process exclude each other too."""
        stripe = self.root / "locks" / checksum.strip().lower()[:2]
        fd = os.open(stripe, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def temp_path(self, hint: str) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{hint[:40]}.", suffix=".part", dir=self.root / "tmp")
        os.close(fd)
        return Path(name)

    def add(self, temp: Path, checksum_type: str, checksum: str, facts: dict[str, Any]) -> CacheEntry:
        """Move a verified file into the cache (call with the stripe lock held)."""
        rpm, facts_file = self._paths(checksum_type, checksum)
        rpm.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(facts_file, json.dumps(facts, sort_keys=True) + "\n")
        os.replace(temp, rpm)
        return CacheEntry(rpm, facts)
