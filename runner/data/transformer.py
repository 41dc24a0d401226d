"""Caffe's DataTransformer (src/caffe/data_transformer.cpp), vectorised per image.

For each image, in Caffe's order: mirror = `mirror` and Rand(2); crop offsets Rand(H - crop
+ 1), Rand(W - crop + 1) in TRAIN or the centre in TEST; out = (x - mean) * scale, where the
mean is the mean_file blob at the source pixel (so at the crop offset) or one mean_value per
channel; the crop is then flipped left-right when mirrored. Rand(n) is `rng.integers(n)`
on the numpy Generator the caller passes, so results follow from its seed.
"""
from __future__ import annotations

import cv2
import numpy as np

from runner.data.datum import DataError, dims, datum_to_array, decode_flag
from runner.data.mean import load_mean
from runner.proto import caffe_pb2


def phase_value(phase) -> int:
    """caffe_pb2.TRAIN/TEST from the enum value or its name."""
    if isinstance(phase, str):
        try:
            return caffe_pb2.Phase.Value(phase.upper())
        except ValueError:
            raise ValueError(f"phase must be TRAIN or TEST, got {phase!r}") from None
    return int(phase)


class DataTransformer:
    """transform_param of one data layer, applied to CxHxW images."""

    def __init__(self, param: caffe_pb2.TransformationParameter, phase, *, layer: str = ""):
        self.where = f"layer '{layer}'" if layer else "transform_param"
        if param.force_color and param.force_gray:
            raise DataError(f"{self.where}: cannot set both force_color and force_gray")
        if param.HasField("mean_file") and len(param.mean_value):
            raise DataError(f"{self.where}: cannot specify mean_file and mean_value at the "
                            "same time")
        self.train = phase_value(phase) == caffe_pb2.TRAIN
        self.crop = int(param.crop_size)
        self.mirror = bool(param.mirror)
        self.scale = np.float32(param.scale)
        self.flag = decode_flag(param.force_color, param.force_gray)
        self.mean_file = param.mean_file if param.HasField("mean_file") else None
        self.mean = load_mean(self.mean_file) if self.mean_file else None
        self.mean_values = (np.asarray(param.mean_value, np.float32)
                            if len(param.mean_value) else None)

    def decode(self, datum: caffe_pb2.Datum, where: str) -> np.ndarray:
        """A parsed Datum as a CxHxW array, decoded with force_color/force_gray if encoded."""
        return datum_to_array(datum, where, self.flag)

    def output_shape(self, shape: tuple[int, ...], where: str) -> tuple[int, int, int]:
        """CxHxW after the transform; a DataError naming `where` if the image does not fit."""
        channels, height, width = shape
        if self.crop and (height < self.crop or width < self.crop):
            raise DataError(f"{where}: image is {height} x {width}, smaller than "
                            f"crop_size {self.crop} ({self.where})")
        if self.mean is not None and self.mean.shape != tuple(shape):
            raise DataError(f"{where}: image is {dims(shape)} but mean file "
                            f"'{self.mean_file}' is {dims(self.mean.shape)} ({self.where})")
        if self.mean_values is not None and len(self.mean_values) not in (1, channels):
            raise DataError(f"{where}: specify either 1 mean_value or as many as channels "
                            f"({channels}), got {len(self.mean_values)} ({self.where})")
        if self.crop:
            return channels, self.crop, self.crop
        return channels, height, width

    def transform_into(self, image: np.ndarray, out: np.ndarray,
                       rng: np.random.Generator, where: str) -> None:
        """Transform one CxHxW image into `out` (float32, shape `output_shape`)."""
        _, height, width = out.shape
        if self.output_shape(image.shape, where) != out.shape:
            raise DataError(f"{where}: image is {dims(image.shape)}, which does not give "
                            f"the batch's {dims(out.shape)} ({self.where}); use crop_size "
                            "or convert_imageset --resize_height/--resize_width")
        mirror = self.mirror and rng.integers(2) == 1
        h_off = w_off = 0
        if self.crop:
            if self.train:
                h_off = int(rng.integers(image.shape[1] - self.crop + 1))
                w_off = int(rng.integers(image.shape[2] - self.crop + 1))
            else:
                h_off = (image.shape[1] - self.crop) // 2
                w_off = (image.shape[2] - self.crop) // 2
        window = (slice(None), slice(h_off, h_off + height), slice(w_off, w_off + width))
        flip = (slice(None), slice(None), slice(None, None, -1)) if mirror else ...
        _pixels_into(image[window], mirror, out)
        if self.mean is not None:
            np.subtract(out, self.mean[window][flip], out=out)
        elif self.mean_values is not None:
            np.subtract(out, self.mean_values.reshape(-1, 1, 1), out=out)
        if self.scale != 1:
            np.multiply(out, self.scale, out=out)


def _pixels_into(window: np.ndarray, mirror: bool, out: np.ndarray) -> None:
    """out = the CxHxW window as float32, flipped left-right if `mirror`.

    OpenCV flips, and splits a window of a decoded image (channels interleaved in memory)
    into planes; numpy then converts contiguous planes to float32 in one pass: several
    times faster than numpy's strided copies.
    """
    if window.shape[0] > 1 and window.strides[0] == window.itemsize:
        hwc = window.transpose(1, 2, 0)
        # cv2.split is slow on a window of a larger image, fast on a contiguous copy
        hwc = cv2.flip(hwc, 1) if mirror else np.ascontiguousarray(hwc)
        planes = _scratch(out.shape, window.dtype)
        cv2.split(hwc, list(planes))
        np.copyto(out, planes, casting="unsafe")
        return
    for plane, pixels in zip(out, window):
        np.copyto(plane, cv2.flip(pixels, 1) if mirror else pixels, casting="unsafe")


_SCRATCH: dict[tuple, np.ndarray] = {}


def _scratch(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reusable array of this shape and dtype (one per process; only _pixels_into uses it)."""
    key = (tuple(shape), np.dtype(dtype))
    if key not in _SCRATCH:
        _SCRATCH[key] = np.empty(shape, dtype)
    return _SCRATCH[key]
