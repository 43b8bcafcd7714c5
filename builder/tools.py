"""Where the external tools come from: the project-local tools directory made by `make setup`, else PATH."""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from .errors import ToolMissingError
from .run import run

# `make setup` puts wrappers for mkosi and ukify (extracted from Debian trixie) here.
_REPO_TOOLS = Path(__file__).resolve().parent.parent / ".tools"


def tools_dir() -> Optional[Path]:
    env = os.environ.get("MKOSI_INITRD_TOOLS")
    if env:
        return Path(env)
    return _REPO_TOOLS if (_REPO_TOOLS / "bin").is_dir() else None


def tool_path() -> str:
    """PATH with the project's tools directory first, for commands that look tools up themselves."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    d = tools_dir()
    return f"{d / 'bin'}:{path}" if d else path


def find_tool(name: str) -> str:
    found = shutil.which(name, path=tool_path())
    if not found:
        raise ToolMissingError(name)
    return found


@functools.lru_cache(maxsize=None)
def tool_version(name: str) -> str:
    """The version a tool reports, e.g. '25.3' for mkosi; 'unknown' when it prints none."""
    argv = [find_tool(name), "--version"]
    out = run(argv, capture=True, env={"PATH": tool_path()}).stdout.decode(errors="replace")
    m = re.search(r"(\d+(?:\.\d+)+|\d+)", out)
    return m.group(1) if m else out.strip() or "unknown"
