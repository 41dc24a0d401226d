"""Caffe's WindowData layer (R-CNN fine-tuning) as a Source: windows listed in a window
file, cropped from their images with context padding, warped to crop_size, mirrored,
mean-subtracted and scaled, and sampled fg/bg as window_data_layer.cpp does.

Window file: repeated blocks `# image_index`, `image_path`, `channels`, `height`, `width`,
`num_windows`, then `label overlap x1 y1 x2 y2` per window. Windows with overlap >=
fg_threshold are foreground (label must be > 0); below bg_threshold, background (label
and overlap forced to 0); others are dropped. A batch is batch_size - int(batch_size *
fg_fraction) background windows then the foreground ones, each drawn uniformly at random
(numpy Generator per (seed, batch), where Caffe uses its own RNG stream).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from runner.data.datum import DataError
from runner.data.mean import load_mean
from runner.data.source import BATCH_STREAM, generator, resolve_seed
from runner.sources import register_source

F32 = np.float32


def c_round(x) -> int:
    """C's round(): halves away from zero."""
    return int(math.copysign(math.floor(abs(float(x)) + 0.5), float(x)))


@dataclass
class Window:
    image: int
    label: int
    overlap: float
    x1: int
    y1: int
    x2: int
    y2: int
    line: int   # line of the window file, for messages


@dataclass
class WindowFile:
    images: list[tuple[str, int, int, int]]   # path, channels, height, width
    foreground: list[Window]
    background: list[Window]


def read_window_file(path: Path, root: str, fg_threshold: float, bg_threshold: float) -> WindowFile:
    """Parse an R-CNN window file into images and fg/bg windows, as DataLayerSetUp does."""
    try:
        text = path.read_text()
    except OSError as err:
        raise DataError(f"cannot read window file {path}: {err.strerror}") from None
    tokens = [(tok, n) for n, line in enumerate(text.splitlines(), 1) for tok in line.split()]
    pos = 0

    def take(kind, what):
        nonlocal pos
        if pos >= len(tokens):
            raise DataError(f"window file {path}: ends where {what} was expected")
        tok, line = tokens[pos]
        pos += 1
        try:
            return kind(tok), line
        except ValueError:
            raise DataError(f"window file {path}, line {line}: expected {what}, got '{tok}'") from None

    out = WindowFile([], [], [])
    if not tokens:
        raise DataError(f"window file {path} is empty")
    while pos < len(tokens):
        hashtag, line = take(str, "'#'")
        if hashtag != "#":
            raise DataError(f"window file {path}, line {line}: expected '#', got '{hashtag}'")
        index, line = take(int, "an image index")
        if index != len(out.images):
            raise DataError(f"window file {path}, line {line}: image index {index}, expected "
                            f"{len(out.images)} (indices count up from 0)")
        image_path, _ = take(str, "an image path")
        dims = [take(int, what)[0] for what in ("channels", "height", "width")]
        out.images.append((root + image_path, *dims))
        count, _ = take(int, "the number of windows")
        for _ in range(count):
            label, line = take(int, "a class label")
            overlap = F32(take(float, "an overlap")[0])
            x1, y1, x2, y2 = (take(int, "a box coordinate")[0] for _ in range(4))
            if overlap >= F32(fg_threshold):
                if label <= 0:
                    raise DataError(f"window file {path}, line {line}: foreground window "
                                    f"(overlap {overlap}) needs a label > 0, got {label}")
                out.foreground.append(Window(index, label, float(overlap), x1, y1, x2, y2, line))
            elif overlap < F32(bg_threshold):
                out.background.append(Window(index, 0, 0.0, x1, y1, x2, y2, line))
    return out


