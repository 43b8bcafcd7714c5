"""Fixture content for the tests: small, byte-reproducible RPMs built with rpmbuild from the specs in
tests/fixtures/, and a createrepo_c repository of them, cached under a hash of every input.

Command line (used by the Makefile): ``python -m tests.support.fixtures build --cache DIR`` prints the
repository path on the first line and the fixture kernel's ``uname -r`` on the second.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Optional, TypeVar

from mkosi_initrd_builder.util.fsutil import sha256_file

log = logging.getLogger("tests.fixtures")

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
SPECS_DIR = FIXTURES_DIR / "SPECS"
SOURCES_DIR = FIXTURES_DIR / "SOURCES"
DEFAULT_TOOLS_DIR = REPO_ROOT / ".tools"

# 2023-11-14T22:13:20Z. Every timestamp in the RPMs and the repodata derives from it.
SOURCE_DATE_EPOCH = 1700000000
BUILDHOST = "fixtures.invalid"
# Rebuild the fixture kernel package under another VERSION-RELEASE (same kernel, same uname), to
# prove the suite derives every expectation from the fixture content: `make test-other-kernel`.
KERNEL_EVR_ENV = "MKOSI_INITRD_FIXTURE_KERNEL_EVR"
# Measured for the whole set (2 cores): zstd -3 1.1 s, gzip -9 (rpm's default here) 2.9 s,
# zstd -19 5.5 s, all within 5 % in size (kernel-core's vmlinuz is already compressed).
# rpm, dnf and rpmfile[zstd] all read zstd payloads.
BINARY_PAYLOAD = "w3.zstdio"
# Written last into a finished cache entry; its presence is what "complete" means.
COMPLETE_MARKER = "fixture-repo.json"
# Bump to invalidate every cached repository when the layout of an entry changes.
CACHE_FORMAT = "fixture-repo/1"
OUTPUT_TAIL_LINES = 40
STUB_FILES = ("linuxx64.efi.stub", "addonx64.efi.stub", "systemd-bootx64.efi")


class FixtureBuildError(RuntimeError):
    """Building the fixture RPMs or their repository failed; the message says which step and why."""


@dataclasses.dataclass(frozen=True)
class FixtureRepo:
    path: Path  # directory with *.rpm and repodata/ (createrepo_c)
    kernel_version: str  # uname -r of the kernel in kernel-core, read from its modules directory
    rpms: dict[str, Path]  # package name -> rpm file inside path
    source_date_epoch: int
    # kernel-core's VERSION and RELEASE as read back from the built RPM's header: what the tests
    # expect of the spec's Version/Release, never a literal copied from one day's mirror.
    kernel_package_version: str
    kernel_package_release: str

    @property
    def kernel_evr(self) -> str:
        return f"{self.kernel_package_version}-{self.kernel_package_release}"


@dataclasses.dataclass(frozen=True)
class DebianVersion:
    """A Debian package version split the way the fixture specs use it (no epoch)."""

    version: str
    release: str


@dataclasses.dataclass(frozen=True)
class FixtureInputs:
    """Everything outside tests/fixtures/ that the fixture RPMs are made from."""

    kernel_tree: Path
    kernel_uname: str
    kernel_package: DebianVersion
    kernel_debs: str
    stub_dir: Path
    stub_package: DebianVersion
    stub_debs: str
    busybox: Path
    busybox_package: DebianVersion
    busybox_sha256: str
    microcode_dir: Path          # Debian's intel-microcode and amd64-microcode, extracted
    intel_ucode_package: DebianVersion
    amd_ucode_package: DebianVersion
    microcode_debs: str
    firmware_dir: Path           # Debian's firmware-bnx2, extracted: the fixture linux-firmware
    linux_firmware_package: DebianVersion
    firmware_debs: str

    def spec_defines(self) -> dict[str, str]:
        """The rpmbuild --define values the specs in tests/fixtures/SPECS expect."""
        return {
            "kernel_tree": str(self.kernel_tree),
            "kernel_uname": self.kernel_uname,
            "kernel_version": self.kernel_package.version,
            "kernel_release": self.kernel_package.release,
            "stub_dir": str(self.stub_dir),
            "stub_version": self.stub_package.version,
            "stub_release": self.stub_package.release,
            "busybox_binary": str(self.busybox),
            "busybox_version": self.busybox_package.version,
            "busybox_release": self.busybox_package.release,
            "microcode_dir": str(self.microcode_dir),
            "intel_ucode_version": self.intel_ucode_package.version,
            "intel_ucode_release": self.intel_ucode_package.release,
            "amd_ucode_version": self.amd_ucode_package.version,
            "amd_ucode_release": self.amd_ucode_package.release,
            "firmware_dir": str(self.firmware_dir),
            "linux_firmware_version": self.linux_firmware_package.version,
            "linux_firmware_release": self.linux_firmware_package.release,
        }


_RPM_VERSION_CHARS = re.compile(r"[A-Za-z0-9._+~^]+")


def split_debian_version(debian_version: str) -> DebianVersion:
    """'1:2.3.4-5' -> 2.3.4 / 5: epoch dropped, split at the last dash (native versions get
    release 0)."""
    without_epoch = re.sub(r"^[0-9]+(:|%3[aA])", "", debian_version)
    version, dash, release = without_epoch.rpartition("-")
    if not dash:
        version, release = without_epoch, "0"
    for part in (version, release):
        if not _RPM_VERSION_CHARS.fullmatch(part):
            raise FixtureBuildError(
                f"Debian version {debian_version!r} does not map to an RPM version/release ({part!r})"
            )
    return DebianVersion(version, release)


def _deb_from_list(debs_file: Path, package_prefix: str) -> tuple[str, DebianVersion]:
    """Find package_prefix*.deb in a tools .debs list; returns the file name and its version."""
    if not debs_file.is_file():
        raise FixtureBuildError(f"{debs_file} is missing: run tools/setup.sh to fetch the fixture inputs")
    for line in debs_file.read_text().split():
        if line.startswith(package_prefix) and line.endswith(".deb"):
            fields = line[: -len(".deb")].split("_")
            if len(fields) == 3:
                return line, split_debian_version(fields[1])
    raise FixtureBuildError(f"{debs_file} names no {package_prefix}*.deb")


def _kernel_evr_override(value: str) -> DebianVersion:
    version, dash, release = value.rpartition("-")
    if not dash or not all(_RPM_VERSION_CHARS.fullmatch(part) for part in (version, release)) or ":" in value:
        raise FixtureBuildError(f"{KERNEL_EVR_ENV}={value!r}: expected VERSION-RELEASE, e.g. 9.8.7-6.alt")
    log.info("fixture kernel package rebuilt as %s-%s (%s)", version, release, KERNEL_EVR_ENV)
    return DebianVersion(version, release)


def _kernel_uname(kernel_tree: Path) -> str:
    candidates = sorted(
        {
            d.name
            for parent in (kernel_tree / "lib" / "modules", kernel_tree / "usr" / "lib" / "modules")
            if parent.is_dir()
            for d in parent.iterdir()
            if (d / "kernel").is_dir()
        }
    )
    if len(candidates) != 1:
        raise FixtureBuildError(
            f"expected exactly one kernel with modules under {kernel_tree}, found {candidates or 'none'}"
        )
    return candidates[0]


def _busybox_package(busybox: Path) -> DebianVersion:
    """Version from the banner, e.g. 'BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call ...'."""
    banner = subprocess.run([str(busybox)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    if m := re.search(r"\(Debian ([^)\s]+)\)", banner):
        return split_debian_version(m.group(1))
    if m := re.search(r"BusyBox v([A-Za-z0-9._+~^]+)", banner):
        return DebianVersion(m.group(1), "1")
    raise FixtureBuildError(f"cannot tell the version of {busybox} from its banner: {banner[:200]!r}")


T = TypeVar("T")


class CacheKey:
    """sha256 over labelled, length-prefixed parts: the name of a content-addressed cache entry
    (fixture repositories here, the real-content repository and disks in tests/realcontent)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, label: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else value
        self._digest.update(f"{label}\0{len(data)}\0".encode())
        self._digest.update(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()[:16]


def publish_entry(staged: Path, entry: Path, load: Callable[[Path], Optional[T]]) -> Optional[T]:
    """Rename a finished cache entry into place. When another build got there first, return its
    complete entry (loaded with `load`); a broken entry in the way is replaced. None: ours is in place."""
    try:
        os.rename(staged, entry)
        return None
    except OSError:
        if (cached := load(entry)) is not None:
            log.info("%s was built concurrently; using it", entry)
            return cached
        shutil.rmtree(entry)
        os.rename(staged, entry)
        return None


def find_fixture_inputs(tools_dir: Path = DEFAULT_TOOLS_DIR, busybox: Path | None = None) -> FixtureInputs:
    """Locate the kernel, the EFI stub and busybox that the fixture RPMs repackage."""
    kernel_tree = tools_dir / "kernel"
    kernel_debs, kernel_package = _deb_from_list(kernel_tree / ".debs", "linux-image-")
    if override := os.environ.get(KERNEL_EVR_ENV):
        kernel_package = _kernel_evr_override(override)
    stub_debs, stub_package = _deb_from_list(tools_dir / "stub" / ".debs", "systemd-boot-efi_")
    stub_dir = tools_dir / "stub" / "usr" / "lib" / "systemd" / "boot" / "efi"
    for name in STUB_FILES:
        if not (stub_dir / name).is_file():
            raise FixtureBuildError(f"{stub_dir / name} is missing: run tools/setup.sh")
    microcode_dir = tools_dir / "microcode"
    _, intel_ucode = _deb_from_list(microcode_dir / ".debs", "intel-microcode_")
    _, amd_ucode = _deb_from_list(microcode_dir / ".debs", "amd64-microcode_")
    firmware_dir = tools_dir / "firmware"
    _, linux_firmware = _deb_from_list(firmware_dir / ".debs", "firmware-bnx2_")
    if busybox is None:
        found = Path("/bin/busybox") if Path("/bin/busybox").exists() else shutil.which("busybox")
        if not found:
            raise FixtureBuildError("busybox is not installed (Debian: busybox-static)")
        busybox = Path(found)
    return FixtureInputs(
        kernel_tree=kernel_tree.resolve(),
        kernel_uname=_kernel_uname(kernel_tree),
        kernel_package=kernel_package,
        kernel_debs=kernel_debs,
        stub_dir=stub_dir.resolve(),
        stub_package=stub_package,
        stub_debs=stub_debs,
        busybox=busybox.resolve(),
        busybox_package=_busybox_package(busybox),
        busybox_sha256=sha256_file(busybox),
        microcode_dir=microcode_dir.resolve(),
        intel_ucode_package=intel_ucode,
        amd_ucode_package=amd_ucode,
        microcode_debs=" ".join(sorted((microcode_dir / ".debs").read_text().split())),
        firmware_dir=firmware_dir.resolve(),
        linux_firmware_package=linux_firmware,
        firmware_debs=" ".join(sorted((firmware_dir / ".debs").read_text().split())),
    )


def _tool_path() -> str:
    """PATH for the build tools: depmod and modinfo live in /usr/sbin, which a user's PATH may lack."""
    return os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"


def tool_version(argv: Sequence[str]) -> str:
    try:
        env = {**os.environ, "PATH": _tool_path()}
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env).stdout
    except FileNotFoundError:
        return "missing"
    return out.splitlines()[0] if out else ""


