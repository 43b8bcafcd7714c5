"""The buildroot made of RPMs: the fixture RPMs and the buildroot's tool RPMs (Debian trixie
repackaged under Fedora names, tests/realcontent/buildroot.toml) served as one repository; real
dnf installs the comps `build` group and the image build's tools into a root, and inside that
root (chroot, with only /proc and /dev of the host mounted) rpmbuild, python3 with dnf/rpm/pefile,
mkosi, ukify and depmod run, as root and as an unprivileged user.

The first run downloads Debian packages (a few minutes); later runs use the content-hash cache.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tools

pytestmark = pytest.mark.integration
log = logging.getLogger("tests.buildroot")

TRIVIAL_SPEC = """\
Name: buildroot-hello
Version: 1
Release: 1
Summary: Trivial package built inside the buildroot
License: MIT
BuildArch: noarch

%description
A shell script, built with rpmbuild -ba inside the RPM-made buildroot.

%prep

%build
printf '#!/bin/sh\\necho hello\\n' > hello.sh

%install
install -D -m 0755 hello.sh %{buildroot}/usr/bin/buildroot-hello

%files
/usr/bin/buildroot-hello
"""
BUILD_USER = 65534


@pytest.fixture(scope="module")
def buildroot_rpms():
    from tests.realcontent.buildroot import build_buildroot_rpms
    from tests.realcontent.distribution import DEFAULT_CACHE

    require_tools("apt-get", "dpkg-deb", "rpmbuild", "createrepo_c")
    return build_buildroot_rpms(DEFAULT_CACHE)


@pytest.fixture(scope="module")
def installed_root(fixture_repo, buildroot_rpms, tmp_path_factory):
    """(root, measurements): `dnf install @build`, then the image build's tools."""
    from tests.realcontent.buildroot import IMAGE_TOOLS, combined_repo, dnf_install

    require_root()
    require_tools("dnf", "unshare", "chroot")
    rpms = dict(fixture_repo.rpms)
    for name, path in buildroot_rpms.rpms.items():
        # The fixture repository carries the kmod closure of these very RPMs (same files).
        assert name not in rpms or rpms[name].name == path.name, f"fixture and buildroot RPMs share {name}"
        rpms[name] = path
    work = tmp_path_factory.mktemp("buildroot")
    repo = combined_repo(work / "repo", rpms.values(), buildroot_rpms.build_group)
    root = work / "root"
    started = time.monotonic()
    proc = dnf_install(root, repo, ["@build"], home=work / "dnf-home")
    group_seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:]
    started = time.monotonic()
    proc = dnf_install(root, repo, list(IMAGE_TOOLS), home=work / "dnf-home")
    tools_seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:]
    log.warning("buildroot: %d RPMs in %s; @build installed in %.1fs, the image tools in %.1fs",
                len(buildroot_rpms.rpms), buildroot_rpms.path, group_seconds, tools_seconds)
    return root


