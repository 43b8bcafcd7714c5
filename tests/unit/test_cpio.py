"""The newc reader against archives written by the real cpio and zstd."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mkosi_initrd_builder.checking.cpio import CpioFormatError, iter_cpio, iter_cpio_members, read_cpio, resolve
from tests.conftest import require_tools


def make_archive(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/lib/os-release").write_text("ID=fedora\n")
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "init").write_text("#!/bin/sh\n")
    names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True).stdout
    names = b"\n".join(sorted(names.split())) + b"\n"
    raw = subprocess.run(["cpio", "-o", "-H", "newc", "--reproducible", "--quiet"], cwd=root, input=names,
                         capture_output=True, check=True).stdout
    out = tmp_path / "initrd.cpio.zst"
    out.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout)
    return out


def test_reads_what_cpio_wrote(tmp_path):
    require_tools("cpio", "zstd")
    entries = {e.name: e for e in read_cpio(make_archive(tmp_path))}
    assert entries["usr/lib/os-release"].data == b"ID=fedora\n"
    assert entries["etc/os-release"].is_symlink
    assert resolve(entries, "etc/os-release").data == b"ID=fedora\n"
    assert entries["usr/lib"].is_dir


def test_members_are_where_the_entries_are_and_can_be_copied_as_they_are(tmp_path):
    require_tools("cpio", "zstd")
    raw = subprocess.run(["zstd", "-dc", make_archive(tmp_path)], capture_output=True, check=True).stdout
    members = list(iter_cpio_members(raw))
    assert [e for e, _, _ in members] == list(iter_cpio(raw))
    assert all(start % 4 == 0 and start < end for _, start, end in members)
    assert all(a[2] <= b[1] for a, b in zip(members, members[1:]))
    # one member left out, the rest (trailer and padding included) copied: still an archive, without it
    (entry, start, end), = [m for m in members if m[0].name == "init"]
    rest = list(iter_cpio(raw[:start] + raw[end:]))
    assert [e.name for e in rest] == [e.name for e, _, _ in members if e.name != "init"]


def test_truncated_archive_is_rejected(tmp_path):
    require_tools("cpio", "zstd")
    raw = subprocess.run(["zstd", "-dc", make_archive(tmp_path)], capture_output=True, check=True).stdout
    with pytest.raises(CpioFormatError):
        list(iter_cpio(raw[: len(raw) // 2]))
    with pytest.raises(CpioFormatError, match="bad cpio magic"):
        list(iter_cpio(b"garbage" * 20))


def test_dot_files_keep_their_name_when_the_archive_prefixes_dot_slash(tmp_path):
    """cpio lists './.hidden'; stripping the characters '.' and '/' instead of the prefix './'
    would turn it into 'hidden'."""
    require_tools("cpio")
    root = tmp_path / "root"
    (root / ".config").mkdir(parents=True)
    (root / ".hidden").write_text("h")
    (root / ".config/..x").write_text("x")
    names = b"./.hidden\n./.config\n./.config/..x\n"
    raw = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=names,
                         capture_output=True, check=True).stdout
    entries = {e.name: e for e in iter_cpio(raw)}
    assert set(entries) == {".hidden", ".config", ".config/..x"}
    assert entries[".hidden"].data == b"h"


def test_concatenated_archives_are_read_as_the_kernel_reads_them(tmp_path):
    """An early (uncompressed) cpio before the main one: both archives' entries, in order."""
    require_tools("cpio", "zstd")
    raw = subprocess.run(["zstd", "-dc", make_archive(tmp_path)], capture_output=True, check=True).stdout
    early = tmp_path / "early"
    (early / "kernel/x86/microcode").mkdir(parents=True)
    (early / "kernel/x86/microcode/GenuineIntel.bin").write_bytes(b"\x01" * 10)
    first = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=early,
                           input=b"kernel\nkernel/x86\nkernel/x86/microcode\nkernel/x86/microcode/GenuineIntel.bin\n",
                           capture_output=True, check=True).stdout
    names = [e.name for e in iter_cpio(first + raw)]
    assert names[:4] == ["kernel", "kernel/x86", "kernel/x86/microcode", "kernel/x86/microcode/GenuineIntel.bin"]
    assert "usr/lib/os-release" in names[4:]


@pytest.mark.parametrize("argv", [["zstd", "-q", "-c"], ["xz", "-c", "--check=crc32"], ["gzip", "-c", "-n"], None])
def test_one_decompressor_reads_what_the_real_tools_wrote(tmp_path, argv):
    from mkosi_initrd_builder.util.compress import decompress_file

    payload = bytes(range(256)) * 400
    path = tmp_path / "blob"
    if argv is None:
        path.write_bytes(payload)
    else:
        require_tools(argv[0])
        # Two frames/members, as `cat a.zst b.zst` (and streamed zstd without a content size) give.
        one = subprocess.run(argv, input=payload[:5000], capture_output=True, check=True).stdout
        two = subprocess.run(argv, input=payload[5000:], capture_output=True, check=True).stdout
        path.write_bytes(one + two)
    assert decompress_file(path) == payload


def test_a_damaged_compressed_file_is_named_in_the_error(tmp_path):
    from mkosi_initrd_builder.util.compress import DecompressError, decompress_file

    require_tools("zstd")
    path = tmp_path / "initrd.cpio.zst"
    good = subprocess.run(["zstd", "-q", "-c"], input=b"x" * 100000, capture_output=True, check=True).stdout
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DecompressError, match=str(path)):
        decompress_file(path)
