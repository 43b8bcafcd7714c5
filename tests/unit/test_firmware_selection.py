"""Firmware for the kept modules: which file the kernel's loader would read for each wanted name, what
the kernel's configuration lets it decompress, links, and what verify makes of the result."""

from __future__ import annotations

import hashlib
import lzma
import os

import pytest

from mkosi_initrd_builder.building.firmware import (
    accepted_suffixes, available_names, choose_firmware, install_firmware, satisfied,
)
from mkosi_initrd_builder.building.formats.initrd import firmware_checks
from mkosi_initrd_builder.checking.cpio import CpioEntry
from mkosi_initrd_builder.rpmmeta.nevra import NEVRA
from mkosi_initrd_builder.rpmmeta.repo import RepoPackage, open_repository
from tests.conftest import require_tools
from tests.support.fixtures import build_rpm_from_spec, make_repo

XZ_AND_ZSTD = "CONFIG_FW_LOADER_COMPRESS=y\nCONFIG_FW_LOADER_COMPRESS_XZ=y\nCONFIG_FW_LOADER_COMPRESS_ZSTD=y\n"


def package(name: str, *files: str) -> RepoPackage:
    return RepoPackage(NEVRA.of(name, 0, "1", "1", "noarch"), f"{name}.rpm", "sha256", "0" * 64, 1, 1, (), files)


@pytest.mark.parametrize(("config", "accepted"), [
    (XZ_AND_ZSTD, ("", ".zst", ".xz")),
    # Debian's 6.1: xz only
    ("CONFIG_FW_LOADER_COMPRESS=y\nCONFIG_FW_LOADER_COMPRESS_XZ=y\n# CONFIG_FW_LOADER_COMPRESS_ZSTD is not set\n",
     ("", ".xz")),
    # before 5.19 the one option meant xz
    ("CONFIG_FW_LOADER=y\nCONFIG_FW_LOADER_COMPRESS=y\n", ("", ".xz")),
    ("CONFIG_FW_LOADER=y\n# CONFIG_FW_LOADER_COMPRESS is not set\n", ("",)),
    # no configuration shipped: only plain files are certain to load
    (None, ("",)),
])
def test_the_kernels_configuration_says_which_compressed_firmware_it_reads(config, accepted):
    assert accepted_suffixes(config) == accepted


def test_the_loaders_order_picks_plain_then_zst_then_xz_among_what_the_kernel_reads():
    fw = package("linux-firmware", "/usr/lib/firmware/a/both.bin", "/usr/lib/firmware/a/both.bin.xz",
                 "/usr/lib/firmware/b/z.bin.zst", "/usr/lib/firmware/b/z.bin.xz", "/usr/lib/firmware/c/x.bin.xz")
    choice = choose_firmware(["a/both.bin", "b/z.bin", "c/x.bin", "d/none.bin"], [fw], ("", ".zst", ".xz"))
    assert {w: c.source for w, c in choice.chosen} == {"a/both.bin": "/usr/lib/firmware/a/both.bin",
                                                       "b/z.bin": "/usr/lib/firmware/b/z.bin.zst",
                                                       "c/x.bin": "/usr/lib/firmware/c/x.bin.xz"}
    assert choice.missing == ("d/none.bin",)
    # a kernel without zstd takes the .xz one rather than a file it would have to get decompressed
    choice = choose_firmware(["b/z.bin"], [fw], ("", ".xz"))
    assert [c.source for _, c in choice.chosen] == ["/usr/lib/firmware/b/z.bin.xz"]


def test_the_first_firmware_package_named_wins_and_either_firmware_root_counts():
    first = package("first-firmware", "/lib/firmware/x.bin.xz")
    second = package("second-firmware", "/usr/lib/firmware/x.bin", "/usr/lib/firmware/y.bin")
    choice = choose_firmware(["x.bin", "y.bin"], [first, second], ("", ".xz"))
    assert {w: (c.package.nevra.name, c.source) for w, c in choice.chosen} == {
        "x.bin": ("first-firmware", "/lib/firmware/x.bin.xz"), "y.bin": ("second-firmware", "/usr/lib/firmware/y.bin")}


