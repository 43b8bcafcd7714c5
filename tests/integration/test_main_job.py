"""`make run`'s path, run as make runs it, so the main job cannot silently break."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import TOP, require_root, require_tools

pytestmark = [pytest.mark.integration, pytest.mark.boot]


def test_main_job_builds_in_koji_installs_and_boots_every_variant(fixture_repo):
    require_root()
    require_tools("mkosi", "ukify", "rpmbuild", "dnf", "createrepo_c", "qemu-system-x86_64", "kernel-install",
                  "unshare", "useradd", "apt-get")
    # Below a directory only root may enter, as a root user's home is: the unprivileged build runs
    # inside the buildroot and needs nothing outside it.
    with tempfile.TemporaryDirectory(prefix="mkosi-initrd-run-") as tmp:
        assert os.stat(tmp).st_mode & 0o777 == 0o700
        out = Path(tmp) / "run"
        r = subprocess.run([sys.executable, "-m", "tests.e2e.main_job", "--output", str(out)], cwd=TOP,
                           capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        summary = json.loads((out / "summary.json").read_text())
        rows = {(row["variant"], row["layout"]): row for row in summary["rows"]}
        assert set(rows) == {("minimal", "bls"), ("minimal", "uki"), ("storage", "bls")}
        for row in rows.values():
            assert row["reproducible"] == "yes" and row["boot"].startswith("ok "), row
        first, second = summary["staging"]
        assert first["packages"] == second["packages"] > 0
        assert second["fetched"] == 0 and second["from-cache"] == second["bytes"]
        assert len(summary["steps"]) == 6
        assert f"all outputs are under {out}" in r.stdout
