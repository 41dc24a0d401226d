"""Small helpers shared by the layer modules: fillers, axes, labels, loss normalisers."""
from __future__ import annotations

import math

import torch

from runner.proto import caffe_pb2
from runner.shapes import canonical_axis

FLT_MIN = 1.1754943508222875e-38   # C's FLT_MIN, Caffe's floor inside log() for softmax losses
LOG_THRESHOLD = 1e-20              # Caffe's kLOG_THRESHOLD (multinomial and infogain losses)
FLT_MAX = 3.4028234663852886e38    # C's FLT_MAX, Caffe's "minus infinity" in max pooling


def constant_filler(value: float = 0.0) -> caffe_pb2.FillerParameter:
    """A FillerParameter `{type: "constant" value: value}`."""
    return caffe_pb2.FillerParameter(type="constant", value=value)


def filler_or(param, field: str, default_value: float = 0.0) -> caffe_pb2.FillerParameter:
    """The filler `param.field` if the prototxt gives one, else Caffe's constant default."""
    return getattr(param, field) if param.HasField(field) else constant_filler(default_value)


def flatten_from(x: torch.Tensor, axis: int) -> torch.Tensor:
    """`x` as shape[:axis] + (count of the axes from `axis` on,): Caffe's outer x inner view.
    Unlike reshape's -1 it is defined on a blob with a 0 dimension (a batch of 0, which
    Caffe runs), and on fewer than axis + 1 dimensions (the count is then 1)."""
    return x.reshape(*x.shape[:axis], math.prod(x.shape[axis:]))


def split_at_axis(shape, axis: int, name: str = "") -> tuple[int, int, int, int]:
    """(canonical axis, outer count, axis size, inner count) of a blob shape around `axis`."""
    axis = canonical_axis(axis, len(shape), name)
    return axis, math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


class BlobValueError(ValueError):
    """A bottom holds values its layer cannot read: an index outside what it indexes
    (names the layer and the values)."""


class LabelError(BlobValueError):
    """A label outside [0, classes) reached a loss or accuracy layer (names the layer)."""


def label_index(label: torch.Tensor, outer: int, inner: int, layer: str,
                classes: int | None = None, ignore_label: int | None = None) -> torch.Tensor:
    """Labels as an (outer, inner) int64 tensor, truncated toward zero as Caffe's static_cast.

    With `classes`, every label but `ignore_label` must lie in [0, classes): Caffe would
    read past its arrays (only its debug build checks), torch fails without naming a layer.
    """
    if label.numel() != outer * inner:
        raise ValueError(f"layer '{layer}': label has {label.numel()} values, expected "
                         f"{outer * inner} ({outer} x {inner}) to match the predictions")
    labels = label.reshape(outer, inner)
    if classes is not None:
        whole = labels.trunc() if labels.is_floating_point() else labels
        bad = ~((whole >= 0) & (whole < classes))   # NaN counts as bad
        if ignore_label is not None:
            bad &= labels.long() != ignore_label
        if bool(bad.any()):
            first = labels[bad][0].item()
            raise LabelError(f"layer '{layer}': label {first:g} at position "
                             f"{int(bad.reshape(-1).nonzero()[0])} is outside [0, {classes}) "
                             f"({int(bad.sum())} of {labels.numel()} labels are)")
    return labels.long()


def normalization_mode(lp, mode_default: int) -> int:
    """A loss layer's normalisation: loss_param.normalization, else the legacy `normalize`
    (false means BATCH_SIZE, true VALID), else the layer's own default."""
    p = lp.loss_param
    if p.HasField("normalization"):
        return p.normalization
    if p.HasField("normalize"):
        return caffe_pb2.LossParameter.VALID if p.normalize else caffe_pb2.LossParameter.BATCH_SIZE
    return mode_default


def loss_normalizer(mode: int, outer: int, inner: int,
                    valid_count: torch.Tensor | None) -> torch.Tensor | float:
    """Caffe's get_normalizer: FULL, VALID, BATCH_SIZE or NONE, never below 1.

    `valid_count` is the number of non-ignored labels, or None when nothing is ignored.
    """
    LP = caffe_pb2.LossParameter
    if mode == LP.FULL:
        return float(max(1, outer * inner))
    if mode == LP.VALID:
        if valid_count is None:
            return float(max(1, outer * inner))
        return valid_count.clamp(min=1)
    if mode == LP.BATCH_SIZE:
        return float(max(1, outer))
    return 1.0


def records_graph(x: torch.Tensor) -> bool:
    """Whether an op on `x` now records autograd history (so its temporaries must stay)."""
    return torch.is_grad_enabled() and x.requires_grad


def clip_value_keep_grad(x: torch.Tensor, min_value: float) -> torch.Tensor:
    """max(x, min_value) in value while the gradient stays that of x (Caffe's backward
    ignores the clip it applies in forward)."""
    return x + (x.clamp(min=min_value) - x).detach()


def broadcast_to_axis(t: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """View a blob covering axes [axis, axis + t.dim()) so it broadcasts over an ndim-D bottom."""
    return t.reshape(tuple(t.shape) + (1,) * (ndim - axis - t.dim()))

