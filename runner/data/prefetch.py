"""Batches made ahead in worker processes, handed over through a ring of shared-memory slots.

A batch maker is a picklable object whose `make(index, arrays)` fills numpy arrays (its
`layout()`: name -> (shape, dtype)) with batch number `index`, in a worker. A batch depends
on its index alone, so the stream is the same for any number of workers (0 makes batches in
this process) and a stream can start anywhere.

The ring is allocated once, in shared memory, and given to each worker when it starts: a
worker is told (batch index, slot), makes the batch straight into the slot and answers
(batch index, slot, error); only those small messages cross processes. At most `depth`
(Caffe's data_param.prefetch) batches plus one per worker are in flight, and they come
back in order.

For the CPU the arrays are the batch: the caller gets tensors on the slot itself, and the
slot returns to the ring once nothing references them (a caller that keeps many batches
gets copies beyond a few). For another device the maker, made so by `staged(True)`, makes
the batch in two stages (`device_finish`): the arrays are raw (bytes where the data are
bytes) and the maker's `finish(arrays)` completes the batch on the device, into new
tensors. For a GPU the ring
is page-locked (registered with CUDA), so a batch is sent by DMA straight from its slot,
without a CPU copy, and the slot returns to the ring when that copy is done; where CUDA
refuses the registration, and for other devices, the slot is copied (into pinned memory
for a GPU) and is free at once. On the CPU (`device_finish` there is for tests and
benchmarks) `finish` reads the slot itself.

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
from collections.abc import Mapping
from multiprocessing.connection import Connection, wait
from typing import NoReturn, Protocol

import cv2
import numpy as np
import torch

from runner.data.datum import DataError
from runner.shapes import Shape

WORKERS_ENV = "RUNNER_DATA_WORKERS"
WORKER_START = "forkserver"
SPARE_SLOTS = 2        # slots beyond `depth`: batches a CPU caller holds or a GPU still copies
STALL_SECONDS = 300.0  # no batch for this long from live workers is an error, not a hang
_JOIN_SECONDS = 5.0    # how long close() waits for a worker to exit before killing it
CUDA_HOST_REGISTER_PORTABLE = 1   # cudaHostRegisterPortable: page-locked for every device


# name -> (shape, numpy dtype) of the arrays a maker fills per batch
Layout = Mapping[str, tuple[Shape, np.dtype]]


class BatchMaker(Protocol):
    device_finish: bool   # make raw arrays, completed by `finish` on the device

    def staged(self, device_finish: bool) -> BatchMaker:
        """A copy of this maker that makes batches in one stage, or in two."""

    def layout(self) -> Layout: ...

    def make(self, index: int, arrays: dict[str, np.ndarray]) -> None: ...

    def finish(self, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch from raw `arrays` (`device_finish`), in new tensors on their device."""


_process_default = {"workers": 1}


def set_default_workers(n: int) -> None:
    """Workers per data layer when $RUNNER_DATA_WORKERS is unset (`import caffe` sets 0:
    a worker process re-imports the main script, which pycaffe scripts do not guard)."""
    _process_default["workers"] = int(n)


