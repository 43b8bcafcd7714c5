"""The identity of an RPM package (name, epoch, version, release, arch) as one value, ordered the way
rpm orders packages: by rpm's own labelCompare (python3-rpm), never by a re-implementation of it."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

import rpm

# What rpmbuild accepts in a Name: tag once macros are expanded (rpm's build/parsePreamble.c:
# alphanumerics and "._+-", not starting with punctuation other than "_"). A name is also a file
# name and a word of dnf's and mkosi's command lines: no space, comma, slash, quote or "%".
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")


@functools.total_ordering
@dataclasses.dataclass(frozen=True)
class NEVRA:
    """One exact package. Equality is field by field; ordering is by name, then rpm's EVR comparison,
    then arch, so two values rpm calls the same version ("1.0" and "1.00") are neither < nor >."""

    name: str
    epoch: int
    version: str
    release: str
    arch: str

    # --- constructors ---------------------------------------------------------------------------

    @classmethod
    def of(cls, name: str, epoch: Any, version: str, release: str, arch: str) -> "NEVRA":
        """From fields as the sources spell them: repodata, dnf, koji and rpm write the empty epoch as
        "", "0", None or 0; all mean epoch 0."""
        return cls(str(name), int(epoch or 0), str(version), str(release), str(arch))

    @classmethod
    def from_header(cls, header: "rpm.hdr") -> "NEVRA":
        """From a package header read by rpm (a source package has no arch of its own: "src")."""
        def text(tag: int) -> str:
            value = header[tag]
            return value.decode() if isinstance(value, bytes) else str(value or "")
        arch = "src" if header[rpm.RPMTAG_SOURCEPACKAGE] else text(rpm.RPMTAG_ARCH)
        return cls.of(text(rpm.RPMTAG_NAME), header[rpm.RPMTAG_EPOCHNUM], text(rpm.RPMTAG_VERSION),
                      text(rpm.RPMTAG_RELEASE), arch)

    @classmethod
    def from_koji(cls, info: Mapping[str, Any]) -> "NEVRA":
        """From a koji rpminfo record (getPackageList(), rpmlist.jsonl): epoch None when unset."""
        return cls.of(info["name"], info.get("epoch"), info["version"], info["release"], info["arch"])

    @classmethod
    def with_evr(cls, name: str, evr: str, arch: str = "") -> "NEVRA":
        """From a name and an '[E:]V-R' string (the release is what follows the last dash); ValueError
        for anything else."""
        epoch, colon, rest = evr.partition(":")
        if not colon:
            epoch, rest = "0", evr
        version, dash, release = rest.rpartition("-")
        if not dash or not version or not release or not epoch.isdigit():
            raise ValueError(f"{evr!r} is not an [epoch:]version-release")
        return cls(name, int(epoch), version, release, arch)

    # --- string forms ---------------------------------------------------------------------------

    def evr(self) -> str:
        """'[E:]V-R', the epoch only when it is not 0 (as rpm -q --qf '%{EVR}' prints it)."""
        return (f"{self.epoch}:" if self.epoch else "") + f"{self.version}-{self.release}"

    def nvr(self) -> str:
        return f"{self.name}-{self.version}-{self.release}"

    def nvra(self) -> str:
        """How koji names a package (its rpmlist.jsonl, its file names): no epoch."""
        return f"{self.nvr()}.{self.arch}"

    def file_name(self) -> str:
        """The file name rpmbuild gives the package."""
        return f"{self.nvra()}.rpm"

    def __str__(self) -> str:
        """'N-[E:]V-R.A', as rpm -q --qf '%{NEVRA}' prints it."""
        return f"{self.name}-{self.evr()}.{self.arch}"

    # --- order ----------------------------------------------------------------------------------

    def compare_evr(self, other: "NEVRA") -> int:
        """-1, 0 or 1 as this package's epoch:version-release is older than, the same as or newer than
        the other's, by rpm's rules (tilde before anything, caret after the end, epochs first)."""
        return rpm.labelCompare((str(self.epoch), self.version, self.release),
                                (str(other.epoch), other.version, other.release))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, NEVRA):
            return NotImplemented
        if self.name != other.name:
            return self.name < other.name
        return (self.compare_evr(other), self.arch) < (0, other.arch)
