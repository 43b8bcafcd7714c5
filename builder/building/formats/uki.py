"""The Unified Kernel Image: ukify joins the kernel, the initrd and the systemd-boot stub; pefile reads it back."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from mkosi_initrd_builder.building.formats.base import (BuildInputs, BuiltVariant, Check, Format, Inspection,
                                                        VariantImage, file_matches)
from mkosi_initrd_builder.building.formats.initrd import INITRD
from mkosi_initrd_builder.building.formats.microcode import MICROCODE
from mkosi_initrd_builder.building.secureboot import (PRODUCT_PACKAGE, SBAT_HEADER, SbatIdentity, SigningKey,
                                                      authenticode_sha256, parse_sbat, signatures)
from mkosi_initrd_builder.checking.cpio import resolve
from mkosi_initrd_builder.checking.qemu import BootProbe, SecureBootFirmware, boot
from mkosi_initrd_builder.rpmmeta.repo import Repository, extract_rpm
from mkosi_initrd_builder.util.errors import BuilderError, PackageMissingError, VerifyError
from mkosi_initrd_builder.util.fsutil import atomic_write, sha256_file
from mkosi_initrd_builder.util.log import step
from mkosi_initrd_builder.util.run import run
from mkosi_initrd_builder.util.tools import find_tool, tool_version

if TYPE_CHECKING:  # variants.py imports the format registry
    from mkosi_initrd_builder.building.variants import VariantSpec

# Sections every UKI we build carries; .cmdline only when the variant sets a command line.
REQUIRED_SECTIONS = (".linux", ".initrd", ".osrel", ".uname", ".sbat")
SIGNTOOL = "sbsign"  # what ukify signs a local build with (koji signs with pesign after the build)
STUB_PATH = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
# The stub ukify builds a profile's PE on (sections only, no code run): systemd-boot-unsigned ships it.
ADDON_STUB_PATH = "/usr/lib/systemd/boot/efi/addonx64.efi.stub"
# Where the stub looks for the UKI's own addons: a directory named after the UKI file, beside it.
ADDONS_DIR = "uki.efi.extra.d"
# The base profile's ID in a UKI with extra profiles (profile 0, what the stub boots without "@N").
BASE_PROFILE_ID = "default"
STUB_PACKAGE = "systemd-boot-unsigned"  # when the repository does not say who ships the stub


@dataclasses.dataclass(frozen=True)
class Stub:
    nevra: str
    path: Path
    addon: Optional[Path]   # None when the stub's package has no addon stub (UKI profiles need it)


@dataclasses.dataclass(frozen=True)
class UkiSettings:
    """What prepare() hands every variant's build step: the stub, the SBAT identity, the signing key."""

    stub: Stub
    sbat: SbatIdentity
    signing: Optional[SigningKey]
    certificate_sha256: Optional[str]   # the signing certificate's fingerprint
    signtool: Optional[str]             # "sbsign 0.9.4" when signing