def warp_geometry(w: Window, rows: int, cols: int, crop: int, context_pad: int, square: bool,
                  mirror: bool) -> tuple[tuple[int, int, int, int], tuple[int, int], int, int]:
    """Caffe's crop and warp of one window: (x1, y1, x2, y2) of the image region, the
    (width, height) it is resized to, and the top/left padding inside the crop."""
    x1, y1, x2, y2 = w.x1, w.y1, w.x2, w.y2
    size = (crop, crop)
    pad_w = pad_h = 0
    if context_pad > 0 or square:
        context_scale = F32(crop) / F32(crop - 2 * context_pad)
        half_h, half_w = F32(y2 - y1 + 1) / F32(2), F32(x2 - x1 + 1) / F32(2)
        cx, cy = F32(x1) + half_w, F32(y1) + half_h
        if square:
            half_h = half_w = max(half_h, half_w)
        x1, x2 = c_round(cx - half_w * context_scale), c_round(cx + half_w * context_scale)
        y1, y2 = c_round(cy - half_h * context_scale), c_round(cy + half_h * context_scale)
        unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
        pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
        pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
        x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
        scale_x, scale_y = F32(crop) / F32(unclipped_w), F32(crop) / F32(unclipped_h)
        width = c_round(F32(x2 - x1 + 1) * scale_x)
        height = c_round(F32(y2 - y1 + 1) * scale_y)
        pad_x1, pad_x2 = c_round(F32(pad_x1) * scale_x), c_round(F32(pad_x2) * scale_x)
        pad_h = c_round(F32(pad_y1) * scale_y)
        pad_w = pad_x2 if mirror else pad_x1
        size = (min(width, crop - pad_w), min(height, crop - pad_h))
    return (x1, y1, x2, y2), size, pad_h, pad_w


