"""A repository served over http(s):// (koji's topurl). Its metadata is copied into the staging's work
directory after each file is checked against repomd.xml, and every package URL must stay on the
source's host and below its path."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Optional
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from mkosi_initrd_builder.rpmmeta.repo import MAX_METADATA_BYTES, MAX_REPOMD_BYTES, NS, RepoPackage, open_repository
from mkosi_initrd_builder.staging.download import HttpClient
from mkosi_initrd_builder.staging.sources.base import (
    METADATA_TYPES, RPMLIST, Fetched, PackageLocation, Source, SourceMetadata, Via, read_rpmlist,
)
from mkosi_initrd_builder.rpmmeta.hrefs import check_toplink, metadata_relpath, package_relpath
from mkosi_initrd_builder.util.errors import StagingError, UnsafeHrefError, VerificationError
from mkosi_initrd_builder.util.fsutil import atomic_write, hash_bytes, is_within, matches_checksum

DEFAULT_PORTS = {"http": 80, "https": 443}
# koji's rpmlist.jsonl has one line of about 300 bytes per package of the tag.
MAX_RPMLIST_BYTES = 256 << 20


def _port(scheme: str, port: Optional[int]) -> Optional[int]:
    return port if port is not None else DEFAULT_PORTS.get(scheme)


@dataclasses.dataclass(frozen=True)
class HttpSource(Source):
    kind = "http"
    schemes = ("http://", "https://")

    location: str
    url: str  # always ending in "/"

    @classmethod
    def parse(cls, text: str) -> Optional["HttpSource"]:
        parts = urlsplit(text)
        if f"{parts.scheme}://" not in cls.schemes:
            return None
        try:
            parts.port  # noqa: B018 - raises on a port that is no number or out of range
        except ValueError as e:
            raise StagingError(f"source {text!r}: not a valid URL ({e})") from None
        if not parts.hostname:
            raise StagingError(f"source {text!r}: the URL names no host")
        if parts.query or parts.fragment:
            raise StagingError(f"source {text!r}: a repository URL takes no query or fragment")
        path = parts.path.rstrip("/") + "/"
        return cls(text, urlunsplit((parts.scheme, parts.netloc, path, "", "")))

    def __str__(self) -> str:
        return self.url

    @property
    def koji_path(self) -> str:
        return urlsplit(self.url).path

    def url_of(self, href: str, location_base: str = "") -> str:
        """The URL of a package. A location given as a URL (or with xml:base) must stay on the source's
        host and below its path; anything else must be a safe relative path."""
        full = urljoin(location_base, href) if location_base else href
        parts = urlsplit(full)
        if parts.scheme or parts.netloc:
            base = urlsplit(self.url)
            if (parts.scheme, parts.hostname, _port(parts.scheme, parts.port)) != \
                    (base.scheme, base.hostname, _port(base.scheme, base.port)):
                raise UnsafeHrefError(full, f"points to another host ({parts.scheme}://{parts.netloc})")
            if parts.query or parts.fragment:
                raise UnsafeHrefError(full, "contains '?' or '#'")
            if ".." in parts.path.split("/") or ".." in unquote(parts.path).split("/"):
                raise UnsafeHrefError(full, "contains a '..' component")
            path, root = PurePosixPath(unquote(parts.path)), PurePosixPath(unquote(base.path))
            if not is_within(path, root) or path == root:
                raise UnsafeHrefError(full, f"is outside the repository ({self.url})")
            rel = path.relative_to(root)
            check_toplink(full, rel)
        else:
            rel = package_relpath(full)
        return self.url + quote(rel.as_posix(), safe="/+~:@!$&'()*,;=")

    def locate(self, package: RepoPackage) -> PackageLocation:
        url = self.url_of(package.href, package.location_base)
        return PackageLocation(url, url, PurePosixPath(unquote(urlsplit(url).path)).name)

    def fetch(self, location: PackageLocation, target: Path, algorithms: Sequence[str], http: HttpClient,
              package: RepoPackage) -> Fetched:
        got = http.download_file(location.address, target, algorithms=algorithms, package=str(package.nevra),
                                 max_bytes=package.size or None)
        os.chmod(target, 0o444)
        return Fetched(Via.http, got.size, got.digests)

    def load_metadata(self, http: HttpClient, work: Path, *, filelists: bool) -> SourceMetadata:
        """The files are fetched in parallel (rpmlist.jsonl with repomd.xml, then the files repomd.xml
        lists): a server some way off costs two round trips, not four."""
        directory = work / "metadata"
        where = self.url + RPMLIST
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(METADATA_TYPES) + 1,
                                                     thread_name_prefix="metadata")
        try:
            rpmlist_body = pool.submit(http.get_bytes, where, max_bytes=MAX_RPMLIST_BYTES, missing_ok=True)
            repomd = self._mirror_metadata(http, directory, METADATA_TYPES if filelists else METADATA_TYPES[:1],
                                           pool)
            rpmlist = read_rpmlist(rpmlist_body.result(), where)
        except BaseException:
            http.abort()  # a fetch still running in the pool ends now, not at its timeout
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        repo = open_repository(directory, with_files=False)
        return SourceMetadata(self, directory, hash_bytes(repomd), repo.revision, repo.packages, rpmlist or {},
                              rpmlist is not None)

    def _mirror_metadata(self, http: HttpClient, dest: Path, types: tuple[str, ...],
                         pool: concurrent.futures.Executor) -> bytes:
        """Copy repomd.xml and the metadata files of `types` into dest/repodata, each checked against
        repomd.xml (the files fetched in parallel in `pool`). The local repomd.xml lists only those
        files, so dnf and open_repository() read exactly what was verified. Returns the original
        repomd.xml."""
        repomd_url = self.url + "repodata/repomd.xml"
        raw = http.get_bytes(repomd_url, max_bytes=MAX_REPOMD_BYTES)
        assert raw is not None
        try:
            repomd = ET.fromstring(raw)
        except ET.ParseError as e:
            raise StagingError(f"{repomd_url}: not a repomd.xml ({e})") from None
        (dest / "repodata").mkdir(parents=True, exist_ok=True)
        found = set()
        wanted = []
        for data in list(repomd.findall("repo:data", NS)):
            kind = data.get("type")
            if kind not in types:
                repomd.remove(data)
                continue
            loc = data.find("repo:location", NS)
            csum = data.find("repo:checksum", NS)
            if loc is None or csum is None or not loc.get("href"):
                raise StagingError(f"{repomd_url}: the {kind} entry has no location or checksum")
            rel = metadata_relpath(loc.get("href", ""))
            url = self.url + quote(rel.as_posix())
            size = (data.findtext("repo:size", default="", namespaces=NS) or "").strip()
            body = pool.submit(http.get_bytes, url, max_bytes=min(int(size), MAX_METADATA_BYTES) if size.isdigit()
                               else MAX_METADATA_BYTES)
            wanted.append((kind, rel, url, csum, body))
        for kind, rel, url, csum, fetched in wanted:
            body = fetched.result()
            assert body is not None
            if not matches_checksum(body, csum.get("type", ""), csum.text or ""):
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
