"""Bumping a rendered spec: read back what it was rendered from, and plan the next build counter and
changelog entry for a new kernel or changed variant files, refusing a bump that would not upgrade."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.building.variants import VariantSpec
from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.spec.inputs import PACKAGE_NAME, KernelDescription, release_for, variant_sha256
from mkosi_initrd_builder.util.errors import BumpError, SpecError


@dataclasses.dataclass(frozen=True)
class RenderedSpec:
    """What bump needs from a spec rendered earlier."""

    path: Path
    kernel_uname: str
    kernel: NEVRA  # name and EVR of the kernel package it was rendered for (no arch)
    build_counter: int
    version: str
    release: str
    variant_sha256: dict[str, str]
    changelog: str

    @property
    def nevra(self) -> NEVRA:
        return NEVRA(PACKAGE_NAME, 0, self.version, self.release, "")


def read_spec(path: Path) -> RenderedSpec:
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e.strerror or e}") from None
    globals_ = dict(re.findall(r"^%global\s+(\w+)\s+(.*?)\s*$", text, re.MULTILINE))
    tags = dict(re.findall(r"^(Version|Release):\s*(\S+)\s*$", text, re.MULTILINE))
    wanted = ("kernel_uname", "kernel_name", "kernel_evr", "build_counter")
    missing = [k for k in wanted if k not in globals_] + [t for t in ("Version", "Release") if t not in tags]
    if missing or "%changelog" not in text:
        raise SpecError(f"{path}: not a spec rendered by mkosi-initrd-build "
                        f"(missing: {', '.join(missing) or '%changelog'})",
                        hint="render one with `mkosi-initrd-build spec --output FILE`")
    try:
        kernel = NEVRA.with_evr(globals_["kernel_name"], globals_["kernel_evr"])
        counter = int(globals_["build_counter"])
    except ValueError as e:
        raise SpecError(f"{path}: {e}") from None
    sums = dict((name, digest) for digest, name in
                re.findall(r"^([0-9a-f]{64})  variants/(\S+)\.toml$", text, re.MULTILINE))
    changelog = text.split("%changelog", 1)[1].strip("\n")
    return RenderedSpec(path, globals_["kernel_uname"], kernel, counter,
                        tags["Version"], tags["Release"], sums, changelog)


@dataclasses.dataclass(frozen=True)
class Bump:
    build_counter: int
    entry_lines: tuple[str, ...]


def plan_bump(current: RenderedSpec, kernel: KernelDescription, variants: Sequence[VariantSpec],
              message: Optional[str] = None) -> Bump:
    """The next build counter and what the changelog entry says; refuse a bump that would not make
    the package newer, or one with nothing to say."""
    new_kernel = kernel.image_package.nevra
    same_kernel = new_kernel.name == current.kernel.name and new_kernel.compare_evr(current.kernel) == 0
    counter = current.build_counter + 1 if same_kernel else 1
    new = NEVRA(PACKAGE_NAME, 0, new_kernel.version, release_for(new_kernel, counter), "")
    if new.compare_evr(current.nevra) <= 0:
        raise BumpError(f"kernel {new_kernel.name}-{new_kernel.evr()} ({kernel.uname}) is older than "
                        f"{current.kernel.name}-{current.kernel.evr()} ({current.kernel_uname}) in "
                        f"{current.path}: {PACKAGE_NAME} {new.evr()} would not upgrade {current.nevra.evr()}")
    lines = []
    if not same_kernel:
        lines.append(f"Kernel {new_kernel.name} {new_kernel.evr()} ({kernel.uname})")
    now = {v.name: variant_sha256(v) for v in variants}
    changed = sorted(n for n in now if n in current.variant_sha256 and now[n] != current.variant_sha256[n])
    added = sorted(set(now) - set(current.variant_sha256))
    removed = sorted(set(current.variant_sha256) - set(now))
    for label, names in (("Variants changed", changed), ("Variants added", added), ("Variants removed", removed)):
        if names:
            lines.append(f"{label}: {', '.join(names)}")
    if message:
        lines.append(message)
    if not lines:
        raise BumpError(f"nothing to bump in {current.path}: kernel {kernel.uname} and the variant files "
                        "are those it was rendered from",
                        hint="pass --message to rebuild anyway, e.g. for a new mkosi")
    return Bump(counter, tuple(lines))


def first_entry_lines(kernel: KernelDescription, variants: Sequence[VariantSpec]) -> tuple[str, ...]:
    k = kernel.image_package.nevra
    return (f"Kernel {k.name} {k.evr()} ({kernel.uname}); variants: {', '.join(sorted(v.name for v in variants))}",)
