"""Shared pytest fixtures: the fixture RPM repository (built once per session, cached by content hash)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent
TOOLS = TOP / ".tools"
FIXTURE_VARIANTS = TOP / "tests" / "fixtures" / "variants"
PRODUCT_VARIANTS = TOP / "spec" / "variants"
# The fixture cache outlives one session (keyed by a hash of the sources), so repeated runs skip
# rpmbuild; CI starts from a clean checkout and builds it once.
FIXTURE_CACHE = Path(os.environ.get("MKOSI_INITRD_FIXTURE_CACHE", TOP / "build" / "fixture-cache"))


def kernel_modules_dir() -> Path:
    """/usr/lib/modules/<KVER> of the fixture kernel `make setup` extracts; skips the test without it."""
    dirs = sorted((TOOLS / "kernel/lib/modules").glob("*")) if (TOOLS / "kernel/lib/modules").is_dir() else []
    if not dirs:
        pytest.skip("the fixture kernel is not extracted into .tools/kernel (run 'make setup')")
    return dirs[0]


def require_tools(*names: str) -> None:
    """Skip the calling test when a tool is absent, naming it (make setup installs them all)."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (run 'make setup')")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mkosi's sandbox and unshare -n create namespaces")


@pytest.fixture(scope="session", autouse=True)
def private_user_cache(tmp_path_factory):
    """The builder's command line keeps kernel module facts under $XDG_CACHE_HOME by default: the
    tests' builds share one of their own, not the user's."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def fixture_repo():
    from tests.support.fixtures import build_fixture_repo

    require_tools("rpmbuild", "createrepo_c")
    return build_fixture_repo(FIXTURE_CACHE)


@pytest.fixture
def small_mount(tmp_path):
    """Mount a tmpfs of the given size (and options) below tmp_path; unmounted afterwards."""
    mounted = []

    def mount(name: str, size: str, *options: str) -> Path:
        require_root()
        where = tmp_path / name
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", where],
                       check=True)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", where], check=False)