def in_root(root: Path, argv: list[str], *, uid: int | None = None, check: bool = True) -> str:
    from tests.realcontent.buildroot import chroot_argv

    proc = subprocess.run(chroot_argv(root, argv, uid=uid), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if check:
        assert proc.returncode == 0, f"{argv} in the chroot failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
    return proc.stdout


def test_build_group_names_only_packages_of_the_repository(fixture_repo, buildroot_rpms):
    available = set(fixture_repo.rpms) | set(buildroot_rpms.rpms)
    assert set(buildroot_rpms.build_group) <= available
    assert {"filesystem", "basesystem", "bash", "rpm-build"} <= set(buildroot_rpms.build_group)


def test_rpmbuild_ba_as_root_and_as_an_unprivileged_user(installed_root):
    root = installed_root
    for home, uid in (("/root", None), ("/tmp/builder", BUILD_USER)):
        (root / home.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / home.lstrip("/") / "hello.spec").write_text(TRIVIAL_SPEC)
        if uid is not None:
            os.chown(root / home.lstrip("/"), uid, uid)
            os.chown(root / home.lstrip("/") / "hello.spec", uid, uid)
        out = in_root(root, ["rpmbuild", "-ba", "--define", f"_topdir {home}/rpmbuild", f"{home}/hello.spec"],
                      uid=uid)
        assert "command not found" not in out, out
        wrote = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Wrote:")]
        assert len(wrote) == 2 and any(w.endswith(".src.rpm") for w in wrote), out
        for path in wrote:
            assert (root / path.lstrip("/")).is_file()
            if uid is not None:
                assert (root / path.lstrip("/")).stat().st_uid == uid
        # The built RPM reads back with the buildroot's own rpm.
        noarch = next(w for w in wrote if w.endswith(".noarch.rpm"))
        assert in_root(root, ["rpm", "-qp", "--qf", "%{NAME}\n", noarch], uid=uid).split() == ["buildroot-hello"]


def test_image_build_tools_run(installed_root, buildroot_rpms):
    root = installed_root
    in_root(root, ["python3", "-c", "import dnf, rpm, pefile"])
    assert re.search(r"^mkosi \S+", in_root(root, ["mkosi", "--version"]), re.M)
    # The versions are whatever the mirror served, read from the downloaded packages.
    upstream = buildroot_rpms.version_of("mkosi").split("-")[0]
    assert upstream in in_root(root, ["mkosi", "--version"])
    assert buildroot_rpms.version_of("systemd-ukify").split(".")[0] in in_root(root, ["ukify", "--version"])
    assert buildroot_rpms.version_of("kmod").split("-")[0].split(".")[0] in in_root(root, ["depmod", "--version"])
    assert "dnf" in in_root(root, ["dnf", "--version"]).lower() or in_root(root, ["dnf", "--version"]).strip()


def test_every_program_comes_from_the_roots_rpms(installed_root):
    root = installed_root
    mounts = in_root(root, ["cat", "/proc/self/mountinfo"])
    # Inside the chroot, mount points are shown relative to it: only /proc and /dev (and what
    # the host has below /dev) are mounted; nothing over /usr.
    points = {line.split()[4] for line in mounts.splitlines()}
    inside = {p for p in points if p == "/" or p.startswith(("/proc", "/dev", "/usr", "/bin", "/lib", "/etc"))}
    assert not {p for p in inside if p.startswith(("/usr", "/bin", "/lib", "/etc"))}, inside
    paths = ["/usr/bin/rpmbuild", "/usr/bin/rpm", "/usr/bin/python3", "/usr/bin/mkosi", "/usr/bin/ukify",
             "/usr/bin/depmod", "/usr/bin/dnf", "/usr/bin/bash", "/usr/bin/setpriv", "/usr/bin/unshare",
             "/usr/bin/cpio", "/usr/bin/zstd", "/usr/bin/systemd-tmpfiles", "/usr/lib64/ld-linux-x86-64.so.2"]
    owners = in_root(root, ["rpm", "-qf", "--qf", "%{NAME}\n", *paths])
    assert "not owned" not in owners, owners
    assert len(owners.split()) == len(paths)
    # And the rpmdb the buildroot's rpm reads is the one dnf wrote.
    assert "rpm-build" in in_root(root, ["rpm", "-qa", "--qf", "%{NAME}\n"]).split()


def test_the_builder_runs_mkosi_and_dnf_inside_the_root_as_an_unprivileged_user(installed_root, fixture_repo):
    """What the mock stand-in will do: the builder (here from this checkout's source, later its
    RPM) runs mkosi inside the root, which runs the root's dnf --installroot on a staged repository
    and the root's ukify, as the build user. Same bytes as the same build as root."""
    import shutil

    from tests.conftest import FIXTURE_VARIANTS, TOP

    root = installed_root
    for d in ("src", "repo", "variants"):
        shutil.rmtree(root / d, ignore_errors=True)
    shutil.copytree(TOP / "builder", root / "src/mkosi_initrd_builder")
    shutil.copytree(fixture_repo.path, root / "repo")
    shutil.copytree(FIXTURE_VARIANTS, root / "variants")
    outputs = {}
    for out, uid in (("/out-root", None), ("/out-user", BUILD_USER)):
        (root / out.lstrip("/")).mkdir()
        (root / "home/builder").mkdir(parents=True, exist_ok=True)
        if uid is not None:
            for d in (out, "/home/builder"):
                os.chown(root / d.lstrip("/"), uid, uid)
        from tests.realcontent.buildroot import chroot_argv

        argv = chroot_argv(root, ["python3", "-m", "mkosi_initrd_builder", "build", "--repo", "/repo",
                                  "--kernel-version", fixture_repo.kernel_version, "--output", out,
                                  "--variants-dir", "/variants", "--source-date-epoch",
                                  str(fixture_repo.source_date_epoch)],
                           uid=uid, env={"PYTHONPATH": "/src", "HOME": "/home/builder", "TMPDIR": "/var/tmp"})
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.returncode == 0, proc.stdout[-4000:]
        assert "/usr/bin/mkosi" in proc.stdout and "/usr/bin/ukify build" in proc.stdout
        outputs[out] = {p.relative_to(root / out.lstrip("/")): p.read_bytes()
                        for p in (root / out.lstrip("/")).glob("*/*") if p.suffix in (".zst", ".efi")}
    assert outputs["/out-root"] and outputs["/out-root"] == outputs["/out-user"]
