"""What is inside a built variant: the manifest's facts, then each output format's own view."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mkosi_initrd_builder.building.formats import formats_in
from mkosi_initrd_builder.building.formats.base import BuiltVariant
from mkosi_initrd_builder.building.formats.base import Inspection as FormatInspection
from mkosi_initrd_builder.building.manifest import load_manifest


@dataclasses.dataclass(frozen=True)
class Inspection:
    variant: str
    kernel_version: str
    packages: tuple[str, ...]
    outputs: dict[str, int]
    formats: tuple[FormatInspection, ...]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "variant": self.variant,
            "kernel-version": self.kernel_version,
            "packages": list(self.packages),
            "outputs": self.outputs,
        }
        for f in self.formats:
            data.update(f.facts)
        return data


def inspect_variant(directory: Path, top: int = 15) -> Inspection:
    built = BuiltVariant(directory, load_manifest(directory))
    parts = tuple(i for f in formats_in(built.manifest["outputs"]) if (i := f.inspect(built, top)) is not None)
    outputs = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    return Inspection(variant=built.manifest["variant"], kernel_version=built.kernel_version,
                      packages=tuple(built.manifest["packages"]), outputs=outputs, formats=parts)


def format_inspection(i: Inspection) -> str:
    out = [f"variant {i.variant} (kernel {i.kernel_version})", "outputs:"]
    out += [f"  {n:20} {s:>12,} B" for n, s in i.outputs.items()]
    out.append(f"packages ({len(i.packages)}):")
    out += [f"  {p}" for p in i.packages]
    for f in i.formats:
        out += f.lines
    return "\n".join(out)