class UkiFormat(Format):
    file_name = "uki.efi"
    tools = ("ukify",)
    tool_packages = ("systemd-ukify",)

    def spec_packages(self, repo: Repository) -> tuple[str, ...]:
        owners = repo.package_owning(STUB_PATH)
        return (owners[-1].nevra.name if owners else STUB_PACKAGE,)

    def prepare(self, inputs: BuildInputs) -> UkiSettings:
        owners = inputs.repo.package_owning(STUB_PATH)
        if not owners:
            raise PackageMissingError([f"{STUB_PATH} ({STUB_PACKAGE})"], inputs.repo.path)
        pkg = owners[-1]
        dest = inputs.work / "stub"
        wanted = [STUB_PATH, *([ADDON_STUB_PATH] if ADDON_STUB_PATH in pkg.files else [])]
        extract_rpm(inputs.repo.path / pkg.href, dest, [f".{p}" for p in wanted])
        addon = dest / ADDON_STUB_PATH.lstrip("/") if ADDON_STUB_PATH in wanted else None
        signing, fingerprint, signtool = inputs.signing, None, None
        if signing is not None:
            find_tool(SIGNTOOL)
            fingerprint = signing.certificate_sha256()
            signtool = f"{SIGNTOOL} {tool_version(SIGNTOOL)}"
        return UkiSettings(Stub(str(pkg.nevra), dest / STUB_PATH.lstrip("/"), addon), inputs.sbat, signing,
                           fingerprint, signtool)

    def build(self, image: VariantImage, inputs: BuildInputs, prepared: UkiSettings) -> None:
        variant = image.variant
        with step(f"[{variant.name}] Assembling the UKI with ukify"):
            osrel = resolve(image.entries, "usr/lib/os-release") or resolve(image.entries, "etc/os-release")
            if osrel is None or not osrel.is_file:
                raise BuilderError(f"[{variant.name}] the image has no /usr/lib/os-release for the UKI's .osrel")
            os_release = image.work / "os-release"
            os_release.write_bytes(osrel.data)
            tmp = image.final / f".{self.file_name}.tmp"
            # Built before the UKI when the variant asks for it (FORMATS' order): the stub hands .ucode
            # to the kernel in front of .initrd.
            microcode = image.final / MICROCODE.file_name
            profiles = []
            if variant.uki_profiles:
                if prepared.stub.addon is None:
                    raise PackageMissingError([f"{ADDON_STUB_PATH} ({prepared.stub.nevra}), for the UKI profiles"],
                                              inputs.repo.path, variant=variant.name)
                for n, profile in enumerate(variant.uki_profiles, start=1):
                    profiles.append(image.work / f"uki-profile-{n}.efi")
                    build_profile(stub=prepared.stub.addon, profile=profile_text(profile.id, profile.title),
                                  cmdline=profile.kernel_command_line, output=profiles[-1])
            sbat = image.work / "sbat.csv"
            sbat.write_text(prepared.sbat.sbat(variant.name, variant.sbat_generation))
            build_uki(kernel=inputs.kernel_image, initrd=image.final / INITRD.file_name, stub=prepared.stub.path,
                      os_release=os_release, uname=inputs.kernel_version, cmdline=variant.kernel_command_line,
                      microcode=microcode if microcode.exists() else None, sbat=sbat, signing=prepared.signing,
                      output=tmp, profile=profile_text(BASE_PROFILE_ID, variant.summary) if profiles else None,
                      join_profiles=profiles)
            tmp.rename(image.final / self.file_name)
        if variant.uki_addons:
            with step(f"[{variant.name}] Building {len(variant.uki_addons)} UKI addon(s) with ukify"):
                if prepared.stub.addon is None:
                    raise PackageMissingError([f"{ADDON_STUB_PATH} ({prepared.stub.nevra}), for the UKI addons"],
                                              inputs.repo.path, variant=variant.name)
                tmp_dir = image.final / f".{ADDONS_DIR}.tmp"
                tmp_dir.mkdir()
                for addon in variant.uki_addons:
                    build_addon(stub=prepared.stub.addon, cmdline=addon.kernel_command_line,
                                output=tmp_dir / addon.file_name, signing=prepared.signing)
                tmp_dir.rename(image.final / ADDONS_DIR)

    def input_facts(self, prepared: UkiSettings) -> Mapping[str, Any]:
        facts: dict[str, Any] = {"sbat": dataclasses.asdict(prepared.sbat)}
        if prepared.certificate_sha256:
            facts["secureboot-certificate-sha256"] = prepared.certificate_sha256
        return facts

    def manifest_entry(self, prepared: UkiSettings, output: Path) -> Mapping[str, Any]:
        # Read back from the file: the .sbat as ukify merged it (ours, then the stub's entries), and the
        # digest a signature covers, which lets verify accept the UKI once koji has signed it.
        entry: dict[str, Any] = {"stub": prepared.stub.nevra,
                                 "sbat": parse_sbat(uki_sections(output).get(".sbat", b"")),
                                 "authenticode-sha256": authenticode_sha256(output)}
        if prepared.signing is not None:
            entry["signed"] = {"certificate-sha256": prepared.certificate_sha256, "tool": prepared.signtool}
        return entry

    def matches_manifest(self, path: Path, meta: Mapping[str, Any]) -> Check:
        check = file_matches(path, meta)
        if check.ok or "authenticode-sha256" not in meta:
            return check
        sigs = signatures(path)
        digest = authenticode_sha256(path)
        if sigs and digest == meta["authenticode-sha256"]:
            return Check(check.name, True, f"signed after the build ({len(sigs)} signature(s)); the content "
                                           f"under the signature is the built one (Authenticode sha256 {digest})")
        why = (f"; Authenticode sha256 {digest} vs {meta['authenticode-sha256']}: the signed content changed"
               if sigs else "")
        return Check(check.name, False, check.detail + why)

    def verify(self, built: BuiltVariant) -> Sequence[Check]:
        path = built.output(self)
        # Read once: the base's sections and the profiles both come from this listing.
        listing = pe_sections(path) if path.exists() else []
        sections = base_sections(listing)
        cmdline_wanted = built.manifest.get("kernel-command-line", "")
        missing = [s for s in REQUIRED_SECTIONS if s not in sections]
        if cmdline_wanted and ".cmdline" not in sections:
            missing.append(".cmdline")
        ucode_wanted = MICROCODE.file_name in built.manifest["outputs"]
        if ucode_wanted and ".ucode" not in sections:
            missing.append(".ucode")
        checks = [Check("UKI has its sections", not missing,
                        f"missing {missing}" if missing else ", ".join(sorted(sections)))]
        if ".sbat" in sections:
            checks += _sbat_checks(parse_sbat(sections[".sbat"]), built)
        meta = built.manifest["outputs"].get(self.file_name, {})
        if "signed" in meta and path.exists():
            sigs = signatures(path)
            checks.append(Check("UKI carries the Authenticode signature made at build time", bool(sigs),
                                f"{len(sigs)} signature(s)" if sigs else "no certificate table"))
        if sections:
            initrd = built.output(INITRD)
            checks.append(Check("UKI .initrd is the initrd",
                                initrd.exists() and sections.get(".initrd", b"") == initrd.read_bytes()))
            if ucode_wanted:
                ucode = built.output(MICROCODE)
                checks.append(Check("UKI .ucode is the early microcode cpio",
                                    ucode.exists() and sections.get(".ucode", b"") == ucode.read_bytes()))
            else:
                checks.append(Check("UKI has no .ucode (the variant ships no microcode)", ".ucode" not in sections))
            uname = _text(sections.get(".uname", b""))
            checks.append(Check("UKI .uname is the kernel version", uname == built.kernel_version, uname))
            if cmdline_wanted:
                cmdline = _text(sections.get(".cmdline", b"")).strip()
                checks.append(Check("UKI .cmdline matches the variant", cmdline == cmdline_wanted, cmdline))
            wanted = [(BASE_PROFILE_ID, built.manifest.get("kernel-command-line", ""))] + [
                (p["id"], p["kernel-command-line"]) for p in built.manifest.get("uki-profiles", [])]
            found = [(p.fields.get("ID", ""), p.cmdline) for p in profiles_of(listing)]
            if len(wanted) > 1 or len(found) > 1:
                checks.append(Check("UKI profiles are the variant's, in order (ID, command line)", found == wanted,
                                    f"{found}" if found != wanted else ", ".join(i for i, _ in found)))
        checks += verify_addons(path.parent, built.manifest.get("uki-addons", []))
        return checks

    def inspect(self, built: BuiltVariant, top: int) -> Optional[Inspection]:
        path = built.output(self)
        listing = pe_sections(path)
        contents = base_sections(listing)
        sections = [(n, len(d)) for n, d in listing]
        sbat = parse_sbat(contents.get(".sbat", b""))
        sigs = signatures(path)
        digest = authenticode_sha256(path)
        signed = (f"signed: {len(sigs)} Authenticode signature(s) ("
                  + ", ".join(f"{s.kind_name}, {s.size:,} B" for s in sigs) + ")") if sigs else "signed: no"
        profiles = profiles_of(listing)
        lines = ["UKI sections:", *(f"  {n:10} {s:>12,} B" for n, s in sections),
                 "UKI .sbat:", *(f"  {line}" for line in sbat),
                 f"UKI Secure Boot: {signed}; Authenticode sha256 {digest}"]
        if len(profiles) > 1:
            lines.append("UKI profiles (systemd-stub: @N as the first command-line word):")
            lines += [f"  @{i} {p.fields.get('ID', '')}: {p.fields.get('TITLE', '')}: {p.cmdline}"
                      for i, p in enumerate(profiles)]
        addons = [(a.name, a.stat().st_size, addon_cmdline(a))
                  for a in sorted((path.parent / ADDONS_DIR).glob("*.addon.efi"))]
        if addons:
            lines.append(f"UKI addons ({ADDONS_DIR}/, appended to the command line by systemd-stub):")
            lines += [f"  {n:30} {size:>10,} B  {cmdline}" for n, size, cmdline in addons]
        return Inspection({"uki-sections": [[n, s] for n, s in sections], "uki-sbat": sbat,
                           "uki-signatures": [{"type": s.kind_name, "size": s.size} for s in sigs],
                           "uki-authenticode-sha256": digest,
                           "uki-profiles": [{"index": i, **p.fields, "cmdline": p.cmdline}
                                            for i, p in enumerate(profiles)],
                           "uki-addons": [{"file": n, "size": size, "cmdline": c} for n, size, c in addons]},
                          tuple(lines))

    def boot_kernel(self, built: BuiltVariant, dest: Path) -> Optional[Path]:
        path = built.output(self)
        if not path.exists():
            return None
        atomic_write(dest / "vmlinuz", uki_sections(path)[".linux"])
        return dest / "vmlinuz"

    def boot(self, built: BuiltVariant, kernel: Optional[Path], probe: BootProbe, timeout: float,
             secure_boot: Optional[SecureBootFirmware] = None) -> Optional[Check]:
        # Booted whole, under OVMF: the stub hands its own .cmdline and .initrd to its own .linux. With
        # Secure Boot, the firmware loads it from a disk and checks its signature against the db.
        r = boot(kernel=built.output(self), uefi=True, probe=probe, timeout=timeout, secure_boot=secure_boot)
        name = "boots (UKI under OVMF, Secure Boot enforced)" if secure_boot else "boots (UKI under OVMF)"
        return Check(name, r.ok, f"{r.seconds:.1f}s: {r.marker_line}" if r.ok else
                     (f"{r.marker_line}\n" if r.marker_line else "") + f"console tail:\n{r.console_tail}")


