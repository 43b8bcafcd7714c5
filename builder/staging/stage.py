"""Stage an offline repository: exactly the RPMs a build needs, fetched from a source repository
(a directory or URL, a koji repo included), each verified against the repository's checksum and its
own header, with fresh repodata and a stage-manifest.json saying what came from where. Each file's
bytes are read at most once: hashed as they arrive (or, from the cache, once they are linked into
place, unless the entry is unchanged since it was verified: cache.py); its header, read with rpm's
bindings, gives both the checks and the repodata.

The kojid plugin and `mkosi-initrd-build stage` both call stage_repository().
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import rpm

from mkosi_initrd_builder import __version__
from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.rpmmeta.repo import RepoPackage
from mkosi_initrd_builder.rpmmeta.repodata import package_from_header, write_repodata
from mkosi_initrd_builder.staging.cache import CacheEntry, PackageCache, checksum_algorithm
from mkosi_initrd_builder.staging.download import HttpClient, Interrupted, RetryPolicy
from mkosi_initrd_builder.staging.resolve import PinnedPackage, cached_depsolve, installed_packages, spec_buildrequires
from mkosi_initrd_builder.staging.sources import Source, SourceMetadata, Via, parse_source
from mkosi_initrd_builder.staging.sources.base import Fetched, PackageLocation
from mkosi_initrd_builder.util.errors import ResolveError, SettingError, StagingError, VerificationError
from mkosi_initrd_builder.util.fsutil import (
    atomic_write, hash_file, link_or_private_copy, local_write_error, replace_dir,
)
from mkosi_initrd_builder.util.log import Stopwatch, step
from mkosi_initrd_builder.util.workdirs import destination_lock, owned_work_dir, remove_abandoned

__all__ = ["STAGE_MANIFEST_NAME", "PackageSelection", "StageRequest", "StageResult", "StagedPackage", "Via",
           "stage_repository"]

logger = logging.getLogger("mkosi_initrd_builder.staging.stage")

# The staging's own manifest (the contract with the spec and koji's logs), not the image manifest
# building/manifest.py writes.
STAGE_MANIFEST_NAME = "stage-manifest.json"
STAGE_MANIFEST_FORMAT = "mkosi-initrd-stage/1"
RPM_LEAD_MAGIC = b"\xed\xab\xee\xdb"
# The staging's private work directory (metadata, dnf's solver cache) under the temporary directory.
WORK_PREFIX = "mkosi-initrd-stage-"


class SelectionMode(str, enum.Enum):
    packages = "packages"              # names or provides, resolved by dnf
    spec = "spec"                      # a spec's BuildRequires, resolved by dnf
    installed_root = "installed-root"  # what a root's rpm database lists, exactly
    pinned = "pinned"                  # an exact list handed over (the kojid plugin: kojid's buildroot listing)


@dataclasses.dataclass(frozen=True)
class PackageSelection:
    """What to stage; exactly one field is set."""

    packages: tuple[str, ...] = ()
    spec: Optional[Path] = None
    spec_defines: tuple[tuple[str, str], ...] = ()
    installed_root: Optional[Path] = None
    pinned: tuple[PinnedPackage, ...] = ()

    @property
    def mode(self) -> SelectionMode:
        given = {
            SelectionMode.packages: bool(self.packages),
            SelectionMode.spec: self.spec is not None,
            SelectionMode.installed_root: self.installed_root is not None,
            SelectionMode.pinned: bool(self.pinned),
        }
        chosen = [mode for mode, on in given.items() if on]
        if len(chosen) != 1:
            raise SettingError("selection", "give exactly one" + (f" (got {', '.join(m.value for m in chosen)})"
                                                                    if chosen else ""),
                               spelling=", ".join(m.value for m in SelectionMode))
        return chosen[0]

    def describe(self) -> dict[str, Any]:
        mode = self.mode
        requested: list[str]
        if mode is SelectionMode.packages:
            requested = list(self.packages)
        elif mode is SelectionMode.spec:
            requested = [str(self.spec)]
        elif mode is SelectionMode.installed_root:
            requested = [str(self.installed_root)]
        else:
            requested = [str(p.nevra) for p in self.pinned]
        return {"mode": mode.value, "requested": requested}


@dataclasses.dataclass(frozen=True)
class StageRequest:
    source: str                         # directory, file://, http:// or https:// URL of a dnf repository
    dest: Path                          # becomes: *.rpm, repodata/, stage-manifest.json
    selection: PackageSelection
    cache_dir: Optional[Path] = None    # content-addressed cache shared between stagings
    jobs: int = 4                       # parallel fetches
    max_bytes: Optional[int] = None     # refuse to stage more than this
    retry: RetryPolicy = RetryPolicy()


@dataclasses.dataclass(frozen=True)
class StagedPackage:
    nevra: NEVRA
    file: str            # name in the staged repository
    size: int
    sha256: str
    checksum: str        # the source repository's, "<type>:<hex>"
    payloadhash: str     # header SIGMD5, hex (koji's payloadhash)
    origin: str          # URL or path it was fetched from
    via: Via

    def to_dict(self) -> dict[str, Any]:
        """Its entry in the stage manifest (the NEVRA also spelled out field by field)."""
        n = self.nevra
        return {"nevra": str(n), "name": n.name, "epoch": n.epoch, "version": n.version, "release": n.release,
                "arch": n.arch, "file": self.file, "size": self.size, "sha256": self.sha256, "checksum": self.checksum,
                "payloadhash": self.payloadhash, "origin": self.origin, "via": self.via.value}


@dataclasses.dataclass(frozen=True)
class StageResult:
    dest: Path
    manifest: Path
    source: dict[str, Any]
    packages: tuple[StagedPackage, ...]
    bytes_fetched: int
    bytes_from_cache: int
    seconds: float
    # Where the time went, in order: "metadata" (read and checked), "select" (the package list:
    # dnf's depsolve, a kept answer, or the exact list looked up), "fetch" (every file fetched or
    # taken from the cache, verified and placed), "repodata"; seconds each.
    phases: tuple[tuple[str, float], ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(p.size for p in self.packages)

    def summary(self) -> str:
        return (f"staged {len(self.packages)} packages ({self.total_bytes:,} bytes) into {self.dest}: "
                f"{self.bytes_fetched:,} bytes fetched, {self.bytes_from_cache:,} bytes from cache, "
                f"{self.seconds:.1f}s")


@dataclasses.dataclass(frozen=True)
class _Job:
    package: RepoPackage
    location: PackageLocation
    expected_payloadhashes: tuple[tuple[str, str], ...]  # (who says so, hex)

    @property
    def origin(self) -> str:
        return self.location.origin


@dataclasses.dataclass(frozen=True)
class HeaderFacts:
    """What a package file's own header says it is."""

    nevra: NEVRA
    payloadhash: str  # SIGMD5, hex
    lead_and_header: bytes = dataclasses.field(repr=False)  # the file up to its payload: what repodata is made from


