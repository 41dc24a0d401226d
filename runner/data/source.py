"""Caffe's Data layer as a Source: batches of transformed Datums from an LMDB or LevelDB.

Records are read in key order and the stream wraps around at the end, in TRAIN and TEST
alike (Caffe's DataLayer). With world_size > 1, rank r takes the stream positions p with
p % world_size == r (Caffe's DataLayer::Skip, counting positions across wrap-arounds), so
the ranks' shares are disjoint and together cover every record once per pass; pass
world_size=1 to read everything (as Caffe's rank-0 test net does). data_param.rand_skip
skips Rand(rand_skip) records at the start (the pre-1.0 Caffe behaviour; Caffe 1.0 ignores
it). Randomness comes from `seed`: one numpy Generator per (seed, rank, batch), so a batch is
the same for any number of prefetch workers; the skip depends on the seed alone, so every
rank must be given the same seed.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from runner.data.datum import DataError, parse_datum
from runner.data.databases import LABELS, ProcessReader, backend_name
from runner.data.prefetch import Layout, PrefetchingSource, default_workers
from runner.data.transformer import CROP_FIELDS, DataTransformer
from runner.sources import register_source


# What a random stream is for: part of its seed, so the streams never coincide.
BATCH_STREAM, SKIP_STREAM, SHUFFLE_STREAM = 0, 1, 2


def generator(seed: int, stream: int, *ids: int) -> np.random.Generator:
    """The numpy Generator of one purpose (BATCH/SKIP/SHUFFLE_STREAM) and ids under `seed`."""
    return np.random.default_rng([seed, stream, *ids])


def stream_offsets(index: int, batch_size: int, rank: int, world_size: int) -> range:
    """Stream positions of batch `index` for `rank`: its k-th item is rank + world_size * k."""
    first = index * batch_size
    return range(rank + world_size * first, rank + world_size * (first + batch_size), world_size)


def resolve_seed(seed: int | None, world_size: int, needs_agreement: bool, where: str) -> int:
    """The seed to use: `seed`, or fresh entropy (refused when ranks must agree on it)."""
    if seed is not None:
        return int(seed)
    if world_size > 1 and needs_agreement:
        raise ValueError(f"{where}: with world_size > 1, pass the same seed on every rank "
                         "(rand_skip and shuffle must agree across ranks)")
    return int(np.random.SeedSequence().entropy)


def check_tops(lp, max_tops: int = 2) -> list[str]:
    """The layer's tops: data, then optionally label."""
    if not 1 <= len(lp.top) <= max_tops:
        raise DataError(f"layer '{lp.name}' ({lp.type}): expected 1 or 2 tops (data, label), "
                        f"got {len(lp.top)}")
    return list(lp.top)


