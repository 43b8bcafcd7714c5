"""The `spec` and `bump` subcommands: render the RPM spec for a kernel, and move it to a new kernel
or new variant files with the version, release and changelog updated in one step."""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from pathlib import Path

from mkosi_initrd_builder.util.cliopts import Command, Option
from mkosi_initrd_builder.util.errors import BuilderError
from mkosi_initrd_builder.util.resources import product_variants_dir
from mkosi_initrd_builder.util.run import run

logger = logging.getLogger("mkosi_initrd_builder.spec")


def iso_date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


KERNEL_VERSION = Option(("--kernel-version",), "kernel version (uname -r); the repository must ship it",
                        required=True, metavar="KVER")
REPO = Option(("--repo",), "RPM repository (directory with repodata/) that has the kernel and the image "
              "packages", type=Path, required=True, metavar="DIR")
VARIANTS_DIR = Option(("--variants-dir",), "directory of variant files (default: the product variants "
                      "installed with the builder)", type=Path, metavar="DIR")
PACKAGER = Option(("--packager",), "changelog author, 'Name <email>' (default: rpm's %%packager)",
                  metavar="WHO")
DATE = Option(("--date",), "changelog date (default: today, UTC)", type=iso_date, metavar="YYYY-MM-DD")
RELEASE = Option(("--release",), "Fedora release mkosi is asked about for its initrd package list",
                 default="rawhide", metavar="RELEASE")
SPEC_OPTIONS = (
    KERNEL_VERSION, REPO, VARIANTS_DIR,
    Option(("--output",), "write the spec here and its Sources (kernel-install files, variant files) next "
           "to it (default: print the spec)", type=Path, metavar="FILE"),
    PACKAGER, DATE, RELEASE,
)
BUMP_OPTIONS = (
    Option(("--spec",), "the rendered spec to update in place (its Sources are refreshed next to it)",
           type=Path, required=True, metavar="FILE"),
    KERNEL_VERSION, REPO, VARIANTS_DIR,
    Option(("--message",), "changelog line to add (required when neither the kernel nor the variants "
           "changed)", metavar="TEXT"),
    PACKAGER, DATE, RELEASE,
)


def default_packager() -> str:
    try:
        value = run(["rpm", "--eval", "%{?packager}"], capture=True).stdout.decode().strip()
    except BuilderError:
        value = ""
    if not value:
        raise BuilderError("no changelog author: pass --packager 'Name <email>'",
                           hint="or set %packager in ~/.rpmmacros")
    return value


def cmd_spec(args: argparse.Namespace) -> int:
    from mkosi_initrd_builder.rpmmeta.repo import open_repository
    from mkosi_initrd_builder.spec.bump import first_entry_lines
    from mkosi_initrd_builder.spec.inputs import describe_kernel, gather_inputs, release_for
    from mkosi_initrd_builder.spec.template import ChangelogEntry, render_spec, write_spec
    from mkosi_initrd_builder.building.variants import load_variants

    variants = load_variants(args.variants_dir or product_variants_dir())
    repo = open_repository(args.repo)
    kernel = describe_kernel(repo, args.kernel_version)
    image = kernel.image_package.nevra
    entry = ChangelogEntry(args.date or today(), args.packager or default_packager(),
                           f"{image.version}-{release_for(image, 1)}", first_entry_lines(kernel, variants))
    inputs = gather_inputs(repo, kernel, variants, release=args.release, build_counter=1,
                           changelog=entry.render())
    text = render_spec(inputs)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    for path in write_spec(text, args.output, variants):
        logger.info("wrote %s", path)
    print(f"{args.output}: mkosi-initrd-initrd {inputs.version}-{inputs.release}, "
          f"variants: {', '.join(sorted(v.name for v in variants))}")
    return 0


def cmd_bump(args: argparse.Namespace) -> int:
    from mkosi_initrd_builder.rpmmeta.repo import open_repository
    from mkosi_initrd_builder.spec.bump import plan_bump, read_spec
    from mkosi_initrd_builder.spec.inputs import describe_kernel, gather_inputs, release_for
    from mkosi_initrd_builder.spec.template import ChangelogEntry, render_spec, write_spec
    from mkosi_initrd_builder.building.variants import load_variants

    current = read_spec(args.spec)
    repo = open_repository(args.repo)
    kernel = describe_kernel(repo, args.kernel_version)
    variants = load_variants(args.variants_dir or product_variants_dir())
    bump = plan_bump(current, kernel, variants, args.message)
    image = kernel.image_package.nevra
    new_release = release_for(image, bump.build_counter)
    entry = ChangelogEntry(args.date or today(), args.packager or default_packager(),
                           f"{image.version}-{new_release}", bump.entry_lines)
    inputs = gather_inputs(repo, kernel, variants, release=args.release, build_counter=bump.build_counter,
                           changelog=entry.render() + "\n\n" + current.changelog)
    write_spec(render_spec(inputs), args.spec, variants)
    print(f"{args.spec}: mkosi-initrd-initrd {current.version}-{current.release} -> "
          f"{inputs.version}-{inputs.release}")
    return 0


def today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


COMMANDS: list[Command] = [
    Command("spec", "render the RPM spec (and its Sources) for a kernel and the variant files", SPEC_OPTIONS,
            cmd_spec),
    Command("bump", "move a rendered spec to a new kernel or new variant files: version, release and "
            "changelog in one step", BUMP_OPTIONS, cmd_bump),
]
