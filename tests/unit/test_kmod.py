"""Module selection against real modules of the Debian kernel that `make setup` extracts."""

from __future__ import annotations

import shutil

import pytest

from mkosi_initrd_builder.building.kmod import modinfo, module_name, prune_modules, select_modules
from mkosi_initrd_builder.util.compress import decompress_file
from tests.conftest import kernel_modules_dir


@pytest.fixture
def small_tree(tmp_path):
    """A copy of a few real modules (ext4's dependency chain, vfat, squashfs) in the kernel's layout."""
    src = kernel_modules_dir()
    dst = tmp_path / "modules"
    for rel in ("kernel/fs/ext4/ext4.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko", "kernel/fs/fat/vfat.ko", "kernel/fs/fat/fat.ko",
                "kernel/fs/squashfs/squashfs.ko", "kernel/crypto/crc32c_generic.ko"):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, dst / rel)
    shutil.copy(src / "modules.builtin", dst / "modules.builtin")
    (dst / "modules.dep").write_text("stale\n")
    return dst


def test_modinfo_reads_real_module(small_tree):
    info = modinfo(decompress_file(small_tree / "kernel/fs/ext4/ext4.ko"))
    assert set(info["depends"][0].split(",")) == {"mbcache", "crc16", "jbd2"}
    assert info["name"] == ["ext4"]


def test_module_name_normalises_dashes():
    assert module_name("kernel/drivers/md/dm-mod.ko.xz") == "dm_mod"


def test_include_adds_dependencies_and_softdeps(small_tree):
    sel = select_modules(small_tree, [r"/ext4\.ko"], [])
    names = {module_name(p) for p in sel.kept}
    # ext4's depends= plus its softdep on crc32c
    assert names == {"ext4", "jbd2", "mbcache", "crc16", "crc32c_generic"}
    assert "kernel/fs/fat/vfat.ko" in sel.removed


def test_exclude_wins_over_include_but_not_over_dependencies(small_tree):
    sel = select_modules(small_tree, [r"/ext4\.ko", r"/squashfs\.ko"], [r"/squashfs\.ko", r"/jbd2\.ko"])
    names = {module_name(p) for p in sel.kept}
    assert "squashfs" not in names
    assert "jbd2" in names  # ext4 cannot load without it


def test_empty_include_keeps_everything_not_excluded(small_tree):
    sel = select_modules(small_tree, [], [r"^kernel/fs/fat/"])
    assert {module_name(p) for p in sel.kept} >= {"ext4", "squashfs"}
    assert not any("fat" in p for p in sel.kept)


def test_prune_removes_unselected_and_stale_depmod_output(small_tree):
    sel = select_modules(small_tree, [r"/vfat\.ko"], [])
    prune_modules(small_tree, sel)
    left = sorted(p.relative_to(small_tree).as_posix() for p in small_tree.rglob("*.ko"))
    assert left == ["kernel/fs/fat/fat.ko", "kernel/fs/fat/vfat.ko"]
    assert not (small_tree / "modules.dep").exists()
    assert not (small_tree / "kernel/fs/ext4").exists()
    assert (small_tree / "modules.builtin").exists()


@pytest.mark.parametrize("suffix,argv", [(".xz", ["xz", "-c", "--check=crc32"]), (".zst", ["zstd", "-q", "-c"]),
                                         (".gz", ["gzip", "-c", "-n"])])
def test_compressed_modules_read_as_libkmod_reads_them(small_tree, suffix, argv):
    """Each compression the kernel's build offers gives the same .modinfo as the plain module,
    and what libkmod's own modinfo prints is the oracle."""
    import subprocess

    from tests.conftest import require_tools

    require_tools(argv[0], "modinfo")
    plain = small_tree / "kernel/fs/ext4/ext4.ko"
    packed = plain.with_name(plain.name + suffix)
    packed.write_bytes(subprocess.run([*argv, plain], capture_output=True, check=True).stdout)
    info = modinfo(decompress_file(packed))
    assert info == modinfo(plain.read_bytes())
    oracle = subprocess.run(["modinfo", "-F", "depends", plain], capture_output=True, text=True, check=True).stdout
    assert info["depends"] == [oracle.strip()]
