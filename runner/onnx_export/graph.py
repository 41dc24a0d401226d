"""An ONNX graph under construction: Caffe blob names mapped to SSA values, weights as
initializers, and whether the batch axis must stay fixed."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class OnnxExportError(ValueError):
    """A net (or one of its layers) has no ONNX form."""


class GraphBuilder:
    """Collects nodes and initializers for one net; `value(blob)` is the blob's current
    ONNX name and `write(blob)` names its next version (the last write keeps the blob's
    own name, so graph outputs are named as in the prototxt)."""

    def __init__(self, last_writer: dict[str, int]):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.fixed_batch_reason: str | None = None
        self._last_writer = last_writer
        self._current: dict[str, str] = {}
        self._taken: set[str] = set()
        self.layer_index = -1
        self.layer_name = ""

    def start_layer(self, index: int, name: str) -> None:
        self.layer_index, self.layer_name = index, name

    def unique(self, base: str) -> str:
        """`base`, or `base_<n>`: a name no value has and no blob will get."""
        name, n = base, 1
        while name in self._taken or name in self._last_writer:
            n += 1
            name = f"{base}_{n}"
        self._taken.add(name)
        return name

    def declare_input(self, blob: str) -> str:
        self._taken.add(blob)
        self._current[blob] = blob
        return blob

    def value(self, blob: str) -> str:
        return self._current[blob]

    def write(self, blob: str) -> str:
        """A fresh ONNX name for the version of `blob` the current layer produces."""
        final = self._last_writer.get(blob) == self.layer_index and blob not in self._taken
        name = blob if final else self.unique(f"{blob}/{self.layer_name}")
        self._taken.add(name)
        self._current[blob] = name
        return name

    def temp(self, what: str) -> str:
        return self.unique(f"{self.layer_name}/{what}")

    def const(self, what: str, array, dtype=np.float32) -> str:
        """An initializer named after the current layer."""
        name = self.temp(what)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def ints(self, what: str, values) -> str:
        return self.const(what, list(values), np.int64)

    def filled(self, shape: str, value: float) -> str:
        """A float tensor of the (computed, int64) `shape` holding `value` everywhere."""
        return self.node("ConstantOfShape", [shape],
                         value=helper.make_tensor("value", onnx.TensorProto.FLOAT, [1], [value]))

    def node(self, op: str, inputs: list[str], outputs: list[str] | None = None, **attrs) -> str:
        """Append a node; returns its (first) output, a temporary when none is given."""
        outputs = outputs or [self.temp(op.lower())]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.temp(op), **attrs))
        return outputs[0]

    def body(self) -> "GraphBuilder":
        """A builder for a control-flow body graph (Scan's): nodes of its own; names and
        initializers shared with this graph, whose values the body reads from outer scope."""
        child = GraphBuilder(self._last_writer)
        child._taken, child.initializers = self._taken, self.initializers
        child.layer_index, child.layer_name = self.layer_index, self.layer_name
        return child

    def fix_batch(self, reason: str) -> None:
        """Record that the graph only works for the net's own batch size."""
        self.fixed_batch_reason = self.fixed_batch_reason or f"layer '{self.layer_name}' {reason}"