# Reading a header needs neither the signature nor the digests checked here: the file's checksum was
# compared with the repository's before, and signatures are the repository owner's concern.
_HEADER_VSFLAGS = rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS
_header_readers = threading.local()


def read_header(path: Path, package: NEVRA, origin: str) -> HeaderFacts:
    """NEVRA and payload hash from the file's own header, read by rpm's bindings (one transaction
    set per thread: rpm's objects are not shared between threads), and the bytes up to the payload."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.pread(fd, len(RPM_LEAD_MAGIC), 0) != RPM_LEAD_MAGIC:
            raise VerificationError(str(package), origin, "not an RPM file (no RPM lead)")
        ts = getattr(_header_readers, "ts", None)
        if ts is None:
            ts = _header_readers.ts = rpm.TransactionSet("/", _HEADER_VSFLAGS)
        try:
            header = ts.hdrFromFdno(fd)
        except rpm.error as e:
            raise VerificationError(str(package), origin, f"rpm cannot read its header: {e}") from None
        # rpm reads the descriptor itself, unbuffered: it is left where the payload starts.
        lead_and_header = os.pread(fd, os.lseek(fd, 0, os.SEEK_CUR), 0)
    finally:
        os.close(fd)
    sigmd5 = header[rpm.RPMTAG_SIGMD5]
    return HeaderFacts(NEVRA.from_header(header), sigmd5.hex() if sigmd5 else "", lead_and_header)


class _Stager:
    """One staging run: fetches, verifies and places the files of the chosen packages."""

    def __init__(self, request: StageRequest, metadata: SourceMetadata, http: HttpClient,
                 cache: Optional[PackageCache]) -> None:
        self.request = request
        self.metadata = metadata
        self.http = http
        self.cache = cache
        # file name -> its createrepo_c package, made from the header each file was verified with
        self.repodata: dict[str, Any] = {}

    def _obtain(self, job: _Job, target: Path, algorithms: Sequence[str]) -> Fetched:
        return self.metadata.source.fetch(job.location, target, algorithms, self.http, job.package)

    def _verify(self, job: _Job, path: Path, size: int, digests: dict[str, str]) -> tuple[dict[str, Any], HeaderFacts]:
        """Check a fetched file against the repository and its own header; returns the facts established
        (what the cache records) and the header."""
        pkg = job.package
        algo = checksum_algorithm(pkg.checksum_type)
        if pkg.size and size != pkg.size:
            raise VerificationError(str(pkg.nevra), job.origin, f"{size} bytes, the repository says {pkg.size}")
        if digests[algo] != pkg.checksum.strip().lower():
            raise VerificationError(str(pkg.nevra), job.origin, f"{algo} is {digests[algo]}, the repository says "
                                                                f"{pkg.checksum}")
        header = read_header(path, pkg.nevra, job.origin)
        if header.nevra != pkg.nevra:
            raise VerificationError(str(pkg.nevra), job.origin, f"its header says it is {header.nevra}")
        return {"nevra": str(header.nevra), "payloadhash": header.payloadhash, "sha256": digests["sha256"],
                "size": size}, header

    def _check_payloadhash(self, job: _Job, payloadhash: str) -> None:
        for who, expected in job.expected_payloadhashes:
            if payloadhash != expected:
                raise VerificationError(str(job.package.nevra), job.origin,
                                        f"payload hash {payloadhash} does not match {expected} from {who}")

    def stage_one(self, job: _Job, out_dir: Path) -> StagedPackage:
        pkg = job.package
        algorithms = sorted({checksum_algorithm(pkg.checksum_type), "sha256"})
        dest = out_dir / job.location.name
        if self.cache is None:
            part = out_dir / f".{job.location.name}.part"
            try:
                got = self._obtain(job, part, algorithms)
                facts, header = self._verify(job, part, got.size, got.digests)
                self._check_payloadhash(job, facts["payloadhash"])
                os.rename(part, dest)
            finally:
                part.unlink(missing_ok=True)
            return self._staged(job, facts, header, got.via)

        # stage_all() looked in the cache a moment ago: the lookup under the lock is the one that counts
        return self._stage_from_cache(job, dest, missing=True)

    def _fill_cache(self, job: _Job, algorithms: Sequence[str],
                    dest: Path) -> tuple[CacheEntry, Via, Optional[tuple[dict[str, Any], HeaderFacts]]]:
        """The cache entry of the job's package, fetched and verified now unless another staging put it
        there while this one waited for the lock. A file fetched now is also placed at `dest` (linked,
        or copied and checked on the way; only once verified, so the staged name never holds other
        bytes) before it enters the cache, and its facts and header come back with it: its bytes were
        hashed as they arrived and are not read again."""
        pkg = job.package
        assert self.cache is not None
        with self.cache.lock(pkg.checksum, stop=self.http.stop, timeout=self.request.retry.lock_timeout):
            entry = self.cache.lookup(pkg.checksum_type, pkg.checksum, pkg.size)
            if entry is not None:
                return entry, Via.cache, None
            temp = self.cache.temp_path(job.location.name)
            added = False
            try:
                got = self._obtain(job, temp, algorithms)
                facts, header = self._verify(job, temp, got.size, got.digests)
                self._check_payloadhash(job, facts["payloadhash"])
                copied = link_or_private_copy(temp, dest, algorithms)
                if copied is not None:
                    os.chmod(dest, 0o444)
                    if copied != (got.size, got.digests):
                        raise VerificationError(str(pkg.nevra), str(dest), "the copy out of the cache's temporary "
                                                                           "file differs from what was fetched")
                entry = self.cache.add(temp, pkg.checksum_type, pkg.checksum, facts, own_inode=got.via is not Via.link)
                added = True
                return entry, got.via, (facts, header)
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
            finally:
                if not added:
                    temp.unlink(missing_ok=True)

    def _stage_from_cache(self, job: _Job, dest: Path, found: Optional[CacheEntry] = None, *,
                          missing: bool = False) -> StagedPackage:
        """Stage the cache entry (`found`, or looked up now unless the caller found it `missing` just
        before), hard-linked (a private copy where the file systems differ) and checked once it is in
        place against the repository, the cache's record and its own header (a file that fails is
        removed: the staging directory is private until it is complete): byte for byte, unless the
        linked inode still has the identity recorded when its bytes were verified (cache.py), when the
        recorded digests stand and only its header is read.

        The cache is shared and long-lived, so an entry may have been damaged since it was verified:
        a bad one is discarded and the package fetched again, once. The staged file may share its
        inode with the entry, so what is staged was right when it was staged; damage done to the cache
        later reaches the repository too (ARCHITECTURE.md, "Why this shape", says who catches it)."""
        pkg = job.package
        assert self.cache is not None
        algo = checksum_algorithm(pkg.checksum_type)
        algorithms = sorted({algo, "sha256"})
        for attempt in (1, 2):
            if attempt == 1 and (found is not None or missing):
                entry = found
            else:
                entry = self.cache.lookup(pkg.checksum_type, pkg.checksum, pkg.size)
            via = Via.cache
            if entry is None:
                entry, via, fresh = self._fill_cache(job, algorithms, dest)
                if fresh is not None:
                    return self._staged(job, fresh[0], fresh[1], via)
            else:
                self._check_cached(job, entry)
            try:
                copied = link_or_private_copy(entry.path, dest, algorithms)
            except FileNotFoundError:
                if attempt == 1 and not entry.path.exists():
                    continue  # another staging discarded it meanwhile: look it up again
                raise
            placed = False
            try:
                unverified = None
                if copied is None:
                    st = os.stat(dest)
                    if entry.verified_as(st):
                        # The linked inode is the one verified, unchanged since (cache.py): its
                        # recorded digests stand, the entry's name being the repository's.
                        size, digests = st.st_size, {algo: entry.path.stem, "sha256": entry.facts.get("sha256")}
                    else:
                        size, digests, unverified = st.st_size, hash_file(dest, algorithms), st
                else:
                    size, digests = copied
                    os.chmod(dest, 0o444)
                problem = self._cache_copy_problem(job, entry, size, digests[algo], digests["sha256"])
                if problem is None:
                    header = read_header(dest, pkg.nevra, str(entry.path))
                    problem = self._cached_header_problem(job, entry, header)
                if problem is None:
                    if unverified is not None:
                        self.cache.record(entry, unverified, stop=self.http.stop,
                                          timeout=self.request.retry.lock_timeout)
                    placed = True
                    return self._staged(job, entry.facts, header, via)
            finally:
                if not placed:
                    dest.unlink(missing_ok=True)
            if attempt == 1:
                logger.warning("cache entry %s of %s is damaged (%s): discarding it and fetching the package "
                               "again", entry.path, pkg.nevra, problem)
                self.cache.discard(entry, stop=self.http.stop, timeout=self.request.retry.lock_timeout)
        raise VerificationError(str(pkg.nevra), str(entry.path), f"the cache entry is damaged again right after it "
                                                            f"was fetched anew ({problem})")

    @staticmethod
    def _cached_header_problem(job: _Job, entry: CacheEntry, header: HeaderFacts) -> Optional[str]:
        """What the header of a file from the cache says against the package and the cache's record."""
        if header.nevra != job.package.nevra:
            return f"its header says it is {header.nevra}"
        if header.payloadhash != entry.facts.get("payloadhash"):
            return (f"its header's payload hash {header.payloadhash} is not the {entry.facts.get('payloadhash')} "
                    "recorded")
        return None

    @staticmethod
    def _cache_copy_problem(job: _Job, entry: CacheEntry, size: int, digest: str, sha256: str) -> Optional[str]:
        """What is wrong with the bytes copied out of a cache entry, or None."""
        pkg = job.package
        if pkg.size and size != pkg.size:
            return f"{size} bytes, the repository says {pkg.size}"
        if digest != pkg.checksum.strip().lower():
            return f"{checksum_algorithm(pkg.checksum_type)} is {digest}, the repository says {pkg.checksum}"
        if sha256 != entry.facts.get("sha256") or size != entry.facts.get("size"):
            return "its bytes no longer match what the cache recorded when it verified them"
        return None

    def _check_cached(self, job: _Job, entry: CacheEntry) -> None:
        """A cache entry was verified when it was added; its recorded facts must still fit this package."""
        if entry.facts.get("nevra") != str(job.package.nevra):
            raise VerificationError(str(job.package.nevra), str(entry.path),
                                    f"the cache holds {entry.facts.get('nevra')} under the same checksum")
        self._check_payloadhash(job, str(entry.facts.get("payloadhash")))

    def _staged(self, job: _Job, facts: dict[str, Any], header: HeaderFacts, via: Via) -> StagedPackage:
        p = job.package
        self.repodata[job.location.name] = package_from_header(
            header.lead_and_header, href=job.location.name, size=int(facts["size"]), sha256=facts["sha256"],
            # the source's file time, not the staged file's: the same inputs give the same repodata
            file_time=p.file_time or p.buildtime, package=str(p.nevra), origin=job.origin)
        return StagedPackage(
            nevra=p.nevra, file=job.location.name, size=int(facts["size"]), sha256=facts["sha256"],
            checksum=f"{p.checksum_type}:{p.checksum}", payloadhash=facts["payloadhash"], origin=job.origin, via=via,
        )

    def stage_all(self, jobs: Sequence[_Job], out_dir: Path) -> list[StagedPackage]:
        results: list[StagedPackage] = []
        # What the cache holds is staged on this thread while the pool fetches the rest: a package from
        # the cache takes a few system calls and two header parses, all holding the GIL, so more
        # threads only hand it around (500 cached packages: 0.21 s on one thread, 0.27 s on four).
        cached: list[tuple[_Job, CacheEntry]] = []
        to_fetch: list[_Job] = []
        for job in jobs:
            entry = None if self.cache is None else \
                self.cache.lookup(job.package.checksum_type, job.package.checksum, job.package.size)
            if entry is None:
                to_fetch.append(job)
            else:
                cached.append((job, entry))
        # Largest first, so one big kernel package does not start last and finish alone.
        ordered = sorted(to_fetch, key=lambda j: -j.package.size)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.request.jobs,
                                                     thread_name_prefix="stage")
        futures = [pool.submit(self._run_job, job, out_dir) for job in ordered]
        try:
            for job, entry in cached:
                if self.http.stop.is_set():
                    raise Interrupted(job.origin)
                results.append(self._stage_from_cache(job, out_dir / job.location.name, entry))
            for future in concurrent.futures.as_completed(futures):
                results.append(future.result())
        except BaseException:
            self.http.abort()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.http.close()
        return sorted(results, key=lambda r: r.nevra)

    def _run_job(self, job: _Job, out_dir: Path) -> StagedPackage:
        if self.http.stop.is_set():
            raise Interrupted(job.origin)
        return self.stage_one(job, out_dir)


