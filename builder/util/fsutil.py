"""File-system helpers: temp-then-rename writes, directory swaps, hashing, linking or copying, path
containment."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import fnmatch
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Optional

from mkosi_initrd_builder.util.errors import CommandError, LocalWriteError

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int), a copy-on-write clone of a whole file
CHUNK = 1 << 20


# yum's old name for sha1 in repodata; everything else is hashlib's name already.
CHECKSUM_TYPE_ALIASES = {"sha": "sha1"}
HASH_ALGORITHMS = frozenset({"md5", "sha1", "sha224", "sha256", "sha384", "sha512"})


def hash_algorithm(checksum_type: str) -> str:
    """hashlib's name for a repodata checksum type; ValueError for one this builder does not verify."""
    algo = CHECKSUM_TYPE_ALIASES.get(checksum_type.lower(), checksum_type.lower())
    if algo not in HASH_ALGORITHMS:
        raise ValueError(f"unsupported checksum type {checksum_type!r}")
    return algo


class Digests:
    """Several hashes of one stream, fed chunk by chunk: every file this builder hashes goes through
    here (downloads, copies, files on disk, bytes in memory)."""

    def __init__(self, algorithms: Iterable[str]) -> None:
        self._hashers = {a: hashlib.new(a) for a in algorithms}

    def update(self, chunk: bytes | memoryview) -> None:
        for h in self._hashers.values():
            h.update(chunk)

    def hexdigests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in self._hashers.items()}


def hash_file(path: Path, algorithms: Iterable[str]) -> dict[str, str]:
    """hashlib name -> hex digest of the file, in one pass."""
    digests = Digests(algorithms)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digests.update(chunk)
    return digests.hexdigests()


def sha256_file(path: Path) -> str:
    return hash_file(path, ("sha256",))["sha256"]


def hash_bytes(data: bytes, algorithm: str = "sha256") -> str:
    digests = Digests((algorithm,))
    digests.update(data)
    return digests.hexdigests()[algorithm]


def matches_checksum(data: bytes, checksum_type: str, expected: str) -> bool:
    """Whether `data` has the repodata checksum `expected` (False for an unknown checksum type)."""
    try:
        algo = hash_algorithm(checksum_type)
    except ValueError:
        return False
    return hash_bytes(data, algo) == expected.strip().lower()


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
            digests = Digests(algorithms)
            size = 0
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            while n := fin.readinto(buffer):
                digests.update(view[:n])
                fout.write(view[:n])
                size += n
            return size, digests.hexdigests(), False
    return dst.stat().st_size, hash_file(dst, algorithms), True


# What os.link() says when this file system, or this file, takes no (further) hard link: another
# file system, too many links, links not supported, or fs.protected_hardlinks refusing a file the
# caller does not own.
LINK_REFUSED = frozenset({errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EOPNOTSUPP, errno.EACCES})


def link_or_private_copy(src: Path, dst: Path, algorithms: Iterable[str]) -> Optional[tuple[int, dict[str, str]]]:
    """Hard-link `src` to `dst` (it must not exist); where the file system refuses the link, make a
    private copy instead (private_copy) and return its size and the digests of what it holds. None
    when it was linked: the caller hashes the linked bytes itself, if it needs them."""
    try:
        os.link(src, dst)
        return None
    except OSError as e:
        if e.errno not in LINK_REFUSED:
            raise
    size, digests, _ = private_copy(src, dst, algorithms)
    return size, digests


def link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link `src` to `dst` where the file system allows it, else copy it (with its times);
    True when it was linked."""
    try:
        os.link(src, dst)
        return True
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copy2(src, dst)
        return False


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write to a temporary name in the same directory, then rename over `path`. durable=False skips
    the fsync, for files whose loss in a crash is noticed and repaired (the package cache's)."""
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(new: Path, final: Path, *, old: Optional[Path] = None) -> None:
    """Move the finished directory `new` to `final`, replacing what was there, never leaving a mix.
    What was there is parked at `old` (default: a sibling named after the pid) until `new` is in place."""
    parked = None
    if final.exists():
        parked = old or final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, parked)
    try:
        os.rename(new, final)
    except BaseException:
        if parked is not None:
            os.rename(parked, final)
        raise
    if parked is not None:
        shutil.rmtree(parked, ignore_errors=True)


def normalized_absolute(path: str | os.PathLike[str]) -> Path:
    """`path` made absolute with '.', '..' and repeated slashes folded lexically. POSIX lets '//' name
    something else than '/', and os.path.normpath keeps it; nothing here means that."""
    text = os.path.normpath(os.path.abspath(path))
    return Path("/" + text.lstrip("/"))


def is_within(path: PurePosixPath | Path, root: PurePosixPath | Path) -> bool:
    """True when `path` is `root` or below it, comparing whole path components (never string prefixes)."""
    p, r = Path(os.path.normpath(path)).parts, Path(os.path.normpath(root)).parts
    return p[: len(r)] == r


_TRANSLATED = re.compile(r"\(\?s:(.*)\)\\[Zz]", re.DOTALL)


