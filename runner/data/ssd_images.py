"""The SSD fork's image operations for its AnnotatedData layer (util/im_transforms.cpp), on
H x W x C uint8 images as OpenCV's: the photometric distortions and resize_param's resizing."""
from __future__ import annotations

import math
import cv2
import numpy as np

from runner.data.datum import DataError
from runner.data.ssd_boxes import F32, RESIZE, uniform
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


def apply_resize(image: np.ndarray, p: caffe_pb2.ResizeParameter, rng: np.random.Generator,
                 where: str) -> np.ndarray:
    """ApplyResize (WARP, FIT_LARGE_SIZE_AND_PAD): the interpolation picked uniformly from
    interp_mode (roll_weighted_die), LINEAR when none is given."""
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