def _select(request: StageRequest, metadata: SourceMetadata, work: Path,
            cache: Optional[PackageCache]) -> tuple[list[RepoPackage], dict]:
    """The repository packages to stage and, per NEVRA, payload hashes they must have."""
    by_nevra = {p.nevra: p for p in metadata.packages}
    selection = request.selection
    mode = selection.mode
    expected: dict[NEVRA, list[tuple[str, str]]] = {}
    if mode in (SelectionMode.packages, SelectionMode.spec):
        specs = selection.packages if mode is SelectionMode.packages else \
            spec_buildrequires(selection.spec, selection.spec_defines)  # type: ignore[arg-type]
        with step(f"Resolving {', '.join(specs)} with dnf"):
            chosen = cached_depsolve(metadata.directory, specs, work / "dnf", repomd_sha256=metadata.repomd_sha256,
                                     stamp=metadata.source.metadata_stamp(metadata),
                                     cache=cache, available=by_nevra.keys())
        return [by_nevra[n] for n in chosen], expected
    pinned = selection.pinned if mode is SelectionMode.pinned else \
        installed_packages(selection.installed_root)  # type: ignore[arg-type]
    found_packages, missing = [], []
    for p in pinned:
        if (found := by_nevra.get(p.nevra)) is None:
            missing.append(str(p.nevra))
            continue
        found_packages.append(found)
        if p.payloadhash:
            who = "the buildroot's package list" if mode is SelectionMode.pinned else "the installed rpm database"
            expected.setdefault(found.nevra, []).append((who, p.payloadhash))
    if missing:
        raise ResolveError(f"{len(missing)} installed package(s) are not in the source {metadata.source}: "
                           f"{', '.join(missing)}")
    return found_packages, expected


