"""A repository on a local file system: a directory or a file:// URL (koji's topdir when the builder
mounts it). Packages are hard-linked where the file system allows it, else copied."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

from mkosi_initrd_builder.rpmmeta.repo import RepoPackage, open_repository
from mkosi_initrd_builder.staging.download import HttpClient
from mkosi_initrd_builder.staging.sources.base import (
    RPMLIST, Fetched, PackageLocation, Source, SourceMetadata, Via, read_rpmlist,
)
from mkosi_initrd_builder.rpmmeta.hrefs import TOPLINK, check_toplink, package_relpath
from mkosi_initrd_builder.util.errors import SettingError, StagingError, UnsafeHrefError
from mkosi_initrd_builder.util.fsutil import hash_bytes, hash_file, is_within, link_or_copy


@dataclasses.dataclass(frozen=True)
class DirectorySource(Source):
    kind = "directory"
    schemes = ("file://", "a directory")

    location: str
    directory: Path

    @classmethod
    def parse(cls, text: str) -> Optional["DirectorySource"]:
        parts = urlsplit(text)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise StagingError(f"source {text!r}: file:// URLs on another host are not supported")
            return cls(text, Path(unquote(parts.path)).absolute())
        if parts.scheme and not Path(text).exists():
            return None  # a URL of some other kind
        return cls(text, Path(text).absolute())

    def __str__(self) -> str:
        return str(self.directory)

    @property
    def koji_path(self) -> str:
        return str(self.directory)

    def check_destination(self, dest: Path) -> None:
        if not self.directory.is_dir():
            raise StagingError(f"source {self.directory}: not a directory")
        # Resolved, so a symlink on either path cannot hide that one holds the other.
        real_dest, real_source = Path(os.path.realpath(dest)), Path(os.path.realpath(self.directory))
        if is_within(real_dest, real_source) or is_within(real_source, real_dest):
            shown = dest if real_dest == dest else f"{dest} (really {real_dest})"
            raise SettingError("dest", f"{shown} and the source {self.directory} must not contain each other")

    def load_metadata(self, http: HttpClient, work: Path, *, filelists: bool) -> SourceMetadata:
        repo = open_repository(self.directory, with_files=False)
        repomd = (self.directory / "repodata" / "repomd.xml").read_bytes()
        rpmlist_file = self.directory / RPMLIST
        rpmlist = read_rpmlist(rpmlist_file.read_bytes() if rpmlist_file.is_file() else None, str(rpmlist_file))
        return SourceMetadata(self, self.directory, hash_bytes(repomd), repo.revision, repo.packages,
                              rpmlist or {}, rpmlist is not None)

    def metadata_stamp(self, metadata: SourceMetadata) -> list[Any]:
        """dnf reads this directory's metadata files as they are, unchecked here: their size and mtime
        too, so one rewritten behind repomd.xml's back is seen."""
        stamp = []
        for f in sorted((metadata.directory / "repodata").iterdir()):
            st = f.stat()
            stamp.append([f.name, st.st_size, st.st_mtime_ns])
        return stamp

    def path_of(self, href: str, location_base: str = "") -> Path:
        """The file of a package, after checking that the href and every symlink on the way stay inside
        the repository (or, through toplink, inside koji's package trees)."""
        if location_base:
            raise UnsafeHrefError(f"{location_base} {href}", "has an xml:base; a directory source serves only "
                                                             "relative paths")
        rel = package_relpath(href)
        repo = self.directory
        real = Path(os.path.realpath(repo.joinpath(*rel.parts)))
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

    def locate(self, package: RepoPackage) -> PackageLocation:
        real = self.path_of(package.href, package.location_base)
        return PackageLocation(str(self.directory / package.href), str(real), package_relpath(package.href).name)

    def fetch(self, location: PackageLocation, target: Path, algorithms: Sequence[str], http: HttpClient,
              package: RepoPackage) -> Fetched:
        try:
            linked = link_or_copy(Path(location.address), target)
        except FileNotFoundError:
            raise StagingError(f"{package.nevra}: the repository names {location.origin}, which does not exist") from None
        if not linked:
            os.chmod(target, 0o444)
        return Fetched(Via.link if linked else Via.copy, target.stat().st_size, hash_file(target, algorithms))
