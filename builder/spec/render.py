"""The RPM spec of the prebuilt images: rendered from spec/mkosi-initrd-initrd.spec.in for one kernel
and the variant files, read back, and bumped for a new kernel or new variants."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import tempfile
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.util.errors import BumpError, KernelNotFoundError, PackageMissingError, SpecError, VariantError
from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.util.fsutil import atomic_write, sha256_file
from mkosi_initrd_builder.building.formats import formats_of
from mkosi_initrd_builder.building.manifest import MANIFEST_NAME
from mkosi_initrd_builder.building.mkosi_config import MkosiPaths, render_variant
from mkosi_initrd_builder.rpmmeta.repo import Repository
from mkosi_initrd_builder.util.resources import kernel_install_dir, spec_template
from mkosi_initrd_builder.util.run import run
from mkosi_initrd_builder.util.tools import find_tool
from mkosi_initrd_builder.building.variants import Base, VariantSpec

PACKAGE_NAME = "mkosi-initrd-initrd"
# Sources 1-3, in the template's order; the variant files follow from VARIANT_SOURCE_BASE on.
KERNEL_INSTALL_SOURCES = ("52-mkosi-initrd-prebuilt.install", "60-mkosi-initrd-prebuilt.conf",
                          "mkosi-initrd-prebuilt.conf")
VARIANT_SOURCE_BASE = 100
# Subpackage names the spec itself uses; a variant may not take them.
RESERVED_VARIANT_NAMES = frozenset({"common"})

# Build tools, by their Fedora package names.
BUILDER_PACKAGE = "mkosi-initrd-builder"
MKOSI_PACKAGE = "mkosi"
# What mkosi installs into every Fedora image whatever the configuration says
# (mkosi/distributions/fedora.py, Installer.install()); it is not in `mkosi summary`.
MKOSI_IMPLICIT_PACKAGES = ("basesystem",)

SUMMARY_MAX = 79      # rpmlint: summary-too-long
DESCRIPTION_WIDTH = 79  # rpmlint: description-line-too-long
PLACEHOLDER_RE = re.compile(r"@([A-Z][A-Z0-9_]*)@")
GENERATED_NOTICE = ("Rendered by `mkosi-initrd-build spec` from spec/mkosi-initrd-initrd.spec.in;\n"
                    "# update it with `mkosi-initrd-build bump`, not by hand.")


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


def escape_percent(text: str) -> str:
    return text.replace("%", "%%")


def wrap_description(text: str) -> str:
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip())]
    return "\n\n".join(textwrap.fill(p, DESCRIPTION_WIDTH, break_long_words=False, break_on_hyphens=False)
                       for p in paragraphs if p)


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
        paths = MkosiPaths(repo=root / "repo", kernel_tree=root / "kernel", sandbox_tree=root / "sandbox",
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


def variant_values(variant: VariantSpec, index: int, inputs: SpecInputs) -> dict[str, str]:
    outputs = [f.file_name for f in formats_of(variant.formats)] + [MANIFEST_NAME]
    obsoletes = ""
    if earlier := earlier_builds(inputs):
        # Install-only packages of the same kernel would be installed side by side and their files
        # collide: an earlier build for this kernel is replaced instead (dnf erases what is obsoleted).
        obsoletes = "\n".join(["# Earlier builds for this same kernel install the same files: replace them.",
                               *(f"Obsoletes:      %{{name}}-{variant.name} = {e}" for e in earlier)])
    return {
        "VARIANT_OBSOLETES": obsoletes,
        "VARIANT": variant.name,
        "SOURCE_NUMBER": str(VARIANT_SOURCE_BASE + index),
        "VARIANT_SUMMARY": escape_percent(variant.summary),
        "VARIANT_DESCRIPTION": escape_percent(wrap_description(variant.description)),
        "VARIANT_SHA256": variant_sha256(variant),
        "VARIANT_OUTPUTS": " ".join(f"out/{variant.name}/{name}" for name in outputs),
        "VARIANT_FILES": "\n".join(f"%{{imagedir}}/{variant.name}/{name}" for name in sorted(outputs)),
    }


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
