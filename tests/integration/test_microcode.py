"""Early CPU microcode end to end: a fixture variant listing `microcode` built with the real mkosi,
cpio and ukify, read back with cpio -t, objdump and ukify inspect, and booted under QEMU TCG.

Every expectation (package NEVRAs, file contents, hashes) is read from the fixture RPMs with rpm and
rpm2cpio, never written down from one day's Debian mirror."""

from __future__ import annotations

import json
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from mkosi_initrd_builder.building.formats.microcode import MICROCODE, boot_with_microcode
from mkosi_initrd_builder.building.formats.base import BuiltVariant
from mkosi_initrd_builder.building.formats.uki import uki_sections
from mkosi_initrd_builder.building.manifest import load_manifest
from mkosi_initrd_builder.checking.verify import kernel_from_repo
from mkosi_initrd_builder.util.fsutil import hash_bytes
from tests.conftest import FIXTURE_VARIANTS, require_root, require_tools
from tests.support.bootmarker import fixture_marker, fixture_probe, renamed_fixture_variant
from tests.support.cli import run_cli

pytestmark = pytest.mark.integration

VARIANT = "ucode"
PACKAGES = {"GenuineIntel": ("microcode_ctl", "usr/lib/firmware/intel-ucode"),
            "AuthenticAMD": ("amd-ucode-firmware", "usr/lib/firmware/amd-ucode")}


def microcode_variant(directory: Path) -> Path:
    """The minimal fixture variant with `microcode` added: the test's own, so the shared fixture
    variants (and every other test's expectations) stay as they are."""
    text = (FIXTURE_VARIANTS / "minimal.toml").read_text()
    assert 'formats = ["initrd", "uki"]' in text
    directory.mkdir()
    text = renamed_fixture_variant(text, "minimal", VARIANT)
    (directory / f"{VARIANT}.toml").write_text(text.replace('formats = ["initrd", "uki"]',
                                                            'formats = ["initrd", "microcode", "uki"]'))
    return directory


@pytest.fixture(scope="module")
def built(fixture_repo, tmp_path_factory):
    require_tools("mkosi", "ukify", "rpm2cpio", "cpio", "zstd")
    require_root()
    tmp = tmp_path_factory.mktemp("ucode")
    variants = microcode_variant(tmp / "variants")
    out = tmp / "out"
    r = run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                 "--output", out, "--variants-dir", variants])
    assert r.returncode == 0, r.stderr
    return out / VARIANT


def rpm_nevra(rpm: Path) -> str:
    return subprocess.run(["rpm", "-qp", "--nosignature", "--qf", "%{NAME}-%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}.%{ARCH}",
                           str(rpm)], capture_output=True, text=True, check=True).stdout


def vendor_blob_from_rpm(rpm: Path, directory: str, dest: Path) -> bytes:
    """The vendor's updates as the kernel wants them, made independently of the builder: unpacked with
    rpm2cpio and cpio, concatenated by file name, xz-compressed files decompressed."""
    payload = subprocess.run(["rpm2cpio", str(rpm)], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=payload, cwd=dest, check=True)
    files = sorted((dest / directory).iterdir(), key=lambda p: p.name)
    assert files, f"{rpm.name} ships nothing in /{directory}"
    return b"".join(lzma.decompress(f.read_bytes()) if f.suffix == ".xz" else f.read_bytes() for f in files)


