"""Which packages to stage: names or provides (and a spec's BuildRequires) resolved by dnf's own
depsolver against the source (its answer kept in the package cache, keyed by the source's repomd.xml
and the request), or exactly the packages installed in a root's rpm database."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from mkosi_initrd_builder import __version__
from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.util.errors import CommandError, ResolveError, SettingError
from mkosi_initrd_builder.util.fsutil import is_within
from mkosi_initrd_builder.util.run import run

if TYPE_CHECKING:
    from mkosi_initrd_builder.staging.cache import PackageCache

logger = logging.getLogger("mkosi_initrd_builder.staging.stage")

# Where an rpm database may be below a root: Fedora >= 36 and RHEL >= 10, then older ones. A root
# made by Debian's rpm (dnf --installroot on Debian) has it at the host's %_dbpath, ~/.rpmdb.
RPMDB_DIRS = ("usr/lib/sysimage/rpm", "var/lib/rpm")
RPMDB_FILES = ("rpmdb.sqlite", "Packages", "Packages.db")
HEADER_QUERY = "%{NAME}\\t%{EPOCHNUM}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{SIGMD5}\\n"
# Not packages anyone can fetch: imported keys, and the meta package of old koji buildroots.
NOT_FILES = frozenset({"gpg-pubkey", "buildsys-build"})


@dataclasses.dataclass(frozen=True)
class PinnedPackage:
    """One exact package, as an rpm database or koji's buildroot listing names it."""

    nevra: NEVRA
    payloadhash: Optional[str] = None  # hex SIGMD5 of the header, when the lister knows it

    @classmethod
    def from_koji(cls, info: Mapping[str, Any]) -> "PinnedPackage":
        """From an entry of kojid's BuildRoot.getPackageList()."""
        return cls(NEVRA.from_koji(info), str(info["payloadhash"]).lower() if info.get("payloadhash") else None)


def _host_dbpath() -> Optional[str]:
    try:
        out = run(["rpm", "--eval", "%{_dbpath}"], capture=True).stdout.decode().strip()
    except CommandError:
        return None
    return out if out.startswith("/") else None


def rpmdb_candidates(root: Path) -> list[Path]:
    candidates = [root / d for d in RPMDB_DIRS]
    if (host := _host_dbpath()) is not None and host.strip("/") not in RPMDB_DIRS:
        candidates.append(root / host.lstrip("/"))
    return candidates


def find_rpmdb(root: Path) -> Path:
    """The rpm database directory below `root`; symlinks must not lead out of the root."""
    real_root = Path(os.path.realpath(root))
    tried = rpmdb_candidates(root)
    for candidate in tried:
        real = Path(os.path.realpath(candidate))
        if is_within(real, real_root) and any((real / f).is_file() for f in RPMDB_FILES):
            return real
    raise ResolveError(f"no rpm database below {root} (looked in {', '.join(str(c) for c in tried)})")


def installed_packages(root: Path) -> tuple[PinnedPackage, ...]:
    """Every package installed in the root's rpm database, with the payload hash of its header."""
    if not root.is_dir():
        raise SettingError("installed_root", f"{root} is not a directory")
    db = find_rpmdb(root)
    out = run(["rpm", "--dbpath", db, "-qa", "--qf", HEADER_QUERY], capture=True).stdout.decode()
    packages = []
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) != 6:
            raise ResolveError(f"unexpected rpm -qa output for {db}: {line!r}")
        name, epoch, version, release, arch, sigmd5 = fields
        if name in NOT_FILES or arch == "(none)":
            continue
        packages.append(PinnedPackage(NEVRA.of(name, epoch, version, release, arch),
                                      sigmd5.lower() if sigmd5 != "(none)" else None))
    if not packages:
        raise ResolveError(f"the rpm database {db} lists no packages")
    return tuple(sorted(packages, key=lambda p: p.nevra))


def spec_buildrequires(spec: Path, defines: Sequence[tuple[str, str]] = ()) -> tuple[str, ...]:
    """The BuildRequires of a spec file, as rpmspec parses them (macros expanded, conditionals applied)."""
    if not spec.is_file():
        raise SettingError("spec", f"{spec}: no such file")
    argv: list[Any] = ["rpmspec", "-q", "--buildrequires"]
    for name, value in defines:
        argv += ["--define", f"{name} {value}"]
    argv.append(spec)
    try:
        out = run(argv, capture=True).stdout.decode()
    except CommandError as e:
        raise SettingError("spec", f"{spec}: rpmspec cannot read it: {e.key_line()}") from None
    requires = tuple(line.strip() for line in out.splitlines() if line.strip())
    if not requires:
        raise SettingError("spec", f"{spec} has no BuildRequires: nothing to stage")
    return requires


# The answer of a depsolve is kept in the package cache under a key of everything it depends on.
RESOLUTION_FORMAT = "mkosi-initrd-resolution/1"
# The modules whose code gives the answer: a changed installation of any of them is another key.
SOLVER_MODULES = ("dnf", "libdnf", "hawkey")


