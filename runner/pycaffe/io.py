"""caffe.io: pycaffe's array <-> BlobProto/Datum converters, its Transformer, and image
loading, resizing and 10-crop sampling (with OpenCV where pycaffe used scikit-image).

The converters call runner.proto and runner.data, the image helpers runner.zoo's
classifier code; what is here is pycaffe's calling conventions (dtypes, layouts, names).
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from runner.data.datum import datum_to_array as _datum_pixels
from runner.proto import array_to_blob, blob_to_array
from runner.zoo.classifier import oversample as _ten_crops
from runner.zoo.classifier import resize as _resize

from .proto import caffe_pb2

# scikit-image's rgb2gray weights (ITU-R 709), which pycaffe's load_image(color=False) used.
_GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)
# skimage interpolation orders that OpenCV has.
_INTERPOLATION = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}


# ---- BlobProto / Datum <-> ndarray -------------------------------------------------------

def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """The blob's data (or diff) in its shape (legacy num/channels/height/width first), as
    float64 like pycaffe; a count that does not fit the shape is a ValueError."""
    return blob_to_array(blob, "BlobProto", diff=return_diff).astype(np.float64)


def array_to_blobproto(arr, diff=None) -> caffe_pb2.BlobProto:
    """An N-d array (and optionally its diff, same shape) as a BlobProto with shape.dim."""
    return array_to_blob(arr, diff)


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    """Arrays -> a serialized BlobProtoVector."""
    return caffe_pb2.BlobProtoVector(
        blobs=[array_to_blobproto(arr) for arr in arraylist]).SerializeToString()


def blobprotovector_str_to_arraylist(serialized: bytes) -> list[np.ndarray]:
    """A serialized BlobProtoVector -> its arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(serialized)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """A C x H x W array as a Datum: uint8 arrays as raw bytes, others as float_data; the
    label is left unset when None."""
    if arr.ndim != 3:
        raise ValueError(f"array_to_datum needs a C x H x W array, got shape {arr.shape}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(np.asarray(arr, np.float32).ravel())
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """A Datum's pixels as C x H x W: uint8 for bytes (encoded images decoded with OpenCV,
    BGR), float64 for float_data. The label stays in datum.label."""
    pixels = _datum_pixels(datum, "Datum")
    return pixels.copy() if pixels.dtype == np.uint8 else pixels.astype(np.float64)


# ---- Transformer -------------------------------------------------------------------------

class Transformer:
    """pycaffe's input preparation for a Net: `inputs` maps input names to blob shapes
    (N x K x H x W); each input gets its own transpose, channel swap, scales and mean."""

    def __init__(self, inputs: dict):
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, in_) -> None:
        if in_ not in self.inputs:
            raise ValueError(f"{in_} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_, data: np.ndarray) -> np.ndarray:
        """H' x W' x K image -> K x H x W float32 net input: resize to the input's H x W,
        transpose, swap channels, x raw_scale, - mean, x input_scale (pycaffe's order)."""
        self._check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)    # a copy: the caller's data stays
        in_dims = tuple(self.inputs[in_][2:])
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if in_ in self.transpose:
            caffe_in = caffe_in.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            caffe_in = caffe_in[list(self.channel_swap[in_]), :, :]
        if in_ in self.raw_scale:
            caffe_in *= self.raw_scale[in_]
        if in_ in self.mean:
            caffe_in -= self.mean[in_]
        if in_ in self.input_scale:
            caffe_in *= self.input_scale[in_]
        return caffe_in

    def deprocess(self, in_, data: np.ndarray) -> np.ndarray:
        """Undo preprocess (all but the resize): a net blob back to an H x W x K image."""
        self._check_input(in_)
        decaf_in = data.copy().squeeze()
        if in_ in self.input_scale:
            decaf_in /= self.input_scale[in_]
        if in_ in self.mean:
            decaf_in += self.mean[in_]
        if in_ in self.raw_scale:
            decaf_in /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            decaf_in = decaf_in[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            decaf_in = decaf_in.transpose(np.argsort(self.transpose[in_]))
        return decaf_in

    def set_transpose(self, in_, order) -> None:
        """Axis order from the image to the blob, e.g. (2, 0, 1): H x W x K -> K x H x W."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ValueError("Transpose order needs to have the same number of dimensions "
                             f"as the input: {len(self.inputs[in_]) - 1}, got {tuple(order)}")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order) -> None:
        """Channel order after transposing, e.g. (2, 1, 0): RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise ValueError("Channel swap needs to have the same number of dimensions as "
                             f"the input channels: {self.inputs[in_][1]}, got {tuple(order)}")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale) -> None:
        """Factor applied before the mean, e.g. 255 for models trained on 0..255 pixels."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean: np.ndarray) -> None:
        """Mean to subtract: one value per channel (K,), or K x H x W / H x W, resized to the
        input's H x W when it differs."""
        self._check_input(in_)
        shape = tuple(self.inputs[in_][1:])
        if mean.ndim == 1:
            if mean.shape[0] != shape[0]:
                raise ValueError(f"Mean channels incompatible with input: mean has "
                                 f"{mean.shape[0]}, the input {shape[0]}")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            ms = (1,) + mean.shape if mean.ndim == 2 else mean.shape
            if len(ms) != 3:
                raise ValueError(f"Mean shape invalid: {mean.shape} (expected K, K x H x W "
                                 "or H x W)")
            if ms[0] != shape[0]:   # Caffe's preprocess would fail on it later
                raise ValueError(f"Mean channels incompatible with input: mean has {ms[0]}, "
                                 f"the input {shape[0]}")
            mean = mean.reshape(ms)
            if ms != shape:
                mean = resize_image(mean.transpose(1, 2, 0), shape[1:]).transpose(2, 0, 1)
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale) -> None:
        """Factor applied after the mean (raw_scale is applied before it)."""
        self._check_input(in_)
        self.input_scale[in_] = scale


