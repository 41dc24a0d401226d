"""Caffe's DataTransformer (src/caffe/data_transformer.cpp), in two stages.

For each image, in Caffe's order: mirror = `mirror` and Rand(2); crop offsets Rand(H - crop
+ 1), Rand(W - crop + 1) in TRAIN or the centre in TEST; out = (x - mean) * scale, where the
mean is the mean_file blob at the source pixel (so at the crop offset) or one mean_value per
channel; the crop is then flipped left-right when mirrored. Rand(n) is `rng.integers(n)`
on the numpy Generator the caller passes, so results follow from its seed.

`transform_into` does it all per image in numpy, where the image is decoded (for a CPU
consumer, in a data worker, while the pixels are in cache). For another device it comes in
two stages: `crop_into` does the geometry (crop, mirror) per image, keeping the pixels'
dtype (bytes cross to the device, a quarter of the floats), and `finish` does the
arithmetic (float32, mean, scale) on the whole batch there. Every path gives Caffe's
numbers bit for bit: uint8 -> float32 is exact, and the subtraction and the product are
float32 operations, as Caffe's.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from runner.data.datum import DataError, dims, datum_to_array, decode_flag
from runner.data.mean import load_mean
from runner.proto import caffe_pb2

# TransformationParameter fields of the SSD fork, which no data layer here implements.
_SSD_FORK_FIELDS = ("crop_h", "crop_w", "resize_param", "noise_param", "distort_param",
                    "expand_param", "emit_constraint")

# TransformationParameter fields only DeepLab's ImageSegData reads (with scale_factors).
DEEPLAB_FIELDS = ("crop_height", "crop_width")

# What `crop_into` returns per image and `finish` reads back: (h_off, w_off, mirrored).
CROP_FIELDS = 3


def crop_offsets(rng: np.random.Generator | None, train: bool, image_hw: tuple[int, int],
                 crop_hw: tuple[int, int]) -> tuple[int, int]:
    """DataTransformer's crop corner (h_off, w_off) of a crop_hw window in an image_hw
    image: Rand(H - h + 1) then Rand(W - w + 1) in TRAIN, the centre (rounded down) in TEST."""
    (img_h, img_w), (height, width) = image_hw, crop_hw
    if train:
        return int(rng.integers(img_h - height + 1)), int(rng.integers(img_w - width + 1))
    return (img_h - height) // 2, (img_w - width) // 2


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
        fork_fields = [f for f in _SSD_FORK_FIELDS if param.HasField(f)]
        if fork_fields:
            raise DataError(f"{self.where}: transform_param.{', '.join(fork_fields)} (weiliu89/caffe's "
                            "SSD augmentation) is not supported by these data layers")
        deeplab = [f for f in DEEPLAB_FIELDS if param.HasField(f)] + \
            (["scale_factors"] if len(param.scale_factors) else [])
        if deeplab:
            raise DataError(f"{self.where}: transform_param.{', '.join(deeplab)} belong to "
                            "DeepLab's ImageSegData layer; this layer does not read them")
        if param.HasField("mean_file") and len(param.mean_value):
            raise DataError(f"{self.where}: cannot specify mean_file and mean_value at the "
                            "same time")
        self.train = phase_value(phase) == caffe_pb2.TRAIN
        self.crop = int(param.crop_size)
        self.mirror = bool(param.mirror)
        self.scale = float(np.float32(param.scale))
        self.flag = decode_flag(param.force_color, param.force_gray)
        self.mean_file = param.mean_file if param.HasField("mean_file") else None
        self.mean = load_mean(self.mean_file) if self.mean_file else None
        self.mean_values = (np.asarray(param.mean_value, np.float32)
                            if len(param.mean_value) else None)
        self._means_on: dict[torch.device, torch.Tensor] = {}

    def __getstate__(self):
        return {**self.__dict__, "_means_on": {}}   # device copies stay in their process

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

    def crop_into(self, image: np.ndarray, out: np.ndarray, rng: np.random.Generator | None,
                  where: str) -> tuple[int, int, int]:
        """Crop and mirror one CxHxW image into `out` (same dtype, shape `output_shape`);
        returns (h_off, w_off, mirrored) for `finish`. `rng` may be None in TEST without
        mirror (nothing is drawn)."""
        if self.output_shape(image.shape, where) != out.shape:
            raise DataError(f"{where}: image is {dims(image.shape)}, which does not give "
                            f"the batch's {dims(out.shape)} ({self.where}); use crop_size "
                            "or convert_imageset --resize_height/--resize_width")
        if image.dtype != out.dtype:
            raise DataError(f"{where}: pixels are {image.dtype}, the batch's are {out.dtype} "
                            "(as in the first record); a database must not mix byte and "
                            "float Datums")
        _, height, width = out.shape
        mirror = self.mirror and rng.integers(2) == 1
        h_off, w_off = crop_offsets(rng, self.train, image.shape[1:], (self.crop, self.crop)) \
            if self.crop else (0, 0)
        _window_into(image[:, h_off:h_off + height, w_off:w_off + width], mirror, out)
        return h_off, w_off, int(mirror)

    def transform_into(self, image: np.ndarray, out: np.ndarray,
                       rng: np.random.Generator | None, where: str) -> None:
        """Transform one CxHxW image into `out` (float32, shape `output_shape`)."""
        pixels = _scratch("planes", out.shape, image.dtype)
        h_off, w_off, mirror = self.crop_into(image, pixels, rng, where)
        np.copyto(out, pixels, casting="unsafe")
        if self.mean is not None:
            _, height, width = out.shape
            window = self.mean[:, h_off:h_off + height, w_off:w_off + width]
            np.subtract(out, window[:, :, ::-1] if mirror else window, out=out)
        elif self.mean_values is not None:
            np.subtract(out, self.mean_values.reshape(-1, 1, 1), out=out)
        if self.scale != 1:
            np.multiply(out, np.float32(self.scale), out=out)

    def finish(self, pixels: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        """(pixels - mean) * scale as a new contiguous float32 tensor, for an N x C x h x w
        batch of `crop_into` outputs (any strides: a permuted N x h x w x C batch is
        transposed here) and their N x CROP_FIELDS `crops`, on the pixels' device."""
        out = pixels.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        if self.mean is not None:
            out.sub_(self._mean_windows(pixels.device, crops.to(pixels.device), out.shape))
        elif self.mean_values is not None:
            out.sub_(self._device_means(pixels.device).view(1, -1, 1, 1))
        if self.scale != 1:
            out.mul_(self.scale)
        return out

    def _device_means(self, device: torch.device) -> torch.Tensor:
        """The mean blob or mean values as a float32 tensor on `device` (kept)."""
        if device not in self._means_on:
            means = self.mean if self.mean is not None else self.mean_values
            self._means_on[device] = torch.from_numpy(means).to(device)
        return self._means_on[device]

    def _mean_windows(self, device: torch.device, crops: torch.Tensor,
                      shape: torch.Size) -> torch.Tensor:
        """N x C x h x w: each image's window of the mean blob, flipped where it was."""
        _, _, height, width = shape
        mean = self._device_means(device)
        crops = crops.long()
        rows = crops[:, 0:1] + torch.arange(height, device=device)          # N x h
        steps = torch.arange(width, device=device)
        cols = crops[:, 1:2] + torch.where(crops[:, 2:3] == 1, width - 1 - steps, steps)
        return mean[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)  # N x C x h x w


