"""The JSON results of `caffe-ds train` and `caffe-ds test` (fields: docs/results.md):
built from the Solver's own records and the scores, never from the log."""
from __future__ import annotations

import os
from pathlib import Path

from runner.results import ProcessClock, ResultError, read_result, scalar_or_list, write_result
from runner.solver.snapshot import weights_base


def train_result_path(snapshot_prefix: str) -> str:
    """Beside `<prefix>.log` and `<prefix>_training.png`."""
    return f"{snapshot_prefix}_result.json"


def test_result_path(weights: str) -> str:
    """Beside the (first) weights scored: `<name>_test.json` for `<name>.caffemodel` or
    `<name>.caffemodel.h5`."""
    return f"{weights_base(weights)}_test.json"


def best_scores(scores: list[tuple[int, dict[str, list[float]]]]) -> dict[str, dict]:
    """Per scalar output: its best value over the tests and the iteration it came at
    (lowest for outputs named *loss*, highest for the others; the first on ties)."""
    best: dict[str, dict] = {}
    for iteration, outputs in scores:
        for name, values in outputs.items():
            if len(values) != 1:
                continue
            lower = "loss" in name
            kept = best.get(name)
            if kept is None or (values[0] < kept["value"] if lower else values[0] > kept["value"]):
                best[name] = {"value": values[0], "iteration": iteration}
    return best


def test_summaries(solver) -> list[dict]:
    """Per test net: the last test's outputs, and the best of every test."""
    summaries = []
    for k in range(len(solver.test_nets)):
        scores = [(it, outputs) for it, net, outputs in solver.scores if net == k]
        last = scores[-1] if scores else None
        summaries.append({
            "net": k,
            "iteration": last[0] if last else None,
            "final": {n: scalar_or_list(v) for n, v in last[1].items()} if last else {},
            "best": best_scores(scores)})
    return summaries


def earlier_attempts(path: str) -> tuple[list[dict], list[str]]:
    """Attempts and snapshots of the result a resumed run continues (none when absent
    or unreadable: the run then reports this attempt alone)."""
    if not os.path.exists(path):
        return [], []
    try:
        record = read_result(path)
    except ResultError:
        return [], []
    return list(record.get("attempts", [])), list(record.get("snapshots", []))


def write_train_result(path: str, solver, solver_file: str | None, status: str,
                       clock: ProcessClock, resumed: bool) -> None:
    """The training run's result; a resumed run (like its log) adds to the earlier one."""
    attempts, snapshots = earlier_attempts(path) if resumed else ([], [])
    attempts.append({"from_iteration": solver.start_iter, "to_iteration": solver.iter,
                     "status": status, **clock.seconds()})
    snapshots += [s for s in solver.snapshots if s not in snapshots]
    write_result(path, {
        "command": "train",
        "solver": solver_file,
        "net": solver.net.name,
        "status": status,
        "iterations": solver.iter,
        "max_iter": solver.param.max_iter,
        "train_loss": solver.smoothed_loss,
        "tests": test_summaries(solver),
        "snapshots": snapshots,
        "log": solver.log_path,
        "plot": solver.plot_path if Path(solver.plot_path).exists() else None,
        "wall_seconds": round(sum(a["wall_seconds"] for a in attempts), 3),
        "cpu_seconds": round(sum(a["cpu_seconds"] for a in attempts), 3),
        "attempts": attempts,
    })


def write_test_result(path: str, model: str, weights: list[str], phase: str, iterations: int,
                      scores, clock: ProcessClock) -> None:
    """`caffe-ds test`'s result: the averaged outputs, as its log's last lines give them."""
    write_result(path, {
        "command": "test",
        "model": model,
        "weights": weights,
        "phase": phase,
        "iterations": iterations,
        "loss": scores.loss,
        "outputs": {name: scalar_or_list(v) for name, v in scores.outputs.items()},
        **clock.seconds(),
    })
