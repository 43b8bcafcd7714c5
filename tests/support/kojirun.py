"""Running kojid buildArch tasks the way kojid would, through the fake kojid and the plugin loaded
by koji.plugin.PluginTracker: shared by the plugin's tests and by `make run`."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import types
from pathlib import Path
from typing import Optional

import koji
import koji.plugin

from tests.support import fake_kojid
from tests.support.fake_hub import FakeHub

TOP = Path(__file__).resolve().parent.parent.parent

PLUGIN_DIR = TOP / "koji_plugin"
PLUGIN_MODULE = "_koji_plugin__mkosi_initrd"
CONFIG_ENV = "MKOSI_INITRD_KOJID_CONFIG"
SPECS = TOP / "tests" / "fixtures" / "koji"
TASK_ID = 4242
TASK_DIR = koji.pathinfo.taskrelpath(TASK_ID)
STAGER_AGENT = "mkosi-initrd-build/"
IN_CHROOT_REPO = "/chroot_tmpdir/mkosi-initrd/repo"
# kojid's mock user: the uid and gid the buildroot's `mockbuild` user and `mock` group get.
BUILD_USER = (1000, 135)


def nspawn_path() -> str:
    """systemd-nspawn: the host's, or the one `make setup` extracts into .tools/bin on Debian."""
    import shutil

    return shutil.which("systemd-nspawn", path=f"{TOP}/.tools/bin:/usr/bin:/bin") or "systemd-nspawn"


@contextlib.contextmanager
def loaded_plugin(config_text: str, config_file: Path):
    """Load the plugin from koji_plugin/ as kojid does; undo its BuildRoot swap afterwards."""
    config_file.write_text(config_text)
    import os

    original, old_env = fake_kojid.BuildRoot, os.environ.get(CONFIG_ENV)
    os.environ[CONFIG_ENV] = str(config_file)
    sys.modules.pop(PLUGIN_MODULE, None)
    try:
        yield koji.plugin.PluginTracker(path=[str(PLUGIN_DIR)]).load("mkosi_initrd")
    finally:
        # PluginTracker leaves the module registered even when loading fails
        sys.modules.pop(PLUGIN_MODULE, None)
        fake_kojid.BuildRoot = original
        if old_env is None:
            os.environ.pop(CONFIG_ENV, None)
        else:
            os.environ[CONFIG_ENV] = old_env


@dataclasses.dataclass
class BuildRun:
    result: Optional[dict]
    error: Optional[BaseException]
    hub: FakeHub
    mock_calls: list[list[str]]
    mockdir: Path

    @property
    def buildroot(self) -> Path:
        (name,) = [p.name for p in self.mockdir.iterdir() if p.name != "koji"]
        return self.mockdir / name

    def upload(self, name: str) -> bytes:
        return self.hub.uploads[(TASK_DIR, name)]


def run_build_arch(work: Path, tree, server, srpm: str, *, topdir: Optional[Path] = None,
                   extra: Optional[dict] = None) -> BuildRun:
    """One buildArch task, as kojid's TaskManager would run it (handler built, then run())."""
    hub = FakeHub(tag=tree.tag, repo_id=tree.repo_id, extra=extra)
    mock_calls: list[list[str]] = []
    options = types.SimpleNamespace(
        topdir=str(topdir or work / "no-topdir-mount"), topurl=server.url, workdir=str(work / "work"),
        mockdir=str(work / "mock"), chroot_tmpdir="/chroot_tmpdir", log_timestamps=False,
        fake_build_user=BUILD_USER, fake_nspawn=nspawn_path(), fake_mock_log=mock_calls,
    )
    try:
        task = fake_kojid.BuildArchTask(TASK_ID, "buildArch", [srpm, tree.tag, "x86_64", False,
                                                                {"repo_id": tree.repo_id}], hub.session(), options)
        result, error = None, None
        try:
            result = task.run()
        except Exception as e:  # noqa: BLE001 - the tests look at it
            error = e
    finally:
        hub.stop()
    return BuildRun(result, error, hub, mock_calls, work / "mock")
