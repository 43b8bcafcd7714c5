"""Build the real-content test distribution: Debian trixie packages repackaged with rpmbuild as
Fedora-named RPMs (mapping.toml), plus createrepo_c metadata, cached under a hash of every input.

    python -m tests.realcontent build      # prints the repository path and the kernel's uname -r
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from tests.support.fixtures import (
    CacheKey, DebianVersion, build_rpm_from_spec, make_repo, publish_entry, split_debian_version, tool_version,
)

from .apt import AptError, DebianPackage, PrivateApt, deb_fields, extract_deb, needed_packages
from .elfnotes import dlopen_dependencies, dlopen_notes_in_tree
from .mapping import MAPPING_FILE, MappingError, MappingTable, PackageMap, check_names, glob_match, load_mapping

log = logging.getLogger("tests.realcontent")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path(os.environ.get("MKOSI_INITRD_REALCONTENT_CACHE", REPO_ROOT / "build" / "realcontent-cache"))
CACHE_FORMAT = "realcontent-repo/1"
COMPLETE_MARKER = "realcontent.json"
SOURCE_DATE_EPOCH = 1700000000
# Files of these modules shape the RPMs; a change to any of them is a new cache entry.
HASHED_SOURCES = ("mapping.toml", "mapping.py", "apt.py", "elfnotes.py", "distribution.py")
# A shared library in the package's file list (dpkg-deb --contents): what makes an unmapped
# Debian package of the closure an RPM under its own name.
LIBRARY_FILE_RE = re.compile(r"^\./usr/lib/(?:x86_64-linux-gnu/)?(?:[^/]+/)*lib[^/]*\.so(?:\.[0-9.]+)?$")


class DistributionError(RuntimeError):
    """Building the real-content distribution failed; the message says which step and why."""


@dataclasses.dataclass(frozen=True)
class RealRepo:
    path: Path                 # *.rpm + repodata/
    kernel_version: str        # uname -r, e.g. 6.12.117+deb13-amd64
    kernel_tree: Path          # usr/lib/modules/<KVER>/... as kernel-core ships it
    vmlinuz: Path
    rpms: dict[str, str]       # RPM name -> file name
    debian: dict[str, str]     # Debian package -> version, everything repackaged
    key: str

    @property
    def entry(self) -> Path:
        return self.path.parent


@dataclasses.dataclass
class RpmPlan:
    """One RPM being assembled: its tree and the header lines the mapping asks for."""

    name: str
    version: str
    release: str
    arch: str
    summary: str
    tree: Path
    sources: list[str]                      # Debian name=version it is made from
    entry: Optional[PackageMap] = None      # None: a library under its Debian name
    licenses: list[str] = dataclasses.field(default_factory=list)
    requires: list[str] = dataclasses.field(default_factory=list)  # from Debian's Depends (debian-depends)


def cache_key(mapping_bytes: bytes, packages: Iterable[DebianPackage], *, cache_format: str = CACHE_FORMAT,
              extra_sources: Sequence[str] = ()) -> str:
    key = CacheKey()
    add = key.add
    add("format", cache_format)
    add("mapping", mapping_bytes)
    here = Path(__file__).resolve().parent
    for name in (*HASHED_SOURCES, *extra_sources):
        add(f"source:{name}", (here / name).read_bytes())
    add("fixtures-rpmbuild", (REPO_ROOT / "tests/support/fixtures.py").read_bytes())
    for p in sorted(packages, key=lambda p: p.name):
        add("deb", p.pin)
    for tool in (["rpmbuild", "--version"], ["createrepo_c", "--version"]):
        add(f"tool:{tool[0]}", tool_version(tool))
    return key.hexdigest()


class DistributionBuilder:
    """Builds one table into a cache entry `<entry_prefix>-<hash>` of cache_dir. The real-content
    distribution (mapping.toml) is the default; the buildroot (buildroot.toml, buildroot.py) passes
    its own table, cache format, hashed sources and entry loader. Every table shares the downloaded
    .debs of the cache directory; each suite and set of components has its own private apt state (the
    buildroot's table asks for main only, mapping.toml's for non-free-firmware too: with one shared
    sources file, two suites running at once ran apt with each other's components)."""

    def __init__(self, cache_dir: Path = DEFAULT_CACHE, *, jobs: int = 2, mapping: Optional[MappingTable] = None,
                 mapping_file: Path = MAPPING_FILE, cache_format: str = CACHE_FORMAT, entry_prefix: str = "repo",
                 extra_sources: Sequence[str] = (), loader: Optional[Callable[[Path], Optional[object]]] = None):
        self.cache_dir = cache_dir.resolve()
        self.mapping = mapping or load_mapping(mapping_file)
        self.mapping_file = self.mapping.source
        self.cache_format = cache_format
        self.entry_prefix = entry_prefix
        self.extra_sources = tuple(extra_sources)
        self.loader = loader or load_entry
        self.apt = PrivateApt(self.cache_dir / "apt", self.mapping.distribution)
        self.debs_dir = self.cache_dir / "debs"
        self.jobs = jobs
        self._versions: dict[str, str] = {}

    # --- resolving -------------------------------------------------------------------------

    def resolve(self) -> tuple[dict[str, DebianPackage], list[DebianPackage]]:
        """apt's closure of every Debian package the table names, and the part of it that is
        repackaged (reachable without entering [exclude])."""
        roots = self.mapping.debian_names()
        self.apt.ensure_lists()
        try:
            versions = self.apt.closure(roots)
        except AptError:
            log.info("resolving failed with the cached package lists; refreshing them")
            self.apt.update()
            versions = self.apt.closure(roots)
        missing = sorted(set(roots) - set(versions))
        if missing:
            raise DistributionError(f"apt's closure lacks {', '.join(missing)} although the mapping names them")
        self._versions = versions
        info = self.apt.show(versions)
        needed = needed_packages(roots, info, self.mapping.exclude)
        check_names(self.mapping, needed)
        return info, [info[n] for n in needed]

    def download(self, packages: Sequence[DebianPackage]) -> dict[str, Path]:
        return self.apt.download(packages, self.debs_dir)

    # --- the whole build -------------------------------------------------------------------

    def key(self, needed: Sequence[DebianPackage]) -> str:
        return cache_key(self.mapping_file.read_bytes(), needed, cache_format=self.cache_format,
                         extra_sources=self.extra_sources)

    def build(self) -> Any:
        """The loaded cache entry (RealRepo for mapping.toml), built first unless it is cached."""
        info, needed = self.resolve()
        key = self.key(needed)
        entry = self.cache_dir / f"{self.entry_prefix}-{key}"
        if (cached := self.loader(entry)) is not None:
            log.info("%s is cached", entry)
            return cached
        started = time.monotonic()
        try:
            debs = self.download(needed)
        except AptError:
            # The mirror moved on: a point release replaced versions our cached lists still name.
            log.info("download failed; refreshing the package lists and resolving again")
            self.apt.update()
            info, needed = self.resolve()
            key = self.key(needed)
            entry = self.cache_dir / f"{self.entry_prefix}-{key}"
            debs = self.download(needed)
        log.info("%d Debian packages (%d in apt's closure, %d left out)", len(needed), len(info),
                 len(info) - len(needed))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{self.entry_prefix}-{key}.", dir=self.cache_dir) as tmp:
            staged = Path(tmp) / "entry"
            staged.mkdir()
            self._build_into(staged, Path(tmp) / "work", needed, debs, key)
            if (cached := publish_entry(staged, entry, self.loader)) is not None:
                return cached
        log.info("built %s in %.0fs", entry / "repo", time.monotonic() - started)
        loaded = self.loader(entry)
        if loaded is None:
            raise DistributionError(f"{entry} is incomplete right after it was built")
        return loaded

    def _build_into(self, staged: Path, work: Path, needed: list[DebianPackage], debs: dict[str, Path],
                    key: str) -> None:
        plans = self.plan(work / "trees", needed, debs)
        kernel = self._kernel(plans)
        check_collisions(plans)
        check_skeleton_links(plans, self.mapping.distribution.skeleton_links)
        repo = staged / "repo"
        repo.mkdir()
        specs = [self.write_spec(p, work / "specs") for p in plans]
        # The kernel first: it is the longest build, the others fill the second job slot.
        order = sorted(range(len(plans)), key=lambda i: -tree_size(plans[i].tree))
        built: dict[str, Path] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = {pool.submit(build_rpm_from_spec, specs[i], work / "rpmbuild", {}, SOURCE_DATE_EPOCH):
                       plans[i].name for i in order}
            for fut in concurrent.futures.as_completed(futures):
                for rpm in fut.result():
                    target = repo / rpm.name
                    shutil.move(str(rpm), target)
                    os.utime(target, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
                    built[futures[fut]] = target
        check_repo_closure(list(built.values()), self.mapping.distribution.reserved)
        make_repo(repo)
        kver = None
        if kernel is not None:
            # The kernel as kernel-core ships it, for QEMU and for dracut.
            kver, ktree = kernel
            shutil.copytree(ktree, staged / "kernel", symlinks=True)
        meta = {
            "key": key,
            "kernel_version": kver,
            "rpms": {name: path.name for name, path in sorted(built.items())},
            "debian": {p.name: p.version for p in needed},
            "source_date_epoch": SOURCE_DATE_EPOCH,
        }
        (staged / COMPLETE_MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    # --- planning the RPMs -----------------------------------------------------------------

    def plan(self, trees: Path, needed: list[DebianPackage], debs: dict[str, Path]) -> list[RpmPlan]:
        """Extract every Debian package into the tree of the RPM that carries it, then apply the
        table: splits, drops, symlinks, synthetic content, licenses."""
        by_name = {p.name: p for p in needed}
        owner: dict[str, str] = {}
        for entry in self.mapping.packages:
            for deb in entry.debian:
                owner[deb] = entry.name
        for entry in self.mapping.packages:
            for pattern in entry.absorb:
                for p in needed:
                    if p.name not in owner and re.search(pattern, p.name):
                        owner[p.name] = entry.name
        unmapped = [p for p in needed if p.name not in owner]
        not_libraries = [p.name for p in unmapped if not is_library_package(debs[p.name])]
        if not_libraries:
            raise MappingError(
                "Debian package(s) " + ", ".join(not_libraries) + " are in the dependency closure but "
                "neither mapped nor excluded nor libraries: add them to [package.*] or [exclude] in "
                f"{self.mapping_file.name}")
        for p in unmapped:
            owner[p.name] = p.name

        plans: dict[str, RpmPlan] = {}
        arch = self.mapping.distribution.rpm_arch
        for entry in self.mapping.packages:
            if entry.split_from:
                continue
            if entry.synthetic:
                plans[entry.name] = RpmPlan(entry.name, "1", "1", entry.arch or arch,
                                            entry.summary or entry.name, trees / entry.name, [], entry)
                continue
            version_of = entry.debian[0]
            if entry.kernel:
                absorbed = [d for d, o in owner.items() if o == entry.name and d not in entry.debian]
                version_of = absorbed[0] if absorbed else version_of
            v = rpm_version(by_name[version_of].version)
            summary = entry.summary or deb_fields(debs[entry.debian[0]], "Description").get("Description", "")
            plans[entry.name] = RpmPlan(entry.name, v.version, v.release, entry.arch or arch,
                                        summary.splitlines()[0] if summary else entry.name, trees / entry.name,
                                        [], entry)
        for p in unmapped:
            v = rpm_version(p.version)
            summary = deb_fields(debs[p.name], "Description").get("Description", p.name).splitlines()[0]
            plans[p.name] = RpmPlan(p.name, v.version, v.release, arch, summary, trees / p.name, [])

        for deb_name in sorted(owner):
            plan = plans[owner[deb_name]]
            extract_deb(debs[deb_name], plan.tree)
            plan.sources.append(by_name[deb_name].pin)
            plan.licenses.append(deb_name)
            if self.mapping.distribution.debian_depends:
                for group in by_name[deb_name].depends:
                    chosen = next((a for a in group if a in by_name), None)
                    if chosen is not None and owner[chosen] != plan.name and owner[chosen] not in plan.requires:
                        plan.requires.append(owner[chosen])

        for plan in plans.values():
            plan.tree.mkdir(parents=True, exist_ok=True)
            relocate(plan.tree, self.mapping.distribution.relocate, plan.name)
            self._install_licenses(plan, debs)
            entry = plan.entry
            drops = self.mapping.distribution.drop + (entry.drop if entry else ())
            remove_matching(plan.tree, drops)
            if entry is None:
                continue
            for d in entry.dirs:
                (plan.tree / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
            for path, mode in entry.modes:
                os.chmod(plan.tree / path.lstrip("/"), int(mode, 8))
            for path, text in entry.content:
                target = plan.tree / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text.lstrip("\n"))
            for path, link in entry.symlinks:
                target = plan.tree / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_symlink() or target.exists():
                    target.unlink()
                target.symlink_to(link)

        for entry in self.mapping.packages:
            if not entry.split_from:
                continue
            parent = plans[entry.split_from]
            tree = trees / entry.name
            moved = move_matching(parent.tree, tree, entry)
            if not moved:
                raise MappingError(f"{self.mapping_file.name}: [package.{entry.name}]: files: no file of "
                                   f"{entry.split_from} matches")
            remove_matching(tree, entry.drop)
            plans[entry.name] = RpmPlan(entry.name, parent.version, parent.release, parent.arch,
                                        entry.summary or f"{parent.summary} ({entry.name})", tree,
                                        list(parent.sources), entry, list(parent.licenses))
            # The split package carries the parent's copyright files too.
            src = parent.tree / "usr/share/licenses" / parent.name
            if src.is_dir():
                shutil.copytree(src, tree / "usr/share/licenses" / entry.name, dirs_exist_ok=True)
        return list(plans.values())

    def _install_licenses(self, plan: RpmPlan, debs: dict[str, Path]) -> None:
        """Debian's copyright file of every source package, as /usr/share/licenses/NAME/DEB.copyright.
        Some doc directories are links to another package's (libgcc-s1 -> gcc-14-base); that
        package is downloaded just for its copyright."""
        dest = plan.tree / "usr/share/licenses" / plan.name
        for deb_name in plan.licenses:
            text = self.copyright_of(deb_name, debs)
            dest.mkdir(parents=True, exist_ok=True)
            (dest / f"{deb_name}.copyright").write_bytes(text)

    def copyright_of(self, name: str, debs: dict[str, Path], depth: int = 0) -> bytes:
        deb = debs.get(name)
        if deb is None:
            version = self._versions.get(name)
            if version is None or depth > 3:
                raise DistributionError(f"no copyright file for {name}: it is not in apt's closure")
            deb = self.apt.download([DebianPackage(name, version)], self.debs_dir)[name]
            debs[name] = deb
        found = read_copyright(deb, name)
        if isinstance(found, bytes):
            return found
        if found is None:
            raise DistributionError(f"{deb.name} has no /usr/share/doc/{name}/copyright")
        return self.copyright_of(found, debs, depth + 1)

    def _kernel(self, plans: list[RpmPlan]) -> Optional[tuple[str, Path]]:
        """Move the Debian kernel's /boot files to where Fedora's kernel-core has them (a table
        without a kernel, like the buildroot's, has none to move)."""
        kernels = [p for p in plans if p.entry and p.entry.kernel]
        if not kernels:
            return None
        if len(kernels) != 1:
            raise MappingError(f"{self.mapping_file.name}: at most one package may have kernel = true")
        tree = kernels[0].tree
        moddirs = sorted((tree / "usr/lib/modules").glob("*/kernel"))
        if len(moddirs) != 1:
            raise DistributionError(f"{kernels[0].name}: expected one /usr/lib/modules/<KVER>/kernel, "
                                    f"found {[str(m) for m in moddirs]}")
        kver = moddirs[0].parent.name
        for name in ("vmlinuz", "config", "System.map"):
            src = tree / "boot" / f"{name}-{kver}"
            if not src.exists():
                raise DistributionError(f"{kernels[0].name}: no /boot/{name}-{kver}")
            os.replace(src, tree / "usr/lib/modules" / kver / name)
        shutil.rmtree(tree / "boot")
        return kver, tree

    # --- the spec --------------------------------------------------------------------------

    def write_spec(self, plan: RpmPlan, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        entry = plan.entry
        if self.mapping.distribution.skeleton:
            skeleton = set(self.mapping.distribution.skeleton)
        else:
            skeleton = set(self.mapping.package("filesystem").dirs) if plan.name != "filesystem" else set()
        files_list = directory / f"{plan.name}.files"
        lines = file_list(plan.tree, skeleton, plan.name)
        files_list.write_text("".join(f"{line}\n" for line in lines))
        header = [
            "%global __strip /bin/true",
            "%global __os_install_post %{nil}",
            "%global debug_package %{nil}",
            "%global _build_id_links none",
        ]
        if entry and entry.requires_exclude:
            header.append("%global __requires_exclude ^(" + "|".join(re.escape(r) for r in entry.requires_exclude) + ")$")
        header += [
            f"Name: {plan.name}",
            f"Version: {plan.version}",
            f"Release: {plan.release}",
            f"Summary: {plan.summary.replace('%', '%%')}",
            "License: LicenseRef-Debian-copyright",
            "AutoReqProv: yes",
        ]
        if plan.arch == "noarch":
            header.append("BuildArch: noarch")
        for p in entry.provides if entry else ():
            header.append(f"Provides: {p}")
        for r in [*(entry.requires if entry else ()), *plan.requires]:
            header.append(f"Requires: {r}")
        notes = dlopen_notes_in_tree(plan.tree) if plan.arch != "noarch" else []
        for kind, deps in dlopen_dependencies(notes, self.mapping.dlopen).items():
            header += [f"{kind}: {d}" for d in deps]
        sources = ", ".join(plan.sources) or "none (made by the test suite)"
        spec = "\n".join(header) + f"""

%description
Fedora-named package for the mkosi-initrd-builder real-content tests, repackaged
from Debian {self.mapping.distribution.suite}: {sources}.

%install
mkdir -p %{{buildroot}}
cp -a {plan.tree}/. %{{buildroot}}/

%files {f"-f {files_list}" if lines else ""}
%defattr(-,root,root,-)
"""
        path = directory / f"{plan.name}.spec"
        path.write_text(spec)
        return path


# --- helpers ---------------------------------------------------------------------------------

def rpm_version(debian_version: str) -> DebianVersion:
    """A Debian version as RPM Version/Release: epoch dropped, split at the last dash; dashes
    inside the upstream part ('3.1-20250104-1') become underscores, which RPM versions allow."""
    upstream, dash, revision = debian_version.rpartition("-")
    if dash and "-" in upstream:
        debian_version = upstream.replace("-", "_") + "-" + revision
    return split_debian_version(debian_version)


def load_entry(entry: Path) -> Optional[RealRepo]:
    try:
        meta = json.loads((entry / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    repo = entry / "repo"
    kver = meta["kernel_version"]
    if kver is None:
        return None
    vmlinuz = entry / "kernel/usr/lib/modules" / kver / "vmlinuz"
    if not (repo / "repodata/repomd.xml").is_file() or not vmlinuz.is_file():
        return None
    if not all((repo / f).is_file() for f in meta["rpms"].values()):
        return None
    return RealRepo(repo, kver, entry / "kernel", vmlinuz, meta["rpms"], meta["debian"], meta["key"])


def is_library_package(deb: Path) -> bool:
    out = subprocess.run(["dpkg-deb", "--contents", str(deb)], stdout=subprocess.PIPE, text=True, check=True).stdout
    return any(LIBRARY_FILE_RE.match(line.split()[-1] if " -> " not in line else line.split(" -> ")[0].split()[-1])
               for line in out.splitlines() if line)


def read_copyright(deb: Path, name: str) -> bytes | str | None:
    """The copyright file's bytes; or the package name its doc directory links to; or None."""
    proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, check=True)
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers()}
        doc = f"usr/share/doc/{name}"
        m = members.get(f"{doc}/copyright")
        if m is not None and m.isfile():
            f = tar.extractfile(m)
            assert f is not None
            return f.read()
        d = members.get(doc)
        if d is not None and d.issym():
            return Path(d.linkname).name
    return None


def tree_paths(tree: Path) -> list[str]:
    """Every path under tree, as absolute image paths, sorted."""
    return sorted("/" + p.relative_to(tree).as_posix() for p in tree.rglob("*"))


def remove_matching(tree: Path, globs: Sequence[str]) -> None:
    if not globs:
        return
    for path in tree_paths(tree):
        if any(glob_match(path, g) for g in globs):
            full = tree / path.lstrip("/")
            if full.is_symlink() or full.is_file():
                full.unlink()
            elif full.is_dir():
                shutil.rmtree(full, ignore_errors=True)
    prune_empty_dirs(tree)


def prune_empty_dirs(tree: Path) -> None:
    for d in sorted((p for p in tree.rglob("*") if p.is_dir() and not p.is_symlink()),
                    key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def move_matching(src_tree: Path, dest_tree: Path, entry: PackageMap) -> int:
    moved = 0
    for path in tree_paths(src_tree):
        full = src_tree / path.lstrip("/")
        if (full.is_dir() and not full.is_symlink()) or not entry.takes(path):
            continue
        target = dest_tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(full, target)
        moved += 1
    for path in tree_paths(src_tree):  # directories named by a glob ("/etc/systemd/network")
        full = src_tree / path.lstrip("/")
        if full.is_dir() and not full.is_symlink() and entry.takes(path) and not any(full.iterdir()):
            (dest_tree / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
            full.rmdir()
            moved += 1
    prune_empty_dirs(src_tree)
    return moved


def tree_size(tree: Path) -> int:
    return sum(p.lstat().st_size for p in tree.rglob("*"))


LOCALE_FILE_RE = re.compile(r"^/usr/share/locale/([A-Za-z]{2,3}(?:_[A-Za-z0-9]+)?(?:@[A-Za-z]+)?)/.+")
_GLOB_CHARS_RE = re.compile(r"[\[\]*?{}]")


def rpm_file_entry(path: str) -> str:
    """A path as a %files line: % doubled, quoted when it has spaces. rpm takes a path without
    glob characters literally (systemd's unit names contain '\\x2d'). A path with them is a glob
    for rpm, and rpm 4.18 does not unescape '\\[' ("File not found: .../usr/bin/\\[" for
    coreutils' '['), so each special character becomes a bracket expression matching just it
    ('[' -> '[[]'), and so does a backslash then."""
    if _GLOB_CHARS_RE.search(path):
        path = "".join(f"[{c}]" if c in "[]*?{}\\" else c for c in path)
    escaped = path.replace("%", "%%")
    return f'"{escaped}"' if any(c.isspace() for c in path) else escaped


def file_list(tree: Path, skeleton: set[str], name: str) -> list[str]:
    """%files lines: every file and symlink, %dir for every directory outside the skeleton,
    %license for the Debian copyright files, %lang for translations."""
    lines = []
    licenses = f"/usr/share/licenses/{name}/"
    for path in tree_paths(tree):
        full = tree / path.lstrip("/")
        if full.is_dir() and not full.is_symlink():
            if path not in skeleton:
                lines.append(f"%dir {rpm_file_entry(path)}")
            continue
        if path.startswith(licenses):
            prefix = "%license "
        elif m := LOCALE_FILE_RE.match(path):
            # Like Fedora's %find_lang: rpm then installs only the languages of %_install_langs
            # (mkosi sets it from Locale=, C.UTF-8 for mkosi-initrd).
            prefix = f"%lang({m.group(1)}) "
        else:
            prefix = ""
        lines.append(prefix + rpm_file_entry(path))
    return lines


def relocate(tree: Path, moves: Sequence[tuple[str, str]], name: str) -> None:
    """Move every entry of each source directory into its destination (e.g. /usr/sbin/* to
    /usr/bin/ for a filesystem whose /usr/sbin is a link to bin). Relative symlinks keep working:
    a link moved from /usr/sbin to /usr/bin resolves from a sibling directory. A name that the
    destination already has is an error naming both paths, unless both are links to the same file."""
    for src, dest in moves:
        src_dir = tree / src.lstrip("/")
        if src_dir.is_symlink() or not src_dir.is_dir():
            continue
        dest_dir = tree / dest.lstrip("/")
        dest_dir.mkdir(parents=True, exist_ok=True)
        for item in sorted(src_dir.iterdir()):
            target = dest_dir / item.name
            if target.is_symlink() and item.is_symlink() and \
                    _link_target(src, item) == _link_target(dest, target):
                item.unlink()  # the same link in both places (kmod's lsmod): keep one
                continue
            if target.exists() or target.is_symlink():
                raise DistributionError(f"{name}: relocating {src}/{item.name} to {dest}: {dest}/{item.name} "
                                        "exists already")
            os.replace(item, target)
        src_dir.rmdir()


def _link_target(directory: str, link: Path) -> str:
    """The absolute image path a symlink in `directory` points to."""
    return os.path.normpath(os.path.join(directory, os.readlink(link)))


def check_skeleton_links(plans: Sequence[RpmPlan], links: Sequence[str]) -> None:
    """No RPM may ship a path that the filesystem package has as a symlink, or anything below it."""
    bad = []
    for plan in plans:
        for path in tree_paths(plan.tree):
            if any(path == link or path.startswith(link + "/") for link in links):
                bad.append(f"{path} ({plan.name})")
    if bad:
        raise DistributionError("paths the filesystem package has as symlinks: " + "; ".join(bad[:10]))


def check_collisions(plans: Sequence[RpmPlan]) -> None:
    """No two RPMs may ship the same non-directory path: rpm would refuse to install both."""
    seen: dict[str, str] = {}
    clashes = []
    for plan in plans:
        for path in tree_paths(plan.tree):
            full = plan.tree / path.lstrip("/")
            if full.is_dir() and not full.is_symlink():
                continue
            if path in seen:
                clashes.append(f"{path} ({seen[path]}, {plan.name})")
            seen[path] = plan.name
    if clashes:
        raise DistributionError("files shipped by two packages: " + "; ".join(clashes[:10]))


@dataclasses.dataclass(frozen=True)
class RpmDeps:
    """What one RPM provides (its name, Provides and file paths) and requires."""

    name: str
    provides: frozenset[str]
    requires: tuple[str, ...]


def read_rpm_deps(path: Path) -> RpmDeps:
    import rpm as rpmlib

    ts = rpmlib.TransactionSet()
    ts.setVSFlags(rpmlib._RPMVSF_NOSIGNATURES | rpmlib._RPMVSF_NODIGESTS)
    with path.open("rb") as f:
        h = ts.hdrFromFdno(f.fileno())
    name = h[rpmlib.RPMTAG_NAME]
    provides = {name, *h[rpmlib.RPMTAG_PROVIDENAME], *(f.name for f in rpmlib.files(h))}
    requires = tuple(r for r in h[rpmlib.RPMTAG_REQUIRENAME] if not r.startswith("rpmlib("))
    return RpmDeps(name, frozenset(provides), requires)


def requirement_alternatives(req: str) -> list[str]:
    """'(a or b)' -> ['a', 'b'], 'x' -> ['x']: names only (versions are rpm's and dnf's business)."""
    if req.startswith("(") and req.endswith(")"):
        alternatives = [a.strip() for a in req[1:-1].split(" or ")]
    else:
        alternatives = [req]
    return [a.split(" ")[0] for a in alternatives]


def rpm_closure(rpms: Sequence[Path], roots: Iterable[str]) -> dict[str, Path]:
    """The RPMs (by name) that installing `roots` pulls in from `rpms`, following Requires to
    every provider (a superset of what dnf picks when several packages provide one thing).
    Requires nothing in `rpms` satisfies are left to the caller's repository."""
    deps = {path: read_rpm_deps(path) for path in rpms}
    by_name = {d.name: path for path, d in deps.items()}
    providers: dict[str, list[Path]] = {}
    for path, d in deps.items():
        for p in d.provides:
            providers.setdefault(p, []).append(path)
    todo = [by_name[r] for r in roots]
    seen: dict[str, Path] = {}
    while todo:
        path = todo.pop()
        d = deps[path]
        if d.name in seen:
            continue
        seen[d.name] = path
        for req in d.requires:
            for alt in requirement_alternatives(req):
                todo += providers.get(alt, [])
    return seen


def check_file_conflicts(rpms: Sequence[Path], aliases: Sequence[tuple[str, str]] = (("/usr/sbin/", "/usr/bin/"),
                                                                              ("/bin/", "/usr/bin/"),
                                                                              ("/sbin/", "/usr/bin/"),
                                                                              ("/lib64/", "/usr/lib64/"),
                                                                              ("/lib/", "/usr/lib/"))) -> None:
    """No two RPMs ship the same non-directory path (rpm would refuse to install both); paths are
    compared through the merged-/usr links of the fixture filesystem (`aliases`)."""
    import rpm as rpmlib
    import stat

    ts = rpmlib.TransactionSet()
    ts.setVSFlags(rpmlib._RPMVSF_NOSIGNATURES | rpmlib._RPMVSF_NODIGESTS)
    owner: dict[str, str] = {}
    clashes = []
    for path in rpms:
        with path.open("rb") as f:
            h = ts.hdrFromFdno(f.fileno())
        name = h[rpmlib.RPMTAG_NAME]
        for fi in rpmlib.files(h):
            if stat.S_ISDIR(fi.mode):
                continue
            p = fi.name
            for prefix, real in aliases:
                if p.startswith(prefix):
                    p = real + p[len(prefix):]
                    break
            if p in owner and owner[p] != name:
                clashes.append(f"{p} ({owner[p]}, {name})")
            owner[p] = name
    if clashes:
        raise DistributionError("files shipped by two packages: " + "; ".join(sorted(clashes)[:10]))


def check_repo_closure(rpms: Sequence[Path], external: Iterable[str] = ()) -> None:
    """Every Requires of every RPM is satisfied inside the repository (names, provides and file
    paths; versions are not compared, rpm/dnf do that), or by one of the `external` names another
    part of the same repository supplies. Catches a mapping gap before mkosi does."""
    provided: set[str] = set(external)
    requires: list[tuple[str, str]] = []
    for path in rpms:
        d = read_rpm_deps(path)
        provided.update(d.provides)
        requires += [(d.name, r) for r in d.requires]
    unresolved = []
    for name, req in requires:
        if not any(a in provided for a in requirement_alternatives(req)):
            unresolved.append(f"{name} requires {req}")
    if unresolved:
        raise DistributionError("unresolvable dependencies in the repository:\n  " + "\n  ".join(sorted(set(unresolved))))
