"""The built RPMs installed with `rpm --root` next to the fixture kernel, the host's real
kernel-install (systemd 252) run through our plugin for layout=bls and layout=uki, and what lands in
$BOOT booted in QEMU. Also: the scriptlets, run by rpm itself in the scratch root."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
import time

import pytest

from mkosi_initrd_builder.checking.cpio import read_cpio
from mkosi_initrd_builder.checking.qemu import boot
from tests.support.bootmarker import fixture_probe
from tests.conftest import require_root, require_tools
from tests.support.kernel_install import (TOP, UKI_COPY_PLUGIN, BootDir, configure, host_has_kernel_install,
                                          kernel_install, make_root, rpm_root)
from tests.support.kojicontent import tag_repo
from tests.support.rpms import build_rpms

pytestmark = pytest.mark.integration

PREFIX = "mkosi-initrd-initrd"
BOOT_TIMEOUT = 240
TOOLS_BIN = TOP / ".tools" / "bin"  # mkosi and ukify as `make setup` extracted them


@pytest.fixture(scope="module")
def built(fixture_repo, tmp_path_factory):
    require_tools("rpmbuild", "rpmlint", "mkosi", "ukify", "rpm2cpio", "cpio", "zstd")
    require_root()
    if missing := host_has_kernel_install():
        pytest.skip(f"needs {missing}")
    return build_rpms(tag_repo(fixture_repo), fixture_repo.kernel_version, tmp_path_factory.mktemp("rpms"))


@pytest.fixture(scope="module")
def base_rpms(fixture_repo):
    """A minimal system: filesystem, a shell (busybox) and the kernel."""
    return [fixture_repo.rpms[n] for n in ("filesystem", "busybox", "busybox-applets", "kernel-core")]


def install_root(tmp_path, base_rpms, built, *variants, name="root"):
    rpms = [*base_rpms, built.rpms[f"{PREFIX}-common"], *(built.rpms[f"{PREFIX}-{v}"] for v in variants)]
    return make_root(tmp_path / name, rpms)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image(root, kver, variant, name):
    return root / "usr/lib/modules" / kver / "mkosi-initrd" / variant / name


def add(root, kver, *extra_plugins):
    return kernel_install(root, "add", kver, f"/usr/lib/modules/{kver}/vmlinuz", extra_plugins=extra_plugins)


def test_only_missing_dependency_in_the_scratch_root_is_the_host_tool(tmp_path, base_rpms, built, fixture_repo):
    """Everything the packages need is in the fixture repository, but kernel-install itself."""
    root = make_root(tmp_path / "root", [])
    r = rpm_root(root, "-i", "--test", *base_rpms, *built.rpms.values(), check=False)
    missing = re.findall(r"^\s+(.+?) is needed by (\S+)$", r.stderr, re.MULTILINE)
    assert missing == [("/usr/bin/kernel-install", f"{PREFIX}-common-{fixture_repo.kernel_evr}^1.noarch")], r.stderr


@pytest.fixture(scope="module")
def bls_boot(tmp_path_factory, base_rpms, built, fixture_repo):
    """kernel-install add with layout=bls, the minimal variant installed: what landed in /boot."""
    kver = fixture_repo.kernel_version
    root = install_root(tmp_path_factory.mktemp("bls"), base_rpms, built, "minimal")
    configure(root, layout="bls")
    r = add(root, kver)
    assert r.returncode == 0, r.stdout + r.stderr
    return BootDir(root, kver)


@pytest.fixture(scope="module")
def uki_boot(tmp_path_factory, base_rpms, built, fixture_repo):
    """kernel-install add with layout=uki, the minimal variant installed: what landed in /boot."""
    if not UKI_COPY_PLUGIN.exists():
        pytest.skip(f"needs {UKI_COPY_PLUGIN} (systemd 252 has no layout=uki; run 'make setup')")
    kver = fixture_repo.kernel_version
    root = install_root(tmp_path_factory.mktemp("uki"), base_rpms, built, "minimal")
    configure(root, layout="uki")
    r = add(root, kver, UKI_COPY_PLUGIN)
    assert r.returncode == 0, r.stdout + r.stderr
    return BootDir(root, kver)


def test_bls_layout_gets_the_kernel_and_the_prebuilt_initrd(bls_boot):
    b, kver = bls_boot, bls_boot.kernel_version
    entry_dir = str(b.entry_dir.relative_to(b.boot))
    assert b.files() == sorted([f"{entry_dir}/initrd", f"{entry_dir}/linux", str(b.entry.relative_to(b.boot))])
    assert sha256(b.entry_dir / "initrd") == sha256(image(b.root, kver, "minimal", "initrd.cpio.zst"))
    assert sha256(b.entry_dir / "linux") == sha256(b.root / "usr/lib/modules" / kver / "vmlinuz")
    fields = b.entry_fields()
    assert fields["linux"] == [f"/boot/{entry_dir}/linux"]
    assert fields["initrd"] == [f"/boot/{entry_dir}/initrd"]  # ours alone: dracut's and Debian's add none
    assert fields["version"] == [kver]


@pytest.mark.boot
def test_bls_entry_boots_to_the_marker(bls_boot):
    require_tools("qemu-system-x86_64")
    b = bls_boot
    result = boot(kernel=b.entry_dir / "linux", initrd=b.entry_dir / "initrd", append=b.entry_fields()["options"][0],
                  probe=fixture_probe("minimal", b.kernel_version), timeout=BOOT_TIMEOUT)
    assert result.ok, result.console_tail
    print(f"bls boot: {result.seconds:.1f}s: {result.marker_line}")


def test_uki_layout_gets_the_prebuilt_uki(uki_boot):
    b = uki_boot
    assert b.files() == [str(b.uki.relative_to(b.boot))]  # no type #1 entry, no separate kernel or initrd
    assert sha256(b.uki) == sha256(image(b.root, b.kernel_version, "minimal", "uki.efi"))


@pytest.mark.boot
def test_uki_boots_to_the_marker_under_ovmf(uki_boot):
    require_tools("qemu-system-x86_64")
    result = boot(kernel=uki_boot.uki, uefi=True, probe=fixture_probe("minimal", uki_boot.kernel_version),
                  timeout=BOOT_TIMEOUT)
    assert result.ok, result.console_tail
    print(f"uki boot: {result.seconds:.1f}s: {result.marker_line}")


def test_no_variant_installed_leaves_the_entry_without_initrd_and_succeeds(tmp_path, base_rpms, built, fixture_repo):
    kver = fixture_repo.kernel_version
    root = install_root(tmp_path, base_rpms, built)
    configure(root, layout="bls")
    r = add(root, kver)
    assert r.returncode == 0, r.stdout + r.stderr
    b = BootDir(root, kver)
    assert "initrd" not in b.entry_fields()
    assert not (b.entry_dir / "initrd").exists()
    assert "skipping mkosi-initrd: mkosi-initrd-build is not installed" in r.stderr
    assert "skipping dracut: no 'dracut' kernel-install plugin" in r.stderr
    assert "the boot entry gets no initrd" in r.stderr


def test_no_variant_installed_falls_back_to_dracuts_plugin(tmp_path, base_rpms, built, fixture_repo):
    """dracut steps aside for our generator name; for a kernel without a prebuilt image the plugin
    runs dracut's plugin (here a stand-in honouring the same contract) as the generator."""
    kver = fixture_repo.kernel_version
    root = install_root(tmp_path, base_rpms, built)
    configure(root, layout="bls")
    fake = root / "etc/kernel/install.d/50-dracut.install"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text('#!/bin/sh\n[ "$KERNEL_INSTALL_INITRD_GENERATOR" = dracut ] || exit 0\n'
                    '[ "$1" = add ] || exit 0\necho "dracut initrd for $2" > "$KERNEL_INSTALL_STAGING_AREA/initrd"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    r = add(root, kver)
    assert r.returncode == 0, r.stdout + r.stderr
    b = BootDir(root, kver)
    assert (b.entry_dir / "initrd").read_text() == f"dracut initrd for {kver}\n"


def test_several_variants_need_the_config_file(tmp_path, base_rpms, built, fixture_repo):
    kver = fixture_repo.kernel_version
    root = install_root(tmp_path, base_rpms, built, "minimal", "storage")
    configure(root, layout="bls")
    r = add(root, kver)
    assert r.returncode == 1
    assert "several prebuilt variants are installed" in r.stderr and "/etc/kernel/mkosi-initrd-prebuilt.conf" in r.stderr
    conf = root / "etc/kernel/mkosi-initrd-prebuilt.conf"
    conf.write_text(conf.read_text() + "variant=storage\n")  # the shipped file, with the setting added
    r = add(root, kver)
    assert r.returncode == 0, r.stdout + r.stderr
    b = BootDir(root, kver)
    assert sha256(b.entry_dir / "initrd") == sha256(image(root, kver, "storage", "initrd.cpio.zst"))


def test_another_generator_configured_means_no_prebuilt_image(tmp_path, base_rpms, built, fixture_repo):
    kver = fixture_repo.kernel_version
    root = install_root(tmp_path, base_rpms, built, "minimal")
    configure(root, layout="bls", extra="initrd_generator=dracut\n")  # the admin's override wins
    r = add(root, kver)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (BootDir(root, kver).entry_dir / "initrd").exists()


STUB = """#!/bin/sh
echo "$*" >> /var/log/kernel-install.calls
exit ${STUB_EXIT:-0}
"""


def stub_kernel_install(root, exit_code=0):
    """A kernel-install inside the scratch root, where rpm runs the scriptlets (chrooted)."""
    path = root / "usr/bin/kernel-install"
    path.write_text(STUB.replace("${STUB_EXIT:-0}", str(exit_code)))
    path.chmod(0o755)
    return root / "var/log/kernel-install.calls"


def test_scriptlets_rerun_kernel_install_on_install_and_on_removal(tmp_path, base_rpms, built, fixture_repo):
    kver = fixture_repo.kernel_version
    root = install_root(tmp_path, base_rpms, built)  # kernel and -common, no variant yet
    calls = stub_kernel_install(root)
    r = rpm_root(root, "-i", "--nodeps", built.rpms[f"{PREFIX}-minimal"])
    assert calls.read_text() == f"add {kver} /usr/lib/modules/{kver}/vmlinuz\n", r.stderr
    r = rpm_root(root, "-e", f"{PREFIX}-minimal")
    assert calls.read_text().splitlines() == [f"add {kver} /usr/lib/modules/{kver}/vmlinuz"] * 2, r.stderr
    assert not image(root, kver, "minimal", "initrd.cpio.zst").exists()


def test_scriptlets_do_nothing_and_succeed_without_the_kernel(tmp_path, fixture_repo, built):
    root = make_root(tmp_path / "root", [fixture_repo.rpms[n] for n in ("filesystem", "busybox", "busybox-applets")])
    calls = stub_kernel_install(root)
    r = rpm_root(root, "-i", "--nodeps", built.rpms[f"{PREFIX}-common"], built.rpms[f"{PREFIX}-minimal"])
    assert r.returncode == 0 and "scriptlet" not in r.stderr, r.stderr
    r = rpm_root(root, "-e", f"{PREFIX}-minimal")
    assert r.returncode == 0 and "scriptlet" not in r.stderr, r.stderr
    assert not calls.exists()


def test_scriptlets_never_fail_the_transaction(tmp_path, base_rpms, built, fixture_repo):
    """kernel-install failing, or missing altogether: rpm still succeeds, with a warning."""
    kver = fixture_repo.kernel_version
    root = install_root(tmp_path, base_rpms, built)
    stub_kernel_install(root, exit_code=1)
    r = rpm_root(root, "-i", "--nodeps", built.rpms[f"{PREFIX}-minimal"])
    assert r.returncode == 0
    assert f"kernel-install add {kver} failed; its boot entry may be out of date" in r.stderr
    (root / "usr/bin/kernel-install").unlink()
    r = rpm_root(root, "-e", f"{PREFIX}-minimal")
    assert r.returncode == 0 and "kernel-install" not in r.stderr and "scriptlet" not in r.stderr, r.stderr


# --- a kernel without its image package: the plugin's fallback chain, real builder, real kernel-install ---

BUILDER = """#!/bin/sh
exec {python} -m mkosi_initrd_builder "$@"
"""
DRACUT_STANDIN = """#!/bin/sh
# What 50-dracut.install does with its arguments and environment: nothing unless the generator is
# dracut (or unset) or with initrds on the command line; else an initrd in the staging area.
[ "$1" = add ] || exit 0
[ -z "$KERNEL_INSTALL_INITRD_GENERATOR" ] || [ "$KERNEL_INSTALL_INITRD_GENERATOR" = dracut ] || exit 0
[ $# -le 4 ] || exit 0
{body}
"""
LOCAL_BUILD_TIMEOUT = 600


def local_build_root(tmp_path, base_rpms, built, repo, *, dracut_body=None):
    """A machine with -common (its variant files) and the kernel, no image package; the builder on
    PATH (this checkout's, as python3-mkosi-initrd-builder installs it), variant=minimal and
    local_repo=REPO configured in the shipped configuration file."""
    root = install_root(tmp_path, base_rpms, built)
    configure(root, layout="bls")
    conf = root / "etc/kernel/mkosi-initrd-prebuilt.conf"
    conf.write_text(conf.read_text() + f"variant=minimal\nlocal_repo={repo}\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    builder = bindir / "mkosi-initrd-build"
    builder.write_text(BUILDER.format(python=sys.executable))
    builder.chmod(0o755)
    if dracut_body is not None:
        plugin = root / "etc/kernel/install.d/50-dracut.install"
        plugin.parent.mkdir(parents=True, exist_ok=True)
        plugin.write_text(DRACUT_STANDIN.format(body=dracut_body))
        plugin.chmod(0o755)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"PATH": f"{bindir}:{TOOLS_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": str(tmpdir),
           "PYTHONPATH": os.environ.get("PYTHONPATH", str(TOP))}
    return root, env, tmpdir


def add_with(root, kver, env):
    start = time.monotonic()
    r = kernel_install(root, "add", kver, f"/usr/lib/modules/{kver}/vmlinuz", env=env, timeout=LOCAL_BUILD_TIMEOUT)
    print(f"kernel-install add: {time.monotonic() - start:.1f}s")
    return r


def repo_without(fixture_repo, name, dest):
    """The fixture repository, less one package."""
    require_tools("createrepo_c")
    dest.mkdir()
    for rpm in fixture_repo.path.glob("*.rpm"):
        if rpm != fixture_repo.rpms[name]:
            os.link(rpm, dest / rpm.name)
    subprocess.run(["createrepo_c", "--quiet", str(dest)], check=True)
    return dest


@pytest.fixture(scope="module")
def local_build(tmp_path_factory, base_rpms, built, fixture_repo):
    """kernel-install add for a kernel without its image package: the local build's entry."""
    tmp_path = tmp_path_factory.mktemp("local")
    root, env, tmpdir = local_build_root(tmp_path, base_rpms, built, fixture_repo.path)
    r = add_with(root, fixture_repo.kernel_version, env)
    assert r.returncode == 0, r.stdout + r.stderr
    return BootDir(root, fixture_repo.kernel_version), r, tmpdir


def test_no_image_package_gets_a_local_build_of_the_same_variant_file(local_build, built, fixture_repo, tmp_path):
    """(a) The variant file -common installed, built on the machine by the real builder from the
    local repository: its initrd lands in the entry, and holds what the prebuilt image of that
    variant holds."""
    b, r, tmpdir = local_build
    kver = b.kernel_version
    installed = b.root / "usr/share/mkosi-initrd-initrd/variants/minimal.toml"
    assert installed.read_bytes() == (TOP / "tests/fixtures/variants/minimal.toml").read_bytes()
    assert (f"the initrd was made by mkosi-initrd (variant /usr/share/mkosi-initrd-initrd/variants/minimal.toml, "
            f"from {fixture_repo.path})") in r.stdout
    assert b.entry_fields()["initrd"] == [f"/boot/{b.entry_dir.relative_to(b.boot)}/initrd"]
    local = {e.name for e in read_cpio(b.entry_dir / "initrd")}
    prebuilt_root = make_root(tmp_path / "prebuilt", [built.rpms[f"{PREFIX}-minimal"]])
    prebuilt = {e.name for e in read_cpio(image(prebuilt_root, kver, "minimal", "initrd.cpio.zst"))}
    assert local == prebuilt
    assert any(n.endswith("/ext4.ko") or "/ext4.ko." in n for n in local)
    assert list(tmpdir.iterdir()) == []  # the build's work directories are gone


@pytest.mark.boot
def test_locally_built_entry_boots_to_the_marker(local_build):
    require_tools("qemu-system-x86_64")
    b = local_build[0]
    result = boot(kernel=b.entry_dir / "linux", initrd=b.entry_dir / "initrd", append=b.entry_fields()["options"][0],
                  probe=fixture_probe("minimal", b.kernel_version), timeout=BOOT_TIMEOUT)
    assert result.ok, result.console_tail
    print(f"local build boot: {result.seconds:.1f}s: {result.marker_line}")


def test_failed_local_build_hands_over_to_dracut_and_says_why(tmp_path, base_rpms, built, fixture_repo):
    """(b) The local repository lacks a package the variant needs: the builder names it, nothing of
    the build reaches the entry, dracut's plugin makes the initrd."""
    kver = fixture_repo.kernel_version
    repo = repo_without(fixture_repo, "kmod", tmp_path / "repo")
    root, env, tmpdir = local_build_root(tmp_path, base_rpms, built, repo,
                                         dracut_body='echo "dracut initrd for $2" > "$KERNEL_INSTALL_STAGING_AREA/initrd"')
    r = add_with(root, kver, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"variant 'minimal' needs .*kmod.*, not found in repository " + re.escape(str(repo)), r.stderr), r.stderr
    assert ("mkosi-initrd failed: mkosi-initrd-build failed for /usr/share/mkosi-initrd-initrd/variants/minimal.toml "
            f"with local_repo={repo}") in r.stderr
    assert "the initrd was made by dracut (/etc/kernel/install.d/50-dracut.install)" in r.stdout
    b = BootDir(root, kver)
    assert (b.entry_dir / "initrd").read_text() == f"dracut initrd for {kver}\n"
    assert list(tmpdir.iterdir()) == []


def test_local_build_and_dracut_both_failing_fail_kernel_install_visibly(tmp_path, base_rpms, built, fixture_repo):
    """(c) Both fail: kernel-install fails, the entry gets no initrd, and the output says why, each."""
    kver = fixture_repo.kernel_version
    repo = repo_without(fixture_repo, "kmod", tmp_path / "repo")
    root, env, tmpdir = local_build_root(tmp_path, base_rpms, built, repo,
                                         dracut_body='echo "dracut: no space left on device" >&2; exit 1')
    r = add_with(root, kver, env)
    assert r.returncode == 1, r.stdout + r.stderr
    b = BootDir(root, kver)
    assert not b.entry.exists() and not (b.entry_dir / "initrd").exists()
    assert "mkosi-initrd failed: mkosi-initrd-build failed" in r.stderr
    assert "dracut failed: /etc/kernel/install.d/50-dracut.install failed (exit status 1)" in r.stderr
    assert "made an initrd for " + kver + " (mkosi-initrd, dracut failed)" in r.stderr
    assert list(tmpdir.iterdir()) == []