def test_a_glob_takes_every_matching_firmware_and_is_missing_only_when_none_matches():
    fw = package("linux-firmware", "/usr/lib/firmware/qcom/a.mbn.xz", "/usr/lib/firmware/qcom/b.mbn.xz",
                 "/usr/lib/firmware/other/c.mbn.xz", "/usr/share/doc/qcom/d.mbn")
    choice = choose_firmware(["qcom/*.mbn", "nothing/*"], [fw], ("", ".xz"))
    assert sorted(c.name for _, c in choice.chosen) == ["qcom/a.mbn", "qcom/b.mbn"]
    assert choice.missing == ("nothing/*",)
    names = available_names([fw])
    assert satisfied("qcom/*.mbn", names) and satisfied("other/c.mbn", names) and not satisfied("nothing/*", names)


FIRMWARE_SPEC = """\
Name: test-firmware
Version: 1
Release: 1
Summary: firmware layouts the builder must handle
License: MIT
BuildArch: noarch
%description
test
%install
d=%{buildroot}/usr/lib/firmware
mkdir -p $d/vendor $d/zst
printf 'real firmware\\n' | xz -C crc32 > $d/vendor/real.bin.xz
ln -s real.bin.xz $d/vendor/alias.bin.xz
ln -s alias.bin.xz $d/vendor/chain.bin.xz
ln -s ../../../../etc/passwd $d/vendor/escape.bin
ln -s gone.bin $d/vendor/dangling.bin
printf 'zstd firmware\\n' | zstd -q > $d/zst/z.bin.zst
printf 'plain [firmware]\\n' > $d/vendor/odd[1].bin
%files
/usr/lib/firmware
"""


@pytest.fixture(scope="module")
def firmware_repo(tmp_path_factory):
    require_tools("rpmbuild", "rpm2cpio", "cpio", "createrepo_c", "xz", "zstd")
    base = tmp_path_factory.mktemp("firmware-repo")
    spec = base / "test-firmware.spec"
    spec.write_text(FIRMWARE_SPEC)
    repo = base / "repo"
    repo.mkdir()
    for rpm in build_rpm_from_spec(spec, base / "rpmbuild", {}, 1700000000):
        rpm.rename(repo / rpm.name)
    make_repo(repo)
    return open_repository(repo)


def installed(repo, tmp_path, wanted, accepted):
    dest = tmp_path / "image/usr/lib/firmware"
    result = install_firmware(repo, list(repo.packages), wanted, accepted, dest, tmp_path / "work")
    return result, dest


def test_links_are_kept_with_the_file_they_lead_to(firmware_repo, tmp_path):
    result, dest = installed(firmware_repo, tmp_path, ["vendor/chain.bin"], ("", ".xz"))
    assert os.readlink(dest / "vendor/chain.bin.xz") == "alias.bin.xz"
    assert os.readlink(dest / "vendor/alias.bin.xz") == "real.bin.xz"
    assert lzma.decompress((dest / "vendor/chain.bin.xz").read_bytes()) == b"real firmware\n"
    by_path = {f.path: f for f in result.files}
    assert sorted(by_path) == ["vendor/alias.bin.xz", "vendor/chain.bin.xz", "vendor/real.bin.xz"]
    assert by_path["vendor/chain.bin.xz"].wanted == ("vendor/chain.bin",)
    assert by_path["vendor/real.bin.xz"].wanted == ()
    real = (dest / "vendor/real.bin.xz").read_bytes()
    assert by_path["vendor/real.bin.xz"].sha256 == hashlib.sha256(real).hexdigest()
    assert result.missing == ()


