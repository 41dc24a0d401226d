"""Data layers as sources: objects that yield one batch of named tensors per step.

A train_val net keeps its data layers outside the nn.Module; each becomes a Source
built by the factory registered for its Caffe `type`.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol

import torch

from runner.shapes import Shape


class Source(Protocol):
    """Yields dicts {top name: tensor}, one per forward pass, forever (Caffe wraps around)."""

    top_shapes: dict[str, Shape]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]: ...


# factory(lp, phase, *, rank=0, world_size=1, seed=None) -> Source
SourceFactory = Callable[..., Source]

_SOURCES: dict[str, SourceFactory] = {}


def register_source(*type_names: str):
    """Decorator: make a factory the source implementation of Caffe data layer types."""
    def wrap(factory):
        for name in type_names:
            _SOURCES[name] = factory
        return factory
    return wrap


def is_source_type(type_name: str) -> bool:
    return type_name in _SOURCES


def source_types() -> list[str]:
    return sorted(_SOURCES)


def source_factory(type_name: str) -> SourceFactory:
    return _SOURCES[type_name]

