"""The buildroot's tools as RPMs: Debian trixie binaries repackaged under Fedora names
(buildroot.toml) with the real-content machinery (distribution.py), cached by content hash.

    python -m tests.realcontent build-buildroot      # prints the directory of the RPMs

Served from one koji repository together with the fixture RPMs, `dnf install @build` (the
`build_group` below, for comps) gives a chroot in which `rpmbuild -ba` of an ordinary spec runs;
adding mkosi, systemd-ukify, python3-pefile and kmod gives the image build its tools.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from .distribution import COMPLETE_MARKER, DEFAULT_CACHE, DistributionBuilder
from .mapping import MappingTable, load_mapping

BUILDROOT_FILE = Path(__file__).resolve().parent / "buildroot.toml"
CACHE_FORMAT = "buildroot-rpms/1"
ENTRY_PREFIX = "buildroot"
# The image build's tools, beyond the build group: what the mkosi-initrd-initrd spec's
# BuildRequires name, and what mkosi runs.
IMAGE_TOOLS = ("mkosi", "systemd-ukify", "python3-pefile", "kmod")


@dataclasses.dataclass(frozen=True)
class BuildrootRpms:
    path: Path                      # *.rpm + repodata/ (createrepo_c), of these RPMs only
    rpms: dict[str, Path]           # RPM name -> file inside path
    build_group: tuple[str, ...]    # comps `build` group: `dnf install @build` runs rpmbuild -ba
    debian: dict[str, str]          # Debian package -> version, everything repackaged
    key: str

    def version_of(self, debian_name: str) -> str:
        return self.debian[debian_name]


def load_buildroot_entry(entry: Path) -> Optional[BuildrootRpms]:
    try:
        meta = json.loads((entry / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    repo = entry / "repo"
    rpms = {name: repo / f for name, f in meta["rpms"].items()}
    if not (repo / "repodata/repomd.xml").is_file() or not all(p.is_file() for p in rpms.values()):
        return None
    table = load_mapping(BUILDROOT_FILE)
    return BuildrootRpms(repo, rpms, table.groups["build"], meta["debian"], meta["key"])


def buildroot_builder(cache_dir: Path = DEFAULT_CACHE, *, jobs: int = 2,
                      mapping: Optional[MappingTable] = None) -> DistributionBuilder:
    return DistributionBuilder(cache_dir, jobs=jobs, mapping=mapping or load_mapping(BUILDROOT_FILE),
                               cache_format=CACHE_FORMAT, entry_prefix=ENTRY_PREFIX,
                               extra_sources=("buildroot.toml", "buildroot.py"), loader=load_buildroot_entry)


def build_buildroot_rpms(cache_dir: Path = DEFAULT_CACHE, *, jobs: int = 2) -> BuildrootRpms:
    """The buildroot RPMs in `cache_dir/buildroot-<hash>/repo`, built first unless cached (built in
    a temporary directory and renamed into place, so nothing half-written is ever used)."""
    return buildroot_builder(cache_dir, jobs=jobs).build()
