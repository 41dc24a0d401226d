"""Batches made ahead in worker processes by torch's DataLoader.

A batch maker is a picklable object whose `make(index, arrays)` fills float32 numpy arrays
with batch number `index`. A batch depends on its index alone, so the stream is the same for
any number of workers (0 makes batches in this process). The DataLoader keeps `depth`
batches in flight (Caffe's data_param.prefetch), returns them in order, pins them when CUDA
is present, and checks every few seconds that its workers live; a worker's DataError (naming the LMDB key or file of the
bad record) and a dead worker surface here as a DataError naming the layer.
Workers start through a fork server, so the batch maker must be picklable.
"""
from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import os
from typing import Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from runner.data.datum import DataError
from runner.shapes import Shape

WORKERS_ENV = "RUNNER_DATA_WORKERS"
# Workers start from a clean server process, not by forking this one: a fork inherits
# OpenCV's and OpenMP's thread pools mid-state, and the child can deadlock on first use.
WORKER_START = "forkserver"


class BatchMaker(Protocol):
    def make(self, index: int, arrays: dict[str, np.ndarray]) -> None: ...


def default_workers() -> int:
    """Worker processes per data layer: $RUNNER_DATA_WORKERS, else 1."""
    value = os.environ.get(WORKERS_ENV, "1")
    if not value.isdigit():
        raise ValueError(f"{WORKERS_ENV} must be a whole number of workers, got {value!r}")
    return int(value)


class _Batches(Dataset):
    """Batch number i of a maker, as a dict of float32 tensors."""

    def __init__(self, maker: BatchMaker, shapes: dict[str, Shape]):
        self.maker, self.shapes = maker, shapes

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        arrays = {name: np.empty(shape, np.float32) for name, shape in self.shapes.items()}
        self.maker.make(index, arrays)
        return {name: torch.from_numpy(a) for name, a in arrays.items()}


class _CountFrom(Sampler):
    """Batch numbers start, start+1, ... forever (Caffe's data layers wrap around)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        return itertools.count(self.start)


def _worker_context():
    """The fork-server context, its server preloaded with what every worker imports."""
    context = mp.get_context(WORKER_START)
    context.set_forkserver_preload(["torch", "cv2", "numpy", "lmdb", "runner.data"])
    return context


def _init_worker(_: int) -> None:
    cv2.setNumThreads(1)


class Prefetcher:
    """Iterator over batches start, start+1, ... of `maker`, as dicts of float32 tensors."""

    def __init__(self, maker: BatchMaker, shapes: dict[str, Shape], *, workers: int,
                 depth: int, name: str, start: int = 0):
        self.name, self.next_batch = name, start
        parallel = workers > 0
        loader = DataLoader(
            _Batches(maker, shapes), batch_size=None, sampler=_CountFrom(start),
            num_workers=workers, pin_memory=torch.cuda.is_available(),
            prefetch_factor=max(1, math.ceil(depth / workers)) if parallel else None,
            worker_init_fn=_init_worker if parallel else None,
            multiprocessing_context=_worker_context() if parallel else None)
        self._batches = iter(loader)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        try:
            batch = next(self._batches)
        except DataError:
            raise
        except RuntimeError as exc:   # a worker died or failed unexpectedly
            raise DataError(f"layer '{self.name}': data worker failed: {exc}") from None
        self.next_batch += 1
        return batch

    def close(self) -> None:
        """Stop the workers; the next batch to come is `next_batch`."""
        batches, self._batches = self._batches, iter(())
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class PrefetchingSource:
    """A data layer as a Source: its own iterator, yielding {top: tensor} batches forever.

    Subclasses set `name`, `top_shapes`, `maker`, `workers` and `depth`. Workers start on the
    first batch; `close()` stops them and a later `next()` carries on where the stream was.
    """

    name: str
    top_shapes: dict[str, Shape]
    maker: BatchMaker
    workers: int
    depth: int
    _prefetcher: Prefetcher | None = None
    _next_batch: int = 0

    def __iter__(self) -> PrefetchingSource:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(self.maker, self.top_shapes, workers=self.workers,
                                          depth=self.depth, name=self.name,
                                          start=self._next_batch)
        return next(self._prefetcher)

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._next_batch = self._prefetcher.next_batch
            self._prefetcher = None

    def __enter__(self) -> PrefetchingSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