class WindowDataSource:
    """Caffe's WindowData layer: window_data_param and transform_param (crop_size, mirror,
    mean_file or mean_value); tops data (N x C x crop x crop) and label (N)."""

    def __init__(self, lp, phase, *, rank: int = 0, world_size: int = 1, seed: int | None = None):
        p, t = lp.window_data_param, lp.transform_param
        self.name = lp.name
        self.where = f"layer '{lp.name}' (WindowData)"
        if len(lp.top) != 2:
            raise DataError(f"{self.where}: expected 2 tops (data, label), got {len(lp.top)}")
        if t.crop_size <= 0:
            raise DataError(f"{self.where}: transform_param.crop_size must be positive")
        if p.batch_size <= 0:
            raise DataError(f"{self.where}: window_data_param.batch_size must be positive")
        if p.crop_mode not in ("warp", "square"):
            raise DataError(f"{self.where}: crop_mode must be 'warp' or 'square', got '{p.crop_mode}'")
        if 2 * p.context_pad >= t.crop_size:
            raise DataError(f"{self.where}: context_pad {p.context_pad} leaves no room in a "
                            f"{t.crop_size} crop")
        try:
            self.windows = read_window_file(Path.cwd() / p.source, p.root_folder,
                                            p.fg_threshold, p.bg_threshold)
        except DataError as err:
            raise DataError(f"{self.where}: {err}") from None
        if not self.windows.foreground or not self.windows.background:
            raise DataError(f"{self.where}: window file {p.source} has "
                            f"{len(self.windows.foreground)} foreground and "
                            f"{len(self.windows.background)} background windows; both must be > 0")
        channels = self.windows.images[-1][1]
        if channels != 3:
            raise DataError(f"{self.where}: images are read in colour (3 channels); the window "
                            f"file says {channels}")
        ignored = [f for f in ("scale", "force_color", "force_gray") if t.HasField(f)]
        if ignored:
            warnings.warn(f"{self.where}: transform_param.{'/'.join(ignored)} is ignored, as in "
                          "Caffe (WindowData reads colour images and scales by "
                          "window_data_param.scale)", stacklevel=2)
        self.crop, self.batch_size, self.scale = t.crop_size, p.batch_size, float(p.scale)
        self.context_pad, self.square, self.mirror = p.context_pad, p.crop_mode == "square", t.mirror
        self.mean = load_mean(t.mean_file) if t.HasField("mean_file") else None
        if self.mean is not None and len(t.mean_value):
            raise DataError(f"{self.where}: give mean_file or mean_value, not both")
        values = list(t.mean_value)
        if values and len(values) not in (1, channels):
            raise DataError(f"{self.where}: give 1 mean_value or {channels}, got {len(values)}")
        self.mean_values = np.asarray(values * (channels if len(values) == 1 else 1), F32) if values else None
        self.num_fg = int(F32(p.batch_size) * F32(p.fg_fraction))
        self.seed = resolve_seed(seed, 1, False, self.where) + rank
        self.tops = list(lp.top)
        self.top_shapes = {self.tops[0]: (p.batch_size, channels, self.crop, self.crop),
                           self.tops[1]: (p.batch_size,)}
        self.num_records = len(self.windows.foreground) + len(self.windows.background)

    def _image(self, w: Window) -> np.ndarray:
        path = self.windows.images[w.image][0]
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"{self.where}: OpenCV cannot read image '{path}' (window file line {w.line})")
        return image

    def window_pixels(self, w: Window, mirror: bool) -> np.ndarray:
        """One window as Caffe writes it into the batch: C x crop x crop float32."""
        image = self._image(w)
        (x1, y1, x2, y2), size, pad_h, pad_w = warp_geometry(
            w, image.shape[0], image.shape[1], self.crop, self.context_pad, self.square, mirror)
        if not (0 <= x1 <= x2 < image.shape[1] and 0 <= y1 <= y2 < image.shape[0]) or min(size) <= 0:
            raise DataError(f"{self.where}: window at window file line {w.line} "
                            f"({w.x1}, {w.y1}, {w.x2}, {w.y2}) does not fit its "
                            f"{image.shape[1]}x{image.shape[0]} image")
        patch = cv2.resize(image[y1:y2 + 1, x1:x2 + 1], size, interpolation=cv2.INTER_LINEAR)
        if mirror:
            patch = patch[:, ::-1]
        pixels = patch.transpose(2, 0, 1).astype(F32)
        h, w_ = pixels.shape[1:]
        out = np.zeros((pixels.shape[0], self.crop, self.crop), F32)
        if self.mean is not None:
            off = (self.mean.shape[2] - self.crop) // 2
            mean = self.mean[:, off + pad_h:off + pad_h + h, off + pad_w:off + pad_w + w_]
            pixels = (pixels - mean) * F32(self.scale)
        elif self.mean_values is not None:
            pixels = (pixels - self.mean_values[:, None, None]) * F32(self.scale)
        else:
            pixels = pixels * F32(self.scale)
        out[:, pad_h:pad_h + h, pad_w:pad_w + w_] = pixels
        return out

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """Batch number `index`: background windows first, then foreground."""
        rng = generator(self.seed, BATCH_STREAM, index)
        data = np.zeros(self.top_shapes[self.tops[0]], F32)
        labels = np.zeros(self.batch_size, F32)
        pools = [self.windows.background] * (self.batch_size - self.num_fg) + \
                [self.windows.foreground] * self.num_fg
        for item, pool in enumerate(pools):
            w = pool[int(rng.integers(2 ** 32)) % len(pool)]
            mirror = bool(self.mirror and int(rng.integers(2 ** 32)) % 2)
            data[item] = self.window_pixels(w, mirror)
            labels[item] = w.label
        return {self.tops[0]: torch.from_numpy(data), self.tops[1]: torch.from_numpy(labels)}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        index = 0
        while True:
            yield self.batch(index)
            index += 1


@register_source("WindowData")
def window_data_source(lp, phase, *, rank=0, world_size=1, seed=None, workers=None) -> WindowDataSource:
    """Source factory for Caffe's WindowData layer."""
    return WindowDataSource(lp, phase, rank=rank, world_size=world_size, seed=seed)
