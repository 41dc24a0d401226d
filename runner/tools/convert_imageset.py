"""Convert a set of images to an LMDB of Datum records, as Caffe's convert_imageset.

    python -m runner.tools.convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

LISTFILE lines are "NAME LABEL" (split at the last space); each image ROOTFOLDER + NAME
becomes a Datum keyed "%08d_NAME" by its line index (after --shuffle). Images OpenCV cannot
read are skipped with a warning, keeping their index, as in Caffe. The database is written
in a temporary directory beside DB_NAME and renamed at the end, so an error or Ctrl-C leaves
no partial database. --shuffle uses --seed (default 0), so it is reproducible.
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterator

import numpy as np
from tqdm import tqdm

from runner import console
from runner.data.datum import DataError
from runner.data.imageset import check_resize, image_file_datum, read_image, read_image_list
from runner.data.lmdb_store import write_lmdb


def record_key(index: int, name: str) -> str:
    """Caffe's key for the image on (shuffled) list line `index`."""
    return f"{index:08d}_{name}"


def imageset_records(root: str, lines: list[tuple[str, int]], *, gray: bool = False,
                     resize_height: int = 0, resize_width: int = 0, check_size: bool = False,
                     encoded: bool = False, encode_type: str = "") -> Iterator[tuple[str, bytes]]:
    """(key, serialized Datum) for each readable image of `lines`, in order."""
    size = None
    for index, (name, label) in enumerate(lines):
        path = root + name
        image = read_image(path, resize_height, resize_width, not gray)
        if image is None:
            tqdm.write(f"convert_imageset: could not open or find file {path}; skipped",
                       file=sys.stderr)
            continue
        encoding = encode_type or (name.rsplit(".", 1)[-1].lower() if encoded else "")
        if check_size:
            size = size or image.size
            if image.size != size:
                raise DataError(f"{path}: image has {image.size} values, the first has "
                                f"{size} (--check_size)")
        datum = image_file_datum(path, label, image, encoding, not gray,
                                 resize_height > 0 and resize_width > 0)
        yield record_key(index, name), datum.SerializeToString()


def convert_imageset(root: str, list_file: str, db: str, *, shuffle: bool = False,
                     seed: int = 0, overwrite: bool = False, **options) -> int:
    """Write the images of `list_file` to a new LMDB `db`; returns the number written.

    `options` are those of `imageset_records`.
    """
    check_resize(options.get("resize_height", 0), options.get("resize_width", 0),
                 "--resize_height/--resize_width")
    lines = read_image_list(list_file)
    if shuffle:
        lines = [lines[i] for i in np.random.default_rng(seed).permutation(len(lines))]
    count = write_lmdb(db, imageset_records(root, lines, **options), total=len(lines),
                       overwrite=overwrite, desc="convert_imageset")
    if count == 0:
        raise DataError(f"none of the {len(lines)} images listed in {list_file} could be read")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=console.prog("python -m runner.tools.convert_imageset"),
        description="Convert a set of images to the LMDB format used as input for Caffe.")
    parser.add_argument("root", metavar="ROOTFOLDER/", help="prefix of every listed name")
    parser.add_argument("list_file", metavar="LISTFILE", help='lines "NAME LABEL"')
    parser.add_argument("db", metavar="DB_NAME", help="LMDB directory to create")
    parser.add_argument("--gray", action="store_true", help="treat images as grayscale")
    parser.add_argument("--shuffle", action="store_true",
                        help="randomly shuffle the order of images and their labels")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default 0)")
    parser.add_argument("--backend", default="lmdb", help="only lmdb is supported")
    parser.add_argument("--resize_width", type=int, default=0,
                        help="width images are resized to")
    parser.add_argument("--resize_height", type=int, default=0,
                        help="height images are resized to")
    parser.add_argument("--check_size", action="store_true",
                        help="check that all the images have the same size")
    parser.add_argument("--encoded", action="store_true",
                        help="store the encoded image in the Datum")
    parser.add_argument("--encode_type", default="",
                        help="what to encode the image as ('png', 'jpg', ...); implies --encoded")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DB_NAME if it exists (Caffe refuses)")
    args = parser.parse_args(argv)
    if args.backend.lower() != "lmdb":
        parser.error(f"--backend {args.backend} is not supported: use lmdb (the default), and "
                     "`backend: LMDB` in the net's data_param")
    try:
        count = convert_imageset(
            args.root, args.list_file, args.db, shuffle=args.shuffle, seed=args.seed,
            overwrite=args.overwrite, gray=args.gray, resize_height=max(0, args.resize_height),
            resize_width=max(0, args.resize_width), check_size=args.check_size,
            encoded=args.encoded or bool(args.encode_type), encode_type=args.encode_type)
    except DataError as exc:
        print(f"convert_imageset: {exc}", file=sys.stderr)
        return 2
    print(f"Processed {count} files into {args.db}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
