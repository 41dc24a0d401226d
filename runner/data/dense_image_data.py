"""SegNet's DenseImageData layer as a Source: (image, label image) pairs named in a list
file, for per-pixel training (alexgkendall/caffe-segnet's dense_image_data_layer.cpp).

The list holds whitespace-separated "IMAGE LABEL" pairs; root_folder is prefixed to both.
The image is read in colour (BGR) or gray and resized bilinearly to new_height x new_width;
the label is read in gray and resized nearest-neighbour, so its pixel values stay class
indices. Each item is mirrored (image and label together) with `mirror`, then both are
cropped at the same random offsets to crop_height x crop_width, in TRAIN and TEST alike as
in the fork. The image then goes through transform_param (mean and scale only: the fork
refuses its crop_size and mirror); the label top is its pixel values as float, N x 1 x h x w.

Order, shuffling (a fresh permutation each pass), rand_skip, rank shares and seeding are
the ImageData layer's (runner.data.image_data); crops and mirrors come from the batch's
generator, so a batch depends on (seed, rank, index) alone, for any number of workers.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np

from runner.data.datum import DataError, hwc_to_chw
from runner.data.image_data import list_skip
from runner.data.label_images import LabelImageBatches
from runner.data.imageset import check_resize, read_image, read_pair_list
from runner.data.prefetch import PrefetchingSource, default_workers
from runner.data.source import BATCH_STREAM, generator, resolve_seed, stream_offsets
from runner.data.transformer import DataTransformer, crop_offsets
from runner.sources import register_source


class DenseImageBatches(LabelImageBatches):
    """Batches of a DenseImageData layer: image and label pixels, mirrored and cropped
    together."""

    def __init__(self, param, pairs: list[tuple[str, str]], transformer: DataTransformer,
                 tops: list[str], *, layer: str, skip: int, seed: int, rank: int, world_size: int):
        super().__init__(param, pairs, transformer, tops, layer=layer, skip=skip, seed=seed,
                         rank=rank, world_size=world_size)
        self.mirror = param.mirror
        self.crop = (param.crop_height, param.crop_width)

    def item(self, position: int) -> tuple[str, np.ndarray, np.ndarray]:
        """(where, H x W [x C] image, H x W label) at stream position `position`."""
        epoch, item = divmod(self.skip + position, len(self.lines))
        image_name, label_name = self.lines[self.order(epoch)[item]]
        image_path, label_path = self.root + image_name, self.root + label_name
        where = (f"layer '{self.layer}': pair '{image_path}' '{label_path}' "
                 f"(listed in {self.list_file})")
        image = read_image(image_path, self.height, self.width, self.is_color)
        if image is None:
            raise DataError(f"{where}: OpenCV cannot read the image")
        label = cv2.imread(label_path, cv2.IMREAD_GRAYSCALE)
        if label is None:
            raise DataError(f"{where}: OpenCV cannot read the label image")
        if self.height > 0:
            label = cv2.resize(label, (self.width, self.height), interpolation=cv2.INTER_NEAREST)
        if label.shape != image.shape[:2]:
            raise DataError(f"{where}: the label is {label.shape[0]} x {label.shape[1]}, the "
                            f"image {image.shape[0]} x {image.shape[1]}; they must match")
        if self.crop[0] > image.shape[0] or self.crop[1] > image.shape[1]:
            raise DataError(f"{where}: crop {self.crop[0]} x {self.crop[1]} is larger than the "
                            f"{image.shape[0]} x {image.shape[1]} pair")
        if not self.crop[0]:
            self.check_size(image, where)
        return where, image, label

    def _window(self, image, label, rng) -> tuple[np.ndarray, np.ndarray]:
        """The fork's order: mirror both (one coin), then crop both at the same offsets."""
        if self.mirror and rng.integers(2):
            image, label = image[:, ::-1], label[:, ::-1]
        crop_h, crop_w = self.crop
        if crop_h:
            h_off, w_off = crop_offsets(rng, True, image.shape[:2], (crop_h, crop_w))
            image = image[h_off:h_off + crop_h, w_off:w_off + crop_w]
            label = label[h_off:h_off + crop_h, w_off:w_off + crop_w]
        return image, label

    def make(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        rng = generator(self.seed, BATCH_STREAM, self.rank, index)
        data, labels = arrays[self.tops[0]], arrays[self.tops[1]]
        for item, position in enumerate(stream_offsets(index, self.batch_size, self.rank,
                                                       self.world_size)):
            where, image, label = self.item(position)
            image, label = self._window(image, label, rng)
            self.transformer.transform_into(np.ascontiguousarray(hwc_to_chw(image)), data[item],
                                            None, where)
            self.check_label_image(label, where)
            labels[item, 0] = label

    def top_shapes(self) -> dict[str, tuple[int, ...]]:
        where, image, _ = self.item(self.rank)
        self.size = image.shape[:2]
        height, width = self.crop if self.crop[0] else self.size
        channels = image.shape[2] if image.ndim == 3 else 1
        shape = self.transformer.output_shape((channels, height, width), where)
        return {self.tops[0]: (self.batch_size, *shape),
                self.tops[1]: (self.batch_size, 1, height, width)}


class DenseImageDataSource(PrefetchingSource):
    """SegNet's DenseImageData layer: dense_image_data_param (source, root_folder,
    new_height/new_width, crop_height/crop_width, mirror, is_color, shuffle, rand_skip,
    batch_size) and transform_param's mean and scale; tops data and label."""

    def __init__(self, lp, phase, *, rank: int = 0, world_size: int = 1,
                 seed: int | None = None, workers: int | None = None):
        param, t = lp.dense_image_data_param, lp.transform_param
        self.name = lp.name
        where = f"layer '{lp.name}' (DenseImageData)"
        check_resize(param.new_height, param.new_width, f"{where} new_height/new_width",
                     param.is_color)
        if (param.crop_height > 0) != (param.crop_width > 0):
            raise DataError(f"{where}: give both crop_height and crop_width, or neither "
                            f"(got {param.crop_height} x {param.crop_width})")
        if t.crop_size or t.mirror:
            raise DataError(f"{where}: transform_param.crop_size and mirror are not used by "
                            "this layer (the fork refuses them); set dense_image_data_param's "
                            "crop_height/crop_width and mirror")
        if param.HasField("mean_file"):
            warnings.warn(f"{where}: dense_image_data_param.mean_file is ignored, as in SegNet's "
                          "Caffe (transform_param.mean_file is read)", stacklevel=2)
        if param.batch_size <= 0:
            raise DataError(f"{where}: dense_image_data_param.batch_size must be positive")
        if len(lp.top) != 2:
            raise DataError(f"{where}: expected 2 tops (data, label), got {len(lp.top)}")
        pairs = read_pair_list(Path.cwd() / param.source)
        seed = resolve_seed(seed, world_size, param.rand_skip > 0 or param.shuffle or
                            param.mirror or param.crop_height > 0, where)
        skip = list_skip(seed, param.rand_skip, len(pairs), where, "pairs")
        transformer = DataTransformer(t, phase, layer=lp.name)
        self.maker = DenseImageBatches(param, pairs, transformer, list(lp.top), layer=lp.name,
                                       skip=skip, seed=seed, rank=rank, world_size=world_size)
        self.top_shapes = self.maker.top_shapes()
        self.num_records = len(pairs)
        self.workers = default_workers() if workers is None else workers
        self.depth = lp.data_param.prefetch


@register_source("DenseImageData")
def dense_image_data_source(lp, phase, *, rank=0, world_size=1, seed=None,
                            workers=None) -> DenseImageDataSource:
    """Source factory for SegNet's DenseImageData layer."""
    return DenseImageDataSource(lp, phase, rank=rank, world_size=world_size, seed=seed,
                                workers=workers)
