"""Solver schedules: the paper's training lengths, our choices where it gives none, and
the overrides a run asks for (epochs, step point, test cadence, snapshot, batch, seed).

ImageNet lengths are epochs at the dataset's train batch (the paper: CNN-8 80 epochs,
CNDS-8 65, CNDS-13 67); Places205 lengths are iterations at batch 256 (CNN-8 240,000,
CNDS-8 190,000). docs/generator.md lists the choices for the other nets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from generator.architectures import ConfigError, Net
from generator.datasets import Dataset
from runner.data.lmdb_store import LmdbReader


@dataclass(frozen=True)
class Schedule:
    """The per-net numbers of solver.prototxt and the Data layers' batch sizes (the rest
    is the paper's fixed recipe), with the set sizes the epochs are counted over."""
    max_iter: int
    stepsize: int
    test_iter: int
    test_interval: int
    display: int
    snapshot: int
    train_batch: int
    test_batch: int
    train_images: int
    test_images: int
    solver_mode: str
    random_seed: int | None = None   # None: the solver draws one

    @property
    def epochs(self) -> float:
        return self.max_iter * self.train_batch / self.train_images

    @property
    def full_test_iter(self) -> int:
        """Batches that cover the test set once."""
        return math.ceil(self.test_images / self.test_batch)


@dataclass(frozen=True)
class ScheduleOverrides:
    """Changes to a net's default schedule; None keeps the default.

    `epochs` sets max_iter to that many passes over `train_images` at the train batch,
    rounded up to a multiple of test_interval, and the snapshot interval to a quarter of
    the run (also a multiple of test_interval). `step_at` puts the lr step at that
    fraction of max_iter (default: the fraction of the default schedule). `max_iter`
    replaces max_iter last, keeping the rest (a shortened run)."""
    epochs: float | None = None
    step_at: float | None = None
    test_interval: int | None = None
    test_iter: int | None = None
    display: int | None = None
    snapshot: int | None = None
    max_iter: int | None = None
    batch: int | None = None            # train and test batch_size
    train_images: int | None = None     # what epochs count over (default: the dataset's)
    test_images: int | None = None      # what the default test_iter covers
    solver_mode: str | None = None      # CPU or GPU
    random_seed: int | None = None

    def __post_init__(self):
        def check(name, ok, expected):
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise ConfigError(f"{name} {value}: expected {expected}")
        check("epochs", lambda v: math.isfinite(v) and v > 0, "a positive number")
        check("step_at", lambda v: 0 < v <= 1, "a fraction in (0, 1]")
        for name in ("test_interval", "test_iter", "display", "snapshot", "max_iter", "batch",
                     "train_images", "test_images"):
            check(name, lambda v: v >= 1, "1 or more")
        check("random_seed", lambda v: v >= 0, "0 or more")
        check("solver_mode", lambda v: v in ("CPU", "GPU"), "CPU or GPU")


def imagenet_epochs(variant: str, depth: int) -> int:
    """Paper: CNN-8 80, CNDS-8 65, CNDS-13 67; CNN-5 90 (CaffeNet); other CNNs 80,
    other CNDS nets the nearer paper figure (65 up to depth 10, 67 beyond)."""
    if variant == "cnn":
        return 90 if depth == 5 else 80
    return 65 if depth <= 10 else 67


def places_iterations(variant: str, depth: int) -> int:
    """Paper: CNN-8 240,000, CNDS-8 190,000; CNN-5 300,000 (Places-CNN); others alike."""
    if variant == "cnn":
        return 300_000 if depth == 5 else 240_000
    return 190_000


def record_count(source: str, nominal: int) -> int:
    """Records in the LMDB at `source` (relative to the working directory), or `nominal`
    when it is absent."""
    if not Path(source).is_dir():
        return nominal
    with LmdbReader(source) as reader:
        return len(reader)


def data_sizes(ds: Dataset) -> tuple[int, int]:
    """(train, test) records of the dataset's LMDBs as found, nominal where missing."""
    return record_count(ds.train_source, ds.train_images), record_count(ds.test_source, ds.test_images)


def default_schedule(net: Net) -> Schedule:
    """The solver numbers for `net` on its dataset."""
    ds, cfg = net.dataset, net.config
    test_iter = math.ceil(ds.test_images / ds.test_batch)
    if ds.epochs is not None:
        return own_data_schedule(ds)
    sizes = (ds.train_batch, ds.test_batch, ds.train_images, ds.test_images, ds.solver_mode)
    if ds.name == "imagenet":
        max_iter = math.ceil(imagenet_epochs(cfg.variant, cfg.depth) * ds.train_images / ds.train_batch)
        return Schedule(max_iter, 200_000, test_iter, 10_000, 20, 10_000, *sizes)
    if ds.name == "places205":
        return Schedule(places_iterations(cfg.variant, cfg.depth), 80_000, test_iter, 10_000, 20,
                        10_000, *sizes)
    return Schedule(3_000, 2_000, test_iter, 500, 50, 1_000, *sizes)


def schedule(net: Net, overrides: ScheduleOverrides | None = None) -> Schedule:
    """The default schedule of `net` with `overrides` applied (see ScheduleOverrides)."""
    base = default_schedule(net)
    o = overrides or ScheduleOverrides()
    train_batch = o.batch or base.train_batch
    test_batch = o.batch or base.test_batch
    train_images = o.train_images or base.train_images
    test_images = o.test_images or base.test_images
    test_interval = o.test_interval or base.test_interval
    max_iter, snapshot = base.max_iter, base.snapshot
    if o.epochs is not None:
        max_iter = math.ceil(o.epochs * train_images / train_batch)
        max_iter = math.ceil(max_iter / test_interval) * test_interval
        snapshot = test_interval * math.ceil(max_iter / test_interval / 4)
    step_at = o.step_at if o.step_at is not None else base.stepsize / base.max_iter
    stepsize = (max(1, round(step_at * max_iter))
                if o.epochs is not None or o.step_at is not None else base.stepsize)
    return Schedule(
        max_iter=o.max_iter or max_iter, stepsize=stepsize,
        test_iter=o.test_iter or math.ceil(test_images / test_batch),
        test_interval=test_interval, display=o.display or base.display,
        snapshot=o.snapshot or snapshot, train_batch=train_batch, test_batch=test_batch,
        train_images=train_images, test_images=test_images,
        solver_mode=o.solver_mode or base.solver_mode, random_seed=o.random_seed)


def with_data_sizes(net: Net, overrides: ScheduleOverrides) -> ScheduleOverrides:
    """`overrides` with the set sizes of the LMDBs the net reads (where not given), so
    that epochs count the records found."""
    train, test = data_sizes(net.dataset)
    return replace(overrides, train_images=overrides.train_images or train,
                   test_images=overrides.test_images or test)


def own_data_schedule(ds: Dataset) -> Schedule:
    """A user's dataset: `ds.epochs` passes over its training set, a test every epoch (of
    the whole validation set), the lr step at two thirds of the run, five snapshots, a log
    line about 4 times an epoch."""
    per_epoch = math.ceil(ds.train_images / ds.train_batch)
    max_iter = ds.epochs * per_epoch
    return Schedule(max_iter, max(1, round(max_iter * 2 / 3)), math.ceil(ds.test_images / ds.test_batch),
                    per_epoch, max(1, min(50, per_epoch // 4)), max(1, math.ceil(max_iter / 5)),
                    ds.train_batch, ds.test_batch, ds.train_images, ds.test_images, ds.solver_mode)