def default_workers() -> int:
    """Worker processes per data layer: $RUNNER_DATA_WORKERS, else the process default (1)."""
    value = os.environ.get(WORKERS_ENV, str(_process_default["workers"]))
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
    """Iterator over batches start, start+1, ... of `maker`, made for `device`: in two
    stages when the maker was made so (`device_finish`; a maker without it makes one)."""

    def __init__(self, maker: BatchMaker, *, workers: int, depth: int, name: str,
                 start: int = 0, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.on_device = getattr(maker, "device_finish", False)
        self.maker, self.layout, self.name = maker, maker.layout(), name
        self.next_batch = self.next_task = start
        self.workers: list[_Worker] = []
        self._stop = weakref.finalize(self, _stop_all, self.workers)
        self.locked: list[int] = []   # addresses of the ring's arrays registered with CUDA
        if workers <= 0:
            return
        # `depth` batches made ahead (Caffe's data_param.prefetch) plus one being made by
        # each worker, so that no worker idles while the next batch in order is late
        self.depth = max(1, depth) + workers
        self.ring = self._allocate(self.depth + SPARE_SLOTS)
        self.free = list(range(len(next(iter(self.ring.values())))))
        self.ready: dict[int, tuple[int, str | None]] = {}
        self.lent: dict[int, list[np.ndarray]] = {}         # CPU: slots the caller holds
        self.sending: dict[int, torch.cuda.Event] = {}     # GPU: slots being copied there
        self.failure: str | None = None
        if self.on_device and self.device.type == "cuda":
            self.locked = _page_lock(self.ring)
        self._unlock = weakref.finalize(self, _unlock, self.ring, self.locked, self.sending)
        context = _worker_context()
        for w in range(workers):
            self.workers.append(_Worker(context, maker, self.ring, f"data-{name}-{w}"))

    def _allocate(self, slots: int) -> dict[str, torch.Tensor]:
        try:
            return {key: torch.from_numpy(np.empty((slots, *shape), dtype)).share_memory_()
                    for key, (shape, dtype) in self.layout.items()}
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
        """Stop the workers and unlock the ring; the next batch to come is `next_batch`.
        Batches already handed out stay valid."""
        self._stop()
        if self.locked:
            self._unlock()

    def _make_here(self) -> dict[str, torch.Tensor]:
        arrays = {key: np.empty(shape, dtype) for key, (shape, dtype) in self.layout.items()}
        self.maker.make(self.next_batch, arrays)
        self.next_batch += 1
        tensors = {key: torch.from_numpy(a) for key, a in arrays.items()}
        return self._finish(tensors) if self.on_device else tensors

    def _finish(self, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The maker's batch from raw `arrays`, completed on the device: from a copy sent
        asynchronously (in pinned memory for a GPU), or on the CPU from the arrays."""
        if self.device.type != "cpu":
            pin = self.device.type == "cuda"
            arrays = {key: _copy(t, pin).to(self.device, non_blocking=True)
                      for key, t in arrays.items()}
        return self.maker.finish(arrays)

    def _hand_out(self, slot: int) -> dict[str, torch.Tensor]:
        tensors = {key: ring[slot] for key, ring in self.ring.items()}
        if self.locked:
            return self._send(slot, tensors)
        if self.on_device or len(self.lent) >= SPARE_SLOTS:   # the slot is free at once
            try:
                return self._finish(tensors) if self.on_device else \
                    {key: _copy(t, pin=False) for key, t in tensors.items()}
            finally:
                self.free.append(slot)
        views = [t.numpy()[...] for t in tensors.values()]
        self.lent[slot] = views
        return {key: torch.from_numpy(v) for key, v in zip(tensors, views)}

    def _send(self, slot: int, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch in `slot` of the page-locked ring, copied to the GPU by DMA and finished
        there; the slot is `sending` until the copy is done."""
        sent = {key: t.to(self.device, non_blocking=True) for key, t in tensors.items()}
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        self.sending[slot] = done
        return self.maker.finish(sent)

    def _reclaim(self) -> None:
        """Return to the ring every lent slot whose tensors are no longer referenced and
        every slot whose copy to the GPU is done (waiting for the oldest such copy when
        SPARE_SLOTS are still being sent)."""
        for slot in [s for s, views in self.lent.items() if not _in_use(views)]:
            del self.lent[slot]
            self.free.append(slot)
        for slot in [s for s, done in self.sending.items() if done.query()]:
            del self.sending[slot]
            self.free.append(slot)
        if len(self.sending) >= SPARE_SLOTS:
            slot = next(iter(self.sending))
            self.sending.pop(slot).synchronize()
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


def _copy(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    """A copy of a CPU tensor (pinned if `pin`), made by numpy in this thread: torch's copy
    would wake its OpenMP pool, whose threads then spin on the cores the workers need."""
    out = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=pin)
    np.copyto(out.numpy(), tensor.numpy())
    return out


def _page_lock(ring: dict[str, torch.Tensor]) -> list[int]:
    """Register the ring's shared memory with CUDA (page-locked, so a GPU reads a slot by
    DMA); the registered addresses, or none where CUDA refuses one of them."""
    cudart = torch.cuda.cudart()
    locked = []
    for tensor in ring.values():
        if int(cudart.cudaHostRegister(tensor.data_ptr(), tensor.numel() * tensor.element_size(),
                                       CUDA_HOST_REGISTER_PORTABLE)) != 0:
            _unlock(ring, locked, {})
            _absorb_cuda_error()
            return locked
        locked.append(tensor.data_ptr())
    return locked


def _absorb_cuda_error() -> None:
    """Reset the CUDA runtime's last error, left by a refused registration: torch checks it
    after each kernel launch and would report it there. A launch here reports and resets it."""
    try:
        torch.ones(1, device="cuda")
    except RuntimeError:
        pass


def _unlock(ring: dict[str, torch.Tensor], locked: list[int],
            sending: dict[int, torch.cuda.Event]) -> None:
    """Wait for the copies still reading the ring, then unregister it from CUDA (the ring is
    an argument so that its memory outlives the registration)."""
    for done in sending.values():
        done.synchronize()
    sending.clear()
    while locked:
        torch.cuda.cudart().cudaHostUnregister(locked.pop())


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

    Subclasses set `name`, `top_shapes`, `maker`, `workers` and `depth`; batches are
    made for `device` (the CPU unless `to(device)` says otherwise), in two stages there
    unless `device_finish` says otherwise (None: for any device but the CPU). Workers start
    on the first batch; `close()` stops them and a later `next()` carries on where the stream was;
    `skip_batches(n)` moves the stream on without making the batches.
    """

    name: str
    top_shapes: dict[str, Shape]
    maker: BatchMaker
    workers: int
    depth: int
    device: torch.device = torch.device("cpu")
    device_finish: bool | None = None
    _prefetcher: Prefetcher | None = None
    _next_batch: int = 0

    def __iter__(self) -> PrefetchingSource:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._prefetcher is None:
            two_stages = self.device.type != "cpu" if self.device_finish is None \
                else self.device_finish
            self._prefetcher = Prefetcher(self.maker.staged(two_stages), workers=self.workers,
                                          depth=self.depth, name=self.name,
                                          start=self._next_batch, device=self.device)
        return next(self._prefetcher)

    def to(self, device: torch.device | str) -> PrefetchingSource:
        """Make batches for `device` from the next one on (the stream goes on where it was)."""
        device = torch.device(device)
        if device != self.device:
            self.close()
            self.device = device
        return self

    def check_labels(self, top: str, classes: int, ignore_label: int | None, layer: str) -> None:
        """Have the maker refuse labels outside [0, classes) when `top` is its label top
        (from the next batch on: workers restart with the new limit)."""
        tops = getattr(self.maker, "tops", ())
        if len(tops) > 1 and top == tops[1]:
            self.close()
            self.maker.check_labels(classes, ignore_label, layer)

    def skip_batches(self, n: int) -> None:
        """Position the stream n batches further on (exact: a batch depends on its index)."""
        self.close()
        self._next_batch += n

    def close(self) -> None:
        """Stop the worker processes (if any) and end this process's reads."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._next_batch = self._prefetcher.next_batch
            self._prefetcher = None
        if hasattr(self.maker, "close"):
            self.maker.close()

    def __enter__(self) -> PrefetchingSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
