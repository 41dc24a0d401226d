"""Batches made ahead in worker processes, handed over through a ring of shared-memory slots.

A batch maker is a picklable object whose `make(index, arrays)` fills float32 numpy arrays
with batch number `index`. A batch depends on its index alone, so the stream is the same for
any number of workers (0 makes batches in this process) and a stream can start anywhere.

The ring is allocated once, in shared memory, and given to each worker when it starts: a
worker is told (batch index, slot), makes the batch straight into the slot and answers
(batch index, slot, error); only those small messages cross processes. At most `depth`
(Caffe's data_param.prefetch) batches plus one per worker are in flight, and they come
back in order. Without CUDA the caller gets tensors on the slot itself, and the slot
returns to the ring once nothing references them (a caller that keeps many batches gets
copies beyond a few); with CUDA each batch is copied into pinned memory and its slot is
free at once.

Workers start from a fork server (never by forking this process, whose OpenCV and OpenMP
thread pools a child could inherit mid-state and deadlock in). A worker's DataError (naming
the LMDB key or file of the bad record), any other worker exception, a worker that dies and
one that stalls for STALL_SECONDS all surface here as a DataError naming the layer.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import traceback
import weakref
from multiprocessing.connection import Connection, wait
from typing import NoReturn, Protocol

import cv2
import numpy as np
import torch

from runner.data.datum import DataError
from runner.shapes import Shape

WORKERS_ENV = "RUNNER_DATA_WORKERS"
WORKER_START = "forkserver"
SPARE_SLOTS = 2        # slots beyond `depth` for the batches the caller still holds
STALL_SECONDS = 300.0  # no batch for this long from live workers is an error, not a hang
_JOIN_SECONDS = 5.0    # how long close() waits for a worker to exit before killing it


class BatchMaker(Protocol):
    def make(self, index: int, arrays: dict[str, np.ndarray]) -> None: ...


def default_workers() -> int:
    """Worker processes per data layer: $RUNNER_DATA_WORKERS, else 1."""
    value = os.environ.get(WORKERS_ENV, "1")
    if not value.isdigit():
        raise ValueError(f"{WORKERS_ENV} must be a whole number of workers, got {value!r}")
    return int(value)


def _worker_context():
    """The fork-server context, its server preloaded with what every worker imports."""
    context = mp.get_context(WORKER_START)
    context.set_forkserver_preload(["torch", "cv2", "numpy", "lmdb", "runner.data"])
    return context


class _Worker:
    """One worker process, the pipe that gives it tasks and the pipe it answers on."""

    def __init__(self, context, maker: BatchMaker, ring: dict[str, torch.Tensor], name: str):
        task_out, self.tasks = context.Pipe(duplex=False)
        self.results, result_in = context.Pipe(duplex=False)
        self.proc = context.Process(target=_work, args=(maker, ring, task_out, result_in),
                                    name=name, daemon=True)
        self.proc.start()
        task_out.close()
        result_in.close()
        self.pending = 0   # tasks given and not yet answered

    def stop(self) -> None:
        """Ask the worker to finish (terminate it if busy: a batch is only ever written to
        its slot, so stopping halfway harms nothing), wait for it, close the pipes."""
        try:
            self.tasks.send(None)
        except (OSError, ValueError):
            pass
        self.tasks.close()
        if self.pending:
            self.proc.terminate()
        self.proc.join(_JOIN_SECONDS)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join(_JOIN_SECONDS)
        self.results.close()

    def death(self) -> str:
        """How the worker's process ended, for messages."""
        code = self.proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"process {self.proc.name} (pid {self.proc.pid}) stopped ({how})"


def _stop_all(workers: list[_Worker]) -> None:
    """Stop every worker (at close, when the Prefetcher is collected, or at exit)."""
    for worker in workers:
        worker.stop()
    workers.clear()


