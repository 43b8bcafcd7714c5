"""Render a variant into an mkosi configuration that builds offline from one local repository."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from mkosi_initrd_builder.util.errors import BuilderError
from mkosi_initrd_builder.building.variants import Base, VariantSpec

# Removed from every image: kernel images (the UKI carries its own), the kernel's build
# configuration (the builder reads it to choose firmware compression; nothing in an initrd reads
# it, and dracut leaves it out too) and caches that would make the output depend on when it was built.
REMOVE_FILES = (
    "/usr/lib/modules/*/vmlinuz*",
    "/usr/lib/modules/*/vmlinux*",
    "/usr/lib/modules/*/System.map",
    "/usr/lib/modules/*/config",
    "/var/cache",
    "/var/log",
)


@dataclasses.dataclass(frozen=True)
class MkosiPaths:
    """Where one variant's mkosi run reads and writes; all absolute."""

    repo: Path
    kernel_tree: Path
    files_tree: Path        # the variant's [files], written by write_variant_files()
    sandbox_tree: Path
    package_cache: Path
    workspace: Path
    output_dir: Path
    config_dir: Path


@dataclasses.dataclass(frozen=True)
class RenderedConfig:
    conf: str               # mkosi.conf
    dropin: str             # mkosi.conf.d/50-variant.conf: the variant's [mkosi] pass-through ("" if none)
    argv: tuple[str, ...]   # mkosi options, before the verb

    def write(self, config_dir: Path) -> None:
        (config_dir / "mkosi.conf").write_text(self.conf)
        if self.dropin:
            (config_dir / "mkosi.conf.d").mkdir(exist_ok=True)
            (config_dir / "mkosi.conf.d" / "50-variant.conf").write_text(self.dropin)


def render_variant(
    variant: VariantSpec,
    *,
    release: str,
    source_date_epoch: int,
    paths: MkosiPaths,
) -> RenderedConfig:
    """The mkosi configuration and command line for one variant.

    No ImageId=: mkosi would write IMAGE_ID=<variant> into the image's os-release, and systemd's
    hibernate-resume generator in the initrd refuses a HibernateLocation EFI variable whose
    os-release ID and IMAGE_ID differ from the initrd's own (systemd-sleep writes the host's, which
    has no IMAGE_ID on Fedora), so resume without resume= on the command line never happened. The
    initrd keeps the distribution's os-release as its packages ship it, as dracut's does.

    mkosi 25 parses an Include= where it stands, and an Include= at the top of mkosi.conf loses
    the ExtraTrees= that follow it, so the include goes last. Settings the included mkosi-initrd
    configuration also sets (format, output name, manifest format) go on the command line, which
    wins over any file; the variant's pass-through settings go into a drop-in, which mkosi reads
    after mkosi.conf and its includes, so they win over the base configuration.
    """
    sections: dict[str, list[tuple[str, tuple[str, ...]]]] = {
        "Distribution": [
            ("LocalMirror", (paths.repo.as_uri(),)),
            ("RepositoryKeyCheck", ("no",)),
            ("RepositoryKeyFetch", ("no",)),
        ],
        "Output": [
            ("OutputDirectory", (str(paths.output_dir),)),
            # The builder compresses (formats/initrd.py): mkosi's CompressLevel= is a level and nothing
            # more, and a variant may tune zstd beyond its levels.
            ("CompressOutput", ("no",)),
        ],
        "Content": [
            ("Bootable", ("no",)),
            ("MakeInitrd", ("yes",)),
            ("CleanPackageMetadata", ("yes",)),
            ("SourceDateEpoch", (str(source_date_epoch),)),
            ("Packages", variant.packages),
            ("ExtraTrees", (str(paths.kernel_tree), *((str(paths.files_tree),) if variant.files else ()))),
            ("RemoveFiles", (*REMOVE_FILES, *(g for r in variant.removals for g in r.paths))),
        ],
        "Build": [
            ("ToolsTree", ("",)),
            ("Incremental", ("no",)),
            ("CacheOnly", ("auto",)),
            ("History", ("no",)),
            ("WithNetwork", ("no",)),
            ("SandboxTrees", (str(paths.sandbox_tree),)),
            ("PackageCacheDirectory", (str(paths.package_cache),)),
            ("WorkspaceDirectory", (str(paths.workspace),)),
            ("CacheDirectory", ("",)),
        ],
    }
    if variant.base is Base.mkosi_initrd:
        sections["Include"] = [("Include", ("mkosi-initrd",))]
    passthrough: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for section, key, values in variant.mkosi:
        passthrough.setdefault(section, []).append((key, values))

    argv = [
        f"--directory={paths.config_dir}",
        "--distribution=fedora",
        f"--release={release}",
        "--format=cpio",
        "--output=initrd",
        "--manifest-format=json",
        *(f"--profile={p}" for p in variant.profiles),
        "--force",
    ]
    return RenderedConfig(conf=format_ini(sections), dropin=format_ini(passthrough) if passthrough else "",
                          argv=tuple(argv))


def write_variant_files(variant: VariantSpec, tree: Path, source_date_epoch: int) -> None:
    """The variant's [files] as a tree for ExtraTrees=: 0644 files and 0755 directories dated
    SOURCE_DATE_EPOCH, so the image does not depend on when or by whom it was built."""
    if not variant.files:
        return
    for name, contents in variant.files:
        target = tree / name.lstrip("/")
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        target.write_text(contents, encoding="utf-8")
        target.chmod(0o644)
    for p in sorted(tree.rglob("*"), reverse=True):
        os.utime(p, (source_date_epoch, source_date_epoch), follow_symlinks=False)


def format_ini(sections: dict[str, list[tuple[str, tuple[str, ...]]]]) -> str:
    lines: list[str] = []
    for section, settings in sections.items():
        lines.append(f"[{section}]")
        for key, values in settings:
            if not values:
                continue
            if len(values) == 1:
                lines.append(f"{key}={values[0]}")
            else:
                lines.append(f"{key}=")
                lines += [f"        {v}" for v in values]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def kernel_modules_include(summary: bytes) -> tuple[str, ...]:
    """KernelModulesInclude= of the first image in `mkosi --json summary` output."""
    try:
        value = json.loads(summary)["Images"][0]["KernelModulesInclude"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise BuilderError(f"cannot read KernelModulesInclude from `mkosi --json summary`: "
                           f"{type(e).__name__}: {e}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BuilderError("`mkosi --json summary`: KernelModulesInclude is not a list of strings")
    return tuple(value)
