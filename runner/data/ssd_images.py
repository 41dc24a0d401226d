"""The SSD fork's image operations for its AnnotatedData and VideoData layers
(util/im_transforms.cpp), on H x W x C uint8 images as OpenCV's: the photometric
distortions, resize_param's resizing and noise_param's effects (ApplyNoise)."""
from __future__ import annotations

import math
import warnings

import cv2
import numpy as np

from runner.data.datum import DataError
from runner.data.ssd_boxes import F32, RESIZE, fit_small_size, uniform
from runner.proto import caffe_pb2

INTERPOLATIONS = {RESIZE.LINEAR: cv2.INTER_LINEAR, RESIZE.AREA: cv2.INTER_AREA,
                  RESIZE.NEAREST: cv2.INTER_NEAREST, RESIZE.CUBIC: cv2.INTER_CUBIC,
                  RESIZE.LANCZOS4: cv2.INTER_LANCZOS4}
PADDINGS = {RESIZE.CONSTANT: cv2.BORDER_CONSTANT, RESIZE.MIRRORED: cv2.BORDER_REFLECT_101,
            RESIZE.REPEAT_NEAREST: cv2.BORDER_REPLICATE}


def hwc(image: np.ndarray) -> np.ndarray:
    """An OpenCV result with its channel axis (a one-channel image comes back H x W)."""
    return image[:, :, None] if image.ndim == 2 else image


def convert_to(image: np.ndarray, alpha, beta) -> np.ndarray:
    """cv::Mat::convertTo(out, -1, alpha, beta) on bytes: x * alpha + beta in float32, rounded
    half to even and saturated."""
    return np.clip(np.rint(image.astype(F32) * F32(alpha) + F32(beta)), 0, 255).astype(np.uint8)


def adjust_hsv(image: np.ndarray, channel: int, alpha, beta, where: str) -> np.ndarray:
    """AdjustSaturation (channel 1) and AdjustHue (channel 0): convertTo on one HSV plane."""
    if image.shape[2] != 3:
        raise DataError(f"{where}: distort_param's saturation and hue need 3-channel images, "
                        f"this one has {image.shape[2]}")
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    hsv[:, :, channel] = convert_to(hsv[:, :, channel], alpha, beta)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def apply_distort(image: np.ndarray, p: caffe_pb2.DistortionParameter,
                  rng: np.random.Generator, where: str) -> np.ndarray:
    """ApplyDistort: brightness, contrast, saturation, hue and channel order, each with its
    probability; contrast comes first or fourth by a coin (the first draw)."""
    def brightness(img):
        if uniform(rng, 0, 1) < F32(p.brightness_prob):
            delta = uniform(rng, -p.brightness_delta, p.brightness_delta)
            return convert_to(img, 1, delta) if abs(delta) > 0 else img
        return img

    def contrast(img):
        if uniform(rng, 0, 1) < F32(p.contrast_prob):
            delta = uniform(rng, p.contrast_lower, p.contrast_upper)
            return convert_to(img, delta, 0) if abs(delta - F32(1)) > 1e-3 else img
        return img

    def saturation(img):
        # the fork's AdjustSaturation tests `fabs(delta - 1.f) != 1e-3`, always true
        if uniform(rng, 0, 1) < F32(p.saturation_prob):
            return adjust_hsv(img, 1, uniform(rng, p.saturation_lower, p.saturation_upper), 0,
                              where)
        return img

    def hue(img):
        if uniform(rng, 0, 1) < F32(p.hue_prob):
            delta = uniform(rng, -p.hue_delta, p.hue_delta)
            return adjust_hsv(img, 0, 1, delta, where) if abs(delta) > 0 else img
        return img

    def channel_order(img):
        if uniform(rng, 0, 1) < F32(p.random_order_prob):
            if img.shape[2] != 3:
                raise DataError(f"{where}: distort_param.random_order_prob needs 3-channel "
                                f"images, this one has {img.shape[2]}")
            return np.ascontiguousarray(img[:, :, rng.permutation(3)])
        return img

    steps = (brightness, contrast, saturation, hue, channel_order) if uniform(rng, 0, 1) > 0.5 \
        else (brightness, saturation, hue, contrast, channel_order)
    for step in steps:
        image = step(image)
    return image