# ---- Images ------------------------------------------------------------------------------

def _as_unit_float(image: np.ndarray, filename) -> np.ndarray:
    """scikit-image's img_as_float: integers to [0, 1] by their type's maximum."""
    if image.dtype in (np.uint8, np.uint16):
        return image / float(np.iinfo(image.dtype).max)
    if image.dtype.kind == "f":
        return image.astype(np.float64)
    raise ValueError(f"{filename}: pixels of type {image.dtype} (expected 8- or 16-bit "
                     "unsigned, or float)")


def load_image(filename, color: bool = True) -> np.ndarray:
    """An image file as H x W x 3 RGB (color) or H x W x 1 intensity, float32 in [0, 1].

    Grey files are repeated to 3 channels for color; color files become intensity with
    scikit-image's weights for color=False; alpha is dropped (not composited).
    """
    path = os.fspath(filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such image file")
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)   # no EXIF rotation, as scikit-image
    if image is None:
        raise ValueError(f"{path}: OpenCV cannot decode it as an image")
    image = _as_unit_float(image, path)
    if image.ndim == 3:
        image = image[:, :, 2::-1] if image.shape[2] >= 3 else image[:, :, :1]
        if not color and image.shape[2] == 3:
            image = image @ np.array(_GRAY_WEIGHTS)
    image = image.astype(np.float32)
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if color and image.shape[2] == 1:
        image = np.tile(image, (1, 1, 3))
    return image


def resize_image(im: np.ndarray, new_dims, interp_order: int = 1) -> np.ndarray:
    """An H x W x K image resized to new_dims = (height, width), float32; interp_order 0
    nearest, 1 bilinear (default), 3 bicubic."""
    if im.ndim != 3:
        raise ValueError(f"resize_image needs an H x W x K array, got shape {im.shape}")
    if interp_order not in _INTERPOLATION:
        raise ValueError(f"interp_order {interp_order} is not available: use 0 (nearest), "
                         "1 (bilinear) or 3 (bicubic)")
    dims = tuple(int(d) for d in new_dims)
    if len(dims) != 2 or min(dims) <= 0:
        raise ValueError(f"new_dims must be (height, width) > 0, got {tuple(new_dims)}")
    return _resize(im.astype(np.float32), dims, _INTERPOLATION[interp_order])


def oversample(images, crop_dims) -> np.ndarray:
    """10N x h x w x K float32 crops of N same-size H x W x K images: per image the four
    corners and the centre, then those five mirrored left-right."""
    stack = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    crop = tuple(int(d) for d in crop_dims)
    if len(crop) != 2 or crop[0] > stack.shape[1] or crop[1] > stack.shape[2]:
        raise ValueError(f"crop_dims {tuple(crop_dims)} do not fit images of "
                         f"{stack.shape[1]} x {stack.shape[2]}")
    return _ten_crops(stack, crop)
