"""Where the external tools come from: PATH, with $MKOSI_INITRD_TOOLS/bin first when that is set."""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.util.errors import ToolMissingError
from mkosi_initrd_builder.util.run import run

# A directory whose bin/ goes before PATH: `make setup` extracts mkosi and ukify into a checkout's
# .tools/, and the Makefile and the tests name it here. Installed, the builder uses PATH only.
TOOLS_ENV = "MKOSI_INITRD_TOOLS"


def tools_dir() -> Optional[Path]:
    env = os.environ.get(TOOLS_ENV)
    return Path(env) if env else None


def tool_path() -> str:
    """PATH with $MKOSI_INITRD_TOOLS/bin first, for commands that look tools up themselves."""
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
