"""kojid plugin: give allow-listed buildArch tasks a verified offline repository inside the buildroot.

rpmbuild in koji runs without network, so a spec that builds an initrd with mkosi cannot reach the
build tag's repository. For an allow-listed source package this plugin installs the SRPM's
BuildRequires (`mock --installdeps`), stages exactly the RPM files now installed in the buildroot
from the buildroot's own repository into kojid's persistent chroot tmpdir, writes
/etc/rpm/macros.mkosi-initrd in the chroot (%mkosi_initrd_repo = that directory as the build sees
it), uploads stage-manifest.json with the task's logs, and then runs kojid's own build().

kojid has no hook between buildroot init and rpmbuild, so at load time the plugin replaces
BuildRoot, in the module that holds BuildArchTask, by a subclass overriding build(). For any other
package that subclass calls the original build() and nothing else.

Enable it with `plugins = mkosi_initrd` in /etc/kojid/kojid.conf (the file on `pluginpath`),
configure it in /etc/kojid/plugins/mkosi_initrd.conf. The staging itself is the library
mkosi_initrd_builder.staging.stage, which must be importable by kojid's python.
"""

from __future__ import annotations

import logging
import os
import posixpath
import sys
from pathlib import Path
from typing import Any, Optional

import koji

from mkosi_initrd_builder.plugin.config import Isolation, PluginConfig, is_true, parse_plugin_config
from mkosi_initrd_builder.staging.resolve import PinnedPackage
from mkosi_initrd_builder.staging.stage import (
    STAGE_MANIFEST_NAME, PackageSelection, StageRequest, StageResult, stage_repository,
)
from mkosi_initrd_builder.util.errors import BuilderError, SettingError
from mkosi_initrd_builder.util.fsutil import atomic_write, is_within
from mkosi_initrd_builder.util.urls import redact

CONFIG_FILE = "/etc/kojid/plugins/mkosi_initrd.conf"
# Lets tests (and unusual installations) point at another file without patching this module.
CONFIG_ENV = "MKOSI_INITRD_KOJID_CONFIG"
MACRO = "mkosi_initrd_repo"
MACROS_FILE = "etc/rpm/macros.mkosi-initrd"   # below the chroot; rpm reads /etc/rpm/macros.* by itself
REPO_SUBDIR = "mkosi-initrd/repo"             # below kojid's chroot tmpdir, which survives mock runs

logger = logging.getLogger("koji.plugin.mkosi_initrd")


def load_config(path: Optional[str] = None) -> PluginConfig:
    """Read and validate the configuration; any problem is koji.GenericError('bad config: ...')."""
    path = path or os.environ.get(CONFIG_ENV) or CONFIG_FILE
    try:
        parser = koji.read_config_files([(path, True)], raw=True)
        return parse_plugin_config(parser, Path(path))
    except BuilderError as e:
        raise koji.GenericError(f"bad config: {e}") from None
    except koji.ConfigurationError as e:
        raise koji.GenericError(f"bad config: {path}: {e}") from None
    except Exception as e:  # configparser's own errors: duplicate keys, no section header, ...
        raise koji.GenericError(f"bad config: {path}: {type(e).__name__}: {e}") from None


def find_kojid_module() -> Any:
    """The module holding kojid's BuildArchTask: __main__ in the daemon, another name when kojid is
    loaded as a module (koji's own tests load it as koji_kojid)."""
    candidates = [sys.modules.get("__main__")] + [m for _, m in sorted(sys.modules.items())]
    for module in candidates:
        try:
            task = getattr(module, "BuildArchTask", None)
        except Exception:  # noqa: BLE001 - a module's lazy __getattr__ may raise anything
            continue
        if isinstance(task, type) and "buildArch" in getattr(task, "Methods", ()):
            home = sys.modules.get(task.__module__)
            if home is not None and isinstance(getattr(home, "BuildRoot", None), type):
                return home
    raise koji.PluginError("mkosi_initrd: no loaded module defines kojid's BuildArchTask and BuildRoot; "
                           "this plugin only works inside kojid")


def srpm_name(srpm: str) -> str:
    return koji.get_header_field(koji.get_rpm_header(srpm), "name")


def chroot_path(broot: Any, relative: str) -> Path:
    """A path below the buildroot; symlinks in the chroot (packages put them there) must not lead out."""
    root = Path(os.path.realpath(broot.rootdir()))
    path = root / relative.lstrip("/")
    real_parent = Path(os.path.realpath(path.parent))
    if not is_within(real_parent, root):
        raise koji.BuildError(f"mkosi_initrd: {path.parent} leads out of the buildroot (to {real_parent})")
    return path


def buildroot_repository(broot: Any) -> str:
    """The buildroot's own repository: the topdir copy when this builder mounts it, else topurl.
    Never anything a task or a user chose."""
    relpath = posixpath.join(broot.get_repo_dir().strip("/"), broot.br_arch)
    topdir = getattr(broot.options, "topdir", None)
    if topdir and os.path.isfile(os.path.join(topdir, relpath, "repodata", "repomd.xml")):
        return os.path.join(topdir, relpath)
    topurl = getattr(broot.options, "topurl", None)
    if not topurl:
        raise koji.BuildError(f"mkosi_initrd: {relpath} is not below topdir and no topurl is configured")
    return f"{topurl.rstrip('/')}/{relpath}"