class Prefetcher:
    """Iterator over batches start, start+1, ... of `maker`, as dicts of float32 tensors."""

    def __init__(self, maker: BatchMaker, shapes: dict[str, Shape], *, workers: int,
                 depth: int, name: str, start: int = 0):
        self.maker, self.shapes, self.name = maker, shapes, name
        self.pin = torch.cuda.is_available()
        self.next_batch = self.next_task = start
        self.workers: list[_Worker] = []
        self._stop = weakref.finalize(self, _stop_all, self.workers)
        if workers <= 0:
            return
        # `depth` batches made ahead (Caffe's data_param.prefetch) plus one being made by
        # each worker, so that no worker idles while the next batch in order is late
        self.depth = max(1, depth) + workers
        self.ring = self._allocate(self.depth + (0 if self.pin else SPARE_SLOTS))
        self.free = list(range(len(next(iter(self.ring.values())))))
        self.ready: dict[int, tuple[int, str | None]] = {}
        self.lent: dict[int, list[np.ndarray]] = {}
        self.failure: str | None = None
        context = _worker_context()
        for w in range(workers):
            self.workers.append(_Worker(context, maker, self.ring, f"data-{name}-{w}"))

    def _allocate(self, slots: int) -> dict[str, torch.Tensor]:
        try:
            return {top: torch.empty((slots, *shape)).share_memory_()
                    for top, shape in self.shapes.items()}
        except RuntimeError as exc:
            raise DataError(f"layer '{self.name}': no shared memory for {slots} batches "
                            f"({exc}); enlarge /dev/shm, lower data_param.prefetch, or set "
                            f"{WORKERS_ENV}=0 to make batches in the main process") from None

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if not self.workers:
            return self._make_here()
        if self.failure is not None:
            raise DataError(self.failure)
        self._reclaim()
        self._dispatch()
        while self.next_batch not in self.ready:
            self._collect()
        slot, error = self.ready.pop(self.next_batch)
        self.next_batch += 1
        if error is not None:
            self.free.append(slot)
            raise DataError(error)
        return self._hand_out(slot)

    def close(self) -> None:
        """Stop the workers; the next batch to come is `next_batch`. Batches already handed
        out stay valid."""
        self._stop()

    def _make_here(self) -> dict[str, torch.Tensor]:
        arrays = {top: np.empty(shape, np.float32) for top, shape in self.shapes.items()}
        self.maker.make(self.next_batch, arrays)
        self.next_batch += 1
        tensors = {top: torch.from_numpy(a) for top, a in arrays.items()}
        return {top: t.pin_memory() for top, t in tensors.items()} if self.pin else tensors

    def _reclaim(self) -> None:
        """Return to the ring every lent slot whose tensors are no longer referenced."""
        for slot in [s for s, views in self.lent.items() if not _in_use(views)]:
            del self.lent[slot]
            self.free.append(slot)

    def _dispatch(self) -> None:
        """Give free slots to the least busy workers, up to `depth` batches in flight."""
        while self.free and self.next_task - self.next_batch < self.depth:
            worker = min(self.workers, key=lambda w: w.pending)
            slot = self.free.pop()
            try:
                worker.tasks.send((self.next_task, slot))
            except OSError:
                self.free.append(slot)
                self._fail(worker.death() if worker.proc.exitcode is not None
                           else f"cannot reach {worker.proc.name}")
            worker.pending += 1
            self.next_task += 1

    def _collect(self) -> None:
        """Wait for answers (or a worker's exit) and file them under their batch index."""
        by_handle = {w.results: w for w in self.workers}
        by_handle.update({w.proc.sentinel: w for w in self.workers})
        ready = wait(list(by_handle), timeout=STALL_SECONDS)
        if not ready:
            self._fail(f"no batch for {STALL_SECONDS:.0f} s from live workers")
        for handle in sorted(ready, key=lambda h: not isinstance(h, Connection)):
            worker = by_handle[handle]
            if not isinstance(handle, Connection):
                self._fail(worker.death())
            try:
                while handle.poll():
                    index, slot, error = handle.recv()
                    worker.pending -= 1
                    self.ready[index] = (slot, error)
            except (EOFError, OSError):
                worker.proc.join(_JOIN_SECONDS)
                self._fail(worker.death())

    def _fail(self, why: str) -> NoReturn:
        self.failure = (f"layer '{self.name}': data worker failed: {why}; set {WORKERS_ENV}=0 "
                        "to make batches in the main process")
        raise DataError(self.failure)

    def _hand_out(self, slot: int) -> dict[str, torch.Tensor]:
        tensors = {top: ring[slot] for top, ring in self.ring.items()}
        if self.pin or len(self.lent) >= SPARE_SLOTS:   # copy; the slot is free at once
            self.free.append(slot)
            return {top: t.pin_memory() if self.pin else t.clone()
                    for top, t in tensors.items()}
        views = [t.numpy()[...] for t in tensors.values()]
        self.lent[slot] = views
        return {top: torch.from_numpy(v) for top, v in zip(tensors, views)}


def _in_use(views: list[np.ndarray]) -> bool:
    """True while a tensor made from one of `views` is alive (it holds a reference)."""
    return any(sys.getrefcount(views[i]) > 2 for i in range(len(views)))


def _work(maker: BatchMaker, ring: dict[str, torch.Tensor], tasks: Connection,
          results: Connection) -> None:
    """Worker process: make each batch it is given into its slot of the shared ring; end
    when told to (None) or when the main process has gone (the pipe closes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the main process's to handle
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    slots = [{top: ring[top][k].numpy() for top in ring}
             for k in range(len(next(iter(ring.values()))))]
    while True:
        try:
            task = tasks.recv()
        except EOFError:
            return
        if task is None:
            return
        index, slot = task
        try:
            maker.make(index, slots[slot])
            error = None
        except DataError as exc:
            error = str(exc)
        except Exception:
            error = f"data worker failed on batch {index}:\n{traceback.format_exc()}"
        try:
            results.send((index, slot, error))
        except OSError:
            return


class PrefetchingSource:
    """A data layer as a Source: its own iterator, yielding {top: tensor} batches forever.

    Subclasses set `name`, `top_shapes`, `maker`, `workers` and `depth`. Workers start on the
    first batch; `close()` stops them and a later `next()` carries on where the stream was;
    `skip_batches(n)` moves the stream on without making the batches.
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

    def skip_batches(self, n: int) -> None:
        """Position the stream n batches further on (exact: a batch depends on its index)."""
        self.close()
        self._next_batch += n

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
