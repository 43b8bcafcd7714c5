"""Early CPU microcode: every vendor's updates from the repository's microcode packages, as the
uncompressed cpio the kernel's early loader reads in front of the initrd and ukify puts in `.ucode`.

The kernel looks for kernel/x86/microcode/<CPUID vendor string>.bin in an uncompressed newc cpio at
the very start of the initrd (Documentation/arch/x86/microcode.rst), so the archive is shipped
uncompressed and kept apart from mkosi's zstd initrd: kernel-install puts it in front of the initrd
(52-mkosi-initrd-prebuilt.install), the UKI's stub in front of `.initrd`."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from mkosi_initrd_builder.building.firmware import FIRMWARE_ROOTS
from mkosi_initrd_builder.building.formats.base import BuildInputs, BuiltVariant, Check, Format, Inspection, VariantImage
from mkosi_initrd_builder.building.formats.initrd import INITRD
from mkosi_initrd_builder.checking.cpio import CpioEntry, CpioFormatError, iter_cpio
from mkosi_initrd_builder.checking.qemu import BootProbe, SecureBootFirmware, boot
from mkosi_initrd_builder.rpmmeta.repo import RepoPackage, Repository, extract_rpm
from mkosi_initrd_builder.util.compress import decompress_file
from mkosi_initrd_builder.util.errors import BuilderError, PackageMissingError
from mkosi_initrd_builder.util.fsutil import atomic_write, hash_bytes
from mkosi_initrd_builder.util.log import step
from mkosi_initrd_builder.util.run import run
from mkosi_initrd_builder.util.tools import find_tool

EARLY_DIR = "kernel/x86/microcode"
COMPRESSED_SUFFIX = r"(?:\.xz|\.zst|\.gz)?"  # Fedora's firmware packages compress with xz


@dataclasses.dataclass(frozen=True)
class Vendor:
    """One CPU vendor: where its packages put the updates, and the file the kernel reads for it."""

    cpuid: str            # the CPUID vendor string: the kernel reads kernel/x86/microcode/<cpuid>.bin
    package: str          # the Fedora package shipping it, when the repository does not say
    directory: str        # below /usr/lib/firmware (or /lib/firmware)
    name_re: re.Pattern[str]  # the update files in it (not READMEs or signatures)

    @property
    def early_name(self) -> str:
        return f"{EARLY_DIR}/{self.cpuid}.bin"


# The kernel's Intel loader takes a concatenation of per-signature files (family-model-stepping);
# the AMD loader a concatenation of per-family containers. Declared once, in the order they go in.
VENDORS = (
    Vendor("AuthenticAMD", "amd-ucode-firmware", "amd-ucode",
           re.compile(r"microcode_amd(?:_fam[0-9a-f]+h)?\.bin" + COMPRESSED_SUFFIX)),
    Vendor("GenuineIntel", "microcode_ctl", "intel-ucode",
           re.compile(r"[0-9a-f]{2}-[0-9a-f]{2}-[0-9a-f]{2}" + COMPRESSED_SUFFIX)),
)


def vendor_files(vendor: Vendor, paths: Iterable[str]) -> list[str]:
    """The paths (as a package lists them) holding `vendor`'s updates, in a stable order: by file name."""
    found = []
    for p in paths:
        parent, _, name = p.rpartition("/")
        if parent in (f"{root}/{vendor.directory}" for root in FIRMWARE_ROOTS) and vendor.name_re.fullmatch(name):
            found.append(p)
    return sorted(found, key=lambda p: (p.rpartition("/")[2], p))


def vendor_packages(repo: Repository, vendor: Vendor) -> list[RepoPackage]:
    """The packages of `repo` shipping `vendor`'s updates, the newest of each name only."""
    newest: dict[str, RepoPackage] = {}
    for p in repo.packages:  # sorted by NEVRA: a later one of the same name is newer
        if vendor_files(vendor, p.files):
            newest[p.nevra.name] = p
    return list(newest.values())


@dataclasses.dataclass(frozen=True)
class VendorBlob:
    vendor: Vendor
    packages: tuple[str, ...]   # NEVRAs
    sources: tuple[str, ...]    # the package files concatenated, in order
    data: bytes


