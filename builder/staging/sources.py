"""Where staged packages come from: a repository given as a directory or a URL (koji's
repos/<tag>/<id>/<arch> included), its metadata, and the rules that keep every package location
inside it. Nothing here trusts an href: each one is checked before a file is opened or a URL fetched."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Optional
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from mkosi_initrd_builder.util.errors import StagingError, UnsafeHrefError, VerificationError
from mkosi_initrd_builder.util.fsutil import atomic_write, is_within
from mkosi_initrd_builder.staging.download import HttpClient
from mkosi_initrd_builder.rpmmeta.repo import NS, RepoPackage, open_repository

TOPLINK = "toplink"
RPMLIST = "rpmlist.jsonl"
# koji's repos/<tag>/<repo id>/<arch> (kojihub repo_init); the arch directory holds toplink.
KOJI_REPO_RE = re.compile(r"/repos/(?P<tag>[^/]+)/(?P<repo_id>\d+)/(?P<arch>[^/]+)/?$")
DEFAULT_PORTS = {"http": 80, "https": 443}
METADATA_TYPES = ("primary", "filelists")


class SourceKind(str, enum.Enum):
    directory = "directory"
    http = "http"


@dataclasses.dataclass(frozen=True)
class KojiRepo:
    tag: str
    repo_id: int
    arch: str


@dataclasses.dataclass(frozen=True)
class Source:
    location: str                    # as the user or the plugin gave it
    kind: SourceKind
    directory: Optional[Path] = None  # directory sources
    url: str = ""                     # http sources, always ending in "/"

    @property
    def koji(self) -> Optional[KojiRepo]:
        """The koji repository this is, judged by koji's path layout."""
        path = urlsplit(self.url).path if self.kind is SourceKind.http else str(self.directory)
        m = KOJI_REPO_RE.search(path)
        return KojiRepo(m["tag"], int(m["repo_id"]), m["arch"]) if m else None

    def __str__(self) -> str:
        return self.url if self.kind is SourceKind.http else str(self.directory)


def parse_source(text: str) -> Source:
    """A directory, a file:// URL or an http(s):// URL naming a dnf repository."""
    parts = urlsplit(text)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise StagingError(f"source {text!r}: the URL names no host")
        if parts.query or parts.fragment:
            raise StagingError(f"source {text!r}: a repository URL takes no query or fragment")
        path = parts.path.rstrip("/") + "/"
        return Source(text, SourceKind.http, url=urlunsplit((parts.scheme, parts.netloc, path, "", "")))
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StagingError(f"source {text!r}: file:// URLs on another host are not supported")
        return Source(text, SourceKind.directory, directory=Path(unquote(parts.path)).absolute())
    if parts.scheme and not Path(text).exists():
        raise StagingError(f"source {text!r}: unsupported URL scheme {parts.scheme!r} (use http, https, file or a "
                           "directory)")
    return Source(text, SourceKind.directory, directory=Path(text).absolute())


# --- hrefs -------------------------------------------------------------------------------------

def package_relpath(href: str) -> PurePosixPath:
    """The path of a package relative to its repository; UnsafeHrefError for anything that could
    leave it: absolute paths, '..' components (also percent-encoded), URLs."""
    if not href:
        raise UnsafeHrefError(href, "is empty")
    if "\0" in href or "\\" in href:
        raise UnsafeHrefError(href, "contains a NUL character or a backslash")
    if "?" in href or "#" in href:
        raise UnsafeHrefError(href, "contains '?' or '#'")
    parts = urlsplit(href)
    if parts.scheme or parts.netloc:
        raise UnsafeHrefError(href, "is a URL, not a path inside the repository")
    for form in (href, unquote(href)):
        if form.startswith("/"):
            raise UnsafeHrefError(href, "is an absolute path")
        if ".." in form.split("/"):
            raise UnsafeHrefError(href, "contains a '..' component")
    components = [c for c in href.split("/") if c not in ("", ".")]
    if not components:
        raise UnsafeHrefError(href, "names no file")
    rel = PurePosixPath(*components)
    check_toplink(href, rel)
    return rel


