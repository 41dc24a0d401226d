"""DeepLab's ImageSegData layer as a Source (deeplab-public-ver2's image_seg_data_layer.cpp
and DataTransformer::TransformImgAndSeg).

Each list line names an image and, unless image_data_param.label_type is NONE, a second
thing: a label image (PIXEL) or one class for the whole image (IMAGE, the default);
root_folder is prefixed to both names, extra names on a line are ignored. Images are read
in colour or gray, label images in gray, both resized bilinearly to new_height x new_width
when given (the fork resizes labels bilinearly too). A NONE label is ignore_label
everywhere.

The transform, in the fork's order of random draws: mirror (Rand(2), with
transform_param.mirror, in any phase); a scale from scale_factors (image bilinear, label
nearest); padding at the bottom and right up to the crop, with the mean values (the image)
and ignore_label (the label); the crop, at random offsets in TRAIN and centred in TEST, the
same for both; out = (pixel - mean_value) * scale, the crop flipped when mirrored. Tops:
data, label (N x 1 x h x w) and optionally data_dim, each item's (height, width) before
scaling and padding, at most the crop's.

Order, shuffling, rand_skip, ranks and seeding are the ImageData layer's; the draws come
from the batch's numpy generator.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from runner.data.datum import DataError
from runner.data.image_data import list_skip
from runner.data.imageset import check_resize, read_image, read_list_text
from runner.data.label_images import LabelImageBatches
from runner.data.prefetch import PrefetchingSource, default_workers
from runner.data.source import BATCH_STREAM, generator, resolve_seed, stream_offsets
from runner.data.transformer import crop_offsets, phase_value
from runner.proto import caffe_pb2
from runner.sources import register_source

_PARAM = caffe_pb2.ImageDataParameter


def read_seg_list(path: Path, with_label: bool) -> list[tuple[str, str | None]]:
    """(image, second name or None) per non-blank line; the second name is required when
    `with_label`."""
    text = read_list_text(path)
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        names = line.split()
        if not names:
            continue
        if with_label and len(names) < 2:
            raise DataError(f"{path}:{number}: expected 'IMAGE LABEL', got {line!r}")
        entries.append((names[0], names[1] if with_label else None))
    if not entries:
        raise DataError(f"image list '{path}' names no images")
    return entries


class SegTransform:
    """TransformImgAndSeg: transform_param's mirror, crop (crop_size or crop_height and
    crop_width), mean_value, scale and scale_factors, on an image and its label."""

    def __init__(self, param: caffe_pb2.TransformationParameter, phase, ignore_label: int,
                 channels: int, where: str):
        if param.HasField("mean_file"):
            raise DataError(f"{where}: ImageSegData takes mean_value, not a mean file (as in DeepLab)")
        if param.crop_size and (param.crop_height or param.crop_width):
            raise DataError(f"{where}: give crop_size or crop_height and crop_width, not both")
        if (param.crop_height > 0) != (param.crop_width > 0):
            raise DataError(f"{where}: give both crop_height and crop_width, or neither")
        self.crop = (param.crop_size, param.crop_size) if param.crop_size else \
            (param.crop_height, param.crop_width)
        means = list(param.mean_value)
        if means and len(means) not in (1, channels):
            raise DataError(f"{where}: give 1 mean_value or {channels}, got {len(means)}")
        self.means = np.array(means * channels if len(means) == 1 else means or [0.0] * channels,
                              np.float32)
        if any(not s > 0 for s in param.scale_factors):
            raise DataError(f"{where}: every scale_factors value must be positive, got "
                            f"{list(param.scale_factors)}")
        self.factors = [np.float32(s) for s in param.scale_factors]
        self.mirror, self.scale = param.mirror, np.float32(param.scale)
        self.train = phase_value(phase) == caffe_pb2.TRAIN
        self.ignore_label = ignore_label

    def apply(self, image: np.ndarray, label: np.ndarray, rng, where: str
              ) -> tuple[np.ndarray, np.ndarray]:
        """(C x h x w float32 data, h x w float32 label)."""
        mirror = bool(self.mirror and rng.integers(2))
        label = label.astype(np.float32)   # room for any ignore_label in the padding
        if self.factors:
            factor = self.factors[int(rng.integers(len(self.factors)))]
            size = (int(np.float32(image.shape[1]) * factor), int(np.float32(image.shape[0]) * factor))
            if min(size) < 1:
                raise DataError(f"{where}: scale factor {factor:g} leaves nothing of a "
                                f"{image.shape[0]} x {image.shape[1]} image")
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        image = image.reshape(*image.shape[:2], -1).astype(np.float64)
        crop_h, crop_w = self.crop
        if crop_h:
            pad_h, pad_w = max(crop_h - image.shape[0], 0), max(crop_w - image.shape[1], 0)
            if pad_h or pad_w:
                channels = image.shape[2]
                image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                                           value=[float(m) for m in self.means]).reshape(
                    image.shape[0] + pad_h, image.shape[1] + pad_w, channels)
                label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                                           value=self.ignore_label)
            h_off, w_off = crop_offsets(rng, self.train, image.shape[:2], (crop_h, crop_w))
            image = image[h_off:h_off + crop_h, w_off:w_off + crop_w]
            label = label[h_off:h_off + crop_h, w_off:w_off + crop_w]
        if mirror:
            image, label = image[:, ::-1], label[:, ::-1]
        data = ((image - self.means) * self.scale).astype(np.float32).transpose(2, 0, 1)
        return data, label


class SegBatches(LabelImageBatches):
    """Batches of an ImageSegData layer: data, label and, with a third top, data_dim."""

    def __init__(self, param, lines, transform: SegTransform, tops: list[str], *, layer: str,
                 skip: int, seed: int, rank: int, world_size: int):
        super().__init__(param, lines, None, tops, layer=layer, skip=skip, seed=seed, rank=rank,
                         world_size=world_size)
        self.transform, self.label_type, self.ignore_label = transform, param.label_type, param.ignore_label

    def item(self, position: int) -> tuple[str, np.ndarray, np.ndarray]:
        """(where, H x W [x C] image, H x W label) at stream position `position`."""
        epoch, item = divmod(self.skip + position, len(self.lines))
        image_name, second = self.lines[self.order(epoch)[item]]
        image_path = self.root + image_name
        where = f"layer '{self.layer}': image '{image_path}' (listed in {self.list_file})"
        image = read_image(image_path, self.height, self.width, self.is_color)
        if image is None:
            raise DataError(f"{where}: OpenCV cannot read it")
        if self.label_type == _PARAM.PIXEL:
            label_path = self.root + second
            where += f" with label '{label_path}'"
            label = read_image(label_path, self.height, self.width, is_color=False)
            if label is None:
                raise DataError(f"{where}: OpenCV cannot read the label image")
            if label.shape != image.shape[:2]:
                raise DataError(f"{where}: the label is {label.shape[0]} x {label.shape[1]}, "
                                f"the image {image.shape[0]} x {image.shape[1]}; they must match")
        else:
            value = self.ignore_label
            if self.label_type == _PARAM.IMAGE:
                if not second.lstrip("-").isdigit():
                    raise DataError(f"{where}: label_type IMAGE needs an integer class after "
                                    f"the image name, got '{second}'")
                value = int(second)
            label = np.full(image.shape[:2], value, np.int32)
        if not self.transform.crop[0]:
            self.check_size(image, where)
        return where, image, label

    def make(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        rng = generator(self.seed, BATCH_STREAM, self.rank, index)
        crop_h, crop_w = self.transform.crop
        for item, position in enumerate(stream_offsets(index, self.batch_size, self.rank,
                                                       self.world_size)):
            where, image, label = self.item(position)
            height, width = image.shape[:2]
            arrays[self.tops[0]][item], label = self.transform.apply(image, label, rng, where)
            self.check_label_image(label, where)
            arrays[self.tops[1]][item, 0] = label
            if len(self.tops) > 2:
                arrays[self.tops[2]][item, 0, 0] = (min(crop_h, height) if crop_h else height,
                                                    min(crop_w, width) if crop_w else width)

    def top_shapes(self) -> dict[str, tuple[int, ...]]:
        _, image, _ = self.item(self.rank)
        self.size = image.shape[:2]
        height, width = self.transform.crop if self.transform.crop[0] else self.size
        if self.transform.factors and not self.transform.crop[0]:
            raise DataError(f"layer '{self.layer}': scale_factors change each image's size; "
                            "give a crop (crop_size or crop_height/crop_width) to batch them")
        channels = image.shape[2] if image.ndim == 3 else 1
        shapes = {self.tops[0]: (self.batch_size, channels, height, width),
                  self.tops[1]: (self.batch_size, 1, height, width)}
        if len(self.tops) > 2:
            shapes[self.tops[2]] = (self.batch_size, 1, 1, 2)
        return shapes


class ImageSegDataSource(PrefetchingSource):
    """DeepLab's ImageSegData layer: image_data_param (source, root_folder, batch_size,
    shuffle, rand_skip, new_height/new_width, is_color, label_type, ignore_label) and
    transform_param (mirror, crop_size or crop_height/crop_width, mean_value, scale,
    scale_factors); tops data, label and optionally data_dim."""

    def __init__(self, lp, phase, *, rank: int = 0, world_size: int = 1,
                 seed: int | None = None, workers: int | None = None):
        param, t = lp.image_data_param, lp.transform_param
        self.name = lp.name
        where = f"layer '{lp.name}' (ImageSegData)"
        check_resize(param.new_height, param.new_width, f"{where} new_height/new_width",
                     param.is_color)
        if param.batch_size <= 0:
            raise DataError(f"{where}: image_data_param.batch_size must be positive")
        if not 2 <= len(lp.top) <= 3:
            raise DataError(f"{where}: expected 2 or 3 tops (data, label[, data_dim]), got {len(lp.top)}")
        transform = SegTransform(t, phase, param.ignore_label, 3 if param.is_color else 1, where)
        lines = read_seg_list(Path.cwd() / param.source, param.label_type != _PARAM.NONE)
        random = param.rand_skip > 0 or param.shuffle or t.mirror or len(t.scale_factors) > 0 or \
            (transform.crop[0] > 0 and transform.train)
        seed = resolve_seed(seed, world_size, random, where)
        skip = list_skip(seed, param.rand_skip, len(lines), where, "images")
        self.maker = SegBatches(param, lines, transform, list(lp.top), layer=lp.name, skip=skip,
                                seed=seed, rank=rank, world_size=world_size)
        self.top_shapes = self.maker.top_shapes()
        self.num_records = len(lines)
        self.workers = default_workers() if workers is None else workers
        self.depth = lp.data_param.prefetch


@register_source("ImageSegData")
def image_seg_data_source(lp, phase, *, rank=0, world_size=1, seed=None,
                          workers=None) -> ImageSegDataSource:
    """Source factory for DeepLab's ImageSegData layer."""
    return ImageSegDataSource(lp, phase, rank=rank, world_size=world_size, seed=seed,
                              workers=workers)
