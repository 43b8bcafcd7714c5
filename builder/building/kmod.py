"""Kernel module selection: read each module's .modinfo, pick the variant's modules and their dependencies."""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from mkosi_initrd_builder.util.compress import decompress_file
from mkosi_initrd_builder.util.elf import section_data, sections

# depmod's outputs; the image regenerates them with its own depmod, so the tree handed to mkosi
# must not carry stale copies.
DEPMOD_OUTPUTS = (
    "modules.alias", "modules.alias.bin", "modules.builtin.alias.bin", "modules.builtin.bin",
    "modules.dep", "modules.dep.bin", "modules.devname", "modules.softdep", "modules.symbols",
    "modules.symbols.bin", "modules.weakdep",
)
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: Path | str) -> str:
    """'kernel/fs/ext4/ext4.ko.xz' -> 'ext4'; dashes and underscores are the same to the kernel."""
    return Path(path).name.split(".", 1)[0].replace("-", "_")


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The key=value strings of an ELF64 module's .modinfo section.

    The section table comes from util/elf.py's walk by hand, not pyelftools or libkmod's modinfo: on 300 of the fixture
    kernel's modules pyelftools takes 30 times as long, and one `modinfo` process for all of them 4
    times as long, with output that has to be parsed back (tests/bench/library_bench.py)."""
    info: dict[str, list[str]] = {}
    for section in sections(elf):
        if section.name != ".modinfo":
            continue
        for entry in section_data(elf, section).split(b"\0"):
            key, sep, value = entry.decode(errors="replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
    return info


# Each variant selects from its own hard-linked copy of the extracted kernel, so keying by inode
# (plus size and mtime) lets the variants of one build share what was read, decompressed and parsed:
# with xz-compressed modules, the alias scan costs seconds per variant otherwise.
_modinfo_cache: dict[tuple[int, int, int, int], dict[str, list[str]]] = {}
_modinfo_lock = threading.Lock()


def cached_modinfo(path: Path) -> dict[str, list[str]]:
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _modinfo_lock:
        hit = _modinfo_cache.get(key)
    if hit is None:
        hit = modinfo(decompress_file(path))
        with _modinfo_lock:
            _modinfo_cache[key] = hit
    return hit


@dataclasses.dataclass(frozen=True)
class ModuleSelection:
    kept: tuple[str, ...]       # paths relative to /usr/lib/modules/<KVER>/
    removed: tuple[str, ...]
    firmware: tuple[str, ...]   # firmware the kept modules ask for (not shipped by kernel packages)
    missing_dependencies: tuple[str, ...]


# The .modinfo keys selection and firmware lookup use: what a per-kernel cache has to keep.
FACT_KEYS = ("depends", "softdep", "alias", "firmware")


def module_facts(info: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """The part of a module's .modinfo that selection reads (aliases, dependencies, firmware)."""
    return {k: list(info[k]) for k in FACT_KEYS if info.get(k)}


def select_modules(
    modules_dir: Path,
    include: Sequence[str],
    exclude: Sequence[str],
) -> ModuleSelection:
    """Choose the modules under `modules_dir` matching `include` (all when empty) and not `exclude`,
    then add every dependency (depends= and softdep=) of what was chosen."""
    paths = sorted(
        p.relative_to(modules_dir).as_posix()
        for p in modules_dir.rglob("*") if p.name.endswith(MODULE_SUFFIXES) and p.is_file()
    )
    return choose_modules(paths, read_builtin(modules_dir), include, exclude,
                          lambda rel: cached_modinfo(modules_dir / rel))


def read_builtin(modules_dir: Path) -> frozenset[str]:
    """The names of the modules built into the kernel (modules.builtin), which need no file."""
    try:
        return builtin_names((modules_dir / "modules.builtin").read_bytes())
    except FileNotFoundError:
        return frozenset()


def builtin_names(modules_builtin: bytes) -> frozenset[str]:
    return frozenset(module_name(line) for line in modules_builtin.decode(errors="replace").split())


def choose_modules(
    paths: Iterable[str],
    builtin: Iterable[str],
    include: Sequence[str],
    exclude: Sequence[str],
    info_of_path: Callable[[str], Mapping[str, list[str]]],
) -> ModuleSelection:
    """select_modules() over a list of module paths (relative to /usr/lib/modules/<KVER>/) and a way
    to read a module's .modinfo: from the files, or from the per-kernel facts of a build."""
    paths = sorted(paths)
    by_name = {module_name(p): p for p in paths}
    builtin = set(builtin)

    inc = re.compile("|".join(include)) if include else None
    exc = re.compile("|".join(exclude)) if exclude else None
    wanted = [p for p in paths if (inc is None or inc.search(p)) and not (exc and exc.search(p))]

    infos: dict[str, Mapping[str, list[str]]] = {}

    def info_of(name: str) -> Mapping[str, list[str]]:
        if name not in infos:
            infos[name] = info_of_path(by_name[name])
        return infos[name]

    aliases: dict[str, str] = {}
    aliases_read = False

    def by_alias(name: str) -> str | None:
        # softdep names may be aliases ("crc32c" is provided by crc32c_generic); reading every
        # module's .modinfo is slow, so only do it the first time a name is not a file name.
        nonlocal aliases_read
        if not aliases_read:
            for n in sorted(by_name):
                for a in info_of(n).get("alias", []):
                    aliases.setdefault(a.replace("-", "_"), n)
            aliases_read = True
        return aliases.get(name)

    kept: set[str] = set()
    firmware: set[str] = set()
    missing: set[str] = set()
    todo = [module_name(p) for p in wanted]
    while todo:
        name = todo.pop()
        if name in kept or name in builtin:
            continue
        if name not in by_name:
            alias = by_alias(name)
            if alias:
                todo.append(alias)
            else:
                missing.add(name)
            continue
        kept.add(name)
        info = info_of(name)
        deps = [d for v in info.get("depends", []) for d in v.split(",") if d]
        for v in info.get("softdep", []):
            deps += [d for d in v.split() if not d.endswith(":")]
        todo += [d.replace("-", "_") for d in deps]
        firmware.update(info.get("firmware", []))
    kept_paths = tuple(sorted(by_name[n] for n in kept))
    removed = tuple(sorted(set(paths) - set(kept_paths)))
    return ModuleSelection(kept_paths, removed, tuple(sorted(firmware)), tuple(sorted(missing)))


def prune_modules(modules_dir: Path, selection: ModuleSelection) -> None:
    """Delete the modules not selected and depmod's outputs; drop directories left empty."""
    for rel in selection.removed:
        (modules_dir / rel).unlink()
    for name in DEPMOD_OUTPUTS:
        (modules_dir / name).unlink(missing_ok=True)
    for d in sorted((p for p in modules_dir.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def expand_default(patterns: Iterable[str], default_patterns: Sequence[str]) -> list[str]:
    out: list[str] = []
    for p in patterns:
        out.extend(default_patterns if p == "default" else [p])
    return out
