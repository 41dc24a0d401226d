"""Caffe layer type -> function that emits its ONNX nodes."""
from __future__ import annotations

from typing import Callable

import numpy as np

_CONVERTERS: dict[str, Callable] = {}


def converter(*type_names: str):
    """Decorator: `fn(builder, layer, input_names, output_names)` emits ONNX for these types."""
    def wrap(fn):
        for name in type_names:
            _CONVERTERS[name] = fn
        return fn
    return wrap


def converter_for(type_name: str) -> Callable | None:
    return _CONVERTERS.get(type_name)


def exportable_types() -> list[str]:
    return sorted(_CONVERTERS)


def blob_array(blob) -> np.ndarray:
    """A learnable blob as a float32 numpy array."""
    return blob.detach().cpu().float().numpy()
