"""The training curves as a PNG: train loss, test outputs and auxiliary loss weights.

The curves are read back from the solver's glog-style log (with the regexes of
Caffe's tools/extra/parse_log.py), so a resumed run, which appends to the same log,
is drawn whole.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from runner.atomic import atomic_write_bytes  # noqa: E402
from runner.figure_png import figure_png  # noqa: E402


_ITERATION = re.compile(r"Iteration (\d+)")
_TRAIN_LOSS = re.compile(r"Iteration \d+(?: \(.*\))?, loss = ([\.\deE+-]+|nan|inf)")
_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
_AUX_WEIGHT = re.compile(r"aux (\S+) weight = ([\.\deE+-]+)")


@dataclass
class TrainingHistory:
    """Curves by iteration: smoothed train loss, test outputs, auxiliary weights."""
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    test: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    aux_weights: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def read_history(log_path: str) -> TrainingHistory:
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


def _series(ax, points, label, **kw):
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=label, **kw)


def plot_history(history: TrainingHistory, path: str, title: str = "") -> None:
    """Draw loss / test outputs / aux weights against iterations into `path` (PNG)."""
    fig, axes = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
    loss_ax, test_ax, aux_ax = axes
    _series(loss_ax, history.train_loss, "train loss (smoothed)")
    for name, points in history.test.items():
        if "loss" in name:
            _series(loss_ax, points, f"test {name}", marker="o")
    loss_ax.set_ylabel("loss")
    loss_ax.legend(loc="upper right")
    for name, points in history.test.items():
        if "loss" not in name:
            _series(test_ax, points, f"test {name}", marker="o")
    test_ax.set_ylabel("test output")
    if test_ax.get_legend_handles_labels()[0]:
        test_ax.legend(loc="lower right")
    for name, points in history.aux_weights.items():
        _series(aux_ax, points, name, drawstyle="steps-post")
    aux_ax.set_ylabel("aux loss weight")
    aux_ax.set_xlabel("iteration")
    if history.aux_weights:
        aux_ax.legend(loc="upper right")
    else:
        aux_ax.text(0.5, 0.5, "no auxiliary losses", ha="center", va="center",
                    transform=aux_ax.transAxes)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write_bytes(path, figure_png(fig, dpi=100))
