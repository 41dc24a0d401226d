"""The Input, DummyData and MemoryData layers as sources (runner.sources): blobs that come
from outside the compute graph.

Input declares blobs the caller fills; iterating it yields zeros, as a fresh Caffe blob
holds. DummyData yields its fillers' values, refilling the non-constant ones on every
pass and filling constant ones once, as Caffe's DummyDataLayer does. MemoryData serves
arrays handed over at run time.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from runner.fillers import FillerParameter, sample
from runner.graph import LayerMemoryError, is_out_of_memory
from runner.shapes import Shape, infer_layer
from runner.sources import register_source


def _top_shapes(lp) -> dict[str, Shape]:
    return dict(zip(lp.top, infer_layer(lp, []).tops))


def _allocating(name: str, make):
    """make(), with an allocation failure reported as a LayerMemoryError naming the layer."""
    try:
        return make()
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        raise LayerMemoryError(f"layer '{name}': its tops do not fit in memory "
                               f"({str(err).strip().splitlines()[0]})") from None


class InputSource:
    """Caffe's Input layer: tops of fixed shape that the caller provides each pass."""

    def __init__(self, lp):
        self.name = lp.name
        self.top_shapes = _top_shapes(lp)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield _allocating(self.name, lambda: {name: torch.zeros(shape)
                                                  for name, shape in self.top_shapes.items()})


class DummyDataSource:
    """Caffe's DummyData layer: each top filled by its data_filler (default constant 0)."""

    def __init__(self, lp, generator: torch.Generator | None = None):
        self.name = lp.name
        self.top_shapes = _top_shapes(lp)
        fillers = list(lp.dummy_data_param.data_filler) or [FillerParameter()]
        if len(fillers) == 1:
            fillers *= len(lp.top)
        if len(fillers) != len(lp.top):
            raise ValueError(f"layer '{lp.name}' (DummyData): {len(fillers)} data_filler(s) "
                             f"for {len(lp.top)} tops; give 0, 1 or one per top")
        self.fillers = dict(zip(lp.top, fillers))
        self.generator = generator

    def constant_tops(self) -> dict[str, torch.Tensor]:
        """The tops Caffe fills once, at setup (constant fillers), with their values."""
        return {name: sample(self.top_shapes[name], f)
                for name, f in self.fillers.items() if f.type == "constant"}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        fixed = _allocating(self.name, self.constant_tops)
        while True:
            yield _allocating(self.name, lambda: {
                name: fixed[name] if name in fixed
                else sample(self.top_shapes[name], f, self.generator)
                for name, f in self.fillers.items()})


@register_source("Input")
def input_source(lp, phase, *, rank=0, world_size=1, seed=None) -> InputSource:
    """Source factory for Caffe's Input layer."""
    return InputSource(lp)


@register_source("DummyData")
def dummy_data_source(lp, phase, *, rank=0, world_size=1, seed=None) -> DummyDataSource:
    """Source factory for Caffe's DummyData layer; `seed` (offset by rank) fixes its draws."""
    gen = None if seed is None else torch.Generator().manual_seed(seed + rank)
    return DummyDataSource(lp, gen)


class MemoryDataSource:
    """Caffe's MemoryData layer: batches cut from arrays handed over by `reset` (pycaffe's
    set_input_arrays). The arrays are used in place, not copied, and read in a cycle of
    `batch_size` records; no transform_param is applied, as in Caffe's Reset."""

    def __init__(self, lp):
        p = lp.memory_data_param
        self.name = lp.name
        self.batch_size, self.channels, self.height, self.width = (
            p.batch_size, p.channels, p.height, p.width)
        if min(self.batch_size, self.channels, self.height, self.width) <= 0:
            raise ValueError(f"layer '{lp.name}' (MemoryData): batch_size, channels, height, and "
                             "width must be specified and positive in memory_data_param")
        data_shape = (self.batch_size, self.channels, self.height, self.width)
        self.top_shapes = dict(zip(lp.top, [data_shape, (self.batch_size,)]))
        if len(lp.top) != 2:
            raise ValueError(f"layer '{lp.name}' (MemoryData): needs exactly 2 tops (data, "
                             f"label), got {len(lp.top)}")
        self.data: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.pos = 0

    def _check(self, array, what: str, dims: tuple[int, int, int]) -> torch.Tensor:
        where = f"layer '{self.name}' (MemoryData): {what} array"
        if not isinstance(array, np.ndarray) or array.dtype != np.float32:
            raise ValueError(f"{where} must be a float32 numpy array")
        if not array.flags.c_contiguous:
            raise ValueError(f"{where} must be C contiguous")
        if array.ndim != 4:
            raise ValueError(f"{where} must be 4-d, got shape {list(array.shape)}")
        if tuple(array.shape[1:]) != dims:
            raise ValueError(f"{where} has shape {list(array.shape)}; channels, height, width "
                             f"must be {list(dims)}")
        return torch.from_numpy(array)

    def reset(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Caffe's Reset: serve `data` (N, C, H, W) and `labels` (N, 1, 1, 1) from record 0."""
        data_t = self._check(data, "data", (self.channels, self.height, self.width))
        labels_t = self._check(labels, "labels", (1, 1, 1))
        n = data_t.shape[0]
        if labels_t.shape[0] != n:
            raise ValueError(f"layer '{self.name}' (MemoryData): data and labels must have the "
                             f"same first dimension ({n} vs {labels_t.shape[0]})")
        if n == 0 or n % self.batch_size:
            raise ValueError(f"layer '{self.name}' (MemoryData): first dimensions of input "
                             f"arrays must be a multiple of batch size {self.batch_size}, got {n}")
        self.data, self.labels, self.pos = data_t, labels_t, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        data_top, label_top = self.top_shapes
        while True:
            if self.data is None:
                raise ValueError(f"layer '{self.name}' (MemoryData) needs to be initialized by "
                                 "calling Reset (pycaffe: net.set_input_arrays(data, labels))")
            batch = slice(self.pos, self.pos + self.batch_size)
            self.pos = (self.pos + self.batch_size) % self.data.shape[0]
            yield {data_top: self.data[batch], label_top: self.labels[batch]}


@register_source("MemoryData")
def memory_data_source(lp, phase, *, rank=0, world_size=1, seed=None) -> MemoryDataSource:
    """Source factory for Caffe's MemoryData layer."""
    return MemoryDataSource(lp)
