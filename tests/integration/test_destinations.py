"""Two stagings into one destination, and what a staging killed outright leaves (issue 12, "Outputs
and destinations"): the second staging fails at once naming the destination and the holder, a kill -9
leaves nothing the next staging does not clean, and nothing that merely looks like the builder's
debris is ever removed. Every staging runs as the real command, in a process of its own."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mkosi_initrd_builder.util.workdirs import OWNER_FILE, OWNER_FORMAT
from tests.conftest import TOP
from tests.integration.test_hostile_inputs import PROG, one_error, snapshot
from tests.integration.test_staging import MINIMAL_PACKAGES, koji_url, package_urlpath, read_manifest
from tests.support.cli import run_cli
from tests.support.kojitree import Fault

pytestmark = pytest.mark.integration


def stage_argv(source, dest: Path, cache: Path | None = None) -> list[str]:
    return ["stage", "--source", str(source), "--dest", str(dest), "--packages", *MINIMAL_PACKAGES,
            *(["--cache", str(cache)] if cache else [])]


def start_stage(argv: list[str], tmpdir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mkosi_initrd_builder", *argv], cwd=TOP, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmpdir)})


def wait_mid_download(proc: subprocess.Popen, where: Path, pattern: str) -> Path:
    """The partial download matching `pattern` below `where`, once it holds bytes (bounded wait)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        parts = [p for p in where.glob(pattern) if p.stat().st_size > 0]
        if parts:
            return parts[0]
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the staging never got mid-download: {proc.communicate()[1]}")


def assert_staged_from(dest: Path, koji_tree) -> None:
    """Every staged file is byte for byte the package in the koji tree, and nothing else is there."""
    manifest = read_manifest(dest)
    assert {p["name"] for p in manifest["packages"]} >= {"kernel-core", "initrd-init", "kmod"}
    for p in manifest["packages"]:
        original = koji_tree.package_path(p["name"])
        assert hashlib.sha256((dest / p["file"]).read_bytes()).hexdigest() == \
            hashlib.sha256(original.read_bytes()).hexdigest() == p["sha256"]
    assert sorted(os.listdir(dest)) == sorted([p["file"] for p in manifest["packages"]] +
                                              ["repodata", "stage-manifest.json"])


def test_second_staging_into_a_busy_destination_fails_at_once_naming_the_holder(koji_tree, tree_server, tmp_path):
    dest, tmpdir = tmp_path / "dest", tmp_path / "tmp"
    tmpdir.mkdir()
    kernel = package_urlpath(koji_tree, "kernel-core")
    hold = tree_server.faults[kernel] = Fault("hold", times=1)
    source = koji_url(tree_server, koji_tree)
    first = start_stage(stage_argv(source, dest), tmpdir)
    try:
        wait_mid_download(first, tmp_path, ".dest.staging-*/repo/.kernel-core-*.part")
        working = [p.name for p in tmp_path.glob(".dest.staging-*")] + [".dest.stage-lock"]
        before = snapshot(tmp_path, skip=(*working, "tmp"))
        second = run_cli(stage_argv(source, dest), env={"TMPDIR": str(tmpdir)})
        after = snapshot(tmp_path, skip=(*working, "tmp"))
        assert first.poll() is None, "the first staging did not outlive the second"
    finally:
        hold.gate.set()
    out, err = first.communicate(timeout=300)
    line = one_error(second)
    assert line == (f"{PROG}: error: destination {dest} is being staged by another staging (pid {first.pid}); "
                    "refusing to write it at the same time")
    assert f"{PROG}: hint: wait for the other staging to finish, or stage into another directory" in second.stderr
    assert after == before  # the second touched nothing, the first's work included
    assert first.returncode == 0, err
    assert_staged_from(dest, koji_tree)
    assert tree_server.requests_for(kernel) == 1  # the second never fetched
    assert sorted(os.listdir(tmp_path)) == ["dest", "tmp"] and os.listdir(tmpdir) == []


def test_staging_killed_mid_download_is_cleaned_up_by_the_next_one(koji_tree, tree_server, tmp_path):
    dest, cache, tmpdir = tmp_path / "dest", tmp_path / "cache", tmp_path / "tmp"
    tmpdir.mkdir()
    kernel = package_urlpath(koji_tree, "kernel-core")
    hold = tree_server.faults[kernel] = Fault("hold", times=1)
    source = koji_url(tree_server, koji_tree)
    argv = stage_argv(source, dest, cache)
    killed = start_stage(argv, tmpdir)
    try:
        wait_mid_download(killed, cache / "tmp", "run-*/.kernel-core-*.part")
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=60)
    finally:
        hold.gate.set()
    assert killed.returncode == -signal.SIGKILL
    # what a kill -9 leaves: the lock file, the staging directory, the partial download in the
    # cache and the work directory under TMPDIR
    debris = sorted(os.listdir(tmp_path))
    assert len(debris) == 4 and debris[0] == ".dest.stage-lock" and debris[2:] == ["cache", "tmp"], debris
    assert debris[1].startswith(".dest.staging-")
    assert [p.name[:len("run-")] for p in (cache / "tmp").iterdir()] == ["run-"]
    assert [p.name[:len("mkosi-initrd-stage-")] for p in tmpdir.iterdir()] == ["mkosi-initrd-stage-"]

    again = run_cli(argv, env={"TMPDIR": str(tmpdir)})
    assert again.returncode == 0, again.stderr
    assert f"left behind by a run that was killed (pid {killed.pid})" in again.stderr
    assert_staged_from(dest, koji_tree)
    assert sorted(os.listdir(tmp_path)) == ["cache", "dest", "tmp"]
    assert os.listdir(cache / "tmp") == [] and os.listdir(tmpdir) == []
    assert tree_server.requests_for(kernel) == 2  # the partial download was not trusted


def test_look_alikes_of_the_builders_debris_are_left_alone(fixture_repo, tmp_path):
    dest, tmpdir = tmp_path / "dest", tmp_path / "tmp"
    tmpdir.mkdir()
    unproven = tmp_path / ".dest.staging-abcdefgh"  # the name, but no owner file
    unproven.mkdir()
    (unproven / "notes.txt").write_text("mine")
    forged = tmp_path / ".dest.staging-forged00"  # an owner file that is no owner record of ours
    forged.mkdir()
    (forged / OWNER_FILE).write_text('{"pid": 1}\n')
    (tmp_path / ".dest.staging-a-file").write_text("a file, not a directory")
    linked = tmp_path / ".dest.staging-linked00"  # a link to a dead-looking work directory elsewhere
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / OWNER_FILE).write_text(json.dumps({"format": OWNER_FORMAT, "pid": 999999}))
    linked.symlink_to(tmp_path / "elsewhere")
    live = tmp_path / ".dest.staging-running0"  # a run that is alive: it holds its owner file's lock
    live.mkdir()
    (live / OWNER_FILE).write_text(json.dumps({"format": OWNER_FORMAT, "pid": os.getpid()}))
    (tmpdir / "mkosi-initrd-stage-someones").mkdir()
    (tmpdir / "mkosi-initrd-stage-someones" / "x").write_text("keep")
    before = snapshot(tmp_path)
    with open(live / OWNER_FILE) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        r = run_cli(["stage", "--source", fixture_repo.path, "--dest", dest, "--packages", "initrd-init"],
                    env={"TMPDIR": str(tmpdir)})
    assert r.returncode == 0, r.stderr
    assert "left behind" not in r.stderr
    assert (dest / "stage-manifest.json").is_file()
    assert snapshot(tmp_path, skip=("dest",)) == before