def _jobs(packages: Sequence[RepoPackage], metadata: SourceMetadata,
          expected: dict[NEVRA, list[tuple[str, str]]]) -> list[_Job]:
    """Check every location before anything is fetched; a bad one fails the staging at once."""
    jobs, files = [], {}
    for pkg in packages:
        location = metadata.source.locate(pkg)
        if not location.name.endswith(".rpm") or location.name.startswith("."):
            location = dataclasses.replace(location, name=pkg.nevra.file_name())
        if location.name in files:
            raise StagingError(f"{files[location.name]} and {pkg.nevra} would both be staged as {location.name}")
        files[location.name] = pkg.nevra
        hashes = list(expected.get(pkg.nevra, []))
        if (koji := metadata.payloadhashes.get(pkg.nevra)):
            hashes.append(("koji's rpmlist.jsonl", koji))
        jobs.append(_Job(pkg, location, tuple(hashes)))
    return jobs


def _check_request(request: StageRequest, source: Source) -> None:
    request.selection.mode  # noqa: B018 - raises when not exactly one is chosen
    if request.jobs < 1:
        raise SettingError("jobs", f"must be at least 1 (got {request.jobs})")
    if request.max_bytes is not None and request.max_bytes <= 0:
        raise SettingError("max_bytes", f"the size limit must be positive (got {request.max_bytes})")
    _check_destination(request.dest.absolute(), source)


