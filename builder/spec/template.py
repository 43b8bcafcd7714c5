"""The spec template engine: spec/mkosi-initrd-initrd.spec.in expanded for one SpecInputs ("#@"
comments dropped, "#@foreach-variant" blocks repeated, @NAME@ placeholders filled), and the spec
written beside its Sources."""

from __future__ import annotations

import dataclasses
import datetime
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.building.formats import formats_of
from mkosi_initrd_builder.building.formats.uki import ADDONS_DIR, UKI
from mkosi_initrd_builder.building.manifest import MANIFEST_NAME
from mkosi_initrd_builder.building.variants import VariantSpec
from mkosi_initrd_builder.spec.inputs import (BUILDER_PACKAGE, MKOSI_PACKAGE, SpecInputs, check_variants,
                                              release_for, variant_sha256)
from mkosi_initrd_builder.util.errors import SpecError
from mkosi_initrd_builder.util.fsutil import atomic_write
from mkosi_initrd_builder.util.resources import kernel_install_dir, spec_template


# Sources 1-3, in the template's order; the variant files follow from VARIANT_SOURCE_BASE on.
KERNEL_INSTALL_SOURCES = ("52-mkosi-initrd-prebuilt.install", "60-mkosi-initrd-prebuilt.conf",
                          "mkosi-initrd-prebuilt.conf")
VARIANT_SOURCE_BASE = 100
DESCRIPTION_WIDTH = 79  # rpmlint: description-line-too-long
PLACEHOLDER_RE = re.compile(r"@([A-Z][A-Z0-9_]*)@")
GENERATED_NOTICE = ("Rendered by `mkosi-initrd-build spec` from spec/mkosi-initrd-initrd.spec.in;\n"
                    "# update it with `mkosi-initrd-build bump`, not by hand.")


@dataclasses.dataclass(frozen=True)
class ChangelogEntry:
    date: datetime.date
    packager: str
    evr: str
    lines: tuple[str, ...]

    def render(self) -> str:
        head = f"* {self.date.strftime('%a %b %d %Y')} {self.packager} - {self.evr}"
        items = []
        for line in self.lines:
            wrapped = textwrap.wrap(line, DESCRIPTION_WIDTH - 2, break_long_words=False,
                                    break_on_hyphens=False) or [""]
            items.append("- " + "\n  ".join(wrapped))
        return escape_percent("\n".join([head, *items]))


def escape_percent(text: str) -> str:
    return text.replace("%", "%%")


def wrap_description(text: str) -> str:
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip())]
    return "\n\n".join(textwrap.fill(p, DESCRIPTION_WIDTH, break_long_words=False, break_on_hyphens=False)
                       for p in paragraphs if p)


def _buildrequires(names: Iterable[str]) -> str:
    return "\n".join(f"BuildRequires:  {n}" for n in names)


def render_spec(inputs: SpecInputs, template: Optional[str] = None) -> str:
    text = spec_template().read_text() if template is None else template
    variants = sorted(inputs.variants, key=lambda v: v.name)
    check_variants(variants)
    kernel = inputs.kernel
    tools = [MKOSI_PACKAGE, BUILDER_PACKAGE, *inputs.format_packages]
    values = {
        "GENERATED_NOTICE": GENERATED_NOTICE,
        "KERNEL_UNAME": kernel.uname,
        "KERNEL_NAME": kernel.image_package.nevra.name,
        "KERNEL_EVR": kernel.image_package.nevra.evr(),
        "BUILD_COUNTER": str(inputs.build_counter),
        "VERSION": inputs.version,
        "RELEASE": inputs.release,
        "ARCH": kernel.image_package.nevra.arch,
        "KERNEL_BUILDREQUIRES": _buildrequires(f"{p.nevra.name} = {p.nevra.evr()}" for p in kernel.packages),
        "TOOL_BUILDREQUIRES": _buildrequires(tools),
        "IMAGE_BUILDREQUIRES": _buildrequires(inputs.image_packages),
        "CHANGELOG": inputs.changelog.strip(),
    }
    per_variant = [variant_values(v, i, inputs) for i, v in enumerate(variants)]
    return expand_template(text, values, per_variant)


def earlier_builds(inputs: SpecInputs) -> list[str]:
    """EVRs of the earlier builds for the same kernel (counter 1 .. N-1)."""
    kernel = inputs.kernel.image_package.nevra
    return [f"{kernel.version}-{release_for(kernel, n)}" for n in range(1, inputs.build_counter)]


def sign_uki(variant: VariantSpec) -> str:
    """The %build lines that sign the variant's UKI (and its addons) in place with %pesign, kernel.spec's way; empty
    (the line is dropped) for a variant without a UKI."""
    if UKI not in formats_of(variant.formats):
        return ""
    lines = []
    # The UKI and its addons: under Secure Boot the stub loads only addons the firmware accepts.
    for pe in [f"out/{variant.name}/{UKI.file_name}",
               *(f"out/{variant.name}/{ADDONS_DIR}/{a.file_name}" for a in variant.uki_addons)]:
        lines += [
            f"%pesign -s -i {pe} -o {pe}.signed -a %{{secureboot_ca_0}} -c %{{secureboot_key_0}} -n %{{pesign_name_0}}",
            f"test -s {pe}.signed || {{ echo 'error: %%pesign wrote no {pe}.signed' >&2; exit 1; }}",
            f"mv -f {pe}.signed {pe}",
        ]
    return "\n".join(lines)


