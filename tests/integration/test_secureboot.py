"""Secure Boot end to end: every UKI carries .sbat naming its package; a UKI signed at build time or
after it (koji's %pesign, here sbsign standing in) passes sbverify and verify; and OVMF with Secure
Boot enforced and a throw-away key enrolled boots the signed UKI and refuses an unsigned or tampered one.

The key is made here with openssl, for this session only; no key lives in the repository."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mkosi_initrd_builder.building.formats.uki import uki_sections
from mkosi_initrd_builder.building.secureboot import (PRODUCT_PACKAGE, SBAT_HEADER, authenticode_sha256,
                                                      signatures)
from mkosi_initrd_builder.building.variants import load_variant
from mkosi_initrd_builder.checking.qemu import SecureBootFirmware, boot, find_secure_boot_code
from mkosi_initrd_builder.checking.verify import verify_variant
from tests.conftest import FIXTURE_VARIANTS, require_root, require_tools
from tests.support.bootmarker import fixture_probe
from tests.support.cli import run_cli

pytestmark = pytest.mark.integration

VARIANT = "minimal"
PACKAGE_VERSION = "0.1-1.test^1"  # what the spec passes as %{version}-%{release}; any EVR does


def virt_fw_vars() -> str:
    """virt-firmware's command: in the venv beside this Python (make setup), else on PATH."""
    beside = Path(sys.executable).parent / "virt-fw-vars"
    found = str(beside) if beside.exists() else shutil.which("virt-fw-vars")
    if found is None:
        pytest.skip("needs virt-fw-vars (pip virt-firmware, installed by 'make setup') to enroll the test key")
    return found


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A throw-away Secure Boot key and certificate, made for this module."""
    require_tools("openssl", "sbsign", "sbverify")
    d = tmp_path_factory.mktemp("sbkeys")
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "1",
                    "-subj", "/CN=mkosi-initrd throw-away test db key/", "-keyout", d / "db.key",
                    "-out", d / "db.crt"], check=True, capture_output=True)
    return d / "db.key", d / "db.crt"


def build(fixture_repo, out: Path, *extra) -> Path:
    require_tools("mkosi", "ukify", "rpm2cpio", "cpio", "zstd")
    require_root()
    r = run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                 "--output", out, "--variants-dir", FIXTURE_VARIANTS, "--variant", VARIANT, *extra])
    assert r.returncode == 0, r.stderr
    return out / VARIANT


@pytest.fixture(scope="module")
def unsigned(fixture_repo, tmp_path_factory):
    return build(fixture_repo, tmp_path_factory.mktemp("unsigned") / "out", "--package-version", PACKAGE_VERSION)


@pytest.fixture(scope="module")
def signed(fixture_repo, keys, tmp_path_factory):
    key, cert = keys
    return build(fixture_repo, tmp_path_factory.mktemp("signed") / "out", "--package-version", PACKAGE_VERSION,
                 "--secureboot-key", key, "--secureboot-certificate", cert)


def sign_after_build(directory: Path, keys, dest: Path) -> Path:
    """A copy of the variant's output whose UKI is signed in place, as koji's %pesign does after the build."""
    key, cert = keys
    shutil.copytree(directory, dest)
    uki = dest / "uki.efi"
    subprocess.run(["sbsign", "--key", key, "--cert", cert, "--output", uki, uki], check=True, capture_output=True)
    return dest


def flip_a_byte_of(uki: Path, section: str) -> None:
    data = bytearray(uki.read_bytes())
    import pefile

    pe = pefile.PE(data=bytes(data), fast_load=True)
    s = next(s for s in pe.sections if s.Name.rstrip(b"\0").decode() == section)
    at = s.PointerToRawData + s.SizeOfRawData // 2
    data[at] ^= 0x01
    uki.write_bytes(bytes(data))


def sbverify(uki: Path, cert: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sbverify", "--cert", cert, uki], capture_output=True, text=True)


def test_uki_sbat_names_the_variants_package_after_the_stubs_entries(unsigned, fixture_repo):
    variant = load_variant(FIXTURE_VARIANTS / f"{VARIANT}.toml")
    r = run_cli(["inspect", "--json", unsigned])
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    sbat = facts["uki-sbat"]
    name = f"{PRODUCT_PACKAGE}-{VARIANT}"
    assert sbat[0] == SBAT_HEADER
    assert any(line.startswith("systemd-stub,") for line in sbat)
    product = [line.split(",") for line in sbat if line.startswith(f"{name},")]
    assert len(product) == 1
    assert product[0][:5] == [name, str(variant.sbat_generation), "mkosi-initrd", name, PACKAGE_VERSION]
    # the stub's own entries come through as the stub package ships them
    stub = json.loads((unsigned / "manifest.json").read_text())["outputs"]["uki.efi"]["stub"]
    assert stub.startswith("systemd-boot-unsigned-")
    assert facts["uki-signatures"] == []
    assert sbat == json.loads((unsigned / "manifest.json").read_text())["outputs"]["uki.efi"]["sbat"]


def test_signed_build_passes_sbverify_and_verify(signed, keys):
    key, cert = keys
    assert sbverify(signed / "uki.efi", cert).returncode == 0
    r = run_cli(["verify", signed])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   UKI carries the Authenticode signature made at build time" in r.stdout
    meta = json.loads((signed / "manifest.json").read_text())["outputs"]["uki.efi"]
    fingerprint = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256"],
                                 capture_output=True, text=True, check=True).stdout
    assert meta["signed"]["certificate-sha256"] == fingerprint.split("=", 1)[1].strip().replace(":", "").lower()
    assert meta["signed"]["tool"].startswith("sbsign ")
    r = run_cli(["inspect", signed])
    assert re.search(r"UKI Secure Boot: signed: 1 Authenticode signature\(s\) \(PKCS#7 SignedData", r.stdout)


def test_signed_and_unsigned_builds_hold_the_same_content(signed, unsigned):
    """Signing adds the certificate table and nothing else: the digest the signature covers is the
    unsigned build's (the build is reproducible, so the two builds' contents are the same)."""
    assert authenticode_sha256(signed / "uki.efi") == authenticode_sha256(unsigned / "uki.efi")
    assert uki_sections(signed / "uki.efi") == uki_sections(unsigned / "uki.efi")


def test_verify_accepts_a_uki_signed_after_the_build_and_refuses_it_tampered(unsigned, keys, tmp_path):
    key, cert = keys
    post = sign_after_build(unsigned, keys, tmp_path / "post")
    assert sbverify(post / "uki.efi", cert).returncode == 0
    assert len(signatures(post / "uki.efi")) == 1
    checks = {c.name: c for c in verify_variant(post)}
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]
    assert "signed after the build (1 signature(s))" in checks["uki.efi matches manifest"].detail

    flip_a_byte_of(post / "uki.efi", ".linux")
    checks = {c.name: c for c in verify_variant(post)}
    assert not checks["uki.efi matches manifest"].ok
    assert "the signed content changed" in checks["uki.efi matches manifest"].detail
    # sbverify computes the same Authenticode digests: the one the signature carries and the file's
    r = sbverify(post / "uki.efi", cert)
    assert r.returncode != 0
    built = json.loads((unsigned / "manifest.json").read_text())["outputs"]["uki.efi"]["authenticode-sha256"]
    assert built in r.stdout + r.stderr
    assert authenticode_sha256(post / "uki.efi") in r.stdout + r.stderr


# ---- OVMF with Secure Boot enforced ----

@pytest.fixture(scope="module")
def firmware(keys, tmp_path_factory):
    """OVMF's Secure Boot build and a variable store with the throw-away certificate as PK, KEK and
    the only db entry (no Microsoft keys), Secure Boot on."""
    require_tools("qemu-system-x86_64")
    try:
        code = find_secure_boot_code()
    except Exception as e:
        pytest.skip(str(e))
    template = next((p for p in (code.parent / "OVMF_VARS_4M.fd", code.parent / "OVMF_VARS.fd") if p.exists()), None)
    if template is None:
        pytest.skip(f"no empty OVMF variable store beside {code}")
    key, cert = keys
    owner = str(uuid.uuid4())
    variables = tmp_path_factory.mktemp("ovmf") / "vars.fd"
    subprocess.run([virt_fw_vars(), "--input", template, "--output", variables, "--set-pk", owner, cert,
                    "--add-kek", owner, cert, "--add-db", owner, cert, "--no-microsoft", "--secure-boot"],
                   check=True, capture_output=True)
    return SecureBootFirmware(code, variables)


def secure_boot(uki: Path, firmware, kernel_version: str, console_log=None):
    return boot(kernel=uki, secure_boot=firmware, probe=fixture_probe(VARIANT, kernel_version), timeout=300,
                console_log=console_log)


@pytest.mark.boot
def test_signed_uki_boots_with_secure_boot_enforced(signed, firmware, fixture_repo, tmp_path):
    console = tmp_path / "console.log"
    r = secure_boot(signed / "uki.efi", firmware, fixture_repo.kernel_version, console)
    assert r.ok, r.console_tail
    assert "BOOT-OK" in r.marker_line
    # the kernel saw the firmware enforce it (and locked itself down)
    assert "secureboot: Secure boot enabled" in console.read_text(errors="replace")


@pytest.mark.boot
def test_verify_boots_the_signed_uki_with_secure_boot_enforced(signed, firmware, fixture_repo):
    store = firmware.variables.read_bytes()
    r = run_cli(["verify", "--boot", "--secure-boot-vars", firmware.variables, "--expect",
                 fixture_probe(VARIANT, fixture_repo.kernel_version).expect, signed], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^ok   boots \(UKI under OVMF, Secure Boot enforced\): .*BOOT-OK", r.stdout, re.MULTILINE)
    assert firmware.variables.read_bytes() == store  # each boot writes to a copy


def test_verify_takes_secure_boot_vars_only_with_boot(signed, firmware):
    r = run_cli(["verify", "--secure-boot-vars", firmware.variables, signed])
    assert r.returncode == 1
    assert "error: --secure-boot-vars: is only used with --boot" in r.stderr


@pytest.mark.boot
def test_unsigned_uki_is_refused_by_the_firmware(unsigned, firmware, fixture_repo):
    r = secure_boot(unsigned / "uki.efi", firmware, fixture_repo.kernel_version)
    assert not r.ok
    assert re.search(r"BdsDxe: failed to load .*: Access Denied", r.marker_line), r.console_tail


@pytest.mark.boot
@pytest.mark.parametrize("section", [".linux", ".initrd"])
def test_uki_tampered_after_signing_is_refused_by_the_firmware(signed, firmware, fixture_repo, tmp_path, section):
    tampered = tmp_path / "uki.efi"
    shutil.copyfile(signed / "uki.efi", tampered)
    flip_a_byte_of(tampered, section)
    r = secure_boot(tampered, firmware, fixture_repo.kernel_version)
    assert not r.ok
    assert re.search(r"BdsDxe: failed to load .*: Access Denied", r.marker_line), r.console_tail


# ---- the spec's signing hook, kernel.spec's way ----

@pytest.fixture(scope="module")
def rendered_spec(fixture_repo, tmp_path_factory):
    require_tools("rpmbuild")
    spec = tmp_path_factory.mktemp("spec") / "src" / "mkosi-initrd-initrd.spec"
    spec.parent.mkdir()
    r = run_cli(["--quiet", "spec", "--kernel-version", fixture_repo.kernel_version, "--repo", fixture_repo.path,
                 "--variants-dir", FIXTURE_VARIANTS, "--packager", "Test <test@example.org>", "--output", spec])
    assert r.returncode == 0, r.stderr
    return spec


def rpmbuild(spec: Path, topdir: Path, mode: str, *defines: str) -> subprocess.CompletedProcess:
    argv = ["rpmbuild", mode, "--nodeps", "--with", "uki_signing", "--define", f"_topdir {topdir}",
            "--define", f"_sourcedir {spec.parent}"]
    for d in defines:
        argv += ["--define", d]
    return subprocess.run([*argv, str(spec)], capture_output=True, text=True, timeout=900)


def test_spec_with_uki_signing_signs_every_uki_with_pesign_and_check_accepts_it(rendered_spec, fixture_repo, keys,
                                                                                tmp_path):
    """%pesign stands in here as sbsign with the throw-away key: on koji's signing builders pesign's
    helper asks the pesign daemon instead, with the same arguments."""
    require_tools("mkosi", "ukify", "rpm2cpio", "cpio", "zstd", "sbsign")
    require_root()
    key, cert = keys
    r = rpmbuild(rendered_spec, tmp_path, "-bi",
                 f"mkosi_initrd_repo {fixture_repo.path}",
                 f"mkosi_initrd_build {sys.executable} -m mkosi_initrd_builder",
                 f"pesign(i:o:C:e:c:n:a:s) sbsign --key {key} --cert %{{-c*}} --output %{{-o*}} %{{-i*}}",
                 f"secureboot_ca_0 {cert}", f"secureboot_key_0 {cert}", "pesign_name_0 throw-away",
                 "vendor Test Vendor")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"sbsign --key {key} --cert {cert} --output out/minimal/uki.efi.signed out/minimal/uki.efi" in r.stderr
    installed = list((tmp_path / "BUILDROOT").rglob("minimal/uki.efi"))
    assert len(installed) == 1
    assert sbverify(installed[0], cert).returncode == 0
    # %check's verify passed on the signed UKI; the manifest beside it says what was built
    manifest = json.loads((installed[0].parent / "manifest.json").read_text())
    meta = manifest["outputs"]["uki.efi"]
    assert meta["authenticode-sha256"] == authenticode_sha256(installed[0])
    version = subprocess.run(["rpmspec", "-q", "--srpm", "--qf", "%{VERSION}-%{RELEASE}", str(rendered_spec)],
                             capture_output=True, text=True, check=True).stdout
    assert f"mkosi-initrd-initrd-minimal,1,Test Vendor,mkosi-initrd-initrd-minimal,{version}," in "\n".join(meta["sbat"])


def test_spec_with_uki_signing_and_no_pesign_macro_stops_before_building(rendered_spec, tmp_path):
    r = rpmbuild(rendered_spec, tmp_path, "-bc", "mkosi_initrd_repo /nonexistent")
    assert r.returncode != 0
    assert "--with uki_signing signs with %pesign, a macro of the pesign package" in r.stderr
