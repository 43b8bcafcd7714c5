"""The build pipeline: one repository and kernel in, per variant an initrd, a UKI and a manifest out."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from mkosi_initrd_builder import __version__
from mkosi_initrd_builder.building.formats import FORMATS, OutputFormat
from mkosi_initrd_builder.building.formats.base import BuildInputs, VariantImage
from mkosi_initrd_builder.building.formats.initrd import INITRD
from mkosi_initrd_builder.building.firmware import (FIRMWARE_DIR, FirmwareInstall, accepted_suffixes,
                                                    install_firmware, newest_packages)
from mkosi_initrd_builder.building.kernelfacts import (CACHE_SUBDIR, KernelModuleFacts, facts_key,
                                                       kernel_module_facts)
from mkosi_initrd_builder.building.kmod import (DEPMOD_OUTPUTS, MODULE_SUFFIXES, ModuleSelection, builtin_names,
                                                choose_modules, expand_default)
from mkosi_initrd_builder.building.manifest import MANIFEST_NAME, MANIFEST_VERSION, inputs_hash, write_manifest
from mkosi_initrd_builder.building.formats.uki import ADDONS_DIR, addon_manifest
from mkosi_initrd_builder.building.mkosi_config import MkosiPaths, kernel_modules_include, render_variant, write_variant_files
from mkosi_initrd_builder.building.secureboot import DEFAULT_SBAT_URL, DEFAULT_SBAT_VENDOR, SbatIdentity, SigningKey
from mkosi_initrd_builder.building.variants import VariantSpec
from mkosi_initrd_builder.checking.cpio import CpioEntry, CpioFormatError, iter_cpio
from mkosi_initrd_builder.rpmmeta.repo import RepoPackage, Repository, open_repository, rpm_payload
from mkosi_initrd_builder.util.errors import (
    BuilderError, CommandError, KernelNotFoundError, OutputError, PackageMissingError, RepositoryError, SettingError,
    VariantBuildError,
)
from mkosi_initrd_builder.util.fsutil import (link_or_copy, local_write_error, refused_write_of_command, replace_dir,
                                              sha256_file)
from mkosi_initrd_builder.util.log import Stopwatch, step
from mkosi_initrd_builder.util.namespaces import check_sandbox
from mkosi_initrd_builder.util.run import run, terminate_children
from mkosi_initrd_builder.util.tools import find_tool, tool_version

logger = logging.getLogger("mkosi_initrd_builder.building.build")

DEFAULT_RELEASE = "rawhide"


@dataclasses.dataclass(frozen=True)
class BuildRequest:
    repo: Path
    kernel_version: str
    output: Path
    variants: tuple[VariantSpec, ...]
    jobs: int = 1
    source_date_epoch: Optional[int] = None
    release: str = DEFAULT_RELEASE
    cache_dir: Optional[Path] = None  # mkosi's package caches, one subdirectory per variant; temporary when None
    # The per-kernel facts (each module's .modinfo), kept between builds: default cache_dir/kernel-modules;
    # read afresh in every build when both are None.
    kernel_cache_dir: Optional[Path] = None
    package_version: Optional[str] = None  # the RPM's version-release, for the UKI's SBAT entry; else the kernel's
    sbat_vendor: str = DEFAULT_SBAT_VENDOR
    sbat_url: str = DEFAULT_SBAT_URL
    signing: Optional[SigningKey] = None   # sign the UKIs (a local build); koji signs after the build
    # Where mkosi assembles each variant's root and keeps its temporary files (each variant a fresh
    # directory, removed when it is done): tens of thousands of small files written and removed, so a
    # tmpfs (the spec passes /dev/shm) is faster where creating files on disk is slow. Default: OUTPUT.
    workspace_dir: Optional[Path] = None


@dataclasses.dataclass(frozen=True)
class VariantResult:
    variant: str
    directory: Path
    manifest: dict[str, Any]
    seconds: float
    mkosi_seconds: float
    # each output format's build step after mkosi (the UKI's is ukify's run), by format name
    format_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class KernelInputs:
    version: str
    packages: tuple[str, ...]  # NEVRAs of the packages shipping /usr/lib/modules/<KVER>/
    tree: Path                 # extracted: <tree>/usr/lib/modules/<KVER>/..., the modules some variant keeps
    image: Path                # vmlinuz


@dataclasses.dataclass(frozen=True)
class BuildContext:
    request: BuildRequest
    repo: Repository
    kernel: KernelInputs
    inputs: BuildInputs                     # what the formats' build steps share
    preparing: Mapping[OutputFormat, concurrent.futures.Future]  # each wanted format's prepare(), beside mkosi
    source_date_epoch: int
    work: Path
    sandbox_tree: Path
    package_cache: Path
    tool_versions: Mapping[str, concurrent.futures.Future]  # asked beside the build; needed by the manifests
    logs: Path                              # OUTPUT/.logs: mkosi's full output of the variants that failed
    selections: Mapping[str, ModuleSelection | BaseException]  # each variant's modules, or why it has none
    # each variant's firmware (those with a module selection), unpacked beside the kernel: firmware_for()
    firmware: Mapping[str, concurrent.futures.Future] = dataclasses.field(default_factory=dict)

    def prepared(self, kind: OutputFormat) -> Any:
        """The format's prepare() result, waited for when a variant first needs it (after mkosi)."""
        return self.preparing[kind].result()

    def tools(self) -> dict[str, str]:
        """The tools' versions, as the manifest records them (the builder's own after mkosi's)."""
        versions = {t: f.result() for t, f in self.tool_versions.items()}
        return {"mkosi": versions.pop("mkosi"), "builder": __version__, **versions}
    failed_logs: dict[Path, Path] = dataclasses.field(default_factory=dict)  # work copy -> kept copy


