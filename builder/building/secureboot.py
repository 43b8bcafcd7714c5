"""Secure Boot facts of a UKI: the SBAT entry that names the product, the key a local build signs with,
and, read back from a PE file, its Authenticode digest and the signatures it carries."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.util.errors import SettingError, VerifyError
from mkosi_initrd_builder.util.fsutil import Digests, hash_bytes

# The first line of every .sbat (shim's SBAT.md), and the generic UKI entry ukify writes when it is
# given no --sbat: ours replaces ukify's default, so it is kept (revoking "uki" revokes every UKI).
SBAT_HEADER = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md"
SBAT_UKI_LINE = "uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/"
PRODUCT_PACKAGE = "mkosi-initrd-initrd"  # the source package; each variant ships as <this>-<variant>
DEFAULT_SBAT_VENDOR = "mkosi-initrd"
DEFAULT_SBAT_URL = "https://github.com/systemd/mkosi"


def check_sbat_field(setting: str, value: str) -> str:
    """One field of an SBAT CSV line: shim splits on ',' and lines, and reads no quoting."""
    if not value or value != value.strip():
        raise SettingError(setting, f"{value!r} must be non-empty without leading or trailing blanks (an SBAT field)")
    bad = sorted({c for c in value if c == "," or not c.isprintable()})
    if bad:
        raise SettingError(setting, f"{value!r} contains {', '.join(map(repr, bad))}, which an SBAT field "
                                    "(a CSV field, one line, no quoting) cannot hold")
    return value


@dataclasses.dataclass(frozen=True)
class SbatIdentity:
    """Who ships the UKIs and in which version: the vendor fields of the product's SBAT entry."""

    package_version: str            # the RPM's version-release (the spec passes it); else the kernel version
    vendor: str = DEFAULT_SBAT_VENDOR
    url: str = DEFAULT_SBAT_URL

    def __post_init__(self) -> None:
        check_sbat_field("package_version", self.package_version)
        check_sbat_field("sbat_vendor", self.vendor)
        check_sbat_field("sbat_url", self.url)

    def product_line(self, variant: str, generation: int) -> str:
        """The variant's own entry: component and package are the subpackage shipping the UKI, so a
        flaw in one variant's image is revoked by raising that variant's `sbat-generation`."""
        name = f"{PRODUCT_PACKAGE}-{variant}"
        return f"{name},{generation},{self.vendor},{name},{self.package_version},{self.url}"

    def sbat(self, variant: str, generation: int) -> str:
        """What ukify's --sbat gets; ukify puts the stub's (and a signed kernel's) entries after the header."""
        return "\n".join([SBAT_HEADER, SBAT_UKI_LINE, self.product_line(variant, generation)]) + "\n"


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """A Secure Boot key and certificate (PEM) for a local build; koji signs after the build instead
    (the spec's %pesign hook), and its key never reaches the buildroot."""

    key: Path
    certificate: Path

    def certificate_sha256(self) -> str:
        """The certificate's fingerprint (sha256 of its DER form), for the manifest and the inputs hash."""
        import ssl  # here: the builder runs without it unless it signs

        try:
            pem = self.certificate.read_text(encoding="ascii")
            der = ssl.PEM_cert_to_DER_cert(pem[pem.index("-----BEGIN CERTIFICATE-----"):])
        except (OSError, UnicodeDecodeError) as e:
            raise SettingError("secureboot_certificate", f"{self.certificate}: cannot read: {e}") from None
        except ValueError:
            raise SettingError("secureboot_certificate", f"{self.certificate}: not a PEM certificate") from None
        return hash_bytes(der)

    def check(self) -> None:
        if not self.key.is_file():
            raise SettingError("secureboot_key", f"{self.key}: no such file")
        self.certificate_sha256()


@dataclasses.dataclass(frozen=True)
class Signature:
    """One WIN_CERTIFICATE of a PE file's certificate table."""

    revision: int
    kind: int       # 2: PKCS#7 SignedData (Authenticode)
    size: int

    @property
    def kind_name(self) -> str:
        return {1: "X.509", 2: "PKCS#7 SignedData", 0xEF1: "EFI GUID"}.get(self.kind, f"type {self.kind:#x}")


