"""Caffe's HDF5Data layer as a Source: rows of the HDF5 files named in a list file.

Each top is the dataset of that name (float32, first axis = rows); a batch takes
batch_size rows in order, moving on to the next listed file when one runs out and
wrapping around after the last, as hdf5_data_layer.cpp does. With `shuffle` the file
order is permuted at the start and at every wrap, and the rows of each file every time it
is (re)entered. Caffe draws these permutations from std::random_shuffle; here they come
from a numpy Generator seeded with `seed`, so the orders differ from Caffe's while
following the same rules. With world_size > 1, rank r takes the rows at stream offsets
p with p % world_size == r (TRAIN only, as Caffe's HDF5DataLayer::Skip).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch

from runner.data.datum import DataError
from runner.data.source import SHUFFLE_STREAM, generator, resolve_seed
from runner.hdf5_files import H5PY_ERRORS, stored_array
from runner.proto import caffe_pb2
from runner.sources import register_source


def read_hdf5_list(path: Path, where: str) -> list[str]:
    """The whitespace-separated file names of an HDF5Data source list."""
    try:
        names = path.read_text().split()
    except OSError as err:
        raise DataError(f"{where}: cannot read the source list {path}: {err.strerror}") from None
    if not names:
        raise DataError(f"{where}: the source list {path} names no HDF5 file")
    return names


def load_hdf5_file(path: str, tops: list[str], where: str) -> list[np.ndarray]:
    """One float32 array per top, read from the datasets named like the tops."""
    try:
        with h5py.File(path, "r") as f:
            arrays = []
            for name in tops:
                if not isinstance(f.get(name), h5py.Dataset):
                    found = f"'{name}' is a group or link" if name in f else f"it has {sorted(f.keys())}"
                    raise DataError(f"{where}: HDF5 file '{path}' has no dataset '{name}' "
                                    f"(one dataset per top; {found})")
                data = f[name]
                if data.ndim < 1 or data.dtype.kind not in "fiu":
                    raise DataError(f"{where}: dataset '{name}' of '{path}' must be a numeric "
                                    f"array with at least one axis, got {data.dtype} {data.shape}")
                arrays.append(stored_array(data, f"{where}: dataset '{name}' of '{path}'", DataError))
    except DataError:
        raise
    except H5PY_ERRORS as err:
        raise DataError(f"{where}: cannot read HDF5 file '{path}': {err}") from None
    rows = {a.shape[0] for a in arrays}
    if len(rows) != 1 or 0 in rows:
        raise DataError(f"{where}: datasets of '{path}' must have the same, non-zero number "
                        f"of rows, got {[a.shape[0] for a in arrays]} for {tops}")
    return arrays


class HDF5DataSource:
    """Caffe's HDF5Data layer: hdf5_data_param (source, batch_size, shuffle)."""

    def __init__(self, lp, phase, *, rank: int = 0, world_size: int = 1,
                 seed: int | None = None):
        param = lp.hdf5_data_param
        self.name = lp.name
        self.where = f"layer '{lp.name}' (HDF5Data)"
        if lp.HasField("transform_param"):
            raise DataError(f"{self.where}: HDF5Data does not transform data; remove transform_param")
        if param.batch_size <= 0:
            raise DataError(f"{self.where}: hdf5_data_param.batch_size must be positive")
        if not lp.top:
            raise DataError(f"{self.where}: needs at least one top (a dataset name)")
        self.tops, self.batch_size, self.shuffle = list(lp.top), param.batch_size, param.shuffle
        self.files = read_hdf5_list(Path.cwd() / param.source, self.where)
        self.seed = resolve_seed(seed, world_size, self.shuffle, self.where)
        if not 0 <= rank < world_size:
            raise DataError(f"{self.where}: rank {rank} is not in [0, {world_size})")
        test = phase == caffe_pb2.TEST   # Caffe's test nets read everything
        self.rank, self.world_size = (0, 1) if test else (rank, world_size)
        first = load_hdf5_file(self.files[0], self.tops, self.where)
        self.top_shapes = {name: (self.batch_size, *a.shape[1:]) for name, a in zip(self.tops, first)}
        self.num_records = sum(self._rows_in(path) for path in self.files)  # one pass, all ranks

    def _rows_in(self, path: str) -> int:
        """Rows of the first top's dataset in `path` (0 if it has none; a later load says so)."""
        try:
            with h5py.File(path, "r") as f:
                data = f.get(self.tops[0])
                return int(data.shape[0]) if isinstance(data, h5py.Dataset) and data.ndim else 0
        except H5PY_ERRORS as err:
            raise DataError(f"{self.where}: cannot read HDF5 file '{path}': {err}") from None

    def _check_shapes(self, arrays, path):
        for name, a in zip(self.tops, arrays):
            if a.shape[1:] != self.top_shapes[name][1:]:
                raise DataError(f"{self.where}: dataset '{name}' of '{path}' has rows of shape "
                                f"{list(a.shape[1:])}, the first file's have "
                                f"{list(self.top_shapes[name][1:])}")

    def rows(self) -> Iterator[list[np.ndarray]]:
        """Every row in Caffe's order, forever (before the rank's share is taken)."""
        rng = generator(self.seed, SHUFFLE_STREAM)
        file_order = np.arange(len(self.files))
        if self.shuffle:
            rng.shuffle(file_order)
        arrays = None
        while True:
            for index in file_order:
                path = self.files[index]
                if arrays is None or len(self.files) > 1:
                    arrays = load_hdf5_file(path, self.tops, self.where)
                    self._check_shapes(arrays, path)
                order = rng.permutation(len(arrays[0])) if self.shuffle else range(len(arrays[0]))
                for row in order:
                    yield [a[row] for a in arrays]
            if self.shuffle:
                rng.shuffle(file_order)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        offset = 0
        batch: list[list[np.ndarray]] = []
        for row in self.rows():
            keep = offset % self.world_size == self.rank
            offset += 1
            if not keep:
                continue
            batch.append(row)
            if len(batch) == self.batch_size:
                yield {name: torch.from_numpy(np.stack([r[j] for r in batch]))
                       for j, name in enumerate(self.tops)}
                batch = []


@register_source("HDF5Data")
def hdf5_data_source(lp, phase, *, rank=0, world_size=1, seed=None, workers=None) -> HDF5DataSource:
    """Source factory for Caffe's HDF5Data layer."""
    return HDF5DataSource(lp, phase, rank=rank, world_size=world_size, seed=seed)
