"""mkosi-initrd-initrd built the way `make rpm` builds it (tools/make-rpm.sh: render, SRPM,
RPMs rebuilt from the SRPM, rpmlint), once per test session, from the session's fixture repository."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent.parent
MAKE_RPM = TOP / "tools" / "make-rpm.sh"
PACKAGER = "Fixture Packager <fixture@example.org>"


@dataclasses.dataclass(frozen=True)
class BuiltRpms:
    out: Path
    spec: Path
    srpm: Path
    rpms: dict[str, Path]  # package name -> binary RPM
    seconds: float
    log: str

    @property
    def rpmlint_log(self) -> str:
        return (self.out / "rpmlint.log").read_text()


_built: dict[Path, BuiltRpms] = {}


def build_rpms(repo: Path, kernel_version: str, base: Path) -> BuiltRpms:
    """Run make-rpm.sh against `repo` into base/out (once per repository and session)."""
    if repo in _built:
        return _built[repo]
    out = base / "out"
    env = dict(os.environ, MKOSI_INITRD_REPO=str(repo), MKOSI_INITRD_KVER=kernel_version,
               MKOSI_INITRD_PACKAGER=PACKAGER)
    start = time.monotonic()
    proc = subprocess.run(["bash", str(MAKE_RPM), str(out)], capture_output=True, text=True, env=env, timeout=900)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise AssertionError(f"make-rpm.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    rpms = sorted((out / "RPMS").rglob("*.rpm"))
    names = subprocess.run(["rpm", "-qp", "--nosignature", "--qf", "%{NAME}\\n", *map(str, rpms)],
                           capture_output=True, text=True, check=True).stdout.split()
    built = BuiltRpms(out=out, spec=out / "src" / "mkosi-initrd-initrd.spec",
                      srpm=next((out / "SRPMS").glob("*.src.rpm")), rpms=dict(zip(names, rpms)),
                      seconds=seconds, log=proc.stdout)
    _built[repo] = built
    return built
