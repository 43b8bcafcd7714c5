"""`mkosi-initrd-build stage`: the staging library on the command line, for local builds of the spec."""

from __future__ import annotations

import argparse
from pathlib import Path

from mkosi_initrd_builder.util.cliopts import Command, Option, byte_size, positive_int
from mkosi_initrd_builder.util.errors import SettingError, StagingError
from mkosi_initrd_builder.staging.download import RetryPolicy
from mkosi_initrd_builder.staging.sources import describe_schemes


def define(text: str) -> tuple[str, str]:
    name, _, value = text.strip().partition(" ")
    if not name or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not 'NAME VALUE'")
    return name.lstrip("%"), value.strip()


STAGE_OPTIONS = (
    Option(("--source",), f"the repository to stage from: {describe_schemes()} "
           "(a koji repo <topurl>/repos/<tag>/<id>/<arch> works too)", required=True, metavar="URL|DIR"),
    Option(("--dest",), "the staged repository to write (replaced if it is one already)", type=Path,
           required=True, metavar="DIR"),
    Option(("--packages",), "stage these package names or provides and everything they need (dnf resolves)",
           nargs="+", metavar="NAME"),
    Option(("--spec",), "stage the BuildRequires of this spec file and everything they need", type=Path,
           metavar="FILE"),
    Option(("--define",), "macro for reading --spec, as rpmbuild --define takes it (repeatable)", type=define,
           action="append", dest="defines", metavar="'NAME VALUE'"),
    Option(("--installed-root",), "stage exactly the packages installed in this root's rpm database", type=Path,
           metavar="ROOT"),
    Option(("--cache",), "content-addressed package cache to read from and fill (shared safely between runs)",
           type=Path, metavar="DIR"),
    Option(("--jobs",), "parallel fetches", type=positive_int, default=4, metavar="N"),
    Option(("--max-size",), "refuse to stage more than this many bytes (K, M, G suffixes)", type=byte_size,
           metavar="SIZE"),
    Option(("--retries",), "tries per file over HTTP before giving up", type=positive_int, default=4, metavar="N"),
    Option(("--fetch-timeout",), "seconds one file may take over HTTP, its tries included, before staging fails "
           "(also how long to wait for another staging fetching the same file into --cache, plus one read)",
           type=positive_int, default=int(RetryPolicy().file_timeout), metavar="SECONDS"),
)
# StageRequest's names for its settings -> the flags that set them, so an error about a setting
# (SettingError) names the flag.
SETTING_FLAGS = {
    "dest": "--dest", "cache_dir": "--cache", "jobs": "--jobs", "max_bytes": "--max-size", "spec": "--spec",
    "installed_root": "--installed-root", "selection": "--packages, --spec or --installed-root",
}


def cmd_stage(args: argparse.Namespace) -> int:
    from mkosi_initrd_builder.staging.stage import PackageSelection, StageRequest, stage_repository

    if args.defines and args.spec is None:
        raise StagingError("--define is only used with --spec")
    selection = PackageSelection(
        packages=tuple(args.packages or ()),
        spec=args.spec,
        spec_defines=tuple(args.defines or ()),
        installed_root=args.installed_root,
    )
    try:
        result = stage_repository(StageRequest(
            source=args.source, dest=args.dest, selection=selection, cache_dir=args.cache, jobs=args.jobs,
            max_bytes=args.max_size, retry=RetryPolicy(attempts=args.retries, file_timeout=args.fetch_timeout),
        ))
    except SettingError as e:
        raise e.spelled(SETTING_FLAGS) from None
    print(result.summary())
    return 0


COMMAND = Command("stage", "stage a verified offline repository of the packages a build needs", STAGE_OPTIONS,
                  cmd_stage)
