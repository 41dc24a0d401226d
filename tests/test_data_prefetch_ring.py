"""Prefetching through the shared-memory ring: worker batches equal the in-process ones, a
stream can seek, closing leaves no shared memory or process behind, and batches are finished
(float, mean, scale) on the device that uses them."""
import gc
import os

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from runner.data.datum import encoded_datum
from runner.data.lmdb_store import write_lmdb
from runner.data.source import DataSource
from runner.proto import caffe_pb2

from test_data_prefetch_failures import time_limit  # noqa: F401  (autouse: no test hangs)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def jpeg_db(tmp_path_factory):
    """12 encoded colour JPEGs of 10 x 11 (the interleaved decode path)."""
    rng = np.random.default_rng(4)
    records = []
    for i in range(12):
        image = rng.integers(0, 256, (10, 11, 3), dtype=np.uint8)
        data = cv2.imencode(".jpg", image)[1].tobytes()
        records.append((f"{i:08d}", encoded_datum(data, i).SerializeToString()))
    path = tmp_path_factory.mktemp("ring") / "jpeg"
    write_lmdb(path, records)
    return path


def source(db, workers, seed=5, batch=3, transform="crop_size: 7 mirror: true scale: 0.5 "
                                                     "mean_value: 100 mean_value: 110 "
                                                     "mean_value: 120"):
    lp = text_format.Parse(
        f'name: "data" type: "Data" top: "data" top: "label" '
        f'data_param {{ source: "{db}" batch_size: {batch} backend: LMDB prefetch: 3 }} '
        f'transform_param {{ {transform} }}', caffe_pb2.LayerParameter())
    return DataSource(lp, "TRAIN", seed=seed, workers=workers)


def take(stream, n):
    return [{k: t.clone() for k, t in next(stream).items()} for _ in range(n)]


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_batches_equal_in_process_batches(jpeg_db, workers):
    expected = take(source(jpeg_db, 0), 9)
    with source(jpeg_db, workers) as stream:
        got = take(stream, 9)
    assert len({float(b["data"].sum()) for b in got}) == 9   # distinct batches, not one repeated
    for i, (a, b) in enumerate(zip(expected, got)):
        assert torch.equal(a["data"], b["data"]), f"batch {i}"
        assert torch.equal(a["label"], b["label"]), f"batch {i}"


def test_skip_batches_seeks_to_the_same_batch(jpeg_db):
    expected = take(source(jpeg_db, 0), 7)[5:]
    with source(jpeg_db, 1) as stream:
        next(stream)
        stream.skip_batches(4)               # batch 1 was next; now batch 5 is
        got = take(stream, 2)
    for a, b in zip(expected, got):
        assert torch.equal(a["data"], b["data"]) and torch.equal(a["label"], b["label"])


def shared_memory_in_use():
    """(mappings of /dev/shm, open descriptors, names in /dev/shm) of this process."""
    with open("/proc/self/maps") as maps:
        mapped = sum("/dev/shm/" in line for line in maps)
    return mapped, len(os.listdir("/proc/self/fd")), sorted(os.listdir("/dev/shm"))


def test_closing_leaves_no_shared_memory_or_process(jpeg_db):
    with source(jpeg_db, 1) as first:        # starts the fork server, opens the database
        next(first)
    del first
    gc.collect()
    before = shared_memory_in_use()
    stream = source(jpeg_db, 2)
    held = next(stream)                      # a batch on a ring slot, held across close
    next(stream)
    pids = [w.proc.pid for w in stream._prefetcher.workers]
    assert shared_memory_in_use() != before
    stream.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert held["label"].tolist() == [0, 1, 2]   # still readable after the workers stopped
    del held, stream
    gc.collect()
    assert shared_memory_in_use() == before


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("workers", [0, 1])
def test_batches_finished_on_the_device_from_bytes_equal_cpu_batches(jpeg_db, device,
                                                                     workers):
    """The two-stage path (bytes through the ring, float32/mean/scale where the batch is
    used; to a GPU by DMA from the page-locked ring) gives the one-stage CPU batches, and
    no batch is a view of the ring."""
    expected = take(source(jpeg_db, 0), 12)   # three times round the ring
    with source(jpeg_db, workers) as stream:
        stream.to(device).device_finish = True
        got = [next(stream) for _ in expected]     # kept: none may be a view of a slot
        if workers:
            pixels = stream._prefetcher.ring["pixels"]
            assert pixels.dtype == torch.uint8 and pixels.is_shared()
            assert pixels.shape[-4:] == (3, 7, 7, 3)   # N x h x w x C, as decoded
            assert pixels.is_pinned() == (device == "cuda")   # a GPU reads it by DMA
            ring = {t.untyped_storage().data_ptr() for t in stream._prefetcher.ring.values()}
            assert not ring & {t.untyped_storage().data_ptr() for b in got for t in b.values()}
    if workers:
        assert not pixels.is_pinned()                  # unlocked at close
    for i, (batch, want) in enumerate(zip(got, expected)):
        for k, t in batch.items():
            assert t.device.type == device and t.dtype == torch.float32
            assert torch.equal(t.cpu(), want[k]), f"batch {i} {k}"