def resolve_source_date_epoch(requested: Optional[int], repo: Repository) -> int:
    """--source-date-epoch, else $SOURCE_DATE_EPOCH, else the newest package build time in the
    repository: a value that follows from the inputs, so rebuilds stay byte-identical."""
    if requested is not None:
        return requested
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError:
            raise BuilderError(f"SOURCE_DATE_EPOCH={env!r} is not an integer") from None
    return repo.newest_buildtime()


def prepare_output(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(output, f"cannot create: {e.strerror}") from None
    if not output.is_dir():
        raise OutputError(output, "is not a directory")
    if not os.access(output, os.W_OK | os.X_OK):
        raise OutputError(output, "is not writable")


def check_variant_destination(directory: Path) -> None:
    """OUTPUT/<variant> is replaced whole by the build: refuse unless it is absent, empty, or a
    directory this builder made (its manifest, and only files the builder writes), so nobody's
    own files are deleted silently."""
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        what = "a symbolic link" if directory.is_symlink() else "not a directory"
        raise OutputError(directory, f"is {what}, so no variant output of this builder: refusing to replace it")
    if not directory.is_dir():
        return
    entries = sorted(directory.iterdir())
    if not entries:
        return
    ours = {MANIFEST_NAME} | {f.file_name for f in FORMATS.values()}
    try:
        made_here = "manifest-version" in json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError, TypeError):
        made_here = False
    if not made_here:
        raise OutputError(directory, f"holds {entries[0].name} and no {MANIFEST_NAME} of this builder: refusing "
                                     "to replace it (move it away or choose another --output)")
    for entry in entries:
        if entry.name == ADDONS_DIR and entry.is_dir() and not entry.is_symlink() and all(
                a.is_file() and not a.is_symlink() and a.name.endswith(".addon.efi") for a in entry.iterdir()):
            continue  # the UKI's addons, as the builder writes them
        if entry.name not in ours or entry.is_symlink() or not entry.is_file():
            raise OutputError(directory, f"holds {entry.name}, which this builder does not write: refusing to "
                                         "replace it (move it away or choose another --output)")


@dataclasses.dataclass(frozen=True)
class KernelPayload:
    """What the kernel packages' payloads hold under /usr/lib/modules/<KVER>/ (or /lib/modules/<KVER>/),
    read once per build, by path below that directory: the modules, the other files and links."""

    packages: tuple[RepoPackage, ...]
    modules: Mapping[str, tuple[str, CpioEntry]]  # NEVRA of the package, the entry
    others: Mapping[str, CpioEntry]
    image_names: tuple[str, ...]                  # vmlinuz* in the modules directory

    @property
    def config(self) -> Optional[str]:
        """The kernel's configuration (/usr/lib/modules/KVER/config), None when the packages ship none."""
        entry = self.others.get("config")
        return entry.data.decode(errors="replace") if entry is not None and entry.is_file else None

    @property
    def builtin(self) -> bytes:
        entry = self.others.get("modules.builtin")
        return entry.data if entry is not None and entry.is_file else b""

    def module_data(self) -> dict[str, tuple[str, bytes]]:
        return {rel: (nevra, e.data) for rel, (nevra, e) in self.modules.items()}


