"""Where the external tools come from: PATH, as for any program. A checkout's Makefile and tests put
the tools `make setup` extracts first on PATH; the builder knows nothing of that layout."""

from __future__ import annotations

import functools
import re
import shutil

from mkosi_initrd_builder.util.errors import ToolMissingError
from mkosi_initrd_builder.util.run import run


def find_tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise ToolMissingError(name)
    return found


@functools.lru_cache(maxsize=None)
def tool_version(name: str) -> str:
    """The version a tool reports, e.g. '25.3' for mkosi; 'unknown' when it prints none."""
    out = run([find_tool(name), "--version"], capture=True).stdout.decode(errors="replace")
    m = re.search(r"(\d+(?:\.\d+)+|\d+)", out)
    return m.group(1) if m else out.strip() or "unknown"
