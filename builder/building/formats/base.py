"""What an output format is: one object that owns its file, tools, build step, manifest entry and checks.

The builder, the spec, verify and inspect iterate over the registry (formats/__init__.py) and
never name a format; adding one is a module here and a registry entry."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from mkosi_initrd_builder.building.secureboot import SbatIdentity, SigningKey
from mkosi_initrd_builder.checking.cpio import CpioEntry
from mkosi_initrd_builder.rpmmeta.repo import Repository
from mkosi_initrd_builder.util.fsutil import sha256_file

if TYPE_CHECKING:  # variants.py imports the registry for its OutputFormat enum
    from mkosi_initrd_builder.building.variants import VariantSpec
    from mkosi_initrd_builder.checking.qemu import BootProbe, SecureBootFirmware


@dataclasses.dataclass(frozen=True)
class Check:
    """One verification result, as `mkosi-initrd-build verify` prints it."""

    name: str
    ok: bool
    detail: str = ""


def file_matches(path: Path, meta: Mapping[str, Any]) -> Check:
    """Whether `path` has the sha256 and size its manifest entry records."""
    digest, size = sha256_file(path), path.stat().st_size
    ok = digest == meta["sha256"] and size == meta["size"]
    return Check(f"{path.name} matches manifest", ok,
                 "" if ok else f"sha256 {digest} size {size} vs {meta['sha256']} {meta['size']}")


@dataclasses.dataclass(frozen=True)
class BuildInputs:
    """What every variant of one build shares: the repository, the kernel, a work directory, who ships
    the images (the UKI's SBAT entry) and the Secure Boot key of a local build that signs."""

    repo: Repository
    kernel_version: str
    kernel_image: Path
    work: Path
    sbat: SbatIdentity
    signing: Optional[SigningKey] = None


@dataclasses.dataclass(frozen=True)
class VariantImage:
    """One variant's image as mkosi made it; a format's build step writes `final/<file_name>`."""

    variant: "VariantSpec"
    cpio: bytes                         # mkosi's archive, uncompressed
    entries: Mapping[str, CpioEntry]    # its contents, read once
    final: Path                         # the directory that becomes OUTPUT/<variant>
    work: Path                          # the variant's scratch directory


@dataclasses.dataclass(frozen=True)
class BuiltVariant:
    """A built variant as verify, inspect and boot see it: OUTPUT/<variant> and its manifest."""

    directory: Path
    manifest: Mapping[str, Any]

    @property
    def kernel_version(self) -> str:
        return self.manifest["kernel"]["version"]

    def output(self, fmt: "Format") -> Path:
        return self.directory / fmt.file_name


@dataclasses.dataclass(frozen=True)
class Inspection:
    """A format's part of `inspect`: JSON keys and the lines of the text form."""

    facts: Mapping[str, Any]
    lines: tuple[str, ...]


class Format(abc.ABC):
    """One output format. Subclasses are stateless singletons; per-build state is what prepare()
    returns, handed back to build() and manifest_entry()."""

    file_name: str                  # OUTPUT/<variant>/<file_name>
    tools: tuple[str, ...] = ()          # commands its build step runs; their versions go into the manifest
    tool_packages: tuple[str, ...] = ()  # the (Fedora) packages of those commands: the spec BuildRequires them

    def spec_packages(self, repo: Repository) -> tuple[str, ...]:
        """Packages of `repo` the build step takes content from (the spec BuildRequires them too)."""
        return ()

    def prepare(self, inputs: BuildInputs) -> Any:
        """Once per build, before any variant: extract what every variant's build step needs."""
        return None

    @abc.abstractmethod
    def build(self, image: VariantImage, inputs: BuildInputs, prepared: Any) -> None:
        """Write image.final / file_name (a temporary name and a rename; final/ is renamed into place
        only once every format is done)."""

    def input_facts(self, prepared: Any) -> Mapping[str, Any]:
        """Settings of the build step beyond the variant, the repository and the tools (those are hashed
        already): they go into the manifest's inputs hash."""
        return {}

    def manifest_entry(self, prepared: Any, output: Path) -> Mapping[str, Any]:
        """Facts recorded next to the output's sha256 and size in manifest["outputs"]; `output` is the
        file as built."""
        return {}

    def matches_manifest(self, path: Path, meta: Mapping[str, Any]) -> Check:
        """Whether the file is the one the manifest describes."""
        return file_matches(path, meta)

    def verify(self, built: BuiltVariant) -> Sequence[Check]:
        """Checks of the output's content beyond its sha256 (the caller checks that)."""
        return ()

    def inspect(self, built: BuiltVariant, top: int) -> Optional[Inspection]:
        return None

    def boot_kernel(self, built: BuiltVariant, dest: Path) -> Optional[Path]:
        """A kernel image this output carries (written under `dest`), for boots that need one."""
        return None

    def boot(self, built: BuiltVariant, kernel: Optional[Path], probe: "BootProbe", timeout: float,
             secure_boot: Optional["SecureBootFirmware"] = None) -> Optional[Check]:
        """Boot the output in QEMU and report whether `probe` saw the image's init come up; an output the
        firmware loads does so with `secure_boot` when it is given."""
        return None