@dataclasses.dataclass(frozen=True)
class EarlyArchive:
    """What prepare() made once for every variant: the early cpio and what went into it."""

    path: Path
    blobs: tuple[VendorBlob, ...]


def write_early_cpio(blobs: Mapping[str, bytes], dest: Path, work: Path, mtime: int) -> None:
    """The newc archive of `blobs` (archive path -> content) and their parent directories, written with
    GNU cpio from a tree under `work`; owner, inode numbers and times fixed, so it is reproducible."""
    tree = work / "early-cpio"
    shutil.rmtree(tree, ignore_errors=True)
    names: set[str] = set()
    for name, data in blobs.items():
        parts = name.split("/")
        names.update("/".join(parts[:i]) for i in range(1, len(parts)))
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
        names.add(name)
    for name in names:
        os.chmod(tree / name, 0o755 if (tree / name).is_dir() else 0o644)
        os.utime(tree / name, (mtime, mtime))
    # Parents before children, as the kernel's unpacker (and cpio -i) want them.
    listing = "".join(f"{n}\n" for n in sorted(names))
    archive = run([find_tool("cpio"), "--create", "--format=newc", "--reproducible", "--owner=0:0", "--quiet"],
                  input=listing.encode(), cwd=tree, capture=True).stdout
    atomic_write(dest, archive)


def read_early_cpio(data: bytes, path: Path) -> dict[str, CpioEntry]:
    """The entries of an early microcode cpio; BuilderError naming `path` when the kernel could not
    read it (compressed, malformed, or without the kernel's directory)."""
    if not data.startswith((b"070701", b"070702")):
        raise BuilderError(f"{path}: not an uncompressed newc cpio (the kernel's early loader reads no other)")
    try:
        entries = {e.name: e for e in iter_cpio(data)}
    except CpioFormatError as e:
        raise BuilderError(f"{path}: {e}") from None
    return entries


