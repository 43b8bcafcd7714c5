"""The initrd: mkosi's newc cpio, compressed here with the variant's zstd settings, checked against its
size budget and read back."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from mkosi_initrd_builder.building.firmware import FIRMWARE_DIR, manifest_firmware
from mkosi_initrd_builder.building.formats.base import BuildInputs, BuiltVariant, Check, Format, Inspection, VariantImage
from mkosi_initrd_builder.checking.cpio import CpioEntry, CpioFormatError, read_cpio, resolve
from mkosi_initrd_builder.checking.qemu import BootProbe, SecureBootFirmware, boot
from mkosi_initrd_builder.rpmmeta.repo import Repository
from mkosi_initrd_builder.util.errors import BuilderError, SizeBudgetError
from mkosi_initrd_builder.util.compress import LIBZSTD_VERSION
from mkosi_initrd_builder.util.elf import is_elf64, needed
from mkosi_initrd_builder.util.fsutil import RemoveGlobs, atomic_write, hash_bytes


def leftovers(globs: Sequence[str], entries: Iterable[CpioEntry]) -> list[tuple[str, str]]:
    """(glob, entry name) for every file or link still in the image that a remove-files glob names.
    Directories are left out: mkosi keeps the directories a glob ending in a file name passes through."""
    removals = RemoveGlobs.compile(globs)
    return [(g, e.name) for e in entries if not e.is_dir for g in removals.removing(e.name)]


def broken_links(globs: Sequence[str], entries: Iterable[CpioEntry]) -> list[tuple[str, str, str]]:
    """(glob, file, soname) for every ELF file in the image that links a library no longer in it
    whose name a remove-files glob matches: a removal that took away what something still needs."""
    entries = list(entries)
    present = {e.name.rsplit("/", 1)[-1] for e in entries if not e.is_dir}
    last = [(g, g.rsplit("/", 1)[-1]) for g in globs]
    broken = []
    for e in entries:
        if not e.is_file or not is_elf64(e.data):
            continue
        try:
            sonames = needed(e.data)
        except ValueError:
            continue  # not ours to judge; the loader would say more
        for soname in sonames:
            if soname not in present:
                broken += [(g, e.name, soname) for g, name in last if fnmatch.fnmatchcase(soname, name)]
    return broken


def is_module(entry: CpioEntry) -> bool:
    return entry.is_file and "/modules/" in entry.name and ".ko" in entry.name


class InitrdFormat(Format):
    file_name = "initrd.cpio.zst"
    mkosi_output = "initrd.cpio"  # what mkosi writes (CompressOutput=no), in its output directory

    def build(self, image: VariantImage, inputs: BuildInputs, prepared: Any) -> None:
        variant = image.variant
        # In process, with python3-zstandard: mkosi's CompressLevel= is a level and nothing more, and
        # a variant's zstd-parameters reach past the levels (generic's: 4% smaller for 3 s of build).
        compressed = variant.compression.compress(image.cpio)
        size = len(compressed)
        if variant.size_budget and size > variant.size_budget:
            raise SizeBudgetError(size_report(variant.name, variant.path, variant.size_budget, size,
                                              image.entries.values(), inputs.repo))
        globs = [g for r in variant.removals for g in r.paths]
        broken = broken_links(globs, image.entries.values())
        if broken:
            glob, name, soname = broken[0]
            raise BuilderError(f"variant {variant.name!r} ({variant.path}): removing {glob} took {soname} out of the "
                               f"image, but /{name} links it ({len(broken)} such link(s) in all)")
        left = leftovers(globs, image.entries.values())
        if left:
            glob, name = left[0]
            raise BuilderError(f"variant {variant.name!r} ({variant.path}): remove-files glob {glob} did not take "
                               f"/{name} out of the image ({len(left)} path(s) left in all); mkosi's RemoveFiles= "
                               "and the builder read the glob differently")
        # final/ is renamed into place whole once every format is done; no fsync of its own.
        atomic_write(image.final / self.file_name, compressed, durable=False)

    def input_facts(self, prepared: Any) -> Mapping[str, Any]:
        # The variant's level and parameters are hashed with the variant; the same settings give other
        # bytes under another zstd.
        return {"libzstd": LIBZSTD_VERSION}

    def verify(self, built: BuiltVariant) -> Sequence[Check]:
        checks = []
        try:
            entries = {e.name: e for e in read_cpio(built.output(self))}
            checks.append(Check("initrd is a valid cpio archive", True, f"{len(entries)} entries"))
        except (CpioFormatError, BuilderError, OSError) as e:
            return [Check("initrd is a valid cpio archive", False, str(e))]
        init = resolve(entries, "init")
        checks.append(Check("initrd has /init", init is not None and init.is_file,
                            "" if init is not None else "no /init (or it dangles)"))
        osrel = resolve(entries, "usr/lib/os-release")
        checks.append(Check("initrd has /usr/lib/os-release", osrel is not None and osrel.is_file))
        checks.append(Check("initrd has /etc/initrd-release", "etc/initrd-release" in entries))
        in_image = sorted(n.rsplit("/", 1)[-1] for n, e in entries.items() if is_module(e))
        wanted = sorted(m.rsplit("/", 1)[-1] for m in built.manifest.get("kernel-modules", []))
        checks.append(Check("kernel modules match manifest", in_image == wanted,
                            "" if in_image == wanted else f"image {len(in_image)} vs manifest {len(wanted)}"))
        if wanted:
            dep = entries.get(f"usr/lib/modules/{built.kernel_version}/modules.dep")
            checks.append(Check("modules.dep regenerated in the image", dep is not None and dep.size > 0))
        removed = [g for r in built.manifest.get("removed-on-purpose", []) for g in r.get("paths", [])]
        if removed:
            left = leftovers(removed, entries.values())
            checks.append(Check("nothing removed on purpose is in the image", not left,
                                f"{len(removed)} glob(s)" if not left else f"/{left[0][1]} matches {left[0][0]}"))
        return checks + firmware_checks(built.manifest, entries)

    def inspect(self, built: BuiltVariant, top: int) -> Optional[Inspection]:
        entries = read_cpio(built.output(self))
        files = [e for e in entries if e.is_file]
        modules = sorted(e.name.rsplit("/", 1)[-1] for e in files if is_module(e))
        largest = sorted(((e.name, e.size) for e in files), key=lambda t: (-t[1], t[0]))[:top]
        uncompressed = sum(e.size for e in files)
        firmware = sorted((e.name[len(FIRMWARE_DIR) + 1:], e) for e in entries
                          if e.name.startswith(f"{FIRMWARE_DIR}/") and not e.is_dir)
        firmware_bytes = sum(e.size for _, e in firmware if e.is_file)
        not_found = list(built.manifest.get("firmware-missing", []))
        lines = [f"initrd: {len(entries)} entries, {uncompressed:,} B of files uncompressed",
                 f"kernel modules ({len(modules)}):", *(f"  {m}" for m in modules),
                 f"firmware ({len(firmware)} files, {firmware_bytes:,} B as stored; from "
                 f"{', '.join(built.manifest.get('firmware-packages', [])) or 'no firmware packages'}):",
                 *(f"  {e.size:>12,} B  {n}" if e.is_file
                   else f"  {'link':>14}  {n} -> {e.data.decode(errors='replace')}" for n, e in firmware),
                 f"firmware wanted but not found ({len(not_found)}):", *(f"  {n}" for n in not_found),
                 "largest files:", *(f"  {s:>12,} B  /{n}" for n, s in largest)]
        return Inspection({"entries": len(entries), "uncompressed-size": uncompressed, "kernel-modules": modules,
                           "firmware": {n: e.size if e.is_file else {"link": e.data.decode(errors="replace")}
                                        for n, e in firmware},
                           "firmware-size": firmware_bytes, "firmware-missing": not_found,
                           "largest-files": [[n, s] for n, s in largest]}, tuple(lines))

    def boot(self, built: BuiltVariant, kernel: Optional[Path], probe: BootProbe, timeout: float,
             secure_boot: Optional[SecureBootFirmware] = None) -> Optional[Check]:
        name = "boots (kernel + initrd)"
        if kernel is None:
            return Check(name, False, "no kernel to boot with: pass --kernel or --repo (the variant has no UKI "
                                      "to take it from)")
        words = ["console=ttyS0", "panic=-1", *built.manifest.get("kernel-command-line", "").split()]
        r = boot(kernel=kernel, initrd=built.output(self), append=" ".join(dict.fromkeys(words)), probe=probe,
                 timeout=timeout)
        return Check(name, r.ok, f"{r.seconds:.1f}s: {r.marker_line}" if r.ok else f"console tail:\n{r.console_tail}")


def firmware_checks(manifest: Mapping[str, Any], entries: Mapping[str, CpioEntry]) -> list[Check]:
    """The image's /usr/lib/firmware is exactly what the manifest lists, byte for byte, and every
    firmware name the kept modules declare is either provided by a listed file or listed as not found."""
    listed = manifest_firmware(manifest)
    prefix = f"{FIRMWARE_DIR}/"
    in_image = {n[len(prefix):]: e for n, e in entries.items() if n.startswith(prefix) and not e.is_dir}
    extra, absent = sorted(set(in_image) - set(listed)), sorted(set(listed) - set(in_image))
    checks = [Check("firmware in the image is what the manifest lists", not extra and not absent,
                    f"not listed: {extra}, not in the image: {absent}" if extra or absent
                    else f"{len(listed)} file(s)")]
    wrong = []
    for path, meta in sorted(listed.items()):
        e = in_image.get(path)
        if e is None:
            continue
        if "link" in meta:
            target = resolve(dict(entries), prefix + path)
            ok = (e.is_symlink and e.data.decode(errors="replace") == meta["link"]
                  and target is not None and target.is_file)
        else:
            ok = e.is_file and e.size == meta.get("size") and hash_bytes(e.data) == meta.get("sha256")
        if not ok:
            wrong.append(path)
    checks.append(Check("firmware files match manifest (sha256, size, link targets)", not wrong, ", ".join(wrong)))
    wanted = set(manifest.get("firmware-wanted", []))
    missing = set(manifest.get("firmware-missing", []))
    provided = {w for meta in listed.values() for w in meta.get("wanted", [])}
    ok = provided | missing == wanted and not provided & missing
    checks.append(Check("every wanted firmware is in the image or listed as not found", ok,
                        f"{len(provided)} provided, {len(missing)} not found" if ok else
                        f"neither: {sorted(wanted - provided - missing)}, both: {sorted(provided & missing)}, "
                        f"not wanted: {sorted((provided | missing) - wanted)}"))
    return checks


def size_report(variant: str, path: Path, budget: int, size: int, entries: Iterable[CpioEntry],
                repo: Repository) -> str:
    """Why an image is over budget: the largest packages and kernel modules, by uncompressed bytes."""
    owner: dict[str, str] = {}
    for p in repo.packages:
        for f in p.files:
            owner.setdefault(f.lstrip("/"), p.nevra.name)
    by_package: dict[str, int] = {}
    modules: list[tuple[int, str]] = []
    for e in entries:
        if not e.is_file:
            continue
        if is_module(e):
            modules.append((e.size, e.name.rsplit("/", 1)[-1]))
            by_package["(kernel modules)"] = by_package.get("(kernel modules)", 0) + e.size
            continue
        key = owner.get(e.name, "(not from a package)")
        by_package[key] = by_package.get(key, 0) + e.size
    top_pkgs = sorted(by_package.items(), key=lambda kv: -kv[1])[:8]
    top_mods = sorted(modules, reverse=True)[:8]
    lines = [f"variant {variant!r}: {InitrdFormat.file_name} is {size:,} B, over its size-budget of {budget:,} B ({path})",
             "  largest packages (uncompressed): " + ", ".join(f"{n} {s:,} B" for n, s in top_pkgs)]
    if top_mods:
        lines.append("  largest modules: " + ", ".join(f"{n} {s:,} B" for s, n in top_mods))
    return "\n".join(lines)


INITRD = InitrdFormat()
