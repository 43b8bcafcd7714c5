"""The early microcode cpio: which package files go in, in what order, and the layout the kernel's
early loader reads (kernel/x86/microcode/<vendor>.bin in an uncompressed newc archive)."""

from __future__ import annotations

import lzma
import subprocess

import pytest

from mkosi_initrd_builder.building.formats.microcode import (
    EARLY_DIR, VENDORS, read_early_cpio, vendor_files, write_early_cpio,
)
from mkosi_initrd_builder.checking.cpio import iter_cpio
from mkosi_initrd_builder.util.errors import BuilderError
from tests.conftest import require_tools

INTEL = next(v for v in VENDORS if v.cpuid == "GenuineIntel")
AMD = next(v for v in VENDORS if v.cpuid == "AuthenticAMD")


def test_each_vendor_is_read_from_kernel_x86_microcode_vendor_bin():
    assert {v.early_name for v in VENDORS} == {f"{EARLY_DIR}/GenuineIntel.bin", f"{EARLY_DIR}/AuthenticAMD.bin"}


def test_intel_takes_the_per_signature_files_sorted_by_name_from_either_firmware_root():
    listed = ["/usr/lib/firmware/intel-ucode/06-8f-08", "/usr/lib/firmware/intel-ucode/06-0f-02",
              "/lib/firmware/intel-ucode/06-55-04.xz", "/usr/lib/firmware/intel-ucode/README",
              "/usr/share/microcode_ctl/ucode_with_caveats/intel/intel-ucode/06-4f-01",
              "/usr/lib/firmware/intel-ucode/sub/06-01-01"]
    assert vendor_files(INTEL, listed) == ["/usr/lib/firmware/intel-ucode/06-0f-02",
                                           "/lib/firmware/intel-ucode/06-55-04.xz",
                                           "/usr/lib/firmware/intel-ucode/06-8f-08"]


def test_amd_takes_the_family_containers_and_not_their_signatures_or_other_firmware():
    listed = ["/usr/lib/firmware/amd-ucode/microcode_amd_fam19h.bin.xz",
              "/usr/lib/firmware/amd-ucode/microcode_amd.bin.xz",
              "/usr/lib/firmware/amd-ucode/microcode_amd_fam17h.bin.asc",
              "/usr/lib/firmware/amd-ucode/README",
              "/usr/lib/firmware/amd/amd_sev_fam19h_model0xh.sbin"]
    assert vendor_files(AMD, listed) == ["/usr/lib/firmware/amd-ucode/microcode_amd.bin.xz",
                                         "/usr/lib/firmware/amd-ucode/microcode_amd_fam19h.bin.xz"]
    assert vendor_files(INTEL, listed) == []


def _cpio_listing(data: bytes) -> list[str]:
    return subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True).stdout.decode().split()


def test_early_cpio_is_uncompressed_newc_with_the_kernels_layout(tmp_path):
    require_tools("cpio")
    blobs = {INTEL.early_name: b"intel" * 100, AMD.early_name: b"amd" * 7}
    dest = tmp_path / "microcode.cpio"
    write_early_cpio(blobs, dest, tmp_path, mtime=1700000000)
    data = dest.read_bytes()
    assert data.startswith(b"070701")  # newc, and no compression magic: the early loader reads no other
    # The real cpio lists parents before the files, as the kernel's unpacker wants them.
    assert _cpio_listing(data) == ["kernel", "kernel/x86", "kernel/x86/microcode",
                                   "kernel/x86/microcode/AuthenticAMD.bin", "kernel/x86/microcode/GenuineIntel.bin"]
    entries = read_early_cpio(data, dest)
    assert entries[INTEL.early_name].data == blobs[INTEL.early_name]
    assert entries[AMD.early_name].data == blobs[AMD.early_name]
    assert {e.mtime for e in entries.values()} == {1700000000}
    assert entries["kernel/x86/microcode"].is_dir


def test_early_cpio_is_reproducible(tmp_path):
    require_tools("cpio")
    blobs = {INTEL.early_name: b"x" * 4097}
    write_early_cpio(blobs, tmp_path / "a.cpio", tmp_path / "one", mtime=1)
    write_early_cpio(blobs, tmp_path / "b.cpio", tmp_path / "two", mtime=1)
    assert (tmp_path / "a.cpio").read_bytes() == (tmp_path / "b.cpio").read_bytes()


def test_early_cpio_ends_on_a_block_boundary_for_the_initrd_after_it(tmp_path):
    require_tools("cpio")
    write_early_cpio({AMD.early_name: b"amd"}, tmp_path / "microcode.cpio", tmp_path, mtime=1)
    early = (tmp_path / "microcode.cpio").read_bytes()
    assert [e.name for e in iter_cpio(early)][-1] == AMD.early_name
    assert len(early) % 512 == 0  # cpio pads to its block size: the compressed archive starts aligned


def test_compressed_early_cpio_is_refused_naming_the_file(tmp_path):
    require_tools("cpio")
    write_early_cpio({AMD.early_name: b"amd"}, tmp_path / "microcode.cpio", tmp_path, mtime=1)
    packed = lzma.compress((tmp_path / "microcode.cpio").read_bytes())
    with pytest.raises(BuilderError, match="microcode.cpio: not an uncompressed newc cpio"):
        read_early_cpio(packed, tmp_path / "microcode.cpio")


def test_truncated_early_cpio_is_refused_naming_the_file(tmp_path):
    require_tools("cpio")
    write_early_cpio({AMD.early_name: b"amd" * 100}, tmp_path / "microcode.cpio", tmp_path, mtime=1)
    data = (tmp_path / "microcode.cpio").read_bytes()
    with pytest.raises(BuilderError, match="microcode.cpio: .*past the end"):
        read_early_cpio(data[: data.index(b"amdamd") + 50], tmp_path / "microcode.cpio")
