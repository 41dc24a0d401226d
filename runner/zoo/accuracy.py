"""The accuracy a published model states: its shipped weights scored on the train_val's
TEST net (what `solve.py test` reports), or a plain "not measured" with the reason. A
training-log test is quoted only when it was taken of the same weights (the snapshot's
iteration)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from runner.proto import read_solver
from runner.solver.caffe_log import CaffeLog
from runner.solver.snapshot import weights_base
from runner.zoo.describe import last_test_outputs

DEFAULT_ITERATIONS = 50  # caffe test's default when the solver gives no test_iter


@dataclass
class Score:
    """Mean of each TEST-net output over `iterations` batches of `batch` images."""
    outputs: dict[str, float]
    iterations: int
    batch: int


def solver_test_iterations(solver_path: Path) -> int:
    """The solver's test_iter (its first test net), else caffe test's default."""
    solver = read_solver(solver_path)
    return solver.test_iter[0] if solver.test_iter else DEFAULT_ITERATIONS


def score_weights(train_val: Path, weights: Path, iterations: int) -> Score | str:
    """Score `weights` as `solve.py test --model train_val --weights weights` does; a
    string says why it could not be scored (e.g. the test data is not on this machine)."""
    from runner import Net
    from runner.solver.evaluate import score_net
    try:
        net = Net(train_val, phase="TEST", weights=str(weights))
    except (ValueError, OSError) as err:
        return f"the TEST net could not be built with its data ({err})"
    if not net.sources:
        return "the TEST net has no data layer"
    batch = next(iter(net.blob_shapes[name][0] for name in net.input_names), 0)
    scores = score_net(net, iterations, torch.device("cpu"), CaffeLog(enabled=False))
    outputs = {name: values[0] for name, values in scores.outputs.items() if len(values) == 1}
    return Score(outputs, iterations, batch)


def snapshot_iteration(weights: Path) -> int | None:
    match = re.search(r"_iter_(\d+)$", weights_base(weights))
    return int(match.group(1)) if match else None


def accuracy_text(score: Score | str | None, weights: Path, log: Path | None) -> str:
    """The readme's "Measured accuracy" section body."""
    if isinstance(score, Score):
        lines = [f"The shipped weights ({weights.name}) scored on the TEST phase of "
                 f"train_val.prototxt, {score.iterations} batch{'es' if score.iterations != 1 else ''} "
                 f"of {score.batch} images, as "
                 f"`python runner/solve.py test --model train_val.prototxt --weights "
                 f"{weights.name} --iterations {score.iterations}` reports:\n",
                 "| output | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in score.outputs.items()]
    else:
        why = score or "scoring was not asked for"
        lines = [f"Not measured on the shipped weights ({weights.name}): {why}."]
    quoted = _log_test_of(weights, log)
    if quoted:
        lines += ["", quoted]
    return "\n".join(lines)


def _log_test_of(weights: Path, log: Path | None) -> str:
    """The training log's test of these same weights, if it has one."""
    if log is None:
        return ""
    last = last_test_outputs(log)
    iteration = snapshot_iteration(weights)
    if last is None or iteration is None or last[0] != iteration:
        return ""
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in last[1].items())
    return (f"Test in the training log ({log.name}) at iteration {iteration}, the snapshot "
            f"shipped here:\n\n| output | value |\n|---|---|\n{rows}")
