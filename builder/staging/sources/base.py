"""The interface every kind of staging source implements, and what all of them share: the metadata
read from a source, where one package is, how it arrived, and koji's rpmlist.jsonl."""

from __future__ import annotations

import abc
import dataclasses
import enum
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Optional

from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.rpmmeta.repo import RepoPackage
from mkosi_initrd_builder.staging.download import HttpClient
from mkosi_initrd_builder.util.errors import StagingError

RPMLIST = "rpmlist.jsonl"
# koji's repos/<tag>/<repo id>/<arch> (kojihub repo_init); the arch directory holds toplink.
KOJI_REPO_RE = re.compile(r"/repos/(?P<tag>[^/]+)/(?P<repo_id>\d+)/(?P<arch>[^/]+)/?$")
METADATA_TYPES = ("primary", "filelists")


class Via(str, enum.Enum):
    """How a staged file arrived; recorded in the stage manifest."""

    http = "http"
    link = "link"    # hard link to the source's file
    copy = "copy"    # copy of the source's file (another file system)
    cache = "cache"  # served from the cache: nothing fetched (a hard link to the entry, or a private copy
                     # across file systems, checked again once in place)


@dataclasses.dataclass(frozen=True)
class KojiRepo:
    tag: str
    repo_id: int
    arch: str


@dataclasses.dataclass(frozen=True)
class PackageLocation:
    """Where one package's file is, after the source checked its href."""

    origin: str   # what the manifest and messages show: a URL or a path as the metadata names it
    address: str  # what fetch() opens: the checked URL, or the checked real path
    name: str     # the file name it is staged under


@dataclasses.dataclass(frozen=True)
class Fetched:
    via: Via
    size: int
    digests: dict[str, str]  # hashlib name -> hex digest of the bytes written


@dataclasses.dataclass(frozen=True)
class SourceMetadata:
    source: "Source"
    directory: Path        # holds repodata/: the source itself, or a verified copy of a remote source's
    repomd_sha256: str
    revision: str
    packages: tuple[RepoPackage, ...]
    payloadhashes: Mapping[NEVRA, str]  # from koji's rpmlist.jsonl
    has_rpmlist: bool

    def identity(self) -> dict[str, object]:
        """What the manifest records about where the packages came from."""
        koji = self.source.koji
        return {
            "location": str(self.source),
            "kind": self.source.kind,
            "repomd-sha256": self.repomd_sha256,
            "revision": self.revision,
            "koji": dataclasses.asdict(koji) if koji else None,
            "rpmlist": self.has_rpmlist,
        }


class Source(abc.ABC):
    """One kind of repository to stage from. A subclass is registered in SOURCE_TYPES
    (staging/sources/__init__.py); parse_source() offers each the user's text in turn."""

    kind: ClassVar[str]                # recorded in the stage manifest
    schemes: ClassVar[tuple[str, ...]]  # what the --source help lists ("s3://")

    location: str  # as the user or the plugin gave it

    @classmethod
    @abc.abstractmethod
    def parse(cls, text: str) -> Optional["Source"]:
        """The source `text` names, None when it is not of this kind; StagingError when it is of this
        kind but malformed."""

    @abc.abstractmethod
    def __str__(self) -> str:
        """The source as messages and the manifest name it."""

    @property
    @abc.abstractmethod
    def koji_path(self) -> str:
        """The path koji's layout is recognised in."""

    @property
    def koji(self) -> Optional[KojiRepo]:
        """The koji repository this is, judged by koji's path layout."""
        m = KOJI_REPO_RE.search(self.koji_path)
        return KojiRepo(m["tag"], int(m["repo_id"]), m["arch"]) if m else None

    def check_destination(self, dest: Path) -> None:
        """Refuse a staging destination this source cannot coexist with (SettingError for "dest"),
        or a source that cannot be read at all; nothing by default."""

    @abc.abstractmethod
    def load_metadata(self, http: HttpClient, work: Path, *, filelists: bool) -> SourceMetadata:
        """Read the package list (and koji's rpmlist.jsonl when there is one). A remote source copies
        the metadata below `work` after checking it; `filelists` copies that too, for dnf."""

    def metadata_stamp(self, metadata: "SourceMetadata") -> list[Any]:
        """Besides repomd.xml's checksum, what tells that the metadata files dnf reads changed (a kept
        depsolve is keyed by both). Nothing by default: a remote source's copies were checked against
        repomd.xml, so its checksum names them."""
        return []

    @abc.abstractmethod
    def locate(self, package: RepoPackage) -> PackageLocation:
        """Where the package's file is; UnsafeHrefError when its location could leave the repository."""

    @abc.abstractmethod
    def fetch(self, location: PackageLocation, target: Path, algorithms: Sequence[str], http: HttpClient,
              package: RepoPackage) -> Fetched:
        """Create `target` (read-only) with the package's bytes, hashed with `algorithms` on the way;
        a source that can tell stops early at more bytes than the metadata says the package has."""


def parse_rpmlist(text: str, where: str) -> dict[NEVRA, str]:
    """NEVRA -> payloadhash from koji's rpmlist.jsonl (one rpminfo JSON object per line)."""
    hashes: dict[NEVRA, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            info = json.loads(line)
            nevra = NEVRA.from_koji(info)
            payloadhash = info.get("payloadhash")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StagingError(f"{where}: line {number} is not a koji rpminfo record ({e})") from None
        if payloadhash:
            hashes[nevra] = str(payloadhash).lower()
    return hashes


def read_rpmlist(data: Optional[bytes], where: str) -> Optional[dict[NEVRA, str]]:
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StagingError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_rpmlist(text, where)
