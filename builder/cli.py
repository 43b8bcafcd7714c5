"""The mkosi-initrd-build command line; options are declared once, as data, per subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from mkosi_initrd_builder import __version__
from mkosi_initrd_builder.building.secureboot import DEFAULT_SBAT_URL, DEFAULT_SBAT_VENDOR
from mkosi_initrd_builder.checking.qemu import DEFAULT_SETTLE, DEFAULT_TIMEOUT
from mkosi_initrd_builder.util.cliopts import Command, Option, epoch, positive_int
from mkosi_initrd_builder.util.errors import BuilderError
from mkosi_initrd_builder.util.log import setup_logging
from mkosi_initrd_builder.spec import cli as spec_cli
from mkosi_initrd_builder.staging import cli as staging_cli

logger = logging.getLogger("mkosi_initrd_builder")
PROG = "mkosi-initrd-build"


def release_name(text: str) -> str:
    from mkosi_initrd_builder.building.build import check_release
    from mkosi_initrd_builder.util.errors import SettingError

    try:
        return check_release(text)
    except SettingError as e:
        raise argparse.ArgumentTypeError(e.reason) from None


def sbat_field(setting: str) -> Any:
    """An argparse type for a field of the UKI's SBAT entry (no comma, one line)."""
    from mkosi_initrd_builder.building.secureboot import check_sbat_field
    from mkosi_initrd_builder.util.errors import SettingError

    def parse(text: str) -> str:
        try:
            return check_sbat_field(setting, text)
        except SettingError as e:
            raise argparse.ArgumentTypeError(e.reason) from None
    return parse


# The build's settings that are not the command's own flags, as the CLI spells them.
BUILD_SPELLINGS = {"secureboot_key": "--secureboot-key", "secureboot_certificate": "--secureboot-certificate",
                   "package_version": "--package-version", "sbat_vendor": "--sbat-vendor", "sbat_url": "--sbat-url",
                   "release": "--release", "workspace_dir": "--workspace-dir"}

VARIANTS_DIR = Option(("--variants-dir",), "directory of variant files (default: the product variants "
                      "installed with the builder)", type=Path, default=None, metavar="DIR")
KERNEL_VERSION = Option(("--kernel-version",), "kernel version (uname -r) to build for", required=True,
                        metavar="KVER")
BUILD_OPTIONS = (
    Option(("--repo",), "directory holding the RPMs and repodata/", type=Path, required=True, metavar="DIR"),
    KERNEL_VERSION,
    Option(("--output",), "output directory; each variant goes to OUTPUT/<variant>/", type=Path,
           required=True, metavar="DIR"),
    VARIANTS_DIR,
    Option(("--variant",), "build only this variant (repeatable; default: all)", action="append",
           dest="variant_names", metavar="NAME"),
    Option(("--jobs",), "variants to build concurrently", type=positive_int, default=1, metavar="N"),
    Option(("--source-date-epoch",), "timestamp for reproducible output (default: $SOURCE_DATE_EPOCH, "
           "else the newest package build time in the repository)", type=epoch, metavar="N"),
    Option(("--release",), "Fedora release mkosi is told (names its GPG key file and $releasever only)",
           type=release_name, default="rawhide", metavar="RELEASE"),
    Option(("--cache-dir",), "kept between builds: mkosi's package caches (one subdirectory per variant) and the "
           "kernel modules' .modinfo facts (kernel-modules/, named by the kernel packages' checksums); default: "
           "the facts alone, under $XDG_CACHE_HOME/mkosi-initrd-builder (~/.cache/mkosi-initrd-builder)", type=Path,
           metavar="DIR"),
    Option(("--workspace-dir",), "where mkosi assembles each variant's root and keeps its temporary files, "
           "removed when the variant is done: a tmpfs such as /dev/shm (the spec's choice) builds faster where "
           "creating files on disk is slow; it needs a few hundred MB per concurrent variant (default: below OUTPUT)",
           type=Path, metavar="DIR"),
    Option(("--package-version",), "version-release of the package shipping the images, for the UKI's SBAT entry "
           "(the spec passes %%{version}-%%{release}; default: the kernel version)", type=sbat_field("package_version"),
           metavar="EVR"),
    Option(("--sbat-vendor",), "vendor named in the UKI's SBAT entry", type=sbat_field("sbat_vendor"),
           default=DEFAULT_SBAT_VENDOR, metavar="NAME"),
    Option(("--sbat-url",), "where the vendor publishes advisories, for the UKI's SBAT entry",
           type=sbat_field("sbat_url"), default=DEFAULT_SBAT_URL, metavar="URL"),
    Option(("--secureboot-key",), "sign each UKI with this private key (PEM, with --secureboot-certificate) "
           "using sbsign: for local builds and tests; in koji the spec's %%pesign hook signs after the build",
           type=Path, metavar="FILE"),
    Option(("--secureboot-certificate",), "the certificate (PEM) of --secureboot-key", type=Path, metavar="FILE"),
)
INSPECT_OPTIONS = (
    Option(("directory",), "a variant's output directory (OUTPUT/<variant>)", type=Path),
    Option(("--json",), "print JSON instead of text", action="store_true"),
)
VERIFY_OPTIONS = (
    Option(("directory",), "a variant's output directory (OUTPUT/<variant>)", type=Path),
    Option(("--boot",), "also boot the initrd (and the UKI under OVMF) in QEMU", action="store_true"),
    Option(("--kernel",), "kernel image for the initrd boot", type=Path, metavar="FILE"),
    Option(("--repo",), "the repository the image was made from: check that no firmware listed as not "
           "found is shipped by the manifest's firmware packages there, and take the kernel for the initrd "
           "boot from the manifest's kernel package (default: the UKI's .linux section)", type=Path,
           metavar="DIR"),
    Option(("--expect",), "regex a console line must match for a boot to pass (default: the kernel started "
           "/init and the machine ran on without a panic for --settle seconds)", metavar="REGEX"),
    Option(("--settle",), "seconds /init must run without a panic when no --expect is given", type=float,
           default=DEFAULT_SETTLE, metavar="S"),
    Option(("--timeout",), "seconds to wait for each boot", type=float, default=DEFAULT_TIMEOUT, metavar="S"),
    Option(("--secure-boot-vars",), "boot the UKI with Secure Boot enforced: OVMF's Secure Boot build with this "
           "variable store (PK, KEK and db enrolled, Secure Boot on; copied, never written), the UKI loaded by "
           "the firmware from a disk", type=Path, metavar="FILE"),
)


