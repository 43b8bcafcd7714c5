"""Tests of mkosi-initrd-builder; tests.support holds the shared helpers."""

import os
from pathlib import Path

# The builder looks its tools up on PATH, with $MKOSI_INITRD_TOOLS/bin first. In a checkout
# `make setup` extracts mkosi and ukify into .tools/; naming it here covers pytest, the helpers
# run as `python -m tests.support...` and every builder process they start (the Makefile exports
# the same for `make run` and `make rpm`).
_TOOLS = Path(__file__).resolve().parent.parent / ".tools"
if (_TOOLS / "bin").is_dir():
    os.environ.setdefault("MKOSI_INITRD_TOOLS", str(_TOOLS))
