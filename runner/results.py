"""The small JSON result a command writes beside its Caffe-style log (`caffe-ds train`,
`caffe-ds test`, the gradient probe): what it did, as data, so that no program has to
parse logs or stdout. docs/results.md lists the fields.

Written atomically; non-finite numbers (a diverged loss) are written as null.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from runner.atomic import atomic_write_text


class ResultError(ValueError):
    """A result file that cannot be read (names the file and why)."""


def _finite(value):
    """`value` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_result(path: str | os.PathLike, record: dict) -> None:
    """Write `record` as JSON at `path` (atomically)."""
    atomic_write_text(path, json.dumps(_finite(record), indent=1, allow_nan=False) + "\n")


def read_result(path: str | os.PathLike) -> dict:
    """A result file back as a dict; ResultError when it is missing or malformed."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultError(f"{path}: cannot read the result file ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ResultError(f"{path}:{exc.lineno}:{exc.colno}: not a JSON result file ({exc.msg})") from None
    if not isinstance(record, dict):
        raise ResultError(f"{path}: expected a JSON object, got {type(record).__name__}")
    return record


def scalar_or_list(values: list[float]) -> float | list[float]:
    """A net output's values: one number for a scalar output, else the list."""
    return values[0] if len(values) == 1 else list(values)


def _proc_cpu(pid: int | str) -> float:
    """User + system CPU seconds of a live process and of its reaped children (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _children(pid: int | str) -> list[str]:
    """Live children of a process, from /proc/<pid>/task/*/children."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += (task / "children").read_text().split()
        except OSError:
            pass
    return found


def process_tree_cpu() -> float:
    """User + system CPU seconds of this process, its reaped children and (on Linux) its
    live descendants, such as the data worker processes."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    pending = _children(os.getpid()) if Path("/proc/self/task").is_dir() else []
    while pending:
        pid = pending.pop()
        try:
            total += _proc_cpu(pid)
            pending += _children(pid)
        except OSError:   # it exited meanwhile (and will be counted by its parent)
            pass
    return total


class ProcessClock:
    """Wall-clock and CPU seconds (process_tree_cpu) since it was made."""

    def __init__(self):
        self.wall_start = time.perf_counter()
        self.cpu_start = process_tree_cpu()

    def seconds(self) -> dict[str, float]:
        return {"wall_seconds": round(time.perf_counter() - self.wall_start, 3),
                "cpu_seconds": round(process_tree_cpu() - self.cpu_start, 3)}
