"""Caffe's Datum record: build one from an image or from encoded bytes, parse and check one,
and turn one into a CHW array (raw bytes, float_data, or an image decoded with OpenCV)."""
from __future__ import annotations

import math

import cv2
import numpy as np
from google.protobuf.message import DecodeError

from runner.proto import caffe_pb2


class DataError(ValueError):
    """Unusable data: the message names the database and key, or the file and line."""


def dims(shape) -> str:
    """A shape as text for messages: "3 x 28 x 28"."""
    return " x ".join(str(d) for d in shape)


def image_to_datum(image: np.ndarray, label: int) -> caffe_pb2.Datum:
    """Caffe's CVMatToDatum: an HxW or HxWxC uint8 image (BGR) as a raw Datum of CHW bytes."""
    if image.dtype != np.uint8:
        raise DataError(f"raw Datums hold uint8 pixels, got {image.dtype}")
    hwc = image[:, :, None] if image.ndim == 2 else image
    height, width, channels = hwc.shape
    return caffe_pb2.Datum(channels=channels, height=height, width=width,
                           data=np.ascontiguousarray(hwc.transpose(2, 0, 1)).tobytes(),
                           label=int(label), encoded=False)


def encoded_datum(data: bytes, label: int) -> caffe_pb2.Datum:
    """Caffe's ReadFileToDatum: encoded image bytes (a file or cv2.imencode output)."""
    return caffe_pb2.Datum(data=bytes(data), label=int(label), encoded=True)


def parse_datum(value: bytes | memoryview, where: str) -> caffe_pb2.Datum:
    """Parse one database value as a Datum and check its header can describe an image
    (`datum_to_array` checks the pixels: each read of a bytes field copies it)."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except DecodeError as exc:
        raise DataError(f"{where}: record is not a Datum ({exc})") from None
    if not datum.encoded and min(datum.channels, datum.height, datum.width) <= 0:
        raise DataError(f"{where}: record is not an image Datum (channels={datum.channels} "
                        f"height={datum.height} width={datum.width})")
    return datum


def decode_flag(force_color: bool = False, force_gray: bool = False) -> int:
    """OpenCV imdecode flag for Caffe's DecodeDatumToCVMat(Native)."""
    if force_color:
        return cv2.IMREAD_COLOR
    if force_gray:
        return cv2.IMREAD_GRAYSCALE
    return cv2.IMREAD_ANYCOLOR


def hwc_to_chw(image: np.ndarray) -> np.ndarray:
    """View an OpenCV HxW or HxWxC image as CxHxW (no copy)."""
    return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)


def datum_to_array(datum: caffe_pb2.Datum, where: str, flag: int = cv2.IMREAD_ANYCOLOR
                   ) -> np.ndarray:
    """Pixels of a parsed Datum as CxHxW: uint8 for bytes and images, float32 for float_data.

    Encoded Datums are decoded with `flag` (see `decode_flag`); raw Datums are not touched by
    force_color/force_gray, as in Caffe.
    """
    data = datum.data            # read once: each read of a bytes field copies it
    if datum.encoded:
        if not data:
            raise DataError(f"{where}: encoded Datum without image bytes")
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        except cv2.error:
            image = None
        if image is None:
            raise DataError(f"{where}: encoded image cannot be decoded by OpenCV")
        return hwc_to_chw(image)
    shape = (datum.channels, datum.height, datum.width)
    pixels = np.frombuffer(data, np.uint8) if data else np.asarray(datum.float_data, np.float32)
    if pixels.size != math.prod(shape):
        raise DataError(f"{where}: record is not an image Datum (channels={shape[0]} "
                        f"height={shape[1]} width={shape[2]}, {pixels.size} values)")
    if not data and not np.isfinite(pixels).all():
        raise DataError(f"{where}: float_data holds "
                        f"{np.count_nonzero(~np.isfinite(pixels))} NaN or inf values")
    return pixels.reshape(shape)
