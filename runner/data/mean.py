"""Mean images as Caffe's compute_image_mean makes them (BlobProto num=1, C, H, W) and as
the DataTransformer reads them back."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from tqdm import tqdm

from runner.data.datum import DataError, dims, datum_to_array, parse_datum
from runner.data.databases import LABELS, open_reader
from runner.proto import ProtoError, caffe_pb2, read_file_bytes


def compute_image_mean(db_path: str | os.PathLike, backend: str = "lmdb") -> caffe_pb2.BlobProto:
    """Per-pixel mean over every Datum of an LMDB or LevelDB (encoded ones decoded as stored).

    Sums are float32 and added one Datum at a time, then divided by the count, as Caffe does,
    so the result matches Caffe's bit for bit.
    """
    with open_reader(db_path, backend) as reader:
        total = shape = None
        for key, value in tqdm(reader, total=len(reader), desc="mean", unit="rec"):
            where = f"{LABELS[backend]} '{db_path}' key '{key}'"
            pixels = datum_to_array(parse_datum(value, where), where)
            if total is None:
                shape = pixels.shape
                total = np.zeros(shape, np.float32)
            elif pixels.shape != shape:
                raise DataError(f"{where}: image is {dims(pixels.shape)}, the first record is "
                                f"{dims(shape)}; a mean needs images of one size")
            total += pixels
        count = len(reader)
    mean = total / np.float32(count)
    channels, height, width = shape
    return caffe_pb2.BlobProto(num=1, channels=channels, height=height, width=width,
                               data=mean.ravel().tolist())


def channel_means(blob: caffe_pb2.BlobProto) -> list[float]:
    """Caffe's printed per-channel means: float32 running sums over each channel's pixels."""
    mean = blob_array(blob, "mean")
    return [float(np.add.accumulate(plane.ravel(), dtype=np.float32)[-1]
                  / np.float32(plane.size)) for plane in mean]


def blob_array(blob: caffe_pb2.BlobProto, where: str) -> np.ndarray:
    """A 1xCxHxW BlobProto (legacy dims or shape) as a float32 CxHxW array."""
    if blob.HasField("shape"):
        dims = list(blob.shape.dim)
    else:
        dims = [blob.num, blob.channels, blob.height, blob.width]
    values = blob.data if len(blob.data) else blob.double_data
    if (len(dims) != 4 or dims[0] != 1 or min(dims) <= 0 or math.prod(dims) != len(values)):
        raise DataError(f"{where}: expected a 1 x C x H x W mean blob, got shape {dims} "
                        f"with {len(values)} values")
    return np.asarray(values, np.float32).reshape(dims[1:])


def load_mean(path: str | os.PathLike) -> np.ndarray:
    """Read a mean .binaryproto as a float32 CxHxW array; NaN or inf in it is an error
    (a mean has no use for them and they would turn every input into NaN)."""
    path = Path(path)
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(read_file_bytes(path))
    except ProtoError as exc:
        raise DataError(f"cannot read mean file: {exc}") from None
    except DecodeError as exc:
        raise DataError(f"mean file '{path}' is not a BlobProto ({exc})") from None
    mean = blob_array(blob, f"mean file '{path}'")
    bad = np.count_nonzero(~np.isfinite(mean))
    if bad:
        raise DataError(f"mean file '{path}': {bad} of its {mean.size} values are NaN or inf")
    return mean

