"""Tests of mkosi-initrd-builder; tests.support holds the shared helpers."""

import os
from pathlib import Path

# The builder looks its tools up on PATH. In a checkout `make setup` extracts mkosi and ukify into
# .tools/bin; putting it first here covers pytest, the helpers run as `python -m tests.support...`
# and every builder process they start (the Makefile does the same for `make run` and `make rpm`).
_TOOLS_BIN = Path(__file__).resolve().parent.parent / ".tools" / "bin"
if _TOOLS_BIN.is_dir() and str(_TOOLS_BIN) not in os.environ.get("PATH", "").split(":"):
    os.environ["PATH"] = f"{_TOOLS_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