# Taken from the buildroot's RPMs (Debian trixie repackaged, tests/realcontent/buildroot.toml)
# with their dependency closure: mkosi runs the image's own depmod, and the real kmod replaced a
# busybox depmod wrapper. The buildroot and the fixture RPMs share one koji repository.
FROM_BUILDROOT = ("kmod",)


def fixture_hash(inputs: FixtureInputs, buildroot_key: str = "") -> str:
    """Cache key: the fixture sources, this module, the identity of the repackaged binaries, the
    buildroot entry the kmod closure comes from and the versions of the tools whose output ends up
    in the RPMs and the repodata."""
    key = CacheKey()
    add = key.add
    add("buildroot", buildroot_key)

    add("format", CACHE_FORMAT)
    # Only what goes into the RPMs: the test variants under fixtures/variants are not RPM sources.
    for path in sorted(p for d in ("SPECS", "SOURCES") for p in (FIXTURES_DIR / d).rglob("*") if p.is_file()):
        add(f"fixture:{path.relative_to(FIXTURES_DIR).as_posix()}", sha256_file(path))
    add("module", sha256_file(Path(__file__)))
    add("kernel-debs", inputs.kernel_debs)
    add("kernel-package", f"{inputs.kernel_package.version}-{inputs.kernel_package.release}")
    add("kernel-uname", inputs.kernel_uname)
    add("stub-debs", inputs.stub_debs)
    add("busybox-sha256", inputs.busybox_sha256)
    add("microcode-debs", inputs.microcode_debs)
    add("firmware-debs", inputs.firmware_debs)
    # xz: amd-ucode-firmware's and linux-firmware's files are compressed with it.
    for tool in (["rpmbuild", "--version"], ["createrepo_c", "--version"], ["depmod", "--version"],
                 ["xz", "--version"]):
        add(f"tool:{tool[0]}", tool_version(tool))
    return key.hexdigest()