def infer_new_size(p: caffe_pb2.ResizeParameter, width: int, height: int) -> tuple[int, int]:
    """InferNewSize: (height, width) after resize_param; FIT_SMALL_SIZE scales the image's
    aspect ratio up until it covers height x width, truncating the longer side."""
    if p.resize_mode != RESIZE.FIT_SMALL_SIZE:
        return p.height, p.width
    new_h, new_w = fit_small_size(p, width, height)
    return int(new_h), int(new_w)


def resized_size(p: caffe_pb2.ResizeParameter | None, crop_hw: tuple[int, int], height: int,
                 width: int, where: str, what: str) -> tuple[int, int]:
    """InferBlobShape's (height, width) of a height x width `what` (image, frame) after
    resize_param (None: none), before the crop; a DataError where it is smaller than the
    crop (crop_h, crop_w)."""
    if p is not None:
        height, width = infer_new_size(p, width, height)
    crop_h, crop_w = crop_hw
    if height < crop_h or width < crop_w:
        raise DataError(f"{where}: {what} is {height} x {width}"
                        f"{' after resize_param' if p is not None else ''}, "
                        f"smaller than the crop {crop_h} x {crop_w}")
    return height, width


def apply_resize(image: np.ndarray, p: caffe_pb2.ResizeParameter, rng: np.random.Generator,
                 where: str) -> np.ndarray:
    """ApplyResize (WARP, FIT_LARGE_SIZE_AND_PAD, FIT_SMALL_SIZE): the interpolation picked
    uniformly from interp_mode (roll_weighted_die), LINEAR when none is given."""
    interp = cv2.INTER_LINEAR
    if len(p.interp_mode):
        cumulative = np.cumsum(np.full(len(p.interp_mode), F32(1) / F32(len(p.interp_mode))),
                               dtype=F32)
        pick = int(np.searchsorted(cumulative, uniform(rng, 0, cumulative[-1])))
        interp = INTERPOLATIONS[p.interp_mode[pick]]
    channels = image.shape[2]
    if len(p.pad_value) not in (0, 1, channels):
        raise DataError(f"{where}: specify either 1 pad_value or as many as channels "
                        f"({channels}), got {len(p.pad_value)}")
    pad = list(p.pad_value) * (channels if len(p.pad_value) == 1 else 1) or [0.0]
    if p.resize_mode == RESIZE.WARP:
        return hwc(cv2.resize(image, (p.width, p.height), interpolation=interp))
    if p.resize_mode == RESIZE.FIT_SMALL_SIZE:   # AspectKeepingResizeBySmall
        height, width = infer_new_size(p, image.shape[1], image.shape[0])
        return hwc(cv2.resize(image, (width, height), interpolation=interp))
    # AspectKeepingResizeAndPad
    orig_aspect = F32(image.shape[1]) / F32(image.shape[0])
    if orig_aspect > F32(p.width) / F32(p.height):
        size = (p.width, math.floor(F32(p.width) / orig_aspect))
        spare = p.height - size[1]
        borders = (math.floor(spare / 2.0), spare - math.floor(spare / 2.0), 0, 0)
    else:
        size = (math.floor(orig_aspect * F32(p.height)), p.height)
        spare = p.width - size[0]
        borders = (0, 0, math.floor(spare / 2.0), spare - math.floor(spare / 2.0))
    if min(size) <= 0:
        raise DataError(f"{where}: a {image.shape[1]} x {image.shape[0]} image keeps no row "
                        f"or column when fitted into {p.width} x {p.height}")
    resized = cv2.resize(image, size, interpolation=interp)
    return hwc(cv2.copyMakeBorder(resized, *borders, PADDINGS[p.pad_mode],
                                  value=(pad + [0.0] * 4)[:4]))


def _three_channels(image: np.ndarray, effect: str, where: str) -> None:
    if image.shape[2] != 3:
        raise DataError(f"{where}: noise_param.{effect} needs 3-channel images (the fork's "
                        f"cv::cvtColor aborts), this one has {image.shape[2]}")


def _on_luma(image: np.ndarray, equalize) -> np.ndarray:
    """hist_eq and clahe: `equalize` on a grey image, else on the Y plane of YCrCb."""
    if image.shape[2] == 1:
        return hwc(equalize(image[:, :, 0]))
    ycrcb = cv2.cvtColor(image, cv2.COLOR_BGR2YCrCb)
    ycrcb[:, :, 0] = equalize(np.ascontiguousarray(ycrcb[:, :, 0]))
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)