def check_toplink(href: str, rel: PurePosixPath) -> None:
    """koji hrefs go through toplink to the whole topdir; only its package trees may be reached."""
    if rel.parts[0] != TOPLINK:
        return
    inner = rel.parts[1:]
    if len(inner) >= 2 and inner[0] == "packages":
        return
    if len(inner) >= 4 and inner[0] == "vol" and inner[2] == "packages":
        return
    raise UnsafeHrefError(href, "goes through toplink but not into packages/ or vol/<volume>/packages/")


def _port(scheme: str, port: Optional[int]) -> Optional[int]:
    return port if port is not None else DEFAULT_PORTS.get(scheme)


def package_url(source: Source, href: str, location_base: str = "") -> str:
    """The URL of a package of an http source. A location given as a URL (or with xml:base) must
    stay on the source's host and below its path; anything else must be a safe relative path."""
    assert source.kind is SourceKind.http
    full = urljoin(location_base, href) if location_base else href
    parts = urlsplit(full)
    if parts.scheme or parts.netloc:
        base = urlsplit(source.url)
        if (parts.scheme, parts.hostname, _port(parts.scheme, parts.port)) != \
                (base.scheme, base.hostname, _port(base.scheme, base.port)):
            raise UnsafeHrefError(full, f"points to another host ({parts.scheme}://{parts.netloc})")
        if parts.query or parts.fragment:
            raise UnsafeHrefError(full, "contains '?' or '#'")
        if ".." in parts.path.split("/") or ".." in unquote(parts.path).split("/"):
            raise UnsafeHrefError(full, "contains a '..' component")
        path, root = PurePosixPath(unquote(parts.path)), PurePosixPath(unquote(base.path))
        if not is_within(path, root) or path == root:
            raise UnsafeHrefError(full, f"is outside the repository ({source.url})")
        rel = path.relative_to(root)
        check_toplink(full, rel)
    else:
        rel = package_relpath(full)
    return source.url + quote(rel.as_posix(), safe="/+~:@!$&'()*,;=")


def package_path(source: Source, href: str, location_base: str = "") -> Path:
    """The file of a package of a directory source, after checking that the href and every symlink
    on the way stay inside the repository (or, through toplink, inside koji's package trees)."""
    assert source.kind is SourceKind.directory and source.directory is not None
    if location_base:
        raise UnsafeHrefError(f"{location_base} {href}", "has an xml:base; a directory source serves only "
                                                         "relative paths")
    rel = package_relpath(href)
    repo = source.directory
    candidate = repo.joinpath(*rel.parts)
    real = Path(os.path.realpath(candidate))
    if rel.parts[0] == TOPLINK and (repo / TOPLINK).is_symlink():
        root = Path(os.path.realpath(repo / TOPLINK))
        where = "the koji topdir that toplink points to"
        # koji makes toplink point up to the topdir holding repos/; anywhere else is not koji's doing.
        if not is_within(Path(os.path.realpath(repo)), root):
            raise UnsafeHrefError(href, f"toplink points to {root}, which does not hold the repository")
    else:
        root = Path(os.path.realpath(repo))
        where = "the repository"
    if not is_within(real, root):
        raise UnsafeHrefError(href, f"resolves to {real}, outside {where} ({root})")
    if rel.parts[0] == TOPLINK:
        check_toplink(href, PurePosixPath(TOPLINK, *real.relative_to(root).parts))
    return real


# --- metadata ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SourceMetadata:
    source: Source
    directory: Path        # holds repodata/: the source itself, or a verified copy of an http source's
    repomd_sha256: str
    revision: str
    packages: tuple[RepoPackage, ...]
    payloadhashes: Mapping[str, str]  # NVRA -> payloadhash from koji's rpmlist.jsonl
    has_rpmlist: bool

    def identity(self) -> dict[str, object]:
        """What the manifest records about where the packages came from."""
        koji = self.source.koji
        return {
            "location": str(self.source),
            "kind": self.source.kind.value,
            "repomd-sha256": self.repomd_sha256,
            "revision": self.revision,
            "koji": dataclasses.asdict(koji) if koji else None,
            "rpmlist": self.has_rpmlist,
        }


