"""Run mkosi-initrd-build the way users do: as a separate process, capturing its output."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

TOP = Path(__file__).resolve().parent.parent.parent


def run_cli(args: Sequence[object], *, env: Optional[dict[str, str]] = None, wrap: Sequence[str] = (),
            timeout: float = 900) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    argv = [*wrap, sys.executable, "-m", "mkosi_initrd_builder", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, env=full_env, cwd=TOP, timeout=timeout)
