"""--workspace-dir: where mkosi assembles each variant's root. The images are the same bytes as from
a build that keeps the workspace below OUTPUT, the directory is left as it was found, and a
workspace that fills up or is missing is named in the one error."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import FIXTURE_VARIANTS, require_root, require_tools
from tests.integration.test_hostile_inputs import PROG, one_error
from tests.support.cli import run_cli


def build(fixture_repo, out: Path, *extra) -> subprocess.CompletedProcess:
    return run_cli(["build", "--repo", fixture_repo.path, "--kernel-version", fixture_repo.kernel_version,
                    "--output", out, "--variants-dir", FIXTURE_VARIANTS, "--variant", "minimal", *extra])


def test_workspace_elsewhere_gives_the_same_images_and_is_left_empty(tmp_path, fixture_repo):
    require_tools("mkosi", "rpm2cpio", "cpio", "zstd", "ukify")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    for out, extra in ((tmp_path / "below-output", ()), (tmp_path / "elsewhere", ("--workspace-dir", workspace))):
        r = build(fixture_repo, out, *extra)
        assert r.returncode == 0, r.stderr
    assert list(workspace.iterdir()) == []
    for name in ("initrd.cpio.zst", "uki.efi", "manifest.json"):
        assert (tmp_path / "below-output/minimal" / name).read_bytes() == \
            (tmp_path / "elsewhere/minimal" / name).read_bytes(), name


def test_full_workspace_is_named_and_nothing_is_left(tmp_path, fixture_repo, small_mount):
    """mkosi installs the packages into the workspace: a 2 MB tmpfs fills up there, and the error
    names the workspace directory, not OUTPUT (where the images would go: it has room)."""
    require_tools("mkosi", "rpm2cpio", "cpio", "zstd", "ukify")
    require_root()
    workspace = small_mount("workspace", "2m")
    out = tmp_path / "out"
    out.mkdir()
    r = build(fixture_repo, out, "--workspace-dir", workspace)
    assert one_error(r) == f"{PROG}: error: 1 variant(s) failed: minimal"
    assert (f"variant minimal failed: cannot write the workspace directory {workspace}: No space left on device"
            in r.stderr), r.stderr
    assert list(workspace.iterdir()) == []
    # mkosi's log is kept for the failed variant, as for any failure; nothing else reaches OUTPUT
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [".logs", ".logs/minimal-mkosi.log"]


def test_missing_workspace_is_refused_before_anything_is_written(tmp_path, fixture_repo):
    out = tmp_path / "out"
    line = one_error(build(fixture_repo, out, "--workspace-dir", tmp_path / "absent"))
    assert line == f"{PROG}: error: --workspace-dir: {tmp_path / 'absent'} does not exist", line
    assert not out.exists()
