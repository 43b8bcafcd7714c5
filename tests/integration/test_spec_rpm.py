"""The spec rendered for the fixture repository and built with rpmbuild, as `make rpm` does; the RPMs
read back with rpm -qp and rpmfile, and checked with rpmlint."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pytest

from tests.conftest import FIXTURE_VARIANTS, TOP, require_root, require_tools
from tests.support.cli import run_cli
from tests.support.kojicontent import tag_repo
from tests.support.bootmarker import BOOT_MARKER
from tests.support.rpms import build_rpms

pytestmark = pytest.mark.integration

PREFIX = "mkosi-initrd-initrd"


@pytest.fixture(scope="module")
def built(fixture_repo, tmp_path_factory):
    require_tools("rpmbuild", "rpmlint", "mkosi", "ukify", "rpm2cpio", "cpio", "zstd")
    require_root()
    return build_rpms(tag_repo(fixture_repo), fixture_repo.kernel_version, tmp_path_factory.mktemp("rpms"))


def rpmq(path, *args):
    r = subprocess.run(["rpm", "-qp", "--nosignature", *args, str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def payload(rpm_path):
    import rpmfile

    with rpmfile.open(rpm_path) as rpm:
        return {"/" + m.name.lstrip("./"): rpm.extractfile(m).read() for m in rpm.getmembers()
                if not m.isdir and not m.issymlink}


def test_one_subpackage_per_variant_plus_common(built, fixture_repo):
    assert sorted(built.rpms) == [f"{PREFIX}-common", f"{PREFIX}-minimal", f"{PREFIX}-storage"]
    assert rpmq(built.rpms[f"{PREFIX}-common"], "--qf", "%{ARCH}") == "noarch"
    assert rpmq(built.rpms[f"{PREFIX}-minimal"], "--qf", "%{ARCH}") == "x86_64"
    assert rpmq(built.srpm, "--qf", "%{NAME} %{VERSION} %{RELEASE}") == (
        f"{PREFIX} {fixture_repo.kernel_package_version} {fixture_repo.kernel_package_release}^1")
    assert rpmq(built.rpms[f"{PREFIX}-minimal"], "--qf", "%{SUMMARY}") == "Fixture initrd with the ext4 module"
    description = rpmq(built.rpms[f"{PREFIX}-minimal"], "--qf", "%{DESCRIPTION}")
    assert description.startswith("Busybox-based fixture initrd that loads ext4 (and its dependencies)")
    assert all(len(line) <= 79 for line in description.splitlines())


def test_variants_require_the_exact_kernel_and_are_install_only(built, fixture_repo):
    kernel_evr = rpmq(fixture_repo.rpms["kernel-core"], "--qf", "%{VERSION}-%{RELEASE}")
    for variant in ("minimal", "storage"):
        requires = rpmq(built.rpms[f"{PREFIX}-{variant}"], "--requires").splitlines()
        provides = rpmq(built.rpms[f"{PREFIX}-{variant}"], "--provides").splitlines()
        assert f"kernel-core(x86-64) = {kernel_evr}" in requires
        assert f"{PREFIX}-common" in requires  # unversioned: one -common serves every kernel's images
        assert "installonlypkg(kernel)" in provides
    common = rpmq(built.rpms[f"{PREFIX}-common"], "--requires").splitlines()
    assert "/usr/bin/kernel-install" in common


def test_srpm_buildrequires_the_kernel_the_tools_and_the_image_packages(built, fixture_repo):
    requires = set(rpmq(built.srpm, "--requires").splitlines())
    assert {f"kernel-core = {fixture_repo.kernel_evr}", "mkosi", "mkosi-initrd-builder", "systemd-ukify", "systemd-boot-unsigned",
            "basesystem", "busybox", "initrd-init", "kmod"} <= requires
    # every one of them (but the tools, which come from the build system) is in the repository
    names = {re.split(r"\s", r)[0] for r in requires if not r.startswith("rpmlib(")}
    tools = {"mkosi", "mkosi-initrd-builder", "systemd-ukify"}
    assert names - tools <= set(fixture_repo.rpms)


def test_srpm_is_self_contained(built):
    files = set(rpmq(built.srpm, "-l").split())
    assert files == {f"{PREFIX}.spec", "52-mkosi-initrd-prebuilt.install", "60-mkosi-initrd-prebuilt.conf",
                     "mkosi-initrd-prebuilt.conf", "minimal.toml", "storage.toml"}


def test_file_lists(built, fixture_repo):
    kver = fixture_repo.kernel_version
    images = f"/usr/lib/modules/{kver}/mkosi-initrd"
    assert rpmq(built.rpms[f"{PREFIX}-minimal"], "-l").split() == [
        images, f"{images}/minimal", f"{images}/minimal/initrd.cpio.zst", f"{images}/minimal/manifest.json",
        f"{images}/minimal/uki.efi"]
    assert rpmq(built.rpms[f"{PREFIX}-storage"], "-l").split() == [
        images, f"{images}/storage", f"{images}/storage/initrd.cpio.zst", f"{images}/storage/manifest.json"]
    common = built.rpms[f"{PREFIX}-common"]
    variants = "/usr/share/mkosi-initrd-initrd/variants"
    assert rpmq(common, "-l").split() == [
        "/etc/kernel/mkosi-initrd-prebuilt.conf", "/usr/lib/kernel/install.conf.d",
        "/usr/lib/kernel/install.conf.d/60-mkosi-initrd-prebuilt.conf",
        "/usr/lib/kernel/install.d/52-mkosi-initrd-prebuilt.install",
        "/usr/share/mkosi-initrd-initrd", variants, f"{variants}/minimal.toml", f"{variants}/storage.toml"]
    assert rpmq(common, "--configfiles").split() == ["/etc/kernel/mkosi-initrd-prebuilt.conf"]
    modes = dict(line.split()[::-1] for line in rpmq(common, "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]").splitlines())
    assert modes["/usr/lib/kernel/install.d/52-mkosi-initrd-prebuilt.install"] == "-rwxr-xr-x"
    files = payload(common)
    assert files["/usr/lib/kernel/install.conf.d/60-mkosi-initrd-prebuilt.conf"] == \
        (TOP / "spec/kernel-install/60-mkosi-initrd-prebuilt.conf").read_bytes()
    for name in ("minimal", "storage"):  # the very variant files the images were built from
        assert files[f"{variants}/{name}.toml"] == (FIXTURE_VARIANTS / f"{name}.toml").read_bytes()


def test_packaged_images_match_the_builder_manifest(built, fixture_repo):
    kver = fixture_repo.kernel_version
    for variant, outputs in (("minimal", {"initrd.cpio.zst", "uki.efi"}), ("storage", {"initrd.cpio.zst"})):
        files = payload(built.rpms[f"{PREFIX}-{variant}"])
        d = f"/usr/lib/modules/{kver}/mkosi-initrd/{variant}"
        manifest = json.loads(files[f"{d}/manifest.json"])
        assert manifest["variant"] == variant and manifest["kernel"]["version"] == kver
        assert set(manifest["outputs"]) == outputs
        for name, meta in manifest["outputs"].items():
            data = files[f"{d}/{name}"]
            assert hashlib.sha256(data).hexdigest() == meta["sha256"], (variant, name)
            assert len(data) == meta["size"]
        # rpm's own digest of the initrd agrees too
        digests = dict(line.split() for line in
                       rpmq(built.rpms[f"{PREFIX}-{variant}"], "--qf", "[%{FILENAMES} %{FILEDIGESTS}\n]").splitlines()
                       if len(line.split()) == 2)
        assert digests[f"{d}/initrd.cpio.zst"] == manifest["outputs"]["initrd.cpio.zst"]["sha256"]
        # built at the changelog's date: SOURCE_DATE_EPOCH came from the spec
        assert manifest["source-date-epoch"] == int(rpmq(built.srpm, "--qf", "%{BUILDTIME}"))


def test_scriptlets_rerun_kernel_install_for_their_kernel(built, fixture_repo):
    kver = fixture_repo.kernel_version
    scripts = rpmq(built.rpms[f"{PREFIX}-minimal"], "--scripts")
    assert "posttrans scriptlet" in scripts and "postuninstall scriptlet" in scripts
    assert scripts.count(f"kernel-install add {kver} /usr/lib/modules/{kver}/vmlinuz ||") == 2
    assert scripts.count(f"if [ -e /usr/lib/modules/{kver}/vmlinuz ]") == 2
    assert scripts.count("exit 0") == 2


def test_rpmlint_reports_no_errors(built):
    summary = built.rpmlint_log.strip().splitlines()[-1]
    assert re.search(r"4 packages and 1 specfiles checked; 0 errors,", summary), built.rpmlint_log
    assert "unused-rpmlintrc-filter" not in built.rpmlint_log


@pytest.mark.parametrize("rpmlintrc", ["rpmlintrc", "mkosi-initrd-builder.rpmlintrc"])
def test_every_rpmlint_filter_says_why(rpmlintrc):
    lines = (TOP / "spec" / rpmlintrc).read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("addFilter("):
            above = lines[:i]
            while above and above[-1].startswith("addFilter("):
                above.pop()
            assert above and above[-1].startswith("#"), f"spec/{rpmlintrc}:{i + 1}: filter without a comment"


def test_build_without_the_repository_macro_fails_with_a_clear_message(built, tmp_path):
    r = subprocess.run(["rpmbuild", "-bc", "--nodeps", "--define", f"_topdir {tmp_path}",
                        "--define", f"_sourcedir {built.spec.parent}", str(built.spec)],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "error: %mkosi_initrd_repo is not defined: rpmbuild --define \"mkosi_initrd_repo DIR\"" in r.stderr


def test_edited_variant_file_is_caught_in_prep(built, tmp_path):
    src = tmp_path / "src"
    subprocess.run(["cp", "-a", str(built.spec.parent), str(src)], check=True)
    with open(src / "minimal.toml", "a") as f:
        f.write("# edited after rendering\n")
    r = subprocess.run(["rpmbuild", "-bp", "--nodeps", "--define", f"_topdir {tmp_path}",
                        "--define", f"_sourcedir {src}", str(src / "mkosi-initrd-initrd.spec")],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "the variant files differ from those this spec was rendered from; run mkosi-initrd-build bump" in r.stderr


def test_bump_cli_moves_the_spec_and_refuses_bad_kernels(built, fixture_repo, tmp_path):
    src = tmp_path / "src"
    subprocess.run(["cp", "-a", str(built.spec.parent), str(src)], check=True)
    spec = src / "mkosi-initrd-initrd.spec"
    base = ["bump", "--spec", spec, "--repo", fixture_repo.path, "--variants-dir", FIXTURE_VARIANTS,
            "--packager", "P <p@example.org>", "--date", "2024-01-02"]

    r = run_cli([*base, "--kernel-version", "6.99.0-1-amd64"])
    assert r.returncode == 1
    assert r.stderr.strip() == (f"mkosi-initrd-build: error: kernel 6.99.0-1-amd64 not found in repository "
                                f"{fixture_repo.path} (kernel versions available: {fixture_repo.kernel_version})")

    r = run_cli([*base, "--kernel-version", fixture_repo.kernel_version])
    assert r.returncode == 1
    assert "error: nothing to bump in" in r.stderr and "hint: pass --message" in r.stderr

    r = run_cli([*base, "--kernel-version", fixture_repo.kernel_version, "--message", "Rebuild for mkosi 26"])
    assert r.returncode == 0, r.stderr
    evr = fixture_repo.kernel_evr
    assert r.stdout.strip().endswith(f"{PREFIX} {evr}^1 -> {evr}^2")
    text = spec.read_text()
    assert f"* Tue Jan 02 2024 P <p@example.org> - {evr}^2\n- Rebuild for mkosi 26\n\n* " in text
    assert f"Obsoletes:      %{{name}}-minimal = {evr}^1" in text

    r = run_cli(["bump", "--spec", tmp_path / "nope.spec", "--kernel-version", "x", "--repo", fixture_repo.path])
    assert r.returncode == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_spec_cli_prints_the_spec_without_output(fixture_repo):
    r = run_cli(["--quiet", "spec", "--kernel-version", fixture_repo.kernel_version, "--repo", fixture_repo.path,
                 "--variants-dir", FIXTURE_VARIANTS, "--packager", "P <p@example.org>", "--date", "2024-01-02"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# Rendered by `mkosi-initrd-build spec`")
    assert "%package        minimal" in r.stdout


@pytest.mark.boot
def test_check_with_boot_test_boots_every_image(built, fixture_repo, tmp_path):
    """%check --with boot_test: verify --boot per variant; the initrd-only one takes the kernel from
    the repository (the host has no /usr/lib/modules/<kernel>/vmlinuz)."""
    require_tools("qemu-system-x86_64")
    r = subprocess.run(["rpmbuild", "-bi", "--nodeps", "--with", "boot_test", "--define", f"_topdir {tmp_path}",
                        "--define", f"_sourcedir {built.spec.parent}",
                        "--define", f"mkosi_initrd_repo {fixture_repo.path}",
                        "--define", f"mkosi_initrd_build {TOP}/.venv/bin/mkosi-initrd-build",
                        # The fixture init prints its marker and powers off: a boot ends before the
                        # product's default probe (init still running after a while) could decide.
                        "--define", f"mkosi_initrd_boot_args --expect {BOOT_MARKER}", str(built.spec)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    boots = re.findall(r"^ok   boots \((.+?)\): [0-9.]+s: MKOSI-INITRD-BOOT-OK variant=(\w+)", r.stdout, re.MULTILINE)
    assert sorted(boots) == [("UKI under OVMF", "minimal"), ("kernel + initrd", "minimal"),
                             ("kernel + initrd", "storage")], r.stdout[-3000:]
