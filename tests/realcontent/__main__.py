"""python -m tests.realcontent build: build (or reuse) the real-content repository and print its
path on the first line and the kernel's uname -r on the second.

python -m tests.realcontent build-buildroot: build (or reuse) the buildroot's tool RPMs
(buildroot.toml) and print their directory (RPMs and repodata)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .apt import AptError
from .distribution import DEFAULT_CACHE, DistributionBuilder, DistributionError
from tests.support.fixtures import FixtureBuildError

from .mapping import MappingError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.realcontent", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in (("build", "the real-content repository"),
                       ("build-buildroot", "the buildroot's tool RPMs (buildroot.toml)")):
        build = sub.add_parser(name, help=f"build (or reuse) {what}")
        build.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                           help=f"cache directory (default: {DEFAULT_CACHE})")
        build.add_argument("--jobs", type=int, default=2, help="rpmbuilds run concurrently (default: 2)")
        build.add_argument("--refresh", action="store_true", help="fetch Debian's package lists again first")
        build.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(name)s: %(message)s")
    try:
        if args.command == "build-buildroot":
            from .buildroot import buildroot_builder
            builder = buildroot_builder(args.cache, jobs=args.jobs)
        else:
            builder = DistributionBuilder(args.cache, jobs=args.jobs)
        if args.refresh:
            builder.apt.update()
        repo = builder.build()
    except (AptError, DistributionError, FixtureBuildError, MappingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(repo.path)
    if args.command == "build":
        print(repo.kernel_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