def read_kernel_payload(repo: Repository, kernel_version: str) -> KernelPayload:
    """The kernel packages' payloads, each decompressed by rpm2cpio once and parsed in memory: the
    modules' .modinfo is read from there, and only what the variants keep is written to disk."""
    packages = tuple(repo.kernel_packages(kernel_version))
    if not packages:
        raise KernelNotFoundError(kernel_version, repo.path, repo.kernel_versions())
    prefixes = (f"usr/lib/modules/{kernel_version}/", f"lib/modules/{kernel_version}/")
    modules: dict[str, tuple[str, CpioEntry]] = {}
    others: dict[str, CpioEntry] = {}
    for p in packages:
        nevra = str(p.nevra)
        try:
            entries = list(iter_cpio(rpm_payload(repo.path / p.href)))
        except CpioFormatError as e:
            raise RepositoryError(repo.path, f"{p.href}: its payload is no cpio archive rpm2cpio could "
                                             f"write: {e}") from None
        for e in entries:
            prefix = next((x for x in prefixes if e.name.startswith(x)), None)
            if prefix is None or e.is_dir:
                continue
            rel = e.name[len(prefix):]
            if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
                raise RepositoryError(repo.path, f"{p.href}: payload entry {e.name!r} is no plain path")
            if e.is_file and rel.endswith(MODULE_SUFFIXES):
                modules[rel] = (nevra, e)
            else:
                others[rel] = e
    images = sorted(rel for rel in others if "/" not in rel and rel.startswith("vmlinuz") and not rel.endswith(".efi"))
    if not images:
        raise RepositoryError(repo.path, f"no package ships /usr/lib/modules/{kernel_version}/vmlinuz "
                                         f"(kernel packages: {', '.join(str(p.nevra) for p in packages)})")
    return KernelPayload(packages, modules, others, tuple(images))


def extract_kernel(payload: KernelPayload, kernel_version: str, dest: Path, modules: Sequence[str]) -> KernelInputs:
    """Write the kernel's files other than modules, and of the modules only `modules` (what the
    variants keep), to <dest>/usr/lib/modules/<KVER>/ (merged /usr, whichever directory the packages
    use). Only those: on a real kernel, writing all 4,230 modules took 3.4 s on this project's
    machine (the cost is per file, not per byte), and cpio reading the whole payload from a pipe to
    pick a few of them another 0.4 s; the entries are already parsed in memory."""
    moddir = dest / "usr/lib/modules" / kernel_version
    entries = [(rel, payload.others[rel]) for rel in sorted(payload.others)]
    entries += [(rel, payload.modules[rel][1]) for rel in sorted(modules)]
    with step(f"Extracting kernel {kernel_version}: {len(modules)} of {len(payload.modules)} modules"):
        moddir.mkdir(parents=True, exist_ok=True)
        for rel, e in entries:
            target = moddir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if e.is_symlink:
                os.symlink(e.data.decode(errors="surrogateescape"), target)
                os.utime(target, (e.mtime, e.mtime), follow_symlinks=False)
            elif e.is_file:
                with open(target, "xb") as f:
                    f.write(e.data)
                os.chmod(target, e.mode & 0o7777)
                os.utime(target, (e.mtime, e.mtime))
            # device nodes, fifos: nothing a modules directory holds that the image could use
    return KernelInputs(kernel_version, tuple(str(p.nevra) for p in payload.packages), dest,
                        moddir / payload.image_names[0])


def link_kernel_tree(src: Path, dest: Path, kept: Sequence[str]) -> None:
    """A variant's copy of the modules directory `src` in `dest`, hard-linked where the file system
    allows it: every file but the modules not `kept` and depmod's outputs (the image runs its own
    depmod, so stale copies must not reach it); directories only where a file goes."""
    keep = set(kept)
    dest.mkdir(parents=True, exist_ok=True)

    def walk(directory: str, rel: str) -> None:
        with os.scandir(directory) as entries:
            for e in entries:
                r = rel + e.name
                if e.is_dir(follow_symlinks=False):
                    walk(e.path, r + "/")
                    continue
                if e.name.endswith(MODULE_SUFFIXES) and e.is_file(follow_symlinks=False) and r not in keep:
                    continue
                if not rel and e.name in DEPMOD_OUTPUTS:
                    continue
                target = dest / r
                target.parent.mkdir(parents=True, exist_ok=True)
                if e.is_symlink():
                    os.symlink(os.readlink(e.path), target)
                else:
                    link_or_copy(Path(e.path), target)
    walk(os.fspath(src), "")