def test_links_out_of_the_firmware_tree_or_to_nothing_count_as_not_found(firmware_repo, tmp_path):
    result, dest = installed(firmware_repo, tmp_path, ["vendor/escape.bin", "vendor/dangling.bin"], ("",))
    assert result.files == ()
    assert result.missing == ("vendor/dangling.bin", "vendor/escape.bin")
    assert not (dest / "vendor/escape.bin").is_symlink() and not (dest / "vendor/dangling.bin").is_symlink()


def test_compression_the_kernel_cannot_read_is_undone_under_the_plain_name(firmware_repo, tmp_path):
    result, dest = installed(firmware_repo, tmp_path, ["zst/z.bin", "vendor/chain.bin"], ("",))
    assert (dest / "zst/z.bin").read_bytes() == b"zstd firmware\n"
    # through the links to the file they lead to, written as a regular file
    assert (dest / "vendor/chain.bin").read_bytes() == b"real firmware\n"
    assert not (dest / "vendor/chain.bin").is_symlink()
    assert {f.path: f.decompressed_from for f in result.files} == {
        "vendor/chain.bin": "/usr/lib/firmware/vendor/chain.bin.xz", "zst/z.bin": "/usr/lib/firmware/zst/z.bin.zst"}
    assert not list(dest.rglob("*.zst")) and not list(dest.rglob("*.xz"))


def test_a_name_with_glob_characters_is_taken_literally_before_as_a_glob(firmware_repo, tmp_path):
    # cpio reads its arguments as globs: "odd[1].bin" unescaped would extract nothing.
    result, dest = installed(firmware_repo, tmp_path, ["vendor/odd[1].bin"], ("",))
    assert (dest / "vendor/odd[1].bin").read_bytes() == b"plain [firmware]\n"
    assert result.missing == ()
    result, dest = installed(firmware_repo, tmp_path / "again", ["vendor/odd*"], ("",))
    assert [f.path for f in result.files] == ["vendor/odd[1].bin"]


def entry(name: str, data: bytes, *, link: bool = False) -> CpioEntry:
    return CpioEntry(name, (0o120777 if link else 0o100644), len(data), 0, data)


def test_verify_wants_the_manifests_firmware_exactly_and_every_wanted_name_accounted_for():
    data = b"firmware"
    manifest = {
        "firmware": {"a.bin": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "wanted": ["a.bin"],
                               "package": "p"},
                     "l.bin": {"link": "a.bin", "wanted": ["l.bin"], "package": "p"}},
        "firmware-wanted": ["a.bin", "l.bin", "gone.bin"], "firmware-missing": ["gone.bin"],
    }
    entries = {"usr/lib/firmware/a.bin": entry("usr/lib/firmware/a.bin", data),
               "usr/lib/firmware/l.bin": entry("usr/lib/firmware/l.bin", b"a.bin", link=True)}
    assert all(c.ok for c in firmware_checks(manifest, entries)), firmware_checks(manifest, entries)

    changed = dict(entries, **{"usr/lib/firmware/a.bin": entry("usr/lib/firmware/a.bin", b"firmwarE")})
    assert [c.name for c in firmware_checks(manifest, changed) if not c.ok] == [
        "firmware files match manifest (sha256, size, link targets)"]
    extra = dict(entries, **{"usr/lib/firmware/x.bin": entry("usr/lib/firmware/x.bin", b"x")})
    assert [c.name for c in firmware_checks(manifest, extra) if not c.ok] == [
        "firmware in the image is what the manifest lists"]
    dangling = dict(entries, **{"usr/lib/firmware/l.bin": entry("usr/lib/firmware/l.bin", b"b.bin", link=True)})
    assert not all(c.ok for c in firmware_checks(manifest, dangling))
    unaccounted = dict(manifest, **{"firmware-missing": []})
    assert [c.name for c in firmware_checks(unaccounted, entries) if not c.ok] == [
        "every wanted firmware is in the image or listed as not found"]
