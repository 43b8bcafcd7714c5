"""Device firmware for the kept kernel modules: the files their `firmware=` modinfo names, taken from the
variant's firmware packages and laid out under /usr/lib/firmware as the kernel's loader looks for them.

Only what a kept module names goes in (a firmware package ships hundreds of megabytes); what no
firmware package ships is recorded, not an error: a driver asks for every revision of its firmware it
could use, and most machines need none of them in the initrd."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import posixpath
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from mkosi_initrd_builder.rpmmeta.repo import RepoPackage, Repository, cpio_pattern, extract_rpm
from mkosi_initrd_builder.util.compress import decompress_file
from mkosi_initrd_builder.util.fsutil import atomic_write, sha256_file

FIRMWARE_DIR = "usr/lib/firmware"                       # in the image (merged /usr)
FIRMWARE_ROOTS = ("/usr/lib/firmware", "/lib/firmware")  # where packages put it


@dataclasses.dataclass(frozen=True)
class LoaderSuffix:
    """A name the kernel's firmware loader tries, and the configuration option it needs to read it."""

    suffix: str
    option: Optional[str]


# In the order the loader tries them (drivers/base/firmware_loader/main.c, _request_firmware()):
# the name as is, then with .zst, then with .xz, each compressed one only in a kernel built to
# decompress it. Fedora's firmware packages ship xz-compressed files.
LOADER_SUFFIXES = (
    LoaderSuffix("", None),
    LoaderSuffix(".zst", "CONFIG_FW_LOADER_COMPRESS_ZSTD"),
    LoaderSuffix(".xz", "CONFIG_FW_LOADER_COMPRESS_XZ"),
)
# Before Linux 5.19 there was no zstd and no _XZ option: CONFIG_FW_LOADER_COMPRESS=y meant xz.
LEGACY_XZ_OPTION = "CONFIG_FW_LOADER_COMPRESS"
GLOB_CHARS = re.compile(r"[*?\[]")
# A symbolic link chain longer than this is a loop (the kernel's own limit is 40 for a whole path).
MAX_LINK_DEPTH = 40


def accepted_suffixes(kernel_config: Optional[str]) -> tuple[str, ...]:
    """The suffixes the kernel's loader reads, from the kernel's configuration (/usr/lib/modules/KVER/config).

    Without a configuration only plain files are certain to load, so compressed ones are then
    decompressed: what that costs is bytes, what the other guess costs is a driver without firmware."""
    if kernel_config is None:
        return ("",)
    enabled = {m.group(1) for m in re.finditer(r"^(CONFIG_\w+)=y\s*$", kernel_config, re.MULTILINE)}
    mentioned = set(re.findall(r"^# (CONFIG_\w+) is not set", kernel_config, re.MULTILINE)) | enabled
    out = []
    for s in LOADER_SUFFIXES:
        if s.option is None or s.option in enabled:
            out.append(s.suffix)
        elif s.suffix == ".xz" and s.option not in mentioned and LEGACY_XZ_OPTION in enabled:
            out.append(s.suffix)
    return tuple(out)


def strip_suffix(name: str) -> tuple[str, str]:
    """'a/b.fw.xz' -> ('a/b.fw', '.xz'): a firmware name and the compression its file carries."""
    for s in LOADER_SUFFIXES:
        if s.suffix and name.endswith(s.suffix):
            return name[: -len(s.suffix)], s.suffix
    return name, ""


