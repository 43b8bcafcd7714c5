"""Rendering variants into mkosi configuration: offline settings always, golden files for the product."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from mkosi_initrd_builder.util.errors import BuilderError
from mkosi_initrd_builder.building.mkosi_config import MkosiPaths, kernel_modules_include, render_variant
from mkosi_initrd_builder.building.variants import load_variant, load_variants
from tests.conftest import FIXTURE_VARIANTS, PRODUCT_VARIANTS, require_tools

GOLDEN = Path(__file__).parent / "golden"
PATHS = MkosiPaths(
    repo=Path("/srv/repo"), kernel_tree=Path("/work/kernel"), files_tree=Path("/work/files"), sandbox_tree=Path("/work/sandbox"),
    package_cache=Path("/work/pkgcache"), workspace=Path("/work/ws"), output_dir=Path("/work/out"),
    config_dir=Path("/work/config"),
)


def render(variant):
    return render_variant(variant, release="rawhide", source_date_epoch=1700000000, paths=PATHS)


@pytest.mark.parametrize("variant", load_variants(PRODUCT_VARIANTS), ids=lambda v: v.name)
def test_product_variant_renders_as_golden(variant):
    r = render(variant)
    got = r.conf + (f"\n# mkosi.conf.d/50-variant.conf\n{r.dropin}" if r.dropin else "") \
        + "\n# argv: " + " ".join(r.argv) + "\n"
    golden = GOLDEN / f"{variant.name}.mkosi.conf"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(got)
    assert got == golden.read_text()


@pytest.mark.parametrize("variant", load_variants(PRODUCT_VARIANTS) + load_variants(FIXTURE_VARIANTS),
                         ids=lambda v: v.name)
def test_every_render_is_offline(variant):
    conf = render(variant).conf
    assert "LocalMirror=file:///srv/repo\n" in conf
    assert "RepositoryKeyCheck=no\n" in conf
    assert "RepositoryKeyFetch=no\n" in conf
    assert "ToolsTree=\n" in conf
    assert "WithNetwork=no\n" in conf
    assert "Incremental=no\n" in conf
    assert "SandboxTrees=/work/sandbox\n" in conf
    for forbidden in ("Mirror=http", "Repositories=", "https://"):
        assert forbidden not in conf


def test_base_mkosi_initrd_includes_builtin_config_last(tmp_path):
    p = tmp_path / "v.toml"
    p.write_text('summary = "s"\ndescription = "d"\n')
    conf = render(load_variant(p)).conf
    assert conf.endswith("[Include]\nInclude=mkosi-initrd\n")


def test_passthrough_goes_to_a_dropin_read_after_the_include():
    r = render(load_variant(FIXTURE_VARIANTS / "storage.toml"))
    assert r.dropin == "[Content]\nRemoveFiles=/usr/share/doc\n"
    assert "/usr/share/doc" not in r.conf


def test_base_none_has_no_include():
    conf = render(load_variant(FIXTURE_VARIANTS / "minimal.toml")).conf
    assert "Include=" not in conf


def test_cli_carries_settings_the_include_would_override():
    argv = render(load_variant(PRODUCT_VARIANTS / "generic.toml")).argv
    for opt in ("--format=cpio", "--output=initrd", "--manifest-format=json", "--distribution=fedora",
                "--directory=/work/config", "--profile=raid"):
        assert opt in argv


def test_mkosi_initrd_default_module_list_is_read_from_mkosi():
    require_tools("mkosi")
    from mkosi_initrd_builder.building.build import mkosi_initrd_default_modules

    patterns = mkosi_initrd_default_modules("rawhide")
    assert "/ext4.ko" in patterns and "crypto/" in patterns and "^fs/nls/" in patterns
    assert all(not p.startswith("#") and p for p in patterns)


def test_kernel_modules_include_is_read_from_the_summary_json():
    summary = b'{"Images": [{"KernelModulesInclude": ["/ext4.ko", "crypto/"]}, {"KernelModulesInclude": []}]}'
    assert kernel_modules_include(summary) == ("/ext4.ko", "crypto/")


@pytest.mark.parametrize("summary", [b"not json", b'{"Images": []}', b'{"Images": [{}]}',
                                     b'{"Images": [{"KernelModulesInclude": "/ext4.ko"}]}'])
def test_kernel_modules_include_refuses_a_summary_without_the_list(summary):
    with pytest.raises(BuilderError, match="KernelModulesInclude"):
        kernel_modules_include(summary)


def test_every_setting_the_builder_renders_is_reserved_or_extensible(tmp_path):
    """A pass-through of CompressOutput= would rename the output, CleanPackageMetadata= would change it."""
    from mkosi_initrd_builder.building.variants import MKOSI_EXTENSIBLE, MKOSI_RESERVED

    (tmp_path / "v.toml").write_text('summary = "s"\ndescription = "d"\npackages = ["a"]\n')
    conf = render(load_variant(tmp_path / "v.toml")).conf
    rendered = {line.split("=", 1)[0] for line in conf.splitlines() if "=" in line and not line[0].isspace()}
    assert rendered - MKOSI_RESERVED - MKOSI_EXTENSIBLE == set()


def test_variant_files_become_a_dated_extra_tree(tmp_path):
    from mkosi_initrd_builder.building.mkosi_config import write_variant_files

    variant = load_variant(PRODUCT_VARIANTS / "generic.toml")
    assert variant.files, "generic carries an mdadm.conf"
    tree = tmp_path / "files"
    write_variant_files(variant, tree, 1234567)
    for name, contents in variant.files:
        f = tree / name.lstrip("/")
        assert f.read_text() == contents
        assert oct(f.stat().st_mode & 0o7777) == oct(0o644)
    assert {p.stat().st_mtime for p in tree.rglob("*")} == {1234567}
    assert str(tree) in render_variant(variant, release="rawhide", source_date_epoch=1,
                                       paths=dataclasses.replace(PATHS, files_tree=tree)).conf
