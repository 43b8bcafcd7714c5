"""What the spec of the prebuilt images is rendered from: the kernel build as the repository has
it, the variant files, and the package list of each image, asked from mkosi itself."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mkosi_initrd_builder.building.formats import formats_of
from mkosi_initrd_builder.building.mkosi_config import MkosiPaths, render_variant
from mkosi_initrd_builder.building.variants import Base, VariantSpec
from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.rpmmeta.repo import Repository
from mkosi_initrd_builder.util.errors import KernelNotFoundError, PackageMissingError, SpecError, VariantError
from mkosi_initrd_builder.util.fsutil import sha256_file
from mkosi_initrd_builder.util.run import run
from mkosi_initrd_builder.util.tools import find_tool


PACKAGE_NAME = "mkosi-initrd-initrd"
# Subpackage names the spec itself uses; a variant may not take them.
RESERVED_VARIANT_NAMES = frozenset({"common"})
# Build tools, by their Fedora package names.
BUILDER_PACKAGE = "mkosi-initrd-builder"
MKOSI_PACKAGE = "mkosi"
# What mkosi installs into every Fedora image whatever the configuration says
# (mkosi/distributions/fedora.py, Installer.install()); it is not in `mkosi summary`.
MKOSI_IMPLICIT_PACKAGES = ("basesystem",)
SUMMARY_MAX = 79      # rpmlint: summary-too-long


@dataclasses.dataclass(frozen=True)
class KernelPackage:
    nevra: NEVRA
    ships_image: bool  # has /usr/lib/modules/<KVER>/vmlinuz


@dataclasses.dataclass(frozen=True)
class KernelDescription:
    """One kernel build as the repository has it: its uname and the packages shipping its modules."""

    uname: str
    packages: tuple[KernelPackage, ...]

    @property
    def image_package(self) -> KernelPackage:
        return next(p for p in self.packages if p.ships_image)


def describe_kernel(repo: Repository, uname: str) -> KernelDescription:
    packages = repo.kernel_packages(uname)
    if not packages:
        raise KernelNotFoundError(uname, repo.path, repo.kernel_versions())
    image = {f"/usr/lib/modules/{uname}/vmlinuz", f"/lib/modules/{uname}/vmlinuz"}
    described = tuple(KernelPackage(p.nevra, bool(image & set(p.files)))
                      for p in sorted(packages, key=lambda p: p.nevra.name))
    shipping = [p for p in described if p.ships_image]
    if len(shipping) != 1:
        which = ", ".join(f"{p.nevra.name}-{p.nevra.evr()}" for p in (shipping or described))
        raise SpecError(f"repository {repo.path}: expected exactly one package shipping "
                        f"/usr/lib/modules/{uname}/vmlinuz, found {len(shipping)} ({which})")
    return KernelDescription(uname, described)


@dataclasses.dataclass(frozen=True)
class SpecInputs:
    """Everything a rendered spec depends on; render_spec() is a pure function of it."""

    kernel: KernelDescription
    variants: tuple[VariantSpec, ...]
    image_packages: tuple[str, ...]  # sorted union of what goes into the images
    format_packages: tuple[str, ...]  # what the variants' output formats need (ukify, the EFI stub...)
    build_counter: int
    changelog: str                   # the %changelog body, newest entry first

    @property
    def version(self) -> str:
        return self.kernel.image_package.nevra.version

    @property
    def release(self) -> str:
        return release_for(self.kernel.image_package.nevra, self.build_counter)


def release_for(kernel: NEVRA, counter: int) -> str:
    """The images' Release for a kernel package: its release, '^', the build counter (spec/README.md)."""
    return f"{kernel.release}^{counter}"


def variant_sha256(variant: VariantSpec) -> str:
    return sha256_file(variant.path)


def check_variants(variants: Sequence[VariantSpec]) -> None:
    for v in variants:
        if v.name in RESERVED_VARIANT_NAMES:
            raise VariantError(v.path, f"variant name {v.name!r} is taken by the subpackage "
                                       f"{PACKAGE_NAME}-{v.name} of the spec itself")
        if len(v.summary) > SUMMARY_MAX:
            raise VariantError(v.path, f"longer than {SUMMARY_MAX} characters (it becomes an RPM Summary)",
                               key="summary")


def base_packages(variant: VariantSpec, release: str) -> tuple[str, ...]:
    """The package list of mkosi's own initrd configuration (and the variant's profiles), asked from
    mkosi itself with `mkosi summary` on the variant's rendered configuration."""
    if variant.base is not Base.mkosi_initrd:
        return ()
    with tempfile.TemporaryDirectory(prefix="mkosi-initrd-spec-") as tmp:
        root = Path(tmp)
        paths = MkosiPaths(repo=root / "repo", kernel_tree=root / "kernel", files_tree=root / "files", sandbox_tree=root / "sandbox",
                           package_cache=root / "cache", workspace=root / "workspace", output_dir=root / "out",
                           config_dir=root / "config")
        for p in dataclasses.asdict(paths).values():
            Path(p).mkdir()
        rendered = render_variant(variant, release=release, source_date_epoch=0, paths=paths)
        rendered.write(paths.config_dir)
        out = run([find_tool("mkosi"), *rendered.argv, "--json", "summary"], capture=True,
).stdout
    try:
        images = json.loads(out)["Images"]
        packages = [p for image in images for p in image.get("Packages", [])]
    except (ValueError, KeyError, TypeError) as e:
        raise SpecError(f"variant {variant.name}: cannot read the package list from `mkosi summary`: {e}") from None
    return tuple(dict.fromkeys(packages))


def image_packages(variants: Sequence[VariantSpec], release: str) -> tuple[str, ...]:
    names: set[str] = set(MKOSI_IMPLICIT_PACKAGES)
    for v in variants:
        names.update(v.packages)
        names.update(v.firmware_packages)
        names.update(base_packages(v, release))
    return tuple(sorted(names))


def gather_inputs(repo: Repository, kernel: KernelDescription, variants: Sequence[VariantSpec], *,
                  release: str, build_counter: int, changelog: str) -> SpecInputs:
    """Read what the spec needs from the repository and mkosi; refuse packages the repository lacks."""
    check_variants(variants)
    packages = image_packages(variants, release)
    wanted = formats_of(k for v in variants for k in v.formats)
    inputs = tuple(dict.fromkeys(p for f in wanted for p in f.spec_packages(repo)))
    # The formats' tools are BuildRequires like mkosi, not necessarily in the repository the images
    # are made from; their inputs (the EFI stub) must be.
    format_packages = tuple(dict.fromkeys([*(p for f in wanted for p in f.tool_packages), *inputs]))
    missing = repo.missing([*packages, *inputs])
    if missing:
        raise PackageMissingError(missing, repo.path)
    return SpecInputs(kernel, tuple(variants), packages, format_packages, build_counter, changelog)