def write_sandbox_tree(root: Path, repo: Path, release: str) -> None:
    """The tree mkosi overlays on its package-manager sandbox.

    mkosi writes its default repositories to etc/yum.repos.d/mkosi.repo only when that file does
    not exist, so ours names exactly one repository, the local one (LocalMirror= makes mkosi
    bind-mount that directory read-only into the sandbox). mkosi also insists on finding a key
    file for the release; it is never used (RepositoryKeyCheck=no: packages are verified when
    they are staged).
    """
    (root / "etc/yum.repos.d").mkdir(parents=True)
    (root / "etc/yum.repos.d/mkosi.repo").write_text(
        "[mkosi-initrd-local]\n"
        "name=mkosi-initrd local repository\n"
        f"baseurl={repo.resolve().as_uri()}\n"
        "enabled=1\n"
        "gpgcheck=0\n"
        "metadata_expire=never\n"
    )
    (root / "etc/pki/rpm-gpg").mkdir(parents=True)
    (root / f"etc/pki/rpm-gpg/RPM-GPG-KEY-fedora-{release}-primary").write_text(
        "# placeholder: mkosi requires a key file; signatures are not checked in offline builds\n")


def mkosi_initrd_default_modules(release: str) -> tuple[str, ...]:
    """mkosi-initrd's KernelModulesInclude= list, asked from the mkosi that builds the images: it
    resolves Include=mkosi-initrd to its own resources, however and wherever it is installed."""
    return _kernel_modules_include_of(find_tool("mkosi"), release)


@functools.lru_cache(maxsize=None)
def _kernel_modules_include_of(mkosi: str, release: str) -> tuple[str, ...]:
    with tempfile.TemporaryDirectory(prefix="mkosi-initrd-modules-") as tmp:
        out = run([mkosi, f"--directory={tmp}", "--distribution=fedora", f"--release={release}",
                   "--include=mkosi-initrd", "--json", "summary"], capture=True).stdout
    return kernel_modules_include(out)


# What mkosi accepts as a Fedora release and what may name a file (the sandbox's GPG key file).
RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")


def check_release(release: str) -> str:
    if not RELEASE_RE.match(release):
        raise SettingError("release", f"{release!r} is not a release name (letters, digits, '.', '_', '+', '~' "
                                      "and '-', such as 'rawhide' or '42')")
    return release


def check_workspace_dir(path: Path) -> None:
    if not path.is_dir():
        raise SettingError("workspace_dir", f"{path} is not a directory" if path.exists() else f"{path} does not exist")
    if not os.access(path, os.W_OK | os.X_OK):
        raise SettingError("workspace_dir", f"{path} is not writable")


def build(request: BuildRequest) -> list[VariantResult]:
    """Build every requested variant; raise VariantBuildError naming those that failed."""
    check_release(request.release)
    places = [("the output directory", request.output.absolute())]
    if request.cache_dir is not None:
        places.append(("the cache directory", request.cache_dir.absolute()))
    if request.workspace_dir is not None:
        check_workspace_dir(request.workspace_dir)
        places.append(("the workspace directory", request.workspace_dir.absolute()))
    places.append(("the temporary directory", Path(tempfile.gettempdir()).absolute()))
    try:
        return _build(request, places)
    except OSError as e:
        # A full or read-only file system is named by the directory the user chose, not by errno.
        if (local := local_write_error(e, places)) is None:
            raise
        raise local from None
    except CommandError as e:
        # The same when a tool (cpio extracting the kernel, ukify) hit it.
        if (local := refused_write_of_command(e, places)) is None:
            raise
        raise local from None


