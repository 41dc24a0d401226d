"""What a probe leaves behind: probe.csv, the Fig. 2(a)-style PNG of the plain net, the
Fig. 2(b-d)-style before/after PNG, and the per-round table printed on stdout."""
from __future__ import annotations

import csv
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from generator.probe.placement import Placement, ProbeRound, taps_label  # noqa: E402
from runner.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from runner.deep_supervision import is_aux, vanishes  # noqa: E402
from runner.figure_png import figure_png  # noqa: E402

CSV_COLUMNS = ("branches", "iteration", "layer", "mean_abs_grad")
MAX_PANELS = 4
PALETTE = 64


def write_csv(path, rounds: list[ProbeRound]) -> None:
    """One row per round, iteration (0-based) and learnable layer."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rounds:
        for it, row in enumerate(r.record.values):
            for layer, value in zip(r.record.layers, row):
                writer.writerow((taps_label(r.taps), it, layer, f"{value:.6e}"))
    atomic_write_text(path, buf.getvalue())


def read_csv(path) -> dict[str, dict[str, list[float]]]:
    """probe.csv back as {branches: {layer: values by iteration}}."""
    out: dict[str, dict[str, list[float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["branches"], {}).setdefault(row["layer"], []).append(
                float(row["mean_abs_grad"]))
    return out


def _save(fig, path) -> None:
    """Write the figure as a PNG with a 64-colour palette (a quarter of the bytes)."""
    image = Image.open(io.BytesIO(figure_png(fig, dpi=80))).convert("RGB").quantize(colors=PALETTE, method=Image.Quantize.MEDIANCUT)
    small = io.BytesIO()
    image.save(small, format="PNG", optimize=True)
    atomic_write_bytes(path, small.getvalue())


def _positive(values: np.ndarray) -> np.ndarray:
    """Zeros (a layer no loss reaches) cannot sit on a log axis: drawn as gaps."""
    return np.where(values > 0, values, np.nan)


def plot_layers(path, r: ProbeRound, threshold: float, title: str) -> None:
    """Fig. 2(a): mean |dE/dW| per trunk layer against iterations, log y, threshold dashed."""
    layers = [(i, name) for i, name in enumerate(r.record.layers) if not is_aux(name)]
    colours = plt.cm.viridis(np.linspace(0, 0.95, len(layers)))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    iters = np.arange(len(r.record.values))
    for colour, (i, name) in zip(colours, layers):
        ax.plot(iters, _positive(r.record.values[:, i]), color=colour, label=name, lw=1.4)
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean |dE/dW| of the weight blob")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=7, ncol=2 if len(layers) > 10 else 1, loc="center left",
              bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    _save(fig, path)


def panel_convs(taps: tuple[int, ...], n_convs: int) -> list[int]:
    """The lower conv layers shown before/after: up to MAX_PANELS evenly spread over
    conv 1 .. the deepest tap (both included); fewer taps than panels leave room for the
    convs just above the deepest tap, which show what the branches do not reach."""
    top = max(taps)
    picks = np.linspace(1, top, min(MAX_PANELS, top)).round().astype(int).tolist()
    above = range(top + 1, min(n_convs, top + MAX_PANELS - len(set(picks))) + 1)
    return sorted(set(picks) | set(above))


def plot_before_after(path, placement: Placement, threshold: float, title: str) -> None:
    """Fig. 2(b-d): chosen lower convs, plain net against `placement.after` (the net with
    the suggested taps, or the first branch tried when none is suggested), each on a log
    axis with the threshold dashed."""
    before, after = placement.rounds[0], placement.after
    convs = panel_convs(after.taps, len(before.convs))
    fig, axes = plt.subplots(1, len(convs), figsize=(3.2 * len(convs), 3.4), sharey=True,
                             squeeze=False)
    for ax, k in zip(axes[0], convs):
        name = before.convs[k - 1]
        for r, label, style in ((before, "plain net", "-"),
                                (after, f"branches {taps_label(after.taps)}", "-")):
            values = r.record.values[:, r.record.layers.index(name)]
            ax.plot(_positive(values), style, label=label, lw=1.5)
        ax.axhline(threshold, color="black", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"conv {k} ({name})", fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean |dE/dW|")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def probe_line(r: ProbeRound, threshold: float) -> str:
    """One line per probe: its taps, time, loss and the conv means (vanishing ones with *)."""
    means = " ".join(f"{m:.1e}{'*' if vanishes(m, threshold) else ''}" for m in r.conv_means())
    return (f"probe with branches {taps_label(r.taps)} ({len(r.record.values)} iterations, "
            f"{r.record.seconds:.1f} s, loss {r.record.losses[0]:.4f} -> "
            f"{r.record.losses[-1]:.4f}); conv means: {means}")


def round_table(r: ProbeRound, threshold: float) -> str:
    """The round's conv statistics, one line each, vanishing ones marked."""
    lines = [f"round with branches {taps_label(r.taps)} ({len(r.record.values)} iterations, "
             f"{r.record.seconds:.1f} s, loss {r.record.losses[0]:.4f} -> {r.record.losses[-1]:.4f})"]
    for k, (name, mean) in enumerate(zip(r.convs, r.conv_means()), start=1):
        mark = "vanishes" if vanishes(mean, threshold) else ""
        lines.append(f"  conv {k:2d} {name:<10} {mean:.3e} {mark}".rstrip())
    return "\n".join(lines)
