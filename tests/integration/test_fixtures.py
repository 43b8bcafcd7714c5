"""The fixture RPM repository: it installs with the real dnf, kernel-core looks like a Fedora kernel,
the cache is reused, and the RPMs are byte-reproducible."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import fixtures
from tests.support.fixtures import FixtureBuildError, FixtureRepo, build_fixture_repo, build_rpm_from_spec

pytestmark = pytest.mark.integration

SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
DNF = Path("/usr/bin/dnf")


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n, path=SBIN_PATH) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (run tools/setup.sh)")


def require_fixture_inputs() -> fixtures.FixtureInputs:
    require_tools("rpmbuild", "rpm", "createrepo_c", "depmod", "modinfo")
    try:
        return fixtures.find_fixture_inputs()
    except FixtureBuildError as e:
        pytest.skip(str(e))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rpm_query(rpm: Path, *args: str) -> list[str]:
    out = subprocess.run(
        ["rpm", "-qp", "--nosignature", *args, str(rpm)], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return out.splitlines()


@pytest.fixture(scope="module")
def fixture_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fixture-cache")


@pytest.fixture(scope="module")
def fresh_repo(fixture_cache) -> FixtureRepo:
    require_fixture_inputs()
    return build_fixture_repo(fixture_cache)


def test_repo_has_one_rpm_per_spec_and_repodata(fresh_repo):
    from tests.realcontent.buildroot import build_buildroot_rpms
    from tests.realcontent.distribution import DEFAULT_CACHE, rpm_closure

    # kmod and its libraries come from the buildroot's RPMs (Debian trixie repackaged).
    specs = {p.stem for p in fixtures.SPECS_DIR.glob("*.spec")}
    buildroot = build_buildroot_rpms(DEFAULT_CACHE)
    taken = rpm_closure(list(buildroot.rpms.values()), fixtures.FROM_BUILDROOT)
    assert {"kmod", "kmod-libs", "glibc"} <= set(taken)
    assert set(fresh_repo.rpms) == specs | {"busybox-applets"} | set(taken)
    for name, rpm in taken.items():
        assert sha256(fresh_repo.rpms[name]) == sha256(rpm)
    assert {"filesystem", "basesystem", "busybox", "initrd-init", "kernel-core",
            "systemd-boot-unsigned"} <= specs
    for rpm in fresh_repo.rpms.values():
        assert rpm.parent == fresh_repo.path and rpm.is_file()
    assert (fresh_repo.path / "repodata" / "repomd.xml").is_file()
    assert fresh_repo.source_date_epoch == fixtures.SOURCE_DATE_EPOCH
    for rpm in fresh_repo.rpms.values():
        assert rpm_query(rpm, "--qf", "%{BUILDTIME} %{BUILDHOST}") == [
            f"{fixtures.SOURCE_DATE_EPOCH} {fixtures.BUILDHOST}"
        ]


def test_kernel_core_is_named_after_the_debian_kernel_and_installonly(fresh_repo):
    inputs = fixtures.find_fixture_inputs()
    rpm = fresh_repo.rpms["kernel-core"]
    assert fresh_repo.kernel_version == inputs.kernel_uname
    version, release = inputs.kernel_package.version, inputs.kernel_package.release
    assert rpm_query(rpm, "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}") == [
        f"kernel-core {version} {release} x86_64"
    ]
    provides = rpm_query(rpm, "--provides")
    assert "installonlypkg(kernel)" in provides
    assert f"kernel = {version}-{release}" in provides
    # uname -r has dashes and must not leak into a versioned Provides.
    assert not [p for p in provides if fresh_repo.kernel_version in p]

    moddir = f"/usr/lib/modules/{fresh_repo.kernel_version}"
    files = rpm_query(rpm, "--list")
    for name in ("vmlinuz", "modules.dep", "modules.dep.bin", "modules.order", "modules.builtin",
                 "modules.builtin.modinfo"):
        assert f"{moddir}/{name}" in files
    modules = [f for f in files if f.endswith(".ko")]
    assert 10 <= len(modules) <= 25, modules
    assert f"{moddir}/kernel/fs/ext4/ext4.ko" in modules
    assert rpm_query(rpm, "--scripts") == []


def test_kernel_package_version_is_the_downloaded_debs_unless_overridden(monkeypatch):
    """The fixture kernel's VERSION-RELEASE is read from the .deb setup downloaded; the override that
    `make test-other-kernel` sets replaces it, and a malformed one is refused by name."""
    require_fixture_inputs()
    monkeypatch.delenv(fixtures.KERNEL_EVR_ENV, raising=False)
    debs = (fixtures.DEFAULT_TOOLS_DIR / "kernel" / ".debs").read_text().split()
    deb_version = next(d for d in debs if d.startswith("linux-image-")).split("_")[1]
    assert fixtures.find_fixture_inputs().kernel_package == fixtures.split_debian_version(deb_version)
    monkeypatch.setenv(fixtures.KERNEL_EVR_ENV, "1.2.3-4.alt")
    assert fixtures.find_fixture_inputs().kernel_package == fixtures.DebianVersion("1.2.3", "4.alt")
    for bad in ("1.2.3", "1:2-3", "1.2-3 4"):
        monkeypatch.setenv(fixtures.KERNEL_EVR_ENV, bad)
        with pytest.raises(FixtureBuildError, match=fixtures.KERNEL_EVR_ENV):
            fixtures.find_fixture_inputs()


def test_session_fixture_kernel_package_matches_its_inputs(fixture_repo):
    """What every other test compares against is the built package, and it is what the inputs say:
    under `make test-other-kernel` the override, else the downloaded kernel's own version."""
    inputs = fixtures.find_fixture_inputs()
    assert (fixture_repo.kernel_package_version, fixture_repo.kernel_package_release) == (
        inputs.kernel_package.version, inputs.kernel_package.release)
    assert rpm_query(fixture_repo.rpms["kernel-core"], "--qf", "%{VERSION}-%{RELEASE}") == [fixture_repo.kernel_evr]