def _build(request: BuildRequest, places: Sequence[tuple[str, Path]]) -> list[VariantResult]:
    sbat = SbatIdentity(request.package_version or request.kernel_version, request.sbat_vendor, request.sbat_url)
    if request.signing is not None:
        request.signing.check()
    wanted = [k for k in FORMATS if any(k in v.formats for v in request.variants)]
    # extract_rpm runs rpm2cpio and cpio; the builder compresses and reads zstd in process.
    for tool in ("mkosi", "rpm2cpio", "cpio", *(t for k in wanted for t in FORMATS[k].tools)):
        find_tool(tool)
    check_sandbox()
    # mkosi runs with paths below the output directory; relative ones would not survive its --directory=.
    request = dataclasses.replace(request, output=request.output.absolute())
    prepare_output(request.output)
    for variant in request.variants:
        check_variant_destination(request.output / variant.name)
    with step(f"Reading repository {request.repo}"):
        repo = open_repository(request.repo)
        logger.info("  %d packages, kernels: %s", len(repo.packages), ", ".join(repo.kernel_versions()) or "none")
    sde = resolve_source_date_epoch(request.source_date_epoch, repo)
    # Side work that waits on processes (tool versions, the formats' packages) runs beside the kernel's.
    side = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    try:
        return _build_in(request, places, sbat, wanted, repo, sde, side)
    finally:
        side.shutdown(wait=True, cancel_futures=True)


def select_variants_modules(request: BuildRequest, facts: KernelModuleFacts, builtin: frozenset[str],
                            default_modules: Callable[[], Sequence[str]]) -> dict[str, ModuleSelection | BaseException]:
    """Each variant's modules, chosen before the kernel is unpacked so that only those are; a variant
    whose selection fails gets the error, raised when it is built (each variant fails alone)."""
    out: dict[str, ModuleSelection | BaseException] = {}
    for variant in request.variants:
        try:
            include = list(variant.kernel_modules_include)
            if "default" in include:
                include = expand_default(include, default_modules())
            out[variant.name] = choose_modules(facts.sizes, builtin, include, variant.kernel_modules_exclude,
                                               facts.info_of)
        except Exception as e:
            out[variant.name] = e
    return out


def kernel_cache_dir(request: BuildRequest) -> Optional[Path]:
    if request.kernel_cache_dir is not None:
        return request.kernel_cache_dir
    return request.cache_dir / CACHE_SUBDIR if request.cache_dir is not None else None


def _build_in(request: BuildRequest, places: Sequence[tuple[str, Path]], sbat: SbatIdentity,
              wanted: Sequence[OutputFormat], repo: Repository, sde: int,
              side: concurrent.futures.ThreadPoolExecutor) -> list[VariantResult]:
    with step("Checking the packages to extract against the repository's checksums"):
        # extracted by rpm2cpio, which checks nothing: the kernel's and each format's packages
        extracted = {p.nevra.name for p in repo.kernel_packages(request.kernel_version)}
        extracted.update(name for k in wanted for name in FORMATS[k].spec_packages(repo))
        extracted.update(p.nevra.name for v in request.variants for p in newest_packages(repo, v.firmware_packages))
        for pkg in repo.packages:
            if pkg.nevra.name in extracted:
                repo.check_package_file(pkg)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=request.output))
    try:
        return _build_variants(request, places, sbat, wanted, repo, sde, side, work)
    finally:
        # The side work may still be writing below `work` when the build failed early.
        side.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(work, ignore_errors=True)