def _component_regex(component: str) -> str:
    """One glob component as a regex that never matches '/': '*' and '?' as fnmatch reads them, and
    '[...]' as fnmatch.translate() reads it (ranges, '!'), kept from matching a separator."""
    out, i, n = [], 0, len(component)
    while i < n:
        c = component[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + (i < n and component[i] == "!")
            j += j < n and component[j] == "]"
            while j < n and component[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))     # no closing bracket: a literal '[', as fnmatch has it
                continue
            # translate() wraps the class as '(?s:...)' and an end anchor ('\Z', '\z' from Python 3.14)
            translated = _TRANSLATED.fullmatch(fnmatch.translate(component[i - 1:j + 1]))
            assert translated, component
            out.append("(?!/)" + translated.group(1))
            i = j + 1
        else:
            out.append(re.escape(c))
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class RemoveGlobs:
    """mkosi's RemoveFiles= globs, read as Path.glob() reads them at the image root: a name is removed
    when it or one of its parent directories matches, component by component; '*', '?' and '[...]'
    stay within a component and '**' stands for any number of them. Compiled once into one regex over
    the name with a '/' after every component, so checking a whole image is one match per entry."""

    patterns: tuple[str, ...]
    regexes: tuple[re.Pattern[str], ...]
    any_of: re.Pattern[str]

    @classmethod
    def compile(cls, patterns: Iterable[str]) -> "RemoveGlobs":
        patterns = tuple(patterns)
        regexes = []
        for pattern in patterns:
            parts = [c for c in pattern.strip("/").split("/") if c]
            regexes.append("".join("(?:[^/]+/)*" if c == "**" else _component_regex(c) + "/" for c in parts))
        return cls(patterns, tuple(re.compile(r) for r in regexes),
                   re.compile("|".join(f"(?:{r})" for r in regexes) or "(?!)"))

    def removing(self, name: str) -> list[str]:
        """The patterns that take away `name` (relative, '/'-separated)."""
        text = "".join(c + "/" for c in name.split("/") if c)
        if not self.any_of.match(text):
            return []
        return [p for p, r in zip(self.patterns, self.regexes) if r.match(text)]


def link_or_copy_tree(src: Path, dest: Path) -> None:
    """Copy a tree, hard-linking files where the file system allows it."""
    shutil.copytree(src, dest, symlinks=True, copy_function=lambda s, d: link_or_copy(Path(s), Path(d)))


# Errors that say the local file system will not take a write; the same call elsewhere would work.
WRITE_REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM})
# Of those, the ones that can only come from the written side (EACCES may be a read of the source).
WRITE_ONLY = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def local_write_error(e: OSError, places: Iterable[tuple[str, Path]]) -> Optional[LocalWriteError]:
    """The LocalWriteError `e` amounts to, naming the first of `places` (role, directory) that holds
    the file it failed on (the copy's target first); None when `e` is no refused write."""
    if e.errno not in WRITE_REFUSED:
        return None
    reason = e.strerror or os.strerror(e.errno)
    files = [Path(os.path.abspath(f)) for f in (e.filename2, e.filename) if isinstance(f, (str, os.PathLike))]
    for role, where in places:
        for f in files:
            if is_within(f, where) or _is_sibling_temp(f, where):
                return LocalWriteError(role, where, reason)
    if e.errno in WRITE_ONLY and files:
        return LocalWriteError("directory", files[0].parent, reason)
    if e.errno in WRITE_ONLY and (place := _likely_place(e.errno, places)) is not None:
        return LocalWriteError(*place, reason)  # a write error naming no file (a copy's inner write)
    return None


def refused_write_of_command(e: CommandError, places: Iterable[tuple[str, Path]]) -> Optional[LocalWriteError]:
    """The LocalWriteError behind a failed external command (cpio, mkosi, ukify) whose output says
    the file system refused a write."""
    text = "\n".join([*e.errors, e.output_tail])
    said = [code for code in sorted(WRITE_ONLY) if os.strerror(code) in text]
    if not said:
        return None
    code = errno.EROFS if errno.EROFS in said else said[0]
    if (place := _likely_place(code, places)) is None:
        return None
    return LocalWriteError(*place, os.strerror(code), detail=f"{Path(e.argv[0]).name} failed")


def _likely_place(code: int, places: Iterable[tuple[str, Path]]) -> Optional[tuple[str, Path]]:
    """Which of `places` (role, directory) refused a write that names no file (a tool's message, or
    an OSError without a file name), found by looking: the read-only one for EROFS; otherwise the one
    with the least space left (what the failed write made is removed by then, so "full" cannot be
    seen, but the small file system it filled still stands out)."""
    found: list[tuple[int, str, Path, bool]] = []
    for role, where in places:
        probe = next((p for p in (where, *where.parents) if p.exists()), None)
        if probe is not None:
            st = os.statvfs(probe)
            found.append((st.f_bavail * st.f_frsize, role, where, bool(st.f_flag & os.ST_RDONLY)))
    candidates = [f for f in found if f[3]] if code == errno.EROFS else sorted(found, key=lambda f: f[0])
    return (candidates[0][1], candidates[0][2]) if candidates else None


def _is_sibling_temp(path: Path, final: Path) -> bool:
    """`path` is in or is a temporary sibling of `final` (".<name>.staging-...", ".<name>.old-...")."""
    if not is_within(path, final.parent) or path == final.parent:
        return False
    return path.relative_to(final.parent).parts[0].startswith(f".{final.name}.")