class StreamBatches:
    """Batch number `index` of a data layer: the items at the rank's stream positions,
    transformed in order with one Generator per (seed, rank, batch). Subclasses read items.

    A maker made by `staged(True)` (`device_finish`) makes the batch in two stages
    (runner.data.prefetch): `make` crops and mirrors the raw pixels, `finish` completes
    them on the device. Pixels decoded with their channels interleaved stay so
    (N x h x w x C) until the device transposes them."""

    transformer: DataTransformer
    tops: list[str]
    batch_size: int
    seed: int
    rank: int
    world_size: int
    device_finish: bool = False
    interleaved: bool = False   # device_finish pixels are N x h x w x C
    label_limits: tuple[tuple[int, int | None, str], ...] = ()   # see `check_labels`

    def check_labels(self, classes: int, ignore_label: int | None, layer: str) -> None:
        """From now on refuse a label outside [0, classes) (but ignore_label) as its item
        is read, naming the item and `layer`, the loss or accuracy layer it feeds."""
        self.label_limits += ((classes, ignore_label, layer),)

    def _check_label(self, label: int, where: str) -> None:
        for classes, ignore_label, layer in self.label_limits:
            if label != ignore_label and not 0 <= label < classes:
                raise DataError(f"{where}: label {label} is outside [0, {classes}), the "
                                f"classes of layer '{layer}'")

    def staged(self, device_finish: bool) -> StreamBatches:
        """A copy of this maker that makes batches in one stage (the float tops) or, with
        `device_finish`, in two; the raw pixels' channel order is read off the rank's
        first item, here, once."""
        maker = copy.copy(self)
        maker.device_finish = device_finish
        if device_finish:
            _, image, _ = self.item(self.rank)
            maker.interleaved = image.shape[0] > 1 and image.strides[0] == image.itemsize
        return maker

    def item(self, position: int) -> tuple[str, np.ndarray, int]:
        """(where, CxHxW image, label) at stream position `position`."""
        raise NotImplementedError

    def make(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        rng = generator(self.seed, BATCH_STREAM, self.rank, index)
        if self.device_finish:
            data, crops, labels = arrays["pixels"], arrays["crops"], arrays.get("labels")
            if self.interleaved:
                data = data.transpose(0, 3, 1, 2)
        else:
            data = arrays[self.tops[0]]
            labels = arrays[self.tops[1]] if len(self.tops) > 1 else None
        offsets = stream_offsets(index, self.batch_size, self.rank, self.world_size)
        for item, position in enumerate(offsets):
            where, image, label = self.item(position)
            if self.device_finish:
                crops[item] = self.transformer.crop_into(image, data[item], rng, where)
            else:
                self.transformer.transform_into(image, data[item], rng, where)
            if labels is not None:
                self._check_label(label, where)
                labels[item] = label

    def finish(self, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tops from `make`'s raw arrays (`device_finish`), on the arrays' device, in
        new tensors: the arrays may be a ring slot that is written again."""
        pixels = arrays["pixels"]
        if self.interleaved:
            pixels = pixels.permute(0, 3, 1, 2)
        tops = {self.tops[0]: self.transformer.finish(pixels, arrays["crops"])}
        if len(self.tops) > 1:
            tops[self.tops[1]] = arrays["labels"].clone()
        return tops

    def layout(self) -> Layout:
        """The arrays `make` fills: the tops, or with `device_finish` the raw pixels (in the
        first item's dtype and channel order), their crops and the labels."""
        where, image, _ = self.item(self.rank)
        shapes = self._shapes(image, where)
        if not self.device_finish:
            return {top: (shape, np.dtype(np.float32)) for top, shape in shapes.items()}
        n, c, h, w = shapes[self.tops[0]]
        layout = {"pixels": ((n, h, w, c) if self.interleaved else (n, c, h, w), image.dtype),
                  "crops": ((self.batch_size, CROP_FIELDS), np.dtype(np.int32))}
        if len(self.tops) > 1:
            layout["labels"] = ((self.batch_size,), np.dtype(np.float32))
        return layout

    def top_shapes(self) -> dict[str, tuple[int, ...]]:
        """Top shapes, from the rank's first item (as Caffe shapes tops from the first)."""
        where, image, _ = self.item(self.rank)
        return self._shapes(image, where)

    def _shapes(self, image: np.ndarray, where: str) -> dict[str, tuple[int, ...]]:
        shapes = {self.tops[0]: (self.batch_size,
                                 *self.transformer.output_shape(image.shape, where))}
        if len(self.tops) > 1:
            shapes[self.tops[1]] = (self.batch_size,)
        return shapes


class DatabaseBatches(ProcessReader, StreamBatches):
    """Items of a Data layer: records in key order (picklable; opens the LMDB or LevelDB per
    process)."""

    def __init__(self, path: Path, transformer: DataTransformer, tops: list[str],
                 batch_size: int, *, layer: str, skip: int, seed: int, rank: int,
                 world_size: int, backend: str = "lmdb"):
        self.path, self.transformer, self.tops = path, transformer, tops
        self.batch_size, self.layer, self.skip = batch_size, layer, skip
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.backend = backend

    def item(self, position: int) -> tuple[str, np.ndarray, int]:
        reader = self.reader()
        key, value = reader.record_view((self.skip + position) % len(reader))
        where = f"layer '{self.layer}': {LABELS[self.backend]} '{self.path}' key '{key}'"
        datum = parse_datum(value, where)
        return where, self.transformer.decode(datum, where), datum.label


class DataSource(PrefetchingSource):
    """Caffe's Data layer: data_param (source, batch_size, rand_skip, backend, prefetch) and
    transform_param, yielding {data: N x C x H x W float32, label: N float32}.
    `num_records` is the database's record count."""

    def __init__(self, lp, phase, *, rank: int = 0, world_size: int = 1,
                 seed: int | None = None, workers: int | None = None):
        param = lp.data_param
        self.name = lp.name
        where = f"layer '{lp.name}' (Data)"
        if not param.source:
            raise DataError(f"{where}: data_param.source names no database")
        if param.batch_size <= 0:
            raise DataError(f"{where}: data_param.batch_size must be positive")
        tops = check_tops(lp)
        seed = resolve_seed(seed, world_size, param.rand_skip > 0, where)
        skip = int(generator(seed, SKIP_STREAM).integers(param.rand_skip)) \
            if param.rand_skip else 0
        path = Path.cwd() / param.source
        transformer = DataTransformer(lp.transform_param, phase, layer=lp.name)
        backend = backend_name(param.backend)
        self.maker = DatabaseBatches(path, transformer, tops, param.batch_size, layer=lp.name,
                                     skip=skip, seed=seed, rank=rank, world_size=world_size,
                                     backend=backend)
        self.top_shapes = self.maker.top_shapes()
        self.num_records = len(self.maker.reader())   # in the whole database, all ranks
        self.maker.close()
        # LevelDB lets one process open a database: read it in this one, sharing its handle
        self.workers = 0 if backend == "leveldb" else (default_workers() if workers is None
                                                       else workers)
        self.depth = param.prefetch


@register_source("Data")
def data_source(lp, phase, *, rank=0, world_size=1, seed=None, workers=None) -> DataSource:
    """Source factory for Caffe's Data layer (LMDB or LevelDB backend)."""
    return DataSource(lp, phase, rank=rank, world_size=world_size, seed=seed, workers=workers)
