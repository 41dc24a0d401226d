"""Image list files and image reading as Caffe's convert_imageset and ImageData layer do them
(util/io.cpp: ReadImageToCVMat, ReadImageToDatum)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from runner.data.datum import DataError, encoded_datum, image_to_datum
from runner.proto import ProtoError, caffe_pb2, read_file_bytes
from runner.shapes import INT_MAX


def read_list_text(path: Path) -> str:
    """An image list file's text (UTF-8), or a DataError naming the file."""
    try:
        return read_file_bytes(path).decode("utf-8")
    except ProtoError as exc:
        raise DataError(f"cannot read image list: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"image list '{path}' is not UTF-8 text (byte {exc.start})") from None


def read_image_list(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Lines "NAME LABEL", split at the last space (names may hold spaces); blank lines skipped."""
    path = Path(path)
    text = read_list_text(path)
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, _, label = line.rpartition(" ")
        if not name or not label.lstrip("-").isdigit():
            raise DataError(f"{path}:{number}: expected 'NAME LABEL' with an integer label, "
                            f"got {line!r}")
        entries.append((name, int(label)))
    if not entries:
        raise DataError(f"image list '{path}' names no images")
    return entries


def read_pair_list(path: Path) -> list[tuple[str, str]]:
    """The (image, label file) pairs of a list: whitespace-separated tokens taken two at a
    time, as the forks' `infile >> filename >> label_filename` (SegNet's DenseImageData,
    SSD's convert_annoset)."""
    tokens = read_list_text(path).split()
    if not tokens:
        raise DataError(f"image list '{path}' names no images")
    if len(tokens) % 2:
        raise DataError(f"image list '{path}': expected 'IMAGE LABEL' pairs, but its "
                        f"{len(tokens)} names leave '{tokens[-1]}' without a partner")
    return list(zip(tokens[::2], tokens[1::2]))


def read_class_names(path: Path) -> list[str]:
    """labels.txt: one class name per line, in label order."""
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise DataError(f"cannot read class list '{path}': {exc.strerror}") from None
    names = [n for n in names if n]
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}: expected one distinct class name per line")
    return names


def class_folder_list(root: str | os.PathLike, classes: list[str] | None = None
                      ) -> tuple[list[tuple[str, int]], list[str]]:
    """A folder tree with one subfolder per class as ("SUBFOLDER/FILE", label) lines (files
    in name order, subfolders searched too) and the class names. Labels follow `classes`
    (e.g. the train set's labels.txt), else the subfolders' sorted names."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder of class subfolders")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"'{root}' has no class subfolders (expected ROOT/<class>/<image>)")
    if classes is None:
        classes = found
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise DataError(f"'{root}': subfolder(s) {unknown} are not in the class list "
                        f"{classes}; add them to labels.txt or remove them")
    lines = []
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
            lines += [(p.relative_to(root).as_posix(), label) for p in files]
    if not lines:
        raise DataError(f"'{root}': the class subfolders hold no files")
    return lines, classes


def check_resize(height: int, width: int, what: str, is_color: bool = True) -> None:
    """Caffe resizes only when both sizes are given; one alone is an error here, and so is
    an image of more values than a Datum or blob holds (INT_MAX)."""
    if (height > 0) != (width > 0):
        raise DataError(f"{what}: give both a resize height and width, or neither "
                        f"(got {height} x {width})")
    values = (3 if is_color else 1) * max(height, 0) * max(width, 0)
    if values > INT_MAX:
        raise DataError(f"{what}: a {height} x {width} {'colour' if is_color else 'gray'} "
                        f"image holds {values} values, more than Caffe's limit of {INT_MAX}")


def read_image(path: str, height: int = 0, width: int = 0, is_color: bool = True
               ) -> np.ndarray | None:
    """Caffe's ReadImageToCVMat: imread in BGR or gray, resized (bilinear) when both sizes
    are > 0; None when OpenCV cannot read the file."""
    image = cv2.imread(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if image is not None and height > 0 and width > 0:
        try:
            image = cv2.resize(image, (width, height))
        except cv2.error as err:   # out of memory, most likely
            raise DataError(f"{path}: cannot resize to {height} x {width}: "
                            f"{str(err).strip().splitlines()[-1]}") from None
    return image


def _same_format(filename: str, encoding: str) -> bool:
    """Caffe's matchExt: the file extension equals the encoding (jpeg counts as jpg)."""
    ext = filename.rsplit(".", 1)[-1].lower()
    encoding = encoding.lower()
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def image_file_datum(path: str, label: int, image: np.ndarray, encoding: str,
                     is_color: bool, resized: bool) -> caffe_pb2.Datum:
    """Caffe's ReadImageToDatum for an image already read with `read_image`.

    Without `encoding`: raw CHW bytes. With it: the file's own bytes when the image needs no
    change (same colour mode, no resize, extension matching the encoding), else the image
    re-encoded with cv2.imencode.
    """
    if not encoding:
        return image_to_datum(image, label)
    if (image.ndim == 3) == is_color and not resized and _same_format(path, encoding):
        try:
            return encoded_datum(read_file_bytes(path), label)
        except ProtoError as exc:
            raise DataError(str(exc)) from None
    try:
        ok, buf = cv2.imencode("." + encoding, image)
    except cv2.error:
        ok = False
    if not ok:
        raise DataError(f"OpenCV cannot encode images as '{encoding}' (--encode_type)")
    return encoded_datum(buf.tobytes(), label)
