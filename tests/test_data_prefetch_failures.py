"""Prefetcher: batches in order from workers; a dead data worker is an error in the main process."""
import os
import signal
import time

import pytest

from runner.data.datum import DataError
from runner.data.prefetch import Prefetcher


class SlowMaker:
    """Fills batch i with the value i after `delay` seconds."""

    def __init__(self, delay):
        self.delay = delay

    def make(self, index, arrays):
        time.sleep(self.delay)
        arrays["x"][...] = index


def test_batches_come_in_order_from_workers():
    stream = Prefetcher(SlowMaker(0.0), {"x": (2,)}, workers=2, depth=2, name="data")
    try:
        assert [float(next(stream)["x"][0]) for _ in range(5)] == [0, 1, 2, 3, 4]
    finally:
        stream.close()


class DyingMaker:
    """Kills its own worker process on batch 1."""

    def make(self, index, arrays):
        if index == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        arrays["x"][...] = index


def test_killed_worker_is_reported():
    stream = Prefetcher(DyingMaker(), {"x": (2,)}, workers=1, depth=1, name="data")
    try:
        with pytest.raises(DataError, match=r"layer 'data': data worker failed"):
            for _ in range(3):
                next(stream)
    finally:
        stream.close()
