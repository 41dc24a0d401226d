"""Caffe's ImageData layer as a Source: images named in a list file ("NAME LABEL" lines),
read with OpenCV from root_folder + NAME, optionally resized to new_height x new_width, then
transformed like the Data layer's records.

The list is read in order and wraps around; with `shuffle` each pass takes a fresh
permutation (Caffe reshuffles at every wrap). Stream positions, rank shares, rand_skip and
seeding follow runner.data.source; the permutation of pass e comes from (seed, e) alone, so
every rank must be given the same seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runner.data.datum import DataError, hwc_to_chw
from runner.data.imageset import check_resize, read_image, read_image_list
from runner.data.prefetch import PrefetchingSource, default_workers
from runner.data.source import (SHUFFLE_STREAM, SKIP_STREAM, StreamBatches, check_tops,
                                generator, resolve_seed)
from runner.data.transformer import DataTransformer
from runner.sources import register_source

def list_skip(seed: int, rand_skip: int, listed: int, where: str, noun: str) -> int:
    """Caffe's rand_skip for a list-reading layer: where the stream starts, drawn below
    rand_skip (0 without it), and refused unless it is below the `listed` entries."""
    if not rand_skip:
        return 0
    skip = int(generator(seed, SKIP_STREAM).integers(rand_skip))
    if skip >= listed:
        raise DataError(f"{where}: rand_skip {skip} is not below the {listed} {noun} listed")
    return skip


class ImageListBatches(StreamBatches):
    """Items of an ImageData layer: the listed images, in list or shuffled order."""

    def __init__(self, param, lines: list[tuple[str, int]], transformer: DataTransformer,
                 tops: list[str], *, layer: str, skip: int, seed: int, rank: int,
                 world_size: int):
        self.lines, self.transformer, self.tops = lines, transformer, tops
        self.root, self.list_file = param.root_folder, param.source
        self.height, self.width, self.is_color = param.new_height, param.new_width, param.is_color
        self.shuffle, self.batch_size, self.layer = param.shuffle, param.batch_size, layer
        self.skip, self.seed, self.rank, self.world_size = skip, seed, rank, world_size
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray | range:
        """Line indices in the order pass `epoch` reads them."""
        if not self.shuffle:
            return range(len(self.lines))
        if self._order is None or self._order[0] != epoch:
            rng = generator(self.seed, SHUFFLE_STREAM, epoch)
            self._order = (epoch, rng.permutation(len(self.lines)))
        return self._order[1]

    def item(self, position: int) -> tuple[str, np.ndarray, int]:
        epoch, item = divmod(self.skip + position, len(self.lines))
        name, label = self.lines[self.order(epoch)[item]]
        path = self.root + name
        where = f"layer '{self.layer}': image '{path}' (listed in {self.list_file})"
        image = read_image(path, self.height, self.width, self.is_color)
        if image is None:
            raise DataError(f"{where}: OpenCV cannot read it")
        return where, hwc_to_chw(image), label


class ImageDataSource(PrefetchingSource):
    """Caffe's ImageData layer: image_data_param (source, root_folder, new_height/new_width,
    is_color, shuffle, rand_skip, batch_size) and transform_param. `num_records` is the
    number of listed images."""

    def __init__(self, lp, phase, *, rank: int = 0, world_size: int = 1,
                 seed: int | None = None, workers: int | None = None):
        param = lp.image_data_param
        self.name = lp.name
        where = f"layer '{lp.name}' (ImageData)"
        check_resize(param.new_height, param.new_width, f"{where} new_height/new_width",
                     param.is_color)
        if param.batch_size <= 0:
            raise DataError(f"{where}: image_data_param.batch_size must be positive")
        tops = check_tops(lp)
        lines = read_image_list(Path.cwd() / param.source)
        seed = resolve_seed(seed, world_size, param.rand_skip > 0 or param.shuffle, where)
        skip = list_skip(seed, param.rand_skip, len(lines), where, "images")
        transformer = DataTransformer(lp.transform_param, phase, layer=lp.name)
        self.maker = ImageListBatches(param, lines, transformer, tops, layer=lp.name,
                                      skip=skip, seed=seed, rank=rank, world_size=world_size)
        self.top_shapes = self.maker.top_shapes()
        self.num_records = len(lines)
        self.workers = default_workers() if workers is None else workers
        self.depth = lp.data_param.prefetch


@register_source("ImageData")
def image_data_source(lp, phase, *, rank=0, world_size=1, seed=None,
                      workers=None) -> ImageDataSource:
    """Source factory for Caffe's ImageData layer."""
    return ImageDataSource(lp, phase, rank=rank, world_size=world_size, seed=seed,
                           workers=workers)
