"""Extract named blobs of a trained net over N mini-batches, as Caffe's
tools/extract_features: one Datum per item (float_data, channels/height/width of the
blob, key = the item's index as 10 digits) into an LMDB (or LevelDB) per blob, or one .npy
per blob.

Usage: python -m runner.tools.extract_features WEIGHTS.caffemodel NET.prototxt
           BLOB1[,BLOB2,...] DB1[,DB2,...] NUM_MINI_BATCHES lmdb|leveldb|npy [CPU|GPU] [DEVICE_ID]
The net runs in the TEST phase and reads its own data layer (e.g. a Data layer over an
LMDB); NUM_MINI_BATCHES x batch_size items are extracted, through a disk-backed array
beside each output, so memory stays small.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from runner import Net, console
from runner.data.databases import WRITERS, write_records
from runner.proto import caffe_pb2
from runner.solver.batches import BatchStream

DB_TYPES = (*sorted(WRITERS), "npy")


def feature_datum(item: np.ndarray) -> caffe_pb2.Datum:
    """One item of a blob as Caffe writes it: legacy channels/height/width (1 where the
    blob has fewer axes), the values as float_data."""
    legacy = list(item.shape[:3]) + [1] * (3 - min(item.ndim, 3))
    datum = caffe_pb2.Datum(channels=legacy[0], height=legacy[1], width=legacy[2])
    datum.float_data.extend(item.reshape(-1).tolist())
    return datum


def check_blobs(net: Net, blob_names: list[str]) -> None:
    missing = [name for name in blob_names if name not in net.blob_shapes]
    if missing:
        raise ValueError(f"unknown feature blob name(s) {missing} in the network {net.origin}; "
                         f"blobs: {', '.join(net.blob_shapes)}")
    if not net.sources:
        raise ValueError(f"{net.origin}: the net has no data layer to read batches from")


def extract(net: Net, features: dict[str, np.ndarray], num_batches: int, device: torch.device) -> None:
    """Fill each features[blob] (num_batches * batch, ...) from forwards in TEST mode."""
    net.to(device).eval()
    batches = BatchStream(net.sources, device)
    with torch.no_grad():
        for i in range(num_batches):
            blobs = net(next(batches))
            for name, array in features.items():
                batch = blobs[name].float().cpu().numpy()
                array[i * len(batch):(i + 1) * len(batch)] = batch


def extract_to_files(net: Net, outputs: dict[str, str], num_batches: int, db_type: str,
                     device: torch.device) -> dict[str, int]:
    """Extract into a disk-backed array per blob beside its output (memory stays small),
    then rename it into place (npy) or write the database from it; returns items per blob."""
    check_blobs(net, list(outputs))
    temps = {name: Path(path).parent / f".{Path(path).name}.{os.getpid()}.npy"
             for name, path in outputs.items()}
    try:
        features = {}
        for name, temp in temps.items():
            shape = net.blob_shapes[name]
            temp.parent.mkdir(parents=True, exist_ok=True)
            features[name] = np.lib.format.open_memmap(
                temp, mode="w+", dtype=np.float32, shape=(num_batches * shape[0], *shape[1:]))
        extract(net, features, num_batches, device)
        for name, path in outputs.items():
            array = features.pop(name)
            if db_type == "npy":
                array.flush()
                del array
                os.replace(temps[name], path)
                continue
            records = ((f"{i:010d}", feature_datum(item).SerializeToString()) for i, item in enumerate(array))
            write_records(path, records, db_type, total=len(array))
        return {name: num_batches * net.blob_shapes[name][0] for name in outputs}
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=console.prog(f"python -m {__spec__.name}"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="trained .caffemodel")
    parser.add_argument("model", help="net prototxt with a data layer (TEST phase)")
    parser.add_argument("blobs", help="blob names, comma-separated")
    parser.add_argument("outputs", help="one database directory or .npy file per blob, comma-separated")
    parser.add_argument("num_mini_batches", type=int)
    parser.add_argument("db_type", choices=DB_TYPES)
    parser.add_argument("mode", nargs="?", default="CPU", choices=("CPU", "GPU"))
    parser.add_argument("device_id", nargs="?", type=int, default=0)
    args = parser.parse_args(argv)
    blob_names, outputs = args.blobs.split(","), args.outputs.split(",")
    if len(blob_names) != len(outputs):
        parser.error(f"{len(blob_names)} blob names but {len(outputs)} outputs: the numbers must be equal")
    if len(set(blob_names)) < len(blob_names) or len(set(outputs)) < len(outputs):
        parser.error("each blob and each output may be named once")
    if args.num_mini_batches < 1:
        parser.error("num_mini_batches must be at least 1")
    taken = [path for path in outputs if os.path.exists(path)]
    if taken:  # Caffe refuses to open an existing database as new; so do we, before any work
        print(f"error: {', '.join(taken)} already exists; remove it or choose another name", file=sys.stderr)
        return 2
    if args.mode == "GPU" and not torch.cuda.is_available():
        print("error: GPU mode asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(f"cuda:{args.device_id}" if args.mode == "GPU" else "cpu")
    try:
        net = Net(args.model, phase="TEST", weights=args.weights)
        counts = extract_to_files(net, dict(zip(blob_names, outputs)), args.num_mini_batches,
                                  args.db_type, device)
        for name, path in zip(blob_names, outputs):
            print(f"Extracted features of {counts[name]} query images for feature blob "
                  f"{name} into {path}", file=sys.stderr)
    except (ValueError, OSError) as err:  # ProtoError, NetBuildError, DataError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
