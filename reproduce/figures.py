"""The report's pictures: test error against iterations per depth (read back from the
solver logs), and the gradient probe's plots and numbers (from its folder and result)."""
from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reproduce.claims import ProbeSummary  # noqa: E402
from runner.atomic import atomic_write_bytes  # noqa: E402
from runner.figure_png import figure_png  # noqa: E402
from runner.solver.log_reader import read_history  # noqa: E402

PROBE_PLOTS = ("probe.png", "probe_before_after.png")
STYLES = ("-", "--", ":", "-.")


def plot_curves(results: list[dict], path: Path, title: str, chance: float) -> None:
    """Top-1 test error (1 - accuracy, in %) and smoothed train loss against iterations;
    one colour per row, one line style per seed; chance error dashed."""
    fig, (err_ax, loss_ax) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    labels = list(dict.fromkeys(r["label"] for r in results))
    colours = dict(zip(labels, plt.cm.tab10.colors))
    seeds = sorted({r["seed"] for r in results})
    for r in results:
        history = read_history(r["log"])
        style = STYLES[seeds.index(r["seed"]) % len(STYLES)]
        name = r["label"] + (f" seed {r['seed']}" if len(seeds) > 1 else "")
        points = history.test.get("accuracy", [])
        if points:
            xs, ys = zip(*points)
            err_ax.plot(xs, [100.0 * (1.0 - y) for y in ys], style, marker="o", ms=3,
                        color=colours[r["label"]], label=name)
        if history.train_loss:
            xs, ys = zip(*history.train_loss)
            loss_ax.plot(xs, ys, style, color=colours[r["label"]], label=name, lw=1)
    err_ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.0f}%)")
    err_ax.set_ylabel("top-1 test error (%)")
    loss_ax.set_ylabel("train loss (smoothed, all losses)")
    loss_ax.set_xlabel("iteration")
    for ax in (err_ax, loss_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write_bytes(path, figure_png(fig, dpi=90))


def curve_groups(results: list[dict]) -> dict[int, list[dict]]:
    """Runs to compare in one figure: the rows of each depth (pretraining rows left out)."""
    groups: dict[int, list[dict]] = {}
    for r in results:
        if not r["pretrain_only"]:
            groups.setdefault(r["depth"], []).append(r)
    return dict(sorted(groups.items()))


def copy_probe_plots(probe_dir: Path, reports: Path, prefix: str) -> list[str]:
    """Copy the probe's PNGs next to the report as <prefix>_<name>; the names copied."""
    names = []
    for name in PROBE_PLOTS:
        source = probe_dir / name
        if source.exists():
            target = reports / f"{prefix}_{name}"
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
            names.append(target.name)
    return names


def summarize_probe(probe: dict, net: str) -> ProbeSummary:
    """The vanishing trunk conv layers of the plain net's probe and of the probe with the
    suggested branches (the last round when those were not probed), as the probe's JSON
    result (probe.json) gives them."""
    rounds = {r["branches"]: r for r in probe["rounds"]}
    names = list(rounds)
    after = probe["branches"] if probe["branches"] in rounds else names[-1]
    return ProbeSummary(net, probe["iters"], probe["threshold"], rounds[names[0]]["vanishing"],
                        len(names), after, rounds[after]["vanishing"])