def _text(section: bytes) -> str:
    return section.rstrip(b"\0").decode(errors="replace")


def profile_text(profile_id: str, title: str) -> str:
    """A .profile section: os-release-style ID= and TITLE= lines, what systemd-boot's menu shows."""
    return f"ID={profile_id}\nTITLE={title}"


def build_profile(*, stub: Path, profile: str, cmdline: str, output: Path) -> None:
    """One profile's PE for --join-profile: a .profile section first, then the profile's .cmdline.
    ukify wants it built on the addon stub, which carries no .sbat of its own."""
    _check_cmdline(cmdline)
    run([find_tool("ukify"), "build", f"--stub={stub}", f"--profile={profile}", f"--cmdline={cmdline}",
         f"--output={output}"], capture=True)


def build_addon(*, stub: Path, cmdline: str, output: Path, signing: Optional[SigningKey] = None) -> None:
    """A command-line addon: a PE on the addon stub holding .cmdline (and ukify's uki-addon .sbat),
    signed like the UKI when the build signs: under Secure Boot the stub loads only signed addons."""
    _check_cmdline(cmdline)
    run([find_tool("ukify"), "build", f"--stub={stub}", f"--cmdline={cmdline}", f"--output={output}",
         *(_signing_args(signing) if signing is not None else ())], capture=True)


