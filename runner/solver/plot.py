"""The training curves as a PNG: train loss, test outputs and auxiliary loss weights,
as read back from the solver's log (runner/solver/log_reader.py)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from runner.atomic import atomic_write_bytes  # noqa: E402
from runner.figure_png import figure_png  # noqa: E402
from runner.solver.log_reader import TrainingHistory  # noqa: E402


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
    if loss_ax.get_legend_handles_labels()[0]:   # display: 0 logs no training loss
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