def cmd_build(args: argparse.Namespace) -> int:
    from mkosi_initrd_builder.building.build import BuildRequest, build
    from mkosi_initrd_builder.building.kernelfacts import default_cache_dir
    from mkosi_initrd_builder.util.resources import product_variants_dir
    from mkosi_initrd_builder.building.variants import load_variants

    from mkosi_initrd_builder.building.secureboot import optional_signing
    from mkosi_initrd_builder.util.errors import SettingError

    try:
        signing = optional_signing(args.secureboot_key, args.secureboot_certificate)
        variants_dir = args.variants_dir or product_variants_dir()
        variants = load_variants(variants_dir, args.variant_names or ())
        results = build(BuildRequest(
            repo=args.repo, kernel_version=args.kernel_version, output=args.output, variants=tuple(variants),
            jobs=args.jobs, source_date_epoch=args.source_date_epoch, release=args.release,
            cache_dir=args.cache_dir, kernel_cache_dir=None if args.cache_dir else default_cache_dir(),
            package_version=args.package_version, sbat_vendor=args.sbat_vendor,
            sbat_url=args.sbat_url, signing=signing, workspace_dir=args.workspace_dir,
        ))
    except SettingError as e:
        raise e.spelled(BUILD_SPELLINGS) from None
    from mkosi_initrd_builder.building.formats import FORMATS

    print(f"{'variant':16}" + "".join(f" {k.value:>12}" for k in FORMATS) + f" {'seconds':>8}")
    for r in results:
        outs = r.manifest["outputs"]
        sizes = [f"{outs[f.file_name]['size']:,}" if f.file_name in outs else "-" for f in FORMATS.values()]
        print(f"{r.variant:16}" + "".join(f" {s:>12}" for s in sizes) + f" {r.seconds:>8.1f}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from mkosi_initrd_builder.checking.inspect import format_inspection, inspect_variant

    result = inspect_variant(args.directory)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_inspection(result))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from mkosi_initrd_builder.checking.qemu import BootProbe, SecureBootFirmware, find_secure_boot_code
    from mkosi_initrd_builder.checking.verify import verify_variant
    from mkosi_initrd_builder.util.errors import SettingError

    probe = BootProbe(expect=args.expect, settle=args.settle)
    secure_boot = None
    if args.secure_boot_vars is not None:
        if not args.boot:
            raise SettingError("secure_boot_vars", "is only used with --boot", spelling="--secure-boot-vars")
        if not args.secure_boot_vars.is_file():
            raise SettingError("secure_boot_vars", f"{args.secure_boot_vars}: no such file",
                               spelling="--secure-boot-vars")
        secure_boot = SecureBootFirmware(find_secure_boot_code(), args.secure_boot_vars)
    checks = verify_variant(args.directory, boot_test=args.boot, kernel=args.kernel, repo=args.repo, probe=probe,
                            timeout=args.timeout, secure_boot=secure_boot)
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}" + (f": {c.detail}" if c.detail and (not c.ok or args.boot) else ""))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        raise BuilderError(f"{args.directory}: {len(failed)} check(s) failed: {', '.join(failed)}")
    return 0


COMMANDS: list[Command] = [
    Command("build", "build each variant's outputs (initrd, UKI...), offline", BUILD_OPTIONS, cmd_build),
    Command("inspect", "show what is inside a built variant", INSPECT_OPTIONS, cmd_inspect),
    Command("verify", "check a built variant against its manifest (and boot it)", VERIFY_OPTIONS, cmd_verify),
    *spec_cli.COMMANDS,
    staging_cli.COMMAND,
]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Build prebuilt mkosi-initrd images offline.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show commands' output and tracebacks")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for opt in cmd.options:
            opt.add_to(p)
        p.set_defaults(handler=cmd.handler)
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    # SIGTERM (a CI timeout, kojid cancelling a task) cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    setup_logging(debug=args.debug, quiet=args.quiet)
    try:
        return args.handler(args)
    except BuilderError as e:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {e}", file=sys.stderr)
        if e.hint:
            print(f"{PROG}: hint: {e.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure is still one line unless --debug
        if args.debug:
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
              file=sys.stderr)
        return 70


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