def addon_manifest(final: Path, variant: "VariantSpec") -> list[dict[str, Any]]:
    """The manifest's uki-addons: each addon's name, command line, file, sha256 and size."""
    entries = []
    for addon in variant.uki_addons:
        f = final / ADDONS_DIR / addon.file_name
        entries.append({**addon.to_dict(), "file": f"{ADDONS_DIR}/{addon.file_name}", "sha256": sha256_file(f),
                        "size": f.stat().st_size, "authenticode-sha256": authenticode_sha256(f)})
    return entries


def verify_addons(directory: Path, entries: Sequence[Mapping[str, Any]]) -> list[Check]:
    """Every addon the manifest lists is there, unchanged, carrying its command line; nothing else is."""
    addons_dir = directory / ADDONS_DIR
    present = sorted(p.name for p in addons_dir.iterdir()) if addons_dir.is_dir() else []
    listed = sorted(Path(e["file"]).name for e in entries)
    checks = []
    if entries or present:
        checks.append(Check(f"{ADDONS_DIR}/ holds exactly the manifest's addons", present == listed,
                            f"present {present}, manifest {listed}" if present != listed else ", ".join(listed)))
    for e in entries:
        f = directory / e["file"]
        ok = f.is_file() and sha256_file(f) == e["sha256"] and f.stat().st_size == e["size"]
        # Signed after the build (the spec's %pesign, like the UKI): the content under the signature
        # must be the built one.
        signed_later = (not ok and f.is_file() and bool(signatures(f))
                        and authenticode_sha256(f) == e.get("authenticode-sha256"))
        cmdline = addon_cmdline(f) if f.is_file() else ""
        checks.append(Check(f"UKI addon {e['name']} is the manifest's (sha256, command line)",
                            (ok or signed_later) and cmdline == e["kernel-command-line"],
                            f"{f}: sha256/size differ" if not (ok or signed_later)
                            else cmdline + (" (signed after the build)" if signed_later else "")))
    return checks