def test_busybox_is_the_binary_and_its_applets_a_subpackage_without_rpm_dpkg_and_module_tools(fresh_repo):
    # The images' busybox shares the koji buildroot with the real tools: it ships no applet links.
    assert rpm_query(fresh_repo.rpms["busybox"], "--list") == ["/usr/bin/busybox"]
    files = set(rpm_query(fresh_repo.rpms["busybox-applets"], "--list"))
    assert {"/usr/bin/sh", "/usr/bin/mount", "/usr/bin/find"} <= files and "/usr/bin/busybox" not in files
    names = {Path(f).name for f in files}
    module_tools = {"depmod", "modprobe", "insmod", "rmmod", "lsmod", "modinfo"}
    assert not {"rpm", "rpm2cpio"} & names
    # The real kmod ships the module tools (in /usr/bin, where the filesystem's /usr/sbin link points).
    assert not module_tools & names
    assert {f"/usr/bin/{t}" for t in module_tools} <= set(rpm_query(fresh_repo.rpms["kmod"], "--list"))
    assert not [n for n in names if n.startswith("dpkg")]
    provides = rpm_query(fresh_repo.rpms["busybox-applets"], "--provides")
    assert "/bin/sh" in provides and "/usr/bin/sh" in provides
    assert "/bin/sh" not in rpm_query(fresh_repo.rpms["busybox"], "--provides")