def _solver_identity() -> list[Any]:
    """Size and mtime of each solver module's file (not importing them: that alone takes 0.06 s);
    a package upgrade replaces the files, so it changes them."""
    found: list[Any] = []
    for name in SOLVER_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        st = os.stat(origin) if origin else None
        found.append([name, origin, st.st_size if st else None, st.st_mtime_ns if st else None])
    return found


def resolution_key(repomd_sha256: str, stamp: Sequence[Any], specs: Sequence[str]) -> str:
    """The key of a depsolve: the source's repomd.xml (whose checksums name every metadata file dnf
    reads) and what else tells its metadata files apart (Source.metadata_stamp()), the request, the
    solver's settings (fixed in depsolve()) and the machine's architecture, the solver's installed
    modules and this builder's version."""
    inputs = {"format": RESOLUTION_FORMAT, "builder": __version__, "repomd-sha256": repomd_sha256,
              "metadata": list(stamp), "specs": list(specs), "install-weak-deps": False,
              "machine": os.uname().machine, "solver": _solver_identity()}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def cached_depsolve(metadata_dir: Path, specs: Sequence[str], work: Path, *, repomd_sha256: str,
                    stamp: Sequence[Any], cache: Optional["PackageCache"],
                    available: Collection[NEVRA]) -> list[NEVRA]:
    """depsolve(), its answer kept in the package cache: the same source metadata and request give
    the same packages without dnf. A kept answer naming a package the metadata lacks is ignored."""
    if cache is None:
        return depsolve(metadata_dir, specs, work)
    key = resolution_key(repomd_sha256, stamp, specs)
    kept = cache.resolution(key)
    try:
        if kept is not None and kept.get("format") == RESOLUTION_FORMAT:
            chosen = [NEVRA.of(*fields) for fields in kept["packages"]]
            if chosen and all(n in available for n in chosen):
                logger.info("%s resolved to %d packages before, for the same source metadata (%s)",
                            ", ".join(specs), len(chosen), repomd_sha256)
                return chosen
    except (TypeError, ValueError, KeyError, AttributeError):
        pass  # not what this version writes: resolve again and replace it
    chosen = depsolve(metadata_dir, specs, work)
    cache.keep_resolution(key, {"format": RESOLUTION_FORMAT, "specs": list(specs),
                                "packages": [[n.name, n.epoch, n.version, n.release, n.arch] for n in chosen]})
    return chosen


def depsolve(metadata_dir: Path, specs: Sequence[str], work: Path) -> list[NEVRA]:
    """What `dnf install SPECS` into an empty root would install from the repository whose
    metadata is in `metadata_dir`: dnf's own depsolver, nothing from the host's configuration
    (no dnf.conf, no repos.d, no installed packages), weak dependencies off as in koji's buildroots."""
    import dnf  # noqa: PLC0415 - python3-dnf is heavy and only this mode needs it

    conf = dnf.conf.Conf()
    conf.installroot = str(work / "root")
    conf.cachedir = str(work / "cache")
    conf.logdir = str(work / "log")
    conf.persistdir = str(work / "persist")
    conf.reposdir = []
    conf.varsdir = []
    conf.pluginconfpath = []
    conf.install_weak_deps = False
    conf.gpgcheck = False
    conf.substitutions["releasever"] = "staging"
    for d in (conf.installroot, conf.logdir):
        os.makedirs(d, exist_ok=True)
    with _collections_see_only_new_objects():
        chosen = _dnf_install_set(conf, metadata_dir, specs)
    logger.info("dnf resolved %s to %d packages", ", ".join(specs), len(chosen))
    return sorted(chosen)


@contextlib.contextmanager
def _collections_see_only_new_objects() -> Iterator[None]:
    """dnf.Base runs a full gc.collect() in fill_sack() and again in close(), so that the sack's
    cycles (and libsolv's file descriptors) go at once. A full collection walks every object of the
    process: 10-12 ms each in a builder process, two thirds of a small depsolve. Objects that exist
    before dnf starts are not dnf's and hold no part of its cycles: they are frozen for the while
    (gc.freeze(): skipped by collections, freed normally once thawed), so the collections walk only
    what was made since, the sack included. A process that froze objects itself keeps its own
    arrangement."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _dnf_install_set(conf: Any, metadata_dir: Path, specs: Sequence[str]) -> list[NEVRA]:
    import dnf  # noqa: PLC0415
    import dnf.exceptions  # noqa: PLC0415

    base = dnf.Base(conf)
    try:
        base.repos.add_new_repo("source", conf, baseurl=[metadata_dir.absolute().as_uri()])
        try:
            base.fill_sack(load_system_repo=False)
        except dnf.exceptions.RepoError as e:
            raise ResolveError(f"dnf cannot read the source's metadata: {e}") from None
        missing = []
        for spec in specs:
            try:
                base.install(spec)
            except dnf.exceptions.MarkingError:
                missing.append(spec)
        if missing:
            raise ResolveError(f"nothing in the source provides {', '.join(missing)}")
        try:
            base.resolve()
        except dnf.exceptions.DepsolveError as e:
            raise ResolveError(f"dnf cannot resolve {', '.join(specs)}: {e}") from None
        chosen = [NEVRA.of(p.name, p.epoch, p.version, p.release, p.arch) for p in base.transaction.install_set]
    finally:
        base.close()
    return chosen