def _check_destination(dest: Path, source: Source) -> None:
    """What stage may replace (see ARCHITECTURE.md's contracts)."""
    if dest.is_symlink():
        # Replacing the directory renames it: through a link that would replace the link, not what it
        # names, and a dangling one cannot be renamed into at all.
        raise SettingError("dest", f"{dest} is a symbolic link (to {os.readlink(dest)}): give the directory itself")
    source.check_destination(dest)
    if dest.exists():
        if not dest.is_dir():
            raise SettingError("dest", f"{dest} exists and is not a directory")
        if any(dest.iterdir()) and not (dest / STAGE_MANIFEST_NAME).is_file():
            raise SettingError("dest", f"{dest} is not empty and is no staged repository (no {STAGE_MANIFEST_NAME}): "
                                       "refusing to replace it")


def write_stage_manifest(path: Path, metadata: SourceMetadata, request: StageRequest,
                         staged: Sequence[StagedPackage], fetched: int, from_cache: int, seconds: float) -> dict:
    manifest = {
        "format": STAGE_MANIFEST_FORMAT,
        "builder-version": __version__,
        "source": metadata.identity(),
        "selection": request.selection.describe(),
        "packages": [p.to_dict() for p in staged],
        "totals": {
            "packages": len(staged),
            "bytes": sum(p.size for p in staged),
            "bytes-fetched": fetched,
            "bytes-from-cache": from_cache,
        },
        "seconds": round(seconds, 3),
    }
    # Not fsynced: nothing else of the staged repository is (its files are links or copies of
    # unsynced ones), and a staging a crash interrupted is run again; the fsync took 0.1 s of
    # a 0.3 s warm staging.
    atomic_write(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n", mode=0o644, durable=False)
    return manifest


def stage_repository(request: StageRequest) -> StageResult:
    """Stage the selected packages from the source into request.dest; see the module docstring.

    The destination appears complete or not at all: everything is written to a temporary
    directory next to it and renamed at the end. Raises StagingError (or a subclass naming the
    package, href or URL at fault).
    """
    started = time.monotonic()
    source = parse_source(request.source)
    _check_request(request, source)
    dest = request.dest.absolute()
    places = [("the destination", dest)]
    if request.cache_dir is not None:
        places.append(("the cache", request.cache_dir.absolute()))
    places.append(("the temporary directory", Path(tempfile.gettempdir()).absolute()))
    try:
        return _stage_into(request, source, dest, started)
    except OSError as e:
        # A full, read-only or forbidden file system is named by the directory the user chose.
        if (local := local_write_error(e, places)) is None:
            raise
        raise local from None


def _stage_into(request: StageRequest, source: Source, dest: Path, started: float) -> StageResult:
    # The cache first: a directory that is no cache is refused before anything is created.
    cache = PackageCache(request.cache_dir) if request.cache_dir is not None else None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return _stage_exclusively(request, source, dest, cache, started)
    finally:
        if cache is not None:
            cache.close()


def _stage_exclusively(request: StageRequest, source: Source, dest: Path, cache: Optional[PackageCache],
                       started: float) -> StageResult:
    # A second staging into this destination fails at once rather than waiting: koji never runs two
    # into one buildroot, so two at once is a mistake, and after a wait the second would silently
    # replace what the first staged (ARCHITECTURE.md, "Two stagings, one destination").
    with destination_lock(dest):
        # Checked again now that no other staging can be replacing it.
        _check_destination(dest, source)
        # Debris of stagings killed outright: only directories whose owner file proves them ours and
        # their run dead (util/workdirs.py); look-alikes stay.
        remove_abandoned(dest.parent, _staging_prefix(dest), salvage=lambda d: _restore_previous(d, dest))
        remove_abandoned(Path(tempfile.gettempdir()), WORK_PREFIX)
        return _stage_locked(request, source, dest, cache, started)


def _staging_prefix(dest: Path) -> str:
    return f".{dest.name}.staging-"


def _restore_previous(staging: Path, dest: Path) -> None:
    """A staging killed between its two renames left the previous repository in its staging
    directory and no destination: put it back before the debris goes, as replace_dir would have."""
    old = staging / "old"
    if not os.path.lexists(dest) and (old / STAGE_MANIFEST_NAME).is_file() and not old.is_symlink():
        logger.info("restoring %s from %s, left by a staging killed while replacing it", dest, old)
        os.rename(old, dest)


def _stage_locked(request: StageRequest, source: Source, dest: Path, cache: Optional[PackageCache],
                  started: float) -> StageResult:
    stop = threading.Event()
    http = HttpClient(request.retry, stop=stop)
    with owned_work_dir(Path(tempfile.gettempdir()), WORK_PREFIX) as work:
        phases: list[tuple[str, float]] = []
        with step(f"Reading the metadata of {source}") as watch:
            metadata = source.load_metadata(http, work, filelists=request.selection.mode in
                                            (SelectionMode.packages, SelectionMode.spec))
        phases.append(("metadata", watch.seconds))
        watch = Stopwatch()
        packages, expected = _select(request, metadata, work, cache)
        phases.append(("select", watch.stop()))
        total = sum(p.size for p in packages)
        if request.max_bytes is not None and total > request.max_bytes:
            largest = max(packages, key=lambda p: p.size)
            raise StagingError(f"the {len(packages)} packages to stage take {total:,} bytes, more than the "
                               f"limit of {request.max_bytes:,} (largest: {largest.nevra}, {largest.size:,} bytes)")
        jobs = _jobs(packages, metadata, expected)
        # The repository is built in a subdirectory of the owned staging directory, so whatever a
        # kill leaves (files, partial downloads, the renamed old repository) stays under the owner file.
        with owned_work_dir(dest.parent, _staging_prefix(dest)) as staging:
            out = staging / "repo"
            out.mkdir()
            try:
                stager = _Stager(request, metadata, http, cache)
                with step(f"Fetching {len(jobs)} packages ({total:,} bytes) with {request.jobs} jobs") as watch:
                    staged = stager.stage_all(jobs, out)
                phases.append(("fetch", watch.seconds))
                with step("Writing repodata") as watch:
                    # The newest package's build time: the same packages give byte-identical repodata.
                    revision = max((p.buildtime for p in packages), default=0)
                    write_repodata(out, [stager.repodata[p.file] for p in staged], revision)
                phases.append(("repodata", watch.seconds))
                fetched = sum(p.size for p in staged if p.via is not Via.cache)
                from_cache = sum(p.size for p in staged if p.via is Via.cache)
                seconds = time.monotonic() - started
                write_stage_manifest(out / STAGE_MANIFEST_NAME, metadata, request, staged, fetched, from_cache,
                                     seconds)
                os.chmod(out, 0o755)
                replace_dir(out, dest, old=staging / "old")
            finally:
                stop.set()
    result = StageResult(dest=dest, manifest=dest / STAGE_MANIFEST_NAME, source=metadata.identity(),
                         packages=tuple(staged), bytes_fetched=fetched, bytes_from_cache=from_cache, seconds=seconds,
                         phases=tuple(phases))
    logger.info("%s", result.summary())
    return result
