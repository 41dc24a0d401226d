"""Throughput of the Data source against the bound of its cores.

    python bench/bench_data.py [--images 300] [--batch 32] [--seconds 3] [--rounds 5]

Builds a 256 x 256 JPEG LMDB (encoded Datums holding the files) and a raw one with our
convert_imageset from generated images, then reads each through the Data source (TRAIN,
crop_size 227, mirror) with 1 and 2 worker processes. The bound is the same number of
processes doing only the per-image work in a tight loop: decode + crop + mirror for JPEG,
Datum parse + crop + mirror for raw. Source and bound alternate for a few rounds and the
best of each counts (other load on the machine only lowers rates). Prints images/s, their
ratio (target >= 0.9 for JPEG), and the ratio of images per CPU second (source: main process
plus workers), which other load disturbs less.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from google.protobuf import text_format

from runner.data.datum import datum_to_array, parse_datum
from runner.data.lmdb_store import LmdbReader
from runner.data.source import DataSource
from runner.proto import caffe_pb2
from runner.tools.convert_imageset import convert_imageset

SIZE, CROP = 256, 227


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


def source_rate(db: Path, batch: int, workers: int, seconds: float) -> tuple[float, float]:
    """(images per second, images per CPU second of this process and its workers) of the
    Data source, once its workers have started."""
    lp = text_format.Parse(
        f'name: "data" type: "Data" top: "data" top: "label" '
        f'data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }} '
        f'transform_param {{ crop_size: {CROP} mirror: true }}', caffe_pb2.LayerParameter())
    with DataSource(lp, "TRAIN", seed=0, workers=workers) as source:
        for _ in range(2):
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
    """One process doing only the per-image work on `values`: (images/s, images/CPU s)."""
    values, encoded, seconds = args
    cv2.setNumThreads(1)
    rng = np.random.default_rng(1)
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for value in values:
            h, w = rng.integers(SIZE - CROP + 1, size=2)
            if encoded:
                image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_ANYCOLOR)
                cv2.flip(image[h:h + CROP, w:w + CROP], 1)
            else:
                image = datum_to_array(parse_datum(value, ""), "")
                np.ascontiguousarray(image[:, h:h + CROP, w:w + CROP][:, :, ::-1])
            count += 1
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def bound_rate(db: Path, encoded: bool, processes: int, seconds: float) -> tuple[float, float]:
    """(summed images/s, images per CPU second) of `processes` tight loops running at once."""
    with LmdbReader(db) as reader:
        values = [value for _, value in reader]
    if encoded:
        values = [parse_datum(v, "").data for v in values]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        rates = pool.map(_tight_loop, [(values, encoded, seconds)] * processes)
    return sum(r[0] for r in rates), float(np.mean([r[1] for r in rates]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating runs of source and bound; the best of each counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        list_file = make_images(tmp, args.images)
        dbs = {"jpeg": tmp / "jpeg_lmdb", "raw": tmp / "raw_lmdb"}
        convert_imageset(f"{tmp}/", str(list_file), str(dbs["jpeg"]), encoded=True)
        convert_imageset(f"{tmp}/", str(list_file), str(dbs["raw"]))
        print(f"{args.images} images {SIZE}x{SIZE}, crop {CROP} + mirror, batch {args.batch}, "
              f"{multiprocessing.cpu_count()} cores, best of {args.rounds} x {args.seconds:g} s")
        print(f"{'datums':7}{'workers':>8}{'source img/s':>14}{'bound img/s':>13}{'ratio':>7}"
              f"{'ratio per CPU s':>17}")
        for kind, db in dbs.items():
            for workers in (1, 2):
                runs = [(source_rate(db, args.batch, workers, args.seconds),
                         bound_rate(db, kind == "jpeg", workers, args.seconds))
                        for _ in range(args.rounds)]
                got = max(src[0] for src, _ in runs)
                bound = max(b[0] for _, b in runs)
                per_cpu = max(src[1] for src, _ in runs) / max(b[1] for _, b in runs)
                print(f"{kind:7}{workers:>8}{got:>14.0f}{bound:>13.0f}{got / bound:>7.2f}"
                      f"{per_cpu:>17.2f}", flush=True)

if __name__ == "__main__":
    main()
