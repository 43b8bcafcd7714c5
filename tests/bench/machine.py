"""How busy the machine was while a benchmark ran: ratios measured side by side survive a shared
machine, absolute times do not, so every table says which it was; and the median of repeated runs,
which a single slow or fast one does not move."""

from __future__ import annotations

import dataclasses
import os
import time
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


@dataclasses.dataclass(frozen=True)
class CpuUse:
    """CPU time the whole machine spent busy (/proc/stat) and this process with its children spent,
    at one moment: between two of them, what everything else on the machine took."""

    at: float
    machine: float
    ours: float

    @classmethod
    def now(cls) -> "CpuUse":
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: idle and iowait are not busy; guest time
        # is counted in user already
        busy = sum(fields[:8]) - fields[3] - fields[4]
        t = os.times()
        return cls(time.monotonic(), busy / os.sysconf("SC_CLK_TCK"),
                   t.user + t.system + t.children_user + t.children_system)

    def others_since(self, start: "CpuUse") -> float:
        """CPUs the rest of the machine kept busy on average since `start`: other processes, and the
        kernel's own threads (writeback, the journal), some of that on this process's behalf."""
        return max(0.0, (self.machine - start.machine) - (self.ours - start.ours)) / max(self.at - start.at, 1e-9)


def describe(before: float, after: float, cpu_start: "CpuUse | None" = None) -> str:
    """Whether the machine was idle. With `cpu_start`, by the CPU everything but this run took while
    it ran: the load averages lag by minutes (the one before counts work that may have ended, the
    one after this run's own), so they are printed and decide nothing."""
    cpus = os.cpu_count() or 1
    limit = IDLE_SHARE * cpus
    if cpu_start is None:
        state = "idle" if max(before, after) < limit else "loaded"
        return (f"machine: {cpus} CPUs, 1-minute load average {before:.2f} before, {after:.2f} after: {state}"
                f" (idle: below {limit:.2f})")
    others = CpuUse.now().others_since(cpu_start)
    state = "idle" if others < limit else "loaded"
    return (f"machine: {cpus} CPUs; everything but this run kept {others:.2f} CPUs busy on average while it ran: "
            f"{state} (idle: below {limit:.2f}); 1-minute load average {before:.2f} before, {after:.2f} after "
            "(this run's own work included)")
