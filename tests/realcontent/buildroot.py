"""The buildroot's tools as RPMs: Debian trixie binaries repackaged under Fedora names
(buildroot.toml) with the real-content machinery (distribution.py), cached by content hash.

    python -m tests.realcontent build-buildroot      # prints the directory of the RPMs

Served from one koji repository together with the fixture RPMs, `dnf install @build` (the
`build_group` below, for comps) gives a chroot in which `rpmbuild -ba` of an ordinary spec runs;
adding mkosi, systemd-ukify, python3-pefile and kmod gives the image build its tools.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from .distribution import COMPLETE_MARKER, DEFAULT_CACHE, DistributionBuilder
from .mapping import MappingTable, load_mapping

BUILDROOT_FILE = Path(__file__).resolve().parent / "buildroot.toml"
CACHE_FORMAT = "buildroot-rpms/1"
ENTRY_PREFIX = "buildroot"
# The image build's tools, beyond the build group: what the mkosi-initrd-initrd spec's
# BuildRequires name, what mkosi runs, and the Python modules the builder imports (its RPM's
# Requires; test_buildroot runs the builder from this checkout's source instead).
IMAGE_TOOLS = ("mkosi", "systemd-ukify", "python3-pefile", "kmod", "python3-rpm", "python3-createrepo_c",
               "python3-zstandard")


@dataclasses.dataclass(frozen=True)
class BuildrootRpms:
    path: Path                      # *.rpm + repodata/ (createrepo_c), of these RPMs only
    rpms: dict[str, Path]           # RPM name -> file inside path
    build_group: tuple[str, ...]    # comps `build` group: `dnf install @build` runs rpmbuild -ba
    debian: dict[str, str]          # Debian package -> version, everything repackaged
    key: str

    def version_of(self, debian_name: str) -> str:
        return self.debian[debian_name]


def load_buildroot_entry(entry: Path) -> Optional[BuildrootRpms]:
    try:
        meta = json.loads((entry / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    repo = entry / "repo"
    rpms = {name: repo / f for name, f in meta["rpms"].items()}
    if not (repo / "repodata/repomd.xml").is_file() or not all(p.is_file() for p in rpms.values()):
        return None
    table = load_mapping(BUILDROOT_FILE)
    return BuildrootRpms(repo, rpms, table.groups["build"], meta["debian"], meta["key"])


def buildroot_builder(cache_dir: Path = DEFAULT_CACHE, *, jobs: int = 2,
                      mapping: Optional[MappingTable] = None) -> DistributionBuilder:
    return DistributionBuilder(cache_dir, jobs=jobs, mapping=mapping or load_mapping(BUILDROOT_FILE),
                               cache_format=CACHE_FORMAT, entry_prefix=ENTRY_PREFIX,
                               extra_sources=("buildroot.toml", "buildroot.py"), loader=load_buildroot_entry)


def build_buildroot_rpms(cache_dir: Path = DEFAULT_CACHE, *, jobs: int = 2) -> BuildrootRpms:
    """The buildroot RPMs in `cache_dir/buildroot-<hash>/repo`, built first unless cached (built in
    a temporary directory and renamed into place, so nothing half-written is ever used)."""
    return buildroot_builder(cache_dir, jobs=jobs).build()


# --- a chroot from the RPMs, for tests and for a mock stand-in ---------------------------------

BUILDROOT_PATH = "/usr/bin"   # the skeleton makes /bin, /sbin and /usr/sbin links to it


def combined_repo(dest: Path, rpms: Iterable[Path], build_group: Sequence[str]) -> Path:
    """One repository of `rpms` (e.g. the fixture RPMs plus these) with a comps `build` group,
    as koji serves a build tag: `dnf install @build` works against it. Names must be unique."""
    from tests.support.kojitree import comps_xml

    dest.mkdir(parents=True)
    for rpm in rpms:
        target = dest / rpm.name
        if target.exists():
            raise ValueError(f"{rpm.name} is twice in the combined repository")
        shutil.copyfile(rpm, target)
    (dest / "comps.xml").write_text(comps_xml(build_group))
    subprocess.run(["createrepo_c", "--quiet", "--no-database", "-g", "comps.xml", str(dest)], check=True, cwd=dest)
    return dest


def dnf_install(root: Path, repo: Path, specs: Sequence[str], *, home: Path) -> subprocess.CompletedProcess:
    """Real dnf --installroot of `specs` ("@build", names) from `repo` only, without weak
    dependencies or gpg checks, as koji's mock config does. The rpmdb lands in
    /usr/lib/sysimage/rpm (a HOME/.rpmmacros setting: the host's Debian dnf would otherwise use
    its own default), where the buildroot's rpm (macros.buildroot-dbpath) looks for it."""
    (root / "etc/dnf").mkdir(parents=True, exist_ok=True)
    conf = root / "etc/dnf/dnf.conf"
    conf.write_text(f"[main]\ngpgcheck=0\ninstall_weak_deps=0\nreposdir=/dev/null\ncachedir=/var/cache/dnf\n"
                    f"keepcache=0\n\n[build]\nname=build\nbaseurl=file://{repo.resolve()}\n")
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text("%_dbpath /usr/lib/sysimage/rpm\n")
    argv = ["dnf", "--installroot", str(root), "--config", str(conf), "--releasever", "koji",
            "--disableplugin=*", "-y", "install", *specs]
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"})


def chroot_argv(root: Path, argv: Sequence[str], *, uid: Optional[int] = None, gid: Optional[int] = None,
                env: Optional[dict[str, str]] = None, pivot: bool = True) -> list[str]:
    """argv running `argv` inside root, in a private mount namespace (unshare -m) in which root is
    bind-mounted onto itself and the host's /proc and /dev are bind-mounted into it, nothing else
    (no host /usr): every program comes from the root's RPMs. With uid, it runs as that user
    (the root's own setpriv).

    pivot=True enters the root with pivot_root and detaches the old root; pivot=False uses
    chroot. The difference matters to mkosi: its sandbox makes "/" a slave mount (so "/" must be
    a mount point: hence the self bind mount), and as an unprivileged user it unshares a user
    namespace, which the kernel refuses (EPERM) to a chrooted process."""
    environment = {"PATH": BUILDROOT_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8", "TZ": "UTC", **(env or {})}
    inner = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in environment.items()), *argv]
    if uid is not None:
        inner = ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={gid if gid is not None else uid}",
                 "--clear-groups", "--", *inner]
    r = shlex.quote(str(root))
    setup = (f"mount --make-rprivate / && mount --bind {r} {r} && mount --bind /proc {r}/proc && "
             f"mount --rbind /dev {r}/dev && ")
    if pivot:
        # The old root is put over the root's /tmp (the filesystem package's, always there) and
        # detached at once by the root's own umount, which uncovers /tmp again.
        script = setup + (f"cd {r} && pivot_root . tmp && exec /usr/bin/sh -c " +
                          shlex.quote("umount -l /tmp && exec " + shlex.join(inner)))
    else:
        script = setup + f"exec chroot {r} " + shlex.join(inner)
    return ["unshare", "-m", "--", "/bin/sh", "-c", script]
