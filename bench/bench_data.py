"""Throughput of the Data source against the bound of its cores.

    python bench/bench_data.py [--images 300] [--batch 32] [--seconds 2] [--rounds 7]

Builds a 256 x 256 JPEG LMDB (encoded Datums holding the files) and a raw one with our
convert_imageset from generated images, then reads each through the Data source (TRAIN,
crop_size 227, mirror) with 1 and 2 worker processes, in both of its modes:
  - `cpu`: float32 batches for a CPU consumer (the workers write the floats);
  - `gpu`: the CPU's share of feeding a GPU: workers write cropped bytes into the ring,
    which a GPU reads by DMA (the ring is page-locked), so this process only hands each
    slot over; the copy and the float32, mean and scale arithmetic are the GPU's and are
    left out. This machine needs no GPU for it.
The bound is the same number of processes doing only the per-image work in a tight loop:
decode + crop + mirror for JPEG, Datum parse + crop + mirror for raw. A `cpu` row is judged
against the bound that also writes each crop as float32 planes into a batch-sized array,
since Caffe's DataTransformer writes those floats too; a `gpu` row against the decode-only
bound (the floats are the GPU's). `decode ratio` (the source against the decode-only
bound) is reported for every row. Source and bounds run in pairs, one right after the
other, for several rounds; each round gives a ratio, and the median over rounds counts
(other load on a shared machine shifts both runs of a pair alike, and a median is not
pulled by one disturbed round). Prints the median images/s, the median ratio (target >= 0.9
for JPEG), and the median ratio of images per CPU second (source: main process plus
workers).
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from statistics import median

import cv2
import numpy as np
import torch
from google.protobuf import text_format
from tqdm import tqdm

from runner.data.datum import datum_to_array, parse_datum
from runner.data.lmdb_store import LmdbReader
from runner.data.source import DataSource, DatabaseBatches
from runner.proto import caffe_pb2
from runner.tools.convert_imageset import convert_imageset

SIZE, CROP = 256, 227
# Steady state is measured: the source first runs this long, so that each worker has
# mapped every slot of the ring (a first write to a shared page costs a page fault).
WARM_SECONDS = 1.0


def make_images(folder: Path, count: int) -> Path:
    """Photo-like JPEGs (smooth colour fields plus grain) and their list file."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        field = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (SIZE, SIZE),
                           interpolation=cv2.INTER_CUBIC)
        grain = rng.normal(0, 12, (SIZE, SIZE, 3))
        image = np.clip(field + grain, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), image)
        lines.append(f"{i:05d}.jpg {i % 1000}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BytesForDevice(DatabaseBatches):
    """The Data layer's batches for a device, minus the device's work: `finish` returns
    the raw arrays, the ring slot itself (where a GPU's DMA would read)."""

    def finish(self, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return arrays


def source_rate(db: Path, batch: int, workers: int, seconds: float,
                mode: str) -> tuple[float, float]:
    """(images per second, images per CPU second of this process and its workers) of the
    Data source in `mode` (cpu or gpu, see above), in steady state (after WARM_SECONDS)."""
    lp = text_format.Parse(
        f'name: "data" type: "Data" top: "data" top: "label" '
        f'data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }} '
        f'transform_param {{ crop_size: {CROP} mirror: true }}', caffe_pb2.LayerParameter())
    with DataSource(lp, "TRAIN", seed=0, workers=workers) as source:
        if mode == "gpu":
            source.maker.__class__ = BytesForDevice
            source.device_finish = True
        warm = time.perf_counter()   # until every worker has written to every ring slot
        while time.perf_counter() - warm < WARM_SECONDS:
            next(source)
        pids = [os.getpid()] + [p.pid for p in multiprocessing.active_children()]
        cpu = sum(map(_cpu_seconds, pids))
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            next(source)
            count += batch
        wall = time.perf_counter() - start
        cpu = sum(map(_cpu_seconds, pids)) - cpu
    return count / wall, count / cpu


def _tight_loop(args) -> tuple[float, float]:
    """One process doing only the per-image work on `values`: (images/s, images/CPU s).
    With `to_float` it also writes each crop as float32 planes into a batch-sized array
    (the work a CPU batch adds, as Caffe's DataTransformer's)."""
    values, encoded, seconds, to_float = args
    cv2.setNumThreads(1)
    rng = np.random.default_rng(1)
    planes = np.empty((3, CROP, CROP), np.uint8)
    flipped = np.empty((CROP, CROP, 3), np.uint8)
    floats = np.ones((32, 3, CROP, CROP), np.float32)   # written now: no page faults later
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for value in values:
            h, w = rng.integers(SIZE - CROP + 1, size=2)
            if encoded:
                image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_ANYCOLOR)
                crop = cv2.flip(image[h:h + CROP, w:w + CROP], 1, dst=flipped)
                if to_float:
                    cv2.split(crop, list(planes))
                    np.copyto(floats[count % 32], planes, casting="unsafe")
            else:
                image = datum_to_array(parse_datum(value, ""), "")
                crop = np.ascontiguousarray(image[:, h:h + CROP, w:w + CROP][:, :, ::-1])
                if to_float:
                    np.copyto(floats[count % 32], crop, casting="unsafe")
            count += 1
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def bound_values(db: Path, encoded: bool) -> list[bytes]:
    """What the tight loops work on: the JPEG bytes, or the serialized raw Datums."""
    with LmdbReader(db) as reader:
        values = [value for _, value in reader]
    return [parse_datum(v, "").data for v in values] if encoded else values


def bound_rate(pool, processes: int, values: list[bytes], encoded: bool, seconds: float,
               to_float: bool = False) -> tuple[float, float]:
    """(summed images/s, images per CPU second) of `processes` tight loops running at once
    in `pool` (of that many processes)."""
    rates = pool.map(_tight_loop, [(values, encoded, seconds, to_float)] * processes,
                     chunksize=1)
    return sum(r[0] for r in rates), float(np.mean([r[1] for r in rates]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=7,
                        help="pairs of source and bound runs; the median ratio counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        list_file = make_images(tmp, args.images)
        dbs = {"jpeg": tmp / "jpeg_lmdb", "raw": tmp / "raw_lmdb"}
        convert_imageset(f"{tmp}/", str(list_file), str(dbs["jpeg"]), encoded=True)
        convert_imageset(f"{tmp}/", str(list_file), str(dbs["raw"]))
        print(f"{args.images} images {SIZE}x{SIZE}, crop {CROP} + mirror, batch {args.batch}, "
              f"{multiprocessing.cpu_count()} cores, median of {args.rounds} pairs of "
              f"{args.seconds:g} s runs")
        print(f"{'datums':7}{'for':>5}{'workers':>9}{'source img/s':>14}{'bound img/s':>13}"
              f"{'ratio':>7}{'ratio per CPU s':>17}{'decode ratio':>14}")
        for kind, db in dbs.items():
            values = bound_values(db, kind == "jpeg")
            for mode, workers in itertools.product(("cpu", "gpu"), (1, 2)):
                rounds = []   # (source, the bound it is judged against, decode-only bound)
                with multiprocessing.get_context("spawn").Pool(workers) as pool:
                    for _ in tqdm(range(args.rounds), leave=False,
                                  desc=f"{kind} for {mode}, {workers} workers"):
                        src = source_rate(db, args.batch, workers, args.seconds, mode)
                        decode = bound_rate(pool, workers, values, kind == "jpeg", args.seconds)
                        judge = bound_rate(pool, workers, values, kind == "jpeg", args.seconds,
                                           to_float=True) if mode == "cpu" else decode
                        rounds.append((src, judge, decode))
                got = median(src[0] for src, _, _ in rounds)
                bound = median(b[0] for _, b, _ in rounds)
                ratio = median(src[0] / b[0] for src, b, _ in rounds)
                per_cpu = median(src[1] / b[1] for src, b, _ in rounds)
                decode_ratio = median(src[0] / d[0] for src, _, d in rounds)
                print(f"{kind:7}{mode:>5}{workers:>9}{got:>14.0f}{bound:>13.0f}{ratio:>7.2f}"
                      f"{per_cpu:>17.2f}{decode_ratio:>14.2f}", flush=True)

if __name__ == "__main__":
    main()
