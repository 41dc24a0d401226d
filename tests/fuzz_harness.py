"""The fuzz suite: seeded mutants of every file format through the public entry points, each
input in a worker process under a memory limit (RLIMIT_AS) and a time limit.

    python tests/fuzz_harness.py --inputs 10000 [--seed 0] [--workers 2] [--save DIR]

An input passes when its entry point returns or raises one of the project's exceptions (a
class defined under runner/). It fails on any other exception, on running past the time
limit (a hang) and on the worker dying (a crash). Prints counts per format; exits 1 on any
failure, listing each with its format, mutators and the start of its error; --save keeps
the failing inputs.
"""
from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

os.environ["RUNNER_DATA_WORKERS"] = "0"          # data layers read in the input's process
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from fuzz_mutators import mutate  # noqa: E402
from fuzz_targets import FORMATS, datum_input, make_seeds  # noqa: E402

OUTCOMES = ("ok", "ours", "foreign", "hang", "crash")
FAILURES = ("foreign", "hang", "crash")
TARGET = "fuzz_targets:run"   # module:function(format, folder) that runs one input
STARTUP_SECONDS = 300         # a worker's imports, on a busy machine


@dataclass
class Input:
    index: int
    format: str
    data: bytes
    how: str          # the mutators applied


def make_inputs(count: int, seed: int, seeds: Path) -> list[Input]:
    """`count` mutants, formats in turn, each from its own Generator (seed, index)."""
    names = list(FORMATS)
    inputs = []
    for index in range(count):
        name = names[index % len(names)]
        rng = np.random.default_rng([seed, index])
        original = (seeds / FORMATS[name].seed).read_bytes()
        if FORMATS[name].mutators is None:
            data, how = datum_input(original, rng, mutate)
        else:
            data, how = mutate(original, FORMATS[name].mutators, rng)
        inputs.append(Input(index, name, data, how))
    return inputs


def classify(exc: BaseException) -> str:
    """'ours' for an exception class defined in the project, 'foreign' otherwise."""
    return "ours" if type(exc).__module__.split(".")[0] == "runner" else "foreign"


def run_one(item: Input, seeds: Path, scratch: Path, target: str = TARGET) -> tuple[str, str]:
    """Run one input in a fresh copy of the seeds; (outcome, message)."""
    module, function = target.split(":")
    run = getattr(importlib.import_module(module), function)
    folder = Path(tempfile.mkdtemp(dir=scratch))
    try:
        shutil.copytree(seeds, folder, dirs_exist_ok=True)
        if item.format in FORMATS:
            (folder / FORMATS[item.format].seed).write_bytes(item.data)
        return run(item.format, folder) or "ok", ""
    except Exception as exc:  # the point: sort every exception into ours or foreign
        outcome = classify(exc)
        text = f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:400]}"
        if outcome == "foreign":
            text += "\n" + "".join(traceback.format_tb(exc.__traceback__)[-4:])
        return outcome, text
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _worker(conn, seeds: Path, scratch: Path, memory: int, cpu_seconds: int, target: str) -> None:
    """Serve inputs from `conn` until it closes, under the resource limits."""
    import torch
    torch.set_num_threads(1)
    # the solver's log and the CLIs' messages (FUZZ_WORKER_LOG keeps them, for debugging)
    quiet = os.open(os.environ.get("FUZZ_WORKER_LOG", os.devnull),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    importlib.import_module(target.split(":")[0])
    conn.send("ready")   # the time limit counts from here, not from the imports
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]   # only the soft limit moves
        resource.setrlimit(resource.RLIMIT_CPU, (_cpu_used() + cpu_seconds, hard))
        conn.send(run_one(item, seeds, scratch, target))


def _cpu_used() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int(usage.ru_utime + usage.ru_stime) + 1


