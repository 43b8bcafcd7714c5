"""Read a local RPM repository's metadata (repomd, primary, filelists) without dnf: packages, files,
kernels. createrepo_c's bindings parse it (measured against the hand-written parser this replaced:
ARCHITECTURE.md, "Libraries and hand-written code").

Memory and disk stay bounded whatever the metadata claims: each file is decompressed as a stream
into a temporary file that stops at the size repomd.xml promises for it (open-size) and at
MAX_METADATA_BYTES, and createrepo_c parses that file as a stream. What is kept grows with the
number of packages (about 2 KB each), and a single element can be no larger than the cap.
Entities are never expanded: createrepo_c's parser leaves a DTD's entities undefined, and
repomd.xml is read by expat, which refuses entity amplification.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

import createrepo_c

from mkosi_initrd_builder.rpmmeta.hrefs import metadata_relpath
from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.util.compress import DecompressError, ExpansionLimitError, decompress_to
from mkosi_initrd_builder.util.errors import RepositoryError, UnsafeHrefError
from mkosi_initrd_builder.util.fsutil import hash_algorithm, hash_file, is_within
from mkosi_initrd_builder.util.run import run

NS = {
    "repo": "http://linux.duke.edu/metadata/repo",
    "common": "http://linux.duke.edu/metadata/common",
    "rpm": "http://linux.duke.edu/metadata/rpm",
    "filelists": "http://linux.duke.edu/metadata/filelists",
}
MODULES_DIR_RE = re.compile(r"^/(?:usr/)?lib/modules/([^/]+)/")
# Fedora's largest (Everything) primary.xml is a few hundred MB uncompressed, its filelists about a GB.
MAX_METADATA_BYTES = 2 << 30
MAX_REPOMD_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class RepoPackage:
    """A package as the repository's metadata describes it: its identity and where and what its file is."""

    nevra: NEVRA
    href: str
    checksum_type: str
    checksum: str
    size: int
    buildtime: int
    provides: tuple[str, ...]
    files: tuple[str, ...]
    # xml:base of <location>: mergerepo_c --koji points external repositories' packages elsewhere with it.
    location_base: str = ""
    file_time: int = 0  # <time file>: the file's mtime when the repository was made (0: not given)


@dataclasses.dataclass(frozen=True)
class Repository:
    path: Path
    revision: str
    packages: tuple[RepoPackage, ...]

    def kernel_versions(self) -> list[str]:
        return sorted({m.group(1) for p in self.packages for f in p.files if (m := MODULES_DIR_RE.match(f))})

    def kernel_packages(self, kernel_version: str) -> list[RepoPackage]:
        prefixes = (f"/usr/lib/modules/{kernel_version}/", f"/lib/modules/{kernel_version}/")
        return [p for p in self.packages if any(f.startswith(prefixes) for f in p.files)]

    def package_owning(self, path: str) -> list[RepoPackage]:
        return [p for p in self.packages if path in p.files]

    @functools.cached_property
    def _provided(self) -> dict[str, list[RepoPackage]]:
        index: dict[str, list[RepoPackage]] = {}
        for p in self.packages:
            for name in (p.nevra.name, *p.provides, *p.files):
                index.setdefault(name, []).append(p)
        return index

    def providers(self, name: str) -> list[RepoPackage]:
        """Packages that satisfy a bare name, provide or file path (version constraints stripped)."""
        bare = re.split(r"\s*[<>=]", name, maxsplit=1)[0].strip()
        return self._provided.get(bare, [])

    def missing(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if not self.providers(n)]

    def check_package_file(self, package: RepoPackage) -> Path:
        """The file of `package`, after checking it against the repository's checksum: a file changed
        after createrepo_c described it must not reach an image. RepositoryError naming the file."""
        path = self.path / package.href
        try:
            algo = hash_algorithm(package.checksum_type)
            digest = hash_file(path, [algo])[algo]
        except ValueError as e:
            raise RepositoryError(self.path, f"{package.href}: {e}") from None
        except OSError as e:
            raise RepositoryError(self.path, f"{package.href}: cannot read it: {e.strerror}") from None
        if digest != package.checksum.strip().lower():
            raise RepositoryError(self.path, f"{package.href}: {algo} is {digest}, the repository's metadata says "
                                             f"{package.checksum} (changed after the metadata was written)")
        return path

    def newest_buildtime(self) -> int:
        return max((p.buildtime for p in self.packages), default=0)

    def content_digest(self) -> list[list[str]]:
        """What identifies the repository's content: each package's NEVRA and checksum, sorted."""
        return sorted([str(p.nevra), f"{p.checksum_type}:{p.checksum}"] for p in self.packages)


