"""The per-kernel cache of module facts on the fixture kernel package: a warm cache selects exactly
what a cold read selects, and what the old way (every module unpacked and read from disk) selected."""

from __future__ import annotations

import json
import pytest

from mkosi_initrd_builder.building.build import read_kernel_payload
from mkosi_initrd_builder.building.kernelfacts import cache_path, facts_key, kernel_module_facts
from mkosi_initrd_builder.building.kmod import builtin_names, choose_modules, select_modules
from mkosi_initrd_builder.building.variants import load_variants
from mkosi_initrd_builder.rpmmeta.repo import extract_rpm, open_repository
from tests.conftest import FIXTURE_VARIANTS, require_root, require_tools
from tests.support.cli import run_cli

pytestmark = pytest.mark.integration


def test_warm_cache_selects_what_a_cold_read_and_the_unpacked_modules_select(fixture_repo, tmp_path):
    require_tools("rpm2cpio", "cpio")
    repo = open_repository(fixture_repo.path)
    kver = fixture_repo.kernel_version
    payload = read_kernel_payload(repo, kver)
    key = facts_key(kver, payload.packages)
    cold, cached = kernel_module_facts(tmp_path / "cache", key, kver, payload.module_data())
    assert not cached
    warm, cached = kernel_module_facts(tmp_path / "cache", key, kver, payload.module_data())
    assert cached and warm == cold

    unpacked = tmp_path / "unpacked"
    for p in payload.packages:
        extract_rpm(repo.path / p.href, unpacked, [f"./usr/lib/modules/{kver}/*"])
    moddir = unpacked / "usr/lib/modules" / kver
    assert set(warm.sizes) == {p.relative_to(moddir).as_posix() for p in moddir.rglob("*.ko*")}
    builtin = builtin_names(payload.builtin)
    for variant in load_variants(FIXTURE_VARIANTS):
        include, exclude = list(variant.kernel_modules_include), list(variant.kernel_modules_exclude)
        from_warm = choose_modules(warm.sizes, builtin, include, exclude, warm.info_of)
        assert from_warm == choose_modules(cold.sizes, builtin, include, exclude, cold.info_of)
        assert from_warm == select_modules(moddir, include, exclude)
        assert from_warm.kept


def test_rebuild_with_a_cache_dir_takes_the_facts_from_it_and_builds_the_same(fixture_repo, tmp_path):
    require_tools("mkosi", "ukify", "rpm2cpio", "cpio", "zstd")
    require_root()
    cache = tmp_path / "cache"

    def build(name: str) -> tuple[dict, str]:
        out = tmp_path / name
        r = run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                     "--output", out, "--variants-dir", FIXTURE_VARIANTS, "--variant", "storage",
                     "--cache-dir", cache])
        assert r.returncode == 0, r.stderr
        return json.loads((out / "storage/manifest.json").read_text()), r.stderr

    cold, log = build("cold")
    assert "read and kept in" in log
    entries = list((cache / "kernel-modules").iterdir())
    repo = open_repository(fixture_repo.path)
    key = facts_key(fixture_repo.kernel_version, repo.kernel_packages(fixture_repo.kernel_version))
    assert entries == [cache_path(cache / "kernel-modules", key)]  # named by the kernel package's checksum
    warm, log = build("warm")
    assert "from the cache in" in log
    assert warm == cold  # modules, firmware, outputs' hashes: all of it

    entries[0].write_text("{")  # a damaged entry is read around, with a warning, and replaced
    again, log = build("again")
    assert "ignoring the kernel module cache" in log and again == cold
    json.loads(entries[0].read_text())