class FakeCudart:
    """cudaHostRegister/Unregister that refuse the `refuse`-th registration (1-based)."""

    def __init__(self, refuse=None):
        self.refuse, self.registered, self.unregistered = refuse, [], []

    def cudaHostRegister(self, address, size, flags):
        if len(self.registered) + 1 == self.refuse:
            return 1                                   # cudaErrorInvalidValue
        self.registered.append(address)
        return 0

    def cudaHostUnregister(self, address):
        self.unregistered.append(address)
        return 0


class FakeEvent:
    """A CUDA event whose copy is never done until it is waited for."""

    def __init__(self):
        self.waited = False

    def record(self, stream=None):
        pass

    def query(self):
        return self.waited

    def synchronize(self):
        self.waited = True


@pytest.mark.parametrize("refuse", [None, 2])
def test_page_locking_the_ring_all_or_nothing(monkeypatch, refuse):
    """The ring is registered with CUDA whole, or not at all (a refusal unregisters what was
    registered and resets CUDA's error); unlocking waits for the copies still reading it."""
    from runner.data import prefetch
    cudart, absorbed = FakeCudart(refuse), []
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    monkeypatch.setattr(prefetch, "_absorb_cuda_error", lambda: absorbed.append(True))
    ring = {key: torch.zeros(4, 5).share_memory_() for key in ("pixels", "crops", "labels")}
    locked = prefetch._page_lock(ring)
    addresses = [t.data_ptr() for t in ring.values()]
    if refuse:
        assert locked == [] and cudart.unregistered == addresses[:1] and absorbed
        return
    assert locked == addresses and not absorbed
    sending = {0: FakeEvent(), 3: FakeEvent()}
    events = list(sending.values())
    prefetch._unlock(ring, locked, sending)
    assert all(e.waited for e in events) and not sending and not locked
    assert sorted(cudart.unregistered) == sorted(addresses)


def test_a_slot_being_sent_to_the_gpu_is_not_rewritten(jpeg_db, monkeypatch):
    """The page-locked path's slot cycle, on the CPU with fake CUDA events that complete
    only when waited for: a slot whose copy is pending is never given to a worker, the
    oldest pending copy is waited for once SPARE_SLOTS are pending, and every batch equals
    the one-stage CPU batch."""
    from runner.data import prefetch
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    expected = take(source(jpeg_db, 0), 12)
    with source(jpeg_db, 1) as stream:
        stream.device_finish = True
        got = [next(stream)]
        ring = stream._prefetcher
        ring.locked = [0]            # take the page-locked path (the CPU "sends" the slot)
        try:
            for _ in expected[1:]:
                got.append(next(stream))
                pending = [s for s, e in ring.sending.items() if not e.waited]
                assert 0 < len(pending) <= prefetch.SPARE_SLOTS
                assert not set(ring.sending) & set(ring.free)
        finally:
            ring.locked.clear()      # nothing was registered: nothing to unregister
    for i, (batch, want) in enumerate(zip(got, expected)):
        for k, t in batch.items():
            assert torch.equal(t, want[k]), f"batch {i} {k}"


def test_a_two_stage_maker_is_a_configured_copy_its_layout_changes_nothing(jpeg_db):
    with source(jpeg_db, 0) as stream:
        maker = stream.maker
        two = maker.staged(True)
        assert two is not maker and not maker.device_finish and not maker.interleaved
        assert two.device_finish and two.interleaved        # colour JPEGs decode as h x w x C
        layout = two.layout()
        assert layout["pixels"] == ((3, 7, 7, 3), np.dtype(np.uint8))   # cropped, N x h x w x C
        assert (two.device_finish, two.interleaved, maker.device_finish, maker.interleaved) == \
            (True, True, False, False)
        assert maker.layout() == {"data": ((3, 3, 7, 7), np.dtype(np.float32)),
                                  "label": ((3,), np.dtype(np.float32))}
        assert not maker.staged(False).device_finish
