"""Logging setup and the `step()` context manager that logs each step's start and elapsed time."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

logger = logging.getLogger("mkosi_initrd_builder")


def setup_logging(*, debug: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("mkosi_initrd_builder")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Log `title` when the step starts and again with the elapsed time when it ends."""
    logger.info("‣ %s", title)
    start = time.monotonic()
    try:
        yield
    except BaseException:
        logger.info("‣ %s failed after %.1fs", title, time.monotonic() - start)
        raise
    logger.info("‣ %s done in %.1fs", title, time.monotonic() - start)