def _signing_args(signing: SigningKey) -> list[str]:
    return [f"--signtool={SIGNTOOL}", f"--secureboot-private-key={signing.key}",
            f"--secureboot-certificate={signing.certificate}"]


def addon_cmdline(addon: Path) -> str:
    """The command line an addon carries (its .cmdline)."""
    return _text(uki_sections(addon).get(".cmdline", b"")).strip()


def _check_cmdline(cmdline: str) -> None:
    if cmdline.startswith("@"):
        # Variant loading refuses this; here it would make ukify embed the file it names.
        raise BuilderError(f"kernel command line {cmdline!r} starts with '@', which ukify reads as a file")


def _sbat_checks(lines: list[str], built: BuiltVariant) -> list[Check]:
    recorded = built.manifest["outputs"].get(UKI.file_name, {}).get("sbat")
    product = f"{PRODUCT_PACKAGE}-{built.manifest['variant']},"
    mine = [line for line in lines if line.startswith(product)]
    return [
        Check("UKI .sbat starts with the SBAT header", bool(lines) and lines[0] == SBAT_HEADER,
              lines[0] if lines else "empty"),
        Check("UKI .sbat names the variant's package", len(mine) == 1,
              mine[0] if len(mine) == 1 else f"{len(mine)} lines start with {product!r}"),
        Check("UKI .sbat names the stub", any(line.startswith("systemd-stub,") for line in lines)),
        Check("UKI .sbat is the one the manifest records", lines == recorded,
              "" if lines == recorded else f"manifest: {recorded}"),
    ]