def _build_variants(request: BuildRequest, places: Sequence[tuple[str, Path]], sbat: SbatIdentity,
                    wanted: Sequence[OutputFormat], repo: Repository, sde: int,
                    side: concurrent.futures.ThreadPoolExecutor, work: Path) -> list[VariantResult]:
    # mkosi-initrd's own module list (a mkosi process), asked while the kernel is read when a variant uses it
    defaults = (side.submit(mkosi_initrd_default_modules, request.release)
                if any("default" in v.kernel_modules_include for v in request.variants) else None)
    with step(f"Reading the payload of kernel {request.kernel_version}'s packages"):
        payload = read_kernel_payload(repo, request.kernel_version)
    inputs = BuildInputs(repo, request.kernel_version,
                         work / "kernel/usr/lib/modules" / request.kernel_version / payload.image_names[0],
                         work, sbat, request.signing)
    preparing = {k: side.submit(FORMATS[k].prepare, inputs) for k in wanted}
    cache_dir = kernel_cache_dir(request)
    with step(f"Reading the .modinfo of {len(payload.modules)} kernel modules"):
        facts, cached = kernel_module_facts(cache_dir, facts_key(request.kernel_version, payload.packages),
                                            request.kernel_version, payload.module_data())
        logger.info("  %s", f"from the cache in {cache_dir}" if cached else
                    f"read and kept in {cache_dir}" if cache_dir is not None else "read (no cache directory)")
    selections = select_variants_modules(request, facts, builtin_names(payload.builtin),
                                         defaults.result if defaults is not None else tuple)
    kept = sorted({m for sel in selections.values() if isinstance(sel, ModuleSelection) for m in sel.kept})
    # Each variant's firmware comes out of its packages beside the kernel's extraction and the other
    # variants' work (rpm2cpio unpacking linux-firmware is most of it: 0.3 s of generic's build).
    accepted = accepted_suffixes(payload.config)
    firmware = {v.name: side.submit(firmware_for, repo, v, sel, accepted, work / "firmware" / v.name)
                for v in request.variants if isinstance(sel := selections[v.name], ModuleSelection)}
    kernel = extract_kernel(payload, request.kernel_version, work / "kernel", kept)
    del payload  # the kernel's payloads: hundreds of MB on a real kernel
    # The formats' preparation (the UKI stub, the microcode archive) goes on beside mkosi; one that
    # already failed (a package missing, found at once) stops the build before mkosi starts.
    for f in preparing.values():
        if f.done() and f.exception() is not None:
            raise f.exception()
    write_sandbox_tree(work / "sandbox", repo.path, request.release)
    cache = request.cache_dir or work / "pkgcache"
    cache.mkdir(parents=True, exist_ok=True)
    # The tools' versions only go into the manifests: asked now, they run on the core mkosi leaves free
    # while dnf works, instead of slowing the reading and unpacking of the kernel before mkosi starts.
    versions = {t: side.submit(tool_version, t) for t in ("mkosi", *(t for k in wanted for t in FORMATS[k].tools))}
    ctx = BuildContext(request, repo, kernel, inputs, preparing, sde, work, work / "sandbox", cache, versions,
                       logs=request.output / ".logs", selections=selections, firmware=firmware)
    logger.info("SOURCE_DATE_EPOCH=%d, %d variant(s), %d job(s)", sde, len(request.variants), request.jobs)

    results: list[VariantResult] = []
    failures: dict[str, BaseException] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, request.jobs))
    futures = {pool.submit(build_variant, ctx, v): v.name for v in request.variants}
    try:
        for fut in concurrent.futures.as_completed(futures):
            name = futures[fut]
            try:
                results.append(fut.result())
            except Exception as e:  # each variant fails alone; the others still finish
                if isinstance(e, OSError):
                    e = local_write_error(e, places) or e
                elif isinstance(e, CommandError):
                    e = refused_write_of_command(e, places) or e
                logger.error("variant %s failed: %s", name, str(e).splitlines()[0] if str(e) else type(e).__name__)
                failures[name] = e
    except BaseException:
        # Interrupted: stop queued variants and the commands of running ones, so the work
        # directory can go and no variant reaches OUTPUT half-built.
        pool.shutdown(wait=False, cancel_futures=True)
        while not all(f.done() for f in futures):
            terminate_children()
            concurrent.futures.wait(futures, timeout=0.5)
        raise
    finally:
        pool.shutdown(wait=True)
    # Kept only when the build ran to its end: an interrupted build leaves nothing in OUTPUT.
    for src, dest in ctx.failed_logs.items():
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(src, dest)
    if failures:
        # A format's preparation that failed is the build's error, whichever variants met it.
        for f in preparing.values():
            if f.exception() is not None:
                raise f.exception()
        raise VariantBuildError(failures)
    order = [v.name for v in request.variants]
    return sorted(results, key=lambda r: order.index(r.variant))


def firmware_for(repo: Repository, variant: VariantSpec, selection: ModuleSelection, accepted: Sequence[str],
                 work: Path) -> tuple[FirmwareInstall, Path]:
    """The firmware the variant's kept modules ask for, from its firmware packages, in <work>/tree (the
    image's /usr/lib/firmware; absent when nothing was placed), and what was placed and missed."""
    work.mkdir(parents=True)
    tree = work / "tree"
    return install_firmware(repo, newest_packages(repo, variant.firmware_packages), selection.firmware, accepted,
                            tree, work), tree


