"""What a build needs to know about a kernel's modules, read once per kernel: each module's size and the
.modinfo keys selection and firmware lookup read, kept between builds in a cache keyed by the kernel
packages' checksums.

Reading them is the costly part of module selection on a real kernel (every `.ko.xz` decompressed
for the alias scan: 5.7 s for Debian's 6.12); it depends only on the kernel packages' bytes, so a
cache entry is named by their checksums (which the build has checked against the files) and is
checked against the payload's list of modules and their sizes before it is used. A corrupt, foreign
or mismatching entry is logged and replaced, never trusted."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from mkosi_initrd_builder.building.kmod import FACT_KEYS, modinfo, module_facts
from mkosi_initrd_builder.rpmmeta.repo import RepoPackage
from mkosi_initrd_builder.util.compress import DecompressError, decompress_bytes
from mkosi_initrd_builder.util.errors import BuilderError
from mkosi_initrd_builder.util.fsutil import atomic_write

logger = logging.getLogger("mkosi_initrd_builder.building.kernelfacts")

# Bump when what an entry holds or means changes; entries of another format are ignored.
CACHE_FORMAT = "kernel-module-facts/1"
CACHE_SUBDIR = "kernel-modules"  # below BuildRequest.cache_dir


class ModuleReadError(BuilderError):
    """A kernel package ships a module whose .modinfo cannot be read."""

    def __init__(self, package: str, module: str, reason: str) -> None:
        super().__init__(f"kernel package {package}: module {module}: {reason}")


@dataclasses.dataclass(frozen=True)
class KernelModuleFacts:
    """Every module of one kernel (paths relative to /usr/lib/modules/<KVER>/) with its size in the
    payload and its facts (module_facts(): depends, softdep, alias, firmware)."""

    sizes: Mapping[str, int]
    facts: Mapping[str, Mapping[str, list[str]]]

    def info_of(self, rel: str) -> Mapping[str, list[str]]:
        return self.facts[rel]


def default_cache_dir() -> Optional[Path]:
    """Where the command line keeps the facts without --cache-dir: $XDG_CACHE_HOME/mkosi-initrd-builder/
    kernel-modules, ~/.cache/... when that is unset or not absolute (as the XDG spec says); None
    without a home directory."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        base = Path(xdg)
    else:
        try:
            base = Path.home() / ".cache"
        except RuntimeError:
            return None
    return base / "mkosi-initrd-builder" / CACHE_SUBDIR


def facts_key(kernel_version: str, packages: Sequence[RepoPackage]) -> str:
    """The cache key: the format, the kernel version and each kernel package's checksum. The build
    checks every package it extracts against that checksum, so other bytes mean another key."""
    parts = [CACHE_FORMAT, kernel_version, *sorted(f"{p.checksum_type.lower()}:{p.checksum.strip().lower()}"
                                                   for p in packages)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}.json"


def scan_modules(modules: Mapping[str, tuple[str, bytes]], jobs: Optional[int] = None) -> KernelModuleFacts:
    """The facts of `modules` (path -> (package NEVRA, the file's bytes as the payload has them)).

    Threads, because lzma and zstd release the GIL while they decompress, and decompressing is
    nearly all of the time."""
    def read(rel: str) -> dict[str, list[str]]:
        package, data = modules[rel]
        try:
            return module_facts(modinfo(decompress_bytes(data, Path(rel))))
        except (ValueError, IndexError, DecompressError) as e:
            raise ModuleReadError(package, rel, str(e) or type(e).__name__) from None

    names = sorted(modules)
    workers = max(1, jobs or os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        facts = dict(zip(names, pool.map(read, names)))
    return KernelModuleFacts({rel: len(modules[rel][1]) for rel in names}, facts)


def load_facts(path: Path, key: str, kernel_version: str, sizes: Mapping[str, int]) -> Optional[KernelModuleFacts]:
    """The cached facts at `path` when they are an entry of this format for this key and kernel and
    list exactly the modules of `sizes` with those sizes; None otherwise (a warning unless absent)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        return _ignored(path, f"cannot read it: {e}")
    try:
        data = json.loads(text)
    except ValueError as e:
        return _ignored(path, f"not JSON ({e})")
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        return _ignored(path, f"format {found!r}, not {CACHE_FORMAT!r}")
    if data.get("key") != key or data.get("kernel-version") != kernel_version:
        return _ignored(path, f"made for kernel {data.get('kernel-version')!r} with key {data.get('key')!r}")
    modules = data.get("modules")
    if not isinstance(modules, dict):
        return _ignored(path, "no modules table")
    if set(modules) != set(sizes):
        differ = sorted(set(modules) ^ set(sizes))
        return _ignored(path, f"lists other modules than the kernel packages ship ({len(differ)} differ, "
                              f"first {differ[0]})")
    facts: dict[str, dict[str, list[str]]] = {}
    for rel, entry in modules.items():
        if not _well_formed(entry) or entry["size"] != sizes[rel]:
            return _ignored(path, f"its entry for {rel} does not match the module the kernel packages ship")
        facts[rel] = {k: entry[k] for k in FACT_KEYS if k in entry}
    return KernelModuleFacts(dict(sizes), facts)


def _well_formed(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("size"), int) and not isinstance(entry["size"], bool)
            and set(entry) <= {"size", *FACT_KEYS}
            and all(isinstance(entry[k], list) and all(isinstance(v, str) for v in entry[k])
                    for k in FACT_KEYS if k in entry))


def _ignored(path: Path, reason: str) -> None:
    logger.warning("ignoring the kernel module cache %s: %s; reading the modules again", path, reason)
    return None


def save_facts(path: Path, key: str, kernel_version: str, facts: KernelModuleFacts) -> None:
    """Write the entry temp-then-rename: concurrent builds of the same kernel write the same content,
    and a reader sees a whole file or none. A cache that cannot be written costs a warning, not the build."""
    data = {
        "format": CACHE_FORMAT,
        "key": key,
        "kernel-version": kernel_version,
        "modules": {rel: {"size": facts.sizes[rel], **facts.facts[rel]} for rel in sorted(facts.sizes)},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data, sort_keys=True, separators=(",", ":")))
    except OSError as e:
        logger.warning("cannot write the kernel module cache %s: %s", path, e.strerror or e)


def kernel_module_facts(cache_dir: Optional[Path], key: str, kernel_version: str,
                        modules: Mapping[str, tuple[str, bytes]]) -> tuple[KernelModuleFacts, bool]:
    """The facts of `modules`, from the cache under `cache_dir` when it holds a valid entry, else read
    (and written there). Returns them and whether they came from the cache."""
    sizes = {rel: len(data) for rel, (_, data) in modules.items()}
    path = cache_path(cache_dir, key) if cache_dir is not None else None
    if path is not None and (cached := load_facts(path, key, kernel_version, sizes)) is not None:
        return cached, True
    facts = scan_modules(modules)
    if path is not None:
        save_facts(path, key, kernel_version, facts)
    return facts, False