def test_dnf_installs_an_initrd_root_from_the_repo(fresh_repo, tmp_path):
    if not DNF.exists():
        pytest.skip("needs /usr/bin/dnf (run tools/setup.sh)")
    if os.geteuid() != 0:
        pytest.skip("needs root: dnf --installroot and chroot")
    root = tmp_path / "root"
    subprocess.run(
        [
            str(DNF), "-y", "-q", f"--installroot={root}", "--releasever=40",
            "--setopt=reposdir=/dev/null", f"--setopt=cachedir={tmp_path / 'dnf-cache'}",
            "--setopt=install_weak_deps=0", f"--repofrompath=fx,{fresh_repo.path}", "--repo=fx",
            "--nogpgcheck", "install", "initrd-init", "kmod", "kernel-core", "systemd-boot-unsigned", "basesystem",
        ],
        check=True,
    )
    kver = fresh_repo.kernel_version
    assert os.readlink(root / "bin") == "usr/bin"
    assert os.readlink(root / "usr/sbin") == "bin"
    assert os.readlink(root / "etc/os-release") == "../usr/lib/os-release"
    assert "ID=fedora" in (root / "usr/lib/os-release").read_text().splitlines()
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert os.access(root / "init", os.X_OK)
    assert (root / "usr/lib/modules" / kver / "vmlinuz").is_file()
    assert (root / "usr/lib/systemd/boot/efi/linuxx64.efi.stub").is_file()

    # What mkosi runs in an image that carries a kernel: the image's own depmod, the real kmod
    # (from the buildroot's RPMs, with glibc). It writes modules.dep in modules.order's order, the
    # same on every run (the busybox wrapper it replaced had to sort its output for that).
    assert "kmod version" in subprocess.run(["chroot", str(root), "depmod", "--version"], check=True,
                                            stdout=subprocess.PIPE, text=True).stdout
    deps = []
    for _ in range(2):
        (root / "usr/lib/modules" / kver / "modules.dep").unlink()
        subprocess.run(["chroot", str(root), "depmod", "--all", kver], check=True)
        deps.append((root / "usr/lib/modules" / kver / "modules.dep").read_bytes())
    assert "kernel/fs/ext4/ext4.ko: " in deps[0].decode()
    assert deps[0] == deps[1]


def test_second_call_returns_the_cached_repo_without_rebuilding(fresh_repo, fixture_cache, caplog):
    marker = fresh_repo.path.parent / fixtures.COMPLETE_MARKER
    mtime = marker.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="tests.fixtures"):
        again = build_fixture_repo(fixture_cache)
    assert again == fresh_repo
    assert marker.stat().st_mtime_ns == mtime
    assert not [r for r in caplog.records if "rpmbuild" in r.getMessage()]
    # Nothing but the one entry is left in the cache (no temporary build directories).
    assert [p.name for p in fixture_cache.iterdir()] == [fresh_repo.path.parent.name]


def test_rebuild_from_scratch_is_byte_identical(fresh_repo, tmp_path):
    other = build_fixture_repo(tmp_path / "other-cache")
    assert other.path != fresh_repo.path
    assert {n: sha256(p) for n, p in other.rpms.items()} == {n: sha256(p) for n, p in fresh_repo.rpms.items()}
    assert sha256(other.path / "repodata/repomd.xml") == sha256(fresh_repo.path / "repodata/repomd.xml")


def test_command_line_prints_repo_and_kernel_version(fresh_repo, fixture_cache):
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.fixtures", "build", "-q", "--cache", str(fixture_cache)],
        cwd=fixtures.REPO_ROOT, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    assert out.splitlines() == [str(fresh_repo.path), fresh_repo.kernel_version]


def test_failed_rpmbuild_names_the_spec_and_shows_its_output(tmp_path):
    require_tools("rpmbuild")
    spec = tmp_path / "broken-fixture.spec"
    spec.write_text(
        "Name: broken-fixture\nVersion: 1\nRelease: 1\nSummary: x\nLicense: MIT\nBuildArch: noarch\n"
        "%description\nx\n%install\necho 'the install step fails on purpose' >&2\nexit 3\n%files\n"
    )
    with pytest.raises(FixtureBuildError) as excinfo:
        build_rpm_from_spec(spec, tmp_path / "topdir", {}, fixtures.SOURCE_DATE_EPOCH)
    message = str(excinfo.value)
    assert "broken-fixture.spec" in message
    assert "the install step fails on purpose" in message