def build_variant(ctx: BuildContext, variant: VariantSpec) -> VariantResult:
    watch = Stopwatch()
    req = ctx.request
    missing = ctx.repo.missing([*variant.packages, *variant.firmware_packages])
    if missing:
        raise PackageMissingError(missing, ctx.repo.path, variant=variant.name)
    vwork = ctx.work / "variants" / variant.name
    vwork.mkdir(parents=True)

    selection = ctx.selections[variant.name]
    if isinstance(selection, BaseException):
        raise selection
    with step(f"[{variant.name}] Linking the kept kernel modules"):
        kernel_tree = vwork / "kernel"
        moddir = kernel_tree / "usr/lib/modules" / ctx.kernel.version
        link_kernel_tree(ctx.kernel.tree / "usr/lib/modules" / ctx.kernel.version, moddir, selection.kept)
        logger.info("  [%s] %d modules kept, %d left out", variant.name, len(selection.kept), len(selection.removed))
        for m in selection.missing_dependencies:
            logger.warning("  [%s] module dependency %s is not shipped by the kernel packages", variant.name, m)

    with step(f"[{variant.name}] Adding the kept modules' firmware"):
        # Unpacked beside the kernel's extraction (firmware_for()); moved into the variant's tree here.
        firmware, unpacked = ctx.firmware[variant.name].result()
        if unpacked.exists():
            (kernel_tree / FIRMWARE_DIR).parent.mkdir(parents=True, exist_ok=True)
            os.rename(unpacked, kernel_tree / FIRMWARE_DIR)
        logger.info("  [%s] %d firmware file(s), %s B, for %d wanted name(s); not found in %s: %d",
                    variant.name, len(firmware.files), f"{sum(f.size for f in firmware.files):,}",
                    len(selection.firmware), ", ".join(variant.firmware_packages) or "(no firmware-packages)",
                    len(firmware.missing))

    # One package cache per variant. mkosi locks the cache's metadata directories only when they
    # already exist, so two variants starting on a fresh shared cache (every %build starts with
    # one) ran dnf's metadata sync into the same directory at once: the intermittent mkosi exit 1
    # under --jobs 2. The repository is local and used in place, so the cache holds metadata
    # only (tens of KB): sharing saved nothing.
    package_cache = ctx.package_cache / variant.name
    package_cache.mkdir(exist_ok=True)
    scratch = (Path(tempfile.mkdtemp(prefix=f".mkosi-initrd-{variant.name}-", dir=req.workspace_dir))
               if req.workspace_dir is not None else vwork / "scratch")
    try:
        paths = MkosiPaths(
            repo=ctx.repo.path.resolve(), kernel_tree=kernel_tree, files_tree=vwork / "files",
            sandbox_tree=ctx.sandbox_tree,
            package_cache=package_cache, workspace=scratch / "workspace", output_dir=vwork / "out",
            config_dir=vwork / "config",
        )
        for d in (paths.workspace, scratch / "tmp", paths.output_dir, paths.config_dir):
            d.mkdir(parents=True)
        write_variant_files(variant, paths.files_tree, ctx.source_date_epoch)
        rendered = render_variant(variant, release=req.release, source_date_epoch=ctx.source_date_epoch, paths=paths)
        rendered.write(paths.config_dir)

        with step(f"[{variant.name}] Building the image with mkosi") as mkosi_watch:
            run_mkosi(ctx, variant, rendered.argv, vwork / "mkosi.log", tmpdir=scratch / "tmp")
    finally:
        if req.workspace_dir is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    initrd = paths.output_dir / INITRD.mkosi_output
    if not initrd.exists():
        raise BuilderError(f"[{variant.name}] mkosi finished without writing {INITRD.mkosi_output}")
    final = vwork / "final"
    final.mkdir()
    # Read once: the entries for the checks and the bytes the initrd format compresses.
    cpio = initrd.read_bytes()
    initrd.unlink()
    image = VariantImage(variant, cpio, {e.name: e for e in iter_cpio(cpio)}, final, vwork)
    chosen = [k for k in FORMATS if k in variant.formats]
    format_seconds = {}
    # Each output's digest and manifest entry are read while the next format builds (ukify runs in a
    # process of its own), and the UKI's two digests side by side: 0.3 s after generic's ukify otherwise.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as describing:
        described = {}
        for kind in chosen:
            format_watch = Stopwatch()
            FORMATS[kind].build(image, ctx.inputs, ctx.prepared(kind))
            format_seconds[kind.value] = format_watch.stop()
            path = final / FORMATS[kind].file_name
            described[path] = (describing.submit(sha256_file, path),
                               describing.submit(FORMATS[kind].manifest_entry, ctx.prepared(kind), path))
        outputs = {path.name: {"sha256": digest.result(), "size": path.stat().st_size, **entry.result()}
                   for path, (digest, entry) in described.items()}

    image_packages = mkosi_packages(paths.output_dir / "initrd.manifest")
    tools = ctx.tools()
    inputs = {
        "variant": variant.to_dict(),
        "kernel-version": ctx.kernel.version,
        "repository": ctx.repo.content_digest(),
        "source-date-epoch": ctx.source_date_epoch,
        "release": req.release,
        "tools": tools,
        "formats": {k.value: facts for k in chosen if (facts := FORMATS[k].input_facts(ctx.prepared(k)))},
    }
    manifest = {
        "manifest-version": MANIFEST_VERSION,
        "variant": variant.name,
        "summary": variant.summary,
        "kernel": {"version": ctx.kernel.version, "packages": list(ctx.kernel.packages)},
        "packages": image_packages,
        "kernel-modules": list(selection.kept),
        "firmware-wanted": list(selection.firmware),
        **firmware.manifest(),
        "kernel-command-line": variant.kernel_command_line,
        # Only when the variant has them, so the manifests of every other variant stay as they were.
        **({"uki-profiles": [p.to_dict() for p in variant.uki_profiles]} if variant.uki_profiles else {}),
        **({"uki-addons": addon_manifest(final, variant)} if variant.uki_addons else {}),
        **({"removed-on-purpose": [r.to_dict() for r in variant.removals]} if variant.removals else {}),
        "outputs": outputs,
        "size-budget": variant.size_budget,
        "source-date-epoch": ctx.source_date_epoch,
        "inputs-hash": inputs_hash(inputs),
        "tools": tools,
    }
    write_manifest(final, manifest)
    dest = req.output / variant.name
    replace_dir(final, dest)
    seconds = watch.stop()
    logger.info("[%s] done in %.1fs: %s", variant.name, seconds,
                ", ".join(f"{n} {o['size']:,} B" for n, o in outputs.items()))
    return VariantResult(variant.name, dest, manifest, seconds, mkosi_watch.seconds, format_seconds)


