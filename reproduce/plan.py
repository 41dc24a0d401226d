"""What one reproduction runs: a `Run` per (Table 1 row, seed) with its folders, and the
run-specific solver and net files derived from what the generator renders.

Everything lives under `<runs>/<dataset>/<preset>/<row slug>/seed<k>/`, relative to the
working directory (Caffe's convention for the paths inside prototxt files); the committed
models/ folders are never written.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from generator.datasets import DATASETS, Dataset
from reproduce.config import NetRow, Protocol
from runner.data.lmdb_store import LmdbReader
from runner.deep_supervision import model_name
from runner.proto import read_net, read_solver, write_text


@dataclass(frozen=True)
class Run:
    """One training run: a row of the table with one seed."""
    row: NetRow
    seed: int
    dataset: str
    root: Path          # <runs>/<dataset>/<preset>/<slug>/seed<k>

    @property
    def name(self) -> str:
        """The generator's folder name: <dataset>-<variant><depth>."""
        return model_name(self.dataset, self.row.variant, self.row.depth)

    @property
    def model(self) -> Path:
        return self.root / self.name

    @property
    def solver(self) -> Path:
        return self.model / "solver.prototxt"

    @property
    def train_val(self) -> Path:
        return self.model / "train_val.prototxt"

    @property
    def deploy(self) -> Path:
        return self.model / "deploy.prototxt"

    @property
    def prefix(self) -> Path:
        """snapshot_prefix: snapshots, the solver log and its PNG start with it."""
        return self.model / "snapshots" / self.name

    @property
    def log(self) -> Path:
        return Path(f"{self.prefix}.log")

    def snapshot(self, iteration: int, ext: str = "caffemodel") -> Path:
        return Path(f"{self.prefix}_iter_{iteration}.{ext}")

    @property
    def test_log(self) -> Path:
        return self.root / "test.log"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def attempts(self) -> Path:
        """One line per training attempt: its wall-clock seconds (a resumed run adds one)."""
        return self.root / "train_seconds.txt"

    @property
    def label(self) -> str:
        return f"{self.row.label} seed {self.seed}"


def plan_runs(protocol: Protocol, runs_root: Path) -> list[Run]:
    """Every run in training order: rows in config order, each over all seeds."""
    base = Path(runs_root) / protocol.dataset / protocol.preset
    return [Run(row, seed, protocol.dataset, base / row.slug / f"seed{seed}")
            for row in protocol.nets for seed in protocol.seeds]


def source_of(runs: list[Run], run: Run) -> Run | None:
    """The run whose final weights `run` starts from (same seed), or None."""
    if run.row.init_from is None:
        return None
    return next(r for r in runs if r.row.label == run.row.init_from and r.seed == run.seed)


def probe_folder(protocol: Protocol, runs_root: Path) -> Path:
    return Path(runs_root) / protocol.dataset / protocol.preset / "probe"


def record_count(source: str, nominal: int) -> int:
    """Records in the LMDB at `source`, or the dataset's nominal count when it is absent."""
    if not Path(source).is_dir():
        return nominal
    with LmdbReader(source) as reader:
        return len(reader)


@dataclass(frozen=True)
class Schedule:
    """The numbers a run's solver gets."""
    max_iter: int
    stepsize: int
    test_interval: int
    test_iter: int
    display: int
    snapshot: int
    train_batch: int
    test_batch: int
    train_images: int
    test_images: int

    @property
    def epochs(self) -> float:
        return self.max_iter * self.train_batch / self.train_images

    @property
    def full_test_iter(self) -> int:
        """Batches that cover the test set once."""
        return math.ceil(self.test_images / self.test_batch)


def schedule_for(protocol: Protocol, generated, ds: Dataset) -> Schedule:
    """The run's schedule: the protocol's epochs (max_iter rounded up to a multiple of
    test_interval, lr dropped at lr_drop_at of it) or the generated solver's numbers."""
    train_batch = protocol.batch or ds.train_batch
    test_batch = protocol.batch or ds.test_batch
    train_images = record_count(ds.train_source, ds.train_images)
    test_images = record_count(ds.test_source, ds.test_images)
    test_interval = protocol.test_interval or generated.test_interval
    if protocol.epochs is None:
        max_iter, stepsize, snapshot = generated.max_iter, generated.stepsize, generated.snapshot
    else:
        max_iter = math.ceil(protocol.epochs * train_images / train_batch)
        max_iter = math.ceil(max_iter / test_interval) * test_interval
        stepsize = max(1, round(protocol.lr_drop_at * max_iter))
        snapshot = test_interval * math.ceil(max_iter / test_interval / 4)
    test_iter = protocol.test_iter or math.ceil(test_images / test_batch)
    return Schedule(max_iter, stepsize, test_interval, test_iter,
                    protocol.display or generated.display, snapshot,
                    train_batch, test_batch, train_images, test_images)


def write_run_files(run: Run, protocol: Protocol, gpu: str | None,
                    max_iter_cap: int | None = None) -> Schedule:
    """Rewrite the generated solver (and the net's batch sizes, when the protocol sets
    them) for this run; returns the schedule it got. `max_iter_cap` shortens every run
    (a smoke test), keeping the rest of the schedule."""
    ds = DATASETS[protocol.dataset]
    solver = read_solver(str(run.solver))
    sched = schedule_for(protocol, solver, ds)
    if max_iter_cap is not None and max_iter_cap < sched.max_iter:
        sched = replace(sched, max_iter=max_iter_cap)
    solver.max_iter = sched.max_iter
    solver.stepsize = sched.stepsize
    solver.test_interval = sched.test_interval
    del solver.test_iter[:]
    solver.test_iter.append(sched.test_iter)
    solver.display = sched.display
    solver.snapshot = sched.snapshot
    solver.snapshot_prefix = str(run.prefix)
    solver.random_seed = run.seed
    solver.solver_mode = solver.GPU if gpu is not None else solver.CPU
    write_text(solver, run.solver)
    if protocol.batch:
        net = read_net(str(run.train_val))
        for lp in net.layer:
            if lp.type == "Data":
                lp.data_param.batch_size = protocol.batch
        write_text(net, run.train_val)
    return sched