@dataclasses.dataclass(frozen=True)
class _PeLayout:
    checksum: int           # file offset of the optional header's CheckSum
    security_entry: int     # file offset of the certificate table's data directory entry
    table: int              # the certificate table's file offset (0: none)
    table_size: int


def _layout(data: bytes, path: Path) -> _PeLayout:
    # Read by hand, not with pefile: these are the few offsets Authenticode is defined on (the PE/COFF
    # specification's "Authenticode PE image hash"), and pefile has no notion of them.
    try:
        pe = struct.unpack_from("<I", data, 0x3C)[0]
        if data[:2] != b"MZ" or data[pe:pe + 4] != b"PE\0\0":
            raise VerifyError(f"{path}: not a PE image")
        optional = pe + 24
        magic = struct.unpack_from("<H", data, optional)[0]
        directories = optional + {0x10B: 96, 0x20B: 112}[magic]
        count = struct.unpack_from("<I", data, directories - 4)[0]
        entry = directories + 4 * 8
        table, size = struct.unpack_from("<II", data, entry) if count > 4 else (0, 0)
    except (struct.error, KeyError):
        raise VerifyError(f"{path}: not a PE image (its headers are cut short or unknown)") from None
    if table and (table + size > len(data) or table < entry):
        raise VerifyError(f"{path}: its certificate table lies outside the file")
    return _PeLayout(optional + 64, entry, table, size)


def authenticode_sha256(path: Path) -> str:
    """The Authenticode image digest: the file without its CheckSum, the certificate table's directory
    entry and the table itself, which is what a signature covers. Signing after the build (koji's
    pesign, sbsign) leaves it unchanged; changing a byte of any section changes it."""
    data = path.read_bytes()
    pe = _layout(data, path)
    end = pe.table if pe.table else len(data)
    digests = Digests(("sha256",))
    digests.update(data[:pe.checksum])
    digests.update(data[pe.checksum + 4:pe.security_entry])
    digests.update(data[pe.security_entry + 8:end])
    if pe.table:
        digests.update(data[pe.table + pe.table_size:])
    return digests.hexdigests()["sha256"]


def signatures(path: Path) -> list[Signature]:
    """The entries of the certificate table (none when the image is unsigned)."""
    data = path.read_bytes()
    pe = _layout(data, path)
    found, at, end = [], pe.table, pe.table + pe.table_size
    while pe.table and at + 8 <= end:
        length, revision, kind = struct.unpack_from("<IHH", data, at)
        if length < 8 or at + length > end:
            raise VerifyError(f"{path}: certificate table entry at {at} has a bad length {length}")
        found.append(Signature(revision, kind, length - 8))
        at += (length + 7) & ~7  # entries are 8-byte aligned
    return found


def signature_blobs(path: Path) -> list[bytes]:
    """The signatures' contents (DER PKCS#7 for Authenticode), for tools that read them."""
    data = path.read_bytes()
    pe = _layout(data, path)
    blobs, at = [], pe.table
    for sig in signatures(path):
        blobs.append(data[at + 8:at + 8 + sig.size])
        at += (sig.size + 8 + 7) & ~7
    return blobs


def parse_sbat(section: bytes) -> list[str]:
    """The CSV lines of a .sbat section (ukify ends it with a newline and a NUL)."""
    return [line for line in section.rstrip(b"\0").decode(errors="replace").splitlines() if line.strip()]


def optional_signing(key: Optional[Path], certificate: Optional[Path]) -> Optional[SigningKey]:
    """A SigningKey when both are given, None when neither; one alone is a mistake."""
    if key is None and certificate is None:
        return None
    if key is None or certificate is None:
        given, missing = ("secureboot_key", "secureboot_certificate") if key else ("secureboot_certificate",
                                                                                 "secureboot_key")
        raise SettingError(missing, f"is required when {given.replace('_', ' ')} is given")
    signing = SigningKey(key, certificate)
    signing.check()
    return signing