def stage_buildroot(broot: Any, config: PluginConfig, package: str, srpm: str) -> StageResult:
    """Install the BuildRequires, stage the installed packages' files, write the macro, upload the manifest."""
    rv = broot.mock(["--installdeps", srpm])
    if rv:
        broot.expire()
        raise koji.BuildError(f"mkosi_initrd: installing the BuildRequires of {package} failed, "
                              f"{broot._mockResult(rv)}")
    # kojid's own listing: what getPackageList() reads from the chroot's rpm database, with
    # payload hashes already checked against the repo's rpmlist.jsonl (mapInternalRPMs).
    listing = broot.getPackageList()
    source = buildroot_repository(broot)
    dest = chroot_path(broot, posixpath.join(broot.tmpdir(within=True), REPO_SUBDIR))
    inside = "/" + str(dest.relative_to(os.path.realpath(broot.rootdir())))
    request = StageRequest(
        source=source, dest=dest,
        selection=PackageSelection(pinned=tuple(PinnedPackage.from_koji(p) for p in listing)),
        cache_dir=config.cache_dir, jobs=config.jobs, max_bytes=config.max_size, retry=config.retry_policy(),
    )
    shown = redact(source)

    def failed(detail: str) -> koji.BuildError:
        broot.expire()  # a buildroot that a staging broke off in is not reused
        return koji.BuildError(f"mkosi_initrd: staging the buildroot packages of {package} from {shown} failed{detail}")

    try:
        result = stage_repository(request)
    except SettingError as e:
        spellings = {**config.setting_spellings(), "dest": "the staged repository in the buildroot"}
        raise failed(f": {e.spelled(spellings)} (see {CONFIG_FILE})") from None
    except BuilderError as e:
        raise failed(f": {e}") from None
    except Exception as e:  # a defect or an unforeseen OSError: still one line
        raise failed(f" unexpectedly: {type(e).__name__}: {redact(str(e))}") from None
    macros = chroot_path(broot, MACROS_FILE)
    macros.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(macros, f"# written by the kojid plugin mkosi_initrd for {package}\n%{MACRO} {inside}\n")
    broot.single_log(str(result.manifest), name=STAGE_MANIFEST_NAME)
    logger.info("mkosi_initrd: %s: staged %d packages into %s: %d bytes fetched, %d bytes from cache, %.1fs",
                package, len(result.packages), inside, result.bytes_fetched, result.bytes_from_cache,
                result.seconds)
    return result


NEW_CHROOT = "mock.new_chroot"   # the build tag extra kojid turns into --new-chroot / --old-chroot


def require_nspawn(broot: Any, config: PluginConfig, package: str) -> None:
    """mkosi builds in user namespaces, which the kernel refuses inside a chroot: mock's simple
    isolation cannot build the images. Make kojid ask mock for nspawn, or stop before any work."""
    extra = broot.config.get("extra") or {}
    asked = extra.get(NEW_CHROOT)
    if asked is not None and is_true(asked):
        return
    setting = f"{NEW_CHROOT}={asked}" if asked is not None else f"no {NEW_CHROOT} (mock chooses)"
    if config.isolation is Isolation.TAG:
        if asked is None:
            logger.info("mkosi_initrd: %s: build tag %s sets %s; the build needs mock's nspawn isolation",
                        package, broot.tag_name, setting)
            return
        raise koji.BuildError(
            f"mkosi_initrd: {package} needs mock's nspawn isolation (mkosi builds in user namespaces, which "
            f"a simple chroot refuses), but build tag {broot.tag_name} sets {setting}: run "
            f"`koji edit-tag {broot.tag_name} -x {NEW_CHROOT}=True`, or set isolation = nspawn in {CONFIG_FILE}")
    broot.config = dict(broot.config, extra=dict(extra, **{NEW_CHROOT: True}))
    logger.info("mkosi_initrd: %s: mock runs with --new-chroot (nspawn isolation; build tag %s sets %s): "
                "mkosi builds in user namespaces, which a simple chroot refuses", package, broot.tag_name, setting)


def make_buildroot_class(base: type, config: PluginConfig) -> type:
    class MkosiInitrdBuildRoot(base):  # type: ignore[misc, valid-type]
        """kojid's BuildRoot; build() stages the repository first for allow-listed packages."""

        mkosi_initrd_base = base
        mkosi_initrd_config = config

        def build(self, srpm: str, arch: Optional[str] = None) -> Any:
            package = srpm_name(srpm)
            reason = config.skip_reason(package, self.tag_name, self.config.get("extra") or {})
            if reason is not None:
                logger.info("mkosi_initrd: not staging a repository: %s", reason)
            else:
                require_nspawn(self, config, package)
                stage_buildroot(self, config, package, srpm)
            return super().build(srpm, arch)

    MkosiInitrdBuildRoot.__name__ = MkosiInitrdBuildRoot.__qualname__ = "BuildRoot"
    MkosiInitrdBuildRoot.__module__ = __name__
    return MkosiInitrdBuildRoot


def install(config_path: Optional[str] = None) -> type:
    """Validate the configuration, then swap the BuildRoot subclass in. Loading twice replaces the
    first subclass instead of stacking a second one on it."""
    config = load_config(config_path)
    module = find_kojid_module()
    current = module.BuildRoot
    base = getattr(current, "mkosi_initrd_base", current)
    module.BuildRoot = make_buildroot_class(base, config)
    logger.info("mkosi_initrd: staging repositories for %s", ", ".join(sorted(config.packages)))
    return module.BuildRoot


install()
