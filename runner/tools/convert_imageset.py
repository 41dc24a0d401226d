"""Convert a set of images to an LMDB (or LevelDB) of Datum records, as Caffe's convert_imageset.

    python -m runner.tools.convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME
    python -m runner.tools.convert_imageset [FLAGS] CLASSFOLDERS/ DB_NAME

LISTFILE lines are "NAME LABEL" (split at the last space); each image ROOTFOLDER + NAME
becomes a Datum keyed "%08d_NAME" by its line index (after --shuffle). Without a LISTFILE
the folder holds one subfolder per class: its images (subfolders in name order, files in
name order) get the class's label, and the class names are written, one per line in label
order, to labels.txt beside DB_NAME (--labels elsewhere). An existing labels.txt is read
instead, so a validation set converted after the training set gets the same labels. Images OpenCV cannot
read are skipped with a warning, keeping their index, as in Caffe. The database is written
in a temporary directory beside DB_NAME and renamed at the end, so an error or Ctrl-C leaves
no partial database. --shuffle uses --seed (default 0), so it is reproducible.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from runner import console
from runner.data.datum import DataError
from runner.atomic import atomic_write_text
from runner.data.imageset import (check_resize, class_folder_list, image_file_datum, read_class_names,
                                  read_image, read_image_list)
from runner.data.databases import WRITERS, write_records


def record_key(index: int, name: str) -> str:
    """Caffe's key for the image on (shuffled) list line `index`."""
    return f"{index:08d}_{name}"


def listed_images(tool: str, root: str, lines: list[tuple[str, object]], *, gray: bool = False,
                  resize_height: int = 0, resize_width: int = 0, encoded: bool = False,
                  encode_type: str = "") -> Iterator[tuple[int, str, object, str, np.ndarray, str]]:
    """(list index, name, the line's second field, path, image, encoding to store it in) for
    each readable image of `lines`; one OpenCV cannot read is skipped with `tool`'s warning,
    keeping its index, as Caffe's convert tools do."""
    for index, (name, second) in enumerate(lines):
        path = root + name
        image = read_image(path, resize_height, resize_width, not gray)
        if image is None:
            tqdm.write(f"{tool}: could not open or find file {path}; skipped", file=sys.stderr)
            continue
        encoding = encode_type or (name.rsplit(".", 1)[-1].lower() if encoded else "")
        yield index, name, second, path, image, encoding


def imageset_records(root: str, lines: list[tuple[str, int]], *, gray: bool = False,
                     resize_height: int = 0, resize_width: int = 0, check_size: bool = False,
                     encoded: bool = False, encode_type: str = "") -> Iterator[tuple[str, bytes]]:
    """(key, serialized Datum) for each readable image of `lines`, in order."""
    size = None
    for index, name, label, path, image, encoding in listed_images(
            "convert_imageset", root, lines, gray=gray, resize_height=resize_height,
            resize_width=resize_width, encoded=encoded, encode_type=encode_type):
        if check_size:
            size = size or image.size
            if image.size != size:
                raise DataError(f"{path}: image has {image.size} values, the first has "
                                f"{size} (--check_size)")
        datum = image_file_datum(path, label, image, encoding, not gray,
                                 resize_height > 0 and resize_width > 0)
        yield record_key(index, name), datum.SerializeToString()


def convert_imageset(root: str, list_file: str | None, db: str, *, shuffle: bool = False,
                     seed: int = 0, overwrite: bool = False, labels: str | None = None,
                     backend: str = "lmdb", **options) -> int:
    """Write the images of `list_file` (None: of the class subfolders of `root`) to a new
    LMDB (or LevelDB) `db`; returns the number written. `options` are those of
    `imageset_records`.
    """
    check_resize(options.get("resize_height", 0), options.get("resize_width", 0),
                 "--resize_height/--resize_width", not options.get("gray", False))
    if list_file is None:
        return convert_class_folders(root, db, shuffle=shuffle, seed=seed, overwrite=overwrite,
                                     labels=labels, backend=backend, **options)
    lines = read_image_list(list_file)
    if shuffle:
        lines = [lines[i] for i in np.random.default_rng(seed).permutation(len(lines))]
    count = write_records(db, imageset_records(root, lines, **options), backend, total=len(lines),
                          overwrite=overwrite, desc="convert_imageset")
    if count == 0:
        raise DataError(f"none of the {len(lines)} images listed in {list_file} could be read")
    return count


