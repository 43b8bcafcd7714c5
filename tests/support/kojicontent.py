"""What the test build tag's repository holds, as one list: the fixture RPMs (the images' content),
the buildroot's tools (Debian trixie binaries as Fedora-named RPMs, tests/realcontent/buildroot.toml)
and this checkout's builder as RPMs (spec/mkosi-initrd-builder.spec, built by
tools/make-builder-rpm.sh). mock installs every program the build runs from there.

    python -m tests.support.kojicontent [rpms]   # builds what is missing, prints the RPM paths
    python -m tests.support.kojicontent repo     # ... and one flat repository of them: path, kernel
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.fixtures import CacheKey, FixtureRepo, publish_entry

log = logging.getLogger("tests.kojicontent")

TOP = Path(__file__).resolve().parents[2]
MAKE_BUILDER_RPM = TOP / "tools" / "make-builder-rpm.sh"
DEFAULT_CACHE = Path(os.environ.get("MKOSI_INITRD_BUILDER_RPM_CACHE", TOP / "build" / "builder-rpm-cache"))
CACHE_FORMAT = "builder-rpms/1"
# The Python the buildroot's packages run: Debian's python3 searches dist-packages.
BUILDROOT_SITELIB = "/usr/lib/python3/dist-packages"


@dataclasses.dataclass(frozen=True)
class KojiContent:
    rpms: tuple[Path, ...]          # every RPM of the build tag, names unique
    build_group: tuple[str, ...]    # comps `build` group (mock's chroot_setup_cmd: install @build)
    builder: tuple[Path, ...]       # python3-mkosi-initrd-builder and the kojid plugin's RPM


def _source_files() -> list[str]:
    """The files Source0 of the builder spec carries (what make-builder-rpm.sh packs)."""
    out = subprocess.run(["git", "-C", str(TOP), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, stdout=subprocess.PIPE).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (TOP / f).exists() and not (TOP / f).is_dir())


# What the builder's RPMs are made of (the tarball carries the whole tree, the build reads these).
PACKAGED = ("builder/", "koji_plugin/", "spec/", "setup.cfg", "pyproject.toml", "README.md", "LICENSE",
            "tools/make-builder-rpm.sh")


def builder_key() -> str:
    key = CacheKey()
    key.add("format", CACHE_FORMAT)
    key.add("sitelib", BUILDROOT_SITELIB)
    for name in _source_files():
        if not name.startswith(PACKAGED):
            continue
        path = TOP / name
        key.add(f"file:{name}", os.readlink(path) if path.is_symlink() else path.read_bytes())
    return key.hexdigest()


def _load_builder(entry: Path):
    rpms = sorted((entry / "RPMS").glob("*/*.rpm"))
    return rpms if (entry / "complete").is_file() and rpms else None


def build_builder_rpms(cache_dir: Path = DEFAULT_CACHE) -> list[Path]:
    """The builder's RPMs for this source tree, built unless cached under a hash of the tree."""
    entry = cache_dir.resolve() / builder_key()
    if (cached := _load_builder(entry)) is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{entry.name}.", dir=cache_dir) as tmp:
        staged = Path(tmp) / "entry"
        env = dict(os.environ, MKOSI_INITRD_PYTHON3_SITELIB=BUILDROOT_SITELIB)
        proc = subprocess.run(["bash", str(MAKE_BUILDER_RPM), str(staged)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"make-builder-rpm.sh failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        (staged / "complete").write_text("")
        if (cached := publish_entry(staged, entry, _load_builder)) is not None:
            return cached
    log.info("built the builder RPMs in %s", entry)
    result = _load_builder(entry)
    assert result is not None
    return result


def koji_content(fixture_repo: FixtureRepo) -> KojiContent:
    from tests.realcontent.buildroot import build_buildroot_rpms
    from tests.realcontent.distribution import DEFAULT_CACHE as REALCONTENT_CACHE

    buildroot = build_buildroot_rpms(REALCONTENT_CACHE)
    builder = build_builder_rpms()
    by_name = dict(fixture_repo.rpms)
    for name, path in buildroot.rpms.items():
        # The fixture repository carries kmod's closure as the very same files.
        if name in by_name and by_name[name].name != path.name:
            raise RuntimeError(f"the fixture and the buildroot RPMs both make {name}: {by_name[name]} and {path}")
        by_name[name] = path
    rpms = (*by_name.values(), *builder)
    return KojiContent(rpms=tuple(rpms), build_group=buildroot.build_group, builder=tuple(builder))


TAG_REPO_CACHE = TOP / "build" / "tag-repo-cache"


def tag_repo(fixture_repo: FixtureRepo, cache_dir: Path = TAG_REPO_CACHE) -> Path:
    """The build tag's RPMs as one flat repository with repodata and the comps `build` group: what
    a maintainer's local build (`make rpm`) resolves the spec's BuildRequires against, as koji's
    buildroot does. Cached under a hash of the (content-addressed) RPM paths."""
    from tests.realcontent.buildroot import combined_repo

    content = koji_content(fixture_repo)
    key = CacheKey()
    key.add("format", "tag-repo/1")
    for rpm in sorted(map(str, content.rpms)):
        key.add("rpm", rpm)
    entry = cache_dir.resolve() / key.hexdigest()
    if (entry / "repodata" / "repomd.xml").is_file():
        return entry
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{entry.name}.", dir=cache_dir) as tmp:
        staged = combined_repo(Path(tmp) / "repo", content.rpms, content.build_group)
        publish_entry(staged, entry, lambda e: e if (e / "repodata" / "repomd.xml").is_file() else None)
    return entry


def main(argv: list[str]) -> int:
    """`rpms`: every RPM of the build tag, one per line; `repo`: the flat repository's path, then the
    fixture kernel's uname -r (what tools/make-rpm.sh reads)."""
    from tests.support.fixtures import build_fixture_repo

    logging.basicConfig(level=logging.WARNING if "-q" in argv else logging.INFO, format="%(name)s: %(message)s")
    fixture = build_fixture_repo(TOP / "build" / "fixture-cache")
    if "repo" in argv:
        print(tag_repo(fixture))
        print(fixture.kernel_version)
        return 0
    for rpm in koji_content(fixture).rpms:
        print(rpm)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