def _run(argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None) -> str:
    """Run a command, returning its combined output; failures raise FixtureBuildError naming `what`."""
    log.info("%s: %s", what, " ".join(_quote(a) for a in argv))
    try:
        proc = subprocess.run(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError as e:
        raise FixtureBuildError(f"{what}: {argv[0]} is not installed") from e
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-OUTPUT_TAIL_LINES:])
        raise FixtureBuildError(f"{what} failed (exit status {proc.returncode}); last output:\n{tail}")
    return proc.stdout


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[A-Za-z0-9_./:=+%,@-]+", arg) else repr(arg)


def build_rpm_from_spec(
    spec: Path, topdir: Path, defines: dict[str, str], source_date_epoch: int
) -> list[Path]:
    """Build the binary RPMs of one spec (rpmbuild -bb) reproducibly and return their paths.

    Sources are taken from ``<spec dir>/../SOURCES`` when it exists, else from the spec's own
    directory; ``defines`` may override that (``_sourcedir``) and any other macro. The build ignores
    the caller's ~/.rpmmacros. Raises FixtureBuildError naming the spec, with rpmbuild's output tail.
    """
    spec = spec.resolve()
    topdir = topdir.resolve()
    # Parallel rpmbuilds on a fresh topdir race to create these.
    for sub in ("BUILD", "BUILDROOT", "RPMS", "SRPMS", "SOURCES", "SPECS", "tmp", "home"):
        (topdir / sub).mkdir(parents=True, exist_ok=True)
    sources = spec.parent.parent / "SOURCES"
    macros = {
        "_topdir": str(topdir),
        "_tmppath": str(topdir / "tmp"),
        "_sourcedir": str(sources if sources.is_dir() else spec.parent),
        "_buildhost": BUILDHOST,
        "use_source_date_epoch_as_buildtime": "1",
        "clamp_mtime_to_source_date_epoch": "1",
        "_binary_payload": BINARY_PAYLOAD,
        **defines,
    }
    argv = ["rpmbuild", "-bb"]
    for name, value in macros.items():
        argv += ["--define", f"{name} {value}"]
    argv.append(str(spec))
    env = {
        "PATH": _tool_path(),
        "HOME": str(topdir / "home"),
        "LC_ALL": "C",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(source_date_epoch),
    }
    started = time.monotonic()
    output = _run(argv, what=f"rpmbuild {spec.name}", env=env)
    rpms = [Path(line.split(":", 1)[1].strip()) for line in output.splitlines() if line.startswith("Wrote:")]
    rpms = [p for p in rpms if not p.name.endswith(".src.rpm")]
    if not rpms:
        tail = "\n".join(output.splitlines()[-OUTPUT_TAIL_LINES:])
        raise FixtureBuildError(f"rpmbuild {spec.name} wrote no binary RPM; last output:\n{tail}")
    log.info("built %s in %.1fs: %s", spec.name, time.monotonic() - started, ", ".join(p.name for p in rpms))
    return rpms


