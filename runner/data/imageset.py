"""Image list files and image reading as Caffe's convert_imageset and ImageData layer do them
(util/io.cpp: ReadImageToCVMat, ReadImageToDatum)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from runner.data.datum import DataError, encoded_datum, image_to_datum
from runner.proto import ProtoError, caffe_pb2, read_file_bytes


def read_image_list(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Lines "NAME LABEL", split at the last space (names may hold spaces); blank lines skipped."""
    path = Path(path)
    try:
        text = read_file_bytes(path).decode("utf-8")
    except ProtoError as exc:
        raise DataError(f"cannot read image list: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"image list '{path}' is not UTF-8 text (byte {exc.start})") from None
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


def check_resize(height: int, width: int, what: str) -> None:
    """Caffe resizes only when both sizes are given; one alone is an error here."""
    if (height > 0) != (width > 0):
        raise DataError(f"{what}: give both a resize height and width, or neither "
                        f"(got {height} x {width})")


def read_image(path: str, height: int = 0, width: int = 0, is_color: bool = True
               ) -> np.ndarray | None:
    """Caffe's ReadImageToCVMat: imread in BGR or gray, resized (bilinear) when both sizes
    are > 0; None when OpenCV cannot read the file."""
    image = cv2.imread(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if image is not None and height > 0 and width > 0:
        image = cv2.resize(image, (width, height))
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
