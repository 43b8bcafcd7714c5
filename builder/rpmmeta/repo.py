"""Read a local RPM repository's metadata (repomd, primary, filelists) without dnf: packages, files, kernels."""

from __future__ import annotations

import bz2
import dataclasses
import functools
import gzip
import io
import lzma
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.util.errors import RepositoryError
from mkosi_initrd_builder.util.run import run

NS = {
    "repo": "http://linux.duke.edu/metadata/repo",
    "common": "http://linux.duke.edu/metadata/common",
    "rpm": "http://linux.duke.edu/metadata/rpm",
    "filelists": "http://linux.duke.edu/metadata/filelists",
}
MODULES_DIR_RE = re.compile(r"^/(?:usr/)?lib/modules/([^/]+)/")


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


def decompress(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".bz2":
        return bz2.decompress(data)
    if path.suffix in (".zst", ".zck"):
        if path.suffix == ".zck":
            raise RepositoryError(path.parent.parent, f"{path.name}: zchunk metadata is not supported")
        return run(["zstd", "-dc", path], capture=True).stdout
    return data


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

    def newest_buildtime(self) -> int:
        return max((p.buildtime for p in self.packages), default=0)

    def content_digest(self) -> list[list[str]]:
        """What identifies the repository's content: each package's NEVRA and checksum, sorted."""
        return sorted([str(p.nevra), f"{p.checksum_type}:{p.checksum}"] for p in self.packages)


def _data_location(repomd: ET.Element, kind: str) -> Optional[str]:
    for data in repomd.findall("repo:data", NS):
        if data.get("type") == kind:
            loc = data.find("repo:location", NS)
            if loc is not None:
                return loc.get("href")
    return None


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
    repomd_path = path / "repodata" / "repomd.xml"
    if not repomd_path.is_file():
        hint = "run createrepo_c on it" if any(path.glob("*.rpm")) else "it holds no RPMs either"
        raise RepositoryError(path, f"no repodata/repomd.xml ({hint})")
    try:
        repomd = ET.parse(repomd_path).getroot()
        primary_href = _data_location(repomd, "primary")
        filelists_href = _data_location(repomd, "filelists") if with_files else None
        if not primary_href or (with_files and not filelists_href):
            raise RepositoryError(path, "repomd.xml lists no primary or filelists metadata")
        revision = (repomd.findtext("repo:revision", default="", namespaces=NS) or "").strip()
        packages = list(_iter_primary(path, decompress(path / primary_href)))
        files_by_pkgid: dict[str, tuple[str, ...]] = {}
        if filelists_href:
            filelists = ET.fromstring(decompress(path / filelists_href))
            for pkg in filelists.findall("filelists:package", NS):
                files_by_pkgid[pkg.get("pkgid", "")] = tuple(
                    (f.text or "") for f in pkg.findall("filelists:file", NS)
                )
    except (ET.ParseError, OSError, EOFError, lzma.LZMAError) as e:
        raise RepositoryError(path, f"unreadable repodata: {e}") from None
    if files_by_pkgid:
        packages = [dataclasses.replace(p, files=files_by_pkgid.get(p.checksum, ())) for p in packages]
    if not packages:
        raise RepositoryError(path, "holds no packages")
    return Repository(path=path, revision=revision, packages=tuple(sorted(packages, key=lambda p: str(p.nevra))))


_XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"


def _iter_primary(path: Path, primary_xml: bytes) -> Iterator[RepoPackage]:
    """The rpm entries of primary.xml, parsed one <package> at a time so memory stays bounded."""
    package_tag = f"{{{NS['common']}}}package"
    for _, pkg in ET.iterparse(io.BytesIO(primary_xml), events=("end",)):
        if pkg.tag != package_tag:
            continue
        if pkg.get("type") != "rpm":
            pkg.clear()
            continue
        v = pkg.find("common:version", NS)
        csum = pkg.find("common:checksum", NS)
        loc = pkg.find("common:location", NS)
        size = pkg.find("common:size", NS)
        time_ = pkg.find("common:time", NS)
        fmt = pkg.find("common:format", NS)
        if v is None or csum is None or loc is None:
            raise RepositoryError(path, f"primary metadata entry without version, checksum or location "
                                        f"({pkg.findtext('common:name', namespaces=NS)})")
        provides: tuple[str, ...] = ()
        if fmt is not None:
            provides = tuple(e.get("name", "") for e in fmt.findall("rpm:provides/rpm:entry", NS))
        name = pkg.findtext("common:name", default="", namespaces=NS)
        try:
            yield RepoPackage(
                nevra=NEVRA.of(name, v.get("epoch", "0"), v.get("ver", ""), v.get("rel", ""),
                               pkg.findtext("common:arch", default="", namespaces=NS)),
                href=loc.get("href", ""),
                checksum_type=csum.get("type", ""),
                checksum=csum.text or "",
                size=int(size.get("package", "0")) if size is not None else 0,
                buildtime=int(time_.get("build", "0")) if time_ is not None else 0,
                provides=provides,
                files=(),
                location_base=loc.get(_XML_BASE, "") or loc.get("base", ""),
            )
        except ValueError as e:  # an epoch, size or time that is no integer
            raise RepositoryError(path, f"primary metadata entry of {name!r}: {e}") from None
        pkg.clear()


def extract_rpm(rpm: Path, dest: Path, patterns: Sequence[str] = ()) -> None:
    """Unpack an RPM's payload (all of it, or the paths matching cpio `patterns`) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    payload = run(["rpm2cpio", rpm], capture=True).stdout
    run(["cpio", "--extract", "--make-directories", "--preserve-modification-time", "--quiet",
         "--no-absolute-filenames", *patterns], input=payload, cwd=dest, capture=True)
