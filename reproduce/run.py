"""`python -m reproduce.run --dataset fashion-mnist --preset quick`: run the protocol of
reproduce/config.yaml and write reports/<dataset>.md (what `make reproduce` does; another
preset than the dataset's default writes reports/<dataset>-<preset>.md).

Runs that are complete are skipped, a run that was stopped resumes from its newest
snapshot, and the report is rebuilt from every finished run. One progress bar counts
the training iterations of all runs; the total time is printed at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from generator.architectures import ConfigError
from generator.datasets import DATASETS
from generator.schedule import Schedule
from generator.summary import shape_table
from reproduce import execute
from reproduce.config import CONFIG, Protocol, ProtocolError, load_protocol
from reproduce.plan import Run, plan_runs, probe_folder, render_run, source_of
from reproduce.report import format_seconds, write_report
from runner.atomic import atomic_write_text
from runner.proto import ProtoError, read_net
from runner.results import write_result
from runner.shapes import ShapeError
from runner.solver.log_reader import last_iteration


def deploy_cost(run: Run) -> tuple[int, int]:
    """(learnable parameters, multiply-adds per image) of the run's deploy net."""
    rows = shape_table(read_net(str(run.deploy)), "TEST")
    return sum(r.params for r in rows), sum(r.macs for r in rows)


def device_name(gpu: str | None) -> str:
    """The machine the runs train on, in words (recorded with each result)."""
    if gpu is not None and torch.cuda.is_available():
        return f"GPU {gpu} ({torch.cuda.get_device_name(int(gpu))}), {os.cpu_count()} CPU cores"
    if gpu is not None:
        return f"GPU {gpu}"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def finished(run: Run, sched: Schedule, test_iter: int) -> dict | None:
    """The stored result of a run done with this schedule, else None."""
    if not run.result.exists():
        return None
    result = json.loads(run.result.read_text())
    same = result.get("max_iter") == sched.max_iter and result.get("test_iterations") == test_iter
    return result if same else None


def fingerprint(run: Run, weights: Path | None) -> str:
    """What a run's outcome depends on: its solver (but not the device it runs on), its
    net and where its weights come from."""
    solver = re.sub(r"(?m)^solver_mode:.*$", "", run.solver.read_text())
    text = solver + run.train_val.read_text() + str(weights)
    return hashlib.sha1(text.encode()).hexdigest()


def forget_if_changed(run: Run, weights: Path | None) -> None:
    """A run whose files changed since its fingerprint was stored starts afresh: its
    snapshots, log and results are removed (they belong to another schedule). The
    first fingerprint is stored as found."""
    stamp = run.root / "fingerprint"
    current = fingerprint(run, weights)
    if not stamp.exists() or stamp.read_text() == current:
        atomic_write_text(stamp, current)
        return
    shutil.rmtree(run.prefix.parent, ignore_errors=True)
    for path in (run.result, run.test_result, run.test_log, run.root / "train.out"):
        path.unlink(missing_ok=True)
    atomic_write_text(stamp, current)


def run_one(run: Run, protocol: Protocol, sched: Schedule, weights: Path | None,
            gpu: str | None, on_poll, jobs: int = 1) -> dict:
    """Train (or resume) and test one run, starting from `weights` if given; returns and
    stores its result."""
    if weights is not None and not weights.exists():
        raise execute.StepFailed(f"{run.label} starts from {weights}, which does not exist")
    outcome = execute.trained(run, sched)
    if outcome is None:
        outcome = execute.train(run, sched, weights, gpu, on_poll)
    test_iter = protocol.final_test_iter or sched.full_test_iter
    tested = execute.final_test(run, test_iter, sched.max_iter, gpu)
    outputs = tested["outputs"]
    params, macs = deploy_cost(run)
    result = {
        "label": run.row.label, "variant": run.row.variant, "depth": run.row.depth,
        "seed": run.seed, "init": protocol.init, "init_from": run.row.init_from,
        "weights": str(weights) if weights else None, "pretrain_only": run.row.pretrain_only,
        "max_iter": sched.max_iter, "stepsize": sched.stepsize, "train_batch": sched.train_batch,
        "epochs": sched.epochs, "train_seconds": outcome.seconds,
        "train_cpu_seconds": outcome.cpu_seconds, "attempts": outcome.attempts,
        "test_iterations": test_iter,
        "test_images": min(test_iter * sched.test_batch, sched.test_images),
        "test_seconds": tested["wall_seconds"], "outputs": outputs,
        "top1_error": 100.0 * (1.0 - outputs["accuracy"]),
        "top5_error": (100.0 * (1.0 - outputs["accuracy_top5"])
                       if "accuracy_top5" in outputs else None),
        "params": params, "macs": macs,
        "train_images": sched.train_images, "test_set": sched.test_images, "gpu": gpu, "jobs": jobs,
        "device": device_name(gpu),
        "log": str(run.log), "test_log": str(run.test_log), "solver": str(run.solver),
        "deploy": str(run.deploy), "train_result": str(run.train_result),
        "test_result": str(run.test_result),
    }
    write_result(run.result, result)
    return result


class Progress:
    """One bar over the training iterations of all runs, fed from the solver logs of the
    runs in flight (several at once with --jobs)."""

    def __init__(self, total: int):
        self.bar = tqdm(total=total, unit="iter", desc="reproduce", dynamic_ncols=True,
                        mininterval=1 if sys.stderr.isatty() else 30)
        self.done_iters: dict[Run, int] = {}
        self.lock = threading.Lock()

    def _set(self, run: Run, iterations: int) -> None:
        with self.lock:
            self.done_iters[run] = iterations
            total = sum(self.done_iters.values())
            if total > self.bar.n:
                self.bar.update(total - self.bar.n)

    def start(self, run: Run, max_iter: int):
        self.bar.set_description(run.label, refresh=False)

        def poll():
            self._set(run, min(last_iteration(run.log), max_iter))
        return poll

    def done(self, run: Run, max_iter: int):
        self._set(run, max_iter)

    def note(self, text: str):
        with self.lock:
            self.bar.write(text, file=sys.stderr)

    def close(self):
        self.bar.close()


