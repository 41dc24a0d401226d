"""The one reader of our glog-style solver log: the curves it holds (train loss, test
outputs, auxiliary loss weights) and how far a run has got.

Lines are matched with the regexes of Caffe's tools/extra/parse_log.py, so a log Caffe
wrote reads the same; a resumed run, which appends to the same log, reads whole.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

_ITERATION = re.compile(r"Iteration (\d+)")
_TRAIN_LOSS = re.compile(r"Iteration \d+(?: \(.*\))?, loss = ([\.\deE+-]+|nan|inf)")
_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
_AUX_WEIGHT = re.compile(r"aux (\S+) weight = ([\.\deE+-]+)")
TAIL_BYTES = 20_000


@dataclass
class TrainingHistory:
    """Curves by iteration: smoothed train loss, test outputs, auxiliary weights."""
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    test: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    aux_weights: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def read_history(log_path: str | os.PathLike) -> TrainingHistory:
    """Collect the curves from a solver log (lines as Caffe's solver.cpp writes them)."""
    history = TrainingHistory()
    it = -1
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _ITERATION.search(line)
            if m:
                it = int(m.group(1))
            if it < 0:
                continue
            if m := _TRAIN_LOSS.search(line):
                history.train_loss.append((it, float(m.group(1))))
            elif m := _TEST_OUTPUT.search(line):
                history.test.setdefault(m.group(2), []).append((it, float(m.group(3))))
            elif m := _AUX_WEIGHT.search(line):
                history.aux_weights.setdefault(m.group(1), []).append((it, float(m.group(2))))
    return history


def last_iteration(log_path: str | os.PathLike) -> int:
    """The last iteration a solver log mentions, read from its tail (0 when there is none
    or no log yet): cheap enough to poll while the run writes it."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return 0
    found = _ITERATION.findall(tail)
    return int(found[-1]) if found else 0
