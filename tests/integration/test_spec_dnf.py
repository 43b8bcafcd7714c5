"""dnf and the install-only variant packages: a rebuild for the same kernel replaces the earlier
build (its Obsoletes) instead of being installed next to it with colliding files."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.conftest import FIXTURE_VARIANTS, TOP, require_root, require_tools
from tests.support.cli import run_cli
from tests.support.fixtures import make_repo
from tests.support.kojicontent import tag_repo
from tests.support.rpms import build_rpms

pytestmark = pytest.mark.integration

PREFIX = "mkosi-initrd-initrd"
# dnf insists on the dependency of -common; the scratch root gets a stand-in.
KERNEL_INSTALL_STANDIN = """Name: kernel-install-standin
Version: 1
Release: 1
Summary: Stand-in for the package that ships kernel-install
License: MIT
BuildArch: noarch
%description
Records its calls instead of installing kernels.
%install
mkdir -p %{buildroot}/usr/bin
printf '#!/bin/sh\\necho "$*" >> /var/log/kernel-install.calls\\n' > %{buildroot}/usr/bin/kernel-install
chmod 755 %{buildroot}/usr/bin/kernel-install
%files
/usr/bin/kernel-install
"""


def rpmbuild(tmp, spec, *defines):
    args = ["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {tmp}", "--define", f"_sourcedir {spec.parent}"]
    for d in defines:
        args += ["--define", d]
    r = subprocess.run([*args, str(spec)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return sorted((tmp / "RPMS").rglob("*.rpm"))


def dnf(root, conf, *args):
    r = subprocess.run(["dnf", "-c", str(conf), "--installroot", str(root), "--releasever", "0", "-y",
                        "--disablerepo=*", "--enablerepo=local", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_rebuild_for_the_same_kernel_replaces_the_earlier_build(fixture_repo, tmp_path, tmp_path_factory):
    require_tools("rpmbuild", "mkosi", "ukify", "dnf", "createrepo_c")
    require_root()
    first = build_rpms(tag_repo(fixture_repo), fixture_repo.kernel_version, tmp_path_factory.mktemp("rpms"))

    # A changed variant, bumped: same kernel, counter 2.
    variants = tmp_path / "variants"
    shutil.copytree(FIXTURE_VARIANTS, variants)
    (variants / "minimal.toml").write_text((variants / "minimal.toml").read_text()
                                           .replace('"console=ttyS0 panic=-1"', '"console=ttyS0 panic=-1 quiet"'))
    src = tmp_path / "src"
    shutil.copytree(first.spec.parent, src)
    r = run_cli(["bump", "--spec", src / "mkosi-initrd-initrd.spec", "--kernel-version", fixture_repo.kernel_version,
                 "--repo", fixture_repo.path, "--variants-dir", variants, "--packager", "P <p@example.org>",
                 "--date", "2024-01-02"])
    assert r.returncode == 0, r.stderr
    second = rpmbuild(tmp_path / "build2", src / "mkosi-initrd-initrd.spec", f"mkosi_initrd_repo {fixture_repo.path}",
                      f"mkosi_initrd_build {TOP}/.venv/bin/mkosi-initrd-build")
    (tmp_path / "standin").mkdir()
    (tmp_path / "standin/standin.spec").write_text(KERNEL_INSTALL_STANDIN)
    standin = rpmbuild(tmp_path / "build3", tmp_path / "standin/standin.spec")

    repo = tmp_path / "repo"
    repo.mkdir()
    for p in [*fixture_repo.rpms.values(), *first.rpms.values(), *second, *standin]:
        shutil.copy(p, repo)
    make_repo(repo)
    conf = tmp_path / "dnf.conf"
    conf.write_text(f"[main]\nreposdir=/dev/null\ncachedir={tmp_path}/cache\ngpgcheck=0\ninstall_weak_deps=0\n"
                    f"[local]\nname=local\nbaseurl={repo.as_uri()}\ngpgcheck=0\n")
    root = tmp_path / "root"
    root.mkdir()

    dnf(root, conf, "install", "filesystem", "busybox-applets", "kernel-install-standin", "kernel-core",
        f"{PREFIX}-minimal-{fixture_repo.kernel_evr}^1")
    out = dnf(root, conf, "upgrade")
    installed = subprocess.run(["rpm", "--root", str(root), "-q", f"{PREFIX}-minimal", f"{PREFIX}-common"],
                               capture_output=True, text=True).stdout.split()
    evr = fixture_repo.kernel_evr
    assert installed == [f"{PREFIX}-minimal-{evr}^2.x86_64", f"{PREFIX}-common-{evr}^2.noarch"], out
    manifest = json.loads((root / "usr/lib/modules" / fixture_repo.kernel_version /
                           "mkosi-initrd/minimal/manifest.json").read_text())
    assert manifest["kernel-command-line"] == "console=ttyS0 panic=-1 quiet"
    verify = subprocess.run(["rpm", "--root", str(root), "-V", f"{PREFIX}-minimal"], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout
    calls = (root / "var/log/kernel-install.calls").read_text().splitlines()
    assert calls and set(calls) == {f"add {fixture_repo.kernel_version} "
                                    f"/usr/lib/modules/{fixture_repo.kernel_version}/vmlinuz"}