def salt_pepper_values(p: caffe_pb2.NoiseParameter, channels: int, where: str) -> list[int]:
    """saltpepper_param.value as the fork's bytes (uchar(value)), one per channel."""
    values = list(p.saltpepper_param.value)
    if not values:
        return []
    if len(values) not in (1, channels):
        raise DataError(f"{where}: specify either 1 saltpepper_param.value or as many as "
                        f"channels ({channels}), got {len(values)}")
    if not all(-1 < v < 256 for v in values):
        raise DataError(f"{where}: saltpepper_param.value must be byte values, got {values} "
                        "(the fork casts each to uchar, undefined outside (-1, 256))")
    return [int(v) for v in values] * (channels if len(values) == 1 else 1)


def warn_unread_noise_prob(p: caffe_pb2.NoiseParameter, where: str, stacklevel: int) -> None:
    """noise_param.prob, which the fork never reads: a warning when it is set (`stacklevel`
    as the caller's own warnings.warn would give it)."""
    if p.HasField("prob"):
        warnings.warn(f"{where}: noise_param.prob is ignored: the fork never reads it and "
                      "applies every effect set to every image", stacklevel=stacklevel + 1)


def apply_noise(image: np.ndarray, p: caffe_pb2.NoiseParameter, rng: np.random.Generator,
                where: str) -> np.ndarray:
    """ApplyNoise: every effect set, in the fork's order (its `prob` is never read). The
    result may not be the input's kind: jpeg decodes in colour (3 channels even from a grey
    image) and convert_to_lab gives float32 Lab of the pixels / 255; the caller reads it
    as the fork does (`fork_pixel_bytes`). salt-and-pepper draws caffe_rng_rand() twice per
    pixel (column, then row)."""
    if p.decolorize:
        _three_channels(image, "decolorize", where)
        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if p.gauss_blur:
        image = hwc(cv2.GaussianBlur(image, (7, 7), 1.5))
    if p.hist_eq:
        image = _on_luma(image, cv2.equalizeHist)
    if p.clahe:
        image = _on_luma(image, cv2.createCLAHE(clipLimit=4).apply)
    if p.jpeg > 0:   # the quality is the float truncated to int; OpenCV clamps it to 100
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, min(int(p.jpeg), 100)])
        if not ok:
            raise DataError(f"{where}: OpenCV cannot encode a {image.shape[1]} x "
                            f"{image.shape[0]} image as JPEG (noise_param.jpeg)")
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if p.erode:
        image = hwc(cv2.erode(image, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3), (1, 1))))
    if p.posterize:   # colorReduce(div = 64)
        image = image // 64 * 64 + 32
    if p.inverse:
        image = 255 - image
    values = salt_pepper_values(p, image.shape[2], where)
    if p.saltpepper:
        rows, cols = image.shape[:2]
        count = math.floor(F32(p.saltpepper_param.fraction) * F32(cols) * F32(rows))
        if count > 0:
            if not values:
                raise DataError(f"{where}: noise_param.saltpepper needs saltpepper_param.value "
                                "(the fork reads past an empty list of values)")
            if image.shape[2] in (1, 3):   # constantNoise leaves other images alone
                at = rng.integers(2 ** 32, size=2 * count).reshape(count, 2)
                image = image.copy()
                image[at[:, 1] % rows, at[:, 0] % cols] = values
    if p.convert_to_hsv:
        _three_channels(image, "convert_to_hsv", where)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    if p.convert_to_lab:
        _three_channels(image, "convert_to_lab", where)
        image = cv2.cvtColor(image.astype(F32) * F32(1 / 255), cv2.COLOR_BGR2Lab)
    return image


def fork_pixel_bytes(image: np.ndarray, channels: int, h_off: int, w_off: int, height: int,
                     width: int) -> np.ndarray:
    """What the fork's Transform(cv::Mat) reads from the crop of a noised image: from each
    row of the crop, height x width x `channels` bytes (ptr<uchar>), whatever the image's own
    channels and depth. For a byte image of `channels` channels that is the crop itself; for
    convert_to_lab's floats it is their bytes (little-endian), and for a grey image that jpeg
    turned into 3 channels it is the first third of each row's bytes."""
    pixel = image.shape[2] * image.itemsize
    rows = np.ascontiguousarray(image).view(np.uint8).reshape(image.shape[0], -1)
    start = w_off * pixel
    return rows[h_off:h_off + height, start:start + width * channels].reshape(height, width,
                                                                              channels)
