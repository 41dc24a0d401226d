"""Batches made ahead in worker processes and handed over through shared memory.

A batch maker is a picklable object whose `make(index, arrays)` fills float32 numpy arrays
with batch number `index`. A batch depends on its index alone, so the stream is the same for
any number of workers (0 makes batches in this process). Batch i goes to worker i % workers;
at most `depth` batches are in flight (Caffe's data_param.prefetch) and they come back in
order. Workers write into a ring of shared-memory buffers; a buffer is reused only once
nothing references the tensors handed out from it, so batches stay valid however long the
caller keeps them (the ring grows if the caller keeps many). With CUDA present, batches are
copied to pinned memory and the buffer is reused at once. A worker's error is raised here as
a DataError carrying the worker's message (the LMDB key or file of the bad record).
"""
from __future__ import annotations

import os
import queue
import signal
import sys
import time
import traceback
from multiprocessing.connection import wait as wait_for_exit
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.multiprocessing as mp

from runner.data.datum import DataError
from runner.shapes import Shape

WORKERS_ENV = "RUNNER_DATA_WORKERS"
_SPARE_BUFFERS = 2     # buffers beyond `depth`, for the batches the caller still holds
_POLL_SECONDS = 1.0    # how often a waiting consumer checks that its workers are alive
STALL_SECONDS = 300.0  # no batch for this long from live workers is an error, not a hang


class BatchMaker(Protocol):
    def make(self, index: int, arrays: dict[str, np.ndarray]) -> None: ...


def default_workers() -> int:
    """Worker processes per data layer: $RUNNER_DATA_WORKERS, else 1."""
    value = os.environ.get(WORKERS_ENV, "1")
    if not value.isdigit():
        raise ValueError(f"{WORKERS_ENV} must be a whole number of workers, got {value!r}")
    return int(value)


class Prefetcher:
    """Iterator over batches start, start+1, ... of `maker`, as dicts of float32 tensors."""

    def __init__(self, maker: BatchMaker, shapes: dict[str, Shape], *, workers: int,
                 depth: int, name: str, start: int = 0):
        self.maker, self.shapes, self.name = maker, shapes, name
        self.depth = max(1, depth, workers)   # at least one batch in flight per worker
        self.pin = torch.cuda.is_available()
        self.next_batch = self.next_task = start
        self.ready: dict[int, tuple[int, str | None]] = {}
        self.buffers: list[dict[str, torch.Tensor]] = []
        self.free: list[int] = []
        self.lent: dict[int, list[np.ndarray]] = {}
        self.procs: list = []
        if workers <= 0:
            return
        for _ in range(self.depth + _SPARE_BUFFERS):
            self._add_buffer()
        ctx = mp.get_context()
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(workers)]
        self.known = [set(range(len(self.buffers))) for _ in range(workers)]
        for w, tasks in enumerate(self.tasks):
            proc = ctx.Process(target=_work, args=(maker, self.buffers, tasks, self.results),
                               name=f"data-{name}-{w}", daemon=True)
            proc.start()
            self.procs.append(proc)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if not self.procs:
            return self._make_here()
        self._reclaim()
        self._dispatch()
        waiting_since = time.monotonic()
        while self.next_batch not in self.ready:
            self._collect()
            if time.monotonic() - waiting_since > STALL_SECONDS:
                raise DataError(f"layer '{self.name}': no batch from the data workers for "
                                f"{STALL_SECONDS:.0f} s; set {WORKERS_ENV}=0 to make batches "
                                f"in the main process")
        slot, error = self.ready.pop(self.next_batch)
        self.next_batch += 1
        if error is not None:
            self.free.append(slot)
            raise DataError(error)
        return self._hand_out(slot)

    def close(self) -> None:
        """Stop the workers; the next batch to come is `next_batch`."""
        for tasks in getattr(self, "tasks", []):
            tasks.put(None)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        self.procs = []

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _make_here(self) -> dict[str, torch.Tensor]:
        arrays = {name: np.empty(shape, np.float32) for name, shape in self.shapes.items()}
        self.maker.make(self.next_batch, arrays)
        self.next_batch += 1
        return {name: self._deliver(torch.from_numpy(a)) for name, a in arrays.items()}

    def _deliver(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.pin_memory() if self.pin else tensor

    def _add_buffer(self) -> None:
        try:
            self.buffers.append({name: torch.empty(shape).share_memory_()
                                 for name, shape in self.shapes.items()})
        except RuntimeError as exc:
            raise DataError(f"layer '{self.name}': no shared memory for another batch buffer "
                            f"({exc}); enlarge /dev/shm, lower data_param.prefetch, or set "
                            f"{WORKERS_ENV}=0 to make batches in the main process") from None
        self.free.append(len(self.buffers) - 1)

    def _reclaim(self) -> None:
        """Return to the ring every lent buffer whose tensors are no longer referenced."""
        for slot in [s for s, views in self.lent.items() if not _in_use(views)]:
            del self.lent[slot]
            self.free.append(slot)

    def _dispatch(self) -> None:
        if not self.free and self.next_task == self.next_batch:
            self._add_buffer()   # the caller holds every buffer: grow the ring
        while self.free and self.next_task - self.next_batch < self.depth:
            slot = self.free.pop()
            worker = self.next_task % len(self.procs)
            new = None if slot in self.known[worker] else self.buffers[slot]
            self.known[worker].add(slot)
            self.tasks[worker].put((self.next_task, slot, new))
            self.next_task += 1

    def _collect(self) -> None:
        try:
            index, slot, error = self.results.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            # A process's sentinel is ready once it has exited, even if its exit status was
            # collected elsewhere (where is_alive() would keep saying True).
            exited = set(wait_for_exit([proc.sentinel for proc in self.procs], timeout=0))
            for proc in self.procs:
                if proc.sentinel in exited:
                    raise DataError(f"layer '{self.name}': data worker {proc.name} stopped "
                                    f"(exit code {proc.exitcode})") from None
            return
        self.ready[index] = (slot, error)

    def _hand_out(self, slot: int) -> dict[str, torch.Tensor]:
        buffers = self.buffers[slot]
        if self.pin:
            self.free.append(slot)
            return {name: t.pin_memory() for name, t in buffers.items()}
        views = [t.numpy()[...] for t in buffers.values()]
        self.lent[slot] = views
        return {name: torch.from_numpy(v) for name, v in zip(buffers, views)}


def _in_use(views: list[np.ndarray]) -> bool:
    """True while a tensor made from one of `views` is alive (holding a reference to it)."""
    return any(sys.getrefcount(views[i]) > 2 for i in range(len(views)))


def _work(maker: BatchMaker, buffers: list[dict[str, torch.Tensor]], tasks, results) -> None:
    """Worker process: make each batch it is given into the named shared buffer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the main process's to handle
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    arrays = [{name: t.numpy() for name, t in b.items()} for b in buffers]
    while (task := tasks.get()) is not None:
        index, slot, new = task
        if new is not None:
            arrays.extend([{}] * (slot + 1 - len(arrays)))
            arrays[slot] = {name: t.numpy() for name, t in new.items()}
        try:
            maker.make(index, arrays[slot])
            error = None
        except DataError as exc:
            error = str(exc)
        except Exception:
            error = f"data worker failed on batch {index}:\n{traceback.format_exc()}"
        results.put((index, slot, error))


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
