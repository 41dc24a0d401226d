"""Caffe's Net::Init bookkeeping, free of torch modules: every blob's shape as layers are
wired, net outputs, and loss weights per top.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from runner.shapes import LayerShapes, Shape, ShapeError, infer_layer


class NetBuildError(ValueError):
    """A net definition that Caffe's Net::Init would refuse (names the layer)."""


class LayerMemoryError(MemoryError):
    """A layer's blobs or tops do not fit in memory (names the net and the layer)."""


def is_out_of_memory(err: BaseException) -> bool:
    """True for an allocation failure as Python or torch reports it (CPU or CUDA)."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return "can't allocate memory" in text or "Storage size calculation overflowed" in text


def layer_label(lp) -> str:
    return f"layer '{lp.name}' ({lp.type})"


def loss_weights_for(lp, is_loss: bool) -> list[float]:
    """One loss weight per top: loss_weight as given, else 1 on a loss layer's only top, else 0."""
    given = list(lp.loss_weight)
    if given:
        if len(given) != len(lp.top):
            raise NetBuildError(f"{layer_label(lp)}: loss_weight must be unspecified or "
                                f"specified once per top blob ({len(given)} for {len(lp.top)} tops)")
        return given
    if is_loss:
        if len(lp.top) != 1:
            raise NetBuildError(f"{layer_label(lp)}: a loss layer with {len(lp.top)} tops needs one "
                                "loss_weight per top (Caffe only defaults a single top to 1)")
        return [1.0]
    return [0.0] * len(lp.top)


@dataclass
class NetShapes:
    """Every layer with its Caffe shapes, in order, and every blob's shape (an in-place
    top: its last)."""
    layers: list[tuple[object, LayerShapes]]
    blobs: dict[str, Shape]


def infer_net_shapes(net, make: Callable[[object, list[Shape]], LayerShapes | None] | None = None
                     ) -> NetShapes:
    """Follow the layers of `net` (a phase-filtered NetParameter) in order, as Net::Init
    does, each given its bottoms' shapes. `make(lp, bottom_shapes)` supplies a layer's
    shapes where the caller knows them (a data layer's source, a built layer), None for
    Caffe's rule (runner/shapes.py). A bottom no earlier layer produces raises ShapeError."""
    blobs: dict[str, Shape] = {}
    layers = []
    for lp in net.layer:
        missing = [b for b in lp.bottom if b not in blobs]
        if missing:
            raise ShapeError(f"layer '{lp.name}' reads blob '{missing[0]}', "
                             "which no earlier layer produces")
        bottoms = [blobs[b] for b in lp.bottom]
        shapes = make(lp, bottoms) if make is not None else None
        if shapes is None:
            shapes = infer_layer(lp, bottoms)
        blobs.update((name, tuple(shape)) for name, shape in zip(lp.top, shapes.tops))
        layers.append((lp, shapes))
    return NetShapes(layers, blobs)


@dataclass
class Wiring:
    """Blob names as Net::Init tracks them: which are still unconsumed, and checks."""

    available: dict[str, None] = field(default_factory=dict)  # ordered set
    loss_weighted: dict[str, str] = field(default_factory=dict)  # top -> layer that weighs it

    def consume_bottoms(self, lp) -> None:
        """Mark a layer's bottoms (already checked to exist) as consumed."""
        if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
            raise NetBuildError(f"{layer_label(lp)}: propagate_down must be specified either 0 "
                                f"or bottom_size times ({len(lp.propagate_down)} for {len(lp.bottom)})")
        for name in lp.bottom:
            self.available.pop(name, None)

    def add_tops(self, lp, shapes: list[Shape], weights: list[float]) -> None:
        """Record a layer's tops; a top rewritten in place keeps its name."""
        for name, shape, weight in zip(lp.top, shapes, weights):
            if any(d <= 0 for d in shape[1:]) or (shape and shape[0] < 0):
                why = " (its bottoms are too small for it)" if lp.bottom else ""
                raise NetBuildError(f"{layer_label(lp)}: top '{name}' would be empty, shape "
                                    f"{list(shape)}{why}: only the first axis (the batch) may be 0")
            if name in self.loss_weighted:
                raise NetBuildError(f"{layer_label(lp)}: rewrites '{name}' in place after "
                                    f"{self.loss_weighted[name]} gave it a loss weight; the objective "
                                    "reads each weighted top once, so give this layer a new top")
            self.available[name] = None
            if weight:
                self.loss_weighted[name] = f"layer '{lp.name}'"

    def outputs(self) -> list[str]:
        """Caffe's net outputs: blobs never consumed after being produced, in name order
        (Caffe walks a std::set<string>)."""
        return sorted(self.available)