@dataclasses.dataclass(frozen=True)
class MetadataFile:
    """One <data> entry of repomd.xml."""

    kind: str
    href: str
    open_size: Optional[int]  # the uncompressed size repomd.xml promises, when it says


def read_repomd(path: Path) -> tuple[str, dict[str, MetadataFile]]:
    """The revision and the metadata files repomd.xml lists, by type."""
    repomd_path = path / "repodata" / "repomd.xml"
    with open(repomd_path, "rb") as f:
        raw = f.read(MAX_REPOMD_BYTES + 1)
    if len(raw) > MAX_REPOMD_BYTES:
        raise RepositoryError(path, f"repomd.xml is larger than {MAX_REPOMD_BYTES:,} bytes")
    repomd = ET.fromstring(raw)
    files = {}
    for data in repomd.findall("repo:data", NS):
        loc = data.find("repo:location", NS)
        if loc is None or not loc.get("href"):
            continue
        open_size = (data.findtext("repo:open-size", default="", namespaces=NS) or "").strip()
        kind = data.get("type", "")
        files[kind] = MetadataFile(kind, loc.get("href", ""), int(open_size) if open_size.isdigit() else None)
    return (repomd.findtext("repo:revision", default="", namespaces=NS) or "").strip(), files


def _metadata_path(repo: Path, entry: MetadataFile) -> Path:
    """The file of a repomd.xml entry: directly in repodata/, and no symlink leading elsewhere."""
    try:
        rel = metadata_relpath(entry.href)
    except UnsafeHrefError as e:
        raise RepositoryError(repo, f"repomd.xml's {entry.kind} entry: {e}") from None
    real = Path(os.path.realpath(repo.joinpath(*rel.parts)))
    if not is_within(real, Path(os.path.realpath(repo / "repodata"))):
        raise RepositoryError(repo, f"repomd.xml's {entry.kind} entry {entry.href} resolves to {real}, "
                                    "outside repodata/")
    return real


def _parse(repo: Path, entry: MetadataFile, work: Path,
           parser: Callable[[str], Any]) -> None:
    """Decompress one metadata file within its bounds, then hand it to a createrepo_c parser."""
    src = _metadata_path(repo, entry)
    limit = min(entry.open_size, MAX_METADATA_BYTES) if entry.open_size is not None else MAX_METADATA_BYTES
    if src.suffix == ".zck":
        # zchunk is read by createrepo_c itself (Python has no stream decoder for it), so only its
        # compressed size is bounded. repomd.xml names zchunk files as extra entries (primary_zck);
        # a repository whose primary itself is zchunk is rare.
        if not createrepo_c.HAS_ZCK:
            raise RepositoryError(repo, f"{src.name}: this createrepo_c cannot read zchunk metadata")
        if src.stat().st_size > MAX_METADATA_BYTES:
            raise RepositoryError(repo, f"{src.name} is larger than the limit for metadata, "
                                        f"{MAX_METADATA_BYTES:,} bytes")
        parser(str(src))
        return
    plain = work / f"{entry.kind}.xml"
    try:
        with open(plain, "wb") as out:
            decompress_to(src, out, limit)
    except ExpansionLimitError:
        said = f"repomd.xml's open-size for it, {entry.open_size:,}" if limit == entry.open_size else \
            f"the limit for metadata, {MAX_METADATA_BYTES:,}"
        raise RepositoryError(repo, f"{src.name} expands to more than {said} bytes") from None
    except DecompressError as e:
        raise RepositoryError(repo, str(e)) from None
    try:
        parser(str(plain))
    except createrepo_c.CreaterepoCError as e:
        # createrepo_c names the temporary file and ends its message with a newline
        reason = " ".join(str(e).replace(str(plain), src.name).split())
        raise RepositoryError(repo, f"unreadable repodata: {reason}") from None
    plain.unlink()


# createrepo_c reads a <size package> that is no integer as 0 and one past int64 as its maximum.
_UNUSABLE_SIZES = (0, (1 << 63) - 1)


