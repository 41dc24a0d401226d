"""Prefetcher: batches in order from workers; a worker's error, a dead worker and Ctrl-C in the
main process are reported or handled without hanging, and an unclosed source lets the
interpreter exit."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from runner.data.datum import DataError
from runner.data.prefetch import Prefetcher

TIME_LIMIT = 60   # seconds; a test past this fails instead of hanging the suite
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def time_limit():
    def expire(*_):
        raise TimeoutError(f"prefetching test ran past {TIME_LIMIT} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TIME_LIMIT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


class TwoFloats:
    """A maker's layout: one array x of two floats per batch."""

    def layout(self):
        return {"x": ((2,), np.dtype(np.float32))}


class SlowMaker(TwoFloats):
    """Fills batch i with the value i after `delay` seconds."""

    def __init__(self, delay):
        self.delay = delay

    def make(self, index, arrays):
        time.sleep(self.delay)
        arrays["x"][...] = index


def test_batches_come_in_order_from_workers():
    stream = Prefetcher(SlowMaker(0.0), workers=2, depth=2, name="data")
    try:
        assert [float(next(stream)["x"][0]) for _ in range(5)] == [0, 1, 2, 3, 4]
    finally:
        stream.close()


class DyingMaker(TwoFloats):
    """Kills its own worker process on batch 1."""

    def make(self, index, arrays):
        if index == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        arrays["x"][...] = index


def test_killed_worker_is_reported():
    stream = Prefetcher(DyingMaker(), workers=1, depth=1, name="data")
    try:
        with pytest.raises(DataError, match=r"layer 'data': data worker failed: process "
                                            r"data-data-0 .* stopped \(killed by signal 9\)"):
            for _ in range(3):
                next(stream)
        with pytest.raises(DataError, match="killed by signal 9"):   # and stays reported
            next(stream)
    finally:
        stream.close()


class FailingMaker(TwoFloats):
    """Raises an unexpected error on batch 2."""

    def make(self, index, arrays):
        if index == 2:
            raise ZeroDivisionError("no batch 2")
        arrays["x"][...] = index


def test_unexpected_worker_error_names_the_batch_and_the_stream_goes_on():
    stream = Prefetcher(FailingMaker(), workers=2, depth=2, name="data")
    try:
        assert [float(next(stream)["x"][0]) for _ in range(2)] == [0, 1]
        with pytest.raises(DataError, match=r"failed on batch 2:(.|\n)*ZeroDivisionError"):
            next(stream)
        assert float(next(stream)["x"][0]) == 3
    finally:
        stream.close()


def test_interrupt_while_waiting_leaves_a_stream_that_closes():
    stream = Prefetcher(SlowMaker(30.0), workers=1, depth=1, name="data")
    pid = stream.workers[0].proc.pid

    def interrupt(*_):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(1)                           # Ctrl-C while the worker is making batch 0
    try:
        with pytest.raises(KeyboardInterrupt):
            next(stream)
    finally:
        signal.signal(signal.SIGALRM, previous)
        signal.alarm(TIME_LIMIT)
    start = time.monotonic()
    stream.close()
    assert time.monotonic() - start < 4       # the busy worker was terminated, not awaited
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_interpreter_exits_with_an_unclosed_source():
    script = textwrap.dedent("""
        from runner.data.prefetch import Prefetcher
        from test_data_prefetch_failures import SlowMaker
        stream = Prefetcher(SlowMaker(0.0), workers=2, depth=2, name="data")
        next(stream)
        print(" ".join(str(w.proc.pid) for w in stream.workers))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=45,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
    assert done.returncode == 0, done.stderr
    time.sleep(0.5)
    for pid in map(int, done.stdout.split()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
