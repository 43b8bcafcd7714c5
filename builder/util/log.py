"""Logging setup and the `step()` context manager that logs each step's start and elapsed time."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Iterator
from typing import Optional

logger = logging.getLogger("mkosi_initrd_builder")


def setup_logging(*, debug: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("mkosi_initrd_builder")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@dataclasses.dataclass
class Stopwatch:
    """The one step timer: started on creation, `seconds` is the time so far, or the step's duration
    once stop() was called."""

    started: float = dataclasses.field(default_factory=time.monotonic)
    stopped: Optional[float] = None

    @property
    def seconds(self) -> float:
        return (self.stopped if self.stopped is not None else time.monotonic()) - self.started

    def stop(self) -> float:
        self.stopped = time.monotonic()
        return self.seconds


@contextlib.contextmanager
def step(title: str) -> Iterator[Stopwatch]:
    """Log `title` when the step starts and again with the elapsed time when it ends."""
    logger.info("‣ %s", title)
    watch = Stopwatch()
    try:
        yield watch
    except BaseException:
        logger.info("‣ %s failed after %.1fs", title, watch.stop())
        raise
    logger.info("‣ %s done in %.1fs", title, watch.stop())