def _repo_package(repo: Path, p: "createrepo_c.Package") -> RepoPackage:
    # Every bound on a download and every check of a staged file rests on this size.
    if not p.size_package or p.size_package < 0 or p.size_package in _UNUSABLE_SIZES:
        raise RepositoryError(repo, f"primary metadata entry of {p.name!r}: <size package> is missing, not a "
                                    "positive integer, or out of range")
    try:
        return RepoPackage(
            nevra=NEVRA.of(p.name or "", p.epoch, p.version or "", p.release or "", p.arch or ""),
            href=p.location_href or "",
            checksum_type=p.checksum_type or "",
            checksum=p.pkgId or "",
            size=int(p.size_package or 0),
            buildtime=int(p.time_build or 0),
            provides=tuple(entry[0] for entry in p.provides),
            files=(),
            location_base=p.location_base or "",
            file_time=int(p.time_file or 0),
        )
    except ValueError as e:  # an epoch that is no integer
        raise RepositoryError(repo, f"primary metadata entry of {p.name!r}: {e}") from None


def open_repository(path: Path, *, with_files: bool = True) -> Repository:
    """Parse `path`/repodata; raise RepositoryError naming what is missing or broken.

    with_files=False skips filelists (RepoPackage.files stays empty): staging needs only primary,
    and a distribution's filelists are many times its size.
    """
    path = Path(path)
    if not path.exists():
        raise RepositoryError(path, "does not exist")
    if not path.is_dir():
        raise RepositoryError(path, "is not a directory")
    if not (path / "repodata" / "repomd.xml").is_file():
        hint = "run createrepo_c on it" if any(path.glob("*.rpm")) else "it holds no RPMs either"
        raise RepositoryError(path, f"no repodata/repomd.xml ({hint})")
    packages: list[RepoPackage] = []
    files_by_pkgid: dict[str, tuple[str, ...]] = {}

    # An error raised in a callback reaches us as createrepo_c's "Parsing interrupted"; keep ours.
    refused: list[RepositoryError] = []

    def primary(p: "createrepo_c.Package") -> bool:
        try:
            if not p.location_href or not p.pkgId:
                raise RepositoryError(path, f"primary metadata entry without checksum or location ({p.name})")
            packages.append(_repo_package(path, p))
        except RepositoryError as e:
            refused.append(e)
            return False
        return True

    def filelist(p: "createrepo_c.Package") -> bool:
        files_by_pkgid[p.pkgId] = tuple(directory + name for _, directory, name in p.files)
        return True

    try:
        revision, entries = read_repomd(path)
        if "primary" not in entries or (with_files and "filelists" not in entries):
            raise RepositoryError(path, "repomd.xml lists no primary or filelists metadata")
        with tempfile.TemporaryDirectory(prefix="mkosi-initrd-repodata-") as tmp:
            _parse(path, entries["primary"], Path(tmp),
                   lambda f: createrepo_c.xml_parse_primary(f, pkgcb=primary, do_files=False))
            if with_files:
                _parse(path, entries["filelists"], Path(tmp),
                       lambda f: createrepo_c.xml_parse_filelists(
                           f, newpkgcb=lambda pkgid, name, arch: createrepo_c.Package(), pkgcb=filelist))
    except (ET.ParseError, OSError, createrepo_c.CreaterepoCError) as e:
        if refused:
            raise refused[0] from None
        raise RepositoryError(path, f"unreadable repodata: {e}") from None
    if refused:  # a callback returning False ends the parse quietly
        raise refused[0]
    if files_by_pkgid:
        packages = [dataclasses.replace(p, files=files_by_pkgid.get(p.checksum, ())) for p in packages]
    if not packages:
        raise RepositoryError(path, "holds no packages")
    return Repository(path=path, revision=revision, packages=tuple(sorted(packages, key=lambda p: str(p.nevra))))


def rpm_payload(rpm: Path) -> bytes:
    """An RPM's payload as an uncompressed cpio archive, in memory."""
    return run(["rpm2cpio", rpm], capture=True).stdout


def extract_payload(payload: bytes, dest: Path, patterns: Sequence[str] = ()) -> None:
    """Unpack a payload (all of it, or the paths matching cpio `patterns`) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["cpio", "--extract", "--make-directories", "--preserve-modification-time", "--quiet",
         "--no-absolute-filenames", *patterns], input=payload, cwd=dest, capture=True)


def extract_rpm(rpm: Path, dest: Path, patterns: Sequence[str] = ()) -> None:
    """Unpack an RPM's payload (all of it, or the paths matching cpio `patterns`) into `dest`."""
    extract_payload(rpm_payload(rpm), dest, patterns)


def cpio_pattern(path: str) -> str:
    """The cpio pattern that matches exactly the payload's `path` ('/usr/lib/x' or 'usr/lib/x'):
    cpio matches its arguments with fnmatch, so a literal name's glob characters are escaped."""
    return "./" + re.sub(r"([*?\[\]\\])", r"\\\1", path.lstrip("/"))
