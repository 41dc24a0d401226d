"""Threads for CPU inference that degrade gracefully when other processes share the cores.

torch's OpenMP kernels split every layer evenly over their threads and wait for the
slowest; a thread that shares its core with a busy process gets a fraction of it, so the
whole layer waits on that fraction (an ImageNet net ran 8x slower with one core busy).
`AdaptiveThreads` counts the cores of this process's CPU set that other processes leave
free, from /proc/stat minus this process's own CPU time, and runs on that many.
"""
from __future__ import annotations

import contextlib
import os
import time

import torch

PROC_STAT = "/proc/stat"


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def busy_jiffies(cpus: list[int], path: str = PROC_STAT) -> int | None:
    """Busy time (user, nice, system, irq, softirq, steal) summed over `cpus`, in clock
    ticks; None where /proc/stat is unavailable or unreadable."""
    wanted = {f"cpu{c}" for c in cpus}
    total = 0
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in wanted:
                    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
                    total += user + nice + system + irq + softirq + steal
    except (OSError, ValueError):
        return None
    return total


class AdaptiveThreads:
    """How many threads the next forward should use: the cores of the CPU set that other
    processes leave free (at least one, at most torch's thread count when created),
    re-estimated at most every `interval` seconds over the time since the last estimate."""

    def __init__(self, interval: float = 0.5, stat_path: str = PROC_STAT):
        self.cpus = allowed_cpus()
        self.limit = min(len(self.cpus), torch.get_num_threads())
        self.interval = interval
        self.stat_path = stat_path
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.count = self.limit
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, int | None]:
        own = os.times()
        return time.monotonic(), own.user + own.system, busy_jiffies(self.cpus, self.stat_path)

    def others_busy(self, before, after) -> float | None:
        """Cores other processes kept busy between two samples (None without /proc/stat)."""
        if before[2] is None or after[2] is None or after[0] <= before[0]:
            return None
        others = (after[2] - before[2]) / self.tick - (after[1] - before[1])
        return max(0.0, others) / (after[0] - before[0])

    def threads(self) -> int:
        """The thread count to use now."""
        now = time.monotonic()
        if now - self._last[0] >= self.interval:
            sample = self._sample()
            busy = self.others_busy(self._last, sample)
            if busy is not None:
                self.count = max(1, min(self.limit, int(len(self.cpus) - busy + 0.5)))
            self._last = sample
        return self.count

    def applied(self):
        """A block in which torch runs on `threads()` threads (restored after)."""
        return FixedThreads(self.threads()).applied()


class FixedThreads:
    """A set thread count (None: torch's setting as it is) for the block, restored after."""

    def __init__(self, count: int | None):
        self.count = count

    @contextlib.contextmanager
    def applied(self):
        before = torch.get_num_threads()
        if self.count is not None and self.count != before:
            torch.set_num_threads(self.count)
        try:
            yield torch.get_num_threads()
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


def thread_policy(threads: str | int | None):
    """"auto" -> AdaptiveThreads; a count or None -> FixedThreads."""
    if threads == "auto":
        return AdaptiveThreads()
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be 'auto', a positive count or None, got {threads!r}")
    return FixedThreads(threads)