def convert_class_folders(root: str, db: str, *, labels: str | None = None, **kwargs) -> int:
    """The folder-tree form: write the class list to `labels` (default labels.txt beside
    `db`), or follow it when it exists, and convert the images with those labels."""
    labels_path = Path(labels) if labels else Path(db).parent / "labels.txt"
    known = read_class_names(labels_path) if labels_path.is_file() else None
    lines, classes = class_folder_list(root, known)
    listed = Path(db).parent / f".{Path(db).name}.list.txt"
    listed.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_text(listed, "".join(f"{name} {label}\n" for name, label in lines))
        count = convert_imageset(os.path.join(root, ""), str(listed), db, **kwargs)
    finally:
        listed.unlink(missing_ok=True)
    if known is None:
        atomic_write_text(labels_path, "".join(f"{name}\n" for name in classes))
    return count


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """The flags Caffe's convert_imageset and the SSD fork's convert_annoset share."""
    parser.add_argument("--gray", action="store_true", help="treat images as grayscale")
    parser.add_argument("--shuffle", action="store_true",
                        help="randomly shuffle the order of images and their labels")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default 0)")
    parser.add_argument("--backend", default="lmdb", type=str.lower, choices=sorted(WRITERS),
                        help="the database to write (default lmdb, as Caffe's)")
    parser.add_argument("--resize_width", type=int, default=0,
                        help="width images are resized to")
    parser.add_argument("--resize_height", type=int, default=0,
                        help="height images are resized to")
    parser.add_argument("--encoded", action="store_true",
                        help="store the encoded image in the Datum")
    parser.add_argument("--encode_type", default="",
                        help="what to encode the image as ('png', 'jpg', ...); implies --encoded")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DB_NAME if it exists (Caffe refuses)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=console.prog("python -m runner.tools.convert_imageset"),
        description="Convert a set of images to the LMDB (or LevelDB) format used as input for Caffe.")
    parser.add_argument("paths", nargs="+", metavar="ROOTFOLDER/ [LISTFILE] DB_NAME",
                        help='ROOTFOLDER/ is the prefix of every name in LISTFILE (lines "NAME '
                             'LABEL"); without LISTFILE it holds one subfolder per class. DB_NAME '
                             "is the database directory to create")
    parser.add_argument("--labels", help="class list of the folder form (default: labels.txt "
                        "beside DB_NAME; read if it exists, else written)")
    add_image_options(parser)
    parser.add_argument("--check_size", action="store_true",
                        help="check that all the images have the same size")
    args = parser.parse_args(argv)
    if len(args.paths) not in (2, 3):
        parser.error("expected ROOTFOLDER/ LISTFILE DB_NAME, or CLASSFOLDERS/ DB_NAME")
    root, list_file, db = args.paths if len(args.paths) == 3 else (args.paths[0], None, args.paths[1])
    if list_file is not None and args.labels:
        parser.error("--labels is for the folder form (no LISTFILE)")
    try:
        count = convert_imageset(
            root, list_file, db, shuffle=args.shuffle, seed=args.seed,
            overwrite=args.overwrite, labels=args.labels, gray=args.gray, resize_height=max(0, args.resize_height),
            resize_width=max(0, args.resize_width), check_size=args.check_size,
            encoded=args.encoded or bool(args.encode_type), encode_type=args.encode_type,
            backend=args.backend)
    except (DataError, OSError) as exc:  # OSError: an output path that cannot be made
        print(f"convert_imageset: {exc}", file=sys.stderr)
        return 2
    print(f"Processed {count} files into {db}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