def test_microcode_cpio_has_the_kernels_layout_per_real_cpio(built):
    require_tools("cpio")
    listing = subprocess.run(["cpio", "-t", "--quiet"], stdin=open(built / MICROCODE.file_name, "rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    assert listing == ["kernel", "kernel/x86", "kernel/x86/microcode",
                       "kernel/x86/microcode/AuthenticAMD.bin", "kernel/x86/microcode/GenuineIntel.bin"]


def test_vendor_files_are_the_packages_updates_and_the_manifest_says_so(built, fixture_repo, tmp_path):
    require_tools("cpio", "rpm", "rpm2cpio")
    subprocess.run(["cpio", "-idm", "--quiet"], stdin=open(built / MICROCODE.file_name, "rb"), cwd=tmp_path,
                   check=True)
    manifest = load_manifest(built)
    entry = manifest["outputs"][MICROCODE.file_name]
    assert sorted(entry["packages"]) == sorted(rpm_nevra(fixture_repo.rpms[p]) for p, _ in PACKAGES.values())
    for cpuid, (package, directory) in PACKAGES.items():
        unpacked = tmp_path / package
        unpacked.mkdir()
        want = vendor_blob_from_rpm(fixture_repo.rpms[package], directory, unpacked)
        got = (tmp_path / f"kernel/x86/microcode/{cpuid}.bin").read_bytes()
        assert got == want, cpuid
        vendor = entry["vendors"][cpuid]
        assert vendor["sha256"] == hash_bytes(want) and vendor["size"] == len(want)
        assert vendor["packages"] == [rpm_nevra(fixture_repo.rpms[package])]
        assert vendor["sources"] == len(list((unpacked / directory).iterdir()))


def test_uki_carries_the_early_cpio_as_ucode_per_objdump_and_ukify(built):
    require_tools("objdump", "ukify")
    early = (built / MICROCODE.file_name).read_bytes()
    assert uki_sections(built / "uki.efi")[".ucode"] == early
    headers = subprocess.run(["objdump", "-h", str(built / "uki.efi")], capture_output=True, text=True,
                             check=True).stdout
    row = next(line.split() for line in headers.splitlines() if " .ucode " in line)
    assert int(row[2], 16) >= len(early)  # objdump's size: the raw data, padded to the file alignment
    shown = subprocess.run([shutil.which("ukify"), "--json=short", "inspect", str(built / "uki.efi")],
                           capture_output=True, text=True, check=True).stdout
    ucode = json.loads(shown)[".ucode"]
    assert (ucode["size"], ucode["sha256"]) == (len(early), hash_bytes(early))


def test_verify_and_inspect_read_the_early_cpio_and_the_ucode_section(built, tmp_path):
    r = run_cli(["verify", built])
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("ok   microcode is an uncompressed early cpio", "ok   microcode GenuineIntel.bin matches manifest",
                 "ok   microcode AuthenticAMD.bin matches manifest", "ok   UKI .ucode is the early microcode cpio"):
        assert line in r.stdout, r.stdout
    r = run_cli(["inspect", "--json", built])
    info = json.loads(r.stdout)
    assert [n for n, _ in info["microcode-files"]] == ["kernel/x86/microcode/AuthenticAMD.bin",
                                                       "kernel/x86/microcode/GenuineIntel.bin"]
    assert ".ucode" in dict(info["uki-sections"])

    # A vendor file changed after the build (and the archive's hash re-recorded) is still caught.
    copy = tmp_path / VARIANT
    shutil.copytree(built, copy)
    data = bytearray((copy / MICROCODE.file_name).read_bytes())
    at = data.index(b"kernel/x86/microcode/GenuineIntel.bin") + 200
    data[at] ^= 0xFF
    (copy / MICROCODE.file_name).write_bytes(data)
    m = json.loads((copy / "manifest.json").read_text())
    m["outputs"][MICROCODE.file_name].update(sha256=hash_bytes(bytes(data)))
    (copy / "manifest.json").write_text(json.dumps(m))
    r = run_cli(["verify", copy])
    assert r.returncode == 1
    assert "FAIL microcode GenuineIntel.bin matches manifest" in r.stdout
    assert "FAIL UKI .ucode is the early microcode cpio" in r.stdout


def test_boots_with_the_early_cpio_in_front_and_as_ucode(built, fixture_repo, tmp_path):
    require_tools("qemu-system-x86_64")
    r = run_cli(["verify", "--boot", "--expect", fixture_marker(VARIANT, fixture_repo.kernel_version), built],
                timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   boots (kernel + early microcode cpio + initrd)" in r.stdout
    assert "ok   boots (UKI under OVMF)" in r.stdout


def test_kernels_microcode_loader_runs_with_the_early_cpio_in_front(built, fixture_repo, tmp_path):
    """Under TCG the update cannot take effect (QEMU ignores the trigger MSR), so what the log can show
    is the kernel's Intel loader running on the emulated CPU's signature (an Intel model without the
    hypervisor bit, under which the kernel would disable it) with the early cpio in front of the
    initrd, and the image still coming up. The line does not prove the blob was found: that is what
    the layout tests above prove."""
    require_tools("qemu-system-x86_64", "rpm2cpio", "cpio")
    b = BuiltVariant(built, load_manifest(built))
    kernel = kernel_from_repo(fixture_repo.path, dict(b.manifest), tmp_path / "kernel")
    result, lines = boot_with_microcode(b, kernel, fixture_probe(VARIANT, fixture_repo.kernel_version), 600,
                                        console_log=tmp_path / "console.log")
    assert result.ok, result.console_tail
    # Skylake-Client: family 6, model 0x5e, stepping 3 -> CPUID signature 0x506e3.
    assert any(line.startswith("microcode: sig=0x506e3,") for line in lines), lines
