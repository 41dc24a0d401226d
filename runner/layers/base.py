"""The layer contract and registry: one nn.Module class per Caffe layer type."""
from __future__ import annotations

import torch
from torch import nn

from runner.layers.known_types import provenance
from runner.shapes import LayerShapes, Shape, infer_layer
from runner.sources import source_types

TRAIN, TEST = 0, 1  # caffe.Phase values

_REGISTRY: dict[str, type["Layer"]] = {}


class UnsupportedLayerError(ValueError):
    """A prototxt names a layer type that has no implementation here."""


class BlobCountError(ValueError):
    """A layer given more or fewer bottoms or tops than its type takes (Caffe's
    CheckBlobCounts at LayerSetUp)."""


def _count_text(bounds: tuple[int, int | None]) -> str:
    low, high = bounds
    if low == high:
        return f"exactly {low}"
    return f"at least {low}" if high is None else f"{low} to {high}"


def register(*type_names: str):
    """Class decorator: make a Layer the implementation of Caffe `type` strings."""
    def wrap(cls):
        for name in type_names:
            _REGISTRY[name] = cls
        return cls
    return wrap


def supported_types() -> list[str]:
    """The compute layer types (data layers are sources, see layer_type_list)."""
    return sorted(_REGISTRY)


def layer_type_list() -> list[str]:
    """Every type a net may use here, data sources included (pycaffe's layer_type_list)."""
    import runner.data  # noqa: F401  (registers the data sources, as runner.net does)
    import runner.input_sources  # noqa: F401
    return sorted(set(_REGISTRY) | set(source_types()))


def layer_class(lp) -> type["Layer"]:
    cls = _REGISTRY.get(lp.type)
    if cls is None:
        raise UnsupportedLayerError(
            f"layer '{lp.name}' has type '{lp.type}', which is {provenance(lp.type)}; "
            f"supported types: {', '.join(layer_type_list())}")
    return cls


class Layer(nn.Module):
    """One Caffe layer.

    Built from its LayerParameter, the shapes of its bottoms and the phase. `blobs`
    holds the learnable blobs in Caffe's order and shapes (what a .caffemodel stores);
    `forward(*bottoms)` returns a tuple with one tensor per top.
    """

    is_loss = False  # loss layers weigh their first top by 1 unless loss_weight says otherwise
    # Attributes a forward changes and a later forward reads (counters, carried state, running
    # sums): for_inference saves and restores them around the forwards it checks with.
    forward_state: tuple[str, ...] = ()
    # Bottoms that force_backward does not reach (Caffe's AllowForceBackward false: labels).
    force_backward_blocked: tuple[int, ...] = ()
    # Caffe's Exact/Min/MaxNumBottomBlobs and ...TopBlobs as (min, max); None: unbounded.
    bottom_count: tuple[int, int | None] = (0, None)
    top_count: tuple[int, int | None] = (0, None)
    same_bottom_top_count = False  # Caffe's EqualNumBottomTopBlobs
    # (classes, ignore_label) when bottom 1 holds class labels this layer indexes with
    label_limit: tuple[int, int | None] | None = None

    @classmethod
    def check_blob_counts(cls, lp, n_bottoms: int) -> None:
        """Refuse a layer with a number of bottoms or tops its type does not take."""
        for what, given, bounds in zip(("bottom", "top"), (n_bottoms, len(lp.top)),
                                       (cls.bottom_count, cls.top_count)):
            low, high = bounds
            if given < low or (high is not None and given > high):
                raise BlobCountError(f"layer '{lp.name}' ({lp.type}) takes {_count_text(bounds)} "
                                     f"{what} blob(s), got {given}")
        if cls.same_bottom_top_count and n_bottoms != len(lp.top):
            raise BlobCountError(f"layer '{lp.name}' ({lp.type}) takes one top per bottom, got "
                                 f"{n_bottoms} bottom(s) and {len(lp.top)} top(s)")

    def __init__(self, lp, bottom_shapes: list[Shape], phase: int):
        self.check_blob_counts(lp, len(bottom_shapes))
        super().__init__()
        self.name = lp.name
        self.type = lp.type
        self.phase = phase
        self.lp = lp
        self.bottom_shapes = bottom_shapes
        shapes = self.infer_shapes(lp, bottom_shapes)
        self.top_shapes = shapes.tops
        self.blobs = nn.ParameterList(
            [nn.Parameter(torch.zeros(s)) for s in shapes.blobs])

    def infer_shapes(self, lp, bottom_shapes: list[Shape]) -> LayerShapes:
        """Top and blob shapes (Caffe's rules in runner.shapes; a Python layer asks its code)."""
        return infer_layer(lp, bottom_shapes)

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def blob_fillers(self) -> list:
        """Caffe's FillerParameter per blob (layers with blobs override this)."""
        if len(self.blobs):
            raise NotImplementedError(f"layer type '{self.type}' declares no fillers")
        return []

    def extra_repr(self) -> str:
        return f"name={self.name!r}"