def variant_values(variant: VariantSpec, index: int, inputs: SpecInputs) -> dict[str, str]:
    outputs = [f.file_name for f in formats_of(variant.formats)] + [MANIFEST_NAME]
    obsoletes = ""
    if earlier := earlier_builds(inputs):
        # Install-only packages of the same kernel would be installed side by side and their files
        # collide: an earlier build for this kernel is replaced instead (dnf erases what is obsoleted).
        obsoletes = "\n".join(["# Earlier builds for this same kernel install the same files: replace them.",
                               *(f"Obsoletes:      %{{name}}-{variant.name} = {e}" for e in earlier)])
    return {
        "VARIANT_SIGN": sign_uki(variant),
        "VARIANT_OBSOLETES": obsoletes,
        "VARIANT": variant.name,
        "SOURCE_NUMBER": str(VARIANT_SOURCE_BASE + index),
        "VARIANT_SUMMARY": escape_percent(variant.summary),
        "VARIANT_DESCRIPTION": escape_percent(wrap_description(variant.description)),
        "VARIANT_SHA256": variant_sha256(variant),
        "VARIANT_OUTPUTS": " ".join(f"out/{variant.name}/{name}" for name in outputs),
        "VARIANT_ADDONS_INSTALL": addons_install(variant),
        "VARIANT_FILES": "\n".join([f"%{{imagedir}}/{variant.name}/{name}" for name in sorted(outputs)]
                                   + addon_files(variant)),
    }


def addons_install(variant: VariantSpec) -> str:
    """%install lines for the UKI's addons (nothing when the variant has none)."""
    if not variant.uki_addons:
        return "# (no UKI addons)"
    dest = f"%{{buildroot}}%{{imagedir}}/{variant.name}/{ADDONS_DIR}"
    files = " ".join(f"out/{variant.name}/{ADDONS_DIR}/{a.file_name}" for a in variant.uki_addons)
    return f"install -d {dest}\ninstall -p -m 0644 {files} {dest}/"


def addon_files(variant: VariantSpec) -> list[str]:
    """%files lines for the UKI's addons."""
    if not variant.uki_addons:
        return []
    where = f"%{{imagedir}}/{variant.name}/{ADDONS_DIR}"
    return [f"%dir {where}", *(f"{where}/{a.file_name}" for a in sorted(variant.uki_addons, key=lambda a: a.name))]


def expand_template(text: str, values: Mapping[str, str], per_variant: Sequence[Mapping[str, str]]) -> str:
    """Drop "#@" comment lines, repeat "#@foreach-variant" blocks, then replace @NAME@ placeholders
    (values are inserted as they are: a placeholder inside a value is not expanded again)."""
    out: list[Optional[str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == "#@foreach-variant":
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "#@end"), None)
            if end is None:
                raise SpecError(f"template line {i + 1}: #@foreach-variant without #@end")
            block = lines[i + 1:end]
            for vals in per_variant:
                out += [_substitute(b, {**values, **vals}, i + 2 + k) for k, b in enumerate(block)]
            i = end + 1
            continue
        if line.strip() == "#@end":
            raise SpecError(f"template line {i + 1}: #@end without #@foreach-variant")
        if not line.startswith("#@"):
            out.append(_substitute(line, values, i + 1))
        i += 1
    return "\n".join(line for line in out if line is not None).rstrip("\n") + "\n"


def _substitute(line: str, values: Mapping[str, str], lineno: int) -> Optional[str]:
    """The line with its placeholders replaced; None (drop it) when it held only a placeholder
    whose value is empty."""
    m = PLACEHOLDER_RE.fullmatch(line.strip())
    if m and m.group(1) in values and not values[m.group(1)]:
        return None

    def repl(m: re.Match) -> str:
        if m.group(1) not in values:
            raise SpecError(f"template line {lineno}: unknown placeholder @{m.group(1)}@")
        return values[m.group(1)]
    return PLACEHOLDER_RE.sub(repl, line)


def write_spec(text: str, path: Path, variants: Sequence[VariantSpec]) -> list[Path]:
    """Write the spec and its Sources (the kernel-install files, the variant files) into its
    directory, each atomically; returns the files written."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecError(f"{directory}: cannot create: {e.strerror or e}") from None
    written = []
    sources = [(kernel_install_dir() / name, name) for name in KERNEL_INSTALL_SOURCES]
    sources += [(v.path, f"{v.name}.toml") for v in sorted(variants, key=lambda v: v.name)]
    for src, name in sources:
        mode = 0o755 if name.endswith(".install") else 0o644
        atomic_write(directory / name, src.read_bytes(), mode)
        written.append(directory / name)
    atomic_write(path, text)
    written.append(path)
    return written
