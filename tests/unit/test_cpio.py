"""The newc reader against archives written by the real cpio and zstd."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mkosi_initrd_builder.checking.cpio import CpioFormatError, iter_cpio, read_cpio, resolve
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


def test_truncated_archive_is_rejected(tmp_path):
    require_tools("cpio", "zstd")
    raw = subprocess.run(["zstd", "-dc", make_archive(tmp_path)], capture_output=True, check=True).stdout
    with pytest.raises(CpioFormatError):
        list(iter_cpio(raw[: len(raw) // 2]))
    with pytest.raises(CpioFormatError, match="bad cpio magic"):
        list(iter_cpio(b"garbage" * 20))
