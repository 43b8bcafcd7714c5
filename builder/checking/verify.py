"""Check a built variant against its manifest, and optionally boot it in QEMU."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.building.firmware import available_names, satisfied
from mkosi_initrd_builder.building.formats import formats_in
from mkosi_initrd_builder.building.formats.base import BuiltVariant, Check, file_matches
from mkosi_initrd_builder.building.manifest import MANIFEST_NAME, load_manifest
from mkosi_initrd_builder.checking.qemu import DEFAULT_TIMEOUT, BootProbe, SecureBootFirmware
from mkosi_initrd_builder.rpmmeta.repo import extract_rpm, open_repository
from mkosi_initrd_builder.util.errors import VerifyError

__all__ = ["Check", "verify_variant", "boot_checks"]


def verify_variant(
    directory: Path,
    *,
    boot_test: bool = False,
    kernel: Optional[Path] = None,
    repo: Optional[Path] = None,
    probe: BootProbe = BootProbe(),
    timeout: float = DEFAULT_TIMEOUT,
    secure_boot: Optional[SecureBootFirmware] = None,
) -> list[Check]:
    built = BuiltVariant(directory, load_manifest(directory))
    outputs = built.manifest["outputs"]
    checks: list[Check] = []

    expected = set(outputs) | {MANIFEST_NAME} | {Path(a["file"]).parts[0] for a in built.manifest.get("uki-addons", [])}
    present = {p.name for p in directory.iterdir()}
    checks.append(Check("no stray files", present == expected,
                        f"unexpected: {sorted(present - expected)}, missing: {sorted(expected - present)}"
                        if present != expected else ""))
    unknown = sorted(set(outputs) - {f.file_name for f in formats_in(outputs)})
    if unknown:
        checks.append(Check("outputs are known formats", False, f"unknown: {unknown}"))
    by_file = {f.file_name: f for f in formats_in(outputs)}
    for name, meta in sorted(outputs.items()):
        path = directory / name
        if not path.exists():
            checks.append(Check(f"{name} matches manifest", False, "missing"))
            continue
        # A format may accept a changed file: a UKI signed after the build (koji's %pesign).
        checks.append(by_file[name].matches_manifest(path, meta) if name in by_file else file_matches(path, meta))
    for fmt in formats_in(outputs):
        checks += fmt.verify(built)
    if repo is not None:
        checks.append(firmware_availability(built.manifest, repo))
    if boot_test:
        checks += boot_checks(built, kernel=kernel, repo=repo, probe=probe, timeout=timeout, secure_boot=secure_boot)
    return checks


def firmware_availability(manifest: dict, repo_path: Path) -> Check:
    """No firmware listed as not found is in fact shipped by the firmware packages the image was made
    from (read from the repository, by their exact NEVRAs)."""
    name = "no wanted firmware the firmware packages ship is missing"
    wanted = set(manifest["firmware-packages"])
    packages = [p for p in open_repository(repo_path).packages if str(p.nevra) in wanted]
    lacking = sorted(wanted - {str(p.nevra) for p in packages})
    if lacking:
        return Check(name, False, f"repository {repo_path} lacks {', '.join(lacking)}")
    names = available_names(packages)
    shipped = [m for m in manifest["firmware-missing"] if satisfied(m, names)]
    return Check(name, not shipped, f"shipped but not in the image: {', '.join(shipped)}" if shipped else
                 f"{len(manifest['firmware-missing'])} not found, none shipped by {len(packages)} package(s)")


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


def boot_checks(built: BuiltVariant, *, kernel: Optional[Path], repo: Optional[Path], probe: BootProbe,
                timeout: float, secure_boot: Optional[SecureBootFirmware] = None) -> list[Check]:
    """Boot every output that boots; the kernel for those that need one comes from --kernel, else the
    repository's kernel package, else an output that carries one (the UKI's .linux)."""
    formats = formats_in(built.manifest["outputs"])
    checks = []
    with tempfile.TemporaryDirectory(prefix="mkosi-initrd-verify-") as tmp:
        if kernel is None and repo is not None:
            kernel = kernel_from_repo(repo, dict(built.manifest), Path(tmp) / "kernel")
        for fmt in formats:
            if kernel is not None:
                break
            kernel = fmt.boot_kernel(built, Path(tmp))
        for fmt in formats:
            check = fmt.boot(built, kernel, probe, timeout, secure_boot=secure_boot)
            if check is not None:
                checks.append(check)
    return checks