def _window_into(window: np.ndarray, mirror: bool, out: np.ndarray) -> None:
    """out = the CxHxW window, flipped left-right if `mirror`.

    OpenCV flips, and splits a window of a decoded image (channels interleaved in memory)
    into planes: several times faster than numpy's strided copies. An `out` that is itself
    interleaved (a view of an HxWxC array) takes the flipped window as it is.
    """
    if window.shape[0] > 1 and window.strides[0] == window.itemsize:
        hwc = window.transpose(1, 2, 0)
        if out.strides[0] == out.itemsize:
            if mirror:
                cv2.flip(hwc, 1, dst=out.transpose(1, 2, 0))
            else:
                np.copyto(out.transpose(1, 2, 0), hwc)
            return
        # cv2.split is slow on a window of a larger image, fast on a contiguous copy (made
        # in a kept array: a fresh one per image costs more in page faults than the copy)
        contiguous = _scratch("window", hwc.shape, hwc.dtype)
        if mirror:
            cv2.flip(hwc, 1, dst=contiguous)
        else:
            np.copyto(contiguous, hwc)
        cv2.split(contiguous, list(out))
        return
    for plane, pixels in zip(out, window):
        if mirror:
            cv2.flip(pixels, 1, dst=plane)
        else:
            np.copyto(plane, pixels)


_SCRATCH: dict[tuple, np.ndarray] = {}


def _scratch(purpose: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reusable array of this shape and dtype, one per purpose and process (the arrays
    of different purposes are live at once)."""
    key = (purpose, tuple(shape), np.dtype(dtype))
    if key not in _SCRATCH:
        _SCRATCH[key] = np.empty(shape, dtype)
    return _SCRATCH[key]
