"""The Input and DummyData layers as sources (runner.sources): blobs that come from outside
the compute graph.

Input declares blobs the caller fills; iterating it yields zeros, as a fresh Caffe blob
holds. DummyData yields its fillers' values, refilling the non-constant ones on every
pass and filling constant ones once, as Caffe's DummyDataLayer does.
"""
from __future__ import annotations

from typing import Iterator

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

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        fixed = _allocating(self.name, lambda: {
            name: sample(self.top_shapes[name], f, self.generator)
            for name, f in self.fillers.items() if f.type == "constant"})
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
