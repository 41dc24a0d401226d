"""Compute the mean image of an LMDB or LevelDB of Datums, as Caffe's compute_image_mean.

    python -m runner.tools.compute_image_mean DB [MEAN.binaryproto] [--backend leveldb]

Writes a BlobProto (num=1, channels, height, width) atomically and prints the mean of each
channel, as Caffe does.
"""
from __future__ import annotations

import argparse
import sys

from runner import console
from runner.atomic import atomic_write_bytes
from runner.data.databases import READERS
from runner.data.datum import DataError
from runner.data.mean import channel_means, compute_image_mean


def write_image_mean(db: str, output: str | None, backend: str = "lmdb") -> list[float]:
    """Compute the mean of `db`, write it to `output` (if given); return the channel means."""
    blob = compute_image_mean(db, backend)
    if output:
        atomic_write_bytes(output, blob.SerializeToString())
    means = channel_means(blob)
    print(f"Number of channels: {blob.channels}")
    for channel, value in enumerate(means):
        print(f"mean_value channel [{channel}]: {value:g}")
    return means


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=console.prog("python -m runner.tools.compute_image_mean"),
        description="Compute the mean image of an LMDB or LevelDB of Datums.")
    parser.add_argument("db", metavar="INPUT_DB", help="LMDB or LevelDB directory")
    parser.add_argument("output", metavar="OUTPUT_FILE", nargs="?",
                        help="mean .binaryproto to write")
    parser.add_argument("--backend", default="lmdb", type=str.lower, choices=sorted(READERS),
                        help="the database's kind (default lmdb, as Caffe's)")
    args = parser.parse_args(argv)
    try:
        write_image_mean(args.db, args.output, args.backend)
    except (DataError, OSError) as exc:  # OSError: an output path that cannot be made
        print(f"compute_image_mean: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