def parse_rpmlist(text: str, where: str) -> dict[str, str]:
    """NVRA -> payloadhash from koji's rpmlist.jsonl (one rpminfo JSON object per line)."""
    hashes: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            info = json.loads(line)
            nvra = f"{info['name']}-{info['version']}-{info['release']}.{info['arch']}"
            payloadhash = info.get("payloadhash")
        except (ValueError, KeyError, TypeError) as e:
            raise StagingError(f"{where}: line {number} is not a koji rpminfo record ({e})") from None
        if payloadhash:
            hashes[nvra] = str(payloadhash).lower()
    return hashes


def _checksum_ok(data: bytes, checksum_type: str, expected: str) -> bool:
    algo = "sha1" if checksum_type == "sha" else checksum_type
    try:
        return hashlib.new(algo, data).hexdigest() == expected.strip().lower()
    except ValueError:
        return False


def _mirror_metadata(source: Source, http: HttpClient, dest: Path, types: tuple[str, ...]) -> bytes:
    """Copy repomd.xml and the metadata files of `types` from an http source into dest/repodata,
    each checked against repomd.xml. The local repomd.xml lists only those files, so dnf and
    open_repository() read exactly what was verified. Returns the original repomd.xml."""
    repomd_url = source.url + "repodata/repomd.xml"
    raw = http.get_bytes(repomd_url)
    assert raw is not None
    try:
        repomd = ET.fromstring(raw)
    except ET.ParseError as e:
        raise StagingError(f"{repomd_url}: not a repomd.xml ({e})") from None
    (dest / "repodata").mkdir(parents=True, exist_ok=True)
    found = set()
    for data in list(repomd.findall("repo:data", NS)):
        kind = data.get("type")
        if kind not in types:
            repomd.remove(data)
            continue
        loc = data.find("repo:location", NS)
        csum = data.find("repo:checksum", NS)
        if loc is None or csum is None or not loc.get("href"):
            raise StagingError(f"{repomd_url}: the {kind} entry has no location or checksum")
        href = loc.get("href", "")
        rel = package_relpath(href)
        if rel.parts[0] != "repodata" or len(rel.parts) != 2:
            raise UnsafeHrefError(href, "metadata outside repodata/")
        url = source.url + quote(rel.as_posix())
        body = http.get_bytes(url)
        assert body is not None
        if not _checksum_ok(body, csum.get("type", ""), csum.text or ""):
            raise VerificationError(f"{kind} metadata", url, f"its checksum does not match repomd.xml's "
                                                             f"{csum.get('type')} {csum.text}")
        atomic_write(dest.joinpath(*rel.parts), body)
        found.add(kind)
    missing = [t for t in types if t not in found]
    if missing:
        raise StagingError(f"{repomd_url} lists no {', '.join(missing)} metadata")
    for prefix, uri in (("", NS["repo"]), ("rpm", NS["rpm"])):
        ET.register_namespace(prefix, uri)
    atomic_write(dest / "repodata" / "repomd.xml", ET.tostring(repomd, xml_declaration=True, encoding="UTF-8"))
    return raw


def load_metadata(source: Source, http: HttpClient, work: Path, *, filelists: bool) -> SourceMetadata:
    """Read the source's package list (and koji's rpmlist.jsonl when there is one). For an http
    source the metadata is copied into `work` first; `filelists` copies that too, for dnf."""
    if source.kind is SourceKind.directory:
        assert source.directory is not None
        directory = source.directory
        repo = open_repository(directory, with_files=False)
        repomd = (directory / "repodata" / "repomd.xml").read_bytes()
        rpmlist_file = directory / RPMLIST
        rpmlist = rpmlist_file.read_text() if rpmlist_file.is_file() else None
        where = str(rpmlist_file)
    else:
        directory = work / "metadata"
        repomd = _mirror_metadata(source, http, directory, METADATA_TYPES if filelists else METADATA_TYPES[:1])
        repo = open_repository(directory, with_files=False)
        where = source.url + RPMLIST
        body = http.get_bytes(where, missing_ok=True)
        rpmlist = body.decode("utf-8", errors="replace") if body is not None else None
    return SourceMetadata(
        source=source,
        directory=directory,
        repomd_sha256=hashlib.sha256(repomd).hexdigest(),
        revision=repo.revision,
        packages=repo.packages,
        payloadhashes=parse_rpmlist(rpmlist, where) if rpmlist is not None else {},
        has_rpmlist=rpmlist is not None,
    )
