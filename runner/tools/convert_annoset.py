"""Convert images and their box annotations to an LMDB (or LevelDB) of AnnotatedDatum
records, as the SSD fork's convert_annoset (weiliu89/caffe tools/convert_annoset.cpp).

    python -m runner.tools.convert_annoset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

With --anno_type detection (and --label_map_file) LISTFILE pairs an image with its
annotation file ("IMAGE ANNOTATION", names prefixed with ROOTFOLDER/): Pascal VOC XML
(--label_type xml) or "label xmin ymin xmax ymax" lines (--label_type txt), boxes in pixels,
stored normalised (runner.data.annotations). An image without its annotation file gets no
box. With --anno_type classification (the default) the lines are "IMAGE LABEL" as for
convert_imageset, stored as AnnotatedDatum without a type. Keys are "%08d_IMAGE" by line
index (after --shuffle, seeded by --seed); images OpenCV cannot read are skipped with a
warning. The database is written atomically.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Iterator

import numpy as np

from runner import console
from runner.data.annotations import read_label_map, text_annotation, voc_annotation
from runner.data.databases import write_records
from runner.data.datum import DataError
from runner.data.imageset import check_resize, image_file_datum, read_image, read_image_list, read_pair_list
from runner.proto import caffe_pb2
from runner.tools.convert_imageset import add_image_options, listed_images, record_key


def annoset_records(root: str, lines: list[tuple[str, str | int]], *, detection: bool,
                    label_type: str = "xml", names: dict[str, int] | None = None,
                    gray: bool = False, resize_height: int = 0, resize_width: int = 0,
                    encode_type: str = "", encoded: bool = False) -> Iterator[tuple[str, bytes]]:
    """(key, serialized AnnotatedDatum) for each readable image of `lines`, in order."""
    resized = resize_height > 0 and resize_width > 0
    for index, name, second, path, image, encoding in listed_images(
            "convert_annoset", root, lines, gray=gray, resize_height=resize_height,
            resize_width=resize_width, encoded=encoded, encode_type=encode_type):
        record = caffe_pb2.AnnotatedDatum()
        record.datum.CopyFrom(image_file_datum(path, -1 if detection else second, image, encoding,
                                               not gray, resized))
        if record.datum.encoded:   # the SSD fork's ReadImageToDatum gives encoded datums their size
            record.datum.channels, record.datum.height, record.datum.width = \
                image.shape[2] if image.ndim == 3 else 1, image.shape[0], image.shape[1]
        if detection:
            record.type = caffe_pb2.AnnotatedDatum.BBOX
            annotation = root + second
            if os.path.isfile(annotation):
                original = read_image(path, 0, 0, not gray).shape[:2] if resized \
                    else image.shape[:2]   # GetImageSize: the size before any resize
                groups = voc_annotation(annotation, original, names) if label_type == "xml" \
                    else text_annotation(annotation, original)
                record.annotation_group.extend(groups)
        yield record_key(index, name), record.SerializeToString()


def convert_annoset(root: str, list_file: str, db: str, *, anno_type: str = "classification",
                    label_map_file: str = "", check_label: bool = False, shuffle: bool = False,
                    seed: int = 0, overwrite: bool = False, backend: str = "lmdb", **options) -> int:
    """Write the images (and annotations) of `list_file` to a new database `db`; returns the
    number written. `options` are those of `annoset_records`."""
    check_resize(options.get("resize_height", 0), options.get("resize_width", 0),
                 "--resize_height/--resize_width", not options.get("gray", False))
    detection = anno_type == "detection"
    names = None
    if detection:
        if not label_map_file:
            raise DataError("--anno_type detection needs --label_map_file (a LabelMap prototxt)")
        names = read_label_map(label_map_file, check_label)   # read for txt too, as the fork
        lines = read_pair_list(list_file)
    else:
        lines = read_image_list(list_file)
    if shuffle:
        lines = [lines[i] for i in np.random.default_rng(seed).permutation(len(lines))]
    count = write_records(db, annoset_records(root, lines, detection=detection, names=names, **options),
                          backend, total=len(lines), overwrite=overwrite, desc="convert_annoset")
    if count == 0:
        raise DataError(f"none of the {len(lines)} images listed in {list_file} could be read")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=console.prog("python -m runner.tools.convert_annoset"),
        description="Convert images and their annotations to the LMDB (or LevelDB) of "
                    "AnnotatedDatum records SSD's AnnotatedData layer reads.")
    parser.add_argument("root", metavar="ROOTFOLDER/", help="prefix of every name in LISTFILE")
    parser.add_argument("list_file", metavar="LISTFILE",
                        help='"IMAGE ANNOTATION" (detection) or "IMAGE LABEL" lines')
    parser.add_argument("db", metavar="DB_NAME", help="the database directory to create")
    parser.add_argument("--anno_type", default="classification", choices=("classification", "detection"))
    parser.add_argument("--label_type", default="xml", choices=("xml", "txt"),
                        help="annotation files: Pascal VOC XML or 'label xmin ymin xmax ymax' lines")
    parser.add_argument("--label_map_file", default="", help="LabelMap prototxt (name -> label)")
    parser.add_argument("--check_label", action="store_true",
                        help="refuse a label map that lists a name twice")
    add_image_options(parser)
    args = parser.parse_args(argv)
    try:
        count = convert_annoset(
            args.root, args.list_file, args.db, anno_type=args.anno_type,
            label_map_file=args.label_map_file, check_label=args.check_label,
            shuffle=args.shuffle, seed=args.seed, overwrite=args.overwrite, backend=args.backend,
            label_type=args.label_type, gray=args.gray, resize_height=max(0, args.resize_height),
            resize_width=max(0, args.resize_width), encode_type=args.encode_type,
            encoded=args.encoded or bool(args.encode_type))
    except (DataError, OSError) as exc:  # OSError: an output path that cannot be made
        print(f"convert_annoset: {exc}", file=sys.stderr)
        return 2
    print(f"Processed {count} files into {args.db}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
