"""Caffe's Net::Init bookkeeping, free of torch modules: blob shapes as layers are wired,
net outputs, and loss weights per top.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from runner.shapes import Shape


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
class Wiring:
    """Blob names as Net::Init tracks them: shapes, which are still unconsumed, and checks."""

    shapes: dict[str, Shape] = field(default_factory=dict)
    available: dict[str, None] = field(default_factory=dict)  # ordered set
    loss_weighted: dict[str, str] = field(default_factory=dict)  # top -> layer that weighs it

    def bottom_shapes(self, lp) -> list[Shape]:
        """Shapes of a layer's bottoms (already checked to exist); consumes them."""
        if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
            raise NetBuildError(f"{layer_label(lp)}: propagate_down must be specified either 0 "
                                f"or bottom_size times ({len(lp.propagate_down)} for {len(lp.bottom)})")
        shapes = [self.shapes[name] for name in lp.bottom]
        for name in lp.bottom:
            self.available.pop(name, None)
        return shapes

    def add_tops(self, lp, shapes: list[Shape], weights: list[float]) -> None:
        """Record a layer's tops; a top rewritten in place keeps its name."""
        for name, shape, weight in zip(lp.top, shapes, weights):
            if any(d <= 0 for d in shape):
                raise NetBuildError(f"{layer_label(lp)}: top '{name}' would be empty, shape "
                                    f"{list(shape)} (its bottoms are too small for it)")
            if name in self.loss_weighted:
                raise NetBuildError(f"{layer_label(lp)}: rewrites '{name}' in place after "
                                    f"{self.loss_weighted[name]} gave it a loss weight; the objective "
                                    "reads each weighted top once, so give this layer a new top")
            self.shapes[name] = tuple(shape)
            self.available[name] = None
            if weight:
                self.loss_weighted[name] = f"layer '{lp.name}'"

    def outputs(self) -> list[str]:
        """Caffe's net outputs: blobs never consumed after being produced, in name order
        (Caffe walks a std::set<string>)."""
        return sorted(self.available)