class MicrocodeFormat(Format):
    file_name = "microcode.cpio"
    tools = ("cpio",)

    def spec_packages(self, repo: Repository) -> tuple[str, ...]:
        names = []
        for v in VENDORS:
            names += [p.nevra.name for p in vendor_packages(repo, v)] or [v.package]
        return tuple(dict.fromkeys(names))

    def prepare(self, inputs: BuildInputs) -> EarlyArchive:
        repo = inputs.repo
        missing = [f"{v.package} ({v.cpuid} microcode in /usr/lib/firmware/{v.directory}/)"
                   for v in VENDORS if not vendor_packages(repo, v)]
        if missing:
            raise PackageMissingError(missing, repo.path)
        tree = inputs.work / "microcode"
        blobs = []
        with step("Collecting CPU microcode for the early cpio"):
            for v in VENDORS:
                packages = vendor_packages(repo, v)
                sources: list[str] = []
                for p in packages:
                    files = vendor_files(v, p.files)
                    extract_rpm(repo.path / p.href, tree, [f".{f}" for f in files])
                    sources += files
                sources = sorted(sources, key=lambda s: (s.rpartition("/")[2], s))
                # Decompressed: the kernel's loader reads raw updates.
                data = b"".join(decompress_file(tree / s.lstrip("/")) for s in sources)
                blobs.append(VendorBlob(v, tuple(str(p.nevra) for p in packages), tuple(sources), data))
            # The packages' newest build time: follows from the inputs like SOURCE_DATE_EPOCH does.
            mtime = max(p.buildtime for v in VENDORS for p in vendor_packages(repo, v))
            path = inputs.work / self.file_name
            write_early_cpio({b.vendor.early_name: b.data for b in blobs}, path, inputs.work, mtime)
        return EarlyArchive(path, tuple(blobs))

    def build(self, image: VariantImage, inputs: BuildInputs, prepared: EarlyArchive) -> None:
        tmp = image.final / f".{self.file_name}.tmp"
        shutil.copyfile(prepared.path, tmp)
        tmp.rename(image.final / self.file_name)

    def manifest_entry(self, prepared: EarlyArchive, output: Path) -> Mapping[str, Any]:
        return {
            "packages": sorted({n for b in prepared.blobs for n in b.packages}),
            "vendors": {b.vendor.cpuid: {"file": b.vendor.early_name, "sha256": hash_bytes(b.data),
                                         "size": len(b.data), "packages": list(b.packages),
                                         "sources": len(b.sources)}
                        for b in prepared.blobs},
        }

    def verify(self, built: BuiltVariant) -> Sequence[Check]:
        path = built.output(self)
        try:
            entries = read_early_cpio(path.read_bytes(), path)
        except (BuilderError, OSError) as e:
            return [Check("microcode is an uncompressed early cpio", False, str(e))]
        checks = [Check("microcode is an uncompressed early cpio", True, f"{len(entries)} entries")]
        vendors = built.manifest["outputs"][self.file_name].get("vendors", {})
        files = sorted(n for n, e in entries.items() if e.is_file)
        wanted = sorted(v["file"] for v in vendors.values())
        checks.append(Check("microcode files are kernel/x86/microcode/<vendor>.bin, as the manifest lists",
                            files == wanted and all(f.startswith(f"{EARLY_DIR}/") for f in files),
                            ", ".join(files)))
        for cpuid, v in sorted(vendors.items()):
            e = entries.get(v["file"])
            ok = e is not None and hash_bytes(e.data) == v["sha256"] and e.size == v["size"] > 0
            checks.append(Check(f"microcode {cpuid}.bin matches manifest", ok,
                                f"{e.size:,} B" if e is not None else "missing"))
        return checks

    def inspect(self, built: BuiltVariant, top: int) -> Optional[Inspection]:
        path = built.output(self)
        entries = read_early_cpio(path.read_bytes(), path)
        meta = built.manifest["outputs"][self.file_name]
        files = [[n, e.size] for n, e in sorted(entries.items()) if e.is_file]
        lines = [f"early microcode cpio: {path.stat().st_size:,} B, uncompressed",
                 *(f"  {s:>12,} B  /{n}" for n, s in files),
                 "  from: " + ", ".join(meta.get("packages", []))]
        return Inspection({"microcode-files": files, "microcode-packages": list(meta.get("packages", []))},
                          tuple(lines))

    def boot(self, built: BuiltVariant, kernel: Optional[Path], probe: BootProbe, timeout: float,
             secure_boot: Optional[SecureBootFirmware] = None) -> Optional[Check]:
        name = "boots (kernel + early microcode cpio + initrd)"
        if kernel is None:
            return Check(name, False, "no kernel to boot with: pass --kernel or --repo")
        result, lines = boot_with_microcode(built, kernel, probe, timeout)
        if not result.ok:
            return Check(name, False, f"console tail:\n{result.console_tail}")
        return Check(name, True, f"{result.seconds:.1f}s: {result.marker_line}; kernel said: "
                                 + ("; ".join(lines) if lines else "nothing about microcode"))


MICROCODE_LINE = re.compile(r"\bmicrocode:.*")
# TCG's own CPU ("max") is an AMD family 0xf, which the kernel's AMD loader does not support, and
# QEMU sets the hypervisor CPUID bit, under which the kernel disables its loader: an Intel model
# without that bit makes the kernel's Intel loader run (TCG ignores the update itself, so the
# revision the kernel reports stays QEMU's).
BOOT_CPU = "Skylake-Client-v1,-hypervisor"


def boot_with_microcode(built: BuiltVariant, kernel: Path, probe: BootProbe, timeout: float,
                        console_log: Optional[Path] = None) -> tuple[Any, list[str]]:
    """Boot the early cpio followed by the initrd, the file kernel-install stages; return the result
    and the kernel's `microcode:` console lines."""
    import tempfile

    words = ["console=ttyS0", "panic=-1", *built.manifest.get("kernel-command-line", "").split()]
    with tempfile.TemporaryDirectory(prefix="mkosi-initrd-ucode-") as tmp:
        joined = Path(tmp) / "initrd"
        with open(joined, "wb") as out:
            for part in (built.output(MICROCODE), built.output(INITRD)):
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
        log = console_log or Path(tmp) / "console.log"
        result = boot(kernel=kernel, initrd=joined, append=" ".join(dict.fromkeys(words)), probe=probe,
                      timeout=timeout, console_log=log, cpu=BOOT_CPU)
        lines = [m.group(0).strip() for line in log.read_text(errors="replace").splitlines()
                 if (m := MICROCODE_LINE.search(line))]
    return result, lines


MICROCODE = MicrocodeFormat()