def build_uki(*, kernel: Path, initrd: Path, stub: Path, os_release: Path, uname: str, cmdline: str,
              output: Path, sbat: Path, microcode: Optional[Path] = None, signing: Optional[SigningKey] = None,
              profile: Optional[str] = None, join_profiles: Sequence[Path] = ()) -> None:
    argv = [find_tool("ukify"), "build", f"--linux={kernel}", f"--initrd={initrd}", f"--stub={stub}",
            f"--os-release=@{os_release}", f"--uname={uname}", f"--sbat=@{sbat}", f"--output={output}"]
    if microcode is not None:
        argv.append(f"--microcode={microcode}")
    if profile is not None:
        argv.append(f"--profile={profile}")
    argv += [f"--join-profile={p}" for p in join_profiles]
    if signing is not None:
        # The kernel stays as its package ships it (Fedora signs it in kernel.spec): the stub vouches
        # for the .linux of a UKI the firmware accepted, and re-signing would change its bytes.
        argv += [*_signing_args(signing), "--no-sign-kernel"]
    if cmdline:
        _check_cmdline(cmdline)
        argv.append(f"--cmdline={cmdline}")
    run(argv, capture=True)


def uki_sections(path: Path) -> dict[str, bytes]:
    """Section name -> content of the UKI's base; see base_sections()."""
    return base_sections(pe_sections(path))


def base_sections(listing: Sequence[tuple[str, bytes]]) -> dict[str, bytes]:
    """Section name -> content of a UKI's base, from pe_sections(): where a name repeats (a
    multi-profile UKI's .cmdline, .profile), the first one, which is what the stub uses for profile 0
    unless the profile overrides it."""
    sections: dict[str, bytes] = {}
    for name, data in listing:
        sections.setdefault(name, data)
    return sections


@dataclasses.dataclass(frozen=True)
class ProfileView:
    """One profile of a UKI as systemd-stub assembles it: its .profile fields and its command line."""

    fields: Mapping[str, str]
    cmdline: str


def uki_profiles(path: Path) -> list[ProfileView]:
    """The profiles of the UKI at `path`; see profiles_of()."""
    return profiles_of(pe_sections(path))


def profiles_of(listing: Sequence[tuple[str, bytes]]) -> list[ProfileView]:
    """The profiles of a UKI from pe_sections(), profile 0 first. Sections before the first .profile
    are shared; each .profile starts a profile whose sections override the shared ones
    (systemd-stub(7)). A UKI with no .profile has one profile, the shared sections."""
    shared: dict[str, bytes] = {}
    profiles: list[tuple[dict[str, str], dict[str, bytes]]] = []
    for name, data in listing:
        if name == ".profile":
            fields = dict(line.split("=", 1) for line in _text(data).splitlines() if "=" in line)
            profiles.append((fields, {}))
        else:
            (profiles[-1][1] if profiles else shared).setdefault(name, data)
    if not profiles:
        profiles = [({}, {})]
    return [ProfileView(fields, _text(own.get(".cmdline", shared.get(".cmdline", b""))).strip())
            for fields, own in profiles]


def pe_sections(path: Path) -> list[tuple[str, bytes]]:
    """(name, content) of every section in file order, read with pefile (the library ukify uses)."""
    try:
        import pefile
    except ImportError as e:  # pragma: no cover - make setup installs python3-pefile
        raise VerifyError("python3-pefile is not importable; run 'make setup'") from e
    try:
        pe = pefile.PE(str(path), fast_load=True)
    except pefile.PEFormatError as e:
        raise VerifyError(f"{path}: not a PE image: {e}") from None
    sections = []
    for s in pe.sections:
        name = s.Name.rstrip(b"\0").decode(errors="replace")
        sections.append((name, s.get_data()[: s.Misc_VirtualSize] if s.Misc_VirtualSize else s.get_data()))
    pe.close()
    return sections


UKI = UkiFormat()
