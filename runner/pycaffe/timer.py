"""caffe.Timer: Caffe's benchmark Timer (start, stop, ms), on the wall clock; CUDA work
queued before start/stop is waited for, as Caffe's CUDA events time the device."""
from __future__ import annotations

import time
import warnings

import torch


def _now() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


class Timer:
    """start() begins an interval (no-op while running), stop() ends it (no-op when
    stopped); `ms` is the last interval in milliseconds, stopping a running timer first."""

    def __init__(self):
        self._running = False
        self._has_run = False
        self._start = self._stop = 0.0

    def start(self) -> None:
        if not self._running:
            self._start = _now()
            self._running = True
            self._has_run = True

    def stop(self) -> None:
        if self._running:
            self._stop = _now()
            self._running = False

    @property
    def ms(self) -> float:
        if not self._has_run:
            warnings.warn("Timer has never been run before reading time.", stacklevel=2)
            return 0.0
        self.stop()
        return (self._stop - self._start) * 1000.0