def make_repo(directory: Path) -> None:
    """Write reproducible repodata/ for the RPMs in directory (createrepo_c, timestamps = revision 1)."""
    _run(
        [
            "createrepo_c",
            "--quiet",
            "--no-database",
            "--simple-md-filenames",
            "--revision",
            "1",
            "--set-timestamp-to-revision",
            str(directory),
        ],
        what=f"createrepo_c {directory}",
    )


def _rpm_names(rpms: Sequence[Path]) -> dict[str, Path]:
    out = _run(["rpm", "-qp", "--nosignature", "--qf", "%{NAME}\\n", *map(str, rpms)], what="rpm -qp")
    names = out.split()
    if len(names) != len(rpms):
        raise FixtureBuildError(f"rpm -qp returned {len(names)} names for {len(rpms)} RPMs: {out!r}")
    return dict(zip(names, rpms))


def _load_complete(entry: Path) -> FixtureRepo | None:
    marker = entry / COMPLETE_MARKER
    try:
        data = json.loads(marker.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    repo = entry / "repo"
    rpms = {name: repo / filename for name, filename in data["rpms"].items()}
    if not all(p.is_file() for p in rpms.values()) or not (repo / "repodata" / "repomd.xml").is_file():
        return None
    if "kernel-core" not in rpms:
        return None
    query = subprocess.run(
        ["rpm", "-qp", "--nosignature", "--qf", "%{VERSION} %{RELEASE}", str(rpms["kernel-core"])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    if query.returncode != 0:
        raise FixtureBuildError(f"rpm -qp {rpms['kernel-core']} failed: {query.stderr.strip()}")
    version, release = query.stdout.split()
    return FixtureRepo(
        path=repo,
        kernel_version=data["kernel_version"],
        rpms=rpms,
        source_date_epoch=data["source_date_epoch"],
        kernel_package_version=version,
        kernel_package_release=release,
    )


def _buildroot_rpms():
    """The buildroot's RPMs (built or cached), for the kmod closure; a failure is a FixtureBuildError."""
    from tests.realcontent.apt import AptError
    from tests.realcontent.buildroot import build_buildroot_rpms
    from tests.realcontent.distribution import DEFAULT_CACHE, DistributionError
    from tests.realcontent.mapping import MappingError

    try:
        return build_buildroot_rpms(DEFAULT_CACHE)
    except (AptError, DistributionError, MappingError) as e:
        raise FixtureBuildError(f"the buildroot RPMs (for {', '.join(FROM_BUILDROOT)}): {e}") from e


def build_fixture_repo(
    cache_dir: Path, *, tools_dir: Path = DEFAULT_TOOLS_DIR, busybox: Path | None = None
) -> FixtureRepo:
    """Return the fixture repository ``cache_dir/<hash>/repo``, building it first unless a complete
    one is cached. The build happens in a temporary directory that is renamed into place, so an
    interrupted build never leaves a half-written entry."""
    inputs = find_fixture_inputs(tools_dir, busybox)
    buildroot = _buildroot_rpms()
    key = fixture_hash(inputs, buildroot.key)
    cache_dir = cache_dir.resolve()
    entry = cache_dir / key
    if (cached := _load_complete(entry)) is not None:
        log.info("fixture repo %s is cached", cached.path)
        return cached

    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{key}.", dir=cache_dir) as tmp:
        staged = Path(tmp) / "entry"
        repo = staged / "repo"
        repo.mkdir(parents=True)
        defines = inputs.spec_defines()
        specs = sorted(SPECS_DIR.glob("*.spec"))
        if not specs:
            raise FixtureBuildError(f"no specs in {SPECS_DIR}")
        built: list[Path] = []
        for spec in specs:
            for rpm in build_rpm_from_spec(spec, Path(tmp) / "rpmbuild", defines, SOURCE_DATE_EPOCH):
                target = repo / rpm.name
                shutil.move(str(rpm), target)
                # createrepo_c records file mtimes in primary.xml.
                os.utime(target, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
                built.append(target)
        from tests.realcontent.distribution import check_file_conflicts, rpm_closure

        taken = rpm_closure(list(buildroot.rpms.values()), FROM_BUILDROOT)
        for rpm in sorted(taken.values()):
            target = repo / rpm.name
            shutil.copyfile(rpm, target)
            os.utime(target, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
            built.append(target)
        # Everything here may land in one image: no two packages may ship the same file.
        check_file_conflicts(built)
        make_repo(repo)
        rpms = _rpm_names(built)
        manifest = {
            "kernel_version": inputs.kernel_uname,
            "source_date_epoch": SOURCE_DATE_EPOCH,
            "rpms": {name: path.name for name, path in sorted(rpms.items())},
            "inputs": {
                "kernel_debs": inputs.kernel_debs,
                "stub_debs": inputs.stub_debs,
                "busybox_sha256": inputs.busybox_sha256,
                "microcode_debs": inputs.microcode_debs,
                "firmware_debs": inputs.firmware_debs,
            },
        }
        (staged / COMPLETE_MARKER).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if (cached := publish_entry(staged, entry, _load_complete)) is not None:
            return cached
    log.info("built fixture repo %s in %.1fs", entry / "repo", time.monotonic() - started)
    result = _load_complete(entry)
    if result is None:
        raise FixtureBuildError(f"{entry} is incomplete right after it was built")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.fixtures", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or reuse) the fixture repository")
    build.add_argument(
        "--cache",
        type=Path,
        default=REPO_ROOT / "build" / "fixture-cache",
        help="cache directory (default: build/fixture-cache, as tests/conftest.py uses)",
    )
    build.add_argument("--tools", type=Path, default=DEFAULT_TOOLS_DIR, help="tools directory (default: .tools)")
    build.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(name)s: %(message)s")
    try:
        repo = build_fixture_repo(args.cache, tools_dir=args.tools)
    except FixtureBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(repo.path)
    print(repo.kernel_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
