"""Shared by the layer tests: one layer built from its prototxt text."""
from __future__ import annotations

from google.protobuf import text_format

from runner.layers.base import layer_class
from runner.proto import caffe_pb2


def layer_from_text(text: str, bottom_shapes, phase: int = 0):
    """Build one layer from its prototxt text, e.g. 'type: "ReLU" name: "r"' (a missing top
    is named after the layer)."""
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    if not lp.top and lp.type != "Silence":
        lp.top.append(lp.name or "top")
    return layer_class(lp)(lp, [tuple(s) for s in bottom_shapes], phase)