def run_mkosi(ctx: BuildContext, variant: VariantSpec, argv: Sequence[str], log: Path, tmpdir: Path) -> None:
    """mkosi build, its whole output in `log`; when it fails, the log is kept under OUTPUT/.logs/ and
    the error shows mkosi's error lines as well as its last lines (the last ones alone are often a
    package manager's harmless chatter). Its TMPDIR is the variant's own (mkosi unpacks its resources
    there on every run), so nothing it leaves outlives the build."""
    try:
        run([find_tool("mkosi"), *argv, "build"],
            env={"SOURCE_DATE_EPOCH": str(ctx.source_date_epoch), "TMPDIR": str(tmpdir)}, log_output=log)
    except CommandError as e:
        kept = ctx.logs / f"{variant.name}-mkosi.log"
        ctx.failed_logs[log] = kept
        raise CommandError(e.argv, e.returncode, e.output_tail, log=kept, errors=error_lines(log)) from None


ERROR_LINE = re.compile(r"(?i)\b(error|failed|failure|cannot|can't|no such|not found|denied|traceback)\b")


def error_lines(log: Path, limit: int = 10) -> tuple[str, ...]:
    """The first lines of `log` that look like errors, each with the indented lines that continue
    it (dnf prints "Error:" and then the problem on the lines below, indented)."""
    found: list[str] = []
    continuing = False
    with open(log, "rb") as f:
        for raw in f:
            line = raw.decode(errors="replace").rstrip()
            if ERROR_LINE.search(line) or (continuing and line[:1].isspace() and line.strip()):
                found.append(line)
                continuing = True
                if len(found) == limit:
                    break
            else:
                continuing = False
    return tuple(found)


def mkosi_packages(path: Path) -> list[str]:
    """NEVRAs of the packages mkosi recorded as installed in the image."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BuilderError(f"cannot read mkosi's package manifest {path}: {e}") from None
    return sorted(f"{p['name']}-{p['version']}.{p['architecture']}" if p.get("architecture")
                  else f"{p['name']}-{p['version']}" for p in data.get("packages", []))
