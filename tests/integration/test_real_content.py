"""The product's own variants (spec/variants) built from real binaries and booted against real roots.

Debian trixie packages are repackaged as Fedora-named RPMs (tests/realcontent/mapping.toml), the
builder builds `virt` and `generic` from them unchanged, and each image boots in QEMU (TCG) to a
real root on plain ext4, on LVM2 and on LUKS2; a generic dracut initrd for the same kernel and
drivers boots through the same cases as the baseline. Slow (about ten minutes) and needs the
Debian mirror on a cold cache: run it with `make test-real` (pytest -m realcontent).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mkosi_initrd_builder.checking.cpio import read_cpio
from tests.conftest import PRODUCT_VARIANTS, require_root, require_tools
from tests.support.cli import run_cli

pytestmark = [pytest.mark.realcontent, pytest.mark.integration, pytest.mark.boot]

VARIANTS = ("virt", "generic")
CASE_NAMES = ("plain", "lvm", "luks")
ROOT_DEVICES = {"plain": "/dev/vda1", "lvm": "/dev/mapper/rcvg-root", "luks": "/dev/mapper/cryptroot"}


@pytest.fixture(scope="module", autouse=True)
def selected(request):
    """Only when asked for: `pytest -m realcontent` (make test-real) or MKOSI_INITRD_REALCONTENT=1.
    A plain `make test` stays fast and offline."""
    if "realcontent" not in (request.config.getoption("markexpr") or "") \
            and not os.environ.get("MKOSI_INITRD_REALCONTENT"):
        pytest.skip("real-content tests run with 'make test-real' (pytest -m realcontent)")
    require_root()
    require_tools("mkosi", "ukify", "rpmbuild", "createrepo_c", "qemu-system-x86_64", "apt-get", "dpkg-deb",
                  "chroot")


@pytest.fixture(scope="module")
def distribution():
    from tests.realcontent.distribution import DistributionBuilder

    return DistributionBuilder()


@pytest.fixture(scope="module")
def real_repo(distribution):
    return distribution.build()


@pytest.fixture(scope="module")
def disks(real_repo, distribution):
    from tests.realcontent.disks import build_disks

    return build_disks(real_repo, distribution)


@pytest.fixture(scope="module")
def built(real_repo, tmp_path_factory):
    """virt and generic from spec/variants, built by the CLI exactly as users run it."""
    out = tmp_path_factory.mktemp("real") / "out"
    args = ["build", "--repo", real_repo.path, "--kernel-version", real_repo.kernel_version, "--output", out,
            "--variants-dir", PRODUCT_VARIANTS, "--jobs", "2"]
    for v in VARIANTS:
        args += ["--variant", v]
    r = run_cli(args, timeout=1800)
    assert r.returncode == 0, r.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def dracut_image(real_repo, distribution, built, tmp_path_factory):
    from tests.realcontent.dracut import build_dracut_image

    modules = json.loads((built / "virt/manifest.json").read_text())["kernel-modules"]
    return build_dracut_image(real_repo, distribution, modules, tmp_path_factory.mktemp("dracut") / "dracut.img")


def rpm_query(rpm: Path, fmt: str) -> str:
    return subprocess.run(["rpm", "-qp", "--nosignature", "--qf", fmt, str(rpm)], capture_output=True, text=True,
                          check=True).stdout


def test_repository_has_fedora_names_and_the_real_kernel(real_repo):
    rpms = real_repo.rpms
    for name in ("filesystem", "basesystem", "glibc", "systemd", "systemd-udev", "systemd-cryptsetup",
                 "util-linux-core", "lvm2", "device-mapper", "cryptsetup", "kmod", "kmod-libs", "kernel-core",
                 "systemd-boot-unsigned", "xfsprogs-xfs_scrub", "glibc-gconv-extra"):
        assert name in rpms, name
    repo = real_repo.path
    kernel = rpm_query(repo / rpms["kernel-core"], "%{VERSION}-%{RELEASE} [%{FILENAMES}\n]")
    assert f"/usr/lib/modules/{real_repo.kernel_version}/vmlinuz" in kernel
    assert real_repo.kernel_version.startswith(kernel.split("-")[0] + "+")  # trixie unames: VERSION+debNN-FLAVOUR
    provides = rpm_query(repo / rpms["kernel-core"], "[%{PROVIDENEVRS}\n]")
    assert "kernel" in provides.split("\n")
    assert real_repo.kernel_version not in provides, "a uname with dashes in a versioned Provides"
    assert "rtld(GNU_HASH)" in rpm_query(repo / rpms["glibc"], "[%{PROVIDES}\n]")
    # generated from systemd's .note.dlopen: libkmod is "recommended" there, a hard Requires here
    assert "libkmod.so.2()(64bit)" in rpm_query(repo / rpms["systemd"], "[%{REQUIRES}\n]").split()
    files = rpm_query(repo / rpms["systemd"], "[%{FILEFLAGS:fflags} %{FILENAMES}\n]")
    assert "l /usr/share/licenses/systemd/systemd.copyright" in files
    assert not any(line.endswith("/systemd-networkd") for line in files.splitlines())


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_builds_within_its_size_budget(built, variant):
    m = json.loads((built / variant / "manifest.json").read_text())
    size = m["outputs"]["initrd.cpio.zst"]["size"]
    assert size <= m["size-budget"], f"{variant}: {size:,} B over {m['size-budget']:,} B"
    names = {p.rsplit("-", 2)[0] for p in m["packages"]}
    assert {"systemd", "systemd-udev", "lvm2", "cryptsetup", "systemd-cryptsetup", "kmod-libs"} <= names
    # Fedora's splits keep these out of an initrd
    assert not names & {"libicu", "xfsprogs-xfs_scrub", "glibc-gconv-extra", "util-linux"}
    entries = {e.name for e in read_cpio(built / variant / "initrd.cpio.zst")}
    assert "usr/lib/systemd/systemd-cryptsetup" in entries
    assert not any(e.startswith("usr/share/locale/") and e.endswith(".mo") for e in entries)


@pytest.mark.parametrize("variant", VARIANTS)
def test_firmware_of_the_kept_drivers_is_in_the_image_and_accounted_for(built, real_repo, variant):
    """verify --repo checks the image's firmware byte for byte against the manifest and that nothing
    listed as not found is shipped by the variant's firmware packages; here, independently, rpm's own
    file list of those packages says which wanted names had to come along."""
    r = run_cli(["verify", "--repo", real_repo.path, built / variant])
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((built / variant / "manifest.json").read_text())
    shipped = set()
    for nevra in m["firmware-packages"]:
        rpm = real_repo.path / real_repo.rpms[nevra.rsplit("-", 2)[0]]
        shipped |= {f.removeprefix("/usr/lib/firmware/") for f in rpm_query(rpm, "[%{FILENAMES}\n]").split()}
    wanted_and_shipped = set(m["firmware-wanted"]) & shipped
    served = {w for f in m["firmware"].values() for w in f["wanted"]}
    assert served == wanted_and_shipped
    assert set(m["firmware-missing"]) == set(m["firmware-wanted"]) - shipped
    if m["firmware-packages"]:
        # Debian's firmware packages link versioned files under stable names (cxgb4/t4fw.bin):
        # the link and the file it leads to both come along.
        links = {p: f["link"] for p, f in m["firmware"].items() if "link" in f}
        assert links and all(any(q != p and q.endswith(t.rsplit("/", 1)[-1]) for q in m["firmware"])
                             for p, t in links.items())


@pytest.mark.parametrize("variant,case", [(v, c) for v in VARIANTS for c in CASE_NAMES])
def test_initrd_switches_to_the_real_root(built, real_repo, disks, variant, case, tmp_path):
    from tests.realcontent.matrix import boot_case

    r = boot_case(case, disks, kernel=real_repo.vmlinuz, initrd=built / variant / "initrd.cpio.zst",
                  console_log=tmp_path / "console.log")
    assert r.ok, r.describe()
    assert r.root_device == ROOT_DEVICES[case], r.describe()
    assert not r.failed_units, r.failed_units


def test_virt_uki_boots_under_ovmf_to_luks_root(built, disks, tmp_path):
    from tests.realcontent.matrix import boot_case

    r = boot_case("luks", disks, kernel=built / "virt/uki.efi", uefi=True, console_log=tmp_path / "console.log")
    assert r.ok, r.describe()
    assert r.root_device == ROOT_DEVICES["luks"] and not r.failed_units, r.describe()
    assert "EFI stub" in (tmp_path / "console.log").read_text(errors="replace")


@pytest.mark.parametrize("case", CASE_NAMES)
def test_dracut_baseline_switches_to_the_real_root(dracut_image, real_repo, disks, case, tmp_path):
    from tests.realcontent.matrix import boot_case

    r = boot_case(case, disks, kernel=real_repo.vmlinuz, initrd=dracut_image.path,
                  console_log=tmp_path / "console.log")
    assert r.ok, r.describe()
    assert r.root_device == ROOT_DEVICES[case], r.describe()