class Worker:
    """A worker process and the input it is running."""

    def __init__(self, context, seeds, scratch, memory, timeout, target):
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=_worker, daemon=True,
                                    args=(child, seeds, scratch, memory, int(timeout) + 5, target))
        self.proc.start()
        child.close()
        try:
            ready = self.conn.poll(STARTUP_SECONDS) and self.conn.recv() == "ready"
        except EOFError:
            ready = False
        if not ready:
            self.kill()
            raise RuntimeError(f"a fuzz worker did not start within {STARTUP_SECONDS} s")
        self.item: Input | None = None
        self.started = 0.0

    def send(self, item: Input) -> None:
        self.item, self.started = item, time.monotonic()
        self.conn.send(item)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()

    def stop(self) -> None:
        """End an idle worker the way it ends by itself (its input pipe closes), so it
        cleans up after itself; kill it if it does not."""
        self.conn.close()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def fuzz(inputs: list[Input], seeds: Path, *, workers: int = 1, timeout: float = 20.0,
         memory: int = 3 << 30, progress=None, target: str = TARGET) -> dict:
    """Run `inputs`; returns {"counts": {format: Counter}, "failures": [(Input, outcome, text)]}."""
    # Workers fork from a server that imported everything once (and ran no torch threads).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["fuzz_harness", target.split(":")[0]])
    counts: dict[str, Counter] = defaultdict(Counter)
    failures = []
    pending = list(reversed(inputs))
    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        def start():
            return Worker(context, seeds, Path(scratch), memory, timeout, target)

        pool = [start() for _ in range(workers)]
        try:
            while pending or any(w.item for w in pool):
                for i, w in enumerate(pool):
                    if w.item is None and pending:
                        w.send(pending.pop())
                    if w.item is None:
                        continue
                    outcome, text = _result(w, timeout)
                    if outcome is None:
                        continue
                    counts[w.item.format][outcome] += 1
                    if outcome in FAILURES:
                        failures.append((w.item, outcome, text))
                    if progress:
                        progress(w.item, outcome)
                    if outcome in ("hang", "crash"):
                        w.kill()
                        pool[i] = start()
                    else:
                        w.item = None
                time.sleep(0.001)
        finally:
            for w in pool:
                if w.item is None:
                    w.stop()
                else:
                    w.kill()
    return {"counts": counts, "failures": failures}


def _result(w: Worker, timeout: float) -> tuple[str | None, str]:
    """The worker's answer, ("hang"/"crash", why) or (None, "") while it still runs."""
    if w.conn.poll(0):
        try:
            return w.conn.recv()
        except (EOFError, OSError):
            pass
    if not w.proc.is_alive():
        return "crash", f"worker died: exit code {w.proc.exitcode}"
    if time.monotonic() - w.started > timeout:
        return "hang", f"no result after {timeout:g} s"
    return None, ""


def report(result: dict, seconds: float) -> str:
    lines = [f"{'format':<18}" + "".join(f"{o:>9}" for o in OUTCOMES) + f"{'total':>9}"]
    total = Counter()
    for name in sorted(result["counts"], key=lambda n: list(FORMATS).index(n) if n in FORMATS else 99):
        c = result["counts"][name]
        total.update(c)
        lines.append(f"{name:<18}" + "".join(f"{c[o]:>9}" for o in OUTCOMES)
                     + f"{sum(c.values()):>9}")
    lines.append(f"{'all':<18}" + "".join(f"{total[o]:>9}" for o in OUTCOMES)
                 + f"{sum(total.values()):>9}")
    lines.append(f"{sum(total.values())} inputs in {seconds:.0f} s, "
                 f"{len(result['failures'])} failures")
    for item, outcome, text in result["failures"]:
        lines.append(f"\n[{outcome}] input {item.index} ({item.format}; {item.how}):\n{text}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=10000, help="mutants to run (10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mutations (0)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per input (30)")
    p.add_argument("--memory-gb", type=float, default=3.0, help="address space per worker (3)")
    p.add_argument("--save", help="folder to keep failing inputs in")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as seeds:
        make_seeds(Path(seeds))
        inputs = make_inputs(args.inputs, args.seed, Path(seeds))
        start = time.monotonic()
        done = Counter()

        def progress(item, outcome):
            done[outcome] += 1
            n = sum(done.values())
            if n % 500 == 0:
                print(f"{n}/{len(inputs)} inputs, {sum(done[o] for o in FAILURES)} failures",
                      file=sys.stderr, flush=True)

        result = fuzz(inputs, Path(seeds), workers=args.workers, timeout=args.timeout,
                      memory=int(args.memory_gb * (1 << 30)), progress=progress)
    print(report(result, time.monotonic() - start))
    if args.save and result["failures"]:
        out = Path(args.save)
        out.mkdir(parents=True, exist_ok=True)
        for item, outcome, _ in result["failures"]:
            name = f"{item.index:06d}-{outcome}-{item.format.replace(' ', '_')}"
            (out / name).write_bytes(item.data)
        print(f"failing inputs saved in {out}/", file=sys.stderr)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
