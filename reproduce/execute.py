"""The steps of one run, each through the project's own command line: render the net
(`python -m generator`), train it (`python runner/solve.py solver`, resumed from its last
snapshot when one exists), score the final weights (`python runner/solve.py test`), and
the gradient probe (`python -m generator.probe`). Output of each command goes to a file
in the run's folder; a failing command raises StepFailed with the tail of that file."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reproduce.plan import Run, Schedule
from runner.atomic import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
SOLVE = REPO / "runner" / "solve.py"
_ITERATION = re.compile(rb"\] Iteration (\d+)")
_SNAPSHOT = re.compile(r"_iter_(\d+)\.solverstate$")
_TEST_MEAN = re.compile(r"\] (\w+) = ([-+\w.]+)(?: \(\*.*\))?$")


class StepFailed(RuntimeError):
    """A command of the pipeline exited non-zero (the message quotes its output)."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class CommandTime:
    wall: float   # seconds from start to exit
    cpu: float    # user + system CPU seconds of the command's process


def run_command(argv: list[str], output: Path, what: str, append: bool = False,
                on_poll: Callable[[], None] | None = None) -> CommandTime:
    """Run `argv` with stdout and stderr into `output`; return its wall-clock and CPU time
    (its own, so commands run at once from several threads are timed apart).
    `on_poll` is called about once a second while it runs (progress)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(output, "ab" if append else "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=_env())
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
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
    return CommandTime(time.perf_counter() - start, usage.ru_utime + usage.ru_stime)


def generate(run: Run, init: str, width: float | None) -> None:
    """Render the run's net folder with the generator (skipped when it exists and was
    rendered with the same settings, which generate.args records)."""
    settings = [f"DEPTH={run.row.depth}", f"VARIANT={run.row.variant}", f"DATASET={run.dataset}",
                f"INIT={init}", f"WIDTH={width or ''}"]
    stamp = run.root / "generate.args"
    files = (run.train_val, run.solver, run.deploy)
    if all(f.exists() for f in files) and stamp.exists() and stamp.read_text() == " ".join(settings):
        return
    run_command([sys.executable, "-m", "generator", *settings, "--out", str(run.root)],
                run.root / "generate.out", f"generator for {run.label}")
    atomic_write_text(stamp, " ".join(settings))


def iterations_logged(log: Path) -> int:
    """The last iteration a solver log mentions (0 when there is none)."""
    try:
        data = log.read_bytes()
    except OSError:
        return 0
    found = _ITERATION.findall(data[-20000:])
    return int(found[-1]) if found else 0


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
    seconds: float              # wall-clock seconds over every attempt
    cpu_seconds: float | None   # user + system CPU seconds of the solver processes
    attempts: int


def trained(run: Run, sched: Schedule) -> TrainOutcome | None:
    """The finished training of a run, or None when it has to (re)start or resume."""
    done = run.root / "train.json"
    if not done.exists() or not run.snapshot(sched.max_iter).exists():
        return None
    info = json.loads(done.read_text())
    if info.get("max_iter") != sched.max_iter:
        return None
    return TrainOutcome(info["seconds"], info.get("cpu_seconds"), info["attempts"])


def train(run: Run, sched: Schedule, weights: Path | None, gpu: str | None,
          on_poll: Callable[[], None] | None = None) -> TrainOutcome:
    """Train the run to sched.max_iter, resuming from its newest snapshot if any."""
    argv = [sys.executable, str(SOLVE), str(run.solver)]
    resume = latest_state(run, sched.max_iter)
    if resume is not None:
        argv += ["--snapshot", str(resume[1])]
    elif weights is not None:
        argv += ["--weights", str(weights)]
    if gpu is not None:
        argv += ["--gpu", gpu]
    if resume is None:
        run.attempts.unlink(missing_ok=True)   # a fresh start: earlier attempts are void
    start, spent = time.perf_counter(), None
    try:
        spent = run_command(argv, run.root / "train.out", f"training {run.label}",
                            append=resume is not None, on_poll=on_poll)
    finally:  # an interrupted attempt's time counts too: the resumed run builds on it
        with open(run.attempts, "a", encoding="utf-8") as f:
            # the CPU time of an attempt that did not end normally is unknown
            f.write(f"{time.perf_counter() - start:.1f}" + (f" {spent.cpu:.1f}\n" if spent else "\n"))
    attempts = [[float(x) for x in line.split()] for line in run.attempts.read_text().splitlines()
                if line.strip()]
    cpu_seconds = (sum(a[1] for a in attempts) if all(len(a) == 2 for a in attempts) else None)
    outcome = TrainOutcome(sum(a[0] for a in attempts), cpu_seconds, len(attempts))
    atomic_write_text(run.root / "train.json", json.dumps(
        {"max_iter": sched.max_iter, "seconds": outcome.seconds,
         "cpu_seconds": outcome.cpu_seconds, "attempts": outcome.attempts}))
    _drop_intermediate_snapshots(run, sched.max_iter)
    return outcome


def _drop_intermediate_snapshots(run: Run, max_iter: int) -> None:
    """Keep the final snapshot only (the solver log keeps the curves)."""
    final = {run.snapshot(max_iter).name, run.snapshot(max_iter, "solverstate").name}
    for path in run.prefix.parent.glob(f"{run.prefix.name}_iter_*"):
        if path.name not in final:
            path.unlink()


def parse_test_output(text: str) -> dict[str, float]:
    """The averaged outputs `caffe test` logs last (`] accuracy = 0.91`), by name."""
    means = {}
    for line in text.splitlines():
        if "Batch " in line:
            continue
        m = _TEST_MEAN.search(line.rstrip())
        if m:
            means[m.group(1)] = float(m.group(2))
    return means


def final_test(run: Run, iterations: int, max_iter: int, gpu: str | None) -> tuple[dict[str, float], float]:
    """Score the final weights on the TEST phase of train_val: (outputs, seconds)."""
    argv = [sys.executable, str(SOLVE), "test", "--model", str(run.train_val),
            "--weights", str(run.snapshot(max_iter)), "--iterations", str(iterations)]
    if gpu is not None:
        argv += ["--gpu", gpu]
    seconds = run_command(argv, run.test_log, f"testing {run.label}").wall
    outputs = parse_test_output(run.test_log.read_text(encoding="utf-8", errors="replace"))
    if "accuracy" not in outputs:
        raise StepFailed(f"testing {run.label}: no 'accuracy' output in {run.test_log}")
    return outputs, seconds


def probe(train_val: Path, out: Path, iters: int, batch: int, threshold: float, seed: int) -> Path:
    """The gradient probe on `train_val`; its stdout goes to <out>/probe.out."""
    argv = [sys.executable, "-m", "generator.probe", str(train_val), "--iters", str(iters),
            "--threshold", repr(threshold), "--seed", str(seed), "--out", str(out)]
    if batch:
        argv += ["--batch", str(batch)]
    run_command(argv, out / "probe.out", "gradient probe")
    return out / "probe.out"
