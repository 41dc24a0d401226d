"""Import Fashion-MNIST (Debian's dataset-fashion-mnist IDX files) as Caffe data.

    python -m runner.tools.fashion_mnist --out data/fashion-mnist
        [--source-dir /usr/share/datasets/fashion-mnist] [--limit N] [--overwrite]
        [--images-dir DIR --list FILE [--export-split test]]

Writes OUT/train_lmdb and OUT/test_lmdb (raw 1 x 28 x 28 Datums), OUT/labels.txt (class
names in label order) and OUT/mean.binaryproto (mean of train_lmdb), through the same
writer and mean code as convert_imageset and compute_image_mean. Keys follow
convert_imageset: "%08d_SPLIT/%05d.png". With --images-dir, the images of one split are
also exported as PNG files with a list file, so that

    python -m runner.tools.convert_imageset --gray DIR/ FILE DB

rebuilds that split's database byte for byte.
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import struct
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from runner.atomic import atomic_write_text, temporary_dir_beside
from runner.data.datum import DataError, image_to_datum
from runner.data.lmdb_store import replace_dir, write_lmdb
from runner.tools.compute_image_mean import write_image_mean
from runner.tools.convert_imageset import record_key

SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
PACKAGE = "dataset-fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]
SPLITS = {"train": "train", "test": "t10k"}   # our split name -> IDX file prefix
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """A gzipped IDX file of uint8 values as an array of its declared shape."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file '{path}': {exc}") from None
    header_size = 4 * (ndim + 1)
    if len(raw) < header_size:
        raise DataError(f"'{path}' is too short for an IDX header")
    found, *shape = struct.unpack(f">{ndim + 1}i", raw[:header_size])
    if found != magic:
        raise DataError(f"'{path}': IDX magic number {found}, expected {magic}")
    values = np.frombuffer(raw, np.uint8, offset=header_size)
    if values.size != int(np.prod(shape)):
        raise DataError(f"'{path}': header declares {shape}, file holds {values.size} values")
    return values.reshape(shape)


def load_split(source_dir: Path, split: str, limit: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(N x 28 x 28 uint8 images, N labels) of 'train' or 'test'."""
    if not source_dir.is_dir():
        raise DataError(f"Fashion-MNIST not found in {source_dir}: install it with "
                        f"`apt-get install {PACKAGE}`")
    prefix = source_dir / SPLITS[split]
    images = read_idx(Path(f"{prefix}-images-idx3-ubyte.gz"), _IMAGES_MAGIC, 3)
    labels = read_idx(Path(f"{prefix}-labels-idx1-ubyte.gz"), _LABELS_MAGIC, 1)
    if len(images) != len(labels):
        raise DataError(f"{prefix}-*: {len(images)} images but {len(labels)} labels")
    return images[:limit], labels[:limit]


def image_name(split: str, index: int) -> str:
    """Name of an exported image relative to the export folder (also used in keys)."""
    return f"{split}/{index:05d}.png"


def split_records(split: str, images: np.ndarray, labels: np.ndarray):
    """(key, serialized raw Datum) per image, as convert_imageset --gray writes them."""
    for index, (image, label) in enumerate(zip(images, labels)):
        yield (record_key(index, image_name(split, index)),
               image_to_datum(image, int(label)).SerializeToString())


def export_images(split: str, images: np.ndarray, labels: np.ndarray, images_dir: Path,
                  list_file: Path) -> None:
    """Write the images as PNG files in images_dir/SPLIT/ (a folder built aside and renamed
    into place) and a "NAME LABEL" list file."""
    tmp = temporary_dir_beside(images_dir / split)
    try:
        for index, image in enumerate(tqdm(images, desc="png", unit="img")):
            cv2.imwrite(str(tmp / Path(image_name(split, index)).name), image)
        replace_dir(tmp, images_dir / split)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(list_file, "".join(f"{image_name(split, index)} {int(label)}\n"
                                         for index, label in enumerate(labels)))


def import_fashion_mnist(out: Path, source_dir: Path = Path(SOURCE_DIR), *,
                         limit: int | None = None, overwrite: bool = False,
                         images_dir: Path | None = None, list_file: Path | None = None,
                         export_split: str = "test") -> dict[str, int]:
    """Write train/test LMDBs, labels.txt and the train mean; return records per split."""
    counts = {}
    for split in SPLITS:
        images, labels = load_split(source_dir, split, limit)
        counts[split] = write_lmdb(out / f"{split}_lmdb", split_records(split, images, labels),
                                   total=len(images), overwrite=overwrite, desc=split)
        if images_dir is not None and split == export_split:
            export_images(split, images, labels, images_dir, list_file)
    atomic_write_text(out / "labels.txt", "".join(f"{name}\n" for name in CLASSES))
    write_image_mean(str(out / "train_lmdb"), str(out / "mean.binaryproto"))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.tools.fashion_mnist",
                                     description="Import Fashion-MNIST as Caffe LMDBs.")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--source-dir", type=Path, default=Path(SOURCE_DIR),
                        help=f"folder of the IDX .gz files (default {SOURCE_DIR})")
    parser.add_argument("--limit", type=int, help="import only the first N images per split")
    parser.add_argument("--overwrite", action="store_true", help="replace existing databases")
    parser.add_argument("--images-dir", type=Path, help="also export PNG images here")
    parser.add_argument("--list", type=Path, dest="list_file",
                        help="list file of the exported images (with --images-dir)")
    parser.add_argument("--export-split", choices=sorted(SPLITS), default="test",
                        help="split to export as PNG (default test)")
    args = parser.parse_args(argv)
    if (args.images_dir is None) != (args.list_file is None):
        parser.error("--images-dir and --list go together")
    try:
        counts = import_fashion_mnist(args.out, args.source_dir, limit=args.limit,
                                      overwrite=args.overwrite, images_dir=args.images_dir,
                                      list_file=args.list_file, export_split=args.export_split)
    except (DataError, OSError) as exc:  # OSError: an output path that cannot be made
        print(f"fashion_mnist: {exc}", file=sys.stderr)
        return 2
    print(f"Fashion-MNIST: {counts['train']} train and {counts['test']} test images "
          f"in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
