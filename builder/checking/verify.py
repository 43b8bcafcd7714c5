"""Check a built variant against its manifest, and optionally boot it in QEMU."""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.checking.cpio import CpioFormatError, read_cpio, resolve
from mkosi_initrd_builder.util.errors import BuilderError, VerifyError
from mkosi_initrd_builder.util.fsutil import sha256_file
from mkosi_initrd_builder.building.manifest import INITRD_NAME, MANIFEST_NAME, UKI_NAME, load_manifest
from mkosi_initrd_builder.rpmmeta.repo import extract_rpm, open_repository
from mkosi_initrd_builder.checking.qemu import BOOT_MARKER, DEFAULT_TIMEOUT, boot
from mkosi_initrd_builder.building.uki import REQUIRED_SECTIONS, uki_sections


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


def default_marker(variant: str, kernel_version: str) -> str:
    return rf"{BOOT_MARKER} variant={re.escape(variant)} kernel={re.escape(kernel_version)}\b"


def verify_variant(
    directory: Path,
    *,
    boot_test: bool = False,
    kernel: Optional[Path] = None,
    repo: Optional[Path] = None,
    expect: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Check]:
    checks: list[Check] = []
    manifest = load_manifest(directory)
    variant, kver = manifest["variant"], manifest["kernel"]["version"]

    expected = set(manifest["outputs"]) | {MANIFEST_NAME}
    present = {p.name for p in directory.iterdir()}
    checks.append(Check("no stray files", present == expected,
                        f"unexpected: {sorted(present - expected)}, missing: {sorted(expected - present)}"
                        if present != expected else ""))
    for name, meta in sorted(manifest["outputs"].items()):
        path = directory / name
        if not path.exists():
            checks.append(Check(f"{name} matches manifest", False, "missing"))
            continue
        digest, size = sha256_file(path), path.stat().st_size
        ok = digest == meta["sha256"] and size == meta["size"]
        checks.append(Check(f"{name} matches manifest", ok,
                            "" if ok else f"sha256 {digest} size {size} vs {meta['sha256']} {meta['size']}"))

    try:
        entries = {e.name: e for e in read_cpio(directory / INITRD_NAME)}
        checks.append(Check("initrd is a valid cpio archive", True, f"{len(entries)} entries"))
    except (CpioFormatError, BuilderError, OSError) as e:
        checks.append(Check("initrd is a valid cpio archive", False, str(e)))
        entries = {}
    if entries:
        init = resolve(entries, "init")
        checks.append(Check("initrd has /init", init is not None and init.is_file,
                            "" if init is not None else "no /init (or it dangles)"))
        osrel = resolve(entries, "usr/lib/os-release")
        checks.append(Check("initrd has /usr/lib/os-release", osrel is not None and osrel.is_file))
        checks.append(Check("initrd has /etc/initrd-release", "etc/initrd-release" in entries))
        in_image = sorted(n.rsplit("/", 1)[-1] for n, e in entries.items()
                          if e.is_file and "/modules/" in n and ".ko" in n)
        wanted = sorted(m.rsplit("/", 1)[-1] for m in manifest.get("kernel-modules", []))
        checks.append(Check("kernel modules match manifest", in_image == wanted,
                            "" if in_image == wanted else f"image {len(in_image)} vs manifest {len(wanted)}"))
        if wanted:
            dep = entries.get(f"usr/lib/modules/{kver}/modules.dep")
            checks.append(Check("modules.dep regenerated in the image", dep is not None and dep.size > 0))

    uki = directory / UKI_NAME
    if UKI_NAME in manifest["outputs"]:
        sections = uki_sections(uki) if uki.exists() else {}
        missing = [s for s in REQUIRED_SECTIONS if s not in sections]
        if manifest.get("kernel-command-line"):
            missing += [] if ".cmdline" in sections else [".cmdline"]
        checks.append(Check("UKI has its sections", not missing, f"missing {missing}" if missing else
                            ", ".join(sorted(sections))))
        if sections:
            same = sections.get(".initrd", b"") == (directory / INITRD_NAME).read_bytes()
            checks.append(Check("UKI .initrd is the initrd", same))
            uname = sections.get(".uname", b"").rstrip(b"\0").decode(errors="replace")
            checks.append(Check("UKI .uname is the kernel version", uname == kver, uname))
            if manifest.get("kernel-command-line"):
                cmdline = sections.get(".cmdline", b"").rstrip(b"\0").decode(errors="replace").strip()
                checks.append(Check("UKI .cmdline matches the variant", cmdline == manifest["kernel-command-line"],
                                    cmdline))

    if boot_test:
        checks += boot_checks(directory, manifest, kernel=kernel, repo=repo,
                              expect=expect or default_marker(variant, kver), timeout=timeout)
    return checks


def kernel_from_repo(repo_path: Path, manifest: dict, dest: Path) -> Path:
    """The vmlinuz of the exact kernel package(s) the manifest names, extracted from `repo_path`."""
    kver = manifest["kernel"]["version"]
    repo = open_repository(repo_path)
    wanted = set(manifest["kernel"]["packages"])
    packages = [p for p in repo.packages if str(p.nevra) in wanted]
    if not packages:
        raise VerifyError(f"repository {repo_path} lacks the variant's kernel package(s) {', '.join(sorted(wanted))}")
    for p in packages:
        extract_rpm(repo.path / p.href, dest, [f"./usr/lib/modules/{kver}/vmlinuz*"])
    images = sorted((dest / "usr/lib/modules" / kver).glob("vmlinuz*"))
    if not images:
        raise VerifyError(f"no vmlinuz for {kver} in {', '.join(sorted(wanted))}")
    return images[0]


def boot_checks(directory: Path, manifest: dict, *, kernel: Optional[Path], repo: Optional[Path], expect: str,
                timeout: float) -> list[Check]:
    checks = []
    uki = directory / UKI_NAME
    with tempfile.TemporaryDirectory(prefix="mkosi-initrd-verify-") as tmp:
        if kernel is None and repo is not None:
            kernel = kernel_from_repo(repo, manifest, Path(tmp) / "kernel")
        elif kernel is None and uki.exists():
            kernel = Path(tmp) / "vmlinuz"
            kernel.write_bytes(uki_sections(uki)[".linux"])
        if kernel is None:
            checks.append(Check("boots (kernel + initrd)", False,
                                "no kernel to boot with: pass --kernel or --repo (the variant has no UKI to take it from)"))
        else:
            words = ["console=ttyS0", "panic=-1", *manifest.get("kernel-command-line", "").split()]
            append = " ".join(dict.fromkeys(words))
            r = boot(kernel=kernel, initrd=directory / INITRD_NAME, append=append, expect=expect, timeout=timeout)
            checks.append(Check("boots (kernel + initrd)", r.ok,
                                f"{r.seconds:.1f}s: {r.marker_line}" if r.ok else f"console tail:\n{r.console_tail}"))
        if uki.exists():
            r = boot(kernel=uki, uefi=True, expect=expect, timeout=timeout)
            checks.append(Check("boots (UKI under OVMF)", r.ok,
                                f"{r.seconds:.1f}s: {r.marker_line}" if r.ok else f"console tail:\n{r.console_tail}"))
    return checks