def firmware_path(path: str) -> Optional[str]:
    """'/usr/lib/firmware/a/b.fw' -> 'a/b.fw'; None for a path outside the firmware roots."""
    for root in FIRMWARE_ROOTS:
        if path.startswith(root + "/"):
            return path[len(root) + 1:]
    return None


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One file of a firmware package that satisfies a wanted name."""

    package: RepoPackage
    source: str            # the path in the package: /usr/lib/firmware/bnx2/bnx2-mips-09-6.2.1b.fw.xz
    name: str              # the firmware name it provides: bnx2/bnx2-mips-09-6.2.1b.fw
    suffix: str            # its compression: "", ".zst" or ".xz"


@dataclasses.dataclass(frozen=True)
class FirmwareChoice:
    """Which file of which package provides each wanted name; what no package ships."""

    chosen: tuple[tuple[str, Candidate], ...]   # (wanted name, the file chosen for it)
    missing: tuple[str, ...]


def newest_packages(repo: Repository, names: Iterable[str]) -> list[RepoPackage]:
    """The newest package of each name providing one of `names` (names or provides), in that order."""
    out: dict[str, RepoPackage] = {}
    for n in names:
        for p in repo.providers(n):
            if p.nevra.name not in out or out[p.nevra.name].nevra < p.nevra:
                out[p.nevra.name] = p
    return list(out.values())


def firmware_candidates(packages: Sequence[RepoPackage]) -> dict[str, list[Candidate]]:
    """Every firmware file of `packages`, by the firmware name it provides (compression suffix off)."""
    out: dict[str, list[Candidate]] = {}
    for p in packages:
        for f in p.files:
            rel = firmware_path(f)
            if rel:
                name, suffix = strip_suffix(rel)
                out.setdefault(name, []).append(Candidate(p, f, name, suffix))
    return out


def choose_firmware(wanted: Iterable[str], packages: Sequence[RepoPackage], accepted: Sequence[str]) -> FirmwareChoice:
    """For each wanted name, the file the kernel's loader would find first: the plain name, then the
    compressed ones in its order, the accepted before those it would have to get decompressed; the
    first package (in the order the variant names them) wins. A name with glob characters that no
    file has literally (drivers may declare 'dir/*') takes every firmware file matching it."""
    candidates = firmware_candidates(packages)
    rank = {s.suffix: i for i, s in enumerate(LOADER_SUFFIXES)}
    order = {p.nevra.name: i for i, p in enumerate(packages)}

    def best(found: list[Candidate]) -> Candidate:
        return min(found, key=lambda c: (c.suffix not in accepted, order[c.package.nevra.name], rank[c.suffix]))

    chosen: list[tuple[str, Candidate]] = []
    missing: list[str] = []
    for w in sorted(set(wanted)):
        names = [w] if w in candidates else matching(w, candidates)
        if not names:
            missing.append(w)
        chosen += [(w, best(candidates[n])) for n in names]
    return FirmwareChoice(tuple(chosen), tuple(missing))


@dataclasses.dataclass(frozen=True)
class FirmwareFile:
    """One entry under /usr/lib/firmware in the image, as the manifest records it."""

    path: str                   # relative to /usr/lib/firmware in the image
    package: str                # NEVRA of the package it came from
    wanted: tuple[str, ...]     # the modules' names it provides; empty for a link's target
    sha256: str = ""            # regular files
    size: int = 0
    link: str = ""              # symbolic links: the target, as the package has it
    decompressed_from: str = ""  # the package's compressed file, when the kernel could not read it

    def manifest_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"package": self.package, "wanted": list(self.wanted)}
        if self.link:
            entry["link"] = self.link
        else:
            entry.update(sha256=self.sha256, size=self.size)
        if self.decompressed_from:
            entry["decompressed-from"] = self.decompressed_from
        return entry


@dataclasses.dataclass(frozen=True)
class FirmwareInstall:
    files: tuple[FirmwareFile, ...]
    missing: tuple[str, ...]
    packages: tuple[str, ...]   # NEVRAs of the firmware packages looked in

    def manifest(self) -> dict[str, Any]:
        return {
            "firmware": {f.path: f.manifest_entry() for f in self.files},
            "firmware-missing": list(self.missing),
            "firmware-packages": list(self.packages),
        }


def install_firmware(repo: Repository, packages: Sequence[RepoPackage], wanted: Iterable[str],
                     accepted: Sequence[str], dest: Path, work: Path) -> FirmwareInstall:
    """Put the firmware `wanted` names into `dest` (the image's /usr/lib/firmware), from `packages`.

    A symbolic link is kept with the file it leads to (which may come from another of the packages);
    a link leading out of the firmware tree or to nothing counts as not found. A compressed file the
    kernel cannot read (`accepted`) is written decompressed, under the plain name."""
    choice = choose_firmware(wanted, packages, accepted)
    wanted_by: dict[tuple[str, str], list[str]] = {}
    for w, c in choice.chosen:
        wanted_by.setdefault((c.package.nevra.name, c.source), []).append(w)
    # firmware name as installed (suffix kept) -> the package file that installs it, for links' targets
    owner: dict[str, tuple[str, str]] = {}
    for p in packages:
        for f in p.files:
            if (rel := firmware_path(f)) is not None:
                owner.setdefault(rel, (p.nevra.name, f))

    extracted = work / "firmware-packages"
    links_to: dict[tuple[str, str], Optional[tuple[str, str]]] = {}  # a link -> its target's file, None: none
    done: set[tuple[str, str]] = set()
    todo = sorted(wanted_by)
    while todo:
        by_package: dict[str, list[str]] = {}
        for name, source in todo:
            by_package.setdefault(name, []).append(source)
        for p in packages:
            if p.nevra.name in by_package:
                extract_rpm(repo.path / p.href, extracted / p.nevra.name,
                            [cpio_pattern(s) for s in sorted(by_package[p.nevra.name])])
        done.update(todo)
        following, todo = todo, []
        for key in following:
            local = extracted / key[0] / key[1].lstrip("/")
            if not local.is_symlink():
                continue
            link = os.readlink(local)
            resolved = posixpath.normpath(link if link.startswith("/")
                                          else posixpath.join(posixpath.dirname(key[1]), link))
            rel = firmware_path(resolved)
            links_to[key] = owner.get(rel) if rel is not None else None
            if links_to[key] is not None and links_to[key] not in done:
                todo.append(links_to[key])

    def final_target(key: tuple[str, str]) -> Optional[tuple[str, str]]:
        """The regular file a chain of links ends at; None when it leaves the firmware, dangles or loops."""
        for _ in range(MAX_LINK_DEPTH):
            if key not in links_to:
                return key
            nxt = links_to[key]
            if nxt is None:
                return None
            key = nxt
        return None

    files: dict[str, FirmwareFile] = {}
    missing = set(choice.missing)
    nevra = {p.nevra.name: str(p.nevra) for p in packages}

    def merged(path: str, names: Sequence[str]) -> tuple[str, ...]:
        """`names` and those an earlier entry of `path` serves (a link's target may be wanted too)."""
        earlier = files[path].wanted if path in files else ()
        return tuple(sorted({*names, *earlier}))

    def place(key: tuple[str, str], names: Sequence[str]) -> None:
        name, source = key
        local = extracted / name / source.lstrip("/")
        rel = firmware_path(source)
        assert rel is not None
        plain, suffix = strip_suffix(rel)
        target = final_target(key)
        if target is None:
            missing.update(names)
            return
        if suffix not in accepted:
            data = decompress_file(extracted / target[0] / target[1].lstrip("/"))
            out = dest / plain
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(out, data)
            files[plain] = FirmwareFile(plain, nevra[target[0]], merged(plain, names), sha256_file(out), len(data),
                                        decompressed_from=source)
            return
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if local.is_symlink():
            link = os.readlink(local)
            if out.is_symlink() or out.exists():
                out.unlink()
            out.symlink_to(link)
            files[rel] = FirmwareFile(rel, nevra[name], merged(rel, names), link=link)
            nxt = links_to[key]
            assert nxt is not None
            place(nxt, ())
            return
        shutil.copyfile(local, out)
        files[rel] = FirmwareFile(rel, nevra[name], merged(rel, names), sha256_file(out), out.stat().st_size)

    for key in sorted(wanted_by):
        place(key, sorted(wanted_by[key]))
    # A name is missing only when nothing was placed for it (a glob may have found other files).
    placed = {w for f in files.values() for w in f.wanted}
    return FirmwareInstall(tuple(files[k] for k in sorted(files)), tuple(sorted(missing - placed)),
                           tuple(str(p.nevra) for p in packages))


def available_names(packages: Sequence[RepoPackage]) -> set[str]:
    """Every firmware name `packages` ship, compressed or not (what verify --repo checks 'missing' against)."""
    return set(firmware_candidates(packages))


def matching(wanted: str, names: Iterable[str]) -> list[str]:
    """The names a wanted name with glob characters stands for (none for a plain name)."""
    if not GLOB_CHARS.search(wanted):
        return []
    return sorted(n for n in names if fnmatch.fnmatchcase(n, wanted))


def satisfied(wanted: str, available: Iterable[str]) -> bool:
    names = set(available)
    return wanted in names or bool(matching(wanted, names))


def manifest_firmware(manifest: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    value = manifest.get("firmware", {})
    return value if isinstance(value, Mapping) else {}
