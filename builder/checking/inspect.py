"""What is inside a built variant: packages, kernel modules, largest files, UKI sections."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mkosi_initrd_builder.checking.cpio import read_cpio
from mkosi_initrd_builder.building.manifest import INITRD_NAME, UKI_NAME, load_manifest
from mkosi_initrd_builder.building.uki import uki_sections


@dataclasses.dataclass(frozen=True)
class Inspection:
    variant: str
    kernel_version: str
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    largest_files: tuple[tuple[str, int], ...]
    entries: int
    uncompressed_size: int
    outputs: dict[str, int]
    uki_sections: tuple[tuple[str, int], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "kernel-version": self.kernel_version,
            "packages": list(self.packages),
            "kernel-modules": list(self.modules),
            "largest-files": [[n, s] for n, s in self.largest_files],
            "entries": self.entries,
            "uncompressed-size": self.uncompressed_size,
            "outputs": self.outputs,
            "uki-sections": [[n, s] for n, s in self.uki_sections],
        }


def inspect_variant(directory: Path, top: int = 15) -> Inspection:
    manifest = load_manifest(directory)
    entries = read_cpio(directory / INITRD_NAME)
    files = [e for e in entries if e.is_file]
    modules = tuple(sorted(e.name.rsplit("/", 1)[-1] for e in files if "/modules/" in e.name and ".ko" in e.name))
    largest = tuple(sorted(((e.name, e.size) for e in files), key=lambda t: (-t[1], t[0]))[:top])
    sections: tuple[tuple[str, int], ...] = ()
    if (directory / UKI_NAME).exists():
        sections = tuple((n, len(d)) for n, d in uki_sections(directory / UKI_NAME).items())
    outputs = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    return Inspection(
        variant=manifest["variant"], kernel_version=manifest["kernel"]["version"],
        packages=tuple(manifest["packages"]), modules=modules, largest_files=largest,
        entries=len(entries), uncompressed_size=sum(e.size for e in files), outputs=outputs,
        uki_sections=sections,
    )


def format_inspection(i: Inspection) -> str:
    out = [f"variant {i.variant} (kernel {i.kernel_version})", "outputs:"]
    out += [f"  {n:20} {s:>12,} B" for n, s in i.outputs.items()]
    out.append(f"initrd: {i.entries} entries, {i.uncompressed_size:,} B of files uncompressed")
    out.append(f"packages ({len(i.packages)}):")
    out += [f"  {p}" for p in i.packages]
    out.append(f"kernel modules ({len(i.modules)}):")
    out += [f"  {m}" for m in i.modules]
    out.append("largest files:")
    out += [f"  {s:>12,} B  /{n}" for n, s in i.largest_files]
    if i.uki_sections:
        out.append("UKI sections:")
        out += [f"  {n:10} {s:>12,} B" for n, s in i.uki_sections]
    return "\n".join(out)
