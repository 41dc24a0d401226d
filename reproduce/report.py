"""reports/<dataset>[-<preset>].md from the stored results of a reproduction: protocol, a Table 1
with mean ± half-range over seeds, the verdict on each claim by the rules of
reproduce/claims.py, the curves and the gradient probe. Nothing in it is typed by hand:
every number comes from the runs' result.json files, which gather the JSON results of the
commands (docs/results.md), and the curves from the solver logs."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch

from generator.datasets import DATASETS
from generator.summary import shape_table
from reproduce.claims import (HELD, INCONCLUSIVE, NOT_HELD, STANDARD_INITS, Judge, RowStats,
                             row_stats, spread)
from reproduce.config import Protocol
from reproduce.figures import copy_probe_plots, curve_groups, plot_curves, summarize_probe
from runner.atomic import atomic_write_text
from runner.results import read_result
from runner.proto import read_net, read_solver

INIT_WORDS = {
    "released": "gaussian std 0.01 weights, released biases (conv1 0.5, convs 0.1, fc6/fc7 1, "
                "branch 1x1 conv 0.1 and fc 1, classifiers 0)",
    "vanilla": "gaussian std 0.01 weights, zero biases",
    "msra": "Caffe's msra filler (He et al.: gaussian with variance 2/fan_in), zero biases - "
            "not the paper's initialisation",
}


def format_seconds(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{s:02d}s" if hours else f"{minutes}m{s:02d}s"


def pm(mean: float, half: float, seeds: int, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if seeds > 1 else f"{mean:.{digits}f}"


def copied_layers(source_deploy: str, target_deploy: str) -> list[str]:
    """Layers whose blobs Caffe's copy-by-name moves from one net to the other: the same
    name and the same blob shapes in both deploy nets."""
    def blobs(path):
        return {r.name: r.blobs for r in shape_table(read_net(path), "TEST") if r.blobs}
    src, dst = blobs(source_deploy), blobs(target_deploy)
    return [name for name in dst if src.get(name) == dst[name]]


def time_cell(values: list[float | None]) -> str:
    """Mean ± half-range of per-run seconds, or '-' when some run did not record them."""
    if not values or any(v is None for v in values):
        return "-"
    cell = format_seconds(statistics.fmean(values))
    return cell + (f" ± {format_seconds(spread(values))}" if len(values) > 1 else "")


def table(rows: list[RowStats], results: list[dict]) -> list[str]:
    lines = ["| Net | Init | Seeds | Top-1 error (%) | Top-5 error (%) | Epochs | Iterations "
             "| Training time per run | CPU time per run | Params (deploy) | MACs per image |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        runs = [x for x in results if x["label"] == r.label]
        init = f"from {r.init_from}" if r.init_from else runs[0]["init"]
        top5 = pm(r.top5, r.top5_spread, r.seeds) if r.top5 is not None else "-"
        wall = time_cell([x["train_seconds"] for x in runs])
        cpu = time_cell([x.get("train_cpu_seconds") for x in runs])
        lines.append(f"| {r.label}{' (pretraining)' if r.pretrain_only else ''} | {init} | {r.seeds} "
                     f"| {pm(r.top1, r.top1_spread, r.seeds)} | {top5} | {runs[0]['epochs']:.2f} "
                     f"| {runs[0]['max_iter']:,} | {wall} | {cpu} | {r.params:,} | {r.macs:,} |")
    return lines


def protocol_section(protocol: Protocol, results: list[dict]) -> list[str]:
    first = results[0]
    solver = read_solver(first["solver"])
    ds = DATASETS[protocol.dataset]
    lines = [
        "## Protocol",
        f"- Dataset: {protocol.dataset}, {first['train_images']:,} training images; the final "
        f"test scores the first {first['test_images']:,} of the {first['test_set']:,} test images "
        f"({first['test_iterations']} batches of `python runner/solve.py test`).",
        f"- Initialisation of every row trained from scratch: `INIT={protocol.init}`, "
        f"{INIT_WORDS[protocol.init]}.",
        f"- Schedule, the same for every row: {first['max_iter']:,} iterations at batch "
        f"{first['train_batch']} ({first['epochs']:.2f} epochs); SGD, base_lr "
        f"{solver.base_lr:g}, momentum {solver.momentum:g}, weight decay {solver.weight_decay:g}, "
        f"lr x {solver.gamma:g} every {solver.stepsize:,} iterations (`{solver.lr_policy}`); "
        f"auxiliary loss weights decayed per epoch by the paper's Eq. 2.",
        f"- Seeds (solver `random_seed`: fillers and dropout): {', '.join(map(str, protocol.seeds))}.",
    ]
    for r in results:
        if r["init_from"] and r["seed"] == protocol.seeds[0]:
            source = next(x for x in results if x["label"] == r["init_from"] and x["seed"] == r["seed"])
            layers = copied_layers(source["deploy"], r["deploy"])
            lines.append(f"- {r['label']}: starts from the final {r['init_from']} weights of the same "
                         f"seed (`--weights`, Caffe's copy by layer name), which sets "
                         f"{', '.join(layers)}; its other layers keep their filler init - the "
                         f"Simonyan-Zisserman recipe of the paper's CNN-8 baseline.")
    device = first.get("device") or (f"GPU {first['gpu']}" if first.get("gpu") is not None else
                                      f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    jobs = max(r.get("jobs", 1) for r in results)
    at_once = f"; up to {jobs} runs trained at once, sharing it" if jobs > 1 else ""
    lines.append(f"- Machine: {device}, {platform.processor() or platform.machine()}{at_once}; "
                 f"{ds.num_classes} classes (chance top-1 error {100 * (1 - 1 / ds.num_classes):.2f}%). "
                 "Training time is wall-clock and includes the tests during training; CPU time "
                 "(user + system of the solver process and its data workers) is less disturbed by other load.")
    return lines


def claims_section(verdicts, poor_within: float) -> list[str]:
    lines = ["## Claims, as measured",
             "Rules (reproduce/claims.py, numbers from reproduce/config.yaml): a row is lower than "
             "another when its mean top-1 error is lower by more than the margin and the two "
             f"half-ranges over seeds; a net trains poorly when its top-1 error is within "
             f"{poor_within:g} points of chance; a comparison between rows that all train poorly "
             "is inconclusive.", ""]
    lines += [f"- **{v.status}** - {v.claim}: {v.evidence}." for v in verdicts]
    counts = []
    for status, word in ((HELD, "held"), (NOT_HELD, "did not hold"), (INCONCLUSIVE, "were inconclusive")):
        claims = [v.claim for v in verdicts if v.status == status]
        if claims:
            counts.append(f"{len(claims)} {word} ({'; '.join(claims)})")
    tested = sum(v.status in (HELD, NOT_HELD, INCONCLUSIVE) for v in verdicts)
    lines += ["", f"Of the {tested} claims tested here, " + ", ".join(counts) + "."]
    return lines


def runs_table(results: list[dict]) -> list[str]:
    lines = ["## Runs", "| Run | Top-1 error (%) | Top-5 error (%) | Iterations | Training time "
             "| Attempts | Solver log |", "|---|---|---|---|---|---|---|"]
    for r in results:
        top5 = f"{r['top5_error']:.2f}" if r["top5_error"] is not None else "-"
        lines.append(f"| {r['label']} seed {r['seed']} | {r['top1_error']:.2f} | {top5} "
                     f"| {r['max_iter']:,} | {format_seconds(r['train_seconds'])} | {r['attempts']} "
                     f"| `{r['log']}` |")
    return lines


def write_report(protocol: Protocol, results: list[dict], probe_dir: Path | None, path: Path,
                 pending: list[str] = ()) -> None:
    """Write the report and its PNGs (named <report name>_*.png beside it); `pending` names
    the runs still to come (the report is then marked partial)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = path.stem
    probe = None
    probe_lines: list[str] = []
    if probe_dir is not None and protocol.probe is not None and (probe_dir / "probe.json").exists():
        info = read_result(probe_dir / "probe.json")
        probe = summarize_probe(info, protocol.probe.net)
        batch = f"batch {info['batch']}" if info["batch"] else "the net's batch"
        probe_lines = ["## Gradient probe",
                       f"`python -m generator.probe {info['train_val']} --iters {info['iters']}` "
                       f"(plain init: gaussian std 0.01, zero biases; {batch}), "
                       f"{format_seconds(info['wall_seconds'])}. Mean |dE/dW| per layer:", ""]
        probe_lines += [f"![{name}]({name})" for name in copy_probe_plots(probe_dir, path.parent, prefix)]
    rows = row_stats(results)
    judge = Judge(rows, protocol.claims, DATASETS[protocol.dataset].num_classes, probe,
                  standard_init=protocol.init in STANDARD_INITS)
    curves = []
    for depth, group in curve_groups(results).items():
        name = f"{prefix}_curves_depth{depth}.png"
        plot_curves(group, path.parent / name, f"{protocol.dataset}: depth {depth}, preset "
                    f"{protocol.preset}", judge.chance)
        curves.append(f"![depth {depth}]({name})")
    total = sum(r["train_seconds"] for r in results)
    command = f"make reproduce DATASET={protocol.dataset} PRESET={protocol.preset}"
    lines = [f"# Deep supervision on {protocol.dataset}: reproduction (preset `{protocol.preset}`)", "",
             f"Written by `{command}` on {time.strftime('%Y-%m-%d')} from {len(results)} runs; every "
             f"number is read from the runs' JSON results and logs. Training time in all: {format_seconds(total)}.", ""]
    if pending:
        lines += [f"**Partial report**: {len(results)} of {len(results) + len(pending)} runs "
                  f"finished; still to run: {', '.join(pending)}.", ""]
    lines += protocol_section(protocol, results) + [""]
    lines += ["## Table 1 (top-1/top-5 error on the test images scored; mean ± half-range over seeds)", ""]
    lines += table(rows, results) + [""]
    lines += claims_section(judge.verdicts(), protocol.claims.poor_within) + [""]
    lines += ["## Test error during training", ""] + curves + [""]
    if probe_lines:
        lines += probe_lines + [""]
    lines += runs_table(results)
    atomic_write_text(path, "\n".join(lines) + "\n")
