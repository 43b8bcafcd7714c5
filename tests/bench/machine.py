"""How busy the machine was while a benchmark ran: ratios measured side by side survive a shared
machine, absolute times do not, so every table says which it was; and the median of repeated runs,
which a single slow or fast one does not move."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# A 1-minute load average below this share of the CPUs counts as idle.
IDLE_SHARE = 0.25


def load1() -> float:
    return os.getloadavg()[0]


def median_of(runs: list[T], key: Callable[[T], Any] = lambda run: run) -> T:
    """The run whose `key` is the median (of an odd number; the upper one of an even): a whole run,
    so its figures (a build's total and its mkosi part, dracut's and its preparation) stay together."""
    return sorted(runs, key=key)[len(runs) // 2]


def describe(before: float, after: float) -> str:
    cpus = os.cpu_count() or 1
    state = "idle" if max(before, after) < IDLE_SHARE * cpus else "loaded"
    return (f"machine: {cpus} CPUs, 1-minute load average {before:.2f} before, {after:.2f} after: {state}"
            f" (idle: below {IDLE_SHARE * cpus:.2f})")