def run_probe(protocol: Protocol, runs: list[Run], runs_root: Path, progress: Progress) -> Path | None:
    """The gradient probe on the configured row's net (first seed), once; its folder."""
    if protocol.probe is None:
        return None
    out = probe_folder(protocol, runs_root)
    if (out / "probe.json").exists():
        return out
    run = next(r for r in runs if r.row.label == protocol.probe.net)
    p = protocol.probe
    progress.note(f"gradient probe on {run.train_val} ({p.iters} iterations per round)")
    execute.probe(run.train_val, out, p.iters, p.batch, p.threshold, protocol.seeds[0])
    return out


def check_data(dataset: str) -> None:
    """The LMDBs and mean file the generated nets read, relative to the working directory."""
    ds = DATASETS[dataset]
    missing = [p for p in (ds.train_source, ds.test_source, ds.mean_file) if not Path(p).exists()]
    if missing:
        hint = ("`make data` builds them" if dataset == "fashion-mnist" else
                "build them with python -m runner.tools.convert_imageset and "
                "python -m runner.tools.compute_image_mean (docs/reproduce.md)")
        raise ProtocolError(f"{dataset}: {', '.join(missing)} not found under {Path.cwd()}; {hint}")


def reproduce(protocol: Protocol, runs_root: Path, report: Path, gpu: str | None = None,
              iterations: int | None = None, jobs: int = 1) -> list[dict]:
    """Every run of `protocol` (skipping finished ones, training up to `jobs` runs at
    once), then the report; returns the results in the protocol's order."""
    check_data(protocol.dataset)
    runs = plan_runs(protocol, runs_root)
    schedules, weights = {}, {}
    for run in runs:
        schedules[run] = render_run(run, protocol, gpu, iterations)
        source = source_of(runs, run)
        weights[run] = source.snapshot(schedules[source].max_iter) if source else None
        forget_if_changed(run, weights[run])
    progress = Progress(sum(s.max_iter for s in schedules.values()))
    results: dict[Run, dict] = {}
    lock = threading.Lock()

    def run_chain(chain: list[Run]) -> None:
        for run in chain:
            sched = schedules[run]
            test_iter = protocol.final_test_iter or sched.full_test_iter
            result = finished(run, sched, test_iter)
            if result is None:
                result = run_one(run, protocol, sched, weights[run], gpu,
                                 progress.start(run, sched.max_iter), jobs)
                progress.note(f"{run.label}: top-1 error {result['top1_error']:.2f}% after "
                              f"{sched.max_iter} iterations ({format_seconds(result['train_seconds'])})")
            else:
                progress.note(f"{run.label}: done before, skipped")
            progress.done(run, sched.max_iter)
            with lock:
                results[run] = result
                pending = [r.label for r in runs if r not in results]
                if pending:   # a report after every run, so a long reproduction shows its progress
                    write_report(protocol, in_order(runs, results), probe_dir, report, pending)

    try:
        probe_dir = run_probe(protocol, runs, runs_root, progress)
        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            for future in [pool.submit(run_chain, chain) for chain in chains(runs)]:
                future.result()
        finally:   # a failed or interrupted run starts no further runs
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        progress.close()
    ordered = in_order(runs, results)
    write_report(protocol, ordered, probe_dir, report)
    return ordered


def chains(runs: list[Run]) -> list[list[Run]]:
    """The runs grouped so that a run starting from another run's weights comes after it in
    the same group; groups are independent of each other (and may train at once)."""
    groups: dict[Run, list[Run]] = {}
    for run in runs:
        source = source_of(runs, run)
        head = next((h for h, group in groups.items() if source in group), None)
        if head is None:
            groups[run] = [run]
        else:
            groups[head].append(run)
    return list(groups.values())


def in_order(runs: list[Run], results: dict[Run, dict]) -> list[dict]:
    """The finished runs' results in the protocol's order."""
    return [results[r] for r in runs if r in results]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.run", description=(
        "Train and test the paper's nets per reproduce/config.yaml and write the report."))
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--preset", default="", help="preset of the dataset (default: its default_preset)")
    p.add_argument("--config", default=str(CONFIG), help="protocol file (default reproduce/config.yaml)")
    p.add_argument("--runs", default="runs", help="folder for run files (default runs)")
    p.add_argument("--report", help="report path (default reports/<dataset>.md for the "
                                    "default preset, reports/<dataset>-<preset>.md for another)")
    p.add_argument("--gpu", default=None, help="GPU id for training and testing (default: CPU)")
    p.add_argument("--iterations", type=int, help="cap every run at this many iterations (smoke test)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once (default 1; on a large GPU several share it)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        protocol = load_protocol(args.dataset, args.preset or None, args.config)
        if args.iterations is not None and args.iterations < 1:
            raise ProtocolError(f"--iterations {args.iterations}: expected 1 or more")
        if args.jobs < 1:
            raise ProtocolError(f"--jobs {args.jobs}: expected 1 or more")
        report = Path(args.report or f"reports/{protocol.report_name()}.md")
        results = reproduce(protocol, Path(args.runs), report, args.gpu or None,
                            args.iterations, args.jobs)
    except (ProtocolError, ConfigError, ProtoError, ShapeError, execute.StepFailed) as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("reproduce: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"reproduce: {len(results)} runs of {protocol.dataset}/{protocol.preset}; report {report}; "
          f"total time {format_seconds(time.perf_counter() - start)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
