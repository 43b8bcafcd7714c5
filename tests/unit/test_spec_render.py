"""Rendering the spec: a golden file for the fixture variants, the template mechanics, and what the
product variants contribute to BuildRequires (asked from mkosi itself)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mkosi_initrd_builder.util.errors import KernelNotFoundError, PackageMissingError, SpecError, VariantError
from mkosi_initrd_builder.spec.bump import read_spec
from mkosi_initrd_builder.spec.inputs import image_packages
from mkosi_initrd_builder.spec.template import expand_template, render_spec, write_spec
from mkosi_initrd_builder.building.variants import load_variants
from tests.conftest import FIXTURE_VARIANTS, PRODUCT_VARIANTS, require_tools
from tests.unit.spec_support import UNAME, fake_repo, first_inputs, kernel_package, package

GOLDEN = Path(__file__).parent / "golden" / "mkosi-initrd-initrd.spec"


def fixture_variants():
    return load_variants(FIXTURE_VARIANTS)


def test_fixture_variants_render_as_golden():
    got = render_spec(first_inputs(fake_repo(), fixture_variants()))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text()


def test_one_subpackage_per_variant_and_nothing_left_unrendered():
    text = render_spec(first_inputs(fake_repo(), fixture_variants()))
    assert re.findall(r"^%package\s+(\S+)", text, re.MULTILINE) == ["common", "minimal", "storage"]
    assert re.findall(r"^%files\s+(\S+)", text, re.MULTILINE) == ["common", "minimal", "storage"]
    assert not re.search(r"@[A-Z_]+@|^#@", text, re.MULTILINE)
    # the UKI is packaged only for the variant that builds one
    assert "%{imagedir}/minimal/uki.efi" in text and "%{imagedir}/storage/uki.efi" not in text
    assert "Version:        7.0.42\nRelease:        2^1\n" in text
    assert "Obsoletes" not in text  # nothing earlier to replace in a first build


def test_buildrequires_are_the_exact_kernel_the_tools_and_the_image_packages():
    modules = package("kernel-modules-core", "7.0.42-2", files=(f"/usr/lib/modules/{UNAME}/kernel/fs/ext4/ext4.ko",))
    repo = fake_repo(kernel_package("7.0.42-2"), modules)
    text = render_spec(first_inputs(repo, fixture_variants()))
    brs = re.findall(r"^BuildRequires:\s+(.+)$", text, re.MULTILINE)
    assert brs[:2] == ["kernel-core = 7.0.42-2", "kernel-modules-core = 7.0.42-2"]
    assert {"mkosi", "mkosi-initrd-builder", "systemd-ukify", "systemd-boot-unsigned"} <= set(brs)
    assert {"basesystem", "busybox", "initrd-init", "kmod"} <= set(brs)
    # the storage variant takes its modules' firmware from linux-firmware: the package is an input
    assert "linux-firmware" in brs
    assert re.search(r"^Requires:\s+%\{kernel_name\}%\{\?_isa\} = %\{kernel_evr\}$", text, re.MULTILINE)
    assert "%global kernel_name     kernel-core\n%global kernel_evr      7.0.42-2\n" in text


def test_epoch_of_the_kernel_reaches_the_dependency_but_not_the_version():
    text = render_spec(first_inputs(fake_repo(kernel_package("2:7.0.42-2")), fixture_variants()))
    assert "BuildRequires:  kernel-core = 2:7.0.42-2" in text
    assert "%global kernel_evr      2:7.0.42-2" in text
    assert "Version:        7.0.42\nRelease:        2^1\n" in text


def test_spec_refuses_a_kernel_the_repository_lacks():
    with pytest.raises(KernelNotFoundError, match=r"kernel 9\.9\.9-1 not found in repository /srv/fake-repo "
                                                   r"\(kernel versions available: 7\.0\.0-16-synth\)"):
        first_inputs(fake_repo(), fixture_variants(), uname="9.9.9-1")


def test_spec_refuses_image_packages_the_repository_lacks():
    repo = fake_repo()
    repo = type(repo)(repo.path, repo.revision, tuple(p for p in repo.packages if p.nevra.name != "initrd-init"))
    with pytest.raises(PackageMissingError, match="initrd-init"):
        first_inputs(repo, fixture_variants())


def test_variant_named_like_the_common_subpackage_is_refused(tmp_path):
    (tmp_path / "common.toml").write_text((FIXTURE_VARIANTS / "storage.toml").read_text())
    with pytest.raises(VariantError, match="common.toml: variant name 'common' is taken"):
        first_inputs(fake_repo(), load_variants(tmp_path))


def test_long_summary_is_refused_naming_the_key(tmp_path):
    text = (FIXTURE_VARIANTS / "storage.toml").read_text()
    (tmp_path / "long.toml").write_text(re.sub(r'^summary = ".*"$', 'summary = "' + "x" * 80 + '"', text,
                                               flags=re.MULTILINE))
    with pytest.raises(VariantError, match="long.toml: summary: longer than 79"):
        first_inputs(fake_repo(), load_variants(tmp_path))


def test_percent_signs_in_variant_text_are_escaped(tmp_path):
    text = (FIXTURE_VARIANTS / "storage.toml").read_text()
    text = re.sub(r'^description = ".*"$', 'description = "100% busybox, %{not_a_macro}"', text, flags=re.MULTILINE)
    (tmp_path / "pct.toml").write_text(text)
    rendered = render_spec(first_inputs(fake_repo(), load_variants(tmp_path)))
    assert "100%% busybox, %%{not_a_macro}" in rendered


def test_template_mechanics():
    per_variant = [{"V": "a", "OPT": ""}, {"V": "b", "OPT": "x"}]
    text = "#@ a template comment\nhead @H@\n#@foreach-variant\nline @V@\n@OPT@\n#@end\ntail\n"
    assert expand_template(text, {"H": "h"}, per_variant) == "head h\nline a\nline b\nx\ntail\n"
    with pytest.raises(SpecError, match="line 1: unknown placeholder @NOPE@"):
        expand_template("@NOPE@\n", {}, [])
    with pytest.raises(SpecError, match="#@foreach-variant without #@end"):
        expand_template("#@foreach-variant\nx\n", {}, [])


def test_written_spec_reads_back_and_carries_its_sources(tmp_path):
    inputs = first_inputs(fake_repo(), fixture_variants())
    spec = tmp_path / "dist-git" / "mkosi-initrd-initrd.spec"
    written = write_spec(render_spec(inputs), spec, inputs.variants)
    assert sorted(p.name for p in written) == sorted([
        "52-mkosi-initrd-prebuilt.install", "60-mkosi-initrd-prebuilt.conf", "mkosi-initrd-prebuilt.conf",
        "minimal.toml", "storage.toml", "mkosi-initrd-initrd.spec"])
    assert os.access(spec.parent / "52-mkosi-initrd-prebuilt.install", os.X_OK)
    back = read_spec(spec)
    assert (back.kernel_uname, back.kernel.name, back.kernel.evr(), back.build_counter) == \
        (UNAME, "kernel-core", "7.0.42-2", 1)
    assert (back.version, back.release) == ("7.0.42", "2^1")
    assert set(back.variant_sha256) == {"minimal", "storage"}
    assert back.changelog.startswith("* Tue Nov 14 2023 Fixture Packager <fixture@example.org> - 7.0.42-2^1\n")


def test_rpmspec_parses_the_rendered_spec(tmp_path):
    require_tools("rpmspec")
    import subprocess

    inputs = first_inputs(fake_repo(), fixture_variants())
    spec = tmp_path / "mkosi-initrd-initrd.spec"
    write_spec(render_spec(inputs), spec, inputs.variants)
    r = subprocess.run(["rpmspec", "-q", "--builtrpms", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}\\n", spec],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["mkosi-initrd-initrd-common-7.0.42-2^1", "mkosi-initrd-initrd-minimal-7.0.42-2^1",
                                "mkosi-initrd-initrd-storage-7.0.42-2^1"]
    assert "warning" not in r.stderr.lower(), r.stderr


def test_product_variants_buildrequire_mkosi_initrds_own_package_list():
    """base = "mkosi-initrd": the package list comes from `mkosi summary` on the rendered config."""
    require_tools("mkosi")
    packages = image_packages(load_variants(PRODUCT_VARIANTS), "rawhide")
    # mkosi-initrd's own list (mkosi 25: systemd, udev, bash, ...), each variant's, and basesystem
    assert {"systemd", "udev", "bash", "util-linux-core", "basesystem"} <= set(packages)
    assert {"cryptsetup", "lvm2", "mdadm", "nfs-utils", "systemd-networkd"} <= set(packages)
    assert list(packages) == sorted(set(packages))


def test_uki_addons_are_installed_and_listed_under_the_image_directory(tmp_path):
    from mkosi_initrd_builder.building.variants import load_variant
    from mkosi_initrd_builder.spec.template import addon_files, addons_install

    (tmp_path / "a.toml").write_text('summary = "s"\ndescription = "d"\npackages = ["x"]\nformats = ["initrd", "uki"]\n'
                                     '[[uki-addons]]\nname = "zz"\nkernel-command-line = "z=1"\n'
                                     '[[uki-addons]]\nname = "debug"\nkernel-command-line = "rd.debug"\n')
    v = load_variant(tmp_path / "a.toml")
    install = addons_install(v).splitlines()
    assert install == ["install -d %{buildroot}%{imagedir}/a/uki.efi.extra.d",
                       "install -p -m 0644 out/a/uki.efi.extra.d/zz.addon.efi out/a/uki.efi.extra.d/debug.addon.efi "
                       "%{buildroot}%{imagedir}/a/uki.efi.extra.d/"]
    assert addon_files(v) == ["%dir %{imagedir}/a/uki.efi.extra.d", "%{imagedir}/a/uki.efi.extra.d/debug.addon.efi",
                              "%{imagedir}/a/uki.efi.extra.d/zz.addon.efi"]
