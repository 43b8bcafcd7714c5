"""The per-kernel cache of module facts: keyed by the kernel packages' checksums, checked before use,
written temp-then-rename. Real modules of the Debian kernel that `make setup` extracts."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from mkosi_initrd_builder.building.kernelfacts import (CACHE_FORMAT, cache_path, default_cache_dir, facts_key,
                                                       kernel_module_facts, load_facts, save_facts, scan_modules)
from mkosi_initrd_builder.building.kmod import choose_modules, module_name, read_builtin, select_modules
from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.rpmmeta.repo import RepoPackage
from tests.conftest import kernel_modules_dir

KVER = "6.1.0-test"
MODULES = ("kernel/fs/ext4/ext4.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko",
           "kernel/fs/fat/vfat.ko", "kernel/fs/fat/fat.ko", "kernel/crypto/crc32c_generic.ko")


@pytest.fixture
def modules():
    src = kernel_modules_dir()
    return {rel: ("kernel-core-1-1.x86_64", (src / rel).read_bytes()) for rel in MODULES}


def package(checksum: str) -> RepoPackage:
    return RepoPackage(NEVRA.of("kernel-core", 0, "1", "1", "x86_64"), "kernel-core-1-1.x86_64.rpm", "sha256", checksum,
                       1, 1, (), ())


def test_changed_kernel_package_checksum_misses_the_cache(tmp_path, modules):
    key = facts_key(KVER, [package("aa" * 32)])
    first, cached = kernel_module_facts(tmp_path, key, KVER, modules)
    assert not cached and cache_path(tmp_path, key).is_file()
    again, cached = kernel_module_facts(tmp_path, key, KVER, modules)
    assert cached and again == first
    other = facts_key(KVER, [package("ab" + "aa" * 31)])
    assert other != key
    _, cached = kernel_module_facts(tmp_path, other, KVER, modules)
    assert not cached
    # another kernel version with the same packages is another entry too
    assert facts_key("6.1.0-other", [package("aa" * 32)]) != key


def test_selection_from_cached_facts_is_the_selection_from_the_files(tmp_path, modules):
    src = kernel_modules_dir()
    tree = tmp_path / "tree"
    for rel, (_, data) in modules.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    (tree / "modules.builtin").write_bytes((src / "modules.builtin").read_bytes())
    key = facts_key(KVER, [package("cd" * 32)])
    kernel_module_facts(tmp_path / "cache", key, KVER, modules)
    warm, cached = kernel_module_facts(tmp_path / "cache", key, KVER, modules)
    assert cached
    builtin = read_builtin(src)
    for include in ([r"/ext4\.ko"], [r"/vfat\.ko"], []):
        assert choose_modules(warm.sizes, builtin, include, [], warm.info_of) == select_modules(tree, include, [])
    # ext4's softdep on crc32c resolves through crc32c_generic's alias, kept in the cache
    kept = choose_modules(warm.sizes, builtin, [r"/ext4\.ko"], [], warm.info_of).kept
    assert "crc32c_generic" in {module_name(p) for p in kept}


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],                                              # truncated
    lambda text: "[]",                                                                # not an entry
    lambda text: text.replace(CACHE_FORMAT, "kernel-module-facts/0"),                 # another format
    lambda text: json.dumps({**json.loads(text), "kernel-version": "5.0"}),           # another kernel
    lambda text: text.replace('"size":', '"size":1', 1),                              # a module's size differs
    lambda text: json.dumps({**json.loads(text), "modules": {
        k: v for k, v in list(json.loads(text)["modules"].items())[1:]}}),             # a module missing
    lambda text: json.dumps({**json.loads(text), "modules": {
        k: {**v, "depends": "mbcache"} for k, v in json.loads(text)["modules"].items()}}),  # wrong type
], ids=["truncated", "not-an-entry", "other-format", "other-kernel", "size", "missing-module", "wrong-type"])
def test_damaged_or_foreign_entry_is_ignored_with_a_warning_and_rewritten(tmp_path, modules, caplog, damage):
    key = facts_key(KVER, [package("ef" * 32)])
    cold, _ = kernel_module_facts(tmp_path, key, KVER, modules)
    path = cache_path(tmp_path, key)
    path.write_text(damage(path.read_text()))
    with caplog.at_level(logging.WARNING, logger="mkosi_initrd_builder"):
        again, cached = kernel_module_facts(tmp_path, key, KVER, modules)
    assert not cached and again == cold
    assert any("ignoring the kernel module cache" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)
    assert load_facts(path, key, KVER, cold.sizes) == cold  # rewritten whole


def test_unwritable_cache_costs_a_warning_not_the_build(tmp_path, modules, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    key = facts_key(KVER, [package("12" * 32)])
    with caplog.at_level(logging.WARNING, logger="mkosi_initrd_builder"):
        facts, cached = kernel_module_facts(blocker / "cache", key, KVER, modules)
    assert not cached and set(facts.sizes) == set(MODULES)
    assert any("cannot write the kernel module cache" in r.getMessage() for r in caplog.records)


def test_concurrent_writers_leave_a_whole_entry_readers_never_see_half(tmp_path, modules):
    facts = scan_modules(modules)
    key = facts_key(KVER, [package("34" * 32)])
    path = cache_path(tmp_path, key)
    seen: list[object] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            if path.exists():
                seen.append(load_facts(path, key, KVER, facts.sizes))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=lambda: [save_facts(path, key, KVER, facts) for _ in range(20)])
               for _ in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert seen and all(s == facts for s in seen)
    assert load_facts(path, key, KVER, facts.sizes) == facts
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_default_cache_dir_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "mkosi-initrd-builder" / "kernel-modules"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home/.cache/mkosi-initrd-builder/kernel-modules"


def test_variant_tree_links_kept_modules_and_the_other_files_only(tmp_path):
    from mkosi_initrd_builder.building.build import link_kernel_tree

    src = tmp_path / "src"
    for rel in ("kernel/fs/ext4/ext4.ko.xz", "kernel/fs/fat/vfat.ko.xz", "modules.builtin", "modules.dep",
                "modules.alias.bin", "config", "vmlinuz", "kernel/fs/fat/README"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    (src / "build").symlink_to("/usr/src/kernels/x")
    (src / "extra").mkdir()  # empty in the package: nothing to carry
    dest = tmp_path / "dest"
    link_kernel_tree(src, dest, ["kernel/fs/ext4/ext4.ko.xz"])
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if not p.is_dir() or p.is_symlink())
    assert got == ["build", "config", "kernel/fs/ext4/ext4.ko.xz", "kernel/fs/fat/README", "modules.builtin",
                   "vmlinuz"]
    assert (dest / "build").readlink() == Path("/usr/src/kernels/x")
    assert (dest / "config").stat().st_ino == (src / "config").stat().st_ino  # linked, not copied
    assert not (dest / "extra").exists()
