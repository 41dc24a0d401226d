"""The steps of one run, each through the project's own command line: train the rendered
net (`python -m runner.solve solver`, resumed from its last snapshot when one exists),
score the final weights (`python -m runner.solve test`), and the gradient probe
(`python -m generator.probe`). Each command writes its JSON result (docs/results.md),
which is what is read back; its output goes to a file in the run's folder, and a failing
command raises StepFailed with the tail of that file."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from generator.schedule import Schedule
from reproduce.plan import Run
from runner.results import ResultError, read_result

SOLVE = [sys.executable, "-m", "runner.solve"]
_SNAPSHOT = re.compile(r"_iter_(\d+)\.solverstate$")


class StepFailed(RuntimeError):
    """A command of the pipeline exited non-zero (the message quotes its output)."""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_command(argv: list[str], output: Path, what: str, append: bool = False,
                on_poll: Callable[[], None] | None = None) -> None:
    """Run `argv` with stdout and stderr into `output`; `on_poll` is called about once a
    second while it runs (progress)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "ab" if append else "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                time.sleep(0.2 if on_poll is None else 1.0)
                if on_poll is not None:
                    on_poll()
        except BaseException:
            # Ctrl-C reaches the child too (same process group): let it snapshot and stop.
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if proc.returncode != 0:
        raise StepFailed(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n"
                         f"--- last lines of {output} ---\n{_tail(output)}")


def command_result(path: Path, what: str) -> dict:
    """The JSON result a command wrote; StepFailed when it is missing or unreadable."""
    try:
        return read_result(path)
    except ResultError as exc:
        raise StepFailed(f"{what}: {exc}") from None


def latest_state(run: Run, max_iter: int) -> tuple[int, Path] | None:
    """The newest .solverstate of the run below max_iter, to resume from."""
    best = None
    for path in run.prefix.parent.glob(f"{run.prefix.name}_iter_*.solverstate"):
        m = _SNAPSHOT.search(path.name)
        if m and int(m.group(1)) < max_iter and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), path)
    return best


@dataclass
class TrainOutcome:
    seconds: float          # wall-clock seconds over every attempt
    cpu_seconds: float      # user + system CPU seconds of the solver processes and workers
    attempts: int


def _outcome(result: dict) -> TrainOutcome:
    return TrainOutcome(result["wall_seconds"], result["cpu_seconds"], len(result["attempts"]))


def trained(run: Run, sched: Schedule) -> TrainOutcome | None:
    """The finished training of a run, or None when it has to (re)start or resume."""
    if not run.train_result.exists() or not run.snapshot(sched.max_iter).exists():
        return None
    try:
        result = read_result(run.train_result)
    except ResultError:
        return None
    if result.get("status") != "done" or result.get("iterations") != sched.max_iter:
        return None
    return _outcome(result)


def train(run: Run, sched: Schedule, weights: Path | None, gpu: str | None,
          on_poll: Callable[[], None] | None = None) -> TrainOutcome:
    """Train the run to sched.max_iter, resuming from its newest snapshot if any; the
    solver's result counts every attempt of a resumed run."""
    argv = [*SOLVE, str(run.solver), "--result", str(run.train_result)]
    resume = latest_state(run, sched.max_iter)
    if resume is not None:
        argv += ["--snapshot", str(resume[1])]
    elif weights is not None:
        argv += ["--weights", str(weights)]
    if gpu is not None:
        argv += ["--gpu", gpu]
    run_command(argv, run.root / "train.out", f"training {run.label}",
                append=resume is not None, on_poll=on_poll)
    result = command_result(run.train_result, f"training {run.label}")
    _drop_intermediate_snapshots(run, sched.max_iter)
    return _outcome(result)


def _drop_intermediate_snapshots(run: Run, max_iter: int) -> None:
    """Keep the final snapshot only (the solver log keeps the curves)."""
    final = {run.snapshot(max_iter).name, run.snapshot(max_iter, "solverstate").name}
    for path in run.prefix.parent.glob(f"{run.prefix.name}_iter_*"):
        if path.name not in final:
            path.unlink()


def final_test(run: Run, iterations: int, max_iter: int, gpu: str | None) -> dict:
    """Score the final weights on the TEST phase of train_val: its JSON result."""
    argv = [*SOLVE, "test", "--model", str(run.train_val), "--weights",
            str(run.snapshot(max_iter)), "--iterations", str(iterations),
            "--result", str(run.test_result)]
    if gpu is not None:
        argv += ["--gpu", gpu]
    run.test_result.unlink(missing_ok=True)
    run_command(argv, run.test_log, f"testing {run.label}")
    result = command_result(run.test_result, f"testing {run.label}")
    if "accuracy" not in result["outputs"]:
        raise StepFailed(f"testing {run.label}: no 'accuracy' output in {run.test_result}")
    return result


def probe(train_val: Path, out: Path, iters: int, batch: int, threshold: float, seed: int) -> dict:
    """The gradient probe on `train_val`; its stdout goes to <out>/probe.out, its JSON
    result (<out>/probe.json) is returned."""
    argv = [sys.executable, "-m", "generator.probe", str(train_val), "--iters", str(iters),
            "--threshold", repr(threshold), "--seed", str(seed), "--out", str(out)]
    if batch:
        argv += ["--batch", str(batch)]
    run_command(argv, out / "probe.out", "gradient probe")
    return command_result(out / "probe.json", "gradient probe")

