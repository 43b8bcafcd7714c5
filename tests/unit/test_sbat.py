"""The UKI's SBAT entry and the Authenticode facts read from a PE file (building/secureboot.py), on
synthetic input; tests/integration/test_secureboot.py checks them against sbsign, sbverify and OVMF."""

from __future__ import annotations

import struct

import pytest

from mkosi_initrd_builder.building.secureboot import (SBAT_HEADER, SbatIdentity, authenticode_sha256, optional_signing,
                                                      parse_sbat, signature_blobs, signatures)
from mkosi_initrd_builder.building.variants import load_variant
from mkosi_initrd_builder.util.errors import SettingError, VariantError, VerifyError


def test_sbat_names_the_variants_subpackage_with_its_generation_and_the_package_version():
    sbat = SbatIdentity("6.14.4-200.fc41^2", "Fedora Project", "mailto:security@example.org").sbat("virt", 3)
    lines = sbat.splitlines()
    assert lines[0] == SBAT_HEADER
    assert lines[-1] == ("mkosi-initrd-initrd-virt,3,Fedora Project,mkosi-initrd-initrd-virt,6.14.4-200.fc41^2,"
                         "mailto:security@example.org")
    assert parse_sbat(sbat.encode() + b"\0") == lines


@pytest.mark.parametrize("field, value", [("package_version", "1,2"), ("vendor", "A\nB"), ("url", ""),
                                          ("vendor", " padded")])
def test_sbat_fields_refuse_what_a_csv_line_cannot_hold(field, value):
    fields = {"package_version": "1-1", "vendor": "v", "url": "u", field: value}
    with pytest.raises(SettingError) as e:
        SbatIdentity(**fields)
    assert e.value.setting in ("package_version", "sbat_vendor", "sbat_url")


@pytest.mark.parametrize("value, message", [(0, "between 1"), (True, "positive integer"), ("2", "positive integer")])
def test_variant_sbat_generation_is_a_positive_integer(tmp_path, value, message):
    path = tmp_path / "v.toml"
    path.write_text(f'summary = "s"\ndescription = "d"\nsbat-generation = {value!r}\n'.replace("True", "true")
                    .replace("'", '"'))
    with pytest.raises(VariantError, match=f"sbat-generation: .*{message}"):
        load_variant(path)


def test_variant_sbat_generation_defaults_to_1(tmp_path):
    path = tmp_path / "v.toml"
    path.write_text('summary = "s"\ndescription = "d"\n')
    assert load_variant(path).sbat_generation == 1


def test_signing_needs_both_key_and_certificate(tmp_path):
    assert optional_signing(None, None) is None
    with pytest.raises(SettingError) as e:
        optional_signing(tmp_path / "db.key", None)
    assert e.value.setting == "secureboot_certificate"


def minimal_pe(payload: bytes) -> bytearray:
    """The headers Authenticode is defined on (PE32+, 16 data directories, no sections) and a payload."""
    e_lfanew = 0x40
    dos = b"MZ" + bytes(0x3A) + struct.pack("<I", e_lfanew)
    coff = struct.pack("<HHIIIHH", 0x8664, 0, 0, 0, 0, 240, 0x22)
    optional = bytearray(240)
    struct.pack_into("<H", optional, 0, 0x20B)
    struct.pack_into("<I", optional, 108, 16)
    return bytearray(dos + b"PE\0\0" + coff + bytes(optional) + payload)


def sign(pe: bytearray, blob: bytes) -> bytearray:
    """What a signing tool does to the file: the certificate table appended (8-byte aligned), its data
    directory entry set, the CheckSum rewritten."""
    signed = bytearray(pe) + bytes(-len(pe) % 8)
    table = len(signed)
    entry = struct.pack("<IHH", 8 + len(blob), 0x0200, 2) + blob
    entry += bytes(-len(entry) % 8)
    signed += entry
    optional = 0x40 + 24
    struct.pack_into("<II", signed, optional + 112 + 4 * 8, table, len(entry))
    struct.pack_into("<I", signed, optional + 64, 0x12345678)
    return signed


def test_authenticode_digest_ignores_the_signature_and_sees_every_other_byte(tmp_path):
    unsigned, signed, changed = tmp_path / "u.efi", tmp_path / "s.efi", tmp_path / "c.efi"
    pe = minimal_pe(b"payload!" * 100)  # a multiple of 8 long, as ukify's output is
    assert len(pe) % 8 == 0
    unsigned.write_bytes(pe)
    signed.write_bytes(sign(pe, b"not really PKCS#7"))
    assert authenticode_sha256(signed) == authenticode_sha256(unsigned)
    assert [(s.kind_name, s.size) for s in signatures(signed)] == [("PKCS#7 SignedData", len(b"not really PKCS#7"))]
    assert signature_blobs(signed) == [b"not really PKCS#7"]
    assert signatures(unsigned) == []
    pe[-3] ^= 1
    changed.write_bytes(sign(pe, b"not really PKCS#7"))
    assert authenticode_sha256(changed) != authenticode_sha256(unsigned)


def test_authenticode_refuses_what_is_no_pe(tmp_path):
    path = tmp_path / "x.efi"
    path.write_bytes(b"MZ" + bytes(100))
    with pytest.raises(VerifyError, match="not a PE image"):
        authenticode_sha256(path)
